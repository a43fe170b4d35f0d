// Allocation tracing against the ground truth the workload writes itself:
// live heap (glibc chunk bytes, jemalloc requested bytes), fragmentation vs
// mallinfo2(), and what a target already running at attach may report.
#include <gtest/gtest.h>
#include <signal.h>

#include <cmath>
#include <thread>

#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

#define REQUIRE_ROOT() \
  if (!is_root()) GTEST_SKIP() << "needs root (eBPF uprobes)"

std::string config(const std::string& comm, const std::string& dir, const std::string& alloc,
                   const std::string& extra = "") {
  return "global: {tick_interval: 250ms, rescan_interval: 500ms, smaps_interval: 1s}\n" + extra +
         "targets:\n"
         "  - name: work\n"
         "    comm: " + comm + "\n"
         "    cmdline: \"" + dir + "/\"\n"
         "    alloc: " + alloc + "\n";
}

// Waits for the workload's steady phase, then for a scrape that has `metric`
// for its pid.
struct Steady {
  nlohmann::json truth;
  std::vector<PromSample> s;
};

std::optional<Steady> steady(const Daemon& d, const std::string& truth_path, pid_t pid,
                             const std::string& metric, std::chrono::seconds timeout = 60s) {
  Steady st;
  bool ok = wait_until([&] {
    st.truth = latest_truth(truth_path);
    return st.truth.value("phase", "") == "steady";
  }, timeout);
  if (!ok) return std::nullopt;
  // The fragmentation ratio is refreshed every smaps_interval (1 s here):
  // wait past one, plus two ticks, so the scrape sees the final state.
  std::this_thread::sleep_for(1700ms);
  ok = wait_until([&] {
    st.s = d.scrape();
    return find_sample(st.s, metric, {{"pid", std::to_string(pid)}}).has_value();
  }, 10s);
  if (!ok) return std::nullopt;
  st.truth = latest_truth(truth_path);
  return st;
}

}  // namespace

// A target started after memlensd is held at exec until its probes are in
// place, so every allocation is seen: live bytes match its own count.
TEST(AllocAccuracy, LiveHeapAndFragmentationOfATargetStartedLater) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  const std::string exe = private_workload("alloc_truth", dir);
  auto d = start_daemon(config(exe_comm(exe), dir, "{mode: full}"));
  ASSERT_TRUE(d);
  const std::string truth = dir + "/truth.jsonl";
  Child w = spawn({exe, "--truth", truth, "--blocks", "20000", "--ops", "200000",
                   "--large", "--leak", "300"});
  auto st = steady(*d, truth, w.pid(), "memlens_heap_live_bytes");
  ASSERT_TRUE(st) << "no live heap for the target\n" << d->log();
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}};
  const double live = *find_sample(st->s, "memlens_heap_live_bytes", sel);
  const double want = st->truth["live_chunk_bytes"].get<double>();
  std::printf("live heap: memlens %.0f, workload %.0f\n", live, want);
  EXPECT_NEAR(live, want, want * 0.01) << "live heap vs the workload's own count";
  EXPECT_EQ(find_sample(st->s, "memlens_alloc_tracing", {{"pid", std::to_string(w.pid())}, {"coverage", "since_start"}}),
            1.0);

  // Fragmentation: our 1 - live/resident vs glibc's fordblks/arena.
  auto frag = find_sample(st->s, "memlens_heap_resident_unused_ratio", sel);
  ASSERT_TRUE(frag);
  const double mi = st->truth["fordblks"].get<double>() / st->truth["arena"].get<double>();
  std::printf("fragmentation: memlens %.4f, mallinfo2 fordblks/arena %.4f\n", *frag, mi);
  EXPECT_NEAR(*frag, mi, 0.03) << "fragmentation vs mallinfo2 fordblks/arena";

  // Counters are consistent with the live value (page faults: faults_test).
  const double a = *find_sample(st->s, "memlens_alloc_bytes_total", sel);
  const double f = *find_sample(st->s, "memlens_freed_bytes_total", sel);
  EXPECT_DOUBLE_EQ(a - f, live);
  EXPECT_GE(*find_sample(st->s, "memlens_allocs_total", sel), 200000);
  EXPECT_TRUE(find_sample(st->s, "memlens_bpf_page_faults_total", {{"pid", std::to_string(w.pid())}, {"access", "write"}}));
  EXPECT_EQ(find_sample(st->s, "memlens_alloc_target_drops_total", sel), 0.0);
}

// Freeing every other block leaves holes glibc cannot return: high
// fragmentation, and still within 3 points of glibc's own view.
TEST(AllocAccuracy, HolesShowHighFragmentation) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  const std::string exe = private_workload("alloc_truth", dir);
  auto d = start_daemon(config(exe_comm(exe), dir, "{mode: full}"));
  ASSERT_TRUE(d);
  const std::string truth = dir + "/truth.jsonl";
  Child w = spawn({exe, "--truth", truth, "--blocks", "40000", "--ops", "20000", "--holes"});
  auto st = steady(*d, truth, w.pid(), "memlens_heap_resident_unused_ratio");
  ASSERT_TRUE(st) << d->log();
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}};
  const double frag = *find_sample(st->s, "memlens_heap_resident_unused_ratio", sel);
  const double mi = st->truth["fordblks"].get<double>() / st->truth["arena"].get<double>();
  std::printf("holes: fragmentation memlens %.4f, mallinfo2 %.4f\n", frag, mi);
  EXPECT_GT(frag, 0.35) << "half the blocks are holes";
  EXPECT_NEAR(frag, mi, 0.03);
  const double live = *find_sample(st->s, "memlens_heap_live_bytes", sel);
  EXPECT_NEAR(live, st->truth["live_chunk_bytes"].get<double>(), st->truth["live_chunk_bytes"].get<double>() * 0.01);
}

