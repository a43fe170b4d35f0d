// End to end: a real Prometheus evaluates the shipped alert rules (a copy
// with every `for:` cut to 2 s) against a running memlensd watching
// workloads with budgets from its config: one over its heap and RSS budget,
// one leaking toward its heap budget, one well within its budgets. The
// budget alerts reach `firing` for the first two and never for the third.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

struct Alert {
  std::map<std::string, std::string> labels;
  std::string state;
};

std::vector<Alert> alerts(int port) {
  std::vector<Alert> out;
  auto r = http_get("http://127.0.0.1:" + std::to_string(port) + "/api/v1/alerts");
  if (r.status != 200) return out;
  auto doc = nlohmann::json::parse(r.body, nullptr, false);
  if (doc.is_discarded() || doc["status"] != "success") return out;
  for (const auto& a : doc["data"]["alerts"]) {
    Alert x;
    for (const auto& [k, v] : a["labels"].items()) x.labels[k] = v.get<std::string>();
    x.state = a.value("state", "");
    out.push_back(std::move(x));
  }
  return out;
}

// A label of an alert, "" when it has none (daemon-wide alerts have no target).
std::string label(const Alert& a, const std::string& k) {
  auto it = a.labels.find(k);
  return it == a.labels.end() ? "" : it->second;
}

// The alert `name` of a target, if active (pending or firing).
const Alert* find_alert(const std::vector<Alert>& all, const std::string& name, const std::string& target) {
  for (const auto& a : all)
    if (label(a, "alertname") == name && label(a, "target") == target) return &a;
  return nullptr;
}

std::string state_of(const std::vector<Alert>& all, const std::string& name, const std::string& target) {
  const Alert* a = find_alert(all, name, target);
  return a ? a->state : "";
}

}  // namespace

