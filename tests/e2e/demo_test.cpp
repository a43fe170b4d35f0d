// The demo (deploy/demo/run.sh), run as a new user would: within its first
// minute and a half every query of the shipped dashboard returns data from
// the demo's own Prometheus (the annotation of firing alerts included: the
// demo's bundle is over its budget), and Ctrl-C stops every process it
// started and removes its directory.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <regex>
#include <set>
#include <thread>

#include "tests/support/dashboard.h"
#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

// Processes whose command line mentions `text`.
std::vector<std::string> processes_mentioning(const std::string& text) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string pid = e.path().filename();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = read_text("/proc/" + pid + "/cmdline");
    for (char& c : cmd)
      if (c == '\0') c = ' ';
    if (cmd.find(text) != std::string::npos) out.push_back(pid + ": " + cmd.substr(0, 160));
  }
  return out;
}

}  // namespace

TEST(Demo, EveryPanelAliveThenEverythingStops) {
  ASSERT_TRUE(is_root()) << "the demo runs as root";
  const int port = free_port(), prom_port = free_port(), pg_port = free_port();
  const std::string log = make_temp_dir("memlens-demo-test") + "/demo.log";
  Child demo = spawn({"/bin/bash", std::string(MEMLENS_SOURCE_DIR) + "/deploy/demo/run.sh"}, log,
                     {"MEMLENS_BUILD_DIR=" + std::string(MEMLENS_BINARY_DIR), "MEMLENS_DAEMON=" + memlensd_path(),
                      "MEMLENS_DEMO_SECONDS=600", "MEMLENS_DEMO_PORT=" + std::to_string(port),
                      "MEMLENS_DEMO_PROMETHEUS_PORT=" + std::to_string(prom_port),
                      "MEMLENS_DEMO_PG_PORT=" + std::to_string(pg_port)});
  std::string dir;
  ASSERT_TRUE(wait_until([&] {
    std::smatch m;
    const std::string text = read_text(log);
    if (std::regex_search(text, m, std::regex(R"(everything under (/tmp/memlens-demo\.\w+))"))) dir = m[1];
    return !dir.empty() || !demo.running();
  }, 120s, 250ms)) << read_text(log);
  ASSERT_FALSE(dir.empty()) << "the demo did not start:\n" << read_text(log);
  const auto t0 = std::chrono::steady_clock::now();

  const auto queries = dashboard_queries();
  std::set<std::string> fed;
  std::map<std::string, nlohmann::json> last;
  const auto deadline = t0 + (daemon_sanitized() ? 150s : 90s);
  while (fed.size() < queries.size() && std::chrono::steady_clock::now() < deadline && demo.running()) {
    for (const auto& q : queries)
      if (!fed.count(q.where) && has_data(last[q.where] = prom_query(prom_port, q))) fed.insert(q.where);
    if (fed.size() < queries.size()) std::this_thread::sleep_for(2s);
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%zu of %zu dashboard queries returned data %.0f s after the demo started\n", fed.size(),
              queries.size(), took);
  for (const auto& q : queries)
    EXPECT_TRUE(fed.count(q.where)) << q.where << " returned no data:\n  " << grafana_substitute(q.expr)
                                    << "\n  last result: " << last[q.where].dump().substr(0, 300);

  // Ctrl-C: everything it started stops, its directory goes.
  EXPECT_GE(processes_mentioning(dir).size(), 5u) << "the demo's processes, before";
  ::kill(demo.pid(), SIGINT);
  const int status = demo.wait_exit(30s);
  EXPECT_NE(status, -1) << "the demo did not exit on SIGINT";
  std::vector<std::string> left;
  wait_until([&] { return (left = processes_mentioning(dir)).empty(); }, 10s);
  for (const auto& p : left) ADD_FAILURE() << "left running: " << p;
  EXPECT_FALSE(std::filesystem::exists(dir)) << dir << " was not removed";
  if (HasFailure()) std::printf("demo log:\n%s\n", read_text(log).c_str());
}
