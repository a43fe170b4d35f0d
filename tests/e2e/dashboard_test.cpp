// End to end: every query of the shipped Grafana dashboard returns data from
// a real Prometheus (Debian's, loading the shipped rules) scraping a real
// memlensd whose config turns on what the panels show, watching real
// workloads: a heapload traced from exec with every kind of budget and a
// leak, a sampleload preloaded with the in-process sampler and over its RSS
// budget (so an alert fires for the annotation query), Node.js, CPython and
// JVM processes churning their GC, and a PostgreSQL cluster of the test's
// own. The template variables are replaced as Grafana does with "All"
// selected; a panel query must return at least one series with a value that
// is not NaN (what Grafana can draw). rules_test checks that the names exist;
// this test checks that they meet.
#include <curl/curl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <thread>

#include "tests/support/dashboard.h"
#include "tests/support/postgres_cluster.h"
#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

const std::string kSrc = MEMLENS_SOURCE_DIR;

// Panel queries that cannot get data here, by "panel title / refId", with
// the reason. Empty: every query is fed. A listed query that does return
// data fails the test, so the list stays true.
const std::map<std::string, std::string> kUnfed = {};

// The python3 first on PATH as the real interpreter (pyenv's shim is a shell
// script whose pid becomes python only after an exec).
std::string real_python() {
  std::string out;
  if (run("python3 -c 'import sys; print(sys.executable)' 2>/dev/null", &out) != 0) return "";
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

}  // namespace

