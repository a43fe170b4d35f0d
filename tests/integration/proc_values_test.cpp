// memlensd's /proc values for a real process match what the process itself
// reports (its statm RSS, getrusage peak, glibc's arena).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {
// memlens_proc_reads_saved_total{file}: reads of a /proc file not made.
double reads_saved(const std::vector<PromSample>& s, const char* file) {
  return find_sample(s, "memlens_proc_reads_saved_total", {{"file", file}}).value_or(-1);
}
}  // namespace

namespace {

void expect_within(double got, double want, double rel, const char* what) {
  EXPECT_NEAR(got, want, std::abs(want) * rel) << what << ": memlens " << got << " vs truth " << want;
}

}  // namespace

TEST(ProcValues, MatchWorkloadGroundTruth) {
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/truth.jsonl";
  // 48 MiB held in 0.5-8 KiB blocks, churned at 20k replacements/s.
  Child w = spawn({workload_path("heapload"), "--hold", std::to_string(48 << 20), "--truth", truth});
  ASSERT_TRUE(wait_until([&] { return !latest_truth(truth).empty(); }, 20s)) << "workload wrote no truth";

  auto d = start_daemon(
      "global: {tick_interval: 500ms, rescan_interval: 1s}\n"
      "targets:\n"
      "  - name: work\n"
      "    pid: " + std::to_string(w.pid()) + "\n");
  ASSERT_TRUE(d);
  const std::map<std::string, std::string> sel{{"target", "work"}, {"pid", std::to_string(w.pid())}};
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_rss_bytes", sel).has_value();
  }, 15s)) << d->log();

  // Compare a scrape with the truth line written closest to it: both are
  // steady after warm-up, so a second apart they agree to well under 1%.
  int checked = 0;
  for (int round = 0; round < 5; ++round) {
    std::this_thread::sleep_for(1s);
    s = d->scrape();
    auto t = latest_truth(truth);
    ASSERT_FALSE(t.empty());
    auto rss = find_sample(s, "memlens_rss_bytes", sel);
    auto peak = find_sample(s, "memlens_rss_peak_bytes", sel);
    auto heap = find_sample(s, "memlens_heap_mapping_bytes", sel);
    auto anon = find_sample(s, "memlens_anon_bytes", sel);
    auto uss = find_sample(s, "memlens_uss_bytes", sel);
    ASSERT_TRUE(rss && peak && heap && anon && uss);
    expect_within(*rss, t["rss_bytes"].get<double>(), 0.02, "rss");
    expect_within(*peak, t["rss_peak_bytes"].get<double>(), 0.02, "peak rss");
    // glibc's main arena is the [heap] mapping (all blocks < 128 KiB).
    expect_within(*heap, t["arena"].get<double>(), 0.02, "heap mapping vs mallinfo2().arena");
    // What it holds is resident anonymous memory.
    EXPECT_GE(*anon, t["live_bytes"].get<double>());
    EXPECT_LE(*uss, *rss);
    auto minflt = find_sample(s, "memlens_page_faults_total", {{"target", "work"}, {"kind", "minor"}});
    ASSERT_TRUE(minflt);
    // Touching 48 MiB takes at least one fault per page.
    EXPECT_GE(*minflt, (48 << 20) / 4096);
    ++checked;
  }
  EXPECT_EQ(checked, 5);

  // The JSON view has the same target.
  auto api = http_get(d->url("/api/v1/targets"));
  ASSERT_EQ(api.status, 200);
  auto doc = nlohmann::json::parse(api.body);
  bool found = false;
  for (const auto& t : doc["targets"])
    if (t["pid"] == w.pid() && t["name"] == "work") found = t["values"].contains("memlens_rss_bytes");
  EXPECT_TRUE(found) << api.body;
}

