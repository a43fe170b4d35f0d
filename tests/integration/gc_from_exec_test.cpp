// Runtimes started while memlensd runs are timed from their first collection.
// memlensd attaches the GC probes of the host's runtime binaries (libjvm.so,
// node, python) for every process that maps them, and the kernel keeps the
// pauses of a young process until discovery finds it (at most a rescan, 2 s,
// later). A JVM, a Node and a CPython process that collect from their first
// 100 ms, started after memlensd: memlensd's pause counts must equal each
// runtime's own count of its collections since it started (-Xlog:gc,
// --trace-gc, gc.get_stats()).
#include <gtest/gtest.h>
#include <unistd.h>

#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

const std::string kSrc = MEMLENS_SOURCE_DIR;
constexpr const char* kChurnSeconds = "6";

double pauses(const std::vector<PromSample>& s, pid_t pid) {
  double n = 0;
  for (const auto& p : s)
    if (p.name == "memlens_gc_pause_seconds_count" && p.labels.count("pid") && p.labels.at("pid") == std::to_string(pid))
      n += p.value;
  return n;
}

// Lines of `path` matching `re`.
int matching_lines(const std::string& path, const std::regex& re) {
  std::istringstream in(read_text(path));
  int n = 0;
  for (std::string line; std::getline(in, line);) n += std::regex_search(line, re) ? 1 : 0;
  return n;
}

// V8's --trace-gc line: "[pid:0xaddr]      45 ms: Scavenge ...".
const std::regex kNodeGc(R"(^\[\d+:0x[0-9a-f]+\]\s+(\d+) ms: )");

}  // namespace

TEST(GcFromExec, RuntimesStartedLaterAreTimedFromTheirFirstCollection) {
  ASSERT_TRUE(is_root()) << "eBPF needs root";
  for (const char* bin : {"/usr/bin/node", "/usr/bin/python3.11", "/usr/bin/java"})
    ASSERT_EQ(access(bin, X_OK), 0) << bin << " missing: scripts/deps.sh installs it";
  const std::string dir = make_temp_dir("memlens-gcexec");
  ASSERT_TRUE(std::regex_match(dir, std::regex("[A-Za-z0-9/_-]+"))) << dir << " is used as a regex";
  // The default config's runtime entries and timing, narrowed to this test's
  // processes (a full run has other tests' runtimes beside them).
  auto d = start_daemon(
      "global: {tick_interval: 1s, rescan_interval: 2s}\n"
      "targets:\n"
      "  - {name: java, comm: java, cmdline: '" + dir + "'}\n"
      "  - {name: node, comm: 'node|nodejs', cmdline: '" + dir + "'}\n"
      "  - {name: python, comm: 'python[0-9.]*', cmdline: '" + dir + "'}\n");
  ASSERT_TRUE(d);
  ASSERT_TRUE(wait_until([&] { return find_sample(d->scrape(), "memlens_gc_probed_binaries", {}).value_or(0) >= 3; }, 20s))
      << "probes for the host's java, node and python binaries\n" << d->log();

  Child node = spawn({"/usr/bin/node", "--trace-gc", kSrc + "/tests/workloads/gc_from_start.js", dir + "/node.done", kChurnSeconds},
                     dir + "/node.log");
  Child py = spawn({"/usr/bin/python3.11", kSrc + "/tests/workloads/gc_from_start.py", dir + "/py.done", kChurnSeconds},
                   dir + "/py.log");
  Child jvm = spawn({"/usr/bin/java", "-Xmx64m", "-Xlog:gc:file=" + dir + "/jvm.gc", kSrc + "/tests/workloads/GcFromStart.java",
                     dir + "/jvm.done", kChurnSeconds},
                    dir + "/jvm.log");
  for (const char* w : {"node", "py", "jvm"})
    ASSERT_TRUE(wait_until([&] { return access((dir + "/" + w + ".done").c_str(), F_OK) == 0; }, 60s))
        << w << " never finished:\n" << read_text(dir + "/" + w + ".log");

  // Each runtime's own count, read again at every try: an idle runtime may
  // still collect now and then, and memlensd reads the kernel once a tick.
  auto truth_node = [&] { return matching_lines(dir + "/node.log", kNodeGc); };
  auto truth_py = [&] { return nlohmann::json::parse(read_text(dir + "/py.done")).value("collections", -1); };
  auto truth_jvm = [&] { return matching_lines(dir + "/jvm.gc", std::regex(R"(GC\(\d+\) Pause)")); };
  struct Case {
    const char* name;
    pid_t pid;
    std::function<int()> truth;
  } cases[] = {{"node", node.pid(), truth_node}, {"python", py.pid(), truth_py}, {"jvm", jvm.pid(), truth_jvm}};
  for (const auto& c : cases) {
    double seen = 0;
    int truth = 0;
    wait_until([&] {
      seen = pauses(d->scrape(), c.pid);
      truth = c.truth();
      return seen == truth;
    }, 15s, 500ms);
    std::printf("%s: memlensd %.0f pauses, the runtime's own count %d\n", c.name, seen, truth);
    EXPECT_GT(truth, 50) << c.name << " collected too little to judge";
    EXPECT_EQ(seen, truth) << c.name << ": every collection since the process started";
  }
  // The first collections came before discovery could have found the
  // processes (they started after memlensd, which rescans every 2 s).
  std::smatch m;
  std::istringstream in(read_text(dir + "/node.log"));
  for (std::string line; std::getline(in, line);)
    if (std::regex_search(line, m, kNodeGc)) {
      std::printf("node's first collection at %s ms\n", m[1].str().c_str());
      EXPECT_LT(std::stoi(m[1].str()), 500) << "the workload collects from its start";
      break;
    }
  // These processes started after the probes: none of their ends may lack a
  // begin. (Other tests' runtimes that were mid-collection when this memlensd
  // attached are counted apart, as mid_pause.)
  const auto s = d->scrape();
  std::printf("ends without a begin: %.0f unmatched, %.0f mid-pause\n",
              find_sample(s, "memlens_gc_bpf_errors_total", {{"reason", "unmatched"}}).value_or(-1),
              find_sample(s, "memlens_gc_bpf_errors_total", {{"reason", "mid_pause"}}).value_or(-1));
  EXPECT_EQ(find_sample(s, "memlens_gc_bpf_errors_total", {{"reason", "unmatched"}}), 0.0);
}
