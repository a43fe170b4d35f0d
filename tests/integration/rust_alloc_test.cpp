// Rust programs, built here by Debian's rustc: one on the system allocator
// (glibc's malloc and free), one whose #[global_allocator] calls jemalloc's
// mallocx/sdallocx/rallocx under the _rjem_ prefix, as tikv-jemallocator
// links it (Debian's static jemalloc with its symbols renamed): never
// through malloc or free. The eBPF allocation collector must count both
// exactly against the program's own count.
#include <gtest/gtest.h>

#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

// Builds tests/workloads/rust_alloc.rs into `dir`; `rjem` links the renamed
// jemalloc. Empty on failure (the reason in *why).
std::string build_rust(const std::string& dir, bool rjem, std::string* why) {
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
  if (run(cmd + " 2>&1", why) != 0) return {};
  return out;
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
  ASSERT_EQ(latest_truth(truth)["phase"], "baseline") << "the program started its work before the probes were in";
  auto value = [&](const char* name) { return find_sample(d->scrape(), name, sel).value_or(-1); };
  const double a0 = value("memlens_allocs_total"), f0 = value("memlens_frees_total"),
               b0 = value("memlens_alloc_bytes_total");
  ASSERT_TRUE(wait_until([&] { return latest_truth(truth)["phase"] == "done"; }, 20s));
  const auto t = latest_truth(truth);
  double allocs = 0;
  ASSERT_TRUE(wait_until([&] { return (allocs = value("memlens_allocs_total") - a0) == t["allocs"].get<double>(); },
                         5s))
      << program << ": allocations memlens " << allocs << ", program " << t["allocs"] << "\n" << d->log();
  EXPECT_EQ(value("memlens_frees_total") - f0, t["frees"].get<double>());
  if (rjem) {
    // jemalloc is traced by address: requested bytes, exactly.
    EXPECT_EQ(value("memlens_alloc_bytes_total") - b0, t["bytes"].get<double>());
  } else {
    // glibc in header mode counts chunks: a little above what was asked.
    const double bytes = value("memlens_alloc_bytes_total") - b0;
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
