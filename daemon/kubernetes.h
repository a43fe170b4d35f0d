// Kubernetes pod labels of a target (global.kubernetes_labels): the pod UID
// and container id come from the target's cgroup path, the pod's namespace
// and name and the container's name from the container runtime's state on
// the node (the OCI bundle's config.json, which names them in annotations).
// Parsing is pure; PodLabeler does the reading and keeps what it read.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "daemon/metric.h"
#include "daemon/result.h"

namespace memlens {

// The cgroup path in the text of /proc/PID/cgroup: the v2 line "0::/path";
// on a v1 host (whose "0::" line, if any, is "/") the name=systemd line.
std::string parse_cgroup_path(std::string_view proc_cgroup);

// What a pod container's cgroup path says.
struct PodCgroup {
  std::string pod_uid;       // as the API writes it (the systemd driver's '_' back to '-')
  std::string container_id;  // 64 hex digits; empty in a pod-level cgroup (CRI-O's conmon)
};

// Recognises the kubelet's pod cgroups, under either cgroup driver:
//   systemd:  .../kubepods[-burstable|-besteffort]-pod<uid, '-' as '_'>.slice/
//             {cri-containerd,crio,docker}-<id>.scope
//   cgroupfs: .../kubepods[/burstable|/besteffort]/pod<uid>/[crio-]<id>
// The pod segment may come anywhere in the path: in a cgroup namespace (a
// DaemonSet's pod has its own on cgroup v2) a path outside it reads
// "/../../kubepods-besteffort-pod<uid>.slice/...". nullopt: not a pod's
// cgroup; an error (Errc::malformed): a pod segment or a container segment
// that does not parse.
Result<std::optional<PodCgroup>> parse_pod_cgroup(std::string_view path);

// Names of a pod container, from its runtime's OCI config.json.
struct PodNames {
  std::string ns, pod;
  std::string container;  // empty for a pod's sandbox (pause) container
};
// containerd's annotations (io.kubernetes.cri.sandbox-namespace,
// -sandbox-name, -container-name) or CRI-O's (io.kubernetes.pod.namespace,
// .pod.name, .container.name). An error (Errc::malformed) when the text is
// not JSON or no pair of namespace and pod name is in it.
Result<PodNames> parse_runtime_config(std::string_view json);

// Where runtimes keep a container's config.json, under the host's /run
// (`run_root`): containerd, containerd inside k3s, CRI-O (its default
// runroot). Tried in this order.
std::array<std::string, 3> runtime_config_paths(const std::string& run_root, std::string_view container_id);

// Why a target in a pod got none or only some of its labels: the fixed set
// of the `reason` label values of memlens_kubernetes_label_errors_total.
enum class PodLabelError : uint8_t { cgroup_malformed, state_missing, state_unreadable, state_malformed, count_ };
inline constexpr std::array<const char*, 4> kPodLabelErrorNames = {"cgroup_malformed", "state_missing",
                                                                   "state_unreadable", "state_malformed"};

// Labels for targets, with what was read of each container kept (found or
// not) so a container is read once, however many of its processes come and
// go; the oldest entry goes when `capacity` are held.
class PodLabeler {
 public:
  explicit PodLabeler(std::string run_root, std::size_t capacity = 1024);
  // namespace, pod, container (those found) and pod_uid for a process in
  // a pod's cgroup `cgroup_path`; nothing outside Kubernetes. Failures are
  // counted by reason.
  Labels labels(std::string_view cgroup_path);
  // A new runtime state root (a reload): what was read goes, counts stay.
  void set_run_root(std::string run_root);
  const std::string& run_root() const { return run_root_; }
  uint64_t errors(PodLabelError e) const { return errors_[static_cast<std::size_t>(e)]; }
  std::size_t cached() const { return cache_.size(); }

 private:
  struct Entry {
    std::optional<PodNames> names;
    std::optional<PodLabelError> error;
  };
  Entry read_state(std::string_view container_id) const;

  std::string run_root_;
  std::size_t capacity_;
  std::unordered_map<std::string, Entry> cache_;
  std::deque<std::string> order_;  // insertion order, for eviction
  std::array<uint64_t, static_cast<std::size_t>(PodLabelError::count_)> errors_{};
};

}  // namespace memlens
