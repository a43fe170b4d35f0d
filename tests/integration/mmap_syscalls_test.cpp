// The system-call path of heap growth (bpf/mmap.bpf.c): memlens' per-call
// counts of mmap, munmap, mremap, brk and mprotect, and the bytes of private
// writable memory (VmData) each made or gave back, against the workload's own
// truth (computed from its arguments, and VmData read by itself before and
// after). Also a stripped static binary (no allocator symbols), many
// short-lived targets (no map entries left), a full target map (drops
// counted) and no eBPF capabilities (the collector says why).
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <algorithm>
#include <thread>

#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

const char* const kCalls[] = {"mmap", "munmap", "mremap", "brk", "mprotect"};

#define REQUIRE_ROOT() \
  if (!is_root()) GTEST_SKIP() << "needs root (eBPF tracepoints)"

#define REQUIRE_MMAP_COLLECTOR(d) REQUIRE_COLLECTOR(d, "mmap")

double sample(const std::vector<PromSample>& s, const std::string& name, const std::string& pid,
              const std::string& call) {
  return find_sample(s, name, {{"pid", pid}, {"call", call}}).value_or(-1);
}

bool traced(const std::vector<PromSample>& s, const std::string& pid) {
  return find_sample(s, "memlens_mmap_calls_total", {{"pid", pid}, {"call", "mmap"}}).has_value();
}

// A scrape whose snapshot was built after now: two more ticks.
std::vector<PromSample> fresh_scrape(const Daemon& d) {
  const double t0 = find_sample(d.scrape(), "memlens_ticks_total").value_or(0);
  std::vector<PromSample> s;
  EXPECT_TRUE(wait_until([&] {
    s = d.scrape();
    return find_sample(s, "memlens_ticks_total").value_or(0) >= t0 + 2;
  }, 20s));
  return s;
}

nlohmann::json wait_phase(const std::string& truth, const std::string& phase) {
  nlohmann::json t;
  EXPECT_TRUE(wait_until([&] {
    t = latest_truth(truth);
    return t.value("phase", "") == phase;
  }, 60s)) << "workload did not reach phase " << phase << "; last truth: " << t.dump();
  return t;
}

// Every call's count and bytes equal the workload's own, and their sum
// equals the workload's change of VmData.
void expect_equal_to_truth(const std::vector<PromSample>& s, const std::string& pid, const nlohmann::json& t) {
  double net = 0;
  std::printf("%-9s %12s %12s %14s %14s %14s %14s\n", "call", "calls", "truth", "mapped", "truth", "unmapped",
              "truth");
  for (const char* c : kCalls) {
    const double calls = sample(s, "memlens_mmap_calls_total", pid, c);
    const double mapped = sample(s, "memlens_mapped_bytes_total", pid, c);
    const double unmapped = sample(s, "memlens_unmapped_bytes_total", pid, c);
    const double want_calls = t["calls"][c].get<double>();
    const double want_mapped = t["mapped_bytes"][c].get<double>();
    const double want_unmapped = t["unmapped_bytes"][c].get<double>();
    std::printf("%-9s %12.0f %12.0f %14.0f %14.0f %14.0f %14.0f\n", c, calls, want_calls, mapped, want_mapped,
                unmapped, want_unmapped);
    EXPECT_EQ(calls, want_calls) << c << " calls";
    EXPECT_EQ(mapped, want_mapped) << c << " mapped bytes";
    EXPECT_EQ(unmapped, want_unmapped) << c << " unmapped bytes";
    net += mapped - unmapped;
  }
  const double vmdata = t["vmdata_after_bytes"].get<double>() - t["vmdata_before_bytes"].get<double>();
  std::printf("mapped - unmapped %.0f, workload's VmData change %.0f\n", net, vmdata);
  EXPECT_EQ(net, vmdata) << "the charges add up to the change of VmData";
}

std::string pid_config(const std::string& name, pid_t pid, const std::string& extra = "") {
  return "global: {tick_interval: 250ms, rescan_interval: 250ms}\n"
         "targets:\n"
         "  - name: " + name + "\n"
         "    pid: " + std::to_string(pid) + "\n" + extra;
}

