// JVM GC pauses (USDT) and heap (hsperfdata) against -Xlog:gc and jstat.
#include "tests/integration/gc_accuracy.h"

using namespace gc_test;

TEST_F(GcAccuracy, Jvm) {
  if (!executable("/usr/bin/java") || !executable("/usr/bin/jstat"))
    GTEST_SKIP() << "no JDK (java, jstat) installed";
  const std::string dir = make_temp_dir("gc-jvm");
  const std::string go = dir + "/go", done = dir + "/done", log = dir + "/gc.log";
  Child w = spawn({"/usr/bin/java", "-Xmx256m", "-Xlog:gc:file=" + log, src("tests/workloads/GcChurn.java"), go, done,
                   std::to_string(kChurnSeconds), "3"},
                  dir + "/workload.log");
  Traced t = trace_pid(w.pid(), "jvm", "usdt");
  ASSERT_TRUE(t.d);
  ASSERT_TRUE(go_and_wait(go, done)) << read_text(dir + "/workload.log");
  auto s = t.d->scrape();

  // -Xlog:gc: one "Pause ..." line with its duration per stop-the-world pause.
  std::vector<double> pauses;
  std::istringstream in(read_text(log));
  static const std::regex kPause(R"(Pause .* ([0-9.]+)ms$)");
  std::smatch m;
  for (std::string line; std::getline(in, line);)
    if (std::regex_search(line, m, kPause)) pauses.push_back(std::stod(m[1]) / 1e3);
  compare(s, t.sel, "jvm", pauses);
  auto fsel = t.sel;
  fsel["kind"] = "full";
  EXPECT_GE(find_sample(s, "memlens_gc_pause_seconds_count", fsel).value_or(0), 3) << "System.gc() full pauses";

  // Heap used against jstat, both read while the JVM idles.
  std::string out;
  ASSERT_EQ(run("/usr/bin/jstat -gc " + std::to_string(w.pid()), &out), 0) << out;
  std::istringstream js(out);
  std::string header, values;
  std::getline(js, header);
  std::getline(js, values);
  std::istringstream h(header), v(values);
  std::map<std::string, double> col;
  std::string c;
  double x;
  while (h >> c && v >> x) col[c] = x * 1024;
  const double jstat_used = col["S0U"] + col["S1U"] + col["EU"] + col["OU"];
  double memlens_used = 0;
  for (const auto& p : s)
    if (p.name == "memlens_jvm_heap_used_bytes" && p.labels.at("pid") == std::to_string(w.pid())) memlens_used += p.value;
  std::printf("jvm heap used: memlens %.0f bytes, jstat %.0f bytes\n", memlens_used, jstat_used);
  ASSERT_GT(jstat_used, 0);
  EXPECT_NEAR(memlens_used, jstat_used, 0.05 * jstat_used);
}
