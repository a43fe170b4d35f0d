// The daemon: one Asio event loop on one thread runs discovery, collection,
// analysis and snapshot building at each tick; SIGHUP reloads, SIGTERM and
// SIGINT stop. HTTP threads only read the published snapshot.
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
#include "daemon/timeline.h"

namespace memlens {

struct Options {
  std::string config_file;  // empty: the embedded default
  std::string procfs;       // overrides global.path_procfs when set
};

class App {
 public:
  App(Options opts, std::unique_ptr<Config> cfg, std::unique_ptr<Exporter> exporter,
      std::vector<std::unique_ptr<Collector>> collectors);
  ~App();
  // Runs until SIGTERM/SIGINT; returns the exit code.
  int run();
  // One tick, for tests that drive the loop by hand.
  void tick();

 private:
  struct TargetState {
    explicit TargetState(std::size_t cap) : timeline(cap) {}
    Timeline timeline;
    SlopeFit fit;
    bool fit_valid = false;
  };
  struct CollectorState {
    std::unique_ptr<Collector> c;
    bool up = false;
    std::string why_down;
    double seconds = 0;  // last tick
    bool last_ok = true;
    std::map<std::string, uint64_t> errors;  // by reason
  };

  void start_collectors();
  void rescan();
  void reload();
  void schedule();
  void arm_signals();
  double now_mono() const;

  Options opts_;
  // Every config ever loaded stays alive: targets and collectors hold
  // pointers to their policies, and reloads are rare.
  std::vector<std::unique_ptr<Config>> configs_;
  const Config* cfg_;
  std::unique_ptr<Exporter> exporter_;
  std::vector<CollectorState> collectors_;
  std::unique_ptr<Discovery> discovery_;
  std::map<TargetId, TargetState> states_;
  std::set<std::pair<std::size_t, TargetId>> logged_;  // (collector, target) errors logged once

  uint64_t exited_total_ = 0, capped_total_ = 0, scan_errors_total_ = 0;
  uint64_t reloads_total_ = 0, reload_failures_total_ = 0, ticks_total_ = 0, ticks_late_total_ = 0;
  double last_rescan_ = -1e18;
  bool force_rescan_ = false;
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