// Waits for the target's /proc metrics (memlens_data_bytes) and checks the
// mmap collector is reported disabled; `s` is the scrape.
bool proc_metrics_without_mmap(const Daemon& d, const std::string& pid, std::vector<PromSample>& s) {
  if (!wait_until([&] {
        s = d.scrape();
        return find_sample(s, "memlens_data_bytes", {{"pid", pid}}).has_value();
      }, 10s))
    return false;
  return find_sample(s, "memlens_collector_enabled", {{"collector", "mmap"}}) == 0.0;
}

}  // namespace

TEST(MmapSyscalls, PerCallBytesAndCallsEqualTheWorkloadsOwn) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/truth.jsonl", start = dir + "/start";
  Child w = spawn({workload_path("mmapload"), "--truth", truth, "--start", start, "--iterations", "25", "--pages",
                   "96"});
  auto d = start_daemon(pid_config("mm", w.pid()));
  ASSERT_TRUE(d);
  REQUIRE_MMAP_COLLECTOR(d);
  const std::string pid = std::to_string(w.pid());
  // Traced (its map entry and baseline exist) before it makes a call.
  ASSERT_TRUE(wait_until([&] { return traced(d->scrape(), pid); }, 15s)) << d->log();
  EXPECT_EQ(latest_truth(truth).value("phase", ""), "waiting");
  write_text(start, "");
  auto t = wait_phase(truth, "done");
  ASSERT_FALSE(HasFailure());
  auto s = fresh_scrape(*d);
  expect_equal_to_truth(s, pid, t);
  // The level: VmData as the proc collector reads it.
  EXPECT_EQ(find_sample(s, "memlens_data_bytes", {{"pid", pid}}), t["vmdata_after_bytes"].get<double>());
  EXPECT_EQ(find_sample(s, "memlens_bpf_events_dropped_total", {{"collector", "mmap"}, {"reason", "read"}}), 0.0);
  EXPECT_EQ(find_sample(s, "memlens_bpf_map_entries", {{"map", "mmap_stats"}}), 1.0);
  EXPECT_GT(find_sample(s, "memlens_bpf_map_memory_bytes", {{"collector", "mmap"}}).value_or(0), 0);
}

// Exec replaces the address space: what the old one held must not be
// charged to the new image's first call (as a huge unmap), and the new
// image's calls are exact again.
TEST(MmapSyscalls, ExecStartsAFreshBaseline) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/truth.jsonl", pre = dir + "/pre", start = dir + "/start";
  const double big = 64.0 * 1024 * 1024;
  Child w = spawn({workload_path("mmapload"), "--truth", truth, "--start", start, "--iterations", "5",
                   "--pre-exec-mib", "64", "--pre-exec-start", pre});
  auto d = start_daemon(pid_config("exec", w.pid()));
  ASSERT_TRUE(d);
  REQUIRE_MMAP_COLLECTOR(d);
  const std::string pid = std::to_string(w.pid());
  ASSERT_TRUE(wait_until([&] { return traced(d->scrape(), pid); }, 15s)) << d->log();
  write_text(pre, "");
  nlohmann::json t;
  ASSERT_TRUE(wait_until([&] {
    t = latest_truth(truth);
    return t.value("phase", "") == "waiting" && t.value("execed", 0) == 1;
  }, 20s)) << t.dump();
  auto s0 = fresh_scrape(*d);
  double unmapped0 = 0;
  for (const char* c : kCalls) unmapped0 += sample(s0, "memlens_unmapped_bytes_total", pid, c);
  std::printf("after exec, before the script: mapped by mmap %.0f, unmapped by any call %.0f\n",
              sample(s0, "memlens_mapped_bytes_total", pid, "mmap"), unmapped0);
  EXPECT_GE(sample(s0, "memlens_mapped_bytes_total", pid, "mmap"), big) << "the old image's 64 MiB mapping";
  EXPECT_LT(unmapped0, big / 2) << "the old address space was charged to a call of the new image";

  write_text(start, "");
  t = wait_phase(truth, "done");
  ASSERT_FALSE(HasFailure());
  auto s1 = fresh_scrape(*d);
  // The new image's script alone: the difference of the two scrapes.
  for (const char* c : kCalls) {
    for (auto [name, field] : {std::pair{"memlens_mmap_calls_total", "calls"},
                               std::pair{"memlens_mapped_bytes_total", "mapped_bytes"},
                               std::pair{"memlens_unmapped_bytes_total", "unmapped_bytes"}})
      EXPECT_EQ(sample(s1, name, pid, c) - sample(s0, name, pid, c), t[field][c].get<double>()) << name << " " << c;
  }
}

