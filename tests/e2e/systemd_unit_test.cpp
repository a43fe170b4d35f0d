// The systemd unit: it installs where CMake says, systemd accepts it, its
// sandbox stays tight, and its capability set is enough for memlensd to
// read another user's processes and attach uprobes (checked by running the
// real binary under exactly those ambient capabilities as an unprivileged
// user, with a control run that lacks one capability and must fail).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <optional>
#include <regex>
#include <sstream>
#include <thread>

#include "tests/support/support.h"

namespace mt = memlens::test;

namespace {

const std::string kUnit = std::string(MEMLENS_SOURCE_DIR) + "/systemd/memlensd.service";

bool have(const std::string& tool) { return mt::run("command -v " + tool + " >/dev/null") == 0; }

// Every value of `key=` in the unit (a key may repeat), in order.
std::vector<std::string> unit_values(const std::string& text, const std::string& key) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key + "=", 0) == 0) out.push_back(line.substr(key.size() + 1));
  return out;
}

std::vector<std::string> words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> w;
  for (std::string x; in >> x;) w.push_back(x);
  return w;
}

// CAP_SYS_PTRACE -> sys_ptrace (setpriv's spelling).
std::string setpriv_cap(std::string cap) {
  cap = cap.substr(4);
  std::transform(cap.begin(), cap.end(), cap.begin(), [](unsigned char c) { return std::tolower(c); });
  return cap;
}

// Stages `cmake --install` into a temp DESTDIR; returns the DESTDIR or "".
std::string stage_install() {
  const std::string dest = mt::make_temp_dir("memlens-stage");
  std::string out;
  const int rc = mt::run("DESTDIR=" + dest + " cmake --install " + MEMLENS_BINARY_DIR, &out);
  if (rc != 0) {
    ADD_FAILURE() << "cmake --install failed:\n" << out;
    return "";
  }
  return dest;
}

}  // namespace

TEST(SystemdUnit, InstallStagesBinaryConfigAndMatchingUnit) {
  const std::string dest = stage_install();
  ASSERT_FALSE(dest.empty());
  const std::string unit_path = dest + "/lib/systemd/system/memlensd.service";
  const std::string unit = mt::read_text(unit_path);
  ASSERT_FALSE(unit.empty()) << "no unit at " << unit_path;

  // ExecStart names a binary the install really put there, and the config
  // file it passes is the one installed.
  const auto exec = unit_values(unit, "ExecStart");
  ASSERT_EQ(exec.size(), 1u);
  const auto argv = words(exec[0]);
  ASSERT_GE(argv.size(), 2u);
  struct stat st {};
  ASSERT_EQ(::stat((dest + argv[0]).c_str(), &st), 0) << "ExecStart binary " << argv[0] << " not installed";
  EXPECT_TRUE(st.st_mode & S_IXUSR);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(exec[0], m, std::regex("--config\\.file=(\\S+)")));
  const std::string cfg = dest + m[1].str();
  ASSERT_EQ(::stat(cfg.c_str(), &st), 0) << "config " << m[1] << " not installed";

  // The installed binary accepts the installed config.
  std::string out;
  EXPECT_EQ(mt::run(dest + argv[0] + " --config.file=" + cfg + " --check-config", &out), 0) << out;

  // A second install keeps an operator's edited config.
  mt::write_text(cfg, mt::read_text(cfg) + "# edited by the operator\n");
  ASSERT_EQ(mt::run("DESTDIR=" + dest + " cmake --install " + MEMLENS_BINARY_DIR, &out), 0) << out;
  EXPECT_NE(mt::read_text(cfg).find("# edited by the operator"), std::string::npos)
      << "reinstall overwrote the config";
  mt::run("rm -rf " + dest);
}

