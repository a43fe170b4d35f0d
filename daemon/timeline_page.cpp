#include "daemon/timeline_page.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <optional>

#include "daemon/clock.h"
#include "daemon/http_util.h"

namespace memlens {

namespace {

// ---- figures as people read them -------------------------------------------

std::string printf_str(const char* fmt, double v, const char* unit) {
  char b[64];
  std::snprintf(b, sizeof b, fmt, v, unit);
  return b;
}

std::string bytes_text(double v) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  double a = std::fabs(v);
  while (a >= 1024 && u < 4) {
    a /= 1024;
    v /= 1024;
    ++u;
  }
  return printf_str(u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
}

std::string duration_text(double s) {
  if (s < 1) return printf_str("%.1f %s", s * 1e3, "ms");
  if (s < 120) return printf_str("%.0f %s", s, "s");
  if (s < 7200) return printf_str("%.0f %s", s / 60, "min");
  if (s < 3 * 86400) return printf_str("%.1f %s", s / 3600, "h");
  return printf_str("%.1f %s", s / 86400, "days");
}

// ---- a target's values this tick ---------------------------------------------

std::optional<double> value_of(const TargetView& v, std::string_view key) {
  for (const auto& [k, x] : v.values)
    if (k == key) return x;
  return std::nullopt;
}

// The value of a series with that name and that label (any others allowed);
// the largest when several match (e.g. one GC pause p99 per runtime).
std::optional<double> value_with(const TargetView& v, std::string_view name, std::string_view label) {
  std::optional<double> best;
  for (const auto& [k, x] : v.values) {
    if (k.size() <= name.size() || k.compare(0, name.size(), name) != 0 || k[name.size()] != '{') continue;
    if (k.find(label, name.size()) == std::string::npos) continue;
    if (!best || x > *best) best = x;
  }
  return best;
}

// The `source` label of memlens_heap_bytes.
std::string heap_source(const TargetView& v) {
  static const std::string key = "memlens_heap_bytes{source=\"";
  for (const auto& [k, x] : v.values)
    if (k.rfind(key, 0) == 0) return k.substr(key.size(), k.size() - key.size() - 2);
  return "";
}

const Budget* budget_of(const PageTarget& t, std::string_view resource) {
  for (const auto& b : t.budgets)
    if (b.resource == resource) return &b;
  return nullptr;
}

std::string breach_key(std::string_view resource) {
  return "memlens_budget_breach_seconds{resource=\"" + std::string(resource) + "\"}";
}

// A value in the unit its name ends with, for the detail page's table.
std::string reads_as(std::string_view name, double v) {
  auto ends = [&](std::string_view suffix) { return name.ends_with(suffix); };
  if (ends("_bytes_per_second")) return bytes_text(v) + "/s";
  if (ends("_bytes")) return bytes_text(v);
  if (ends("_seconds") && !ends("_cpu_seconds_total")) return duration_text(v);
  if (ends("_ratio")) return printf_str("%.1f %s", 100 * v, "%");
  return "";
}

// ---- the chart ----------------------------------------------------------------

struct Line {
  const std::vector<Point>* pts;
  const char* series;  // data-series attribute and legend
  const char* color;
};

struct Chart {
  int width = 480, height = 120;
  std::vector<Line> lines;  // the last is drawn on top: the one the budget is for
  std::optional<double> budget;      // drawn as a dashed red line
  std::string budget_label;
  std::optional<double> breach_in;   // seconds: the trend drawn to the budget
  double now = 0, window = 3600;
};

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

std::string svg(const Chart& c) {
  constexpr double kLeft = 64, kRight = 8, kTop = 8, kBottom = 18;
  // Time: from the oldest point drawn (at most the window back; at least a
  // minute) to now, and a fifth more ahead when a breach is projected.
  double t0 = c.now - 60;
  double vmax = 0;
  bool any = false;
  for (const auto& l : c.lines)
    for (const auto& p : *l.pts) {
      if (p.t < c.now - c.window) continue;
      t0 = std::min(t0, p.t);
      vmax = std::max(vmax, p.v);
      any = true;
    }
  const double span = c.now - t0;
  const double t1 = c.now + (c.breach_in && c.budget ? span / 5 : 0);
  // Values: from 0 to the highest point, or to the budget when it is near
  // enough to be drawn without flattening the data (within 2x).
  bool budget_on_scale = c.budget && (*c.budget <= 2 * vmax || !any);
  double vtop = std::max(vmax, budget_on_scale ? *c.budget : 0.0) * 1.08;
  if (vtop <= 0) vtop = 1;
  const double pw = c.width - kLeft - kRight, ph = c.height - kTop - kBottom;
  auto x = [&](double t) { return kLeft + (t - t0) / (t1 - t0) * pw; };
  auto y = [&](double v) { return kTop + ph - std::clamp(v / vtop, 0.0, 1.0) * ph; };

  std::string o = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(c.width) + "\" height=\"" +
                  std::to_string(c.height) + "\" viewBox=\"0 0 " + std::to_string(c.width) + " " +
                  std::to_string(c.height) + "\" font-size=\"10\" font-family=\"sans-serif\">";
  o += "<rect x=\"" + num(kLeft) + "\" y=\"" + num(kTop) + "\" width=\"" + num(pw) + "\" height=\"" + num(ph) +
       "\" fill=\"#fafafa\" stroke=\"#ddd\"/>";
  for (double f : {0.0, 0.5, 1.0}) {
    const double v = vtop / 1.08 * f;
    o += "<text x=\"" + num(kLeft - 4) + "\" y=\"" + num(y(v) + 3) + "\" text-anchor=\"end\" fill=\"#555\">" +
         bytes_text(v) + "</text>";
  }
  o += "<text x=\"" + num(kLeft) + "\" y=\"" + num(c.height - 4.0) + "\" fill=\"#555\">-" + duration_text(span) +
       "</text><text x=\"" + num(x(c.now)) + "\" y=\"" + num(c.height - 4.0) +
       "\" text-anchor=\"end\" fill=\"#555\">now</text>";
  if (t1 > c.now)
    o += "<line x1=\"" + num(x(c.now)) + "\" y1=\"" + num(kTop) + "\" x2=\"" + num(x(c.now)) + "\" y2=\"" +
         num(kTop + ph) + "\" stroke=\"#bbb\"/>";
  for (const auto& l : c.lines) {
    const auto pts = decimate(*l.pts, static_cast<std::size_t>(pw));
    std::string p;
    for (const auto& pt : pts)
      if (pt.t >= t0) p += num(x(pt.t)) + "," + num(y(pt.v)) + " ";
    if (p.empty()) continue;
    p.pop_back();
    o += std::string("<polyline data-series=\"") + l.series + "\" fill=\"none\" stroke=\"" + l.color +
         "\" stroke-width=\"2\" points=\"" + p + "\"><title>" + l.series + "</title></polyline>";
  }
  if (c.budget && budget_on_scale) {
    o += "<line data-series=\"budget\" x1=\"" + num(kLeft) + "\" y1=\"" + num(y(*c.budget)) + "\" x2=\"" +
         num(kLeft + pw) + "\" y2=\"" + num(y(*c.budget)) +
         "\" stroke=\"#d62728\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"><title>" + html_text(c.budget_label) +
         "</title></line>";
  } else if (c.budget) {
    o += "<text data-series=\"budget\" x=\"" + num(kLeft + pw - 4) + "\" y=\"" + num(kTop + 11) +
         "\" text-anchor=\"end\" fill=\"#d62728\">" + html_text(c.budget_label) + " (off scale)</text>";
  }
  // The trend, from the newest point to where it meets the budget (or the
  // chart's edge).
  if (c.breach_in && c.budget && budget_on_scale && !c.lines.empty() && !c.lines.back().pts->empty()) {
    const Point& last = c.lines.back().pts->back();
    const double slope = (*c.budget - last.v) / *c.breach_in;
    const double te = std::min(t1, c.now + *c.breach_in);
    o += "<line data-series=\"trend\" x1=\"" + num(x(last.t)) + "\" y1=\"" + num(y(last.v)) + "\" x2=\"" + num(x(te)) +
         "\" y2=\"" + num(y(last.v + slope * (te - last.t))) +
         "\" stroke=\"#ff7f0e\" stroke-width=\"1.5\" stroke-dasharray=\"3 3\"><title>trend: budget crossed in " +
         duration_text(*c.breach_in) + "</title></line>";
    o += "<text x=\"" + num(x(te) - 2) + "\" y=\"" + num(y(last.v + slope * (te - last.t)) - 4) +
         "\" text-anchor=\"end\" fill=\"#ff7f0e\">crosses in " + duration_text(*c.breach_in) + "</text>";
  }
  return o + "</svg>";
}

// ---- the pages ------------------------------------------------------------------

std::string head(const std::string& title, int refresh_seconds) {
  return "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"" +
         std::to_string(refresh_seconds) + "\"><title>" + html_text(title) +
         "</title><style>body{font-family:sans-serif;margin:16px}table{border-collapse:collapse}"
         "td,th{padding:3px 10px;text-align:right;vertical-align:middle;border-bottom:1px solid #eee}"
         "td:first-child,th:first-child{text-align:left}.over{color:#d62728;font-weight:bold}"
         ".soon{color:#ff7f0e;font-weight:bold}.key span{display:inline-block;width:14px;height:3px;"
         "margin:0 4px 3px 12px;vertical-align:middle}</style></head><body>";
}

std::string clock_text(double unix_seconds) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return b;
}

std::string links(const PageContext& ctx) {
  return "<p><a href=\"/\">timelines</a> &middot; <a href=\"" + html_text(ctx.metrics_path) +
         "\">metrics</a> &middot; <a href=\"/api/v1/targets\">targets (JSON)</a> &middot; <a "
         "href=\"/healthz\">health</a> &middot; drawn " + clock_text(ctx.built_at) + "</p>";
}

const char* kKey =
    "<p class=\"key\"><span style=\"background:#1f77b4\"></span>heap<span style=\"background:#999\"></span>RSS"
    "<span style=\"background:#d62728\"></span>budget<span style=\"background:#ff7f0e\"></span>trend to the "
    "budget</p>";

std::string path_part(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string o;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      o += static_cast<char>(c);
    } else {
      o += '%';
      o += hex[c >> 4];
      o += hex[c & 15];
    }
  }
  return o;
}

