// Rust programs, built here by Debian's rustc: one on the system allocator
// (glibc's malloc and free), one whose #[global_allocator] calls jemalloc's
// mallocx/sdallocx/rallocx under the _rjem_ prefix, as tikv-jemallocator
// links it (Debian's static jemalloc with its symbols renamed): never
// through malloc or free. The eBPF allocation collector must count both
// exactly against the program's own count; so must the in-process sampler,
// linked into the jemalloc program, whose allocator wrapper calls its hooks.
#include <gtest/gtest.h>

#include <sstream>
#include <thread>

#include "tests/support/pprof_tool.h"
#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

// Builds tests/workloads/rust_alloc.rs into `dir`; `rjem` links the renamed
// jemalloc, `sampler` libmemlens-sampler.so as well, called by the
// allocator. Empty on failure (the reason in *why).
std::string build_rust(const std::string& dir, bool rjem, std::string* why, bool sampler = false) {
  const std::string src = std::string(MEMLENS_SOURCE_DIR) + "/tests/workloads/rust_alloc.rs";
  const std::string out = dir + (rjem ? "/rust_rjem" : "/rust_sys");
  std::string cmd = "/usr/bin/rustc -O -C force-frame-pointers=yes " + src + " -o " + out;
  if (rjem) {
    // Every public entry point of jemalloc gets tikv-jemallocator's prefix.
    const std::string lib = "/usr/lib/x86_64-linux-gnu/libjemalloc.a";
    if (run("nm " + lib + " 2>/dev/null | awk '$2 == \"T\" && $3 ~ /^(malloc|calloc|realloc|free|"
            "posix_memalign|aligned_alloc|memalign|valloc|mallocx|rallocx|xallocx|sallocx|dallocx|sdallocx|"
            "nallocx|mallctl|mallctlnametomib|mallctlbymib|malloc_stats_print|malloc_usable_size)$/ "
            "{print $3\" _rjem_\"$3}' | sort -u > " + dir + "/rjem.map && objcopy --redefine-syms=" + dir +
                "/rjem.map " + lib + " " + dir + "/librjem.a",
            why) != 0)
      return {};
    cmd += " --cfg rjem -L " + dir + " -l static=rjem -l dylib=stdc++ -l dylib=pthread -l dylib=dl -l dylib=m";
  }
  if (sampler) {
    const std::string lib = std::string(MEMLENS_BINARY_DIR) + "/lib";
    cmd += " --cfg sampler -L " + lib + " -C link-arg=-Wl,-rpath," + lib;
  }
  if (run(cmd + " 2>&1", why) != 0) return {};
  return out;
}

// The program waits at its baseline until memlensd reads `sel`: its work
// must then move memlensd's allocation and free counters by its own counts.
// The final truth in *t, the move of the bytes counter in *bytes.
void expect_work_counted(const Daemon& d, const std::string& truth, const std::map<std::string, std::string>& sel,
                         nlohmann::json* t, double* bytes) {
  ASSERT_EQ(latest_truth(truth)["phase"], "baseline") << "the program started its work before memlensd read it";
  auto value = [&](const char* name) { return find_sample(d.scrape(), name, sel).value_or(-1); };
  const double a0 = value("memlens_allocs_total"), f0 = value("memlens_frees_total"),
               b0 = value("memlens_alloc_bytes_total");
  ASSERT_TRUE(wait_until([&] { return latest_truth(truth)["phase"] == "done"; }, 20s));
  *t = latest_truth(truth);
  double allocs = 0;
  ASSERT_TRUE(wait_until([&] { return (allocs = value("memlens_allocs_total") - a0) == (*t)["allocs"].get<double>(); },
                         5s))
      << "allocations: memlens " << allocs << ", program " << (*t)["allocs"] << "\n" << d.log();
  EXPECT_EQ(value("memlens_frees_total") - f0, (*t)["frees"].get<double>());
  *bytes = value("memlens_alloc_bytes_total") - b0;
}

void counts_match(const std::string& program, bool rjem) {
  const std::string dir = make_temp_dir();
  std::string why;
  const std::string exe = build_rust(dir, rjem, &why);
  ASSERT_FALSE(exe.empty()) << why;
  if (rjem) {
    std::string syms;
    run("nm " + exe + " | grep -c ' T _rjem_mallocx$'; nm -D " + exe + " | grep -c ' T malloc$' || true", &syms);
    EXPECT_EQ(syms.substr(0, 2), "1\n") << "the program defines _rjem_mallocx: " << syms;
  }
  const std::string truth = dir + "/truth.jsonl";
  Child w = spawn({exe, truth, "4"}, dir + "/w.log");
  ASSERT_TRUE(wait_until([&] { return !latest_truth(truth).empty(); }, 10s));
  auto d = start_daemon("global: {tick_interval: 250ms, rescan_interval: 500ms}\n"
                        "targets:\n"
                        "  - name: " + program + "\n"
                        "    pid: " + std::to_string(w.pid()) + "\n"
                        "    alloc: {mode: full}\n");
  ASSERT_TRUE(d);
  REQUIRE_COLLECTOR(d, "alloc");
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}};
  ASSERT_TRUE(wait_until([&] {
    return find_sample(d->scrape(), "memlens_alloc_tracing", sel).value_or(0) == 1;
  }, 10s)) << d->log();
  nlohmann::json t;
  double bytes = 0;
  expect_work_counted(*d, truth, sel, &t, &bytes);
  if (::testing::Test::HasFatalFailure()) return;
  if (rjem) {
    // jemalloc is traced by address: requested bytes, exactly.
    EXPECT_EQ(bytes, t["bytes"].get<double>());
  } else {
    // glibc in header mode counts chunks: a little above what was asked.
    EXPECT_GE(bytes, t["bytes"].get<double>());
    EXPECT_LE(bytes, t["bytes"].get<double>() + 16.0 * t["allocs"].get<double>());
  }
  w.stop(SIGTERM, 5s);
}

}  // namespace