TEST(SystemdUnit, SystemdAnalyzeVerifyAccepts) {
  if (!have("systemd-analyze")) GTEST_SKIP() << "systemd-analyze not installed (package systemd): unit not verified";
  // Point the unit at the built binary: verify checks that ExecStart exists.
  std::string unit = mt::read_text(kUnit);
  ASSERT_FALSE(unit.empty());
  const std::string dir = mt::make_temp_dir("memlens-unit");
  unit = std::regex_replace(unit, std::regex("/usr/local/sbin/memlensd"), mt::memlensd_path());
  mt::write_text(dir + "/memlensd.service", unit);
  std::string out;
  const int rc = mt::run("systemd-analyze verify " + dir + "/memlensd.service", &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out.find("memlensd.service:"), std::string::npos) << "systemd-analyze warned:\n" << out;

  // The sandbox's overall exposure (0 = locked down, 10 = unprotected) stays
  // "OK"; a change that weakens it (e.g. dropping ProtectSystem) fails here.
  mt::run("systemd-analyze security --offline=true " + dir + "/memlensd.service", &out);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex("Overall exposure level for \\S+: ([0-9.]+)"))) << out;
  EXPECT_LT(std::stod(m[1].str()), 4.0) << out;
  mt::run("rm -rf " + dir);
}

TEST(SystemdUnit, HardeningDirectivesPresent) {
  const std::string unit = mt::read_text(kUnit);
  ASSERT_FALSE(unit.empty());
  auto one = [&](const std::string& key) {
    auto v = unit_values(unit, key);
    return v.empty() ? std::string() : v.back();
  };
  EXPECT_EQ(one("Type"), "simple");
  EXPECT_EQ(one("ExecReload"), "/bin/kill -HUP $MAINPID");
  EXPECT_EQ(one("Restart"), "on-failure");
  // Timelines survive restarts: the state directory is the unit's own.
  EXPECT_EQ(one("StateDirectory"), "memlens");
  EXPECT_NE(one("ExecStart").find("--state.path=%S/memlens"), std::string::npos);
  EXPECT_EQ(one("ProtectSystem"), "strict");
  EXPECT_EQ(one("ProtectHome"), "read-only");
  EXPECT_EQ(one("NoNewPrivileges"), "yes");
  EXPECT_EQ(one("ProtectKernelTunables"), "yes");
  EXPECT_EQ(one("ProtectControlGroups"), "yes");
  EXPECT_EQ(one("LockPersonality"), "yes");
  EXPECT_EQ(one("RestrictAddressFamilies"), "AF_INET AF_INET6 AF_UNIX");
  EXPECT_FALSE(one("MemoryMax").empty());
  // Nothing beyond what eBPF, /proc reading and the exec hold need; ambient
  // and bounding sets agree.
  const std::vector<std::string> allowed = {"CAP_BPF",        "CAP_PERFMON",         "CAP_SYS_ADMIN",
                                            "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_KILL"};
  auto bounding = words(one("CapabilityBoundingSet"));
  auto ambient = words(one("AmbientCapabilities"));
  ASSERT_FALSE(bounding.empty());
  for (const auto& c : bounding)
    EXPECT_NE(std::find(allowed.begin(), allowed.end(), c), allowed.end()) << c << " is not needed";
  std::sort(bounding.begin(), bounding.end());
  std::sort(ambient.begin(), ambient.end());
  EXPECT_EQ(bounding, ambient);
}

// Runs memlensd as user nobody holding only `caps`, watching `target` (a root
// process) with allocation tracing; returns the parsed /metrics after the
// first ticks, or nullopt when the daemon did not come up.
std::optional<std::vector<mt::PromSample>> scrape_as_nobody(const std::vector<std::string>& caps, pid_t target) {
  std::string list = "-all";
  for (const auto& c : caps) list += ",+" + setpriv_cap(c);
  const std::vector<std::string> wrapper = {"setsid",          "setpriv",
                                            "--reuid=65534",   "--regid=65534",
                                            "--clear-groups",  "--inh-caps=" + list,
                                            "--ambient-caps=" + list, "--bounding-set=" + list,
                                            "--no-new-privs"};
  const std::string yaml = "global:\n  tick_interval: 500ms\n  rescan_interval: 500ms\ntargets:\n"
                           "  - name: victim\n    pid: " + std::to_string(target) +
                           "\n    alloc:\n      mode: full\n";
  auto d = mt::start_daemon(yaml, {}, wrapper);
  if (!d) return std::nullopt;
  std::vector<mt::PromSample> s;
  // alloc attaches on target_added; wait until its gauge reports either way.
  mt::wait_until(
      [&] {
        s = d->scrape();
        return mt::find_sample(s, "memlens_alloc_tracing", {{"target", "victim"}}).has_value() &&
               mt::find_sample(s, "memlens_rss_bytes", {{"target", "victim"}}).has_value();
      },
      std::chrono::seconds(10));
  d->child.stop(SIGTERM, std::chrono::seconds(3));
  return s;
}

