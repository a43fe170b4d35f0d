// The allocation collector's decisions, without a kernel: the duty plan,
// when probes are on, on-leak's trigger, counter scaling, the exactness
// rule, and the probe plan for this machine's libc.
#include <gtest/gtest.h>

#include <algorithm>

#include "collectors/alloc/policy.h"

using namespace memlens;
using namespace memlens::alloc;

namespace {
TargetPolicy policy(AllocMode m) {
  TargetPolicy p;
  p.alloc_mode = m;
  return p;
}
}  // namespace

TEST(DutyStep, OnForTheFractionOfEachPeriodWithALead) {
  // Period 1 s from t=100, 10 %: counting [100, 100.1), links from 100 - lead.
  const double lead = 2 * 0.004;  // twice a 4 ms attach
  auto before = duty_step(99.9, 100, 1.0, 0.1, 0.004);
  EXPECT_FALSE(before.links);
  EXPECT_DOUBLE_EQ(before.next_due, 100 - lead);
  auto leading = duty_step(100 - lead / 2, 100, 1.0, 0.1, 0.004);
  EXPECT_TRUE(leading.links);
  EXPECT_FALSE(leading.counting) << "attached early, counting only from the on-phase";
  EXPECT_DOUBLE_EQ(leading.next_due, 100);
  auto on = duty_step(100.05, 100, 1.0, 0.1, 0.004);
  EXPECT_TRUE(on.links && on.counting);
  EXPECT_DOUBLE_EQ(on.next_due, 100.1);
  auto off = duty_step(100.5, 100, 1.0, 0.1, 0.004);
  EXPECT_FALSE(off.links || off.counting);
  EXPECT_DOUBLE_EQ(off.next_due, 101 - lead);
  // Period after period, the counted share is exactly the fraction.
  double counted = 0;
  for (double t = 100; t < 110; t += 0.001) counted += duty_step(t, 100, 1.0, 0.1, 0.004).counting ? 0.001 : 0;
  EXPECT_NEAR(counted, 1.0, 0.011);
}

TEST(DutyStep, LeadIsBoundedAndDegenerateSettingsAreSafe) {
  // A slow attach leads by at most 50 ms; a fast one by at least 5 ms.
  EXPECT_TRUE(duty_step(100 - 0.049, 100, 1.0, 0.1, 1.0).links);
  EXPECT_FALSE(duty_step(100 - 0.051, 100, 1.0, 0.1, 1.0).links);
  EXPECT_TRUE(duty_step(100 - 0.0049, 100, 1.0, 0.1, 0.0).links);
  EXPECT_FALSE(duty_step(100.5, 100, 1.0, 0.0, 0.0).links) << "fraction 0: never on";
  EXPECT_TRUE(duty_step(100.5, 100, 1.0, 2.0, 0.0).counting) << "fraction clamped to 1: always on";
  EXPECT_GT(duty_step(100, 100, 0.0, 0.5, 0.0).next_due, 100) << "a zero period is taken as 100 ms";
}

TEST(WantsOn, ByMode) {
  EXPECT_TRUE(wants_on(nullptr, 0, 0, false)) << "held at exec: trace from the start";
  auto off = policy(AllocMode::off), full = policy(AllocMode::full), duty = policy(AllocMode::duty),
       leak = policy(AllocMode::on_leak);
  EXPECT_FALSE(wants_on(&off, 0, 0, true));
  EXPECT_TRUE(wants_on(&full, 0, 0, false));
  EXPECT_TRUE(wants_on(&duty, 0, 0, true));
  EXPECT_FALSE(wants_on(&duty, 0, 0, false)) << "duty_step decides";
  EXPECT_TRUE(wants_on(&leak, 10, 11, false));
  EXPECT_FALSE(wants_on(&leak, 12, 11, true));
}

TEST(OnLeak, SwitchesOnOverBudgetForItsDuration) {
  auto p = policy(AllocMode::on_leak);
  p.leak_budget_bytes_per_second = 1000;
  p.on_leak_duration = Duration(60000);
  EXPECT_EQ(on_leak_until(p, true, 999, 100, 0), 0) << "under budget";
  EXPECT_EQ(on_leak_until(p, false, 5000, 100, 0), 0) << "no slope yet";
  EXPECT_EQ(on_leak_until(p, true, 5000, 100, 0), 160);
  EXPECT_EQ(on_leak_until(p, true, 5000, 120, 160), 160) << "not extended while on";
  EXPECT_EQ(on_leak_until(p, true, 5000, 170, 160), 230) << "again after it ended";
  auto full = policy(AllocMode::full);
  full.leak_budget_bytes_per_second = 1;
  EXPECT_EQ(on_leak_until(full, true, 5000, 100, 0), 0) << "only in on-leak mode";
}

TEST(Counters, AdvanceByDeltasScaledInDutyMode) {
  auto duty = policy(AllocMode::duty);
  duty.duty_fraction = 0.25;
  EXPECT_DOUBLE_EQ(counter_scale(duty), 4.0);
  EXPECT_DOUBLE_EQ(counter_scale(policy(AllocMode::full)), 1.0);
  Counters c;
  alloc_stats a{}, b{};
  b.alloc_bytes = 1000;
  b.allocs = 10;
  b.drops = 3;
  b.hist[2] = 7;
  advance(c, b, a, 4.0);
  EXPECT_DOUBLE_EQ(c.alloc_bytes, 4000);
  EXPECT_DOUBLE_EQ(c.allocs, 40);
  EXPECT_DOUBLE_EQ(c.drops, 3) << "drops are counted, never scaled";
  EXPECT_DOUBLE_EQ(c.hist[2], 28);
  // A total that goes down (slot reused) adds nothing and takes nothing away.
  alloc_stats lower{};
  lower.alloc_bytes = 10;
  advance(c, lower, b, 1.0);
  EXPECT_DOUBLE_EQ(c.alloc_bytes, 4000);
  EXPECT_DOUBLE_EQ(c.drops, 3);
}