TEST(RustAlloc, OnTheSystemAllocatorEveryAllocationIsCounted) {
  if (!is_root()) GTEST_SKIP() << "needs root (eBPF uprobes)";
  counts_match("rust-system", false);
}

TEST(RustAlloc, WithPrefixedJemallocAsTikvLinksItEveryAllocationIsCounted) {
  if (!is_root()) GTEST_SKIP() << "needs root (eBPF uprobes)";
  counts_match("rust-rjem", true);
}

// The in-process sampler where LD_PRELOAD cannot reach: the jemalloc
// program links libmemlens-sampler.so and its allocator wrapper calls the
// sampler's hooks. Counts exact against the program's own; the site that
// keeps its blocks holds their bytes in the profile, within 10 %.
TEST(RustAlloc, WithPrefixedJemallocTheLinkedInSamplerCountsAndProfiles) {
  if (!is_root()) GTEST_SKIP() << "needs root (reads another process's memory)";
  const std::string dir = make_temp_dir();
  std::string why;
  const std::string exe = build_rust(dir, true, &why, true);
  ASSERT_FALSE(exe.empty()) << why;
  const std::string truth = dir + "/truth.jsonl";
  // A 4 KiB mean gap: ~1,500 samples of the ~6 MB kept.
  Child w = spawn({exe, truth, "4"}, dir + "/w.log", {"MEMLENS_SAMPLER_INTERVAL=4096"});
  ASSERT_TRUE(wait_until([&] { return !latest_truth(truth).empty(); }, 10s));
  auto d = start_daemon("global: {tick_interval: 250ms, rescan_interval: 500ms}\n"
                        "targets:\n"
                        "  - name: rust-sampled\n"
                        "    pid: " + std::to_string(w.pid()) + "\n");
  ASSERT_TRUE(d);
  REQUIRE_COLLECTOR(d, "sampler");
  const std::map<std::string, std::string> src{{"pid", std::to_string(w.pid())}, {"source", "sampler"}};
  ASSERT_TRUE(wait_until([&] { return find_sample(d->scrape(), "memlens_allocs_total", src).has_value(); }, 10s))
      << d->log();
  nlohmann::json t;
  double bytes = 0;
  expect_work_counted(*d, truth, src, &t, &bytes);
  if (::testing::Test::HasFatalFailure()) return;
  EXPECT_EQ(bytes, t["bytes"].get<double>());
  // The profile, rebuilt after the work.
  std::this_thread::sleep_for(2500ms);
  auto r = http_get(d->url("/debug/pprof/heap?target=rust-sampled"));
  ASSERT_EQ(r.status, 200) << r.body;
  write_text(dir + "/heap.pb.gz", r.body);
  const std::string top = pprof(dir, "-top -cum -unit=B -sample_index=inuse_space " + dir + "/heap.pb.gz");
  double kept = -1;
  std::istringstream in(top);
  for (std::string line; std::getline(in, line);) {
    if (line.find("keep_site") == std::string::npos) continue;
    std::istringstream cols(line);
    std::string flat, flat_pct, sum_pct, cum;
    cols >> flat >> flat_pct >> sum_pct >> cum;
    kept = std::atof(cum.c_str());
    break;
  }
  const double live = t["live"].get<double>();
  std::printf("keep_site holds %.0f B in use for %.0f B kept (%+.1f %%)\n", kept, live, 100 * (kept / live - 1));
  EXPECT_NEAR(kept, live, 0.10 * live) << top;
  w.stop(SIGTERM, 5s);
}

// Every allocation sampled from the first, the sampler preloaded into a Rust
// program on the system allocator. Rust's runtime asks glibc for the main
// thread's stack at start (pthread_getattr_np), which reads /proc/self/maps
// with stdio while holding the thread's lock: its malloc is the process's
// first, so its first sample. A sampler that asked glibc the same there
// waited for that lock forever (it did: 1 start in 5 at the default gap).
TEST(RustAlloc, TheSamplerSamplingEveryAllocationFromTheFirstNeverHangs) {
  const std::string dir = make_temp_dir();
  std::string why;
  const std::string exe = build_rust(dir, false, &why);
  ASSERT_FALSE(exe.empty()) << why;
  const std::string truth = dir + "/truth.jsonl";
  Child w = spawn({exe, truth, "0"}, dir + "/w.log",
                  {"LD_PRELOAD=" + std::string(MEMLENS_BINARY_DIR) + "/lib/libmemlens-sampler.so",
                   "MEMLENS_SAMPLER_INTERVAL=1"});
  EXPECT_TRUE(wait_until([&] { return latest_truth(truth).value("phase", "") == "done"; }, 30s))
      << "the program did not get through its start and its work";
  w.stop(SIGKILL, 5s);
}
