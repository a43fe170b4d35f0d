// The heap collector against real processes: glibc targets started before
// memlensd, read from outside with process_vm_readv, compared with the
// mallinfo2() each workload calls on itself (tests/workloads/heap_truth.c);
// and the targets it cannot read (static and stripped, jemalloc, switched
// off, exiting mid-walk), which must get a reason and break nothing.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

#define REQUIRE_ROOT() \
  if (!is_root()) GTEST_SKIP() << "needs root (process_vm_readv on processes that are not our children)"

double wall_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string targets_yaml(const std::vector<std::pair<std::string, pid_t>>& targets, const std::string& extra = "") {
  std::string y = "global: {tick_interval: 250ms, rescan_interval: 500ms}\ntargets:\n";
  for (const auto& [name, pid] : targets)
    y += "  - {name: " + name + ", pid: " + std::to_string(pid) + extra + "}\n";
  return y;
}

std::map<std::string, std::string> of(pid_t pid) { return {{"pid", std::to_string(pid)}}; }

// Every complete line of a truth file.
std::vector<nlohmann::json> truth_lines(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::istringstream in(read_text(path));
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded()) out.push_back(std::move(j));
  }
  return out;
}

// A workload started now, steady (all its blocks in place) before we go on.
struct Workload {
  Child child;
  std::string truth;
};

Workload start_workload(const std::string& dir, const std::string& name, std::vector<std::string> args) {
  Workload w;
  w.truth = dir + "/" + name + ".jsonl";
  std::vector<std::string> argv{workload_path(name), "--truth", w.truth};
  argv.insert(argv.end(), args.begin(), args.end());
  w.child = spawn(argv, dir + "/" + name + ".log");
  EXPECT_TRUE(wait_until([&] { return latest_truth(w.truth).value("phase", "") == "steady"; }, 60s))
      << name << " never became steady";
  return w;
}

// The daemon's figures for one pid, once published.
std::vector<PromSample> figures(const Daemon& d, pid_t pid, std::chrono::seconds timeout = 20s) {
  std::vector<PromSample> s;
  wait_until([&] {
    s = d.scrape();
    return find_sample(s, "memlens_allocator_inuse_bytes", of(pid)).has_value();
  }, timeout);
  return s;
}

// In use and fragmentation against the workload's latest mallinfo2().
void expect_matches_truth(const std::vector<PromSample>& s, pid_t pid, const std::string& truth, const char* what) {
  const auto t = latest_truth(truth);
  const double want = t["uordblks"].get<double>() + t["hblkhd"].get<double>();
  const double frag_want = t["fordblks"].get<double>() / t["arena"].get<double>();
  auto inuse = find_sample(s, "memlens_allocator_inuse_bytes", of(pid));
  auto frag = find_sample(s, "memlens_allocator_fragmentation_ratio", of(pid));
  ASSERT_TRUE(inuse && frag) << what << ": no figures";
  std::printf("%s: in use memlens %.0f, mallinfo2 %.0f (%+.4f %%); fragmentation %.4f vs %.4f; arenas %.0f\n", what,
              *inuse, want, (*inuse - want) / want * 100, *frag, frag_want,
              find_sample(s, "memlens_allocator_arenas", of(pid)).value_or(-1));
  EXPECT_NEAR(*inuse, want, want * 0.01) << what << ": in use vs uordblks + hblkhd";
  EXPECT_NEAR(*frag, frag_want, 0.02) << what << ": fragmentation vs fordblks / arena";
  EXPECT_EQ(find_sample(s, "memlens_allocator_readable", {{"pid", std::to_string(pid)}, {"reason", "ok"}}), 1.0);
}

}  // namespace

