// The daemon's loop. Threads and processes, and what each touches:
//  - the collection thread runs the Asio loop: each tick rescans (when due),
//    collects every target through every collector, analyses the timelines
//    and publishes one immutable snapshot; SIGHUP reloads run on it too,
//    between ticks. All of App's state is this thread's.
//  - the signal thread only takes signals: SIGHUP posts a reload to the
//    collection thread; SIGTERM/SIGINT stop the loop (a long tick is cut
//    short).
//  - the HTTP thread(s) (Exporter) read the published snapshot, nothing else.
//  - collectors may run their own threads and processes (the allocation
//    collector's poller, reapers and hold watchdog); each names them at the
//    top of its .cpp file.
#pragma once

#include <utility>  // before Asio: Boost 1.74 + g++ 12 in C++20 needs std::exchange
#include <boost/asio.hpp>

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "collectors/collector.h"
#include "daemon/config.h"
#include "daemon/discovery.h"
#include "daemon/exporter.h"
#include "daemon/snapshot.h"
#include "daemon/state_store.h"
#include "daemon/timeline.h"
#include "daemon/timeline_page.h"

namespace memlens {

struct Options {
  std::string config_file;  // empty: the embedded default
  std::string procfs;       // overrides global.path_procfs when set
  std::string run;          // overrides global.path_run when set
  std::string state_path;   // directory of the state file; empty: memory only
};

class App {
 public:
  App(Options opts, ConfigPtr cfg, std::unique_ptr<Exporter> exporter,
      std::vector<std::unique_ptr<Collector>> collectors);
  ~App();
  // Runs until SIGTERM/SIGINT; returns the exit code.
  int run();
  // One tick, for tests that drive the loop by hand.
  void tick();

 private:
  struct TargetState {
    std::unique_ptr<Timeline> timeline;  // null when every slot is taken
    SlopeFit fit;
    bool fit_valid = false;
    // Trends over breach_window, for targets with a budget on the series.
    SlopeFit rss_trend, heap_trend;
    bool rss_trend_valid = false, heap_trend_valid = false;
  };
  struct CollectorState {
    std::unique_ptr<Collector> c;
    bool up = false;
    std::string why_down;       // the message, logged once
    const char* reason = "";    // its code, the metric's label
    double seconds = 0;  // last tick
    bool last_ok = true;
    std::map<std::string, uint64_t> errors;  // by reason
  };

  void start_collectors();
  // The tick's steps (tick() runs them in this order).
  void rescan();
  TargetState& state_of(const Target& t);
  bool collect(const Target& t, Sample& s);
  void analyse(TargetState& st, const Target& t, const Sample& s, double now);
  void publish_target(SnapshotBuilder& b, Snapshot& snap, const Target& t, Sample& s,
                      const TargetState& st) const;
  void publish_collectors(SnapshotBuilder& b, Snapshot& snap);
  void publish_budgets(SnapshotBuilder& b, std::size_t base, const Target& t, const Sample& s,
                       const TargetState& st) const;
  void publish_self(SnapshotBuilder& b, const std::map<std::string, int>& per_name) const;
  void trim_heap();
  void set_store_window();
  void reload();
  void schedule();
  void arm_signals();

  // The timeline pages drawn last, kept between draws (they are redrawn
  // every few seconds while someone looks, not every tick).
  PageCache pages_;
  // Gathers each tick's series (what a tick given up half way left is
  // cleared at the next).
  SnapshotBuilder builder_;
  Sample sample_;  // a tick's values of one target, its storage reused
  mutable FixedLabelsFor heap_source_{"source"};  // best_heap's few sources

  Options opts_;
  // The running config; targets and collectors that need it share it, and
  // the previous one goes when its last holder lets go.
  ConfigPtr cfg_;
  std::unique_ptr<Exporter> exporter_;
  std::vector<CollectorState> collectors_;
  std::unique_ptr<Discovery> discovery_;
  std::unique_ptr<StateStore> store_;
  std::map<TargetId, TargetState> states_;
  bool first_scan_done_ = false;
  std::set<std::pair<std::size_t, TargetId>> logged_;  // (collector, target) errors logged once

  uint64_t timeline_refused_total_ = 0;
  uint64_t exited_total_ = 0, capped_total_ = 0, scan_errors_total_ = 0, scans_total_ = 0;
  double scan_seconds_ = 0;
  std::size_t scan_processes_ = 0, scan_stat_reads_ = 0;
  uint64_t reloads_total_ = 0, reload_failures_total_ = 0, ticks_total_ = 0, ticks_late_total_ = 0;
  double last_rescan_ = -1e18;
  bool force_rescan_ = false;
  bool trim_due_ = false;  // targets left or the config changed: trim at tick end
  double tick_seconds_ = 0;

  boost::asio::io_context io_;
  boost::asio::steady_timer timer_;
  // Signals are taken on their own thread, so SIGTERM is seen (and a long
  // tick cut short) even while the collection thread is busy.
  boost::asio::io_context sig_io_;
  boost::asio::signal_set signals_;
  std::atomic<bool> stopping_{false};
  std::chrono::steady_clock::time_point next_tick_;
};

}  // namespace memlens
