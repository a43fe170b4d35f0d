#include "daemon/kubernetes.h"

#include <nlohmann/json.hpp>

#include <vector>

#include "daemon/procfs.h"

namespace memlens {

namespace {

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

// A pod UID: an RFC 4122 UUID from the API server, or 32 hex digits (the
// kubelet names static pods by a hash of their manifest).
bool valid_uid(std::string_view s) {
  if (s.size() == 32) {
    for (char c : s)
      if (!is_hex(c)) return false;
    return true;
  }
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !is_hex(s[i])) return false;
  }
  return true;
}

bool valid_container_id(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!is_hex(c)) return false;
  return true;
}

bool ends_with_any(std::string_view s, std::initializer_list<std::string_view> tails) {
  for (auto t : tails)
    if (s.ends_with(t)) return true;
  return false;
}

// The pod UID in a pod segment, "" when the segment is no pod's, nullopt
// when it is one but does not parse. `prev` is the segment before it.
std::optional<std::string> pod_segment(std::string_view seg, std::string_view prev) {
  if (seg.ends_with(".slice")) {
    // systemd driver: the slice names its parents ("kubepods-burstable-pod
    // <uid>.slice"; "kubelet-kubepods-..." under a --cgroup-root such as
    // kind's), and systemd reserves '-' for that, so the UID's dashes are '_'.
    std::string_view name = seg.substr(0, seg.size() - 6);
    const std::size_t at = name.rfind("-pod");
    if (at == std::string_view::npos) return "";
    if (!ends_with_any(name.substr(0, at), {"kubepods", "kubepods-burstable", "kubepods-besteffort"})) return "";
    std::string uid(name.substr(at + 4));
    for (char& c : uid)
      if (c == '_') c = '-';
    if (!valid_uid(uid)) return std::nullopt;
    return uid;
  }
  // cgroupfs driver: "pod<uid>" under kubepods or its QoS class ("..":
  // the QoS level lies outside the reader's cgroup namespace).
  if (!seg.starts_with("pod")) return "";
  const bool under_qos = prev == "kubepods" || prev == "burstable" || prev == "besteffort";
  if (!under_qos && prev != "..") return "";
  std::string uid(seg.substr(3));
  if (!valid_uid(uid)) {
    if (!under_qos) return "";  // some other cgroup named pod... beside ours
    return std::nullopt;
  }
  return uid;
}

}  // namespace

std::string parse_cgroup_path(std::string_view text) {
  std::string v2, systemd;
  bool has_v2 = false;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    const std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (line.starts_with("0::")) {
      v2 = std::string(line.substr(3));
      has_v2 = true;
    } else if (const std::size_t at = line.find(":name=systemd:"); at != std::string_view::npos) {
      systemd = std::string(line.substr(at + 14));
    }
  }
  // A hybrid host mounts the v2 hierarchy unused: its "0::/" says nothing.
  if (has_v2 && (v2 != "/" || systemd.empty())) return v2;
  return systemd;
}

Result<std::optional<PodCgroup>> parse_pod_cgroup(std::string_view path) {
  std::vector<std::string_view> segs;
  for (std::size_t i = 0; i < path.size();) {
    std::size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    if (j > i) segs.push_back(path.substr(i, j - i));
    i = j + 1;
  }
  // The first pod segment counts: a container given cgroup delegation may
  // make sub-cgroups of its own named like a pod's, but only below its own.
  for (std::size_t i = 0; i < segs.size(); ++i) {
    auto uid = pod_segment(segs[i], i > 0 ? segs[i - 1] : std::string_view{});
    if (uid && uid->empty()) continue;
    if (!uid) return make_error(Errc::malformed, "pod cgroup with a malformed UID: " + std::string(segs[i]));
    PodCgroup pc;
    pc.pod_uid = std::move(*uid);
    if (i + 1 == segs.size()) return std::optional<PodCgroup>(std::move(pc));
    // The container's cgroup: "<runtime>-<id>.scope" (systemd driver),
    // "<id>" or "crio-<id>" (cgroupfs); deeper levels are the container's own.
    std::string_view c = segs[i + 1];
    if (c.ends_with(".scope")) c.remove_suffix(6);
    if (c.starts_with("crio-conmon-")) return std::optional<PodCgroup>(std::move(pc));  // CRI-O's monitor
    bool prefixed = false;
    for (std::string_view p : {"cri-containerd-", "crio-", "docker-"}) {
      if (c.starts_with(p)) {
        c.remove_prefix(p.size());
        prefixed = true;
        break;
      }
    }
    if (!valid_container_id(c)) {
      // An unknown runtime's scope: the pod is known, the container not.
      if (!prefixed && segs[i + 1].ends_with(".scope")) return std::optional<PodCgroup>(std::move(pc));
      return make_error(Errc::malformed, "pod cgroup with a malformed container id: " + std::string(segs[i + 1]));
    }
    pc.container_id = std::string(c);
    return std::optional<PodCgroup>(std::move(pc));
  }
  return std::optional<PodCgroup>();
}

