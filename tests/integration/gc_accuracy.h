// Shared by gc_jvm_test, gc_node_test and gc_python_test (one ctest test
// each, so each stays well under 90 s).
// GC pauses seen by memlensd for real JVM, Node.js and CPython processes,
// against the pauses each runtime reports about itself: the JVM's -Xlog:gc
// file, Node's perf_hooks 'gc' entries, CPython's gc.callbacks timings.
// Targets: pause count within 2%, p50 / p99 within 10% or 0.5 ms (whichever
// is larger); JVM heap used within 5% of jstat -gc.
//
// Protocol: the workload starts and waits for a "go" file; the test starts
// memlensd on its pid, waits until memlens says the pid is traced, creates
// "go"; the workload churns for kChurnSeconds, writes its truth and then idles
// without allocating, so memlens and the truth cover the same pauses.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace gc_test {

inline constexpr int kChurnSeconds = 20;

inline std::string src(const std::string& rel) { return std::string(MEMLENS_SOURCE_DIR) + "/" + rel; }

inline bool executable(const std::string& p) { return ::access(p.c_str(), X_OK) == 0; }

// Nearest-rank quantile of the truth pauses.
inline double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  std::size_t i = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::clamp<std::size_t>(i, 1, v.size()) - 1];
}

struct Traced {
  std::optional<Daemon> d;
  std::map<std::string, std::string> sel;
};

// memlensd watching `pid` only, once it reports GC tracing on for it.
inline Traced trace_pid(pid_t pid, const std::string& runtime, const std::string& method) {
  Traced t;
  t.d = start_daemon(
      "global: {tick_interval: 500ms, rescan_interval: 500ms}\n"
      "targets:\n"
      "  - name: rt\n"
      "    pid: " + std::to_string(pid) + "\n");
  if (!t.d) return t;
  t.sel = {{"target", "rt"}, {"pid", std::to_string(pid)}};
  auto sel = t.sel;
  sel["runtime"] = runtime;
  sel["method"] = method;
  bool up = wait_until([&] { return find_sample(t.d->scrape(), "memlens_gc_tracing_available", sel) == 1.0; }, 20s);
  if (!up) {
    ADD_FAILURE() << "memlens never traced pid " << pid << " via " << method << "; log:\n" << t.d->log();
    t.d.reset();
  }
  return t;
}

inline double total_count(const std::vector<PromSample>& s, const std::map<std::string, std::string>& sel) {
  double n = 0;
  for (const auto& p : s) {
    if (p.name != "memlens_gc_pause_seconds_count") continue;
    bool match = std::all_of(sel.begin(), sel.end(), [&](const auto& kv) {
      auto it = p.labels.find(kv.first);
      return it != p.labels.end() && it->second == kv.second;
    });
    if (match) n += p.value;
  }
  return n;
}

// Compares memlens with the truth pauses (seconds) and prints both.
inline void compare(const std::vector<PromSample>& s, const std::map<std::string, std::string>& sel,
             const std::string& runtime, const std::vector<double>& truth) {
  ASSERT_GE(truth.size(), 50u) << "the workload made too few pauses to judge";
  const double n = total_count(s, sel);
  auto qsel = sel;
  qsel["runtime"] = runtime;
  qsel["percentile"] = "50";
  auto p50 = find_sample(s, "memlens_gc_pause_quantile_seconds", qsel);
  qsel["percentile"] = "99";
  auto p99 = find_sample(s, "memlens_gc_pause_quantile_seconds", qsel);
  ASSERT_TRUE(p50 && p99) << "no pause quantiles exported";
  const double t50 = quantile(truth, 0.5), t99 = quantile(truth, 0.99);
  std::printf("%s: pauses memlens %.0f truth %zu | p50 memlens %.3f ms truth %.3f ms | p99 memlens %.3f ms truth %.3f ms\n",
              runtime.c_str(), n, truth.size(), *p50 * 1e3, t50 * 1e3, *p99 * 1e3, t99 * 1e3);
  EXPECT_NEAR(n, static_cast<double>(truth.size()), 0.02 * static_cast<double>(truth.size())) << "pause count";
  EXPECT_NEAR(*p50, t50, std::max(0.1 * t50, 0.0005)) << "p50";
  EXPECT_NEAR(*p99, t99, std::max(0.1 * t99, 0.0005)) << "p99";
}

inline nlohmann::json read_json(const std::string& path) {
  return nlohmann::json::parse(read_text(path), nullptr, /*allow_exceptions=*/false);
}

// Waits for the workload's truth file after "go" (its churn plus margin),
// then two ticks so memlens has read the kernel histograms since.
inline bool go_and_wait(const std::string& go, const std::string& done) {
  write_text(go, "go\n");
  bool ok = wait_until([&] { return ::access(done.c_str(), F_OK) == 0; }, std::chrono::seconds(kChurnSeconds + 25));
  std::this_thread::sleep_for(1500ms);
  return ok;
}

// The python3 first on PATH, resolved to the real interpreter (pyenv puts
// a shell shim there; the shim's pid becomes python only after an exec).
inline std::string default_python() {
  std::string out;
  if (run("python3 -c 'import sys; print(sys.executable)' 2>/dev/null", &out) != 0) return "";
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

inline void python_case(const std::string& python, const std::string& method) {
  const std::string dir = make_temp_dir("gc-py");
  const std::string go = dir + "/go", truth = dir + "/truth.json";
  Child w = spawn({python, src("tests/workloads/gc_churn.py"), go, truth, std::to_string(kChurnSeconds)},
                  dir + "/workload.log");
  Traced t = trace_pid(w.pid(), "python", method);
  ASSERT_TRUE(t.d);
  ASSERT_TRUE(go_and_wait(go, truth)) << read_text(dir + "/workload.log");
  auto s = t.d->scrape();
  auto j = read_json(truth);
  ASSERT_TRUE(j.is_object() && j["pauses"].is_array());
  std::vector<double> pauses;
  for (const auto& p : j["pauses"]) pauses.push_back(p[1].get<double>());
  compare(s, t.sel, "python", pauses);
}

}  // namespace gc_test


class GcAccuracy : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!is_root()) GTEST_SKIP() << "needs root for eBPF uprobes/USDT";
  }
};
