// U32MapView against real kernel maps (root): every entry of a hash map read
// in batches, per-CPU values summed, a map larger than one batch, an empty
// map, and a key that is not there.
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "collectors/bpf_support.h"
#include "daemon/fd.h"

namespace memlens {
namespace {

struct TwoFields {
  uint64_t a, b;
};

int make_map(bpf_map_type type, uint32_t entries) {
  return bpf_map_create(type, "ml_view_test", sizeof(uint32_t), sizeof(TwoFields), entries, nullptr);
}

TEST(U32MapView, EveryEntryOfAHashMapInBatches) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (creates BPF maps)";
  Fd fd(make_map(BPF_MAP_TYPE_HASH, 8192));
  ASSERT_GE(fd.get(), 0) << "bpf_map_create failed";
  bpf::U32MapView view(sizeof(TwoFields), false);
  ASSERT_TRUE(view.read(fd.get()));
  EXPECT_EQ(view.size(), 0u);
  constexpr uint32_t kEntries = 5000;  // many batches of 256
  for (uint32_t k = 1; k <= kEntries; ++k) {
    TwoFields v{k, uint64_t{k} * 3};
    ASSERT_EQ(bpf_map_update_elem(fd.get(), &k, &v, BPF_NOEXIST), 0);
  }
  ASSERT_TRUE(view.read(fd.get()));
  ASSERT_EQ(view.size(), kEntries);
  EXPECT_EQ(view.fields(), 2u);
  for (uint32_t k = 1; k <= kEntries; ++k) {
    const uint64_t* f = view.find(k);
    ASSERT_NE(f, nullptr) << k;
    EXPECT_EQ(f[0], k);
    EXPECT_EQ(f[1], uint64_t{k} * 3);
  }
  EXPECT_EQ(view.find(kEntries + 1), nullptr);
  EXPECT_EQ(view.size(), bpf::count_u32_keys(fd.get()));
  // Read again after deletions: the view is the map as it is now.
  for (uint32_t k = 1; k <= kEntries; k += 2) ASSERT_EQ(bpf_map_delete_elem(fd.get(), &k), 0);
  ASSERT_TRUE(view.read(fd.get()));
  EXPECT_EQ(view.size(), kEntries / 2);
  EXPECT_EQ(view.find(1), nullptr);
  ASSERT_NE(view.find(2), nullptr);
}

TEST(U32MapView, PerCpuValuesAreSummed) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (creates BPF maps)";
  Fd fd(make_map(BPF_MAP_TYPE_PERCPU_HASH, 1024));
  ASSERT_GE(fd.get(), 0) << "bpf_map_create failed";
  const int ncpu = bpf::possible_cpus();
  for (uint32_t k = 1; k <= 600; ++k) {
    std::vector<TwoFields> per_cpu(static_cast<std::size_t>(ncpu));
    for (int c = 0; c < ncpu; ++c) per_cpu[static_cast<std::size_t>(c)] = {k + static_cast<uint64_t>(c), 1};
    ASSERT_EQ(bpf_map_update_elem(fd.get(), &k, per_cpu.data(), BPF_NOEXIST), 0);
  }
  bpf::U32MapView view(sizeof(TwoFields), true);
  ASSERT_TRUE(view.read(fd.get()));
  ASSERT_EQ(view.size(), 600u);
  const uint64_t cpu_sum = static_cast<uint64_t>(ncpu) * static_cast<uint64_t>(ncpu - 1) / 2;
  for (uint32_t k = 1; k <= 600; ++k) {
    const uint64_t* f = view.find(k);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f[0], uint64_t{k} * static_cast<uint64_t>(ncpu) + cpu_sum);
    EXPECT_EQ(f[1], static_cast<uint64_t>(ncpu));
  }
  EXPECT_FALSE(bpf::U32MapView(12, true).read(fd.get())) << "a value size that is not a multiple of 8 is refused";
}

// Once a tick: the first find reads the map; a key added after that is
// looked up alone; end_tick() gives the entries and the next find reads again.
TEST(U32MapView, OnceATickWithKeysAddedAfterTheRead) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (creates BPF maps)";
  Fd fd(make_map(BPF_MAP_TYPE_PERCPU_HASH, 64));
  ASSERT_GE(fd.get(), 0) << "bpf_map_create failed";
  const int ncpu = bpf::possible_cpus();
  auto put = [&](uint32_t k, uint64_t a) {
    std::vector<TwoFields> per_cpu(static_cast<std::size_t>(ncpu), TwoFields{a, 0});
    return bpf_map_update_elem(fd.get(), &k, per_cpu.data(), BPF_ANY) == 0;
  };
  ASSERT_TRUE(put(1, 10));
  bpf::U32MapView view(sizeof(TwoFields), true);
  auto one = view.find_this_tick(fd.get(), 1);
  ASSERT_TRUE(one && *one);
  EXPECT_EQ((*one)[0], 10u * static_cast<uint64_t>(ncpu));
  ASSERT_TRUE(put(2, 7));   // after this tick's read
  ASSERT_TRUE(put(1, 11));  // the read's figure stands for this tick
  auto two = view.find_this_tick(fd.get(), 2);
  ASSERT_TRUE(two && *two) << "a key added after the read is looked up alone";
  EXPECT_EQ((*two)[0], 7u * static_cast<uint64_t>(ncpu));
  EXPECT_EQ((*view.find_this_tick(fd.get(), 1))[0], 10u * static_cast<uint64_t>(ncpu));
  auto none = view.find_this_tick(fd.get(), 3);
  ASSERT_TRUE(none);
  EXPECT_EQ(*none, nullptr);
  EXPECT_EQ(view.end_tick(fd.get()), 1u) << "the entries as read this tick";
  EXPECT_EQ((*view.find_this_tick(fd.get(), 1))[0], 11u * static_cast<uint64_t>(ncpu)) << "read again";
  EXPECT_EQ(view.end_tick(fd.get()), 2u);
  EXPECT_EQ(view.end_tick(fd.get()), 2u) << "no read this tick: the keys counted";
}

}  // namespace
}  // namespace memlens
