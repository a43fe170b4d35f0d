// Page faults from eBPF (tracepoint exceptions:page_fault_user) against the
// kernel's own per-process counter (/proc/PID/stat minflt) over the same
// interval, on a workload that faults all the time: blocks above glibc's mmap
// threshold are fresh mappings, so every memset of one faults page by page.
#include <gtest/gtest.h>

#include <csignal>
#include <thread>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;

TEST(PageFaults, EbpfCountMatchesTheKernelsOwnCounter) {
  if (!is_root()) GTEST_SKIP() << "eBPF needs root";
  const std::string dir = make_temp_dir();
  Child w = spawn({workload_path("heapload"), "--hold", std::to_string(8 << 20), "--min", "200000", "--max",
                   "300000", "--resize", "1", "--churn", "200", "--warmup", "0", "--truth", dir + "/t"});
  auto d = start_daemon("global: {tick_interval: 250ms, rescan_interval: 250ms}\n"
                        "targets: [{name: faulty, pid: " + std::to_string(w.pid()) + "}]\n");
  ASSERT_TRUE(d);
  const std::map<std::string, std::string> sel{{"target", "faulty"}};
  auto bpf_total = [&](const std::vector<PromSample>& s) {
    auto r = find_sample(s, "memlens_bpf_page_faults_total", {{"target", "faulty"}, {"access", "read"}});
    auto wr = find_sample(s, "memlens_bpf_page_faults_total", {{"target", "faulty"}, {"access", "write"}});
    return (r && wr) ? std::optional<double>(*r + *wr) : std::nullopt;
  };
  if (!wait_until([&] { return bpf_total(d->scrape()).has_value(); }, 10s)) {
    REQUIRE_COLLECTOR(d, "faults");
    FAIL() << "no eBPF page fault series\n" << d->log();
  }
  // Both ends are read with the workload stopped, so that neither counter
  // can be read a moment later than the other while it faults thousands of
  // times a second (a daemon preempted between the two reads under the
  // suite's load would otherwise count the difference).
  auto stopped_scrape = [&] {
    ::kill(w.pid(), SIGSTOP);
    std::this_thread::sleep_for(1s);  // four ticks
    return d->scrape();
  };
  const auto s0 = stopped_scrape();
  ::kill(w.pid(), SIGCONT);
  std::this_thread::sleep_for(4s);
  const auto s1 = stopped_scrape();
  ::kill(w.pid(), SIGCONT);
  const double bpf = *bpf_total(s1) - *bpf_total(s0);
  const double proc = *find_sample(s1, "memlens_page_faults_total", {{"target", "faulty"}, {"kind", "minor"}}) -
                      *find_sample(s0, "memlens_page_faults_total", {{"target", "faulty"}, {"kind", "minor"}});
  std::printf("faults over the interval: eBPF %.0f, /proc minflt %.0f\n", bpf, proc);
  EXPECT_GT(proc, 1000) << "the workload faults all the time";
  // Faults the kernel takes on user memory from kernel mode count in minflt
  // only, so eBPF may be a little lower; it can never be higher.
  EXPECT_LE(bpf, proc);
  EXPECT_GE(bpf, 0.9 * proc);
}
