// Pure parts shared by bpf/alloc.bpf.c and the collector: the size
// histogram's buckets.
#include <gtest/gtest.h>

#include <cstdint>

#include "bpf/alloc.h"

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
