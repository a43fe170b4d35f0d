// The timeline pages: what they draw from a target's points and values,
// how requests ask for them, and how the routes serve them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "daemon/clock.h"
#include "daemon/exporter.h"
#include "daemon/timeline_page.h"
#include "tests/support/support.h"

using namespace memlens;
using memlens::test::count_of;

namespace {

std::vector<Point> ramp(double t0, double t1, double v0, double slope) {
  std::vector<Point> p;
  for (double t = t0; t <= t1; t += 1) p.push_back({t, v0 + slope * (t - t0)});
  return p;
}

// One target with a rising heap, its values and budgets, as a tick has them.
struct OnePage {
  std::vector<TargetView> views;
  std::vector<PageTarget> targets;
  PageContext ctx{1000, 1.7e9, 3600, "/metrics"};
  OnePage(const std::string& name, double heap_now, double heap_budget) {
    TargetView v;
    v.name = name;
    v.comm = "heapload";
    v.pid = 4242;
    v.values = {{"memlens_heap_bytes{source=\"allocator\"}", heap_now},
                {"memlens_rss_bytes", heap_now * 1.1},
                {"memlens_leak_slope_bytes_per_second", 65536},
                {"memlens_leak_slope_confidence", 0.99},
                {"memlens_budget_breach_seconds{resource=\"heap\"}", 450},
                {"memlens_gc_pause_quantile_seconds{runtime=\"node\",percentile=\"99\"}", 0.0042},
                {"memlens_gc_pause_quantile_seconds{runtime=\"node\",percentile=\"50\"}", 0.001},
                {"memlens_rss_peak_bytes", heap_now * 1.2}};
    views.push_back(v);
    PageTarget t;
    t.view = 0;
    t.heap = ramp(940, 1000, heap_now - 60 * 65536, 65536);
    t.rss = ramp(940, 1000, 1.1 * (heap_now - 60 * 65536), 1.1 * 65536);
    t.budgets = {Budget{"heap", BudgetUnit::bytes, heap_budget}};
    targets.push_back(t);
  }
};

}  // namespace

TEST(TimelinePage, DecimationKeepsSpikesAndOrderWithinTwicePerColumn) {
  std::vector<Point> pts = ramp(0, 9999, 1000, 0);
  pts[5000].v = 1e9;  // one spike
  pts[7000].v = -5;   // one dip
  const auto d = decimate(pts, 100);
  EXPECT_LE(d.size(), 200u);
  EXPECT_GE(d.size(), 100u);
  EXPECT_TRUE(std::is_sorted(d.begin(), d.end(), [](const Point& a, const Point& b) { return a.t < b.t; }));
  EXPECT_EQ(std::max_element(d.begin(), d.end(), [](auto& a, auto& b) { return a.v < b.v; })->v, 1e9);
  EXPECT_EQ(std::min_element(d.begin(), d.end(), [](auto& a, auto& b) { return a.v < b.v; })->v, -5);
  // Fewer points than columns come back as they are.
  const auto few = ramp(0, 10, 1, 1);
  EXPECT_EQ(decimate(few, 100).size(), few.size());
}

TEST(TimelinePage, OverviewDrawsTheHeapItsBudgetAndTheTrendToIt) {
  OnePage p("api", 40.0 * (1 << 20), 64.0 * (1 << 20));
  const std::string html = render_overview(p.targets, p.views, p.ctx);
  EXPECT_EQ(count_of(html, "<svg"), 1u);
  EXPECT_EQ(count_of(html, "data-series=\"heap\""), 1u);
  EXPECT_EQ(count_of(html, "data-series=\"rss\""), 1u);
  EXPECT_NE(html.find("<line data-series=\"budget\""), std::string::npos) << "a budget within 2x is on the scale";
  EXPECT_NE(html.find("data-series=\"trend\""), std::string::npos);
  EXPECT_NE(html.find("data-breach-seconds=\"450.0\">heap in 8 min"), std::string::npos) << html;
  EXPECT_NE(html.find("65536.0"), std::string::npos) << "the slope's exact figure is in the row";
  EXPECT_NE(html.find("64.0 KiB/s"), std::string::npos);
  EXPECT_NE(html.find("4.2 ms"), std::string::npos) << "GC pause p99, not p50";
  EXPECT_NE(html.find("href=\"/targets/api\""), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  // No external resources: nothing is fetched from anywhere.
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("stylesheet"), std::string::npos);
}

