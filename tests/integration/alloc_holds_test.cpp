// Exec holds: a target started after memlensd is stopped at exec until its
// probes are in place. Here: names added by a reload (as an alternation),
// an allocator injected with LD_PRELOAD, a second memlensd holding the same
// name for another selector, and a hold the watchdog had to release at its
// bound (memlensd stopped), which must not claim an exact live heap.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <thread>

#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

#define REQUIRE_ROOT() \
  if (!is_root()) GTEST_SKIP() << "needs root (eBPF uprobes)"

const char* kJemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

std::string target(const std::string& comm, const std::string& dir) {
  return "targets:\n"
         "  - name: work\n"
         "    comm: \"" + comm + "\"\n"
         "    cmdline: \"" + dir + "/\"\n"
         "    alloc: {mode: full}\n";
}
const std::string kGlobal = "global: {tick_interval: 250ms, rescan_interval: 500ms}\n";

// The workload's steady report and a scrape that has `metric` for it.
std::optional<std::pair<nlohmann::json, std::vector<PromSample>>> steady_scrape(const Daemon& d, const std::string& truth,
                                                                                pid_t pid, const std::string& metric) {
  if (!wait_until([&] { return latest_truth(truth).value("phase", "") == "steady"; }, 60s)) return std::nullopt;
  std::this_thread::sleep_for(700ms);
  std::vector<PromSample> s;
  if (!wait_until([&] { return find_sample(s = d.scrape(), metric, {{"pid", std::to_string(pid)}}).has_value(); }, 10s))
    return std::nullopt;
  return std::make_pair(latest_truth(truth), s);
}

double holds(const std::vector<PromSample>& s, const std::string& outcome) {
  return find_sample(s, "memlens_exec_holds_total", {{"outcome", outcome}}).value_or(0);
}

}  // namespace

// Started with nothing to hold; a reload adds the target as an alternation
// of literal comms; a process started after the reload is held and exact.
TEST(AllocHolds, ReloadAddsHeldNamesGivenAsAnAlternation) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  const std::string exe = private_workload("alloc_truth", dir);
  auto d = start_daemon(kGlobal + "targets: [{name: self, self: true}]\n");
  ASSERT_TRUE(d);
  std::string alternation = exe_comm(exe);
  alternation.insert(0, 1, '(');
  alternation += "|alloc_other)";
  write_text(d->config_path, kGlobal + target(alternation, dir));
  const double reloads0 = find_sample(d->scrape(), "memlens_config_reloads_total", {{"result", "success"}}).value_or(0);
  ASSERT_EQ(kill(d->child.pid(), SIGHUP), 0);
  ASSERT_TRUE(wait_until([&] {
    return find_sample(d->scrape(), "memlens_config_reloads_total", {{"result", "success"}}).value_or(0) > reloads0;
  }, 10s)) << d->log();
  const std::string truth = dir + "/truth.jsonl";
  Child w = spawn({exe, "--truth", truth, "--blocks", "5000", "--ops", "50000"});
  auto st = steady_scrape(*d, truth, w.pid(), "memlens_heap_live_bytes");
  ASSERT_TRUE(st) << "no live heap: the process was not held from exec\n" << d->log();
  const double live = *find_sample(st->second, "memlens_heap_live_bytes", {{"pid", std::to_string(w.pid())}});
  const double want = st->first["live_chunk_bytes"].get<double>();
  std::printf("held after reload: live heap memlens %.0f, workload %.0f\n", live, want);
  EXPECT_NEAR(live, want, want * 0.01);
  EXPECT_EQ(holds(st->second, "attached"), 1.0);
}

// LD_PRELOAD puts jemalloc in front of glibc: the hold must see it before
// the loader maps anything, and probe jemalloc, not libc.
TEST(AllocHolds, PreloadedAllocatorIsTracedFromExec) {
  REQUIRE_ROOT();
  if (access(kJemalloc, R_OK) != 0) GTEST_SKIP() << kJemalloc << " missing (libjemalloc2)";
  const std::string dir = make_temp_dir();
  const std::string exe = private_workload("alloc_truth", dir);
  auto d = start_daemon(kGlobal + target(exe_comm(exe), dir));
  ASSERT_TRUE(d);
  const std::string truth = dir + "/truth.jsonl";
  Child w = spawn({exe, "--truth", truth, "--blocks", "20000", "--ops", "100000", "--no-header"},
                  "", {std::string("LD_PRELOAD=") + kJemalloc});
  auto st = steady_scrape(*d, truth, w.pid(), "memlens_heap_live_bytes");
  ASSERT_TRUE(st) << "no live heap for the preloaded target\n" << d->log();
  const std::string pid = std::to_string(w.pid());
  EXPECT_EQ(find_sample(st->second, "memlens_alloc_tracing",
                        {{"pid", pid}, {"allocator", "jemalloc"}, {"coverage", "since_start"}}), 1.0)
      << "traced in jemalloc from the start";
  const double live = *find_sample(st->second, "memlens_heap_live_bytes", {{"pid", pid}});
  const double want = st->first["live_req_bytes"].get<double>();
  std::printf("LD_PRELOAD jemalloc: live memlens %.0f, requested bytes held by the workload %.0f\n", live, want);
  EXPECT_NEAR(live, want, want * 0.02);
}

