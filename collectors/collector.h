// The one interface every collector implements. The framework times each
// call, exports success and duration, and keeps going when one fails.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "daemon/metric.h"
#include "daemon/result.h"
#include "daemon/target.h"

namespace memlens {

struct Config;
using ConfigPtr = std::shared_ptr<const Config>;

// Daemon-wide values a collector reports once per tick (drop counters,
// map memory, "disabled because ..." flags), plus JSON documents served
// under /api/v1/ (e.g. "/api/v1/targets/<name>/leaks"): prepared here, on the
// collection thread, so the HTTP thread only copies them.
class GlobalSample : public Sample {
 public:
  void document(std::string path, std::string json) { docs_.emplace_back(std::move(path), std::move(json)); }
  const std::vector<std::pair<std::string, std::string>>& documents() const { return docs_; }
  // Gzipped pprof heap profiles by key: "NAME" (every process of a target)
  // and "NAME/PID", served as /debug/pprof/heap?target=NAME[&pid=PID].
  void profile(std::string key, std::shared_ptr<const std::string> gz) {
    profiles_.emplace_back(std::move(key), std::move(gz));
  }
  const std::vector<std::pair<std::string, std::shared_ptr<const std::string>>>& profiles() const {
    return profiles_;
  }

 private:
  std::vector<std::pair<std::string, std::string>> docs_;
  std::vector<std::pair<std::string, std::shared_ptr<const std::string>>> profiles_;
};

// The `reason` label of memlens_collector_enabled when start() failed: a
// fixed set (the full message goes to the log, once).
inline const char* disabled_reason(Errc e) {
  switch (e) {
    case Errc::permission: return "capability";  // no CAP_BPF / CAP_PERFMON / CAP_SYS_ADMIN
    case Errc::unavailable: return "kernel";     // a kernel feature is missing or refused the load
    case Errc::invalid:
    case Errc::disabled: return "config";        // switched off by the configuration
    case Errc::not_found: return "attach";       // nothing to attach to
    default: return "load";
  }
}

class Collector {
 public:
  virtual ~Collector() = default;
  virtual std::string_view name() const = 0;

  // Called once at start and after every successful reload. A collector that
  // cannot run here (no CAP_BPF, missing kernel feature, switched off)
  // returns an error: it is reported disabled, once, with the error's code as
  // the reason, and the daemon goes on without it. A collector that keeps
  // the config keeps this pointer (never a copy).
  virtual Result<void> start(const ConfigPtr& /*cfg*/) { return {}; }

  // Target lifecycle, called on the collection thread before collect().
  virtual void target_added(const Target& /*t*/) {}
  virtual void target_removed(const Target& /*t*/) {}

  // Read one target's values. Errors are counted per collector and reason;
  // a target that vanished (Errc::not_found) is not an error worth logging.
  virtual Result<void> collect(const Target& t, Sample& out) = 0;

  // Whether this collector's Errc::not_found from collect() means the
  // target's process is gone (the daemon then drops it at once and rescans).
  // The proc collector's does: it reads the process's own stat file.
  virtual bool tells_exit() const { return false; }

  // Once per tick, after every target's collect().
  virtual void collect_global(GlobalSample& /*out*/) {}
};

}  // namespace memlens