TEST(MmapSyscalls, StrippedStaticBinaryGrowthIsSeen) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/truth.jsonl", start = dir + "/start", start2 = dir + "/start2";
  // Phase 1: the script (exact per call). Phase 2: 16 MiB through the static
  // glibc's malloc, small blocks (brk heap) and 4 MiB ones (own mappings).
  const long malloc_kib = 16384;
  Child w = spawn({workload_path("mmapload_static"), "--truth", truth, "--start", start, "--start2", start2,
                   "--iterations", "10", "--malloc-kib", std::to_string(malloc_kib)});
  auto d = start_daemon(pid_config("static", w.pid(), "    alloc: {mode: full}\n"));
  ASSERT_TRUE(d);
  REQUIRE_MMAP_COLLECTOR(d);
  const std::string pid = std::to_string(w.pid());
  ASSERT_TRUE(wait_until([&] { return traced(d->scrape(), pid); }, 15s)) << d->log();
  write_text(start, "");
  auto t1 = wait_phase(truth, "scripted");
  ASSERT_FALSE(HasFailure());
  auto s1 = fresh_scrape(*d);
  expect_equal_to_truth(s1, pid, t1);

  write_text(start2, "");
  auto t2 = wait_phase(truth, "done");
  ASSERT_FALSE(HasFailure());
  auto s2 = fresh_scrape(*d);
  double net = 0, grown = 0;
  for (const char* c : kCalls) {
    net += sample(s2, "memlens_mapped_bytes_total", pid, c) - sample(s2, "memlens_unmapped_bytes_total", pid, c);
    grown += (sample(s2, "memlens_mapped_bytes_total", pid, c) - sample(s1, "memlens_mapped_bytes_total", pid, c));
  }
  const double vmdata = t2["vmdata_after_bytes"].get<double>() - t2["vmdata_before_bytes"].get<double>();
  const double malloc_vmdata = t2["vmdata_after_bytes"].get<double>() - t1["vmdata_after_bytes"].get<double>();
  const double brk_grown =
      sample(s2, "memlens_mapped_bytes_total", pid, "brk") - sample(s1, "memlens_mapped_bytes_total", pid, "brk");
  const double mmap_grown =
      sample(s2, "memlens_mapped_bytes_total", pid, "mmap") - sample(s1, "memlens_mapped_bytes_total", pid, "mmap");
  std::printf("malloc phase: VmData +%.0f (workload), memlens mapped +%.0f (brk %.0f, mmap %.0f); "
              "net since added %.0f vs VmData change %.0f\n",
              malloc_vmdata, grown, brk_grown, mmap_grown, net, vmdata);
  const double small = t2["malloc_small_bytes"].get<double>(), large = t2["malloc_large_bytes"].get<double>();
  ASSERT_GT(small, 0);
  ASSERT_GT(large, 0);
  EXPECT_GE(malloc_vmdata, large + 0.9 * small) << "the workload grew its heap as asked";
  EXPECT_EQ(net, vmdata) << "the whole change of VmData is seen, malloc included";
  EXPECT_EQ(brk_grown + mmap_grown, malloc_vmdata) << "all of the malloc growth is charged to brk and mmap";
  // Large blocks are mappings of their own (request + header, page-rounded);
  // small ones fill the brk heap, less what was free at its top already.
  EXPECT_GE(mmap_grown, large);
  EXPECT_GE(brk_grown, 0.9 * small);
  std::printf("allocator probes on the stripped binary: %s\n",
              find_sample(s2, "memlens_allocs_total", {{"pid", pid}}) ? "yes" : "none");
}

