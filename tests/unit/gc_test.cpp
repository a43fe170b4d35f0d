// GC collector pieces that need no root: the hsperfdata parser (on a file
// captured from a running JDK 17 G1 JVM, next to what jstat -gc printed for
// that same JVM at that moment), runtime detection from maps text, and the
// histogram arithmetic.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <sstream>

#include "collectors/gc_collector.h"
#include "collectors/hsperfdata.h"
#include "collectors/runtime_detect.h"
#include "tests/support/support.h"

namespace memlens {
namespace {

std::string fixture(const std::string& name) {
  return test::read_text(std::string(MEMLENS_SOURCE_DIR) + "/tests/fixtures/hsperfdata/" + name);
}

// jstat -gc output: a header line of column names and a line of values (KB).
std::map<std::string, double> parse_jstat(const std::string& text) {
  std::istringstream in(text);
  std::string header, values;
  std::getline(in, header);
  std::getline(in, values);
  std::istringstream h(header), v(values);
  std::map<std::string, double> out;
  std::string col;
  double val;
  while (h >> col && v >> val) out[col] = val;
  return out;
}

TEST(Hsperfdata, MatchesJstatOfTheSameJvm) {
  const std::string data = fixture("g1_jdk17.bin");
  ASSERT_EQ(data.size(), 32768u);
  auto jstat = parse_jstat(fixture("g1_jdk17.jstat"));
  ASSERT_TRUE(jstat.count("EU") && jstat.count("OU") && jstat.count("YGC"));

  auto p = parse_hsperfdata(data);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(p->get("sun.gc.collector.0.invocations").value_or(-1), static_cast<int64_t>(jstat["YGC"]));
  EXPECT_EQ(p->get("sun.gc.collector.1.invocations").value_or(-1), static_cast<int64_t>(jstat["FGC"]));

  JvmMemory m = jvm_memory(*p);
  std::map<std::string, JvmSpace> by;
  for (const auto& s : m.heap) by[s.name] = s;
  ASSERT_EQ(by.size(), 4u) << "eden, s0, s1, old";
  // jstat prints KB with one decimal: agree to 0.05 KB.
  const double kb = 1024, tol = 0.05 * 1024 + 1;
  EXPECT_NEAR(by["eden"].used, jstat["EU"] * kb, tol);
  EXPECT_NEAR(by["eden"].committed, jstat["EC"] * kb, tol);
  EXPECT_NEAR(by["s0"].used, jstat["S0U"] * kb, tol);
  EXPECT_NEAR(by["s1"].used, jstat["S1U"] * kb, tol);
  EXPECT_NEAR(by["old"].used, jstat["OU"] * kb, tol);
  EXPECT_NEAR(by["old"].committed, jstat["OC"] * kb, tol);
  EXPECT_NEAR(m.heap_used(), (jstat["EU"] + jstat["OU"] + jstat["S0U"] + jstat["S1U"]) * kb, 4 * tol);
  ASSERT_TRUE(m.metaspace.has_value());
  EXPECT_NEAR(m.metaspace->used, jstat["MU"] * kb, tol);
  EXPECT_NEAR(m.metaspace->committed, jstat["MC"] * kb, tol);
  ASSERT_TRUE(m.class_space.has_value());
  EXPECT_NEAR(m.class_space->used, jstat["CCSU"] * kb, tol);
}

TEST(Hsperfdata, RejectsBadInput) {
  std::string data = fixture("g1_jdk17.bin");
  EXPECT_EQ(parse_hsperfdata("").error().code, Errc::malformed);
  EXPECT_EQ(parse_hsperfdata(data.substr(0, 20)).error().code, Errc::malformed);
  std::string bad_magic = data;
  bad_magic[0] = 0;
  EXPECT_EQ(parse_hsperfdata(bad_magic).error().code, Errc::malformed);
  // Cut in the middle of the entries: an entry runs past the end.
  EXPECT_EQ(parse_hsperfdata(data.substr(0, 2000)).error().code, Errc::malformed);
  // An entry length of 0 would loop forever if trusted.
  std::string zero_len = data;
  for (int i = 0; i < 4; ++i) zero_len[32 + i] = 0;
  EXPECT_EQ(parse_hsperfdata(zero_len).error().code, Errc::malformed);
  // Not yet accessible (a JVM still initialising the file).
  std::string inaccessible = data;
  inaccessible[7] = 0;
  EXPECT_EQ(parse_hsperfdata(inaccessible).error().code, Errc::unavailable);
}

TEST(Hsperfdata, PathFromMaps) {
  const std::string maps =
      "7f90cbe00000-7f90cbe04000 r-xp 00000000 fe:00 11 /usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so\n"
      "7f90cbe04000-7f90cbe0c000 rw-s 00000000 fe:00 10960897                   /tmp/hsperfdata_app/7\n";
  EXPECT_EQ(hsperfdata_path_from_maps(maps).value_or(""), "/tmp/hsperfdata_app/7");
  EXPECT_FALSE(hsperfdata_path_from_maps("7f90cbe04000-7f90cbe0c000 rw-s 0 fe:00 1 /tmp/hsperfdata_app/7 (deleted)\n"));
  EXPECT_FALSE(hsperfdata_path_from_maps("7f90cbe04000-7f90cbe0c000 rw-p 0 00:00 0 [heap]\n"));
  EXPECT_FALSE(hsperfdata_path_from_maps(""));
}

TEST(RuntimeDetect, FromExeAndMaps) {
  const std::string jvm_maps =
      "55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234 /usr/lib/jvm/java-17-openjdk-amd64/bin/java\n"
      "7f00a0000000-7f00a1000000 r-xp 00200000 fe:01 5678 /usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so\n"
      "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n";
  auto j = detect_runtime("/usr/lib/jvm/java-17-openjdk-amd64/bin/java", jvm_maps);
  EXPECT_EQ(j.runtime, Runtime::jvm);
  ASSERT_EQ(j.binaries.size(), 1u);
  EXPECT_EQ(j.binaries[0], "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so");

  auto n = detect_runtime("/usr/bin/node", "55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1 /usr/bin/node\n");
  EXPECT_EQ(n.runtime, Runtime::node);
  ASSERT_EQ(n.binaries.size(), 1u);
  EXPECT_EQ(n.binaries[0], "/usr/bin/node");

  // A shared-library Python: libpython first, the exe second.
  auto p = detect_runtime("/opt/py/bin/python3.11",
                          "7f00a0000000-7f00a1000000 r-xp 00000000 fe:01 9 /opt/py/lib/libpython3.11.so.1.0\n");
  EXPECT_EQ(p.runtime, Runtime::python);
  ASSERT_EQ(p.binaries.size(), 2u);
  EXPECT_EQ(p.binaries[0], "/opt/py/lib/libpython3.11.so.1.0");
  EXPECT_EQ(p.binaries[1], "/opt/py/bin/python3.11");

  // An embedder: uwsgi with libpython mapped is Python too; a replaced
  // binary's " (deleted)" suffix is dropped.
  auto u = detect_runtime("/usr/bin/uwsgi (deleted)",
                          "7f00a0000000-7f00a1000000 r-xp 00000000 fe:01 9 /usr/lib/libpython3.11.so.1.0 (deleted)\n");
  EXPECT_EQ(u.runtime, Runtime::python);
  EXPECT_EQ(u.binaries[0], "/usr/lib/libpython3.11.so.1.0");
  EXPECT_EQ(u.binaries[1], "/usr/bin/uwsgi");

  EXPECT_EQ(detect_runtime("/usr/bin/bash", "55d0c0a00000-55d0c0a01000 r--p 0 fe:01 1 /usr/bin/bash\n").runtime,
            Runtime::none);
  EXPECT_EQ(detect_runtime("", "").runtime, Runtime::none);
}

TEST(GcHistogram, ExportBoundsAreFineBounds) {
  const auto& fine = gc_fine_bounds_ns();
  ASSERT_EQ(fine.size(), static_cast<std::size_t>(GC_NBOUNDS));
  EXPECT_EQ(fine.front(), 10000u);
  EXPECT_EQ(fine.back(), 10000000000u);
  for (std::size_t i = 1; i < fine.size(); ++i) {
    ASSERT_GT(fine[i], fine[i - 1]);
    EXPECT_LE(static_cast<double>(fine[i]) / static_cast<double>(fine[i - 1]), 1.17) << i;
  }
  for (double b : gc_export_bounds_seconds()) {
    const auto ns = static_cast<uint64_t>(std::llround(b * 1e9));
    EXPECT_TRUE(std::find(fine.begin(), fine.end(), ns) != fine.end()) << b;
  }
}

TEST(GcHistogram, Quantiles) {
  std::vector<uint64_t> counts(GC_NBUCKETS, 0);
  EXPECT_TRUE(std::isnan(gc_quantile_seconds(counts, 0.5)));
  const auto& fine = gc_fine_bounds_ns();
  // 100 pauses all in the bucket (fine[i-1], fine[i]]: the median is its middle.
  const std::size_t i = 40;
  counts[i] = 100;
  const double lo = static_cast<double>(fine[i - 1]) / 1e9, hi = static_cast<double>(fine[i]) / 1e9;
  EXPECT_NEAR(gc_quantile_seconds(counts, 0.5), (lo + hi) / 2, 1e-12);
  EXPECT_NEAR(gc_quantile_seconds(counts, 1.0), hi, 1e-12);
  // Above 10 s: reported as the last bound, never beyond.
  counts.assign(GC_NBUCKETS, 0);
  counts[GC_NBUCKETS - 1] = 3;
  EXPECT_DOUBLE_EQ(gc_quantile_seconds(counts, 0.99), 10.0);
}

TEST(GcHistogram, KindNames) {
  EXPECT_STREQ(gc_kind_name(Runtime::jvm, 1), "full");
  EXPECT_STREQ(gc_kind_name(Runtime::jvm, 0), "minor");
  EXPECT_STREQ(gc_kind_name(Runtime::node, 1), "scavenge");
  EXPECT_STREQ(gc_kind_name(Runtime::node, 2), "mark_compact");
  EXPECT_STREQ(gc_kind_name(Runtime::python, 2), "gen2");
  EXPECT_STREQ(gc_kind_name(Runtime::python, 7), "other");
}

}  // namespace
}  // namespace memlens
