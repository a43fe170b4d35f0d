// A Chromium browser watched from outside: the browser process is the
// target; its descendants (zygotes, renderers, the GPU and utility
// processes), found through /proc, are classified by the --type= of their
// command line. Per type: how many and their private memory; per renderer:
// its private memory and leak slope. See docs/browser.md.
#pragma once

#include <array>
#include <deque>
#include <map>
#include <string>

#include "collectors/collector.h"
#include "daemon/procfs.h"
#include "daemon/timeline.h"

namespace memlens {

// Process types of a Chromium browser, in the order they are exported.
enum class BrowserProcess { browser, zygote, renderer, gpu, utility, other };
inline constexpr std::size_t kBrowserProcessTypes = 6;
const char* browser_process_name(BrowserProcess t);
// From a process's command line (NUL-separated, as /proc/PID/cmdline): its
// --type= switch; none is the browser itself.
BrowserProcess classify_browser_process(std::string_view cmdline);
// Whether an executable path names a Chromium-based browser.
bool is_browser_exe(std::string_view exe);

class BrowserCollector : public Collector {
 public:
  std::string_view name() const override { return "browser"; }
  Result<void> start(const ConfigPtr& cfg) override;
  void target_removed(const Target& t) override;
  Result<void> collect(const Target& t, Sample& out) override;

  // The most renderers reported one by one per browser (the largest); the
  // per-type sums cover them all.
  static constexpr std::size_t kMaxRenderers = 32;
  // The most processes walked in one browser's tree.
  static constexpr std::size_t kMaxProcesses = 512;

 private:
  struct Renderer {
    double bytes = 0;
    std::deque<Point> points;  // private bytes over the leak window
  };
  struct PerTarget {
    bool checked = false, browser = false;
    std::string v8_reason;
    double next_read = 0;
    bool have = false;
    std::array<double, kBrowserProcessTypes> count{}, priv{};
    std::map<pid_t, Renderer> renderers;
  };
  void read_tree(const Target& t, PerTarget& pt, double now, Result<void>& result);

  ProcFs proc_;
  double interval_ = 5;
  double leak_window_ = 60;
  std::map<TargetId, PerTarget> per_target_;
};

}  // namespace memlens