// One thread churning 5k replacements a second; debug symbols hidden (an
// empty --path.debug), so libc's code is decoded as on a production host.
TEST(HeapBooks, SingleThreadedWithChurnDecodedLocation) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  auto w = start_workload(dir, "heap_truth", {"--blocks", "60000", "--churn", "5000"});
  const std::string nodebug = make_temp_dir("memlens-nodebug");
  auto d = start_daemon(targets_yaml({{"single", w.child.pid()}}), {"--path.debug=" + nodebug, "--log.level=debug"});
  ASSERT_TRUE(d);
  auto s = figures(*d, w.child.pid());
  expect_matches_truth(s, w.child.pid(), w.truth, "single thread, churn");
  EXPECT_EQ(find_sample(s, "memlens_allocator_arenas", of(w.child.pid())), 1.0);
  EXPECT_NE(d->log().find("decoded: mallinfo2"), std::string::npos) << d->log();
}

// Six threads, each in its own arena; debug symbols as installed.
TEST(HeapBooks, ThreadArenas) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  auto w = start_workload(dir, "heap_truth", {"--threads", "6", "--blocks", "20000"});
  auto d = start_daemon(targets_yaml({{"threads", w.child.pid()}}));
  ASSERT_TRUE(d);
  auto s = figures(*d, w.child.pid());
  expect_matches_truth(s, w.child.pid(), w.truth, "6 threads");
  EXPECT_GE(find_sample(s, "memlens_allocator_arenas", of(w.child.pid())).value_or(0), 3.0)
      << "thread arenas were not followed";
}

// Every other block freed: half the arena is free chunks that cannot merge.
TEST(HeapBooks, HolesShowFragmentation) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  auto w = start_workload(dir, "heap_truth", {"--threads", "2", "--blocks", "50000", "--holes"});
  auto d = start_daemon(targets_yaml({{"holes", w.child.pid()}}));
  ASSERT_TRUE(d);
  auto s = figures(*d, w.child.pid());
  expect_matches_truth(s, w.child.pid(), w.truth, "holes");
  EXPECT_GT(find_sample(s, "memlens_allocator_fragmentation_ratio", of(w.child.pid())).value_or(0), 0.35);
  EXPECT_GT(find_sample(s, "memlens_allocator_free_chunks", of(w.child.pid())).value_or(0), 40000);
}

// Blocks above the mmap threshold: chunks of their own, counted from mp_.
TEST(HeapBooks, MmappedChunks) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  auto w = start_workload(dir, "heap_truth", {"--blocks", "5000", "--large", "12"});
  auto d = start_daemon(targets_yaml({{"mmapped", w.child.pid()}}));
  ASSERT_TRUE(d);
  auto s = figures(*d, w.child.pid());
  expect_matches_truth(s, w.child.pid(), w.truth, "mmapped");
  const double hblkhd = latest_truth(w.truth)["hblkhd"].get<double>();
  EXPECT_GE(hblkhd, 12.0 * (1 << 20));
  EXPECT_EQ(find_sample(s, "memlens_allocator_mmapped_bytes", of(w.child.pid())), hblkhd);
}

