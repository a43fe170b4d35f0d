// Budgets: the config block (units as people write them, errors with file
// and line), the heap figure they are held against, and the breach
// prediction from a trend.
#include <gtest/gtest.h>

#include <cmath>

#include "daemon/budget.h"
#include "daemon/config.h"
#include "tests/support/support.h"

using namespace memlens;

namespace {
Result<Config> parse(const std::string& budgets) {
  return parse_config("targets:\n  - name: web\n    comm: node\n    budgets:\n" + budgets, "b.yaml");
}
std::string error_of(const std::string& budgets) {
  auto c = parse(budgets);
  EXPECT_FALSE(c.ok()) << "accepted:\n" << budgets;
  return c.ok() ? "" : c.error().message;
}
}  // namespace

TEST(Budgets, UnitsAsPeopleWriteThem) {
  auto c = parse(
      "      rss: 512MiB\n"
      "      heap: 128MiB\n"
      "      peak: 1GB\n"
      "      alloc_rate: 1MB/s\n"
      "      fragmentation: 20%\n"
      "      gc_pause_p99: 10ms\n"
      "      shared_buffers: 256MiB\n"
      "      connection_memory: 50MiB\n"
      "      temp_files: 16MiB\n"
      "      bundle: 500KB\n"
      "      renderer_memory: 30MB\n");
  ASSERT_TRUE(c.ok()) << c.error().message;
  const TargetPolicy& p = c->targets[0];
  auto v = [&](const char* r) { return p.budget(r) ? p.budget(r)->value : NAN; };
  EXPECT_EQ(v("rss"), 512.0 * 1024 * 1024);
  EXPECT_EQ(v("heap"), 128.0 * 1024 * 1024);
  EXPECT_EQ(v("peak"), 1e9);
  EXPECT_EQ(v("alloc_rate"), 1e6);
  EXPECT_DOUBLE_EQ(v("fragmentation"), 0.2);
  EXPECT_DOUBLE_EQ(v("gc_pause_p99"), 0.010);
  EXPECT_EQ(v("bundle"), 500e3);
  EXPECT_EQ(v("renderer_memory"), 30e6);
  EXPECT_EQ(v("leak"), 0) << "a budgets block allows no leak unless it says otherwise";
  EXPECT_EQ(p.budget("alloc_rate")->unit, BudgetUnit::bytes_per_second);
  EXPECT_EQ(p.budget("gc_pause_p99")->unit, BudgetUnit::seconds);
  EXPECT_EQ(p.budget("fragmentation")->unit, BudgetUnit::ratio);
  // Every key once, in the documented order.
  EXPECT_EQ(p.budgets.size(), std::size(kBudgetKeys));
  for (std::size_t i = 0; i < p.budgets.size(); ++i) EXPECT_EQ(p.budgets[i].resource, kBudgetKeys[i].name);
}

TEST(Budgets, LeakAndOtherForms) {
  auto c = parse("      leak: 4KiB/s\n      fragmentation: 0.35\n      alloc_rate: 2048\n");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->targets[0].budget("leak")->value, 4096);
  EXPECT_DOUBLE_EQ(c->targets[0].budget("fragmentation")->value, 0.35);
  EXPECT_EQ(c->targets[0].budget("alloc_rate")->value, 2048) << "a plain number is bytes per second";
  EXPECT_FALSE(c->targets[0].budget("rss"));
  // No budgets block: no budget at all, not even leak.
  auto none = parse_config("targets: [{name: a, comm: a}]\n", "b.yaml");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->targets[0].budgets.empty());
}

TEST(Budgets, ErrorsNameFileLineAndField) {
  auto e = error_of("      rss: 512MiB\n      heap: lots\n");
  EXPECT_NE(e.find("b.yaml:6:13: targets[0].budgets.heap: invalid size 'lots'"), std::string::npos) << e;
  e = error_of("      alloc_rate: 1MB\n");
  EXPECT_NE(e.find("b.yaml:5:"), std::string::npos) << e;
  EXPECT_NE(e.find("targets[0].budgets.alloc_rate: invalid rate '1MB' (use e.g. 1MB/s)"), std::string::npos) << e;
  e = error_of("      fragmentation: 120%\n");
  EXPECT_NE(e.find("targets[0].budgets.fragmentation: invalid ratio"), std::string::npos) << e;
  e = error_of("      gc_pause_p99: 10\n");
  EXPECT_NE(e.find("targets[0].budgets.gc_pause_p99: invalid duration '10' (use e.g. 10ms)"), std::string::npos) << e;
  e = error_of("      hepa: 1MiB\n");
  EXPECT_NE(e.find("b.yaml:5:7: targets[0].budgets.hepa: unknown field"), std::string::npos) << e;
  e = error_of("      rss: [1]\n");
  EXPECT_NE(e.find("targets[0].budgets.rss: expected a value such as 128MiB"), std::string::npos) << e;
  e = error_of("      leak: -1KiB/s\n");
  EXPECT_NE(e.find("targets[0].budgets.leak"), std::string::npos) << e;
  EXPECT_NE(parse_config("targets:\n  - name: a\n    comm: a\n    budgets: 1GiB\n", "b.yaml").error().message.find(
                "b.yaml:4:14: targets[0].budgets: expected a mapping"),
            std::string::npos);
}