// The budget a target's heap chart shows, and the series it is held against.
struct ChartBudget {
  const Budget* b = nullptr;
  const char* resource = "";
};
ChartBudget heap_chart_budget(const PageTarget& t) {
  if (auto* b = budget_of(t, "heap")) return {b, "heap"};
  if (auto* b = budget_of(t, "rss")) return {b, "rss"};
  return {};
}

// The soonest predicted breach, or the budgets already crossed.
std::string breach_cell(const PageTarget& t, const TargetView& v) {
  std::string over;
  const auto heap = value_with(v, "memlens_heap_bytes", "");
  const auto rss = value_of(v, "memlens_rss_bytes");
  const auto peak = value_of(v, "memlens_rss_peak_bytes");
  for (const auto& [res, cur] : {std::pair{"heap", heap}, std::pair{"rss", rss}, std::pair{"peak", peak}}) {
    const Budget* b = budget_of(t, res);
    if (b && cur && *cur >= b->value) over += std::string(over.empty() ? "" : ", ") + res;
  }
  if (!over.empty()) return "<td class=\"over\">over " + over + " budget</td>";
  std::optional<double> soonest;
  std::string which;
  for (const auto& b : t.budgets)
    if (auto s = value_of(v, breach_key(b.resource)); s && (!soonest || *s < *soonest)) {
      soonest = s;
      which = b.resource;
    }
  if (!soonest) return "<td>&mdash;</td>";
  return std::string("<td class=\"") + (*soonest < 4 * 3600 ? "soon" : "") + "\" data-breach-seconds=\"" +
         num(*soonest) + "\">" + html_text(which) + " in " + duration_text(*soonest) + "</td>";
}

