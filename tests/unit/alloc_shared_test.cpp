// Pure parts shared by bpf/alloc.bpf.c and the collector: glibc's
// request-to-chunk rounding and the size histogram's buckets.
#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdint>
#include <cstdlib>

#include "bpf/alloc.h"

TEST(GlibcChunkSize, MatchesRequest2Size) {
  EXPECT_EQ(glibc_chunk_size(0), 32u);   // MINSIZE
  EXPECT_EQ(glibc_chunk_size(1), 32u);
  EXPECT_EQ(glibc_chunk_size(24), 32u);  // 24 + 8 fits 32
  EXPECT_EQ(glibc_chunk_size(25), 48u);
  EXPECT_EQ(glibc_chunk_size(40), 48u);
  EXPECT_EQ(glibc_chunk_size(1000), 1008u);
  EXPECT_EQ(glibc_chunk_size(4096), 4112u);
}

// Against the glibc this test runs on: a fresh block's chunk is the rounded
// request (its usable size is the chunk minus the 8-byte size field). Large
// requests are mmapped and page-rounded, which is why the tracer reads the
// header instead of trusting this formula.
TEST(GlibcChunkSize, AgreesWithTheRunningGlibc) {
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
  for (std::size_t n : {1u, 8u, 24u, 25u, 100u, 1000u, 4000u, 65536u}) {
    void* p = std::malloc(n);
    ASSERT_NE(p, nullptr);
    const std::size_t usable = malloc_usable_size(p);
    // A recycled chunk may be up to 16 bytes larger than requested (a split
    // remainder below MINSIZE stays with it).
    EXPECT_GE(usable + 8, glibc_chunk_size(n)) << n;
    EXPECT_LE(usable + 8, glibc_chunk_size(n) + 16) << n;
    std::free(p);
  }
#else
  GTEST_SKIP() << "not glibc's allocator (sanitizer or other libc)";
#endif
}

TEST(AllocHistogram, Buckets) {
  EXPECT_EQ(alloc_hist_bucket(0), 0u);
  EXPECT_EQ(alloc_hist_bucket(16), 0u);
  EXPECT_EQ(alloc_hist_bucket(17), 1u);
  EXPECT_EQ(alloc_hist_bucket(32), 1u);
  EXPECT_EQ(alloc_hist_bucket(33), 2u);
  EXPECT_EQ(alloc_hist_bucket(16ull << 23), 23u);
  EXPECT_EQ(alloc_hist_bucket((16ull << 23) + 1), 24u);
  EXPECT_EQ(alloc_hist_bucket(~0ull), ALLOC_HIST_BUCKETS - 1u);
}
