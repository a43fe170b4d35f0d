// Kubernetes labels: pod cgroup paths and runtime config.json files parsed
// from fixtures (tests/fixtures/kubernetes), the labeler's cache and its
// counted failures, and discovery putting the labels on targets.
#include <gtest/gtest.h>

#include <filesystem>

#include "daemon/discovery.h"
#include "daemon/kubernetes.h"
#include "tests/support/support.h"

using namespace memlens;
namespace fs = std::filesystem;

namespace {

const std::string kFix = std::string(MEMLENS_SOURCE_DIR) + "/tests/fixtures/kubernetes";
const std::string kUid = "0b7632a2-a56e-4278-987a-22de18008dbe";
const std::string kUid2 = "5b5e07db-f1b9-4530-81ef-b7d04d66b83e";
const std::string kApi = "a1153a1970ea17b773d92b866f3e57718af6e81398b9433342d06e65a22bbeb2";      // containerd
const std::string kSandbox = "85b013213e803c7bc39ff8937f98c8b3b8ba3ee2cf22b5c7f08dfa7dd07f0fc4";  // its pause
const std::string kWeb = "2871e9e3a9d3841ae18d09b7e653c11a5135fc3c05b973ba29e6a624241cbf6d";      // CRI-O
const std::string kDocker = "1f5e86fc650fe006eeb67c7267cf8b740c58cfee68f367f1583d32d72465f059";
const std::string kWorker = "0761edd90fb302e1bf664fea73d72f3bea1866dcd85e49a71380ad3f368d02c3";   // cut-short state

std::string cgroup_fixture(const std::string& name) {
  return parse_cgroup_path(test::read_text(kFix + "/cgroup/" + name));
}

std::map<std::string, std::string> as_map(const Labels& l) { return {l.begin(), l.end()}; }

}  // namespace

TEST(CgroupPath, V2LineOrV1SystemdLine) {
  EXPECT_EQ(parse_cgroup_path("0::/system.slice/a.service\n"), "/system.slice/a.service");
  // v1 with the unified hierarchy mounted but unused ("0::/"): the systemd line.
  EXPECT_EQ(cgroup_fixture("systemd_docker_v1"),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b7632a2_a56e_4278_987a_22de18008dbe"
            ".slice/docker-" + kDocker + ".scope");
  EXPECT_EQ(cgroup_fixture("cgroupfs_containerd"), "/kubepods/burstable/pod" + kUid + "/" + kWorker);
  // The recorded v1 process of the proc fixtures: both say "/".
  EXPECT_EQ(parse_cgroup_path(test::read_text(std::string(MEMLENS_SOURCE_DIR) + "/tests/fixtures/proc/4242/cgroup")),
            "/");
  EXPECT_EQ(parse_cgroup_path(""), "");
  EXPECT_EQ(parse_cgroup_path("garbage without newline"), "");
}

TEST(PodCgroup, BothDriversEveryRuntimeAndQosClass) {
  struct Case {
    const char* fixture;
    std::string uid, id;
  };
  const Case cases[] = {
      {"systemd_containerd", kUid, kApi},
      {"systemd_containerd_sandbox", kUid, kSandbox},
      {"systemd_crio_guaranteed", kUid2, kWeb},
      {"systemd_docker_v1", kUid, kDocker},
      {"cgroupfs_containerd", kUid, kWorker},
      {"cgroupfs_crio_guaranteed", kUid2, kWeb},
      // Read from inside a cgroup namespace: the kubepods levels are "..".
      {"cgroupns_relative", kUid, kApi},
      {"cgroupns_relative_cgroupfs", kUid, kWorker},
      // A static pod's UID is a 32-digit hash, not a UUID.
      {"static_pod", "9f3a1c22b5e04d7f8a6b1c2d3e4f5a6b", kApi},
      // kind and others run the kubelet under a --cgroup-root.
      {"kind_cgroup_root", kUid, kApi},
      // A pod-like cgroup made inside a container does not hide the real one.
      {"nested_in_container", kUid, kApi},
      // CRI-O's conmon sits in the pod's slice, in no container.
      {"systemd_crio_conmon", kUid2, ""},
  };
  for (const auto& c : cases) {
    auto r = parse_pod_cgroup(cgroup_fixture(c.fixture));
    ASSERT_TRUE(r.ok()) << c.fixture << ": " << r.error().message;
    ASSERT_TRUE(r->has_value()) << c.fixture << " is a pod's cgroup";
    EXPECT_EQ((*r)->pod_uid, c.uid) << c.fixture;
    EXPECT_EQ((*r)->container_id, c.id) << c.fixture;
  }
  // A process in the pod's own cgroup (no container level).
  auto pod = parse_pod_cgroup("/kubepods/besteffort/pod" + kUid);
  ASSERT_TRUE(pod.ok() && pod->has_value());
  EXPECT_EQ((*pod)->pod_uid, kUid);
  EXPECT_EQ((*pod)->container_id, "");
}