TEST(EndToEnd, ShippedBudgetAlertsFireInARealPrometheus) {
  if (run("command -v prometheus") != 0) GTEST_SKIP() << "prometheus is not installed (Debian package prometheus)";
  const std::string dir = make_temp_dir("memlens-e2e-budgets");
  // Same-size replacements keep a steady workload's heap level.
  Child over = spawn({workload_path("heapload"), "--hold", std::to_string(32 << 20), "--churn", "1000", "--truth",
                      dir + "/over.jsonl"});
  Child leaky = spawn({workload_path("heapload"), "--hold", std::to_string(32 << 20), "--churn", "1000", "--leak",
                       "65536", "--truth", dir + "/leaky.jsonl"});
  Child within = spawn({workload_path("heapload"), "--hold", std::to_string(8 << 20), "--churn", "1000", "--truth",
                        dir + "/within.jsonl"});
  auto d = start_daemon(
      "global: {tick_interval: 1s, rescan_interval: 1s, timeline_window: 5m, leak_window: 30s, breach_window: 30s}\n"
      "targets:\n"
      "  - name: e2e-over\n"
      "    pid: " + std::to_string(over.pid()) + "\n"
      "    budgets: {heap: 16MiB, rss: 16MiB}\n"
      "  - name: e2e-leaky\n"
      "    pid: " + std::to_string(leaky.pid()) + "\n"
      "    budgets: {heap: 64MiB}\n"
      "  - name: e2e-within\n"
      "    pid: " + std::to_string(within.pid()) + "\n"
      "    budgets: {heap: 1GiB, rss: 1GiB, peak: 1GiB}\n");
  ASSERT_TRUE(d);

  // The shipped rules, every `for:` cut short so the test takes seconds.
  const std::string rules = dir + "/memlens.rules.yml";
  const std::string shipped = read_text(std::string(MEMLENS_SOURCE_DIR) + "/deploy/prometheus/memlens.rules.yml");
  const std::string copy = std::regex_replace(shipped, std::regex(R"(\bfor: \w+)"), "for: 2s");
  ASSERT_NE(copy, shipped);
  write_text(rules, copy);
  const int prom_port = free_port();
  const std::string cfg = dir + "/prometheus.yml";
  write_text(cfg,
             "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
             "rule_files:\n  - " + rules + "\n"
             "scrape_configs:\n"
             "  - job_name: memlens\n"
             "    static_configs:\n"
             "      - targets: ['127.0.0.1:" + std::to_string(d->port) + "']\n");
  // The heap figure of a glibc target is its books once memlensd has read
  // them (a tick or two after discovery; /proc's anon before): the alert
  // keeps the labels of its first evaluation, so Prometheus starts after.
  ASSERT_TRUE(wait_until([&] {
    return find_label(d->scrape(), "memlens_heap_bytes", {{"target", "e2e-over"}}, "source").value_or("") == "allocator";
  }, 30s)) << d->log();
  Child prom = spawn({"prometheus", "--config.file=" + cfg, "--storage.tsdb.path=" + dir + "/data",
                      "--web.listen-address=127.0.0.1:" + std::to_string(prom_port), "--log.level=warn"},
                     dir + "/prometheus.log");
  ASSERT_TRUE(wait_until([&] { return http_get("http://127.0.0.1:" + std::to_string(prom_port) + "/-/ready").status == 200; }, 60s))
      << read_text(dir + "/prometheus.log");
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };

  // Over its heap and RSS budgets: both alerts fire, the heap one saying
  // which figure it held against the budget.
  std::vector<Alert> now;
  const bool over_fired = wait_until([&] {
    now = alerts(prom_port);
    return state_of(now, "MemlensHeapOverBudget", "e2e-over") == "firing" &&
           state_of(now, "MemlensRSSOverBudget", "e2e-over") == "firing";
  }, 60s, 500ms);
  ASSERT_TRUE(over_fired) << "alerts now: " << http_get("http://127.0.0.1:" + std::to_string(prom_port) + "/api/v1/alerts").body
                          << "\n" << read_text(dir + "/prometheus.log") << d->log();
  std::printf("over its budgets: MemlensHeapOverBudget and MemlensRSSOverBudget firing %.1f s after Prometheus was ready\n",
              since());
  const Alert* heap = find_alert(now, "MemlensHeapOverBudget", "e2e-over");
  ASSERT_TRUE(heap);
  EXPECT_EQ(label(*heap, "pid"), std::to_string(over.pid()));
  EXPECT_EQ(label(*heap, "severity"), "warning");
  EXPECT_EQ(label(*heap, "source"), "allocator");

  // Leaking toward its budget, minutes away: the breach is predicted (the
  // trend is half a breach_window old first), with confidence.
  const bool predicted = wait_until([&] {
    now = alerts(prom_port);
    return state_of(now, "MemlensBudgetBreachPredicted", "e2e-leaky") == "firing";
  }, 60s, 500ms);
  std::printf("leaking toward its budget: MemlensBudgetBreachPredicted firing %.1f s after Prometheus was ready\n",
              since());
  EXPECT_TRUE(predicted) << "alerts now: "
                         << http_get("http://127.0.0.1:" + std::to_string(prom_port) + "/api/v1/alerts").body;
  if (const Alert* a = find_alert(now, "MemlensBudgetBreachPredicted", "e2e-leaky")) {
    EXPECT_EQ(label(*a, "resource"), "heap");
  }

  // Within its budgets: no budget alert at all, pending or firing.
  for (const auto& a : alerts(prom_port)) {
    if (label(a, "target") != "e2e-within") continue;
    EXPECT_EQ(label(a, "alertname").find("OverBudget"), std::string::npos)
        << label(a, "alertname") << " is " << a.state << " for a target within its budgets";
  }
  EXPECT_EQ(state_of(alerts(prom_port), "MemlensHeapOverBudget", "e2e-leaky"), "") << "64 MiB is still ahead";
  run("rm -rf " + dir);
}