TEST(ProcValues, ExitedTargetDisappearsAndIsCounted) {
  const std::string dir = make_temp_dir();
  Child a = spawn({workload_path("heapload"), "--hold", "1000000", "--churn", "100", "--truth", dir + "/a"});
  Child b = spawn({workload_path("heapload"), "--hold", "1000000", "--churn", "100", "--truth", dir + "/b"});
  auto d = start_daemon(
      "global: {tick_interval: 200ms, rescan_interval: 500ms}\n"
      "targets:\n"
      "  - name: work\n"
      "    cmdline: \"heapload .*" + dir + "/\"\n");
  ASSERT_TRUE(d);
  const std::string pa = std::to_string(a.pid()), pb = std::to_string(b.pid());
  ASSERT_TRUE(wait_until([&] {
    auto s = d->scrape();
    return find_sample(s, "memlens_rss_bytes", {{"pid", pa}}) && find_sample(s, "memlens_rss_bytes", {{"pid", pb}});
  }, 10s)) << d->log();
  const double exited0 = *find_sample(d->scrape(), "memlens_targets_exited_total");

  a.stop(SIGKILL, 2s);
  // Gone at the next scrape after the next tick (no stale series), counted.
  ASSERT_TRUE(wait_until([&] {
    auto s = d->scrape();
    return !find_sample(s, "memlens_rss_bytes", {{"pid", pa}}) &&
           find_sample(s, "memlens_targets_exited_total").value_or(0) >= exited0 + 1;
  }, 3s));
  auto s = d->scrape();
  EXPECT_FALSE(find_sample(s, "memlens_anon_bytes", {{"pid", pa}}));
  EXPECT_TRUE(find_sample(s, "memlens_rss_bytes", {{"pid", pb}})) << "the other target is unaffected";

  // A new matching process is picked up within one rescan.
  Child c = spawn({workload_path("heapload"), "--hold", "1000000", "--churn", "100", "--truth", dir + "/c"});
  EXPECT_TRUE(wait_until([&] { return find_sample(d->scrape(), "memlens_rss_bytes", {{"pid", std::to_string(c.pid())}}).has_value(); }, 3s));
  EXPECT_TRUE(d->child.running()) << d->log();
}

TEST(ProcValues, CapTurnsAwayAndCounts) {
  const std::string dir = make_temp_dir();
  std::vector<Child> kids;
  for (int i = 0; i < 4; ++i)
    kids.push_back(spawn({workload_path("heapload"), "--hold", "100000", "--churn", "10", "--truth",
                          dir + "/" + std::to_string(i)}));
  auto d = start_daemon(
      "global: {tick_interval: 200ms, rescan_interval: 500ms}\n"
      "targets:\n"
      "  - name: work\n"
      "    cmdline: \"heapload .*" + dir + "/\"\n"
      "    max_targets: 3\n");
  ASSERT_TRUE(d);
  ASSERT_TRUE(wait_until([&] { return find_sample(d->scrape(), "memlens_targets_capped_total").value_or(0) >= 1; }, 10s));
  auto s = d->scrape();
  EXPECT_EQ(find_sample(s, "memlens_targets_watched", {{"target", "work"}}).value_or(-1), 3);
  EXPECT_EQ(find_sample(s, "memlens_targets_over_cap").value_or(-1), 1);
  EXPECT_EQ(find_sample(s, "memlens_targets_capped_total").value_or(-1), 1) << "each process counted once";
}

