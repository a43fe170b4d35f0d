#include "daemon/app.h"

#include <malloc.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <cmath>

#include "collectors/proc_parse.h"
#include "daemon/budget.h"
#include "daemon/clock.h"
#include "daemon/kubernetes.h"
#include "daemon/procfs.h"
#include "daemon/snapshot.h"

namespace memlens {

namespace {

struct SelfMetrics {
  MetricDesc build_info = metric("build_info", "", MetricKind::gauge,
                                 "Always 1; labels carry the memlensd version and revision.");
  MetricDesc targets = metric("targets_watched", "", MetricKind::gauge, "Targets currently watched, by configured name.");
  MetricDesc exited = metric("targets_exited", "", MetricKind::counter, "Targets whose process exited.");
  MetricDesc capped = metric("targets_capped", "", MetricKind::counter,
                             "Matching processes turned away by max_targets (each counted once).");
  MetricDesc grouped = metric("targets_grouped", "", MetricKind::gauge,
                               "Processes covered by their parent's target instead of being targets of their "
                               "own (children: false; PostgreSQL backends under their postmaster), by entry.");
  MetricDesc capped_now = metric("targets_over_cap", "", MetricKind::gauge,
                                 "Matching processes currently not watched because of max_targets.");
  MetricDesc scan_errors = metric("discovery_errors", "", MetricKind::counter,
                                  "Unreadable or malformed /proc entries met while scanning for targets.");
  MetricDesc scans = metric("discovery_scans", "", MetricKind::counter,
                            "Rescans of /proc for targets (every global.rescan_interval, and when a target exits).");
  MetricDesc scan_seconds = metric("discovery_scan_duration", "seconds", MetricKind::gauge,
                                   "Time the last rescan of /proc took (one stat file per process, more for "
                                   "selectors on exe, cmdline or cgroup).");
  MetricDesc scan_procs = metric("discovery_processes", "", MetricKind::gauge,
                                 "User processes the last rescan saw (kernel threads and zombies aside).");
  MetricDesc scan_reads = metric("discovery_stat_reads", "", MetricKind::gauge,
                                 "Stat files the last rescan read: new processes, targets and a fifth of the "
                                 "others (each process is re-read at least every 5 rescans).");
  MetricDesc pod_label_errors = metric("kubernetes_label_errors", "", MetricKind::counter,
                                       "Targets that got no or only some of their Kubernetes labels, by reason "
                                       "(global.kubernetes_labels; see the README).");
  MetricDesc coll_dur = metric("collector_duration", "seconds", MetricKind::gauge,
                               "Time a collector took over all targets in the last tick.");
  MetricDesc coll_ok = metric("collector_success", "", MetricKind::gauge,
                              "1 if the collector read every target without error in the last tick.");
  MetricDesc coll_up = metric("collector_enabled", "", MetricKind::gauge,
                              "1 if the collector runs; 0 with the reason label when it is disabled.");
  MetricDesc coll_err = metric("collector_errors", "", MetricKind::counter,
                               "Failed reads by collector and reason (a target that exited mid-read is not_found).");
  MetricDesc reloads = metric("config_reloads", "", MetricKind::counter, "Configuration reloads (SIGHUP) by result.");
  MetricDesc ticks = metric("ticks", "", MetricKind::counter, "Collection ticks run.");
  MetricDesc late = metric("ticks_late", "", MetricKind::counter, "Ticks that started more than one interval late.");
  MetricDesc tick_dur = metric("tick_duration", "seconds", MetricKind::gauge, "Duration of the last collection tick.");
  MetricDesc timeline_bytes = metric("timeline_memory", "bytes", MetricKind::gauge,
                                     "Memory of the timeline rings of the targets watched (compressed points).");
  MetricDesc timeline_refused = metric("timelines_refused", "", MetricKind::counter,
                                       "Targets that found every timeline slot taken (no history, no slope).");
  MetricDesc state_persistent = metric("state_persistent", "", MetricKind::gauge,
                                       "1 when timelines live in the state file (--state.path) and survive a "
                                       "restart; 0 in memory only (no path, or the file could not be had: see the log).");
  MetricDesc state_resumed = metric("state_resumed_timelines", "", MetricKind::counter,
                                    "Timelines of still-running targets resumed from the state file at start.");
  MetricDesc state_dropped = metric("state_dropped", "", MetricKind::counter,
                                    "Damaged parts of the state file dropped at start: chunk (some points of one "
                                    "target), slot (one target's history), file (all of it).");
  MetricDesc slope = metric("leak_slope", "bytes_per_second", MetricKind::gauge,
                            "Robust (Theil-Sen) slope of the heap series over the leak window: eBPF live heap when "
                            "allocation tracing is exact for the target, else V8's heap used at each collection's end "
                            "(Node), else the allocator's in-use bytes from its own books (glibc), else resident "
                            "anonymous memory.");
  MetricDesc slope_conf = metric("leak_slope_confidence", "", MetricKind::gauge,
                                 "Agreement of pairwise slopes with the leak slope's sign: 0 no trend, 1 certain.");
  MetricDesc peak = metric("rss_window_peak", "bytes", MetricKind::gauge,
                           "Largest resident set size seen over the timeline window.");
  MetricDesc timeline_pts = metric("timeline_points", "", MetricKind::gauge, "Points held in the target's timeline.");
  // Standard process metrics of memlensd itself (as client libraries export them).
  MetricDesc p_rss{"process_resident_memory_bytes", "Resident memory size of memlensd in bytes.", MetricKind::gauge};
  MetricDesc p_vm{"process_virtual_memory_bytes", "Virtual memory size of memlensd in bytes.", MetricKind::gauge};
  MetricDesc p_cpu{"process_cpu_seconds_total", "User and system CPU time of memlensd in seconds.", MetricKind::counter};
  MetricDesc p_start{"process_start_time_seconds", "Start time of memlensd since the epoch in seconds.", MetricKind::gauge};
};

const SelfMetrics& sm() {
  static const SelfMetrics m;
  return m;
}

// Kubernetes labels on, but none of the runtimes' state directories under
// the root: likely a missing mount (deploy/kubernetes/daemonset.yaml).
void warn_without_runtime_state(const Config& c) {
  if (!c.kubernetes_labels) return;
  const std::string probe(64, '0');
  for (const auto& path : runtime_config_paths(c.run, probe)) {
    // The directory that would hold the container's bundle.
    std::string dir = path.substr(0, path.find(probe));
    if (::access(dir.c_str(), R_OK | X_OK) == 0) return;
  }
  spdlog::warn("global.kubernetes_labels: no container runtime state under {} (containerd, k3s or CRI-O): "
               "targets in pods get pod_uid alone (set --path.run to the host's /run)",
               c.run);
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

App::App(Options opts, ConfigPtr cfg, std::unique_ptr<Exporter> exporter,
         std::vector<std::unique_ptr<Collector>> collectors)
    : opts_(std::move(opts)), cfg_(std::move(cfg)), exporter_(std::move(exporter)), timer_(io_),
      signals_(sig_io_, SIGINT, SIGTERM, SIGHUP) {
  for (auto& c : collectors) {
    CollectorState cs;
    cs.c = std::move(c);
    collectors_.push_back(std::move(cs));
  }
  discovery_ = std::make_unique<Discovery>(cfg_, getpid());
  warn_without_runtime_state(*cfg_);
  store_ = StateStore::open(opts_.state_path, state_geometry(*cfg_));
  set_store_window();
  start_collectors();
}

// Timelines reach back timeline_window, and keep the points of one leak
// window decoded (its fit reads them every tick), up to 256 points: 6 KiB
// a target. A longer window is decoded from the chunks.
void App::set_store_window() {
  const auto tail = static_cast<std::size_t>(std::ceil(std::chrono::duration<double>(cfg_->leak_window).count() /
                                                       std::chrono::duration<double>(cfg_->tick_interval).count())) + 4;
  store_->set_window(std::chrono::duration<double>(cfg_->timeline_window).count(), tail <= 256 ? tail : 0);
}

// Collectors release their kernel state (links, maps) in their destructors;
// there is no per-target teardown to wait for at shutdown.
App::~App() = default;

void App::start_collectors() {
  for (auto& cs : collectors_) {
    auto r = cs.c->start(cfg_);
    const bool was_up = cs.up;
    cs.up = r.ok();
    if (!r.ok() && cs.why_down != r.error().message) {
      // Said once (and again only if the reason changes).
      spdlog::warn("collector {} disabled: {}", cs.c->name(), r.error().message);
    }
    cs.why_down = r.ok() ? "" : r.error().message;
    cs.reason = r.ok() ? "" : disabled_reason(r.error().code);
    if (cs.up && !was_up) {
      for (const auto& [id, t] : discovery_->targets()) cs.c->target_added(t);
    }
  }
}

void App::rescan() {
  const double t0 = mono_now();
  auto res = discovery_->scan();
  ++scans_total_;
  scan_seconds_ = mono_now() - t0;
  scan_processes_ = res.processes;
  scan_stat_reads_ = res.stat_reads;
  exited_total_ += res.exited;
  capped_total_ += res.capped_new;
  scan_errors_total_ += res.scan_errors;
  for (const auto& t : res.removed) {
    for (auto& cs : collectors_)
      if (cs.up) cs.c->target_removed(t);
    states_.erase(t.id);
    store_->release(t.id);
    for (auto it = logged_.begin(); it != logged_.end();)
      it = it->second == t.id ? logged_.erase(it) : std::next(it);
    spdlog::debug("target {} pid {} removed", t.name, t.pid());
  }
  for (const auto& t : res.added) {
    state_of(t);
    for (auto& cs : collectors_)
      if (cs.up) cs.c->target_added(t);
    spdlog::debug("target {} pid {} ({}) added", t.name, t.pid(), t.comm);
  }
  if (res.capped_new)
    spdlog::info("{} matching process(es) not watched: max_targets reached", res.capped_new);
  if (!res.removed.empty()) trim_due_ = true;
  if (!first_scan_done_) {
    store_->release_unclaimed();  // saved timelines of processes gone meanwhile
    first_scan_done_ = true;
    const auto& st = store_->stats();
    if (st.resumed) spdlog::info("resumed {} timeline(s) from the state file", st.resumed);
  }
}

// A target's state, with its timeline from the store (resumed when the
// state file holds it).
App::TargetState& App::state_of(const Target& t) {
  auto [it, fresh] = states_.try_emplace(t.id);
  if (fresh) {
    it->second.timeline = store_->claim(t.id, t.name);
    if (!it->second.timeline) ++timeline_refused_total_;
  }
  return it->second;
}

// glibc keeps what gone targets freed (timelines, maps, strings) in its
// arenas' free lists, resident: 300 targets that came and went left ~15 MiB
// more behind than before they came. Giving free pages back after targets go
// keeps RSS flat under churn (and the first tick's trim drops start-up's
// transient memory). It runs at the end of the tick, once the snapshot that
// still showed the gone targets is released too. A trim walks the free
// lists: 1.6-3.6 ms measured after 300 targets left at once.
void App::trim_heap() {
  const auto t0 = std::chrono::steady_clock::now();
  malloc_trim(0);
  spdlog::debug("malloc_trim after targets left: {:.2f} ms",
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
}

// One tick, in four steps: rescan (when due), collect every target,
// analyse its timeline, publish one immutable snapshot.
void App::tick() {
  const double t0 = mono_now();
  ++ticks_total_;
  if (force_rescan_ || t0 - last_rescan_ >= std::chrono::duration<double>(cfg_->rescan_interval).count()) {
    rescan();
    last_rescan_ = t0;
    force_rescan_ = false;
  }
  for (auto& cs : collectors_) {
    cs.seconds = 0;
    cs.last_ok = true;
  }
  auto snap = std::make_shared<Snapshot>();
  snap->built_at = unix_now();
  SnapshotBuilder& b = builder_;
  b.clear();  // what a tick given up half way left
  PageDraw pages(pages_, exporter_->page_wants(), *cfg_, exporter_->metrics_path(), t0);
  std::map<std::string, int> per_name;
  for (const auto& [id, target] : discovery_->targets()) {
    if (stopping_.load()) return;  // shutting down: drop this tick
    TargetState& st = state_of(target);
    Target t = target;
    t.leak_slope_valid = st.fit_valid;
    t.leak_slope_bytes_per_second = st.fit.slope;
    if (discovery_->same_pid_ns()) t.cpu_ns = process_cpu_ns(t.pid());  // once, for every collector
    Sample& s = sample_;  // its storage serves every target
    s.clear();
    if (!collect(t, s)) {
      force_rescan_ = true;  // its series vanish now; the rescan counts the exit
      continue;
    }
    analyse(st, t, s, boot_now());
    publish_target(b, *snap, t, s, st);
    pages.add(t, st.timeline.get(), snap->targets.size() - 1);
    ++per_name[t.name];
  }
  publish_collectors(b, *snap);
  publish_self(b, per_name);
  snap->series = b.take_set();
  pages.draw(*snap);  // reads the series
  exporter_->publish(std::move(snap));
  if (ticks_total_ == 1 || trim_due_) trim_heap();
  trim_due_ = false;
  tick_seconds_ = mono_now() - t0;
}

// Every running collector on one target, each timed and its errors counted
// by reason. False when the target is gone: a collector that tells exits
// (the proc collector) found it vanished (or its pid reused) since discovery.
bool App::collect(const Target& t, Sample& s) {
  double c0 = mono_now();  // one clock read a collector: each ends where the next starts
  for (std::size_t ci = 0; ci < collectors_.size(); ++ci) {
    auto& cs = collectors_[ci];
    if (!cs.up) continue;
    auto r = cs.c->collect(t, s);
    const double c1 = mono_now();
    cs.seconds += c1 - c0;
    c0 = c1;
    if (r) continue;
    cs.last_ok = false;
    ++cs.errors[errc_name(r.error().code)];
    if (r.error().code == Errc::not_found && cs.c->tells_exit()) return false;
    if (logged_.insert({ci, t.id}).second)
      spdlog::warn("collector {} on target {} pid {}: {}", cs.c->name(), t.name, t.pid(), r.error().message);
    c0 = mono_now();  // the error's bookkeeping is no collector's time
  }
  return true;
}

// The timeline takes the tick's sample; the leak slope is fitted over the
// leak window once half of it is covered (earlier it is noise). A target
// with a budget on RSS, its peak or its heap also gets the trend of that
// series over breach_window, the same estimator, for the breach prediction.
void App::analyse(TargetState& st, const Target& t, const Sample& s, double now) {
  if (!st.timeline) return;
  st.timeline->push(now, s);
  auto fit_over = [&](SeriesId id, Duration w, SlopeFit& fit) {
    const double window = std::chrono::duration<double>(w).count();
    auto pts = st.timeline->window(id, now - window);
    const bool valid = pts.size() >= 4 && pts.back().t - pts.front().t >= window / 2;
    if (valid) fit = theil_sen(pts);
    return valid;
  };
  st.fit_valid = fit_over(SeriesId::heap, cfg_->leak_window, st.fit);
  const TargetPolicy* pol = t.policy.get();
  st.rss_trend_valid = pol && (pol->budget("rss") || pol->budget("peak")) &&
                       fit_over(SeriesId::rss, cfg_->breach_window, st.rss_trend);
  st.heap_trend_valid = false;
  if (pol && pol->budget("heap")) {
    if (cfg_->breach_window == cfg_->leak_window) {
      st.heap_trend = st.fit;
      st.heap_trend_valid = st.fit_valid;
    } else {
      st.heap_trend_valid = fit_over(SeriesId::heap, cfg_->breach_window, st.heap_trend);
    }
  }
}

// The heap figure budgets are held against, and for each byte budget on a
// series memlensd keeps a trend of (rss, peak, heap), the predicted time to
// its breach.
void App::publish_budgets(SnapshotBuilder& b, std::size_t base, const Target& t, const Sample& s,
                          const TargetState& st) const {
  const auto& m = budget_metrics();
  auto add = [&](const MetricDesc& d, double v, Labels extra) { b.add(MetricValue{&d, std::move(extra), v, {}}, base); };
  const auto heap = best_heap(s);
  if (heap) b.add(value_of(m.heap, heap->bytes, heap_source_(heap->source)), base);
  const TargetPolicy* pol = t.policy.get();
  if (!pol) return;
  // NaN: no such figure this tick (g++ 12 takes std::optional<double> here
  // for uninitialised, a false -Wmaybe-uninitialized).
  auto predict = [&](const char* resource, double current, double over_at, const SlopeFit& fit, bool valid) {
    const Budget* budget = pol->budget(resource);
    if (!budget || std::isnan(current) || !valid) return;
    // Already over (for peak: the lifetime high-water mark passed it).
    if (!std::isnan(over_at) && over_at >= budget->value) return;
    auto secs = breach_seconds(budget->value, current, fit);
    if (!secs) return;
    add(m.breach, *secs, {{"resource", resource}});
    add(m.breach_confidence, fit.confidence, {{"resource", resource}});
  };
  const double rss = s.has_series(SeriesId::rss) ? s.series_value(SeriesId::rss) : NAN;
  predict("rss", rss, NAN, st.rss_trend, st.rss_trend_valid);
  predict("peak", rss, sample_value(s, "memlens_rss_peak_bytes").value_or(NAN), st.rss_trend, st.rss_trend_valid);
  // The heap trend is the timeline's heap series: the JVM's heap is not in
  // it (it is the native heap's), so no prediction from a JVM figure.
  if (heap && std::string_view(heap->source) != "jvm")
    predict("heap", heap->bytes, NAN, st.heap_trend, st.heap_trend_valid);
}

void App::publish_target(SnapshotBuilder& b, Snapshot& snap, const Target& t, Sample& s,
                         const TargetState& st) const {
  const auto& m = sm();
  Labels labels{{"target", t.name}, {"pid", std::to_string(t.pid())}};
  labels.insert(labels.end(), t.labels.begin(), t.labels.end());
  const std::size_t base = b.base(std::move(labels));
  TargetView view{t.name, t.selector, t.comm, t.exe, t.pid(), t.id.start_time, t.labels, base, {}};
  publish_budgets(b, base, t, s, st);  // reads the sample's figures: before they move
  s.drain([&](MetricValue&& v) { b.add(std::move(v), base); });
  auto add_gauge = [&](const MetricDesc& d, double v) { b.add(MetricValue{&d, {}, v, {}}, base); };
  if (st.fit_valid) {
    add_gauge(m.slope, st.fit.slope);
    add_gauge(m.slope_conf, st.fit.confidence);
  }
  if (st.timeline) {
    const double peak = st.timeline->max(SeriesId::rss);
    if (!std::isnan(peak)) add_gauge(m.peak, peak);
    add_gauge(m.timeline_pts, static_cast<double>(st.timeline->size()));
  }
  snap.targets.push_back(std::move(view));
}

// Each collector's daemon-wide values and documents, and how it fared.
void App::publish_collectors(SnapshotBuilder& b, Snapshot& snap) {
  const auto& m = sm();
  GlobalSample g;
  for (auto& cs : collectors_) {
    const std::string name(cs.c->name());
    if (cs.up) {
      const double c0 = mono_now();
      cs.c->collect_global(g);
      cs.seconds += mono_now() - c0;
    }
    b.gauge(m.coll_dur, cs.seconds, {{"collector", name}});
    b.gauge(m.coll_ok, cs.up && cs.last_ok ? 1 : 0, {{"collector", name}});
    if (cs.up) b.gauge(m.coll_up, 1, {{"collector", name}});
    else b.gauge(m.coll_up, 0, {{"collector", name}, {"reason", cs.reason}});
    for (Errc code : kAllErrc) {
      auto it = cs.errors.find(errc_name(code));
      b.counter(m.coll_err, it == cs.errors.end() ? 0 : static_cast<double>(it->second),
                {{"collector", name}, {"reason", errc_name(code)}});
    }
  }
  for (const auto& v : g.values()) b.add(v, {});
  for (const auto& [path, body] : g.documents()) snap.documents[path] = body;
  for (const auto& [key, gz] : g.profiles()) snap.profiles[key] = gz;
}

// memlensd's own figures: targets by entry, discovery and reload counters,
// ticks, timeline memory, and its process metrics.
void App::publish_self(SnapshotBuilder& b, const std::map<std::string, int>& per_name) const {
  const auto& m = sm();
  for (const auto& pol : cfg_->targets) {
    auto it = per_name.find(pol.name);
    // A files entry watches no process: memlens_files_matched is its count.
    if (!pol.files) b.gauge(m.targets, it == per_name.end() ? 0 : it->second, {{"target", pol.name}});
    // Budgets are configuration: exported per entry whether or not a
    // process matches it now, as kube-state-metrics exports limits.
    for (const auto& budget : pol.budgets)
      b.gauge(budget_metrics().of(budget.unit), budget.value, {{"target", pol.name}, {"resource", budget.resource}});
  }
  std::size_t timeline_bytes = 0;
  for (const auto& [id, st] : states_)
    if (st.timeline) timeline_bytes += st.timeline->capacity_bytes();
  const auto& store = store_->stats();
  b.gauge(m.state_persistent, store.persistent ? 1 : 0);
  b.counter(m.state_resumed, static_cast<double>(store.resumed));
  b.counter(m.state_dropped, static_cast<double>(store.dropped_chunks), {{"part", "chunk"}});
  b.counter(m.state_dropped, static_cast<double>(store.dropped_slots), {{"part", "slot"}});
  b.counter(m.state_dropped, static_cast<double>(store.dropped_files), {{"part", "file"}});
  b.counter(m.timeline_refused, static_cast<double>(timeline_refused_total_));
  b.gauge(m.build_info, 1, {{"version", MEMLENS_VERSION}, {"revision", MEMLENS_REVISION}});
  b.counter(m.exited, static_cast<double>(exited_total_));
  b.counter(m.capped, static_cast<double>(capped_total_));
  b.gauge(m.capped_now, static_cast<double>(discovery_->capped_now()));
  for (const auto& pol : cfg_->targets)
    if (!pol.children) {
      auto it = discovery_->grouped().find(pol.name);
      b.gauge(m.grouped, it == discovery_->grouped().end() ? 0.0 : static_cast<double>(it->second),
              {{"target", pol.name}});
    }
  b.counter(m.scan_errors, static_cast<double>(scan_errors_total_));
  b.counter(m.scans, static_cast<double>(scans_total_));
  b.gauge(m.scan_seconds, scan_seconds_);
  b.gauge(m.scan_procs, static_cast<double>(scan_processes_));
  b.gauge(m.scan_reads, static_cast<double>(scan_stat_reads_));
  if (cfg_->kubernetes_labels) {
    for (std::size_t i = 0; i < kPodLabelErrorNames.size(); ++i)
      b.counter(m.pod_label_errors, static_cast<double>(discovery_->pods().errors(static_cast<PodLabelError>(i))),
                {{"reason", kPodLabelErrorNames[i]}});
  }
  b.counter(m.reloads, static_cast<double>(reloads_total_), {{"result", "success"}});
  b.counter(m.reloads, static_cast<double>(reload_failures_total_), {{"result", "failure"}});
  b.counter(m.ticks, static_cast<double>(ticks_total_));
  b.counter(m.late, static_cast<double>(ticks_late_total_));
  b.gauge(m.tick_dur, tick_seconds_);
  b.gauge(m.timeline_bytes, static_cast<double>(timeline_bytes));

  static const double ticks_per_s = static_cast<double>(sysconf(_SC_CLK_TCK));
  static const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  auto text = read_file("/proc/self/stat");
  auto st = text ? parse_stat(*text) : Result<ProcStat>(make_error(Errc::not_found, ""));
  if (!st) return;
  b.gauge(m.p_rss, static_cast<double>(st->rss_pages) * page);
  b.gauge(m.p_vm, static_cast<double>(st->vsize));
  b.counter(m.p_cpu, static_cast<double>(st->utime + st->stime) / ticks_per_s);
  static const double start = [&] {
    auto stat = read_file("/proc/stat");
    const double boot = stat ? parse_btime(*stat).value_or(0) : 0;
    return boot + static_cast<double>(st->starttime) / ticks_per_s;
  }();
  b.gauge(m.p_start, start);
}

void App::reload() {
  if (opts_.config_file.empty()) {
    spdlog::info("SIGHUP: no --config.file, the embedded default stays");
    return;
  }
  auto cfg = load_config_file(opts_.config_file);
  if (!cfg) {
    ++reload_failures_total_;
    spdlog::error("reload failed, keeping the running config: {}", cfg.error().message);
    return;
  }
  if (!opts_.procfs.empty()) cfg->procfs = opts_.procfs;
  if (!opts_.run.empty()) cfg->run = opts_.run;
  if (auto r = ProcFs(cfg->procfs).check(); !r) {
    ++reload_failures_total_;
    spdlog::error("reload failed, keeping the running config: global.path_procfs: {}", r.error().message);
    return;
  }
  ConfigPtr next = std::make_shared<const Config>(std::move(*cfg));
  const bool resize = state_geometry(*next) != store_->geometry();
  cfg_ = std::move(next);
  discovery_->reconfigure(cfg_);
  warn_without_runtime_state(*cfg_);
  if (resize) {
    // Ring sizes changed: history restarts (the state file too).
    states_.clear();
    store_.reset();
    store_ = StateStore::open(opts_.state_path, state_geometry(*cfg_));
    store_->release_unclaimed();
  }
  set_store_window();
  trim_due_ = true;             // what the previous config held
  start_collectors();
  force_rescan_ = true;
  ++reloads_total_;
  spdlog::info("reloaded {}: {} target selector(s)", cfg_->source, cfg_->targets.size());
  schedule();  // the tick interval may have changed
}

void App::schedule() {
  timer_.expires_at(next_tick_);
  timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;  // cancelled: reschedule happened or shutdown
    tick();
    const auto interval = std::chrono::duration_cast<std::chrono::steady_clock::duration>(cfg_->tick_interval);
    next_tick_ += interval;
    const auto now = std::chrono::steady_clock::now();
    if (next_tick_ < now) {
      // Fell behind (suspended, overloaded): skip, do not burst.
      ++ticks_late_total_;
      next_tick_ = now + interval;
    }
    schedule();
  });
}

void App::arm_signals() {
  signals_.async_wait([this](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    if (sig == SIGHUP) {
      // Reload on the collection thread, between ticks.
      boost::asio::post(io_, [this] {
        spdlog::info("SIGHUP: reloading configuration");
        reload();
      });
      arm_signals();
      return;
    }
    spdlog::info("signal {}: shutting down", sig);
    stopping_.store(true);
    io_.stop();
  });
}

int App::run() {
  arm_signals();
  std::thread sig_thread([this] { sig_io_.run(); });
  next_tick_ = std::chrono::steady_clock::now();
  schedule();
  io_.run();
  sig_io_.stop();
  sig_thread.join();
  return 0;
}

}  // namespace memlens
