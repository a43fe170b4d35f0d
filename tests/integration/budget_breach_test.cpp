// Breach prediction on a real workload: heapload leaks at a known rate
// toward its heap budget; 70 s after the leak starts memlensd's predicted
// time to the breach must be within 20 % of the true one, computed from the
// workload's own books: (budget - its in-use bytes) / its leak rate. A
// steady workload already over its budget gets no prediction. And budgets
// follow a reload.
#include <gtest/gtest.h>
#include <signal.h>

#include <cmath>
#include <thread>

#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono;
using namespace std::chrono_literals;

namespace {
// The exposition's lines of one target, for failure messages.
std::string series_of(const std::string& exposition, const std::string& target) {
  std::string out;
  std::size_t pos = 0;
  while (pos < exposition.size()) {
    std::size_t end = exposition.find('\n', pos);
    if (end == std::string::npos) end = exposition.size();
    const std::string line = exposition.substr(pos, end - pos);
    if (line.find("target=\"" + target + "\"") != std::string::npos) out += line + "\n";
    pos = end + 1;
  }
  return out;
}
}  // namespace

TEST(BudgetBreach, PredictedWithin20PercentOfTheTruth70sIntoALeak) {
  if (!is_root()) GTEST_SKIP() << "needs root (the heap figure is read from the allocator's books with process_vm_readv)";
  const double leak_rate = 65536;          // bytes per second
  const double budget = 64.0 * (1 << 20);  // the leaky target's heap budget
  const std::string dir = make_temp_dir();
  const std::string leak_truth = dir + "/leak.jsonl", steady_truth = dir + "/steady.jsonl";
  // The leak starts 5 s in; same-size replacements (--resize 0) keep the
  // steady workload's in-use bytes exactly level.
  Child leaky = spawn({workload_path("heapload"), "--hold", std::to_string(32 << 20), "--churn", "2000", "--leak",
                       std::to_string(leak_rate), "--leak-after", "5", "--truth", leak_truth});
  Child steady = spawn({workload_path("heapload"), "--hold", std::to_string(32 << 20), "--churn", "2000", "--truth",
                        steady_truth});
  auto d = start_daemon(
      "global: {tick_interval: 1s, rescan_interval: 1s, timeline_window: 10m, leak_window: 60s, breach_window: 60s}\n"
      "targets:\n"
      "  - name: leaky\n"
      "    pid: " + std::to_string(leaky.pid()) + "\n"
      "    budgets: {heap: 64MiB, rss: 1GiB}\n"
      "  - name: steady\n"
      "    pid: " + std::to_string(steady.pid()) + "\n"
      "    budgets: {heap: 16MiB}\n");
  ASSERT_TRUE(d);

  ASSERT_TRUE(wait_until([&] { return latest_truth(leak_truth).value("leaking", false); }, 40s));
  const auto leak_start = steady_clock::now();
  const auto first = latest_truth(leak_truth);

  // The budgets are exported as configured, whatever the process does.
  auto s = d->scrape();
  EXPECT_EQ(find_sample(s, "memlens_budget_bytes", {{"target", "leaky"}, {"resource", "heap"}}), budget);
  EXPECT_EQ(find_sample(s, "memlens_budget_bytes", {{"target", "steady"}, {"resource", "heap"}}), 16.0 * (1 << 20));
  EXPECT_EQ(find_sample(s, "memlens_budget_bytes_per_second", {{"target", "leaky"}, {"resource", "leak"}}), 0.0)
      << "a budgets block allows no leak unless it says otherwise";

  std::this_thread::sleep_until(leak_start + 70s);
  s = d->scrape();
  const auto t = latest_truth(leak_truth);
  const auto source = find_label(s, "memlens_heap_bytes", {{"target", "leaky"}}, "source");
  ASSERT_EQ(source.value_or("none"), "allocator") << "the heap figure of a glibc target is its books\n"
                                                  << series_of(http_get(d->url("/metrics")).body, "leaky") << d->log();
  // The workload's own rate and in-use bytes (glibc's mallinfo2, what the
  // books hold: uordblks + hblkhd).
  const double rate = (t["leaked_bytes"].get<double>() - first["leaked_bytes"].get<double>()) /
                      (t["time"].get<double>() - first["time"].get<double>());
  const double in_use = t["uordblks"].get<double>() + t["hblkhd"].get<double>();
  const double truth_seconds = (budget - in_use) / rate;
  const auto predicted = find_sample(s, "memlens_budget_breach_seconds", {{"target", "leaky"}, {"resource", "heap"}});
  const auto conf = find_sample(s, "memlens_budget_breach_confidence", {{"target", "leaky"}, {"resource", "heap"}});
  const auto heap = find_sample(s, "memlens_heap_bytes", {{"target", "leaky"}});
  ASSERT_TRUE(predicted) << "no breach predicted for a heap growing toward its budget\n" << d->log();
  ASSERT_TRUE(conf && heap);
  std::printf("leak %.0f B/s (asked %.0f); heap %.0f B (workload's in-use %.0f B); breach predicted in %.1f s, "
              "true %.1f s (%+.1f %%), confidence %.3f\n",
              rate, leak_rate, *heap, in_use, *predicted, truth_seconds, 100 * (*predicted - truth_seconds) / truth_seconds,
              *conf);
  EXPECT_NEAR(rate, leak_rate, 0.02 * leak_rate) << "the workload leaks at the rate asked";
  EXPECT_GT(truth_seconds, 60) << "the budget is still ahead (test set-up)";
  EXPECT_NEAR(*predicted, truth_seconds, 0.2 * truth_seconds);
  EXPECT_GT(*conf, 0.8) << "a steady leak is predicted with confidence";
  // RSS grows too (its budget is far): what memlensd predicts for it.
  if (auto rss = find_sample(s, "memlens_budget_breach_seconds", {{"target", "leaky"}, {"resource", "rss"}}))
    std::printf("rss: breach of its 1 GiB budget predicted in %.0f s\n", *rss);

  // The steady workload is over its 16 MiB budget and not growing: no
  // prediction, but its heap figure and budget are there for the alert.
  EXPECT_FALSE(find_sample(s, "memlens_budget_breach_seconds", {{"target", "steady"}}));
  const auto steady_heap = find_sample(s, "memlens_heap_bytes", {{"target", "steady"}});
  ASSERT_TRUE(steady_heap);
  EXPECT_GT(*steady_heap, 16.0 * (1 << 20));
  run("rm -rf " + dir);
}