TEST(MmapSyscalls, TwoHundredShortLivedTargetsLeaveNoMapEntries) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  auto d = start_daemon(
      "global: {tick_interval: 250ms, rescan_interval: 250ms}\n"
      "targets:\n"
      "  - name: brief\n"
      "    comm: mmapload\n"
      "    cmdline: \"" + dir + "/\"\n");
  ASSERT_TRUE(d);
  REQUIRE_MMAP_COLLECTOR(d);
  // 20 at a time; each runs the script once, stays 0.8 s (long enough to be
  // discovered; 2 s for a sanitized memlensd, whose rescans of a loaded
  // machine were seen to miss 26 of 200 at 0.8 s) and exits.
  constexpr int kTargets = 200, kBatch = 20;
  const std::string linger = daemon_sanitized() ? "2000" : "800";
  double most = 0;
  for (int i = 0; i < kTargets; i += kBatch) {
    std::vector<Child> batch;
    for (int j = 0; j < kBatch; ++j)
      batch.push_back(spawn({workload_path("mmapload"), "--quick", "--linger-ms", linger, "--truth",
                             dir + "/t" + std::to_string(i + j)}));
    std::this_thread::sleep_for(600ms);
    most = std::max(most, find_sample(d->scrape(), "memlens_bpf_map_entries", {{"map", "mmap_stats"}}).value_or(0));
    for (auto& c : batch) ASSERT_EQ(c.wait_exit(20s), 0);
  }
  std::vector<PromSample> s;
  EXPECT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_bpf_map_entries", {{"map", "mmap_stats"}}) == 0.0;
  }, 20s)) << "map entries left after every target exited";
  const double exited = find_sample(s, "memlens_targets_exited_total").value_or(0);
  std::printf("most entries seen at once %.0f; targets exited %.0f of %d\n", most, exited, kTargets);
  EXPECT_GT(most, 0) << "the short-lived targets were traced";
  EXPECT_GE(exited, 0.9 * kTargets) << "most were discovered while alive";
  EXPECT_EQ(find_sample(s, "memlens_bpf_events_dropped_total", {{"collector", "mmap"}, {"reason", "map_full"}}), 0.0);
  EXPECT_TRUE(d->child.running()) << d->log();
  EXPECT_EQ(http_get(d->url("/healthz")).status, 200);
}

TEST(MmapSyscalls, FullTargetMapCountsDropsNeverSilent) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  constexpr int kMapTargets = 2, kTargets = 5;
  auto d = start_daemon(
      "global: {tick_interval: 250ms, rescan_interval: 250ms}\n"
      "bpf: {max_targets: " + std::to_string(kMapTargets) + "}\n"
      "targets:\n"
      "  - name: crowd\n"
      "    comm: mmapload\n"
      "    cmdline: \"" + dir + "/\"\n");
  ASSERT_TRUE(d);
  REQUIRE_MMAP_COLLECTOR(d);
  const std::string start = dir + "/start";
  std::vector<Child> ws;
  for (int i = 0; i < kTargets; ++i)
    ws.push_back(spawn({workload_path("mmapload"), "--truth", dir + "/t" + std::to_string(i), "--start", start,
                        "--iterations", "3"}));
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_targets_watched", {{"target", "crowd"}}) == double(kTargets);
  }, 20s)) << d->log();
  s = fresh_scrape(*d);
  EXPECT_EQ(find_sample(s, "memlens_bpf_map_entries", {{"map", "mmap_stats"}}), double(kMapTargets));
  EXPECT_EQ(find_sample(s, "memlens_bpf_events_dropped_total", {{"collector", "mmap"}, {"reason", "map_full"}}),
            double(kTargets - kMapTargets));
  std::vector<int> in_map;
  for (int i = 0; i < kTargets; ++i) {
    const std::string pid = std::to_string(ws[i].pid());
    EXPECT_TRUE(find_sample(s, "memlens_data_bytes", {{"pid", pid}})) << "the /proc level stays for every target";
    if (traced(s, pid)) in_map.push_back(i);
  }
  EXPECT_EQ(in_map.size(), std::size_t{kMapTargets}) << "untraced targets get no (zero) mmap series";
  // Those that fit are still exact.
  write_text(start, "");
  for (int i : in_map) {
    auto t = wait_phase(dir + "/t" + std::to_string(i), "done");
    ASSERT_FALSE(HasFailure());
    expect_equal_to_truth(fresh_scrape(*d), std::to_string(ws[i].pid()), t);
  }
  EXPECT_TRUE(d->child.running()) << d->log();
}

