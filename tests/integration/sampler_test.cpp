// The in-process sampler and its consumer, against real processes: a
// workload preloaded with libmemlens-sampler.so (exact counts against its
// own, sampled in-use space against its live bytes, the leaking call site on
// top of `go tool pprof -top`), read from its page and through its probes; a
// third-party producer of the otel_memory contract; fork/exec/thread storms,
// full site tables and stack maps, and a process without the probes.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <thread>

#include "collectors/elf_symbols.h"
#include "tests/support/pprof_tool.h"
#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

std::string sampler_lib() { return std::string(MEMLENS_BINARY_DIR) + "/lib/libmemlens-sampler.so"; }

// Fetches the profile into `dir`/NAME.pb.gz; empty path on failure.
std::string fetch_profile(const Daemon& d, const std::string& query, const std::string& dir, const std::string& name) {
  auto r = http_get(d.url("/debug/pprof/heap?" + query));
  if (r.status != 200) return {};
  const std::string path = dir + "/" + name + ".pb.gz";
  write_text(path, r.body);
  return path;
}

// The line number (from 1) of the first line containing `what` after the
// first line containing `after` in the file at `path`; 0 when none.
int source_line_of(const std::string& path, const std::string& after, const std::string& what) {
  std::istringstream in(read_text(path));
  bool past = false;
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    ++n;
    if (!past) past = line.find(after) != std::string::npos;
    else if (line.find(what) != std::string::npos) return n;
  }
  return 0;
}

// The flat bytes `go tool pprof -top -unit=B` gives the function `name`
// (-1 when it is not listed).
double flat_bytes(const std::string& top, const std::string& name) {
  std::istringstream in(top);
  for (std::string line; std::getline(in, line);) {
    if (line.find(name) == std::string::npos) continue;
    std::istringstream cols(line);
    std::string flat;
    cols >> flat;
    if (!flat.empty() && flat.back() == 'B') flat.pop_back();
    return std::atof(flat.c_str());
  }
  return -1;
}

double sample_or(const Daemon& d, const std::string& name, const std::map<std::string, std::string>& sel,
                 double dflt = -1) {
  return find_sample(d.scrape(), name, sel).value_or(dflt);
}

}  // namespace

// `sampler:` as the entry says it: true (the page's sites, no trap) or
// probes (the library's otel_memory probes, as any consumer of the contract).
class SamplerRead : public ::testing::TestWithParam<std::string> {};
INSTANTIATE_TEST_SUITE_P(Sampler, SamplerRead, ::testing::Values("true", "probes"));