TEST(PodCgroup, ProcessesOutsideKubernetesAreNoPods) {
  for (const char* f : {"host_service", "host_docker", "host_user"}) {
    auto r = parse_pod_cgroup(cgroup_fixture(f));
    ASSERT_TRUE(r.ok()) << f << ": " << r.error().message;
    EXPECT_FALSE(r->has_value()) << f;
  }
  for (const std::string& p : std::vector<std::string>{"", "/", "/kubepods.slice", "/kubepods.slice/kubepods-burstable.slice", "/kubepods",
                        "/kubepods/burstable", "/../../podman-1.scope", "/../pods", "/system.slice/kubepods-podx.service",
                        "/user.slice/pod" + kUid}) {
    auto r = parse_pod_cgroup(p);
    ASSERT_TRUE(r.ok()) << p << ": " << r.error().message;
    EXPECT_FALSE(r->has_value()) << p;
  }
}

TEST(PodCgroup, MalformedPodPathsAreErrorsNotGuesses) {
  for (const char* f : {"malformed_uid", "malformed_container_id", "malformed_cgroupfs_uid"}) {
    auto r = parse_pod_cgroup(cgroup_fixture(f));
    ASSERT_FALSE(r.ok()) << f << " parsed";
    EXPECT_EQ(r.error().code, Errc::malformed) << f;
  }
  // A runtime prefix with a bad id, and a cgroupfs container that is no id.
  EXPECT_FALSE(parse_pod_cgroup("/kubepods/pod" + kUid + "/crio-xyz").ok());
  EXPECT_FALSE(parse_pod_cgroup("/kubepods/pod" + kUid + "/" + kApi.substr(1) + "G").ok());
  EXPECT_FALSE(parse_pod_cgroup("/kubepods.slice/kubepods-pod" + kUid + ".slice/cri-containerd-.scope").ok());
  // Uppercase hex is not what the kubelet or the runtimes write.
  std::string upper = kUid;
  upper[0] = 'B';
  EXPECT_FALSE(parse_pod_cgroup("/kubepods/burstable/pod" + upper + "/" + kApi).ok());
  // An unknown runtime's scope: the pod is known, the container not.
  auto other = parse_pod_cgroup("/kubepods.slice/kubepods-pod" + kUid + ".slice/other-runtime-1.scope");
  ASSERT_TRUE(other.ok() && other->has_value());
  EXPECT_EQ((*other)->container_id, "");
  // Arbitrary bytes never crash the parser.
  std::string junk;
  for (int i = 0; i < 4096; ++i) junk += static_cast<char>((i * 131 + 7) % 256);
  (void)parse_pod_cgroup(junk);
  (void)parse_pod_cgroup(std::string(10000, '/'));
}

TEST(RuntimeConfig, ContainerdAndCrioAnnotations) {
  const std::string run = kFix + "/run";
  auto api = parse_runtime_config(test::read_text(runtime_config_paths(run, kApi)[0]));
  ASSERT_TRUE(api.ok()) << api.error().message;
  EXPECT_EQ(api->ns, "shop");
  EXPECT_EQ(api->pod, "api-7d9c6b5f4-x2x8q");
  EXPECT_EQ(api->container, "api");
  auto pause = parse_runtime_config(test::read_text(runtime_config_paths(run, kSandbox)[0]));
  ASSERT_TRUE(pause.ok()) << pause.error().message;
  EXPECT_EQ(pause->pod, "api-7d9c6b5f4-x2x8q");
  EXPECT_EQ(pause->container, "") << "a sandbox is no container of the pod spec";
  auto web = parse_runtime_config(test::read_text(runtime_config_paths(run, kWeb)[2]));
  ASSERT_TRUE(web.ok()) << web.error().message;
  EXPECT_EQ(web->ns, "frontend");
  EXPECT_EQ(web->pod, "web-0");
  EXPECT_EQ(web->container, "web");
}

