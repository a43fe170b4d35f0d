// The /proc parsers on recorded files from a real process, a kernel thread,
// a zombie, and malformed copies.
#include <gtest/gtest.h>

#include "collectors/proc_parse.h"
#include "tests/support/support.h"

using namespace memlens;
using memlens::test::read_text;

namespace {
std::string fixture(const std::string& rel) {
  return read_text(std::string(MEMLENS_SOURCE_DIR) + "/tests/fixtures/proc/" + rel);
}
}  // namespace

TEST(ParseStat, RealProcess) {
  auto st = parse_stat(fixture("4242/stat"));
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(st->comm, "heapload");
  EXPECT_EQ(st->state, 'S');
  EXPECT_GT(st->starttime, 0u);
  EXPECT_GT(st->rss_pages, 1000u);  // it held 8 MB
  EXPECT_GT(st->minflt, 1000u);
  EXPECT_EQ(st->num_threads, 1u);
}

TEST(ParseStat, CommWithSpacesAndParentheses) {
  auto st = parse_stat(fixture("malformed/stat_weird_comm"));
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(st->comm, "a (b) c");
  EXPECT_EQ(st->starttime, parse_stat(fixture("4242/stat"))->starttime);
}

TEST(ParseStat, MalformedIsAnErrorNotACrash) {
  auto st = parse_stat(fixture("malformed/stat"));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::malformed);
  EXPECT_FALSE(parse_stat("").ok());
  EXPECT_FALSE(parse_stat("12 (x").ok());
  EXPECT_FALSE(parse_stat("abc (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22").ok());
}

TEST(ParseStatus, RealProcessInBytes) {
  auto s = parse_status(fixture("4242/status"));
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_TRUE(s->has_memory);
  EXPECT_GT(s->vm_rss, 8u << 20);
  EXPECT_EQ(s->vm_rss, s->rss_anon + s->rss_file + s->rss_shmem);  // as the kernel sums them
  EXPECT_GE(s->vm_hwm, s->vm_rss);
  EXPECT_EQ(s->vm_rss % 1024, 0u);
  EXPECT_EQ(s->vm_data, 8812u * 1024);  // "VmData:	    8812 kB", the level memlens_data_bytes reports
  EXPECT_EQ(s->state, 'S');
  EXPECT_EQ(s->sig_pending, 0u);
}

TEST(ParseStatus, StateAndPendingSignals) {
  // A process held at exec: stopped, or its SIGSTOP (19, bit 18) pending.
  auto s = parse_status("State:\tT (stopped)\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000040000\n");
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(s->state, 'T');
  EXPECT_EQ(s->sig_pending, 1u << 18);
  EXPECT_FALSE(parse_status("SigPnd:\tzz\n").ok());
}

TEST(ParseStatus, KernelThreadAndZombieHaveNoMemory) {
  for (const char* f : {"kthread/status", "zombie/status"}) {
    auto s = parse_status(fixture(f));
    ASSERT_TRUE(s.ok()) << f << ": " << s.error().message;
    EXPECT_FALSE(s->has_memory) << f;
  }
}

TEST(ParseStatus, Malformed) {
  auto s = parse_status(fixture("malformed/status"));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, Errc::malformed);
  EXPECT_NE(s.error().message.find("VmRSS"), std::string::npos) << "names the bad line";
  EXPECT_FALSE(parse_status("VmRSS 12 kB\n").ok());
  EXPECT_FALSE(parse_status("VmRSS: 12 MB\n").ok());
}

TEST(ParseSmapsRollup, RealProcess) {
  auto r = parse_smaps_rollup(fixture("4242/smaps_rollup"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(r->empty);
  EXPECT_EQ(r->rss, 10304u * 1024);
  EXPECT_EQ(r->pss, 8907u * 1024);
  EXPECT_LE(r->uss(), r->rss);
  EXPECT_GE(r->anonymous, 8000000u);
}

TEST(ParseSmapsRollup, EmptyForKernelThreads) {
  auto r = parse_smaps_rollup(fixture("kthread/smaps_rollup"));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->empty);
}

TEST(ParseSmapsRollup, Malformed) {
  auto r = parse_smaps_rollup(fixture("malformed/smaps_rollup"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::malformed);
}

TEST(ParseMaps, FindsHeap) {
  auto h = parse_maps_heap(fixture("4242/maps"));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(h->has_value());
  EXPECT_EQ((*h)->start, 0x55bf5bece000u);
  EXPECT_EQ((*h)->size(), 0x55bf5c752000u - 0x55bf5bece000u);
}

TEST(ParseMaps, NoHeapAndMalformed) {
  auto none = parse_maps_heap("7f00-7f10 r-xp 00000000 00:00 0 /lib/x.so\n");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  auto bad = parse_maps_heap(fixture("malformed/maps"));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, Errc::malformed);
}

TEST(ParseSmapsHeap, HeapAndArenaHeapsOnly) {
  // [heap] (1200 kB) and an anonymous rw mapping on a 64 MiB boundary (a
  // thread arena's heap, 300 kB); not the unaligned anonymous mapping, not
  // the files, not the arena's reserved PROT_NONE tail.
  const auto text = memlens::test::read_text(std::string(MEMLENS_SOURCE_DIR) + "/tests/fixtures/proc/smaps/heap_and_arenas");
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(parse_smaps_heap_resident(text), (1200u + 300u) * 1024);
  EXPECT_EQ(parse_smaps_heap_resident(""), 0u);
  EXPECT_EQ(parse_smaps_heap_resident("garbage\nRss: 12 kB\n"), 0u) << "Rss outside a heap mapping";
}

TEST(ParseBtime, FromProcStat) {
  EXPECT_EQ(parse_btime("cpu  1 2 3\nintr 5\nbtime 1764740000\nprocesses 9\n"), 1764740000.0);
  EXPECT_FALSE(parse_btime("cpu 1\n"));
  EXPECT_FALSE(parse_btime("btime x\n"));
}