// What only the process changes (stat: faults, threads, CPU; maps: the
// [heap] mapping) is not read again while it has not run, and is what it
// says all the same: CPython idle in pause() reports its own getrusage()
// faults and thread count; poked, it grows its heap by 6.4 MB and starts a
// thread, and the next tick shows both.
TEST(ProcValues, AnIdleTargetsStatIsNotReadAgainUntilItRuns) {
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/idle.jsonl";
  Child w = spawn({"/usr/bin/python3", std::string(MEMLENS_SOURCE_DIR) + "/tests/workloads/idle_heap.py", truth},
                  dir + "/idle.log");
  auto lines = [&] { return truth_lines(truth); };
  ASSERT_TRUE(wait_until([&] { return lines().size() == 1; }, 20s)) << read_text(dir + "/idle.log");
  auto d = start_daemon("global: {tick_interval: 250ms, rescan_interval: 500ms, smaps_interval: 250ms}\n"
                        "targets:\n  - {name: idle, pid: " + std::to_string(w.pid()) + "}\n");
  ASSERT_TRUE(d);
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}};
  auto minor = [&](const std::vector<PromSample>& s) {
    return find_sample(s, "memlens_page_faults_total", {{"pid", std::to_string(w.pid())}, {"kind", "minor"}})
        .value_or(-1);
  };
  auto saved = reads_saved;
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_heap_mapping_bytes", sel).has_value();
  }, 15s)) << d->log();
  const double stat0 = saved(s, "stat"), maps0 = saved(s, "maps"), rollup0 = saved(s, "smaps_rollup");
  std::this_thread::sleep_for(2500ms);
  s = d->scrape();
  auto t = lines().back();
  std::printf("idle 2.5 s: stat reads saved %.0f, maps reads saved %.0f (smaps_rollup %.0f); minor faults %.0f vs "
              "getrusage %.0f\n",
              saved(s, "stat") - stat0, saved(s, "maps") - maps0, saved(s, "smaps_rollup") - rollup0, minor(s),
              t["minflt"].get<double>());
  EXPECT_GE(saved(s, "stat") - stat0, 5);
  // maps is read with smaps_rollup, and not even then while the clock stands.
  EXPECT_GE(saved(s, "maps") - maps0, 1);
  EXPECT_GE(saved(s, "maps") - maps0 + saved(s, "smaps_rollup") - rollup0, 4);
  // Its last faults came after its own count (the line written, pause()).
  EXPECT_GE(minor(s), t["minflt"].get<double>());
  EXPECT_LE(minor(s), t["minflt"].get<double>() + 64);
  EXPECT_EQ(find_sample(s, "memlens_threads", sel), t["threads"].get<double>());
  const double heap1 = find_sample(s, "memlens_heap_mapping_bytes", sel).value_or(0);
  expect_within(heap1, t["arena"].get<double>(), 0.02, "heap mapping vs mallinfo2().arena");

  ASSERT_EQ(::kill(w.pid(), SIGUSR1), 0);
  ASSERT_TRUE(wait_until([&] { return lines().size() == 2; }, 10s));
  t = lines().back();
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_threads", sel) == t["threads"].get<double>() &&
           minor(s) >= t["minflt"].get<double>() &&
           find_sample(s, "memlens_heap_mapping_bytes", sel).value_or(0) >= heap1 + 6e6;
  }, 5s)) << "after it ran: threads " << find_sample(s, "memlens_threads", sel).value_or(-1) << " vs "
          << t["threads"] << ", minor faults " << minor(s) << " vs " << t["minflt"] << ", heap mapping "
          << find_sample(s, "memlens_heap_mapping_bytes", sel).value_or(-1) << " vs " << heap1 << " + 6.4 MB";
  EXPECT_LE(minor(s), t["minflt"].get<double>() + 64);
  w.stop(SIGTERM, 5s);
}

namespace {
// What the kernel says of a process now: a "Field: N kB" line of one of
// its /proc files (status, smaps_rollup), in bytes.
double kib_line_bytes(pid_t pid, const std::string& file, const std::string& field) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/" + file);
  std::string line;
  while (std::getline(f, line))
    if (line.starts_with(field + ":")) return std::stod(line.substr(field.size() + 1)) * 1024;
  return -1;
}
double status_bytes(pid_t pid, const std::string& field) { return kib_line_bytes(pid, "status", field); }
// Its CPU time in nanoseconds, from its CPU-time clock.
uint64_t cpu_ns(pid_t pid) {
  clockid_t c;
  timespec ts{};
  if (clock_getcpuclockid(pid, &c) != 0 || clock_gettime(c, &ts) != 0) return 0;
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}
}  // namespace

