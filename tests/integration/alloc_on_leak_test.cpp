// on-leak mode: allocation tracing stays off until the target's leak slope
// passes its budget, then captures the leaking stack.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono_literals;

TEST(AllocOnLeak, OffUntilTheBudgetIsCrossedThenCapturesTheLeak) {
  if (!is_root()) GTEST_SKIP() << "eBPF needs root";
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/truth.jsonl";
  // Leaks 64 KiB/s from main() after 8 s; the budget is 16 KiB/s.
  Child w = spawn({workload_path("heapload"), "--hold", "2000000", "--churn", "500", "--leak", "65536",
                   "--leak-after", "8", "--leak-block", "4096", "--truth", truth});
  ASSERT_TRUE(wait_until([&] { return !latest_truth(truth).empty(); }, 20s));
  auto d = start_daemon("global: {tick_interval: 500ms, rescan_interval: 500ms, leak_window: 10s}\n"
                        "targets:\n"
                        "  - name: ol\n"
                        "    pid: " + std::to_string(w.pid()) + "\n"
                        "    alloc: {mode: on-leak, leak_budget: 16KiB, on_leak_duration: 60s}\n");
  ASSERT_TRUE(d);
  const std::map<std::string, std::string> sel{{"target", "ol"}, {"mode", "on-leak"}};
  REQUIRE_COLLECTOR(d, "alloc");
  // Before the leak: no probes attached.
  ASSERT_TRUE(wait_until([&] { return find_sample(d->scrape(), "memlens_alloc_tracing", sel).has_value(); }, 10s));
  EXPECT_FALSE(latest_truth(truth).value("leaking", false)) << "the leak started before the first check";
  EXPECT_EQ(find_sample(d->scrape(), "memlens_alloc_tracing", sel), 0.0);
  // After: the slope passes the budget, tracing turns on and finds main().
  ASSERT_TRUE(wait_until([&] { return find_sample(d->scrape(), "memlens_alloc_tracing", sel) == 1.0; }, 40s))
      << d->log();
  nlohmann::json doc;
  ASSERT_TRUE(wait_until([&] {
    auto r = http_get(d->url("/api/v1/targets/ol/leaks"));
    doc = nlohmann::json::parse(r.body, nullptr, false);
    if (r.status != 200 || doc.is_discarded()) return false;
    for (const auto& p : doc["processes"])
      for (const auto& site : p["sites"])
        if (!site["stack"].empty() && site["stack"][0].get<std::string>().rfind("main+", 0) == 0) return true;
    return false;
  }, 30s)) << doc.dump(2);
  EXPECT_NE(d->log().find("> budget 16384 B/s"), std::string::npos) << d->log();
}