TEST(RuntimeConfig, MalformedStateIsAnError) {
  for (const char* f : {"no_pod_annotations.json", "no_annotations.json", "annotations_not_strings.json",
                        "not_json.json", "array.json"}) {
    auto r = parse_runtime_config(test::read_text(kFix + "/state/" + f));
    ASSERT_FALSE(r.ok()) << f;
    EXPECT_EQ(r.error().code, Errc::malformed) << f;
  }
  EXPECT_FALSE(parse_runtime_config(test::read_text(runtime_config_paths(kFix + "/run", kWorker)[0])).ok())
      << "a cut-short config.json";
  EXPECT_FALSE(parse_runtime_config("").ok());
  const std::string long_name(254, 'a');
  EXPECT_FALSE(parse_runtime_config(R"({"annotations":{"io.kubernetes.pod.namespace":"a","io.kubernetes.pod.name":")" +
                                    long_name + "\"}}")
                   .ok());
  // Deep nesting fails as malformed (the parser and the value's teardown do not recurse).
  EXPECT_FALSE(parse_runtime_config(std::string(100000, '[')).ok());
}

TEST(PodLabeler, LabelsFromFixturesAndCountedFailures) {
  PodLabeler pl(kFix + "/run");
  EXPECT_EQ(as_map(pl.labels(cgroup_fixture("systemd_containerd"))),
            (std::map<std::string, std::string>{
                {"namespace", "shop"}, {"pod", "api-7d9c6b5f4-x2x8q"}, {"container", "api"}, {"pod_uid", kUid}}));
  EXPECT_EQ(as_map(pl.labels(cgroup_fixture("systemd_crio_guaranteed"))),
            (std::map<std::string, std::string>{
                {"namespace", "frontend"}, {"pod", "web-0"}, {"container", "web"}, {"pod_uid", kUid2}}));
  EXPECT_EQ(as_map(pl.labels(cgroup_fixture("systemd_containerd_sandbox"))),
            (std::map<std::string, std::string>{{"namespace", "shop"}, {"pod", "api-7d9c6b5f4-x2x8q"}, {"pod_uid", kUid}}));
  EXPECT_TRUE(pl.labels(cgroup_fixture("host_service")).empty());
  EXPECT_TRUE(pl.labels("").empty());
  for (std::size_t i = 0; i < kPodLabelErrorNames.size(); ++i) EXPECT_EQ(pl.errors(static_cast<PodLabelError>(i)), 0u);

  // Failures: the pod's UID stays (a join key for kube_pod_info{uid}), the
  // names go, and the reason is counted once per target labelled.
  EXPECT_EQ(as_map(pl.labels(cgroup_fixture("systemd_docker_v1"))),
            (std::map<std::string, std::string>{{"pod_uid", kUid}}));
  EXPECT_EQ(pl.errors(PodLabelError::state_missing), 1u);
  EXPECT_EQ(as_map(pl.labels(cgroup_fixture("cgroupfs_containerd"))),
            (std::map<std::string, std::string>{{"pod_uid", kUid}}));
  EXPECT_EQ(pl.errors(PodLabelError::state_malformed), 1u);
  EXPECT_TRUE(pl.labels(cgroup_fixture("malformed_uid")).empty());
  EXPECT_EQ(pl.errors(PodLabelError::cgroup_malformed), 1u);
  (void)pl.labels(cgroup_fixture("systemd_docker_v1"));
  EXPECT_EQ(pl.errors(PodLabelError::state_missing), 2u);
  // conmon: no container to look up, no failure.
  EXPECT_EQ(as_map(pl.labels(cgroup_fixture("systemd_crio_conmon"))),
            (std::map<std::string, std::string>{{"pod_uid", kUid2}}));
  EXPECT_EQ(pl.errors(PodLabelError::state_missing), 2u);
}

TEST(PodLabeler, EachContainerIsReadOnceAndTheCacheIsBounded) {
  const std::string run = test::make_temp_dir("k8s-run");
  const auto api_state = runtime_config_paths(run, kApi)[0];
  const auto web_state = runtime_config_paths(run, kWeb)[2];
  fs::create_directories(fs::path(api_state).parent_path());
  fs::create_directories(fs::path(web_state).parent_path());
  fs::copy_file(runtime_config_paths(kFix + "/run", kApi)[0], api_state);
  fs::copy_file(runtime_config_paths(kFix + "/run", kWeb)[2], web_state);
  const std::string api = cgroup_fixture("systemd_containerd"), web = cgroup_fixture("systemd_crio_guaranteed");

  PodLabeler pl(run, 1);
  EXPECT_EQ(as_map(pl.labels(api))["pod"], "api-7d9c6b5f4-x2x8q");
  // Gone from disk: a second process of the container is labelled from the cache.
  fs::remove(api_state);
  EXPECT_EQ(as_map(pl.labels(api))["pod"], "api-7d9c6b5f4-x2x8q");
  EXPECT_EQ(pl.cached(), 1u);
  // A second container takes the only place; the first is read again.
  EXPECT_EQ(as_map(pl.labels(web))["pod"], "web-0");
  EXPECT_EQ(pl.cached(), 1u);
  EXPECT_EQ(as_map(pl.labels(api)).count("pod"), 0u);
  EXPECT_EQ(pl.errors(PodLabelError::state_missing), 1u);
  // A failure is kept too: the file coming back is not seen until evicted.
  fs::copy_file(runtime_config_paths(kFix + "/run", kApi)[0], api_state);
  EXPECT_EQ(as_map(pl.labels(api)).count("pod"), 0u);
  EXPECT_EQ(pl.errors(PodLabelError::state_missing), 2u);
  // A new root (a reload) forgets what was read, keeps the counts.
  pl.set_run_root(kFix + "/run");
  EXPECT_EQ(pl.cached(), 0u);
  EXPECT_EQ(as_map(pl.labels(api))["container"], "api");
  EXPECT_EQ(pl.errors(PodLabelError::state_missing), 2u);

  // Unreadable state (a directory where the file should be) has its own reason.
  PodLabeler odd(run);
  fs::remove(api_state);
  fs::create_directories(api_state);
  EXPECT_EQ(as_map(odd.labels(api)).count("pod"), 0u);
  EXPECT_EQ(odd.errors(PodLabelError::state_unreadable), 1u);
  fs::remove_all(run);
}