// Resident memory moves without the process running: the kernel reclaims
// its pages. While a target's CPU clock stands, memlensd reads statm (the
// same counters as status, for less) and status itself only once statm
// moved: the idle CPython's 8 MiB of mapped file pages are paged out from
// here (process_madvise MADV_PAGEOUT) while it sleeps, and within a tick or
// two memlensd's figures are what /proc/PID/status says.
TEST(ProcValues, AnIdleTargetsResidentMemoryFollowsReclaim) {
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/idle.jsonl", mapped = dir + "/mapped.bin";
  ASSERT_EQ(run("head -c 8388608 /dev/urandom > " + mapped), 0);
  Child w = spawn({"/usr/bin/python3", std::string(MEMLENS_SOURCE_DIR) + "/tests/workloads/idle_heap.py", truth,
                   mapped},
                  dir + "/idle.log");
  ASSERT_TRUE(wait_until([&] { return truth_lines(truth).size() == 1; }, 20s)) << read_text(dir + "/idle.log");
  auto d = start_daemon("global: {tick_interval: 250ms, rescan_interval: 500ms}\n"
                        "targets:\n  - {name: idle, pid: " + std::to_string(w.pid()) + "}\n");
  ASSERT_TRUE(d);
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}};
  auto saved = [](const std::vector<PromSample>& s) { return reads_saved(s, "status"); };
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_rss_bytes", sel).has_value();
  }, 15s)) << d->log();
  const double saved0 = saved(s);
  std::this_thread::sleep_for(2500ms);
  s = d->scrape();
  const double rss0 = status_bytes(w.pid(), "VmRSS"), file0 = status_bytes(w.pid(), "RssFile");
  std::printf("idle 2.5 s: status reads saved %.0f; rss %.0f vs status %.0f\n", saved(s) - saved0,
              find_sample(s, "memlens_rss_bytes", sel).value_or(-1), rss0);
  EXPECT_GE(saved(s) - saved0, 5) << "an idle target's status stands while its statm does";
  EXPECT_EQ(find_sample(s, "memlens_rss_bytes", sel).value_or(-1), rss0);

  // Its mapping of the file, paged out from outside.
  uint64_t lo = 0, hi = 0;
  {
    std::ifstream maps("/proc/" + std::to_string(w.pid()) + "/maps");
    std::string line;
    while (std::getline(maps, line))
      if (line.ends_with(" " + mapped)) std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi);
  }
  ASSERT_GT(hi, lo) << "the workload has no mapping of " << mapped;
  // Right after a tick that read status in full (its reading had stood its
  // longest), so that only statm can show the page-out within the next ticks.
  {
    auto now = [&] {
      auto x = d->scrape();
      return std::pair{find_sample(x, "memlens_ticks_total").value_or(-1), saved(x)};
    };
    auto last = now();
    ASSERT_TRUE(wait_until([&] {
      auto n = now();
      const bool full_read = n.first == last.first + 1 && n.second == last.second;
      last = n;
      return full_read;
    }, 5s, 20ms)) << "no tick read status in full";
  }
  const uint64_t clock0 = cpu_ns(w.pid());
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, w.pid(), 0));
  ASSERT_GE(pidfd, 0) << std::strerror(errno);
  iovec range{reinterpret_cast<void*>(lo), hi - lo};
  const long advised = ::syscall(SYS_process_madvise, pidfd, &range, 1, MADV_PAGEOUT, 0);
  ::close(pidfd);
  ASSERT_EQ(advised, static_cast<long>(hi - lo)) << std::strerror(errno);
  const double rss1 = status_bytes(w.pid(), "VmRSS"), file1 = status_bytes(w.pid(), "RssFile");
  ASSERT_LE(rss1, rss0 - 6e6) << "the kernel did not page the file out: " << file0 << " -> " << file1;
  const double saved1 = saved(d->scrape());
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_rss_bytes", sel) == rss1 && find_sample(s, "memlens_file_bytes", sel) == file1;
  }, 750ms)) << "rss " << find_sample(s, "memlens_rss_bytes", sel).value_or(-1) << " vs status " << rss1
          << ", file " << find_sample(s, "memlens_file_bytes", sel).value_or(-1) << " vs " << file1;
  std::printf("after the page-out: %.0f status reads saved until memlensd showed it\n", saved(s) - saved1);
  EXPECT_EQ(cpu_ns(w.pid()), clock0) << "the workload ran: this did not test a standing clock";
  w.stop(SIGTERM, 5s);
}

namespace {
double rollup_bytes(pid_t pid, const std::string& field) { return kib_line_bytes(pid, "smaps_rollup", field); }
}  // namespace

