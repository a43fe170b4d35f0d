// GC tracing when things are not as they should be: a JVM without
// hsperfdata, a runtime binary with neither USDT probes nor symbols, and a
// target killed in the middle of a pause.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

std::string src(const std::string& rel) { return std::string(MEMLENS_SOURCE_DIR) + "/" + rel; }
bool executable(const std::string& p) { return ::access(p.c_str(), X_OK) == 0; }

std::optional<Daemon> daemon_for(pid_t pid) {
  return start_daemon(
      "global: {tick_interval: 500ms, rescan_interval: 500ms}\n"
      "targets:\n"
      "  - name: rt\n"
      "    pid: " + std::to_string(pid) + "\n");
}

// Open pauses of `pid` in every loaded gc program's open_pauses map (keys are
// pid_tgid: the process id in the upper 32 bits). -1 when bpftool fails.
// The id of memlensd `daemon`'s open_pauses map (its fds' fdinfo name each
// map's id; other memlensd instances of a parallel run have their own), or -1.
int open_pauses_map_of(pid_t daemon) {
  const std::string fds = "/proc/" + std::to_string(daemon) + "/fd";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(fds, ec)) {
    std::error_code lec;
    if (std::filesystem::read_symlink(e.path(), lec).string() != "anon_inode:bpf-map") continue;
    std::smatch m;
    const std::string info = read_text("/proc/" + std::to_string(daemon) + "/fdinfo/" + e.path().filename().string());
    if (!std::regex_search(info, m, std::regex(R"(map_id:\s*(\d+))"))) continue;
    std::string out;
    if (run("bpftool -j map show id " + m[1].str() + " 2>/dev/null", &out) != 0) continue;
    auto j = nlohmann::json::parse(out, nullptr, false);
    if (!j.is_discarded() && j.value("name", "") == "open_pauses") return std::stoi(m[1].str());
  }
  return -1;
}

// Open pauses of `pid` in that memlensd's map; -1 when it cannot be read.
int open_pauses_of(pid_t daemon, pid_t pid) {
  const int id = open_pauses_map_of(daemon);
  std::string out;
  if (id < 0 || run("bpftool -j map dump id " + std::to_string(id) + " 2>/dev/null", &out) != 0) return -1;
  auto j = nlohmann::json::parse(out, nullptr, false);
  if (j.is_discarded() || !j.is_array()) return -1;
  int n = 0;
  for (const auto& e : j)
    if (e.is_object() && e.contains("formatted") &&
        static_cast<pid_t>(e["formatted"]["key"].get<uint64_t>() >> 32) == pid)
      ++n;
  return n;
}

}  // namespace

class GcFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!is_root()) GTEST_SKIP() << "needs root for eBPF uprobes/USDT";
  }
};

// -XX:-UsePerfData: no hsperfdata file. Pauses are still traced, the heap
// gauges are absent, and the daemon does not complain about it.
TEST_F(GcFaults, JvmWithoutPerfData) {
  if (!executable("/usr/bin/java")) GTEST_SKIP() << "no JDK installed";
  const std::string dir = make_temp_dir("gc-noperf");
  const std::string go = dir + "/go", done = dir + "/done";
  Child w = spawn({"/usr/bin/java", "-XX:-UsePerfData", "-Xmx128m", src("tests/workloads/GcChurn.java"), go, done,
                   "4", "1"},
                  dir + "/workload.log");
  auto d = daemon_for(w.pid());
  ASSERT_TRUE(d);
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}, {"runtime", "jvm"}};
  ASSERT_TRUE(wait_until([&] { return find_sample(d->scrape(), "memlens_gc_tracing_available", sel) == 1.0; }, 20s))
      << d->log();
  write_text(go, "go\n");
  ASSERT_TRUE(wait_until([&] { return ::access(done.c_str(), F_OK) == 0; }, 30s)) << read_text(dir + "/workload.log");
  std::this_thread::sleep_for(1500ms);
  auto s = d->scrape();
  double pauses = 0;
  for (const auto& p : s)
    if (p.name == "memlens_gc_pause_seconds_count" && p.labels.count("pid") && p.labels.at("pid") == sel.at("pid"))
      pauses += p.value;
  EXPECT_GT(pauses, 10) << "pauses must still be traced without hsperfdata";
  EXPECT_FALSE(find_sample(s, "memlens_jvm_heap_used_bytes", {{"pid", sel.at("pid")}}).has_value());
  const std::string log = d->log();
  EXPECT_EQ(log.find("hsperfdata"), std::string::npos) << "no log noise expected:\n" << log;
  EXPECT_EQ(log.find("error"), std::string::npos) << log;
}

// A Python whose binary has had its symbols and probe notes removed: still
// watched (proc metrics), GC tracing reported unavailable with the reason.
TEST_F(GcFaults, RuntimeWithoutProbesOrSymbols) {
  if (!executable("/usr/bin/python3.11")) GTEST_SKIP() << "no /usr/bin/python3.11";
  const std::string dir = make_temp_dir("gc-stripped");
  const std::string py = dir + "/python3.11";
  std::string out;
  ASSERT_EQ(run("objcopy --strip-all --remove-section=.note.stapsdt /usr/bin/python3.11 " + py + " 2>&1", &out), 0)
      << out;
  Child w = spawn({py, "-c", "import time; time.sleep(120)"}, dir + "/workload.log");
  auto d = daemon_for(w.pid());
  ASSERT_TRUE(d);
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}};
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_gc_tracing_available", sel).has_value();
  }, 20s)) << d->log();
  EXPECT_EQ(find_sample(s, "memlens_gc_tracing_available",
                        {{"pid", sel.at("pid")}, {"runtime", "python"}, {"reason", "no_usdt_or_symbols"}}),
            0.0);
  EXPECT_TRUE(find_sample(s, "memlens_rss_bytes", sel).has_value()) << "the other collectors still watch it";
  EXPECT_FALSE(find_sample(s, "memlens_gc_pause_seconds_count", sel).has_value());
}