TEST(TimelinePage, ABudgetFarAboveIsNotedNotDrawnAndOneCrossedIsSaid) {
  OnePage far("api", 1 << 20, 1024.0 * (1 << 20));
  auto html = render_overview(far.targets, far.views, far.ctx);
  EXPECT_EQ(html.find("<line data-series=\"budget\""), std::string::npos);
  EXPECT_NE(html.find("heap budget 1.0 GiB (off scale)"), std::string::npos);
  OnePage over("api", 80.0 * (1 << 20), 64.0 * (1 << 20));
  html = render_overview(over.targets, over.views, over.ctx);
  EXPECT_NE(html.find("class=\"over\">over heap budget"), std::string::npos) << html;
}

TEST(TimelinePage, NamesFromProcessesAreEscapedEverywhere) {
  OnePage p("<img src=x onerror=alert(1)>", 1 << 20, 2 << 20);
  p.views[0].comm = "\"><script>";
  p.views[0].exe = "/tmp/\xff\xfe";
  for (const auto& html : {render_overview(p.targets, p.views, p.ctx),
                           render_detail(p.views[0].name, p.targets, p.views, p.ctx)}) {
    EXPECT_EQ(html.find("<img"), std::string::npos);
    EXPECT_EQ(html.find("<script"), std::string::npos);
    EXPECT_EQ(html.find('\xff'), std::string::npos);
    EXPECT_NE(html.find("&lt;img src=x"), std::string::npos);
  }
  // The link is percent-encoded too.
  EXPECT_NE(render_overview(p.targets, p.views, p.ctx).find("href=\"/targets/%3Cimg%20src%3Dx"), std::string::npos);
}

TEST(TimelinePage, DetailDrawsEverySeriesAndListsEveryValue) {
  OnePage p("api", 40.0 * (1 << 20), 64.0 * (1 << 20));
  p.targets[0].anon = p.targets[0].heap;
  const std::string html = render_detail("api", p.targets, p.views, p.ctx);
  EXPECT_EQ(count_of(html, "<svg"), 2u);
  for (const char* s : {"heap", "rss", "anon"})
    EXPECT_EQ(count_of(html, std::string("data-series=\"") + s + "\""), 1u) << s;
  for (const auto& [k, v] : p.views[0].values) EXPECT_NE(html.find(k.substr(0, k.find('{'))), std::string::npos) << k;
  EXPECT_NE(html.find("40.0 MiB"), std::string::npos) << "values read in their unit";
}

TEST(PageWants, BoundedAndForgottenAfterAMinute) {
  PageWants w;
  EXPECT_FALSE(w.overview(100));
  w.want_overview(100);
  EXPECT_TRUE(w.overview(100 + PageWants::kLingerSeconds - 1));
  EXPECT_FALSE(w.overview(100 + PageWants::kLingerSeconds + 1));
  for (int i = 0; i < 20; ++i) w.want_detail("t" + std::to_string(i), 100 + i);
  auto d = w.details(120);
  EXPECT_EQ(d.size(), PageWants::kMaxDetails);
  EXPECT_NE(std::find(d.begin(), d.end(), "t19"), d.end()) << "the newest requests are kept";
  EXPECT_EQ(std::find(d.begin(), d.end(), "t0"), d.end());
  EXPECT_TRUE(w.details(100 + 19 + PageWants::kLingerSeconds + 1).empty());
}

TEST(PageRoutes, PagesAreAskedForThenServedFromTheSnapshot) {
  auto ex = Exporter::routes_only("/metrics");
  HttpRequest req{"GET", "/", "", false, false, ""};
  EXPECT_EQ(ex->handle(req).status, 503) << "no snapshot yet";
  auto snap = std::make_shared<Snapshot>();
  TargetView v;
  v.name = "api";
  snap->targets.push_back(v);
  ex->publish(snap);
  // Not drawn yet: a page that reloads itself, and the tick is asked.
  auto r = ex->handle(req);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("http-equiv=\"refresh\" content=\"1\""), std::string::npos);
  EXPECT_TRUE(ex->page_wants().overview(mono_now()));
  req.path = "/targets/nope";
  EXPECT_EQ(ex->handle(req).status, 404) << "only watched targets are asked for";
  EXPECT_TRUE(ex->page_wants().details(mono_now()).empty());
  req.path = "/targets/api";
  EXPECT_EQ(ex->handle(req).status, 200);
  EXPECT_EQ(ex->page_wants().details(mono_now()), std::vector<std::string>{"api"});
  // Drawn: served as the tick wrote it.
  auto drawn = std::make_shared<Snapshot>(*snap);
  drawn->pages["/"] = std::make_shared<const std::string>("<p>overview</p>");
  ex->publish(drawn);
  req.path = "/";
  r = ex->handle(req);
  ASSERT_TRUE(r.shared);
  EXPECT_EQ(*r.shared, "<p>overview</p>");
  EXPECT_EQ(r.content_type, "text/html; charset=utf-8");
}