std::string heap_chart(const PageTarget& t, const TargetView& v, const PageContext& ctx, int w, int h) {
  Chart c;
  c.width = w;
  c.height = h;
  c.now = ctx.now;
  c.window = ctx.window_seconds;
  c.lines = {{&t.rss, "rss", "#999"}, {&t.heap, "heap", "#1f77b4"}};
  if (const auto cb = heap_chart_budget(t); cb.b) {
    c.budget = cb.b->value;
    c.budget_label = std::string(cb.resource) + " budget " + bytes_text(cb.b->value);
    c.breach_in = value_of(v, breach_key(cb.resource));
    if (std::string_view(cb.resource) == "rss") std::swap(c.lines[0], c.lines[1]);
  }
  return svg(c);
}

}  // namespace

std::vector<Point> decimate(const std::vector<Point>& pts, std::size_t columns) {
  if (columns == 0 || pts.size() <= 2 * columns) return pts;
  std::vector<Point> out;
  out.reserve(2 * columns + 2);
  const double t0 = pts.front().t, t1 = pts.back().t;
  const double step = (t1 - t0) / static_cast<double>(columns);
  std::size_t i = 0;
  for (std::size_t col = 0; col < columns && i < pts.size(); ++col) {
    const double end = col + 1 == columns ? std::numeric_limits<double>::infinity() : t0 + step * (col + 1);
    std::size_t lo = i, hi = i;
    for (; i < pts.size() && pts[i].t < end; ++i) {
      if (pts[i].v < pts[lo].v) lo = i;
      if (pts[i].v > pts[hi].v) hi = i;
    }
    if (i == lo && i == hi) continue;  // an empty column (a gap)
    out.push_back(pts[std::min(lo, hi)]);
    if (lo != hi) out.push_back(pts[std::max(lo, hi)]);
  }
  return out;
}

