// A target is one watched process. Its identity is pid + start time, so a
// reused pid is a different target.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "daemon/metric.h"

namespace memlens {

struct TargetId {
  pid_t pid = 0;
  uint64_t start_time = 0;  // /proc/PID/stat field 22, clock ticks since boot
  auto operator<=>(const TargetId&) const = default;
};

struct TargetPolicy;  // per-selector settings (config.h)

struct Target {
  TargetId id;
  std::string name;      // the configured selector name: the `target` label
  std::string selector;  // human-readable description of what matched
  std::string comm;
  std::string exe;       // readlink of /proc/PID/exe, may be empty
  // On every series beside target and pid: namespace, pod, container and
  // pod_uid of a process in a Kubernetes pod (global.kubernetes_labels).
  Labels labels;
  // Its entry in the config that selected it; shares ownership of that
  // config, so the policy outlives any reload while the target is in use.
  std::shared_ptr<const TargetPolicy> policy;
  // Leak slope of the previous tick (analysis), for collectors that switch
  // on when it crosses a budget; valid == false until the window has data.
  double leak_slope_bytes_per_second = 0;
  bool leak_slope_valid = false;
  // The process's CPU-time clock, read by the tick before any collector
  // reads the target (ProcFs::shows_own_pids; none otherwise, or once the
  // process is gone). Unmoved since a read, the process has not run since:
  // what only it can change is what that read saw.
  std::optional<uint64_t> cpu_ns;
  pid_t pid() const { return id.pid; }
};

}  // namespace memlens