// A target killed while inside a collection (a __del__ that never returns
// runs between python:gc__start and gc__done) leaves no open pause behind.
TEST_F(GcFaults, ExitMidPauseLeavesNoEntry) {
  if (!executable("/usr/bin/python3.11")) GTEST_SKIP() << "no /usr/bin/python3.11";
  const std::string dir = make_temp_dir("gc-exit");
  const std::string go = dir + "/go", marker = dir + "/in_gc";
  const std::string script =
      "import gc, os, sys, time\n"
      "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n"
      "class Trap:\n"
      "    def __del__(self):\n"
      "        open(sys.argv[2], 'w').write('in gc\\n')\n"
      "        time.sleep(3600)\n"
      "t = Trap(); t.me = t; del t\n"
      "gc.collect()\n";
  Child w = spawn({"/usr/bin/python3.11", "-c", script, go, marker}, dir + "/workload.log");
  auto d = daemon_for(w.pid());
  ASSERT_TRUE(d);
  ASSERT_TRUE(wait_until([&] {
    return find_sample(d->scrape(), "memlens_gc_tracing_available",
                       {{"pid", std::to_string(w.pid())}, {"method", "usdt"}}) == 1.0;
  }, 20s)) << d->log();
  ASSERT_GE(open_pauses_of(d->child.pid(), 0), 0) << "bpftool (installed by scripts/deps.sh) cannot dump the open_pauses map";
  write_text(go, "go\n");
  ASSERT_TRUE(wait_until([&] { return ::access(marker.c_str(), F_OK) == 0; }, 10s));
  const int open_before = open_pauses_of(d->child.pid(), w.pid());
  std::printf("open pauses of pid %d: %d while inside gc.collect()\n", w.pid(), open_before);
  ASSERT_EQ(open_before, 1) << "the pause in progress should be open in the kernel";
  const pid_t pid = w.pid();  // the handle forgets it once reaped
  w.stop(SIGKILL, 5s);
  EXPECT_TRUE(wait_until([&] { return open_pauses_of(d->child.pid(), pid) == 0; }, 5s))
      << "the exit hook must drop the open pause of a dead thread";
}

// A process already inside a collection when memlensd attaches its probes
// ends that pause without a begin: it is counted as mid_pause, not as a lost
// begin (unmatched), and the collections after it are timed.
TEST_F(GcFaults, AttachedMidPauseIsCountedApart) {
  if (!executable("/usr/bin/python3.11")) GTEST_SKIP() << "no /usr/bin/python3.11";
  const std::string dir = make_temp_dir("gc-midpause");
  const std::string marker = dir + "/in_gc", done = dir + "/done";
  // Four collections of 1.5 s each (a __del__ that sleeps), the first one
  // under way before memlensd starts; a slow start may attach in the second.
  const std::string script =
      "import gc, sys, time\n"
      "class Slow:\n"
      "    def __del__(self):\n"
      "        open(sys.argv[1], 'w').write('in gc\\n')\n"
      "        time.sleep(1.5)\n"
      "for i in range(4):\n"
      "    s = Slow(); s.me = s; del s\n"
      "    gc.collect()\n"
      "open(sys.argv[2], 'w').write('done\\n')\n"
      "time.sleep(3600)\n";
  Child w = spawn({"/usr/bin/python3.11", "-c", script, marker, done}, dir + "/workload.log");
  ASSERT_TRUE(wait_until([&] { return ::access(marker.c_str(), F_OK) == 0; }, 10s)) << read_text(dir + "/workload.log");
  auto d = daemon_for(w.pid());
  ASSERT_TRUE(d);
  ASSERT_TRUE(wait_until([&] { return ::access(done.c_str(), F_OK) == 0; }, 20s));
  const std::map<std::string, std::string> pid = {{"pid", std::to_string(w.pid())}};
  double pauses = 0;
  wait_until([&] {
    pauses = 0;
    for (const auto& p : d->scrape())
      if (p.name == "memlens_gc_pause_seconds_count" && p.labels.count("pid") && p.labels.at("pid") == pid.at("pid"))
        pauses += p.value;
    return pauses >= 2;
  }, 3s);
  const auto s = d->scrape();
  const double mid = find_sample(s, "memlens_gc_bpf_errors_total", {{"reason", "mid_pause"}}).value_or(-1);
  const double unmatched = find_sample(s, "memlens_gc_bpf_errors_total", {{"reason", "unmatched"}}).value_or(-1);
  std::printf("pauses timed %.0f, mid_pause %.0f, unmatched %.0f\n", pauses, mid, unmatched);
  EXPECT_GE(pauses, 1) << "the collections after the attach are timed\n" << d->log();
  EXPECT_LE(pauses, 3);
  EXPECT_EQ(mid, 1) << "the collection under way when the probes came";
  EXPECT_EQ(unmatched, 0);
}