std::string render_overview(const std::vector<PageTarget>& targets, const std::vector<TargetView>& views,
                            const PageContext& ctx) {
  std::string o = head("memlens", 10);
  o += "<h1>memlens</h1>" + links(ctx) + kKey;
  o += "<table><tr><th>target</th><th>pid</th><th>comm</th><th>heap over the timeline</th><th>heap now</th>"
       "<th>budget</th><th>leak slope</th><th>predicted breach</th><th>GC pause p99</th><th>peak RSS</th></tr>";
  for (const auto& t : targets) {
    const TargetView& v = views[t.view];
    o += "<tr data-target=\"" + html_text(v.name) + "\" data-pid=\"" + std::to_string(v.pid) + "\"><td><a href=\"/targets/" +
         html_text(path_part(v.name)) + "\">" + html_text(v.name) + "</a></td><td>" + std::to_string(v.pid) +
         "</td><td>" + html_text(v.comm) + "</td><td>" + heap_chart(t, v, ctx, 420, 90) + "</td>";
    const auto heap = value_with(v, "memlens_heap_bytes", "");
    o += heap ? "<td data-heap-bytes=\"" + num(*heap) + "\">" + bytes_text(*heap) + " <small>" +
                    html_text(heap_source(v)) + "</small></td>"
              : "<td>&mdash;</td>";
    const auto cb = heap_chart_budget(t);
    o += cb.b ? "<td>" + bytes_text(cb.b->value) + " <small>" + cb.resource + "</small></td>" : "<td>&mdash;</td>";
    const auto slope = value_of(v, "memlens_leak_slope_bytes_per_second");
    const auto conf = value_of(v, "memlens_leak_slope_confidence");
    o += slope ? "<td data-slope=\"" + num(*slope) + "\">" + bytes_text(*slope) + "/s <small>(" +
                     printf_str("%.2f%s", conf.value_or(0), "") + ")</small></td>"
               : "<td>&mdash;</td>";
    o += breach_cell(t, v);
    const auto p99 = value_with(v, "memlens_gc_pause_quantile_seconds", "percentile=\"99\"");
    o += p99 ? "<td>" + duration_text(*p99) + "</td>" : "<td>&mdash;</td>";
    auto peak = value_of(v, "memlens_rss_peak_bytes");
    if (!peak) peak = value_of(v, "memlens_rss_window_peak_bytes");
    o += peak ? "<td>" + bytes_text(*peak) + "</td>" : "<td>&mdash;</td>";
    o += "</tr>";
  }
  o += "</table>";
  if (targets.empty()) o += "<p>No targets yet.</p>";
  return o + "</body></html>\n";
}

