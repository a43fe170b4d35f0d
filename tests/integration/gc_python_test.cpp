// CPython GC pauses through both paths (USDT and gc_collect_main symbol)
// against gc.callbacks timings.
#include "tests/integration/gc_accuracy.h"

using namespace gc_test;

TEST_F(GcAccuracy, PythonUsdt) {
  if (!executable("/usr/bin/python3.11")) GTEST_SKIP() << "no /usr/bin/python3.11 (apt-get install python3.11)";
  python_case("/usr/bin/python3.11", "usdt");
}

TEST_F(GcAccuracy, PythonSymbols) {
  const std::string py = default_python();
  if (py.empty()) GTEST_SKIP() << "no python3 on PATH";
  std::string out;
  // Only meaningful for an interpreter without the dtrace probes.
  if (run("readelf -n " + py + " 2>/dev/null | grep -q gc__start", &out) == 0)
    GTEST_SKIP() << py << " has USDT probes; the symbol path needs a build without them";
  python_case(py, "uprobe");
}