// jemalloc has no size header: address tracking with requested sizes.
TEST(AllocAccuracy, JemallocLiveBytes) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  const std::string exe = private_workload("alloc_truth_jemalloc", dir);
  auto d = start_daemon(config(exe_comm(exe), dir, "{mode: full}"));
  ASSERT_TRUE(d);
  const std::string truth = dir + "/truth.jsonl";
  Child w = spawn({exe, "--truth", truth, "--blocks", "20000", "--ops", "100000"});
  auto st = steady(*d, truth, w.pid(), "memlens_heap_live_bytes");
  ASSERT_TRUE(st) << d->log();
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}};
  EXPECT_EQ(find_sample(st->s, "memlens_alloc_tracing",
                        {{"pid", std::to_string(w.pid())}, {"allocator", "jemalloc"}}), 1.0);
  const double live = *find_sample(st->s, "memlens_heap_live_bytes", sel);
  const double want = st->truth["live_req_bytes"].get<double>();
  std::printf("jemalloc live: memlens %.0f, workload %.0f\n", live, want);
  EXPECT_NEAR(live, want, want * 0.02) << "jemalloc live bytes vs requested bytes the workload holds";
}

// A target already running at attach: only since-attach values, never a
// made-up live heap.
TEST(AllocAccuracy, AlreadyRunningTargetReportsOnlySinceAttach) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  const std::string exe = private_workload("alloc_truth", dir);
  const std::string truth = dir + "/truth.jsonl";
  Child w = spawn({exe, "--truth", truth, "--blocks", "5000", "--ops", "400000000"});
  ASSERT_TRUE(wait_until([&] { return !latest_truth(truth).empty(); }, 10s));
  auto d = start_daemon(config(exe_comm(exe), dir, "{mode: full}"));
  ASSERT_TRUE(d);
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}};
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_allocs_total", sel).value_or(0) > 1000;
  }, 20s)) << d->log();
  EXPECT_FALSE(find_sample(s, "memlens_heap_live_bytes", sel)) << "no live heap without the blocks from before";
  EXPECT_FALSE(find_sample(s, "memlens_heap_resident_unused_ratio", sel));
  EXPECT_TRUE(find_sample(s, "memlens_heap_net_since_attach_bytes", sel));
  EXPECT_EQ(find_sample(s, "memlens_alloc_tracing", {{"pid", std::to_string(w.pid())}, {"coverage", "since_attach"}}), 1.0);
  // Steady set with churn: allocated and freed since attach agree closely.
  const double a = *find_sample(s, "memlens_alloc_bytes_total", sel);
  const double f = *find_sample(s, "memlens_freed_bytes_total", sel);
  EXPECT_GT(a, 0);
  EXPECT_NEAR(a, f, a * 0.2 + 1e6);
}

// A traced target forks a child that is a target too: the child is held at
// fork, starts with its parent's live blocks, and its live heap is exact.
TEST(AllocAccuracy, ForkedChildStartsWithItsParentsHeap) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  const std::string exe = private_workload("alloc_truth", dir);
  auto d = start_daemon(config(exe_comm(exe), dir, "{mode: full}"));
  ASSERT_TRUE(d);
  if (d->log().find("no fork hold") != std::string::npos) {
    // bpf_send_signal_task came with 6.13; this kernel has it.
    if (bpf_opted_out()) GTEST_SKIP() << "kernel without bpf_send_signal_task: children are traced since attach";
    FAIL() << "the fork hold did not load:\n" << d->log();
  }
  const std::string truth = dir + "/truth.jsonl";
  Child w = spawn({exe, "--truth", truth, "--blocks", "5000", "--ops", "50000", "--fork"});
  // The child reports to truth.jsonl.child; find its pid among the targets.
  ASSERT_TRUE(wait_until([&] { return latest_truth(truth + ".child").value("phase", "") == "steady"; }, 60s))
      << d->log();
  // The child is steady now; its live heap must settle on the truth within
  // a few ticks (a scrape can hold the snapshot of a tick before it).
  const double want = latest_truth(truth + ".child")["live_chunk_bytes"].get<double>();
  std::optional<double> child_live;
  wait_until([&] {
    for (const auto& p : d->scrape())
      if (p.name == "memlens_heap_live_bytes" && p.labels.count("pid") && p.labels.at("pid") != std::to_string(w.pid()))
        child_live = p.value;
    return child_live && std::abs(*child_live - want) <= want * 0.01;
  }, 10s);
  ASSERT_TRUE(child_live) << "no live heap for the forked child\n" << d->log();
  std::printf("forked child live heap: memlens %.0f, workload %.0f\n", *child_live, want);
  EXPECT_NEAR(*child_live, want, want * 0.01);
}