TEST(Counters, LiveBytesIncludeTheInheritance) {
  alloc_stats s{};
  s.alloc_bytes = 5000;
  s.free_bytes = 7000;  // a child freeing what its parent allocated
  s.inherited_bytes = 4000;
  s.mmap_alloc_bytes = 300;
  s.inherited_mmap_bytes = 100;
  EXPECT_DOUBLE_EQ(live_bytes(s), 2000);
  EXPECT_DOUBLE_EQ(mmapped_live_bytes(s), 400);
}

TEST(Exactness, EveryBlockSeen) {
  EXPECT_TRUE(live_heap_exact(true, true, 0, false));
  EXPECT_FALSE(live_heap_exact(false, true, 0, false)) << "attached after it started";
  EXPECT_FALSE(live_heap_exact(true, false, 0, false)) << "detached";
  EXPECT_FALSE(live_heap_exact(true, true, 1, false)) << "a block dropped";
  EXPECT_FALSE(live_heap_exact(true, true, 0, true)) << "duty counts a fraction";
}

TEST(PlanProbes, GlibcHeaderAndAddressModes) {
  auto libc = elf::open_cached("/lib/x86_64-linux-gnu/libc.so.6");
  ASSERT_TRUE(libc.ok()) << libc.error().message;
  auto header = plan_probes(**libc, true, false);
  ASSERT_TRUE(header.ok()) << header.error().message;
  auto count = [](const std::vector<ProbeSpec>& v, bool ret) {
    return std::count_if(v.begin(), v.end(), [&](const ProbeSpec& p) { return p.ret == ret; });
  };
  // Header mode: entries only where a request must be stashed (realloc,
  // posix_memalign) and free; returns on the malloc family, header-only.
  EXPECT_EQ(count(*header, false), 3);
  auto malloc_sym = (*libc)->find("malloc");
  ASSERT_TRUE(malloc_sym.ok());
  bool malloc_ret_header_only = false;
  for (const auto& p : *header)
    if (p.ret && p.offset == malloc_sym->file_offset) malloc_ret_header_only = p.fn == (FN_MALLOC | FN_HEADER_ONLY);
  EXPECT_TRUE(malloc_ret_header_only);
  // free's probe skips its NULL test onto an emulated instruction.
  auto free_sym = (*libc)->find("free");
  ASSERT_TRUE(free_sym.ok());
  for (const auto& p : *header) {
    if (p.fn == FN_FREE) {
      EXPECT_GT(p.offset, free_sym->file_offset);
    }
  }
  // Address mode: an entry for every function; aliases once.
  auto addr = plan_probes(**libc, true, true);
  ASSERT_TRUE(addr.ok());
  EXPECT_GT(count(*addr, false), count(*header, false));
  for (std::size_t i = 0; i < addr->size(); ++i)
    for (std::size_t j = i + 1; j < addr->size(); ++j)
      EXPECT_FALSE((*addr)[i].offset == (*addr)[j].offset && (*addr)[i].ret == (*addr)[j].ret);
}

TEST(PlanProbes, CookieCarriesSettingsAndSlot) {
  const uint64_t c = cookie_settings(true, false, true, true, 77);
  EXPECT_TRUE(c & CK_VALID);
  EXPECT_TRUE(c & CK_HEADER);
  EXPECT_FALSE(c & CK_TRACK);
  EXPECT_TRUE(c & CK_STACKS);
  EXPECT_TRUE(c & CK_DUTY);
  EXPECT_EQ(c >> CK_SLOT_SHIFT, 77u);
  EXPECT_EQ(c & CK_FN_MASK, 0u) << "the function bits are the probe's";
}

TEST(Counters, DutyScalesByTheTimeCountingWasReallyOn) {
  // 20 s elapsed, counting on for 3.4 s (a flag set late: not the nominal
  // 4 s): 17,000 counted allocations are 100,000 over the 20 s.
  EXPECT_DOUBLE_EQ(duty_estimate(17000, 20, 3.4), 100000);
  EXPECT_EQ(duty_estimate(5, 20, 0), 0) << "nothing counted yet: no estimate";
  EXPECT_DOUBLE_EQ(duty_estimate(5, 1, 2), 5) << "never scaled below what was counted";
  Counters c;
  alloc_stats s{};
  s.allocs = 100;
  s.drops = 2;
  advance_duty(c, s, 10, 2);
  EXPECT_DOUBLE_EQ(c.allocs, 500);
  EXPECT_DOUBLE_EQ(c.drops, 2);
  // An off-phase: time passes, nothing is counted; the estimate would fall
  // (100 x 12 / 2 = 600 is not lower, but 100 x 10.5 / 2.5 = 420 is).
  advance_duty(c, s, 10.5, 2.5);
  EXPECT_DOUBLE_EQ(c.allocs, 500) << "a counter never goes down";
}
