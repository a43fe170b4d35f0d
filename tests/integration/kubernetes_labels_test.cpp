// Kubernetes labels on real processes: no kubelet runs here, so the test
// makes the cgroups a kubelet would (a systemd-driver pod with a containerd
// scope in the cgroup v2 hierarchy, a cgroupfs-driver pod in the v1
// name=systemd hierarchy), moves real processes into them, writes the
// runtime state a containerd would under a temporary --path.run, and reads
// the labels back from memlensd's /metrics. The kernel writes the
// /proc/PID/cgroup text memlensd parses. Root only; the cgroups are removed.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// Mount points of the cgroup v2 hierarchy and of v1's name=systemd one.
struct CgroupMounts {
  std::string v2, v1_systemd;
};
CgroupMounts cgroup_mounts() {
  CgroupMounts m;
  std::ifstream in("/proc/self/mounts");
  std::string dev, dir, type, opts, rest;
  while (in >> dev >> dir >> type >> opts && std::getline(in, rest)) {
    if (type == "cgroup2" && m.v2.empty()) m.v2 = dir;
    if (type == "cgroup" && ("," + opts + ",").find(",name=systemd,") != std::string::npos) m.v1_systemd = dir;
  }
  return m;
}

std::string hex_id(unsigned seed) {
  std::ostringstream o;
  o << std::hex;
  for (int i = 0; i < 8; ++i) o << std::setw(8) << std::setfill('0') << (seed * 2654435761u + static_cast<unsigned>(i) * 40503u);
  return o.str().substr(0, 64);
}

// Cgroups made for the test, removed (deepest first) when it ends,
// whatever it asserted; their processes are killed before.
class MadeCgroups {
 public:
  ~MadeCgroups() {
    for (auto it = made_.rbegin(); it != made_.rend(); ++it) {
      for (int i = 0; i < 50 && ::rmdir(it->c_str()) != 0 && errno == EBUSY; ++i) std::this_thread::sleep_for(20ms);
    }
  }
  // mkdir -p, remembering what did not exist.
  void make(const std::string& root, const std::string& rel) {
    std::string at = root;
    std::istringstream parts(rel);
    for (std::string p; std::getline(parts, p, '/');) {
      if (p.empty()) continue;
      at += "/" + p;
      if (::mkdir(at.c_str(), 0755) == 0) made_.push_back(at);
      else ASSERT_EQ(errno, EEXIST) << at << ": " << std::strerror(errno);
    }
  }

 private:
  std::vector<std::string> made_;
};

void move_into(const std::string& cgroup_dir, pid_t pid) {
  std::ofstream procs(cgroup_dir + "/cgroup.procs");
  procs << pid << std::flush;
  ASSERT_TRUE(procs.good()) << "could not move " << pid << " into " << cgroup_dir;
}

}  // namespace