// 100k malloc/free a second across four threads. Every published value must
// lie within what the workload's own mallinfo2() saw around the walk (it
// samples every 5 ms), and the latest within 1 %.
TEST(HeapBooks, HeavyChurnStaysWithinWhatTheWorkloadSaw) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  auto w = start_workload(dir, "heap_truth",
                          {"--threads", "4", "--blocks", "20000", "--churn", "100000", "--report-ms", "100"});
  auto d = start_daemon(targets_yaml({{"churn", w.child.pid()}}));
  ASSERT_TRUE(d);
  ASSERT_FALSE(figures(*d, w.child.pid()).empty());
  const double ops0 = latest_truth(w.truth)["ops"].get<double>(), t0 = wall_now();
  struct Seen { double walked_by, walked_after, inuse, frag; };
  std::vector<Seen> seen;
  while (wall_now() - t0 < 10) {
    const double before = wall_now();
    auto s = d->scrape();
    auto inuse = find_sample(s, "memlens_allocator_inuse_bytes", of(w.child.pid()));
    auto frag = find_sample(s, "memlens_allocator_fragmentation_ratio", of(w.child.pid()));
    auto age = find_sample(s, "memlens_allocator_books_age_seconds", of(w.child.pid()));
    if (inuse && frag && age) seen.push_back({before - *age, before - *age - 0.25 - 0.05, *inuse, *frag});
    std::this_thread::sleep_for(230ms);
  }
  std::this_thread::sleep_for(300ms);  // the windows after the last walk
  const double rate = (latest_truth(w.truth)["ops"].get<double>() - ops0) / (wall_now() - t0);
  const auto lines = truth_lines(w.truth);
  ASSERT_GT(seen.size(), 30u);
  int checked = 0;
  for (const auto& v : seen) {
    // The walk ran between the tick before the scrape and the scrape.
    double lo = 1e300, hi = 0, flo = 1e300, fhi = 0;
    for (const auto& l : lines) {
      if (l["time"].get<double>() < v.walked_after || l["window_start"].get<double>() > v.walked_by + 0.05) continue;
      lo = std::min(lo, l["inuse_min"].get<double>());
      hi = std::max(hi, l["inuse_max"].get<double>());
      flo = std::min(flo, l["frag_min"].get<double>());
      fhi = std::max(fhi, l["frag_max"].get<double>());
    }
    if (hi == 0) continue;
    ++checked;
    EXPECT_GE(v.inuse, lo) << "published in use below anything the workload saw then";
    EXPECT_LE(v.inuse, hi) << "published in use above anything the workload saw then";
    EXPECT_GE(v.frag, flo - 1e-6);
    EXPECT_LE(v.frag, fhi + 1e-6);
  }
  EXPECT_GT(checked, 25);
  auto s = d->scrape();
  expect_matches_truth(s, w.child.pid(), w.truth, "heavy churn");
  const double ok = find_sample(s, "memlens_allocator_walks_total", {{"result", "consistent"}}).value_or(-1);
  const double bad = find_sample(s, "memlens_allocator_walks_total", {{"result", "inconsistent"}}).value_or(-1);
  const double kept = find_sample(s, "memlens_allocator_walk_failures_total").value_or(-1);
  std::printf("heavy churn: %.0f malloc/free a second; %d values checked; walks %.0f consistent, %.0f inconsistent, "
              "%.0f collections kept the previous figures\n", rate, checked, ok, bad, kept);
  EXPECT_GT(rate, 80000) << "the workload did not churn as asked";
  EXPECT_GE(ok, 20);
  EXPECT_GE(bad, 0) << "inconsistent walks are counted";
}

// Targets exiting while memlensd walks their heaps (a big heap with holes:
// a walk takes a good part of a tick): the walk stops, nothing else breaks.
TEST(HeapBooks, TargetsExitingMidWalk) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  auto small = start_workload(dir, "heap_truth", {"--blocks", "2000"});
  std::vector<Workload> big;
  for (int i = 0; i < 3; ++i)
    big.push_back(start_workload(dir, "heap_truth", {"--blocks", "300000", "--holes", "--min", "32", "--max", "256"}));
  std::vector<std::pair<std::string, pid_t>> t{{"small", small.child.pid()}};
  for (auto& b : big) t.push_back({"big" + std::to_string(t.size()), b.child.pid()});
  auto d = start_daemon(targets_yaml(t));
  ASSERT_TRUE(d);
  ASSERT_FALSE(figures(*d, big[0].child.pid()).empty()) << d->log();
  std::mt19937 rng(42);
  for (auto& b : big) {
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + rng() % 400));
    b.child.stop(SIGKILL, 2s);
  }
  std::this_thread::sleep_for(1500ms);
  ASSERT_TRUE(d->child.running()) << d->log();
  EXPECT_EQ(http_get(d->url("/healthz")).status, 200);
  auto s = figures(*d, small.child.pid());
  expect_matches_truth(s, small.child.pid(), small.truth, "survivor");
  for (auto& b : big) EXPECT_FALSE(find_sample(s, "memlens_allocator_inuse_bytes", of(b.child.pid())));
  std::printf("collector errors not_found: %.0f\n",
              find_sample(s, "memlens_collector_errors_total", {{"collector", "heap"}, {"reason", "not_found"}})
                  .value_or(-1));
}

