// Golden exposition: memlensd run on the recorded procfs fixtures must serve
// exactly the per-target series in tests/fixtures/golden/metrics.txt (names,
// help, types, labels and values). MEMLENS_UPDATE_GOLDEN=1 rewrites the file
// after a deliberate change; review the diff.
#include <gtest/gtest.h>

#include <cstdlib>
#include <sstream>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

const std::string kSrc = MEMLENS_SOURCE_DIR;

// Per-target families only: lines of samples with a target label, and the
// HELP/TYPE lines of those families. Self-metrics vary run to run. The files
// target's paths are written from the source tree's root ($SRC), wherever
// the tree is.
std::string per_target(const std::string& exposition) {
  std::istringstream in(exposition);
  std::string line, out, pending;
  while (std::getline(in, line)) {
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
      if (line.rfind("# HELP ", 0) == 0) pending.clear();
      pending += line + "\n";
      continue;
    }
    if (line.find("target=\"golden\"") == std::string::npos &&
        line.find("target=\"golden-bundle\"") == std::string::npos)
      continue;
    for (std::size_t at; (at = line.find(kSrc)) != std::string::npos;) line.replace(at, kSrc.size(), "$SRC");
    // Time-dependent per-target series, and the eBPF collectors' series
    // (they trace live processes, not files; their own tests cover them).
    bool skip = false;
    for (const char* p : {"memlens_timeline_points", "memlens_leak_slope", "memlens_bpf_", "memlens_heap_live",
                          "memlens_heap_fragmentation", "memlens_alloc", "memlens_frees", "memlens_gc_", "memlens_jvm_",
                          "memlens_mmap_", "memlens_mapped_", "memlens_unmapped_"})
      skip |= line.rfind(p, 0) == 0;
    if (skip) continue;
    out += pending;
    pending.clear();
    out += line + "\n";
  }
  return out;
}

}  // namespace

TEST(Golden, ExpositionOnFixtures) {
  const std::string procfs = std::string(MEMLENS_SOURCE_DIR) + "/tests/fixtures/proc";
  const std::string golden = std::string(MEMLENS_SOURCE_DIR) + "/tests/fixtures/golden/metrics.txt";
  // With a budget of every unit, so their families are pinned down too,
  // and a files target over a committed build output.
  const std::string dist = kSrc + "/tests/fixtures/files/dist";
  auto d = start_daemon("global: {tick_interval: 200ms}\n"
                        "targets: [{name: golden, comm: heapload, budgets: {rss: 64MiB, heap: 32MiB, "
                        "alloc_rate: 1MB/s, gc_pause_p99: 10ms, fragmentation: 20%}},\n"
                        "  {name: golden-bundle, files: {paths: [\"" + dist + "/**/*.js\", \"" + dist +
                            "/*.css\"], entry: [\"" + dist + "/index-*\"]}, budgets: {bundle: 1KB}}]\n",
                        {"--path.procfs=" + procfs});
  ASSERT_TRUE(d);
  std::string got;
  ASSERT_TRUE(wait_until([&] {
    got = per_target(http_get(d->url("/metrics")).body);
    return got.find("memlens_rss_bytes") != std::string::npos &&
           got.find("memlens_bundle_bytes{target=\"golden-bundle\",encoding=\"gzip\"}") != std::string::npos;
  }, 5s)) << d->log();
  if (std::getenv("MEMLENS_UPDATE_GOLDEN")) {
    write_text(golden, got);
    GTEST_SKIP() << "rewrote " << golden;
  }
  EXPECT_EQ(got, read_text(golden)) << "the exposition changed; if on purpose, rerun with MEMLENS_UPDATE_GOLDEN=1";
}