Result<PodNames> parse_runtime_config(std::string_view text) {
  const auto j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return make_error(Errc::malformed, "config.json is not a JSON object");
  const auto a = j.find("annotations");
  if (a == j.end() || !a->is_object()) return make_error(Errc::malformed, "config.json has no annotations");
  // Kubernetes names are at most 253 bytes; anything longer is not one.
  auto get = [&](const char* key) -> std::optional<std::string> {
    const auto it = a->find(key);
    if (it == a->end() || !it->is_string()) return std::nullopt;
    const auto& s = it->get_ref<const std::string&>();
    if (s.empty() || s.size() > 253) return std::nullopt;
    return s;
  };
  struct Keys {
    const char *ns, *pod, *container;
  };
  static constexpr Keys kRuntimes[] = {
      {"io.kubernetes.cri.sandbox-namespace", "io.kubernetes.cri.sandbox-name", "io.kubernetes.cri.container-name"},
      {"io.kubernetes.pod.namespace", "io.kubernetes.pod.name", "io.kubernetes.container.name"},
  };
  for (const auto& k : kRuntimes) {
    auto ns = get(k.ns), pod = get(k.pod);
    if (!ns || !pod) continue;
    PodNames n{std::move(*ns), std::move(*pod), get(k.container).value_or("")};
    return n;
  }
  return make_error(Errc::malformed, "config.json names no pod (no namespace and pod annotations)");
}

std::array<std::string, 3> runtime_config_paths(const std::string& run_root, std::string_view id) {
  const std::string i(id);
  return {run_root + "/containerd/io.containerd.runtime.v2.task/k8s.io/" + i + "/config.json",
          run_root + "/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/" + i + "/config.json",
          run_root + "/containers/storage/overlay-containers/" + i + "/userdata/config.json"};
}

PodLabeler::PodLabeler(std::string run_root, std::size_t capacity)
    : run_root_(std::move(run_root)), capacity_(capacity == 0 ? 1 : capacity) {}

void PodLabeler::set_run_root(std::string run_root) {
  if (run_root == run_root_) return;
  run_root_ = std::move(run_root);
  cache_.clear();
  order_.clear();
}

PodLabeler::Entry PodLabeler::read_state(std::string_view id) const {
  // A bundle's config.json is some KiB (mounts, environment); a larger
  // file is cut here and then fails to parse.
  constexpr std::size_t kMaxConfigBytes = 1 << 20;
  for (const auto& path : runtime_config_paths(run_root_, id)) {
    auto text = read_file(path, kMaxConfigBytes + 1);
    if (!text) {
      if (text.error().code == Errc::not_found) continue;
      return {std::nullopt, PodLabelError::state_unreadable};
    }
    if (text->size() > kMaxConfigBytes) return {std::nullopt, PodLabelError::state_malformed};
    auto names = parse_runtime_config(*text);
    if (!names) return {std::nullopt, PodLabelError::state_malformed};
    return {std::move(*names), std::nullopt};
  }
  return {std::nullopt, PodLabelError::state_missing};
}

Labels PodLabeler::labels(std::string_view cgroup_path) {
  auto pc = parse_pod_cgroup(cgroup_path);
  if (!pc) {
    ++errors_[static_cast<std::size_t>(PodLabelError::cgroup_malformed)];
    return {};
  }
  if (!*pc) return {};
  const PodCgroup& p = **pc;
  const Entry* e = nullptr;
  Entry none;
  if (!p.container_id.empty()) {
    auto it = cache_.find(p.container_id);
    if (it == cache_.end()) {
      if (cache_.size() >= capacity_) {
        cache_.erase(order_.front());
        order_.pop_front();
      }
      it = cache_.emplace(p.container_id, read_state(p.container_id)).first;
      order_.push_back(p.container_id);
    }
    e = &it->second;
  } else {
    e = &none;  // no container to look up: the pod's UID alone
  }
  if (e->error) ++errors_[static_cast<std::size_t>(*e->error)];
  Labels l;
  if (e->names) {
    l.emplace_back("namespace", e->names->ns);
    l.emplace_back("pod", e->names->pod);
    if (!e->names->container.empty()) l.emplace_back("container", e->names->container);
  }
  l.emplace_back("pod_uid", p.pod_uid);
  return l;
}

}  // namespace memlens
