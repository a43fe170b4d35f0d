// V8's own heap, from outside and with no flag for memlensd: uretprobes on
// Heap::SizeOfObjects and Heap::CommittedMemory, which V8's GC tracer calls
// at each collection's end. A Node workload holds a 16 MiB base of JS
// objects, then leaks 256 KiB of them a second, collects every second and
// logs v8.getHeapStatistics() right after: memlensd's figures must be
// within 5 % of what the workload itself read, and the target's leak slope,
// fitted on V8's heap, within 10 % of the rate the workload's own figures
// grow at.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono;
using namespace std::chrono_literals;

namespace {

std::vector<nlohmann::json> truth_lines(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::istringstream in(read_text(path));
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded()) out.push_back(std::move(j));
  }
  return out;
}

// Relative distance from `v` to the nearest of the last `k` truth values of
// `field`: memlensd shows the figures of the last collection it saw end,
// one of the workload's last few.
double nearest_error(const std::vector<nlohmann::json>& t, const char* field, double v, std::size_t k = 3) {
  double best = 1e9;
  for (std::size_t i = t.size() > k ? t.size() - k : 0; i < t.size(); ++i) {
    const double x = t[i][field].get<double>();
    best = std::min(best, std::fabs(v - x) / x);
  }
  return best;
}

std::string source_dir() { return MEMLENS_SOURCE_DIR; }

}  // namespace

TEST(V8Heap, UsedAndCommittedMatchTheWorkloadAndTheSlopeFollowsItsLeak) {
  ASSERT_TRUE(is_root()) << "uretprobes need root";
  ASSERT_EQ(run("command -v node"), 0) << "node is missing (Debian package nodejs)";
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/v8.jsonl";
  Child w = spawn({"/usr/bin/node", "--expose-gc", source_dir() + "/tests/workloads/v8_heap.js", truth, "262144", "8"},
                  dir + "/node.log");
  auto d = start_daemon("global: {tick_interval: 1s, rescan_interval: 1s, leak_window: 60s}\n"
                        "targets: [{name: api, pid: " + std::to_string(w.pid()) + "}]\n");
  ASSERT_TRUE(d);
  const std::map<std::string, std::string> who{{"target", "api"}};
  ASSERT_TRUE(wait_until([&] { return find_sample(d->scrape(), "memlens_v8_heap_used_bytes", who).has_value(); },
                         daemon_sanitized() ? 40s : 20s))
      << "no V8 heap figures\n" << d->log() << read_text(dir + "/node.log");

  // Every 5 s for a minute and more: both figures against the workload's.
  double worst_used = 0, worst_committed = 0;
  int checks = 0;
  std::vector<PromSample> s;
  const auto start = steady_clock::now();
  while (steady_clock::now() - start < 75s) {
    std::this_thread::sleep_for(5s);
    s = d->scrape();
    const auto t = truth_lines(truth);
    const auto used = find_sample(s, "memlens_v8_heap_used_bytes", who);
    const auto committed = find_sample(s, "memlens_v8_heap_committed_bytes", who);
    ASSERT_TRUE(used && committed && !t.empty());
    worst_used = std::max(worst_used, nearest_error(t, "used", *used));
    worst_committed = std::max(worst_committed, nearest_error(t, "committed", *committed));
    ++checks;
  }
  std::printf("%d checks: V8 heap used within %.2f %%, committed within %.2f %% of the workload's own\n", checks,
              100 * worst_used, 100 * worst_committed);
  EXPECT_LT(worst_used, 0.05);
  EXPECT_LT(worst_committed, 0.05);

  // The heap figure of a Node target is V8's, and its leak slope runs on it.
  EXPECT_TRUE(find_sample(s, "memlens_heap_bytes", {{"target", "api"}, {"source", "v8"}}))
      << "the budget heap figure of a Node target is V8's";
  const auto t = truth_lines(truth);
  ASSERT_GE(t.size(), 70u);
  // The workload's own growth over the last 60 s of its log.
  const auto& last = t.back();
  const nlohmann::json* first = nullptr;
  for (const auto& x : t)
    if (x["time"].get<double>() >= last["time"].get<double>() - 60 && x["leaking"].get<bool>()) {
      first = &x;
      break;
    }
  ASSERT_TRUE(first);
  const double rate = (last["used"].get<double>() - (*first)["used"].get<double>()) /
                      (last["time"].get<double>() - (*first)["time"].get<double>());
  const auto slope = find_sample(s, "memlens_leak_slope_bytes_per_second", who);
  ASSERT_TRUE(slope) << d->log();
  std::printf("leak slope %.0f B/s; the workload's V8 heap grew %.0f B/s\n", *slope, rate);
  EXPECT_NEAR(*slope, rate, 0.1 * rate);
  EXPECT_EQ(find_sample(s, "memlens_gc_bpf_errors_total", {{"reason", "v8_full"}}).value_or(-1), 0);
  run("rm -rf " + dir);
}
