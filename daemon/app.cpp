#include "daemon/app.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <cmath>

#include "collectors/proc_parse.h"
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
  MetricDesc capped_now = metric("targets_over_cap", "", MetricKind::gauge,
                                 "Matching processes currently not watched because of max_targets.");
  MetricDesc scan_errors = metric("discovery_errors", "", MetricKind::counter,
                                  "Unreadable or malformed /proc entries met while scanning for targets.");
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
                                     "Memory reserved by the timeline ring buffers.");
  MetricDesc slope = metric("leak_slope", "bytes_per_second", MetricKind::gauge,
                            "Robust (Theil-Sen) slope of the heap series over the leak window: eBPF live heap when "
                            "allocation tracing is exact for the target, else the allocator's in-use bytes from its "
                            "own books (glibc), else resident anonymous memory.");
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

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

App::App(Options opts, std::unique_ptr<Config> cfg, std::unique_ptr<Exporter> exporter,
         std::vector<std::unique_ptr<Collector>> collectors)
    : opts_(std::move(opts)), cfg_(cfg.get()), exporter_(std::move(exporter)), timer_(io_),
      signals_(sig_io_, SIGINT, SIGTERM, SIGHUP) {
  configs_.push_back(std::move(cfg));
  for (auto& c : collectors) collectors_.push_back(CollectorState{std::move(c), false, {}, 0, true, {}});
  discovery_ = std::make_unique<Discovery>(*cfg_, getpid());
  start_collectors();
}

// Collectors release their kernel state (links, maps) in their destructors;
// there is no per-target teardown to wait for at shutdown.
App::~App() = default;

double App::now_mono() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void App::start_collectors() {
  for (auto& cs : collectors_) {
    auto r = cs.c->start(*cfg_);
    const bool was_up = cs.up;
    cs.up = r.ok();
    if (!r.ok() && cs.why_down != r.error().message) {
      // Said once (and again only if the reason changes).
      spdlog::warn("collector {} disabled: {}", cs.c->name(), r.error().message);
    }
    cs.why_down = r.ok() ? "" : r.error().message;
    if (cs.up && !was_up) {
      for (const auto& [id, t] : discovery_->targets()) cs.c->target_added(t);
    }
  }
}

void App::rescan() {
  auto res = discovery_->scan();
  exited_total_ += res.exited;
  capped_total_ += res.capped_new;
  scan_errors_total_ += res.scan_errors;
  for (const auto& t : res.removed) {
    for (auto& cs : collectors_)
      if (cs.up) cs.c->target_removed(t);
    states_.erase(t.id);
    for (auto it = logged_.begin(); it != logged_.end();)
      it = it->second == t.id ? logged_.erase(it) : std::next(it);
    spdlog::debug("target {} pid {} removed", t.name, t.pid());
  }
  for (const auto& t : res.added) {
    states_.try_emplace(t.id, cfg_->timeline_points());
    for (auto& cs : collectors_)
      if (cs.up) cs.c->target_added(t);
    spdlog::debug("target {} pid {} ({}) added", t.name, t.pid(), t.comm);
  }
  if (res.capped_new)
    spdlog::info("{} matching process(es) not watched: max_targets reached", res.capped_new);
}