TEST_P(SamplerRead, ExactCountsSampledInuseAndTheLeakingSiteOnTop) {
  if (!is_root()) GTEST_SKIP() << "needs root (eBPF USDT)";
  const bool probes = GetParam() == "probes";
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/truth.jsonl";
  // A 16 KiB mean gap: ~2,500 samples of the 40 MiB kept, so the estimate's
  // own spread (~3 %) stays well inside the 10 % asked of it.
  Child w = spawn({workload_path("sampleload"), "--truth", truth, "--wait", "4", "--odd-stacks", "1"}, dir + "/w.log",
                  {"LD_PRELOAD=" + sampler_lib(), "MEMLENS_SAMPLER_INTERVAL=16384"});
  ASSERT_TRUE(wait_until([&] { return !latest_truth(truth).empty(); }, 10s));
  auto d = start_daemon("global: {tick_interval: 250ms, rescan_interval: 500ms}\n"
                        "targets:\n"
                        "  - name: sampled\n"
                        "    sampler: " + GetParam() + "\n"
                        "    pid: " + std::to_string(w.pid()) + "\n");
  ASSERT_TRUE(d);
  REQUIRE_COLLECTOR(d, "sampler");
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}},
      src{{"pid", std::to_string(w.pid())}, {"source", "sampler"}};
  if (probes)
    ASSERT_TRUE(wait_until([&] { return sample_or(*d, "memlens_sampler_usdt_attached", sel, 0) >= 1; }, 10s))
        << d->log();
  else
    ASSERT_TRUE(wait_until([&] { return sample_or(*d, "memlens_allocs_total", src) >= 0; }, 10s)) << d->log();
  // The baseline: the workload has not allocated since it wrote it.
  ASSERT_EQ(latest_truth(truth)["phase"], "baseline") << "the workload started before memlensd attached";
  const double allocs0 = sample_or(*d, "memlens_allocs_total", src), frees0 = sample_or(*d, "memlens_frees_total", src),
               bytes0 = sample_or(*d, "memlens_alloc_bytes_total", src);
  ASSERT_GE(allocs0, 0) << "the sampler page is read";
  ASSERT_TRUE(wait_until([&] { return latest_truth(truth)["phase"] == "done"; }, 60s));
  const auto t = latest_truth(truth);
  // Counters settle within a tick or two of the work's end.
  double allocs = 0;
  ASSERT_TRUE(wait_until([&] {
    allocs = sample_or(*d, "memlens_allocs_total", src) - allocs0;
    return allocs == t["allocs"].get<double>();
  }, 5s)) << "allocations: memlens " << allocs << ", workload " << t["allocs"];
  EXPECT_EQ(sample_or(*d, "memlens_frees_total", src) - frees0, t["frees"].get<double>());
  EXPECT_EQ(sample_or(*d, "memlens_alloc_bytes_total", src) - bytes0, t["alloc_bytes"].get<double>());
  const auto s = d->scrape();
  const double kept = find_sample(s, "memlens_sampler_samples_total", {{"pid", std::to_string(w.pid())},
                                                                       {"outcome", "kept"}}).value_or(0);
  EXPECT_GT(kept, 1000);
  EXPECT_EQ(find_sample(s, "memlens_sampler_samples_total", {{"pid", std::to_string(w.pid())},
                                                              {"outcome", "dropped"}}).value_or(-1), 0);
  const double fired = find_sample(s, "memlens_sampler_probes_fired_total", sel).value_or(-1);
  const std::string maps = read_text("/proc/" + std::to_string(w.pid()) + "/maps");
  if (probes) {
    // Every sample of the work fired its probe (those of start-up, before
    // the attach, did not). The probe sites are 5-byte nops, which this
    // kernel turns into calls to a trampoline it maps into the process
    // (instead of an int3 trap a hit).
    EXPECT_GT(fired, 1000);
    EXPECT_LE(fired, kept);
    EXPECT_NE(maps.find("[uprobes-trampoline]"), std::string::npos) << "the otel_memory probes were not optimized";
  } else {
    // Read from the page: nothing attached, nothing fired, no trap.
    EXPECT_EQ(fired, 0);
    EXPECT_FALSE(find_sample(s, "memlens_sampler_usdt_attached", sel));
    EXPECT_EQ(maps.find("[uprobes-trampoline]"), std::string::npos);
    EXPECT_GE(find_sample(s, "memlens_sampler_sites", sel).value_or(0), 2) << "leak_site and churn_site at least";
  }

  // The profile, as go tool pprof reads it, once it was rebuilt after the work.
  std::this_thread::sleep_for(2500ms);
  const std::string path = fetch_profile(*d, "target=sampled&pid=" + std::to_string(w.pid()), dir, "heap");
  ASSERT_FALSE(path.empty()) << d->log();
  const ProfileTotals p = raw_totals(pprof(dir, "-raw " + path));
  const double live = t["live_bytes"].get<double>(), allocated = t["alloc_bytes"].get<double>();
  std::printf("sampled: %d sites; inuse_space %.0f for %.0f live (%+.1f %%); alloc_space %.0f for %.0f (%+.1f %%)\n",
              p.samples, p.inuse_space, live, 100 * (p.inuse_space / live - 1), p.alloc_space, allocated,
              100 * (p.alloc_space / allocated - 1));
  ASSERT_GE(allocated, 50e6) << "at least 50 MB allocated";
  EXPECT_NEAR(p.inuse_space, live, 0.10 * live);
  EXPECT_NEAR(p.alloc_space, allocated, 0.10 * allocated);
  EXPECT_EQ(top_function(pprof(dir, "-top -sample_index=inuse_space " + path)), "leak_site");
  EXPECT_EQ(top_function(pprof(dir, "-top -sample_index=alloc_space " + path)), "churn_site");
  // The two blocks kept on a signal stack and a coroutine's: sampled, and
  // their frames walked within those stacks (4 MiB blocks are sampled with
  // a weight of their size at this gap).
  const std::string top = pprof(dir, "-top -unit=B -sample_index=inuse_space " + path);
  EXPECT_EQ(flat_bytes(top, "odd_keep"), 8 << 20) << top;
  // By line (the workload is built with -g): the malloc call in leak_site.
  const auto [fn, where] = top_entry(pprof(dir, "-lines -top -sample_index=inuse_space " + path));
  std::printf("top by line: %s %s\n", fn.c_str(), where.c_str());
  EXPECT_EQ(fn, "leak_site");
  EXPECT_EQ(where, std::string(MEMLENS_SOURCE_DIR) + "/tests/workloads/sampleload.c:" +
                       std::to_string(source_line_of(std::string(MEMLENS_SOURCE_DIR) + "/tests/workloads/sampleload.c",
                                                     "leak_site(", "malloc(")));
  // The target-wide profile (every process of the target) reads the same.
  const std::string all = fetch_profile(*d, "target=sampled", dir, "all");
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(raw_totals(pprof(dir, "-raw " + all)).inuse_space, p.inuse_space);
  w.stop(SIGTERM, 5s);
}