TEST(MmapSyscalls, WithoutBpfCapabilitiesTheCollectorSaysWhy) {
  REQUIRE_ROOT();
  if (run("command -v capsh >/dev/null") != 0) GTEST_SKIP() << "capsh (libcap2-bin) is not installed";
  const std::string dir = make_temp_dir();
  Child w = spawn({workload_path("mmapload"), "--truth", dir + "/t", "--start", dir + "/never"});
  auto d = start_daemon(pid_config("nocap", w.pid()), {},
                        {"capsh", "--drop=cap_bpf,cap_sys_admin,cap_perfmon", "--", "-c", "exec \"$@\"", "sh"});
  ASSERT_TRUE(d);
  const std::string pid = std::to_string(w.pid());
  std::vector<PromSample> s;
  ASSERT_TRUE(proc_metrics_without_mmap(*d, pid, s)) << d->log();
  EXPECT_EQ(find_label(s, "memlens_collector_enabled", {{"collector", "mmap"}}, "reason"), "capability");
  EXPECT_NE(d->log().find("collector mmap disabled: eBPF unavailable: missing CAP_BPF"), std::string::npos) << d->log();
  EXPECT_FALSE(traced(s, pid));
}

// bpf.syscalls: false leaves the tracepoints off (every system call on the
// host pays while they are on): the collector says so, /proc goes on.
TEST(MmapSyscalls, SwitchedOffByConfig) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  Child w = spawn({workload_path("mmapload"), "--truth", dir + "/t", "--start", dir + "/never"});
  auto d = start_daemon("bpf: {syscalls: false}\n" + pid_config("off", w.pid()));
  ASSERT_TRUE(d);
  const std::string pid = std::to_string(w.pid());
  std::vector<PromSample> s;
  ASSERT_TRUE(proc_metrics_without_mmap(*d, pid, s)) << d->log();
  EXPECT_FALSE(traced(s, pid));
}

// Switched off by a reload (SIGHUP), and on again: the tracepoints go and
// come back (a reload with syscalls: false used to leave them attached).
TEST(MmapSyscalls, SwitchedOffAndOnByReload) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  Child w = spawn({workload_path("mmapload"), "--truth", dir + "/t", "--start", dir + "/never"});
  const std::string pid = std::to_string(w.pid());
  auto d = start_daemon(pid_config("reload", w.pid()));
  ASSERT_TRUE(d);
  REQUIRE_MMAP_COLLECTOR(d);
  // The tracepoints are perf events held by memlensd (its other collectors
  // here use none: no uprobes, raw tracepoints are BPF links).
  auto links = [&] {
    std::string out;
    run("ls -l /proc/" + std::to_string(d->child.pid()) + "/fd | grep -c 'perf_event' || true", &out);
    return std::atoi(out.c_str());
  };
  const int attached = links();
  EXPECT_GE(attached, 5) << "mmap, munmap, mremap, brk, mprotect";
  ASSERT_TRUE(wait_until([&] { return traced(d->scrape(), pid); }, 10s));
  write_text(d->config_path, "bpf: {syscalls: false}\n" + pid_config("reload", w.pid()));
  ::kill(d->child.pid(), SIGHUP);
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_collector_enabled", {{"collector", "mmap"}}) == 0.0;
  }, 10s)) << d->log();
  EXPECT_EQ(find_label(s, "memlens_collector_enabled", {{"collector", "mmap"}}, "reason"), "config");
  EXPECT_EQ(links(), 0) << "every tracepoint detached";
  EXPECT_TRUE(wait_until([&] { return !traced(d->scrape(), pid); }, 5s));
  write_text(d->config_path, pid_config("reload", w.pid()));
  ::kill(d->child.pid(), SIGHUP);
  EXPECT_TRUE(wait_until([&] { return traced(d->scrape(), pid); }, 10s)) << d->log();
  EXPECT_EQ(links(), attached);
}
