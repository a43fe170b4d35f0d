// Node.js GC pauses (uprobe on V8's Heap::CollectGarbage) against perf_hooks.
#include "tests/integration/gc_accuracy.h"

using namespace gc_test;

TEST_F(GcAccuracy, Node) {
  if (!executable("/usr/bin/node")) GTEST_SKIP() << "no /usr/bin/node";
  const std::string dir = make_temp_dir("gc-node");
  const std::string go = dir + "/go", truth = dir + "/truth.json";
  Child w = spawn({"/usr/bin/node", src("tests/workloads/gc_churn.js"), go, truth, std::to_string(kChurnSeconds)},
                  dir + "/workload.log");
  Traced t = trace_pid(w.pid(), "node", "uprobe");
  ASSERT_TRUE(t.d);
  ASSERT_TRUE(go_and_wait(go, truth)) << read_text(dir + "/workload.log");
  auto s = t.d->scrape();
  auto j = read_json(truth);
  ASSERT_TRUE(j.is_object() && j["pauses"].is_array());
  // Scavenges and mark-compacts are the atomic pauses; perf_hooks also
  // reports the start of incremental marking and weak-callback processing,
  // which happen outside Heap::CollectGarbage and are not stop-the-world GCs.
  const int minor = j["minor"].get<int>(), major = j["major"].get<int>();
  std::vector<double> pauses;
  for (const auto& p : j["pauses"]) {
    const int k = p["kind"].get<int>();
    if (k == minor || k == major) pauses.push_back(p["ms"].get<double>() / 1e3);
  }
  compare(s, t.sel, "node", pauses);
}