TEST(SystemdUnit, CapabilitySetIsEnoughAsUnprivilegedUser) {
  if (!mt::is_root()) GTEST_SKIP() << "needs root to drop to user nobody with chosen capabilities";
  if (!have("setpriv")) GTEST_SKIP() << "setpriv (util-linux) not installed";
  const auto caps = words(unit_values(mt::read_text(kUnit), "AmbientCapabilities").back());
  ASSERT_FALSE(caps.empty());

  // A root-owned target in its own session (so SIGCONT rules cannot help).
  const std::string log = mt::make_temp_dir("memlens-unit") + "/heapload.log";
  auto target = mt::spawn({"setsid", mt::workload_path("heapload"), "--hold", "8388608", "--duration", "120"}, log);
  ASSERT_TRUE(mt::wait_until([&] { return target.running(); }, std::chrono::seconds(2)));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // past exec

  auto full = scrape_as_nobody(caps, target.pid());
  ASSERT_TRUE(full.has_value()) << "memlensd did not start as nobody with " << ::testing::PrintToString(caps);
  // PSS comes from smaps_rollup, which needs ptrace read access.
  auto pss = mt::find_sample(*full, "memlens_pss_bytes", {{"target", "victim"}});
  ASSERT_TRUE(pss.has_value()) << "no PSS for a root process: /proc not readable with the unit's capabilities";
  EXPECT_GT(*pss, 8.0 * 1024 * 1024);  // it holds 8 MiB, touched
  // glibc's heap books: process_vm_readv wants ptrace "attach" access.
  EXPECT_EQ(mt::find_sample(*full, "memlens_allocator_readable", {{"target", "victim"}, {"reason", "ok"}}), 1.0)
      << "glibc heap books not readable with the unit's capabilities";
  auto enabled = mt::find_sample(*full, "memlens_collector_enabled", {{"collector", "alloc"}});
  if (!enabled || *enabled != 1) {
    GTEST_SKIP() << "allocation collector not enabled even with the unit's capabilities "
                    "(kernel without BPF/uprobes?): uprobe part not checked";
  }
  EXPECT_EQ(mt::find_sample(*full, "memlens_alloc_tracing", {{"target", "victim"}}), 1.0)
      << "uprobes did not attach with the unit's capabilities";

  // Control: without CAP_SYS_PTRACE and CAP_PERFMON (either one opens
  // smaps_rollup; only CAP_SYS_PTRACE opens /proc/PID/root) and CAP_SYS_ADMIN
  // (uprobes since the 2025 "require CAP_SYS_ADMIN for uprobes" fix) the
  // same run reads no PSS and attaches no uprobe: the checks above can fail.
  std::vector<std::string> fewer;
  for (const auto& c : caps)
    if (c != "CAP_SYS_PTRACE" && c != "CAP_SYS_ADMIN" && c != "CAP_PERFMON") fewer.push_back(c);
  auto less = scrape_as_nobody(fewer, target.pid());
  ASSERT_TRUE(less.has_value());
  EXPECT_FALSE(mt::find_sample(*less, "memlens_pss_bytes", {{"target", "victim"}}).has_value());
  EXPECT_NE(mt::find_sample(*less, "memlens_alloc_tracing", {{"target", "victim"}}).value_or(0), 1.0);
  EXPECT_EQ(mt::find_sample(*less, "memlens_allocator_readable", {{"target", "victim"}, {"reason", "permission_denied"}}),
            0.0);
}