TEST(Budgets, ParseBudgetValues) {
  EXPECT_EQ(parse_budget(BudgetUnit::bytes, "128MiB"), 134217728.0);
  EXPECT_EQ(parse_budget(BudgetUnit::bytes_per_second, "10KiB/s"), 10240.0);
  EXPECT_EQ(parse_budget(BudgetUnit::bytes_per_second, "0"), 0.0);
  EXPECT_FALSE(parse_budget(BudgetUnit::bytes_per_second, "/s"));
  EXPECT_FALSE(parse_budget(BudgetUnit::bytes_per_second, "1MB/m"));
  EXPECT_EQ(parse_budget(BudgetUnit::seconds, "1.5s"), 1.5);
  EXPECT_EQ(parse_budget(BudgetUnit::ratio, "0%"), 0.0);
  EXPECT_EQ(parse_budget(BudgetUnit::ratio, "100%"), 1.0);
  EXPECT_FALSE(parse_budget(BudgetUnit::ratio, "%"));
  EXPECT_FALSE(parse_budget(BudgetUnit::ratio, "1.5"));
  EXPECT_FALSE(parse_budget(BudgetUnit::ratio, "20 %"));
}

TEST(Budgets, BreachWindowIsValidated) {
  auto ok = parse_config("global: {breach_window: 5m}\ntargets: [{name: a, self: true}]\n", "b.yaml");
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok->breach_window, Duration(300000));
  auto c = parse_config("global: {timeline_window: 10m, breach_window: 2h}\ntargets: [{name: a, self: true}]\n",
                        "b.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("global.breach_window: must not be longer than timeline_window"),
            std::string::npos)
      << c.error().message;
}

TEST(Budgets, DefaultConfigShipsTheSeedsBudgets) {
  auto c = default_config();
  ASSERT_TRUE(c.ok()) << c.error().message;
  auto entry = [&](const std::string& n) -> const TargetPolicy& {
    for (const auto& t : c->targets)
      if (t.name == n) return t;
    ADD_FAILURE() << "no entry " << n;
    return c->targets[0];
  };
  const auto& node = entry("node");
  EXPECT_EQ(node.budget("heap")->value, 128.0 * 1024 * 1024);
  EXPECT_DOUBLE_EQ(node.budget("gc_pause_p99")->value, 0.010);
  EXPECT_EQ(node.budget("alloc_rate")->value, 1e6);
  EXPECT_DOUBLE_EQ(node.budget("fragmentation")->value, 0.2);
  const auto& pg = entry("postgres");
  EXPECT_EQ(pg.budget("shared_buffers")->value, 256.0 * 1024 * 1024);
  EXPECT_EQ(pg.budget("connection_memory")->value, 50.0 * 1024 * 1024);
  EXPECT_EQ(pg.budget("temp_files")->value, 16.0 * 1024 * 1024);
  for (const char* n : {"memlensd", "java", "node", "python", "postgres"}) {
    ASSERT_TRUE(entry(n).budget("leak")) << n;
    EXPECT_EQ(entry(n).budget("leak")->value, 0) << n << ": no leaks";
  }
}

namespace {
Sample proc_only(double anon) {
  Sample s;
  static const MetricDesc anon_d = metric("anon", "bytes", MetricKind::gauge, "x");
  s.gauge(anon_d, anon);
  return s;
}
}  // namespace

TEST(Budgets, BestHeapFigure) {
  static const MetricDesc live = metric("heap_live", "bytes", MetricKind::gauge, "x");
  static const MetricDesc inuse = metric("allocator_inuse", "bytes", MetricKind::gauge, "x");
  static const MetricDesc jvm = metric("jvm_heap_used", "bytes", MetricKind::gauge, "x");
  Sample s = proc_only(100);
  EXPECT_STREQ(best_heap(s)->source, "anon");
  EXPECT_EQ(best_heap(s)->bytes, 100);
  s.gauge(jvm, 30, {{"space", "eden"}});
  s.gauge(jvm, 12, {{"space", "old"}});
  EXPECT_STREQ(best_heap(s)->source, "jvm");
  EXPECT_EQ(best_heap(s)->bytes, 42) << "the JVM heap is the sum of its spaces";
  s.gauge(inuse, 70);
  EXPECT_STREQ(best_heap(s)->source, "allocator");
  EXPECT_EQ(best_heap(s)->bytes, 70);
  s.gauge(live, 65);
  EXPECT_STREQ(best_heap(s)->source, "live");
  EXPECT_EQ(best_heap(s)->bytes, 65);
  EXPECT_FALSE(best_heap(Sample{}));
}

TEST(Budgets, BreachPrediction) {
  SlopeFit growing{1024, 0.9, 60};
  EXPECT_DOUBLE_EQ(*breach_seconds(1 << 20, 0, growing), 1024);
  EXPECT_DOUBLE_EQ(*breach_seconds(2048, 1024, growing), 1);
  EXPECT_FALSE(breach_seconds(1024, 1024, growing)) << "already at the budget";
  EXPECT_FALSE(breach_seconds(1024, 4096, growing)) << "already over";
  EXPECT_FALSE(breach_seconds(4096, 0, SlopeFit{0, 0, 60})) << "flat";
  EXPECT_FALSE(breach_seconds(4096, 0, SlopeFit{-10, 0.9, 60})) << "shrinking";
  // A series leaking 10 KiB/s from 40 MiB toward 64 MiB, fitted from points.
  std::vector<Point> pts;
  for (int i = 0; i <= 60; ++i) pts.push_back({1000.0 + i, 40.0 * (1 << 20) + 10240.0 * i + (i % 3) * 4096.0});
  const SlopeFit fit = theil_sen(pts);
  const double now = pts.back().v;
  const double truth = (64.0 * (1 << 20) - now) / 10240;
  EXPECT_NEAR(*breach_seconds(64.0 * (1 << 20), now, fit), truth, 0.05 * truth);
}