TEST(KubernetesLabels, RealProcessesInPodCgroupsGetTheirPodsLabels) {
  if (!is_root()) GTEST_SKIP() << "needs root: makes cgroups and moves processes into them";
  const CgroupMounts mounts = cgroup_mounts();
  if (mounts.v2.empty()) GTEST_SKIP() << "no cgroup v2 hierarchy mounted";

  const unsigned seed = static_cast<unsigned>(::getpid());
  std::ostringstream u;
  u << std::hex << std::setw(8) << std::setfill('0') << (seed * 2246822519u) << "-4a1b-4c2d-8e3f-" << std::setw(12)
    << std::setfill('0') << seed;
  const std::string uid = u.str();
  std::string uid_ = uid;
  for (char& c : uid_)
    if (c == '-') c = '_';
  const std::string api_id = hex_id(seed), batch_id = hex_id(seed + 1);

  // The runtime state: containerd's bundle of the api container. The batch
  // container has none (its names are missing: pod_uid alone, counted).
  const std::string run = make_temp_dir("k8s-run");
  const std::string bundle = run + "/containerd/io.containerd.runtime.v2.task/k8s.io/" + api_id;
  fs::create_directories(bundle);
  write_text(bundle + "/config.json",
             R"({"ociVersion":"1.1.0","process":{"args":["/bin/sleep","120"]},"root":{"path":"rootfs"},)"
             R"("annotations":{"io.kubernetes.cri.container-name":"api","io.kubernetes.cri.container-type":"container",)"
             R"("io.kubernetes.cri.sandbox-name":"api-7d9c6b5f4-x2x8q","io.kubernetes.cri.sandbox-namespace":"shop",)"
             R"("io.kubernetes.cri.sandbox-uid":")" + uid + R"("}})");

  MadeCgroups cgroups;  // declared first: goes last, once its processes are killed
  Child api = spawn({"/bin/sleep", "120"});
  Child batch = spawn({"/bin/sleep", "120"});
  // systemd driver, cgroup v2: kubepods.slice/.../cri-containerd-<id>.scope.
  const std::string pod_slice = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid_ + ".slice";
  const std::string api_cg = pod_slice + "/cri-containerd-" + api_id + ".scope";
  cgroups.make(mounts.v2, api_cg);
  move_into(mounts.v2 + "/" + api_cg, api.pid());
  // cgroupfs driver: kubepods/besteffort/pod<uid>/<id>; on a v1 host the
  // name=systemd line says so (the v2 line stays "0::/"), else in v2.
  const std::string batch_cg = "kubepods/besteffort/pod" + uid + "/" + batch_id;
  const std::string batch_root = mounts.v1_systemd.empty() ? mounts.v2 : mounts.v1_systemd;
  cgroups.make(batch_root, batch_cg);
  move_into(batch_root + "/" + batch_cg, batch.pid());
  if (HasFatalFailure()) return;
  const std::string api_text = read_text("/proc/" + std::to_string(api.pid()) + "/cgroup");
  ASSERT_NE(api_text.find("0::/" + api_cg), std::string::npos) << api_text;
  const std::string batch_text = read_text("/proc/" + std::to_string(batch.pid()) + "/cgroup");
  ASSERT_NE(batch_text.find(":/" + batch_cg), std::string::npos) << batch_text;

  auto d = start_daemon("global: {tick_interval: 500ms, rescan_interval: 500ms, kubernetes_labels: true}\n"
                        "targets:\n"
                        "  - {name: memlensd, self: true}\n"
                        "  - {name: api, pid: " + std::to_string(api.pid()) + "}\n"
                        "  - {name: batch, pid: " + std::to_string(batch.pid()) + "}\n",
                        {"--path.run=" + run});
  ASSERT_TRUE(d);
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_rss_bytes", {{"target", "api"}}) &&
           find_sample(s, "memlens_rss_bytes", {{"target", "batch"}});
  }, 20s)) << d->log();

  // The api process: its pod's namespace and name, its container's name
  // (from the runtime state) and the pod's UID (from the cgroup), on every
  // series of the target.
  const std::map<std::string, std::string> api_labels{{"target", "api"}, {"pid", std::to_string(api.pid())},
                                                      {"namespace", "shop"}, {"pod", "api-7d9c6b5f4-x2x8q"},
                                                      {"container", "api"}, {"pod_uid", uid}};
  int api_series = 0;
  for (const auto& p : s) {
    auto t = p.labels.find("target");
    if (t == p.labels.end() || t->second != "api" || !p.labels.count("pid")) continue;
    ++api_series;
    for (const auto& [k, v] : api_labels) EXPECT_EQ(p.labels.count(k) ? p.labels.at(k) : "<none>", v) << p.name << " " << k;
  }
  EXPECT_GE(api_series, 10) << "every per-target series carries the labels";
  // The batch process: its runtime state is missing, so the UID alone.
  EXPECT_EQ(find_label(s, "memlens_rss_bytes", {{"target", "batch"}}, "pod_uid").value_or("<none>"), uid);
  EXPECT_FALSE(find_label(s, "memlens_rss_bytes", {{"target", "batch"}}, "pod"));
  EXPECT_FALSE(find_label(s, "memlens_rss_bytes", {{"target", "batch"}}, "namespace"));
  // memlensd itself is no pod's.
  ASSERT_TRUE(find_sample(s, "memlens_rss_bytes", {{"target", "memlensd"}}));
  for (const char* l : {"namespace", "pod", "container", "pod_uid"})
    EXPECT_FALSE(find_label(s, "memlens_rss_bytes", {{"target", "memlensd"}}, l)) << l;
  // What failed, counted by reason: one target without runtime state.
  EXPECT_EQ(find_sample(s, "memlens_kubernetes_label_errors_total", {{"reason", "state_missing"}}).value_or(-1), 1);
  EXPECT_EQ(find_sample(s, "memlens_kubernetes_label_errors_total", {{"reason", "state_malformed"}}).value_or(-1), 0);
  EXPECT_EQ(find_sample(s, "memlens_kubernetes_label_errors_total", {{"reason", "cgroup_malformed"}}).value_or(-1), 0);
  // The JSON API shows them too.
  const auto targets = nlohmann::json::parse(http_get(d->url("/api/v1/targets")).body, nullptr, false);
  ASSERT_TRUE(targets.is_object());
  int api_entries = 0;
  for (const auto& t : targets["targets"]) {
    if (t["name"] == "api") {
      ++api_entries;
      EXPECT_EQ(t["labels"], nlohmann::json({{"namespace", "shop"}, {"pod", "api-7d9c6b5f4-x2x8q"},
                                             {"container", "api"}, {"pod_uid", uid}}));
    } else if (t["name"] == "memlensd") {
      EXPECT_FALSE(t.contains("labels"));
    }
  }
  EXPECT_EQ(api_entries, 1);

  // Read once: the state removed, later ticks keep the labels and the count.
  fs::remove_all(run);
  std::this_thread::sleep_for(1500ms);
  s = d->scrape();
  EXPECT_EQ(find_label(s, "memlens_rss_bytes", {{"target", "api"}}, "pod").value_or("<none>"), "api-7d9c6b5f4-x2x8q");
  EXPECT_EQ(find_sample(s, "memlens_kubernetes_label_errors_total", {{"reason", "state_missing"}}).value_or(-1), 1);

  d->child.stop(SIGTERM, 5s);
  api.stop(SIGKILL, 2s);
  batch.stop(SIGKILL, 2s);
}