namespace {

// A procfs tree with processes in given cgroups, for discovery.
struct FakeProcs {
  std::string root = test::make_temp_dir("k8s-proc");
  ~FakeProcs() { fs::remove_all(root); }
  void add(pid_t pid, const std::string& comm, const std::string& cgroup_text) {
    const std::string d = root + "/" + std::to_string(pid);
    fs::create_directories(d);
    test::write_text(d + "/stat", std::to_string(pid) + " (" + comm +
                                      ") S 1 1 1 0 -1 4194304 100 0 2 0 5 6 0 0 20 0 1 0 1000 1000000 100 "
                                      "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n");
    test::write_text(d + "/cmdline", comm + std::string(1, '\0'));
    test::write_text(d + "/cgroup", cgroup_text);
    fs::create_symlink("/usr/bin/" + comm, d + "/exe");
  }
};

ConfigPtr k8s_config(const FakeProcs& p, const std::string& global) {
  auto c = parse_config("global: {" + global + "}\ntargets:\n  - {name: all, comm: '.*'}\n", "t.yaml");
  EXPECT_TRUE(c.ok()) << c.error().message;
  c->procfs = p.root;
  return std::make_shared<const Config>(std::move(*c));
}

}  // namespace

TEST(DiscoveryKubernetes, TargetsInPodsCarryTheirLabelsOthersNone) {
  FakeProcs p;
  p.add(100, "api", test::read_text(kFix + "/cgroup/systemd_containerd"));
  p.add(101, "nginx", test::read_text(kFix + "/cgroup/systemd_crio_guaranteed"));
  p.add(102, "sshd", test::read_text(kFix + "/cgroup/host_service"));
  p.add(103, "bad", test::read_text(kFix + "/cgroup/malformed_container_id"));
  Discovery off(k8s_config(p, ""), 1);
  off.scan();
  ASSERT_EQ(off.targets().size(), 4u);
  for (const auto& [id, t] : off.targets()) EXPECT_TRUE(t.labels.empty()) << "switch off: pid " << id.pid;

  Discovery d(k8s_config(p, "kubernetes_labels: true, path_run: " + kFix + "/run"), 1);
  d.scan();
  std::map<pid_t, std::map<std::string, std::string>> by_pid;
  for (const auto& [id, t] : d.targets()) by_pid[id.pid] = as_map(t.labels);
  EXPECT_EQ(by_pid[100]["namespace"], "shop");
  EXPECT_EQ(by_pid[100]["container"], "api");
  EXPECT_EQ(by_pid[101]["pod"], "web-0");
  EXPECT_TRUE(by_pid[102].empty()) << "a host process";
  EXPECT_TRUE(by_pid[103].empty());
  EXPECT_EQ(d.pods().errors(PodLabelError::cgroup_malformed), 1u);
  // Kept targets are not labelled again: the count stays.
  d.scan();
  EXPECT_EQ(d.pods().errors(PodLabelError::cgroup_malformed), 1u);

  // A reload switching the labels off takes them off kept targets, and on again.
  d.reconfigure(k8s_config(p, ""));
  d.scan();
  for (const auto& [id, t] : d.targets()) EXPECT_TRUE(t.labels.empty()) << "pid " << id.pid;
  d.reconfigure(k8s_config(p, "kubernetes_labels: true, path_run: " + kFix + "/run"));
  d.scan();
  for (const auto& [id, t] : d.targets())
    if (id.pid == 100) {
      EXPECT_EQ(as_map(t.labels)["pod"], "api-7d9c6b5f4-x2x8q");
    }
}