TEST(Sampler, AThirdPartyProducerIsConsumedTheSameWay) {
  if (!is_root()) GTEST_SKIP() << "needs root (eBPF USDT)";
  const std::string dir = make_temp_dir();
  const std::string go = dir + "/go", out = dir + "/producer.out";
  // Fires the contract from its own executable (<sys/sdt.h>, no semaphore).
  Child w = spawn({workload_path("sdtproducer"), go}, out);
  auto d = start_daemon("global: {tick_interval: 250ms, rescan_interval: 500ms}\n"
                        "targets:\n"
                        "  - name: producer\n"
                        "    pid: " + std::to_string(w.pid()) + "\n");
  ASSERT_TRUE(d);
  REQUIRE_COLLECTOR(d, "sampler");
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}};
  ASSERT_TRUE(wait_until([&] { return sample_or(*d, "memlens_sampler_usdt_attached", sel, 0) >= 1; }, 10s))
      << d->log();
  // No sampler page in this process: no counts claimed from one.
  EXPECT_FALSE(find_sample(d->scrape(), "memlens_allocs_total", {{"pid", std::to_string(w.pid())},
                                                                  {"source", "sampler"}}));
  write_text(go, "");
  nlohmann::json truth;
  ASSERT_TRUE(wait_until([&] { return !(truth = latest_truth(out)).empty(); }, 10s));
  ProfileTotals p;
  ASSERT_TRUE(wait_until([&] {
    const std::string path = fetch_profile(*d, "target=producer", dir, "heap");
    if (path.empty()) return false;
    p = raw_totals(pprof(dir, "-raw " + path));
    return p.inuse_space == truth["inuse_space"].get<double>();
  }, 10s)) << "inuse_space " << p.inuse_space << ", producer " << truth["inuse_space"];
  // The producer's weights, exactly: nothing estimated on our side.
  EXPECT_EQ(p.alloc_space, truth["alloc_space"].get<double>());
  EXPECT_EQ(p.inuse_objects, truth["inuse_objects"].get<double>());
  EXPECT_EQ(top_function(pprof(dir, "-top -sample_index=inuse_space " + dir + "/heap.pb.gz")), "producer_alloc");
  // Lines: the producer's own from its -g build; libc's local function that
  // called main, named with its line from libc's debug file (libc6-dbg)
  // where one is installed, as a stripped libc names it nowhere else.
  const std::string traces = pprof(dir, "-lines -traces " + dir + "/heap.pb.gz");
  EXPECT_NE(traces.find("producer_alloc " MEMLENS_SOURCE_DIR "/tests/workloads/sdtproducer.c:"), std::string::npos)
      << traces;
  auto libc = memlens::elf::ElfFile::open("/lib/x86_64-linux-gnu/libc.so.6");
  ASSERT_TRUE(libc.ok());
  if (memlens::elf::debug_file_for("/usr/lib/debug", (*libc)->build_id())) {
    std::printf("libc's debug file is installed: its frame is named from it\n");
    EXPECT_NE(traces.find("__libc_start_call_main "), std::string::npos) << traces;
    EXPECT_NE(traces.find("libc_start_call_main.h:"), std::string::npos) << traces;
  }
  w.stop(SIGTERM, 5s);
}

