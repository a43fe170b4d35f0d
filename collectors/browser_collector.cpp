#include "collectors/browser_collector.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "collectors/elf_symbols.h"
#include "collectors/process_tree.h"
#include "collectors/runtime_detect.h"
#include "daemon/clock.h"
#include "daemon/config.h"

namespace memlens {

namespace {

struct BrowserMetrics {
  MetricDesc processes = metric("browser_processes", "", MetricKind::gauge,
                                "Processes of the browser by type (browser, zygote, renderer, gpu, utility, other): "
                                "the target and its descendants, by the --type= of their command line.");
  MetricDesc private_bytes = metric(
      "browser_private", "bytes", MetricKind::gauge,
      "Private memory of the browser's processes summed per type: anonymous memory divided among the processes "
      "sharing it (smaps_rollup Pss_Anon; Private_Clean + Private_Dirty on kernels without it). Read every "
      "smaps_interval.");
  MetricDesc renderer = metric("renderer_memory", "bytes", MetricKind::gauge,
                               "Private memory of one renderer process of the browser (label renderer: its pid), "
                               "as in memlens_browser_private_bytes; the 32 largest renderers.");
  MetricDesc slope = metric("renderer_leak_slope", "bytes_per_second", MetricKind::gauge,
                            "Growth of a renderer's private memory over the leak window (Theil-Sen).");
  MetricDesc confidence = metric("renderer_leak_slope_confidence", "", MetricKind::gauge,
                                 "How consistently the renderer's memory grows over the window, 0 to 1.");
  MetricDesc v8 = metric("browser_v8_heap_available", "", MetricKind::gauge,
                         "1 when the V8 heaps and GC pauses of the browser's renderers are traced; 0 with the "
                         "reason when they are not (no_symbols: the browser binary has no symbols for V8's "
                         "Heap, as Debian's chromium; not_traced: it has them, and renderers are not traced yet).");
};

const BrowserMetrics& m() {
  static const BrowserMetrics metrics;
  return metrics;
}

constexpr const char* kTypeNames[kBrowserProcessTypes] = {"browser", "zygote", "renderer", "gpu", "utility", "other"};

}  // namespace

const char* browser_process_name(BrowserProcess t) { return kTypeNames[static_cast<std::size_t>(t)]; }

BrowserProcess classify_browser_process(std::string_view cmdline) {
  // Every argument, NUL-separated, or space-separated once Chromium has
  // rewritten its process title (its children do); a switch is
  // "--type=renderer".
  for (std::size_t at = 0; at < cmdline.size();) {
    const std::size_t end = std::min(cmdline.find_first_of(std::string_view("\0 ", 2), at), cmdline.size());
    const std::string_view arg = cmdline.substr(at, end - at);
    at = end + 1;
    if (!arg.starts_with("--type=")) continue;
    const std::string_view type = arg.substr(7);
    if (type == "renderer") return BrowserProcess::renderer;
    if (type == "zygote") return BrowserProcess::zygote;
    if (type == "gpu-process") return BrowserProcess::gpu;
    if (type == "utility") return BrowserProcess::utility;
    return BrowserProcess::other;
  }
  return BrowserProcess::browser;
}

bool is_browser_exe(std::string_view exe) {
  const std::string_view base = basename_of(strip_deleted(exe));
  for (std::string_view b : {"chromium", "chrome", "google-chrome", "chrome-headless-shell", "headless_shell", "msedge"})
    if (base == b) return true;
  return false;
}

Result<void> BrowserCollector::start(const ConfigPtr& config) {
  const Config& cfg = *config;
  proc_ = ProcFs(cfg.procfs);
  interval_ = std::chrono::duration<double>(cfg.smaps_interval).count();
  leak_window_ = std::chrono::duration<double>(cfg.leak_window).count();
  for (auto& [id, pt] : per_target_) pt.next_read = 0;
  return {};
}

void BrowserCollector::target_removed(const Target& t) { per_target_.erase(t.id); }

void BrowserCollector::read_tree(const Target& t, PerTarget& pt, double now, Result<void>& result) {
  std::array<double, kBrowserProcessTypes> count{}, priv{};
  std::map<pid_t, Renderer> renderers;
  std::vector<std::pair<pid_t, BrowserProcess>> todo{{t.pid(), BrowserProcess::browser}};
  std::size_t walked = 0;
  for (std::size_t i = 0; i < todo.size() && walked < kMaxProcesses; ++i, ++walked) {
    const auto [pid, type] = todo[i];
    auto bytes = private_memory(proc_, pid);
    if (!bytes) {
      if (bytes.error().code != Errc::not_found && result) result = bytes.error();
      continue;  // gone since its parent listed it
    }
    const auto k = static_cast<std::size_t>(type);
    count[k] += 1;
    priv[k] += static_cast<double>(*bytes);
    if (type == BrowserProcess::renderer) {
      Renderer& r = renderers[pid];
      auto old = pt.renderers.find(pid);
      if (old != pt.renderers.end()) r.points = std::move(old->second.points);
      r.bytes = static_cast<double>(*bytes);
      r.points.push_back(Point{now, r.bytes});
      while (!r.points.empty() && r.points.front().t < now - leak_window_) r.points.pop_front();
    }
    // The browser and its zygotes fork from several threads; the others
    // (renderers, GPU, utilities) start no processes of their own.
    const bool forks = type == BrowserProcess::browser || type == BrowserProcess::zygote;
    for (pid_t kid : children_of(proc_, pid, forks)) {
      auto cmdline = read_file(proc_.path(kid, "cmdline"), 4096);
      if (!cmdline) continue;
      BrowserProcess kt = classify_browser_process(*cmdline);
      if (kt == BrowserProcess::browser) kt = BrowserProcess::other;  // a child without --type
      todo.emplace_back(kid, kt);
    }
  }
  pt.count = count;
  pt.priv = priv;
  pt.renderers = std::move(renderers);
  pt.have = true;
}

Result<void> BrowserCollector::collect(const Target& t, Sample& out) {
  PerTarget& pt = per_target_[t.id];
  if (!pt.checked) {
    pt.checked = true;
    if (is_browser_exe(t.exe)) {
      auto cmdline = read_file(proc_.path(t.pid(), "cmdline"), 4096);
      pt.browser = cmdline && classify_browser_process(*cmdline) == BrowserProcess::browser;
    }
    if (pt.browser) {
      auto f = elf::ElfFile::open(proc_.path(t.pid(), "exe"));
      pt.v8_reason = f && (*f)->find_prefix("_ZN2v88internal4Heap14CollectGarbageE") ? "not_traced" : "no_symbols";
    }
  }
  if (!pt.browser) return {};
  Result<void> result;
  const double now = mono_now();
  if (now >= pt.next_read) {
    pt.next_read = now + interval_;
    read_tree(t, pt, now, result);
  }
  out.gauge(m().v8, 0, {{"reason", pt.v8_reason}});
  if (!pt.have) return result;
  for (std::size_t i = 0; i < kBrowserProcessTypes; ++i) {
    const Labels type{{"type", kTypeNames[i]}};
    out.gauge(m().processes, pt.count[i], type);
    out.gauge(m().private_bytes, pt.priv[i], type);
  }
  std::vector<std::pair<double, pid_t>> largest;
  for (const auto& [pid, r] : pt.renderers) largest.emplace_back(r.bytes, pid);
  std::sort(largest.rbegin(), largest.rend());
  if (largest.size() > kMaxRenderers) largest.resize(kMaxRenderers);
  for (const auto& [bytes, pid] : largest) {
    const Labels l{{"renderer", std::to_string(pid)}};
    out.gauge(m().renderer, bytes, l);
    const Renderer& r = pt.renderers.at(pid);
    if (r.points.size() < 3 || r.points.back().t - r.points.front().t < 2 * interval_) continue;
    const SlopeFit fit = theil_sen(std::vector<Point>(r.points.begin(), r.points.end()));
    out.gauge(m().slope, fit.slope, l);
    out.gauge(m().confidence, fit.confidence, l);
  }
  return result;
}

}  // namespace memlens