std::string render_detail(const std::string& name, const std::vector<PageTarget>& targets,
                          const std::vector<TargetView>& views, const PageContext& ctx) {
  std::string o = head("memlens: " + name, 10);
  o += "<h1>" + html_text(name) + "</h1>" + links(ctx) + kKey;
  for (const auto& t : targets) {
    const TargetView& v = views[t.view];
    o += "<h2 data-pid=\"" + std::to_string(v.pid) + "\">pid " + std::to_string(v.pid) + " <small>" +
         html_text(v.comm) + " &middot; " + html_text(v.exe) + " &middot; " + html_text(v.selector) + "</small></h2>";
    // Heap, with its budget and the trend toward it.
    Chart heap;
    heap.width = 900;
    heap.height = 220;
    heap.now = ctx.now;
    heap.window = ctx.window_seconds;
    heap.lines = {{&t.heap, "heap", "#1f77b4"}};
    if (const Budget* b = budget_of(t, "heap")) {
      heap.budget = b->value;
      heap.budget_label = "heap budget " + bytes_text(b->value);
      heap.breach_in = value_of(v, breach_key("heap"));
    }
    o += "<h3>heap <small>" + html_text(heap_source(v)) + "</small></h3>" + svg(heap);
    Chart rss = heap;
    rss.lines = {{&t.anon, "anon", "#2ca02c"}, {&t.rss, "rss", "#999"}};
    rss.budget.reset();
    rss.breach_in.reset();
    if (const Budget* b = budget_of(t, "rss")) {
      rss.budget = b->value;
      rss.budget_label = "rss budget " + bytes_text(b->value);
      rss.breach_in = value_of(v, breach_key("rss"));
    }
    o += "<h3>resident: RSS <span style=\"color:#999\">&#9644;</span> and its anonymous part <span "
         "style=\"color:#2ca02c\">&#9644;</span></h3>" + svg(rss);
    // Every figure this tick.
    o += "<h3>every series now</h3><table><tr><th>series</th><th>value</th><th>reads as</th></tr>";
    std::vector<std::pair<std::string, double>> vals = v.values;
    std::sort(vals.begin(), vals.end());
    for (const auto& [k, x] : vals)
      o += "<tr><td>" + html_text(k) + "</td><td>" + printf_str("%.6g%s", x, "") + "</td><td>" +
           reads_as(k.substr(0, k.find('{')), x) + "</td></tr>";
    o += "</table>";
    if (!t.budgets.empty()) {
      o += "<h3>budgets</h3><table><tr><th>resource</th><th>budget</th></tr>";
      for (const auto& b : t.budgets)
        o += "<tr><td>" + html_text(b.resource) + "</td><td>" + printf_str("%.6g%s", b.value, "") + "</td></tr>";
      o += "</table>";
    }
  }
  return o + "</body></html>\n";
}