// memlensd is stopped while a target execs: the watchdog releases the target
// at the 500 ms bound. When memlensd resumes it attaches late, knows it (it
// lost the release), counts the outcome and claims no exact live heap.
TEST(AllocHolds, HoldReleasedByTheBoundIsTracedSinceAttachOnly) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  const std::string exe = private_workload("alloc_truth", dir);
  auto d = start_daemon(kGlobal + target(exe_comm(exe), dir));
  ASSERT_TRUE(d);
  const double late0 = holds(d->scrape(), "released_early");
  const std::string truth = dir + "/truth.jsonl";
  ASSERT_EQ(kill(d->child.pid(), SIGSTOP), 0);
  Child w = spawn({exe, "--truth", truth, "--blocks", "2000", "--ops", "1000000000"});
  // It runs (writes its truth) although memlensd cannot release it.
  const bool ran = wait_until([&] { return !latest_truth(truth).empty(); }, 5s);
  kill(d->child.pid(), SIGCONT);
  ASSERT_TRUE(ran) << "the watchdog did not release the held process";
  std::vector<PromSample> s;
  const std::string pid = std::to_string(w.pid());
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_allocs_total", {{"pid", pid}}).value_or(0) > 0;
  }, 15s)) << d->log();
  EXPECT_EQ(holds(s, "released_early") - late0, 1.0);
  EXPECT_EQ(find_sample(s, "memlens_alloc_tracing", {{"pid", pid}, {"coverage", "since_attach"}}), 1.0);
  EXPECT_FALSE(find_sample(s, "memlens_heap_live_bytes", {{"pid", pid}})) << "blocks from before attach are unknown";
}

// Two memlensd hold the same comm; only one's selector (cmdline) matches the
// process. The other lets it go at once, without probes; its SIGCONT may
// come before the first one's probes are in place, which the first one must
// notice: never a live heap that is not exact.
TEST(AllocHolds, AnotherHolderOfTheSameNameDoesNotSpoilTheCount) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir(), other = make_temp_dir();
  const std::string exe = private_workload("alloc_truth", dir);
  auto mine = start_daemon(kGlobal + target(exe_comm(exe), dir));
  auto theirs = start_daemon(kGlobal + target(exe_comm(exe), other));
  ASSERT_TRUE(mine && theirs);
  for (int i = 0; i < 5; ++i) {
    const std::string truth = dir + "/truth" + std::to_string(i) + ".jsonl";
    Child w = spawn({exe, "--truth", truth, "--blocks", "3000", "--ops", "30000"});
    auto st = steady_scrape(*mine, truth, w.pid(), "memlens_alloc_tracing");
    ASSERT_TRUE(st) << mine->log();
    const std::string pid = std::to_string(w.pid());
    auto live = find_sample(st->second, "memlens_heap_live_bytes", {{"pid", pid}});
    const double want = st->first["live_chunk_bytes"].get<double>();
    if (live) {
      EXPECT_NEAR(*live, want, want * 0.01) << "run " << i << ": claimed exact, so it must be";
    } else {
      // Honest fallback: it ran before the probes, and says so.
      EXPECT_EQ(find_sample(st->second, "memlens_alloc_tracing", {{"pid", pid}, {"coverage", "since_attach"}}), 1.0);
    }
  }
  const auto s = theirs->scrape();
  EXPECT_EQ(holds(s, "not_selected"), 5.0) << theirs->log();
  EXPECT_EQ(holds(s, "attached"), 0.0);
  // Ours was held too, and knew each time whether its probes came first
  // (a SIGCONT releases every stop: the other one's may come before).
  const auto m = mine->scrape();
  EXPECT_EQ(holds(m, "attached") + holds(m, "released_early"), 5.0) << mine->log();
  std::printf("held by both: attached in time %.0f of 5\n", holds(m, "attached"));
}
