// The Kubernetes label parsers on the same bytes: a cgroup path comes from
// the kernel, but a container given cgroup delegation names its own
// sub-cgroups, and a config.json is as the runtime (and the pod's
// annotations) wrote it.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "daemon/kubernetes.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view t(reinterpret_cast<const char*>(data), size);
  if (memlens::parse_cgroup_path(t).size() > t.size()) __builtin_trap();
  if (auto p = memlens::parse_pod_cgroup(t); p.ok() && p->has_value()) {
    // What the labeler builds paths from: 64 hex digits or nothing.
    const auto& id = (*p)->container_id;
    if (!id.empty() && (id.size() != 64 || id.find_first_not_of("0123456789abcdef") != std::string::npos))
      __builtin_trap();
    if ((*p)->pod_uid.size() > 36) __builtin_trap();
  }
  if (auto n = memlens::parse_runtime_config(t); n.ok() && (n->ns.empty() || n->pod.empty())) __builtin_trap();
  return 0;
}