std::string render_pending(const std::string& what) {
  return head("memlens", 1) + "<h1>memlens</h1><p>Drawing " + html_text(what) +
         ": this page reloads in a second.</p></body></html>\n";
}

PageDraw::PageDraw(PageCache& cache, const PageWants& wants, const Config& cfg, std::string metrics_path,
                   double mono_now)
    : cache_(cache),
      mono_now_(mono_now),
      boot_now_(boot_now()),
      window_(std::chrono::duration<double>(cfg.timeline_window).count()),
      metrics_path_(std::move(metrics_path)) {
  std::set<std::string> wanted;
  if (wants.overview(mono_now)) wanted.insert("/");
  for (auto& name : wants.details(mono_now)) wanted.insert("/targets/" + name);
  std::erase_if(cache_.by_path, [&](const auto& kv) { return !wanted.count(kv.first); });
  for (const auto& path : wanted) {
    if (mono_now - cache_.by_path[path].at < kRedrawSeconds) continue;
    if (path == "/") overview_ = true;
    else details_.insert(path.substr(9));
  }
}

void PageDraw::add(const Target& t, const Timeline* timeline, std::size_t view) {
  const bool detail = details_.count(t.name) > 0;
  if (!overview_ && !detail) return;
  PageTarget p;
  p.view = view;
  if (t.policy) p.budgets = t.policy->budgets;
  if (timeline) {
    const double since = boot_now_ - window_;
    p.heap = timeline->window(SeriesId::heap, since);
    p.rss = timeline->window(SeriesId::rss, since);
    if (detail) p.anon = timeline->window(SeriesId::anon, since);
  }
  if (detail && overview_) detail_targets_[t.name].push_back(p);
  if (detail && !overview_) detail_targets_[t.name].push_back(std::move(p));
  if (overview_) {
    // The overview draws ~420 columns: keep no more than that.
    p.heap = decimate(p.heap, 420);
    p.rss = decimate(p.rss, 420);
    p.anon.clear();
    overview_targets_.push_back(std::move(p));
  }
}

void PageDraw::draw(Snapshot& snap) {
  const PageContext ctx{boot_now_, snap.built_at, window_, metrics_path_};
  // The values of the targets drawn, from the tick's series.
  auto fill = [&](const std::vector<PageTarget>& drawn) {
    for (const auto& p : drawn)
      if (p.view < snap.targets.size() && snap.targets[p.view].values.empty())
        snap.targets[p.view].values = snap.values_of(snap.targets[p.view]);
  };
  fill(overview_targets_);
  for (const auto& [name, drawn] : detail_targets_) fill(drawn);
  if (overview_)
    cache_.by_path["/"] = {mono_now_, std::make_shared<const std::string>(
                                          render_overview(overview_targets_, snap.targets, ctx))};
  for (const auto& name : details_) {
    auto& drawn = cache_.by_path["/targets/" + name];
    drawn.at = mono_now_;
    drawn.html = std::make_shared<const std::string>(render_detail(name, detail_targets_[name], snap.targets, ctx));
  }
  for (const auto& [path, drawn] : cache_.by_path)
    if (drawn.html) snap.pages[path] = drawn.html;
}

void PageWants::want_overview(double now) { overview_at_.store(now); }

void PageWants::want_detail(const std::string& name, double now) {
  std::lock_guard<std::mutex> l(mu_);
  details_[name] = now;
  while (details_.size() > kMaxDetails) {
    auto oldest = std::min_element(details_.begin(), details_.end(),
                                   [](const auto& a, const auto& b) { return a.second < b.second; });
    details_.erase(oldest);
  }
}

bool PageWants::overview(double now) const { return now - overview_at_.load() < kLingerSeconds; }

std::vector<std::string> PageWants::details(double now) const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<std::string> out;
  for (const auto& [name, at] : details_)
    if (now - at < kLingerSeconds) out.push_back(name);
  return out;
}

}  // namespace memlens
