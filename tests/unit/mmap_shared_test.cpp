// The pure parts of the mmap collector: decoding a target's kernel record
// (bpf/mmap.h) into exported counters, and the first baseline from status.
#include <gtest/gtest.h>

#include <string>

#include "collectors/mmap_collector.h"
#include "collectors/proc_parse.h"
#include "tests/support/support.h"

using namespace memlens;

TEST(MmapCallCounts, PagesBecomeBytesPerCallInEnumOrder) {
  mmap_stats v{};
  v.last_data_pages = 123;
  for (int c = 0; c < MMAP_CALLS; ++c) {
    v.calls[c] = 10 + c;
    v.grown_pages[c] = 100 * (c + 1);
    v.shrunk_pages[c] = 7 * c;
  }
  auto out = mmap_call_counts(v, 4096);
  const char* names[] = {"mmap", "munmap", "mremap", "brk", "mprotect"};
  for (int c = 0; c < MMAP_CALLS; ++c) {
    EXPECT_STREQ(out[c].call, names[c]);
    EXPECT_EQ(out[c].calls, 10u + c);
    EXPECT_EQ(out[c].mapped_bytes, 4096u * 100 * (c + 1));
    EXPECT_EQ(out[c].unmapped_bytes, 4096u * 7 * c);
  }
}

TEST(MmapCallCounts, BaselineIsVmDataInPages) {
  auto st = parse_status(test::read_text(std::string(MEMLENS_SOURCE_DIR) + "/tests/fixtures/proc/4242/status"));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(mmap_baseline_pages(st->vm_data, 4096), 8812u / 4);  // VmData: 8812 kB
  EXPECT_EQ(mmap_baseline_pages(st->vm_data, 16384), 8812u / 16);
}