// glibc linked statically: the books are in the executable, found by its
// own symbols. Stripped as well: nothing names them, and a reason says so.
TEST(HeapBooks, StaticGlibcWithAndWithoutSymbols) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  auto w = start_workload(dir, "heap_truth_static", {"--threads", "2", "--blocks", "20000"});
  // Static and stripped; it waits for a start file that never comes.
  Child stripped = spawn({workload_path("mmapload_static"), "--truth", dir + "/mm.jsonl", "--start", dir + "/never"},
                         dir + "/stripped.log");
  std::this_thread::sleep_for(300ms);
  ASSERT_TRUE(stripped.running()) << read_text(dir + "/stripped.log");
  auto d = start_daemon(targets_yaml({{"static", w.child.pid()}, {"stripped", stripped.pid()}}), {"--log.level=debug"});
  ASSERT_TRUE(d);
  auto s = figures(*d, w.child.pid());
  expect_matches_truth(s, w.child.pid(), w.truth, "static glibc");
  EXPECT_NE(d->log().find("own_symbols"), std::string::npos) << d->log();
  std::optional<double> reason;
  wait_until([&] {
    s = d->scrape();
    reason = find_sample(s, "memlens_allocator_readable", {{"pid", std::to_string(stripped.pid())}, {"reason", "no_symbols"}});
    return reason.has_value();
  }, 10s);
  EXPECT_EQ(reason, 0.0) << "static and stripped: reason no_symbols";
  EXPECT_TRUE(find_sample(s, "memlens_rss_bytes", of(stripped.pid()))) << "the other collectors go on";
  EXPECT_FALSE(find_sample(s, "memlens_allocator_inuse_bytes", of(stripped.pid())));
}

// jemalloc keeps its own books (not read here yet): a reason, no figures.
TEST(HeapBooks, JemallocGetsAReason) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/je.jsonl";
  Child je = spawn({workload_path("alloc_truth_jemalloc"), "--truth", truth, "--blocks", "5000", "--ops", "5000"});
  ASSERT_TRUE(wait_until([&] { return latest_truth(truth).value("phase", "") == "steady"; }, 30s));
  auto d = start_daemon(targets_yaml({{"je", je.pid()}}));
  ASSERT_TRUE(d);
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_allocator_readable", of(je.pid())).has_value();
  }, 10s)) << d->log();
  EXPECT_EQ(find_sample(s, "memlens_allocator_readable",
                        {{"pid", std::to_string(je.pid())}, {"allocator", "jemalloc"}, {"reason", "unsupported_allocator"}}),
            0.0);
  EXPECT_FALSE(find_sample(s, "memlens_allocator_inuse_bytes", of(je.pid())));
  EXPECT_TRUE(find_sample(s, "memlens_rss_bytes", of(je.pid())));
  EXPECT_EQ(find_sample(s, "memlens_collector_success", {{"collector", "heap"}}), 1.0);
}

// targets[].heap: false: not read at all.
TEST(HeapBooks, SwitchedOffPerTarget) {
  REQUIRE_ROOT();
  const std::string dir = make_temp_dir();
  auto w = start_workload(dir, "heap_truth", {"--blocks", "2000"});
  auto d = start_daemon(targets_yaml({{"off", w.child.pid()}}, ", heap: false"));
  ASSERT_TRUE(d);
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_allocator_readable", of(w.child.pid())).has_value();
  }, 10s));
  EXPECT_EQ(find_sample(s, "memlens_allocator_readable", {{"pid", std::to_string(w.child.pid())}, {"reason", "disabled"}}), 0.0);
  EXPECT_FALSE(find_sample(s, "memlens_allocator_inuse_bytes", of(w.child.pid())));
  EXPECT_EQ(find_sample(s, "memlens_allocator_walks_total", {{"result", "consistent"}}), 0.0);
}