TEST(Sampler, ForkExecAndThreadStormsFullSiteTablesAndAProcessWithoutProbes) {
  if (!is_root()) GTEST_SKIP() << "needs root (eBPF USDT)";
  const std::string dir = make_temp_dir();
  const std::string t1 = dir + "/threads.jsonl", t2 = dir + "/exec.jsonl";
  const std::vector<std::string> env{"LD_PRELOAD=" + sampler_lib(), "MEMLENS_SAMPLER_INTERVAL=8192"};
  // 16 threads, then 100 forked children that allocate and exit; room for
  // two sites in its own table, so the rest are dropped and counted.
  std::vector<std::string> env_a = env;
  env_a.push_back("MEMLENS_SAMPLER_SITES=2");
  Child a = spawn({workload_path("sampleload"), "--truth", t1, "--wait", "3", "--threads", "16", "--forks", "100",
                   "--leak", "8000000", "--churn", "8000000"},
                  dir + "/a.log", env_a);
  // 100 children that exec a program the sampler is preloaded into too.
  Child b = spawn({workload_path("sampleload"), "--truth", t2, "--wait", "3", "--forks", "100", "--exec", "1",
                   "--leak", "1000000", "--churn", "1000000"},
                  dir + "/b.log", env);
  // A process with neither the page nor the probes.
  Child plain = spawn({workload_path("heapload"), "--hold", "1000000", "--churn", "1000"}, dir + "/plain.log");
  ASSERT_TRUE(wait_until([&] { return !latest_truth(t1).empty() && !latest_truth(t2).empty(); }, 10s));
  // The exec storm read through its probes: two stacks fit in the
  // kernel's map, the rest are counted as dropped.
  auto d = start_daemon("global: {tick_interval: 250ms, rescan_interval: 500ms}\n"
                        "bpf: {max_stacks: 2}\n"
                        "targets:\n"
                        "  - name: storm\n"
                        "    pid: " + std::to_string(a.pid()) + "\n"
                        "  - name: execs\n"
                        "    sampler: probes\n"
                        "    pid: " + std::to_string(b.pid()) + "\n"
                        "  - name: plain\n"
                        "    pid: " + std::to_string(plain.pid()) + "\n");
  ASSERT_TRUE(d);
  REQUIRE_COLLECTOR(d, "sampler");
  const std::map<std::string, std::string> sa{{"pid", std::to_string(a.pid())}, {"source", "sampler"}};
  ASSERT_TRUE(wait_until([&] { return find_sample(d->scrape(), "memlens_sampler_usdt_attached",
                                                  {{"pid", std::to_string(b.pid())}}).value_or(0) >= 1; }, 10s));
  ASSERT_TRUE(wait_until([&] { return sample_or(*d, "memlens_allocs_total", sa) >= 0; }, 10s));
  const double allocs0 = sample_or(*d, "memlens_allocs_total", sa);
  ASSERT_TRUE(wait_until([&] { return latest_truth(t1)["phase"] != "baseline" && latest_truth(t2)["phase"] != "baseline"; },
                         60s));
  EXPECT_EQ(latest_truth(t1)["phase"], "done") << "every forked child exited cleanly";
  EXPECT_EQ(latest_truth(t2)["phase"], "done") << "every exec'd child exited cleanly";
  EXPECT_TRUE(a.running() && b.running() && plain.running());
  // 16 threads: the workload's own count, plus what thread start-up
  // allocates inside glibc (a few blocks per thread), never fewer.
  const double want = latest_truth(t1)["allocs"].get<double>();
  double got = 0;
  wait_until([&] { return (got = sample_or(*d, "memlens_allocs_total", sa) - allocs0) >= want; }, 5s);
  EXPECT_GE(got, want);
  EXPECT_LE(got, want + 16 * 8) << "thread start-up allocations only";
  EXPECT_GT(find_sample(d->scrape(), "memlens_sampler_bpf_drops_total", {{"reason", "stack"}}).value_or(0), 0)
      << "a full stack map is counted";
  // The storm's own table: two sites, every other sample dropped and
  // counted; its profile holds the two.
  const std::map<std::string, std::string> pa{{"pid", std::to_string(a.pid())}};
  EXPECT_EQ(sample_or(*d, "memlens_sampler_sites", pa), 2);
  EXPECT_GT(find_sample(d->scrape(), "memlens_sampler_samples_total", {{"pid", std::to_string(a.pid())},
                                                                        {"outcome", "dropped"}}).value_or(0), 0);
  std::this_thread::sleep_for(2500ms);
  const std::string storm = fetch_profile(*d, "target=storm&pid=" + std::to_string(a.pid()), dir, "storm");
  ASSERT_FALSE(storm.empty());
  EXPECT_EQ(raw_totals(pprof(dir, "-raw " + storm)).samples, 2);
  // The process without probes: nothing claimed, no profile.
  EXPECT_FALSE(find_sample(d->scrape(), "memlens_sampler_usdt_attached", {{"pid", std::to_string(plain.pid())}}));
  EXPECT_FALSE(find_sample(d->scrape(), "memlens_allocs_total", {{"pid", std::to_string(plain.pid())},
                                                                  {"source", "sampler"}}));
  EXPECT_EQ(http_get(d->url("/debug/pprof/heap?target=plain")).status, 404);
  EXPECT_EQ(http_get(d->url("/debug/pprof/heap?target=nosuch")).status, 404);
  EXPECT_EQ(http_get(d->url("/debug/pprof/heap")).status, 400);
  EXPECT_EQ(http_get(d->url("/debug/pprof/heap?target=storm&pid=x1")).status, 400);
  EXPECT_EQ(http_get(d->url("/healthz")).status, 200);
  a.stop(SIGTERM, 5s);
  b.stop(SIGTERM, 5s);
  plain.stop(SIGTERM, 5s);
}