// Budgets follow the config on a reload (SIGHUP); a bad budget keeps the
// running ones and says where.
TEST(BudgetBreach, BudgetsFollowAReload) {
  auto d = start_daemon("targets:\n  - name: me\n    self: true\n    budgets: {rss: 1GiB}\n");
  ASSERT_TRUE(d);
  auto budget = [&](const std::string& resource) {
    return find_sample(d->scrape(), "memlens_budget_bytes", {{"target", "me"}, {"resource", resource}});
  };
  auto reloads = [&](const std::string& result) {
    return find_sample(d->scrape(), "memlens_config_reloads_total", {{"result", result}}).value_or(-1);
  };
  ASSERT_TRUE(wait_until([&] { return budget("rss") == 1073741824.0; }, 5s));

  write_text(d->config_path, "targets:\n  - name: me\n    self: true\n    budgets: {rss: 2GiB, heap: 64MiB}\n");
  ASSERT_EQ(::kill(d->child.pid(), SIGHUP), 0);
  EXPECT_TRUE(wait_until([&] { return budget("rss") == 2147483648.0 && budget("heap") == 67108864.0; }, 5s))
      << d->log();

  write_text(d->config_path, "targets:\n  - name: me\n    self: true\n    budgets: {rss: 2GiB, heap: lots}\n");
  ASSERT_EQ(::kill(d->child.pid(), SIGHUP), 0);
  ASSERT_TRUE(wait_until([&] { return reloads("failure") == 1; }, 5s)) << d->log();
  EXPECT_EQ(budget("heap"), 67108864.0) << "a bad reload keeps the running budgets";
  EXPECT_NE(d->log().find(":4:32: targets[0].budgets.heap: invalid size 'lots'"), std::string::npos) << d->log();
}