void App::tick() {
  const double t0 = now_mono();
  ++ticks_total_;
  if (force_rescan_ || t0 - last_rescan_ >= std::chrono::duration<double>(cfg_->rescan_interval).count()) {
    rescan();
    last_rescan_ = t0;
    force_rescan_ = false;
  }

  auto snap = std::make_shared<Snapshot>();
  snap->built_at = unix_now();
  SnapshotBuilder b;
  const auto& m = sm();
  for (auto& cs : collectors_) {
    cs.seconds = 0;
    cs.last_ok = true;
  }
  std::map<std::string, int> per_name;
  const double leak_window = std::chrono::duration<double>(cfg_->leak_window).count();
  std::size_t timeline_bytes = 0;

  for (const auto& [id, target] : discovery_->targets()) {
    if (stopping_.load()) return;  // shutting down: drop this tick
    auto st_it = states_.find(id);
    if (st_it == states_.end()) st_it = states_.try_emplace(id, cfg_->timeline_points()).first;
    TargetState& st = st_it->second;
    Target t = target;
    t.leak_slope_valid = st.fit_valid;
    t.leak_slope_bytes_per_second = st.fit.slope;

    Sample s;
    bool gone = false;
    for (std::size_t ci = 0; ci < collectors_.size(); ++ci) {
      auto& cs = collectors_[ci];
      if (!cs.up) continue;
      const auto c0 = std::chrono::steady_clock::now();
      auto r = cs.c->collect(t, s);
      cs.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count();
      if (r) continue;
      cs.last_ok = false;
      ++cs.errors[errc_name(r.error().code)];
      if (r.error().code == Errc::not_found && ci == 0) {
        gone = true;  // exited (or pid reused) since discovery
        break;
      }
      if (logged_.insert({ci, id}).second)
        spdlog::warn("collector {} on target {} pid {}: {}", cs.c->name(), t.name, t.pid(), r.error().message);
    }
    if (gone) {
      force_rescan_ = true;  // its series vanish now; the rescan counts the exit
      continue;
    }
    const double now = now_mono();
    st.timeline.push(now, s);
    timeline_bytes += st.timeline.capacity() * Timeline::bytes_per_point();
    auto pts = st.timeline.window(SeriesId::heap, now - leak_window);
    // Report a slope once half the window is covered: earlier it is noise.
    st.fit_valid = pts.size() >= 4 && pts.back().t - pts.front().t >= leak_window / 2;
    if (st.fit_valid) st.fit = theil_sen(pts);

    const Labels base{{"target", t.name}, {"pid", std::to_string(t.pid())}};
    TargetView view{t.name, t.selector, t.comm, t.exe, t.pid(), t.id.start_time, {}};
    for (const auto& v : s.values()) {
      b.add(v, base);
      if (v.desc->kind != MetricKind::histogram) view.values.emplace_back(series_key(v), v.value);
    }
    auto add_gauge = [&](const MetricDesc& d, double v) {
      b.add(MetricValue{&d, {}, v, {}}, base);
      view.values.emplace_back(d.name, v);
    };
    if (st.fit_valid) {
      add_gauge(m.slope, st.fit.slope);
      add_gauge(m.slope_conf, st.fit.confidence);
    }
    const double peak = st.timeline.max(SeriesId::rss);
    if (!std::isnan(peak)) add_gauge(m.peak, peak);
    add_gauge(m.timeline_pts, static_cast<double>(st.timeline.size()));
    snap->targets.push_back(std::move(view));
    ++per_name[t.name];
  }

  GlobalSample g;
  for (auto& cs : collectors_) {
    const Labels l{{"collector", std::string(cs.c->name())}};
    if (cs.up) {
      const auto c0 = std::chrono::steady_clock::now();
      cs.c->collect_global(g);
      cs.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count();
    }
    b.gauge(m.coll_dur, cs.seconds, l);
    b.gauge(m.coll_ok, cs.up && cs.last_ok ? 1 : 0, l);
    if (cs.up) b.gauge(m.coll_up, 1, l);
    else b.gauge(m.coll_up, 0, {{"collector", std::string(cs.c->name())}, {"reason", cs.why_down}});
    for (const char* reason : {"not_found", "permission", "malformed", "unavailable", "full", "io", "invalid"}) {
      auto it = cs.errors.find(reason);
      b.counter(m.coll_err, it == cs.errors.end() ? 0 : static_cast<double>(it->second),
                {{"collector", std::string(cs.c->name())}, {"reason", reason}});
    }
  }
  for (const auto& v : g.values()) b.add(v, {});
  for (const auto& [path, body] : g.documents()) snap->documents[path] = body;

  for (const auto& pol : cfg_->targets) {
    auto it = per_name.find(pol.name);
    b.gauge(m.targets, it == per_name.end() ? 0 : it->second, {{"target", pol.name}});
  }
  b.gauge(m.build_info, 1, {{"version", MEMLENS_VERSION}, {"revision", MEMLENS_REVISION}});
  b.counter(m.exited, static_cast<double>(exited_total_));
  b.counter(m.capped, static_cast<double>(capped_total_));
  b.gauge(m.capped_now, static_cast<double>(discovery_->capped_now()));
  b.counter(m.scan_errors, static_cast<double>(scan_errors_total_));
  b.counter(m.reloads, static_cast<double>(reloads_total_), {{"result", "success"}});
  b.counter(m.reloads, static_cast<double>(reload_failures_total_), {{"result", "failure"}});
  b.counter(m.ticks, static_cast<double>(ticks_total_));
  b.counter(m.late, static_cast<double>(ticks_late_total_));
  b.gauge(m.tick_dur, tick_seconds_);
  b.gauge(m.timeline_bytes, static_cast<double>(timeline_bytes));

  // memlensd's own process metrics, from its own /proc entries.
  static const double ticks_per_s = static_cast<double>(sysconf(_SC_CLK_TCK));
  static const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  if (auto text = read_file("/proc/self/stat")) {
    if (auto st = parse_stat(*text)) {
      b.gauge(m.p_rss, static_cast<double>(st->rss_pages) * page);
      b.gauge(m.p_vm, static_cast<double>(st->vsize));
      b.counter(m.p_cpu, static_cast<double>(st->utime + st->stime) / ticks_per_s);
      static const double start = [&] {
        double boot = 0;
        if (auto s = read_file("/proc/stat")) {
          auto at = s->find("btime ");
          if (at != std::string::npos) boot = std::strtod(s->c_str() + at + 6, nullptr);
        }
        return boot + static_cast<double>(st->starttime) / ticks_per_s;
      }();
      b.gauge(m.p_start, start);
    }
  }

  snap->families = b.take();
  exporter_->publish(std::move(snap));
  tick_seconds_ = now_mono() - t0;
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
  auto owned = std::make_unique<Config>(std::move(*cfg));
  const bool resize = owned->timeline_points() != cfg_->timeline_points();
  cfg_ = owned.get();
  configs_.push_back(std::move(owned));
  discovery_->reconfigure(*cfg_);
  if (resize) states_.clear();  // ring sizes changed: history restarts
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