TEST(EndToEnd, EveryDashboardQueryReturnsData) {
  if (!is_root()) GTEST_SKIP() << "needs root (eBPF collectors, PostgreSQL run as nobody)";
  // scripts/deps.sh installs every runtime below: a missing one is a broken
  // machine, not a reason to leave panels untested.
  ASSERT_EQ(run("command -v prometheus >/dev/null"), 0) << "prometheus is not installed (Debian package prometheus)";
  const std::string python = real_python();
  for (const std::string& exe : {std::string("/usr/bin/node"), std::string("/usr/bin/java"), python})
    ASSERT_TRUE(!exe.empty() && executable(exe)) << "no " << (exe.empty() ? "python3" : exe) << ": its panels need it";
  ASSERT_EQ(postgres_missing(), "") << "the PostgreSQL panels need it";
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  const std::string dir = make_temp_dir("memlens-e2e-dashboard");

  // The PostgreSQL row: a cluster of our own, idle (every series of the
  // postgres collector exists without clients).
  auto pg = start_cluster("shared_buffers = 32MB\nmax_connections = 20\n", "");
  ASSERT_TRUE(pg->error.empty()) << pg->error;

  // The GC row (each runtime with a pause budget, so that the budget lines
  // do not hang on one runtime's tracing): each waits for its go file, churns 20 s, then idles.
  const std::string churn_s = "20";
  Child node = spawn({"/usr/bin/node", kSrc + "/tests/workloads/gc_churn.js", dir + "/go-node", dir + "/node.json",
                      churn_s}, dir + "/node.log");
  Child py = spawn({python, kSrc + "/tests/workloads/gc_churn.py", dir + "/go-py", dir + "/py.json", churn_s},
                   dir + "/py.log");
  Child jvm = spawn({"/usr/bin/java", "-Xmx64m", kSrc + "/tests/workloads/GcChurn.java", dir + "/go-jvm",
                     dir + "/jvm.done", churn_s, "2"}, dir + "/jvm.log");
  // The sampler panels, and an RSS over its 16 MiB budget: MemlensRSSOverBudget
  // fires, for the dashboard's alert annotations.
  Child sampled = spawn({workload_path("sampleload"), "--truth", dir + "/sampled.jsonl", "--wait", "2"},
                        dir + "/sampled.log",
                        {"LD_PRELOAD=" + std::string(MEMLENS_BINARY_DIR) + "/lib/libmemlens-sampler.so",
                         "MEMLENS_SAMPLER_INTERVAL=16384"});
  // The heap panels: a copy of heapload of our own, traced from exec, with
  // every budget a glibc process can have; it leaks toward its heap budget
  // (breach predicted) and its brk growth feeds the system-call panels.
  const std::string traced_exe = private_workload("heapload", dir);
  auto d = start_daemon(
      "global: {tick_interval: 1s, rescan_interval: 1s, smaps_interval: 1s, leak_window: 20s, breach_window: 20s}\n"
      "targets:\n"
      "  - name: e2e-traced\n"
      "    comm: " + exe_comm(traced_exe) + "\n"
      "    alloc: {mode: full}\n"
      "    budgets: {heap: 64MiB, rss: 96MiB, peak: 128MiB, alloc_rate: 100MB/s, fragmentation: 50%, leak: 1KiB/s}\n"
      "  - name: e2e-sampled\n"
      "    pid: " + std::to_string(sampled.pid()) + "\n"
      "    budgets: {rss: 16MiB}\n"
      "  - name: e2e-node\n"
      "    pid: " + std::to_string(node.pid()) + "\n"
      "    budgets: {gc_pause_p99: 50ms, heap: 128MiB}\n"
      "  - name: e2e-python\n"
      "    pid: " + std::to_string(py.pid()) + "\n"
      "    budgets: {gc_pause_p99: 50ms}\n"
      "  - name: e2e-jvm\n"
      "    pid: " + std::to_string(jvm.pid()) + "\n"
      "    budgets: {gc_pause_p99: 50ms}\n"
      "  - name: e2e-pg\n"
      "    pid: " + std::to_string(pg->postmaster.pid()) + "\n"
      "    budgets: {shared_buffers: 64MiB, connection_memory: 50MiB, temp_files: 16MiB}\n"
      "  - name: memlensd\n"
      "    self: true\n");
  ASSERT_TRUE(d);
  Child traced = spawn({traced_exe, "--hold", std::to_string(24 << 20), "--churn", "1000", "--leak", "65536",
                        "--truth", dir + "/traced.jsonl"}, dir + "/traced.log");

  // The shipped rules (the table's recording rules among them), every
  // `for:` cut to 2 s so that an alert fires within the test.
  const std::string shipped = read_text(kSrc + "/deploy/prometheus/memlens.rules.yml");
  const std::string rules = std::regex_replace(shipped, std::regex(R"(\bfor: \w+)"), "for: 2s");
  ASSERT_NE(rules, shipped);
  write_text(dir + "/memlens.rules.yml", rules);
  const int prom_port = free_port();
  write_text(dir + "/prometheus.yml",
             "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
             "rule_files:\n  - " + dir + "/memlens.rules.yml\n"
             "scrape_configs:\n"
             "  - job_name: memlens\n"
             "    static_configs:\n"
             "      - targets: ['127.0.0.1:" + std::to_string(d->port) + "']\n");
  Child prom = spawn({"prometheus", "--config.file=" + dir + "/prometheus.yml", "--storage.tsdb.path=" + dir + "/data",
                      "--web.listen-address=127.0.0.1:" + std::to_string(prom_port), "--log.level=warn"},
                     dir + "/prometheus.log");

  // Churn once memlensd traces each runtime's pauses (or after 30 s: a
  // runtime it never traces leaves its GC queries empty, reported below).
  const std::vector<std::pair<std::string, pid_t>> runtimes = {
      {"node", node.pid()}, {"py", py.pid()}, {"jvm", jvm.pid()}};
  wait_until([&] {
    const auto s = d->scrape();
    for (const auto& [name, pid] : runtimes)
      if (find_sample(s, "memlens_gc_tracing_available", {{"pid", std::to_string(pid)}}).value_or(0) != 1) return false;
    return true;
  }, daemon_sanitized() ? 60s : 30s, 250ms);
  for (const auto& [name, pid] : runtimes) write_text(dir + "/go-" + name, "go\n");
  ASSERT_TRUE(wait_until([&] { return http_get("http://127.0.0.1:" + std::to_string(prom_port) + "/-/ready").status == 200; }, 30s))
      << read_text(dir + "/prometheus.log");
  std::printf("[%5.1f s] workloads, memlensd and Prometheus up\n", since());

  // Every query, polled until it has data or the deadline passes.
  const std::vector<DashboardQuery> queries = dashboard_queries();
  ASSERT_GT(queries.size(), 80u) << "the dashboard lost its panels?";
  std::map<std::string, nlohmann::json> last;  // where -> the last result
  std::set<std::string> fed;
  const auto deadline = std::chrono::steady_clock::now() + (daemon_sanitized() ? 90s : 60s);
  while (fed.size() < queries.size() && std::chrono::steady_clock::now() < deadline) {
    for (const auto& q : queries) {
      if (fed.count(q.where)) continue;
      last[q.where] = prom_query(prom_port, q);
      if (has_data(last[q.where])) fed.insert(q.where);
    }
    if (fed.size() < queries.size()) std::this_thread::sleep_for(1s);
  }
  std::printf("[%5.1f s] %zu of %zu dashboard queries returned data\n", since(), fed.size(), queries.size());

  for (const auto& q : queries) {
    auto unfed = kUnfed.find(q.where);
    if (unfed != kUnfed.end()) {
      EXPECT_FALSE(fed.count(q.where)) << q.where << " returns data now: take it off kUnfed (" << unfed->second << ")";
      continue;
    }
    EXPECT_TRUE(fed.count(q.where)) << q.where << " returned no data:\n  " << grafana_substitute(q.expr)
                                    << "\n  last result: " << last[q.where].dump().substr(0, 400);
  }
  for (const auto& [where, why] : kUnfed) {
    bool known = false;
    for (const auto& q : queries) known |= q.where == where;
    EXPECT_TRUE(known) << "kUnfed names " << where << ", which the dashboard no longer has";
  }

  // The budget table has a row for every budget the config sets whose usage
  // memlensd measures here, and the traced heap's breach is predicted.
  auto table_rows = [&](const std::string& ref) {
    std::set<std::string> rows;
    for (const auto& q : queries) {
      if (q.where.find("Budgets: used") == std::string::npos || q.where.substr(q.where.size() - 1) != ref) continue;
      const auto res = prom_query(prom_port, q);
      if (res.is_array())
        for (const auto& s : res) rows.insert(s["metric"].value("target", "") + "/" + s["metric"].value("resource", ""));
    }
    return rows;
  };
  const std::vector<std::string> want = {
      "e2e-traced/rss", "e2e-traced/heap", "e2e-traced/peak", "e2e-traced/alloc_rate", "e2e-traced/fragmentation",
      "e2e-traced/leak", "e2e-sampled/rss", "e2e-pg/shared_buffers",
      "e2e-pg/connection_memory", "e2e-pg/temp_files"};
  std::set<std::string> used, share, breach;
  // Each runtime has a pause budget; one traced runtime is enough for a row.
  auto gc_rows = [&] {
    return used.count("e2e-node/gc_pause_p99") + used.count("e2e-python/gc_pause_p99") +
           used.count("e2e-jvm/gc_pause_p99");
  };
  wait_until([&] {
    used = table_rows("A"), share = table_rows("C"), breach = table_rows("D");
    for (const auto& row : want)
      if (!used.count(row)) return false;
    return share.count("e2e-traced/heap") && share.count("e2e-pg/shared_buffers") && breach.count("e2e-traced/heap") &&
           gc_rows();
  }, daemon_sanitized() ? 60s : 30s, 1s);
  for (const auto& row : want) EXPECT_TRUE(used.count(row)) << "no 'used' for " << row << " in the budget table";
  EXPECT_GT(gc_rows(), 0u) << "no 'used' for a gc_pause_p99 budget in the budget table";
  EXPECT_TRUE(share.count("e2e-traced/heap") && share.count("e2e-pg/shared_buffers"));
  EXPECT_FALSE(share.count("e2e-node/leak")) << "a leak budget of 0 has no share";
  EXPECT_TRUE(used.count("e2e-node/leak")) << "the leak slope is used against a leak budget of 0 all the same";
  EXPECT_TRUE(breach.count("e2e-traced/heap")) << "no predicted breach for the leaking heap";
  std::printf("[%5.1f s] done\n", since());
  if (HasFailure()) std::printf("memlensd log:\n%s\n", d->log().c_str());
  prom.stop(SIGTERM, 10s);
  run("rm -rf " + dir);
}