// smaps_rollup is the costliest read, and what a process does shows in its
// clock and statm: while both stand, memlensd reads it again only every
// sixth smaps_interval. What shows in neither is another process changing
// what it shares with the target: an idle CPython shares 16 MiB with its
// forked child; the child is killed, the parent's PSS rises by ~8 MiB while
// it neither runs nor changes its resident set, and memlensd shows the new
// PSS within six intervals.
TEST(ProcValues, AnIdleTargetsPssFollowsASharerLeavingWithinSixIntervals) {
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/shared.jsonl";
  Child w = spawn({"/usr/bin/python3", std::string(MEMLENS_SOURCE_DIR) + "/tests/workloads/shared_idle.py", truth},
                  dir + "/shared.log");
  ASSERT_TRUE(wait_until([&] { return truth_lines(truth).size() == 1; }, 20s)) << read_text(dir + "/shared.log");
  const pid_t child = truth_lines(truth).back()["child"].get<pid_t>();
  auto d = start_daemon("global: {tick_interval: 250ms, rescan_interval: 500ms, smaps_interval: 500ms}\n"
                        "targets:\n  - {name: shared, pid: " + std::to_string(w.pid()) + "}\n");
  ASSERT_TRUE(d);
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}};
  auto saved = [](const std::vector<PromSample>& s) { return reads_saved(s, "smaps_rollup"); };
  auto pss = [&](const std::vector<PromSample>& s) { return find_sample(s, "memlens_pss_bytes", sel).value_or(-1); };
  // Within 1 MiB of what the kernel says now: other processes mapping the
  // same libraries (the suite runs tests side by side) move its PSS by
  // ~100 KB without it running; the sharer's exit moves it by ~11 MB.
  auto near_now = [&](double shown) { return std::abs(shown - rollup_bytes(w.pid(), "Pss")) < 1048576; };
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return near_now(pss(s));
  }, 10s)) << "pss " << pss(s) << " vs smaps_rollup " << rollup_bytes(w.pid(), "Pss") << "\n" << d->log();
  const double saved0 = saved(s);
  std::this_thread::sleep_for(5s);  // 10 intervals, fewer on a loaded machine's late ticks
  s = d->scrape();
  std::printf("idle 5 s: smaps_rollup reads saved %.0f\n", saved(s) - saved0);
  // 5-8 seen (an interval ends at a tick: 2-3 ticks); none without the gate.
  EXPECT_GE(saved(s) - saved0, 3) << "an idle target's smaps_rollup stands while its clock and statm do";
  EXPECT_TRUE(near_now(pss(s))) << pss(s) << " vs smaps_rollup " << rollup_bytes(w.pid(), "Pss");

  const double shown0 = pss(s);
  const double pss0 = rollup_bytes(w.pid(), "Pss"), rss0 = status_bytes(w.pid(), "VmRSS");
  const uint64_t clock0 = cpu_ns(w.pid());
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  ASSERT_TRUE(wait_until([&] { return rollup_bytes(w.pid(), "Pss") >= pss0 + 6e6; }, 5s))
      << "the child's exit did not raise the parent's PSS: " << pss0 << " -> " << rollup_bytes(w.pid(), "Pss");
  const double pss1 = rollup_bytes(w.pid(), "Pss");
  const auto t0 = std::chrono::steady_clock::now();
  // Six intervals of 0.5 s, each ending at a tick (0.1-3.6 s seen), with
  // room for a loaded machine's late ticks.
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return pss(s) >= shown0 + 6e6 && near_now(pss(s));
  }, 8s, 50ms)) << "pss " << pss(s) << " vs smaps_rollup " << pss1 << " (before the exit: " << pss0 << ")";
  std::printf("PSS %.0f -> %.0f shown %.1f s after the sharer left\n", pss0, pss1,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  EXPECT_EQ(cpu_ns(w.pid()), clock0) << "the workload ran: this did not test a standing clock";
  EXPECT_EQ(status_bytes(w.pid(), "VmRSS"), rss0) << "its resident set moved: statm alone would have shown it";
  w.stop(SIGTERM, 5s);
}