TEST(Sampler, ChildrenCanRunWithoutIt) {
  // MEMLENS_SAMPLER_CHILDREN=0: the preloaded process keeps the sampler,
  // the programs it execs do not get it.
  std::string out;
  ASSERT_EQ(run("env MEMLENS_SAMPLER_CHILDREN=0 LD_PRELOAD=" + sampler_lib() +
                    " sh -c 'grep -c memlens-sampler /proc/$$/maps; exec sh -c \"grep -c memlens-sampler "
                    "/proc/\\$\\$/maps || true\"'",
                &out),
            0)
      << out;
  std::istringstream in(out);
  int parent = -1, child = -1;
  in >> parent >> child;
  EXPECT_GT(parent, 0) << out;
  EXPECT_EQ(child, 0) << out;
  // Without the switch, the exec'd program has it too.
  ASSERT_EQ(run("env LD_PRELOAD=" + sampler_lib() +
                    " sh -c 'exec sh -c \"grep -c memlens-sampler /proc/\\$\\$/maps\"'",
                &out),
            0);
  EXPECT_GT(std::atoi(out.c_str()), 0) << out;
}

// A reload between the page (`sampler: true`) and the probes (`sampler:
// probes`) starts the target's sampler state over: a profile is read one way
// or the other, never both added up, whichever way the reload goes.
TEST(Sampler, AReloadBetweenPageAndProbesCountsNothingTwice) {
  if (!is_root()) GTEST_SKIP() << "needs root (eBPF USDT)";
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/truth.jsonl";
  // 16 MiB held, 2000 of its ~3300 blocks replaced a second.
  Child w = spawn({workload_path("heapload"), "--hold", std::to_string(16 << 20), "--churn", "2000", "--truth", truth},
                  dir + "/w.log", {"LD_PRELOAD=" + sampler_lib(), "MEMLENS_SAMPLER_INTERVAL=16384"});
  ASSERT_TRUE(wait_until([&] { return !latest_truth(truth).empty(); }, 10s));
  const std::string entry = "global: {tick_interval: 250ms, rescan_interval: 500ms}\n"
                            "targets:\n"
                            "  - name: sampled\n"
                            "    pid: " + std::to_string(w.pid()) + "\n";
  auto d = start_daemon(entry);
  ASSERT_TRUE(d);
  REQUIRE_COLLECTOR(d, "sampler");
  const std::map<std::string, std::string> sel{{"pid", std::to_string(w.pid())}};
  const double held = latest_truth(truth)["live_bytes"].get<double>();
  double inuse = -1;
  auto profile_inuse = [&] {
    const std::string path = fetch_profile(*d, "target=sampled", dir, "heap");
    return inuse = path.empty() ? -1 : raw_totals(pprof(dir, "-raw " + path)).inuse_space;
  };
  auto attached = [&] { return find_sample(d->scrape(), "memlens_sampler_usdt_attached", sel).value_or(0); };
  auto reload = [&](const std::string& yaml) {
    write_text(d->config_path, yaml);
    return ::kill(d->child.pid(), SIGHUP) == 0;
  };
  // From the page: what it holds.
  ASSERT_TRUE(wait_until([&] { return std::abs(profile_inuse() - held) < 0.1 * held; }, 10s))
      << "in use " << inuse << " for " << held << " held\n" << d->log();
  // Through the probes: attached, and never the page's sites on top of what
  // they report (which grows toward what it holds as its blocks are replaced).
  ASSERT_TRUE(reload(entry + "    sampler: probes\n"));
  ASSERT_TRUE(wait_until([&] { return attached() >= 1; }, 10s)) << d->log();
  for (int i = 0; i < 4; ++i) {
    std::this_thread::sleep_for(1s);
    EXPECT_LT(profile_inuse(), 1.1 * held) << "the page's sites and the probes' added up";
  }
  EXPECT_GT(inuse, 0) << "the probes report what was replaced since they were attached";
  // Back to the page: the probes detached, the kernel's sites forgotten.
  ASSERT_TRUE(reload(entry));
  ASSERT_TRUE(wait_until([&] { return attached() == 0; }, 10s)) << d->log();
  std::this_thread::sleep_for(2500ms);  // a profile rebuilt since
  EXPECT_NEAR(profile_inuse(), held, 0.1 * held);
  w.stop(SIGTERM, 5s);
}
