// The timeline pages: `/` draws every target's heap and RSS over its
// timeline with its budget line, leak slope, predicted breach, GC pause p99
// and peak; `/targets/<name>` draws one target's every series. Plain HTML
// with inline SVG made here: no script, no stylesheet from elsewhere.
//
// They are drawn on the collection thread (the timelines are its), only
// while someone looks: a request marks the page wanted (PageWants), the
// next tick draws it into the snapshot, and the HTTP thread serves it from
// there. Nobody looking costs nothing.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "daemon/config.h"
#include "daemon/snapshot.h"
#include "daemon/target.h"
#include "daemon/timeline.h"

namespace memlens {

// What the pages draw of one target (one pid), beside its TargetView.
struct PageTarget {
  std::size_t view = 0;  // index into Snapshot::targets
  std::vector<Point> heap, rss, anon;  // oldest first; anon only for the detail page
  std::vector<Budget> budgets;
};

struct PageContext {
  double now = 0;             // the timelines' clock (boot time, seconds)
  double built_at = 0;        // unix seconds, shown as the page's time
  double window_seconds = 0;  // how far back the charts reach at most
  std::string metrics_path;
};

std::string render_overview(const std::vector<PageTarget>& targets, const std::vector<TargetView>& views,
                            const PageContext& ctx);
// The targets of one name (one entry per pid).
std::string render_detail(const std::string& name, const std::vector<PageTarget>& targets,
                          const std::vector<TargetView>& views, const PageContext& ctx);
// The page served while a page is not drawn yet: it reloads itself.
std::string render_pending(const std::string& what);

// Points reduced to at most 2 * columns, keeping each column's lowest and
// highest (a spike survives), in time order.
std::vector<Point> decimate(const std::vector<Point>& pts, std::size_t columns);

// Which pages someone asked for lately. Written by the HTTP thread, read by
// the collection thread once a tick.
class PageWants {
 public:
  static constexpr double kLingerSeconds = 60;  // drawn this long after the last request
  static constexpr std::size_t kMaxDetails = 8;  // detail pages drawn at once, at most
  void want_overview(double mono_now);
  // The name must be a target the snapshot has (the caller checks): the set
  // is bounded, the oldest request gives way.
  void want_detail(const std::string& name, double mono_now);
  bool overview(double mono_now) const;
  std::vector<std::string> details(double mono_now) const;

 private:
  std::atomic<double> overview_at_{-1e18};
  mutable std::mutex mu_;
  std::map<std::string, double> details_;
};

// The pages drawn last and when, kept by the collection thread between
// draws, by path ("/", "/targets/NAME").
struct PageCache {
  struct Drawn {
    double at = -1e18;  // monotonic seconds
    std::shared_ptr<const std::string> html;
  };
  std::map<std::string, Drawn> by_path;
};

// One tick's drawing: which pages are due (asked for lately and not drawn
// for kRedrawSeconds), the targets they need as the tick goes, and at its
// end the pages put into the snapshot. A page is redrawn every few seconds
// rather than every tick: decoding every timeline of 1000 targets is the
// cost, and the page reloads itself every 10 s anyway.
class PageDraw {
 public:
  static constexpr double kRedrawSeconds = 5;
  PageDraw(PageCache& cache, const PageWants& wants, const Config& cfg, std::string metrics_path, double mono_now);
  // A target of this tick, published as Snapshot::targets[view].
  void add(const Target& t, const Timeline* timeline, std::size_t view);
  void draw(Snapshot& snap);

 private:
  PageCache& cache_;
  double mono_now_, boot_now_, window_;
  std::string metrics_path_;
  bool overview_ = false;          // due this tick
  std::set<std::string> details_;  // names whose page is due
  std::vector<PageTarget> overview_targets_;
  std::map<std::string, std::vector<PageTarget>> detail_targets_;
};

}  // namespace memlens
