// Discovery on a synthetic procfs tree: selectors, first-match order, caps,
// top-N by RSS, pid reuse and exits.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <filesystem>
#include <fstream>

#include "daemon/discovery.h"
#include "tests/support/support.h"

using namespace memlens;
namespace fs = std::filesystem;

namespace {

class FakeProc {
 public:
  FakeProc() : root_(test::make_temp_dir("fakeproc")) {}
  ~FakeProc() { fs::remove_all(root_); }
  const std::string& root() const { return root_; }

  void add(pid_t pid, const std::string& comm, uint64_t rss_pages, uint64_t start = 1000,
           const std::string& cmdline = "", const std::string& cgroup = "/user.slice", pid_t ppid = 1,
           char state = 'S') {
    const std::string d = root_ + "/" + std::to_string(pid);
    fs::create_directories(d);
    // Fields 3..24 of proc(5); the rest does not matter to discovery.
    std::string stat = std::to_string(pid) + " (" + comm + ") " + state + " " + std::to_string(ppid) +
                       " 1 1 0 -1 4194304 100 0 2 0 5 6 0 0 20 0 1 0 " + std::to_string(start) + " 1000000 " +
                       std::to_string(rss_pages) + " 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";
    test::write_text(d + "/stat", stat);
    std::string cl = cmdline.empty() ? comm : cmdline;
    for (auto& c : cl)
      if (c == ' ') c = '\0';
    test::write_text(d + "/cmdline", cl + std::string(1, '\0'));
    test::write_text(d + "/cgroup", "0::" + cgroup + "\n");
    fs::create_symlink("/usr/bin/" + comm, d + "/exe");
  }
  void remove(pid_t pid) { fs::remove_all(root_ + "/" + std::to_string(pid)); }

 private:
  std::string root_;
};

ConfigPtr config(const FakeProc& p, const std::string& targets_yaml, int max_targets = 64) {
  auto c = parse_config("global: {max_targets: " + std::to_string(max_targets) + "}\ntargets:\n" + targets_yaml, "t");
  EXPECT_TRUE(c.ok()) << c.error().message;
  c->procfs = p.root();
  return std::make_shared<const Config>(std::move(*c));
}

std::map<pid_t, std::string> watched(const Discovery& d) {
  std::map<pid_t, std::string> m;
  for (const auto& [id, t] : d.targets()) m[id.pid] = t.name;
  return m;
}

}  // namespace

TEST(Discovery, SelectorsFirstMatchWins) {
  FakeProc p;
  p.add(100, "java", 5000, 1000, "java -jar app.jar", "/system.slice/app.service");
  p.add(101, "python3.11", 100, 1000, "python3.11 worker.py --role=worker");
  p.add(102, "bash", 9000);
  p.add(103, "kworker/0:1", 0, 1000, "", "/", 2);  // kernel thread
  p.add(104, "defunct", 0, 1000, "", "/", 1, 'Z');
  p.add(105, "postgres", 3000, 1000, "postgres: checkpointer", "/system.slice/postgresql@15-main.service");
  ConfigPtr c = config(p, R"(
  - {name: app, systemd_unit: app.service}
  - {name: workers, cmdline: "--role=worker"}
  - {name: pg, cgroup: /system.slice/postgresql, exe: "/usr/bin/postgres"}
  - {name: java-any, comm: java}
  - {name: big, top_rss: 1}
)");
  Discovery d(c, 99999);
  auto r = d.scan();
  EXPECT_EQ(r.added.size(), 4u);
  auto w = watched(d);
  EXPECT_EQ(w[100], "app") << "first matching entry wins over java-any";
  EXPECT_EQ(w[101], "workers");
  EXPECT_EQ(w[105], "pg");
  EXPECT_EQ(w[102], "big") << "the largest remaining process";
  EXPECT_FALSE(w.count(103)) << "kernel threads are never targets";
  EXPECT_FALSE(w.count(104)) << "zombies are never targets";
}

TEST(Discovery, PidAndSelf) {
  FakeProc p;
  p.add(200, "a", 10);
  p.add(201, "b", 10);
  ConfigPtr c = config(p, "  - {name: me, self: true}\n  - {name: one, pid: 200}\n");
  Discovery d(c, 201);
  d.scan();
  auto w = watched(d);
  EXPECT_EQ(w[201], "me");
  EXPECT_EQ(w[200], "one");
}

TEST(Discovery, ExitAndPidReuseAreNewTargets) {
  FakeProc p;
  p.add(300, "svc", 10, 1000);
  ConfigPtr c = config(p, "  - {name: svc, comm: svc}\n");
  Discovery d(c, 1);
  ASSERT_EQ(d.scan().added.size(), 1u);
  EXPECT_TRUE(d.scan().added.empty()) << "nothing changes, nothing added";
  // The process exits and the pid is reused by another "svc" started later.
  p.remove(300);
  p.add(300, "svc", 10, 2000);
  auto r = d.scan();
  ASSERT_EQ(r.removed.size(), 1u);
  ASSERT_EQ(r.added.size(), 1u);
  EXPECT_EQ(r.exited, 1u);
  EXPECT_EQ(r.removed[0].id.start_time, 1000u);
  EXPECT_EQ(r.added[0].id.start_time, 2000u);
  p.remove(300);
  r = d.scan();
  EXPECT_EQ(r.exited, 1u);
  EXPECT_TRUE(d.targets().empty());
}

// Rescans read the stat file of new and young processes and targets every
// time, of the others once every few scans: an old process that becomes a
// match without a new pid (exec in place) is found within five scans, a new
// one at once.
TEST(Discovery, RescansAreIncrementalButMissNothingForLong) {
  FakeProc p;
  for (int i = 0; i < 50; ++i) p.add(800 + i, "idle", 10);
  p.add(900, "svc", 10);
  ConfigPtr c = config(p, "  - {name: svc, comm: svc}\n");
  Discovery d(c, 1);
  auto r = d.scan();
  EXPECT_EQ(r.stat_reads, 51u) << "the first scan reads every process";
  EXPECT_EQ(r.processes, 51u);
  r = d.scan();
  EXPECT_EQ(r.stat_reads, 51u) << "young processes are read at every scan (a fork is seen before its exec)";
  for (int i = 0; i < 10; ++i) r = d.scan();
  EXPECT_LT(r.stat_reads, 20u) << "once they are older: the target and a slice of the rest";
  EXPECT_EQ(r.processes, 51u) << "the others still count, from their last reading";
  // A new process is read at once.
  p.add(950, "svc", 10);
  r = d.scan();
  ASSERT_EQ(r.added.size(), 1u);
  EXPECT_EQ(r.added[0].id.pid, 950);
  // An idle process execs into a match (same pid, same start time).
  p.remove(820);
  p.add(820, "svc", 10);
  int scans = 0;
  bool found = false;
  while (!found && scans < 10) {
    ++scans;
    for (const auto& t : d.scan().added) found |= t.id.pid == 820;
  }
  EXPECT_TRUE(found);
  EXPECT_LE(scans, 5);
  // A target that exits is gone at the next scan.
  p.remove(900);
  r = d.scan();
  ASSERT_EQ(r.removed.size(), 1u);
  EXPECT_EQ(r.exited, 1u);
}

namespace {
// The state of a real process ('S': asleep).
char real_state(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto st = parse_stat(text);
  return st ? st->state : '?';
}
}  // namespace

// A fake procfs naming a real process (its `self` names this test, so the
// CPU clocks of the pids it lists are read): while the process sleeps its
// reading stands even though the file changed under it, one scan in
// kRefreshEvery aside; once it runs it is read at the next scan.
TEST(Discovery, TargetsAreReadAgainWhenTheirCpuClockMoves) {
  FakeProc p;
  fs::create_symlink(std::to_string(getpid()), p.root() + "/self");
  const std::string fifo = p.root() + "/go";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  test::Child sleeper = test::spawn({"/bin/sh", "-c", "while read x < " + fifo + "; do :; done"});
  // Asleep in the fifo's open, its clock standing.
  for (int i = 0; i < 200 && real_state(sleeper.pid()) != 'S'; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  p.add(sleeper.pid(), "svc", 10);
  ConfigPtr c = config(p, "  - {name: svc, comm: svc}\n");
  Discovery d(c, 1);
  DiscoveryResult r;
  for (int i = 0; i < 12; ++i) r = d.scan();  // past its young scans
  ASSERT_EQ(d.targets().size(), 1u);
  std::size_t reads = 0, unmoved = 0;
  for (int i = 0; i < 5; ++i) {
    r = d.scan();
    reads += r.stat_reads;
    unmoved += r.clock_unmoved;
  }
  EXPECT_EQ(reads, 0u) << "a sleeping target is not read again (not even in the refresh slices)";
  EXPECT_EQ(unmoved, 5u);
  // The file says it became something else; it has not run, so the scans
  // keep the reading (the real process is unchanged).
  p.remove(sleeper.pid());
  p.add(sleeper.pid(), "other", 10);
  for (int i = 0; i < 5; ++i) {
    r = d.scan();
    EXPECT_EQ(r.stat_reads, 0u);
    EXPECT_TRUE(r.removed.empty());
  }
  // An entry ranking by RSS puts targets back in the slices: RSS moves
  // without the process running.
  p.remove(sleeper.pid());
  p.add(sleeper.pid(), "svc", 10);
  d.reconfigure(config(p, "  - {name: svc, comm: svc, top_rss: 5}\n"));
  reads = 0;
  for (int i = 0; i < 5; ++i) reads += d.scan().stat_reads;
  EXPECT_EQ(reads, 1u) << "its slice reads it once in 5 scans";
  // Another entry's ranking does not concern it.
  d.reconfigure(config(p, "  - {name: svc, comm: svc}\n  - {name: big, top_rss: 3}\n"));
  reads = 0;
  for (int i = 0; i < 5; ++i) reads += d.scan().stat_reads;
  EXPECT_EQ(reads, 0u) << "only its own entry's ranking puts a target in the slices";
  d.reconfigure(c);
  p.remove(sleeper.pid());
  p.add(sleeper.pid(), "other", 10);
  // It runs: a line through the fifo, then it sleeps in the next open.
  {
    int fd = ::open(fifo.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "x\n", 2), 2);
    ::close(fd);
  }
  for (int i = 0; i < 200; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (real_state(sleeper.pid()) == 'S') break;
  }
  r = d.scan();
  EXPECT_EQ(r.stat_reads, 1u) << "a target that ran is read at the next scan";
  ASSERT_EQ(r.removed.size(), 1u) << "and matched by what it says it is now";
  EXPECT_EQ(r.removed[0].id.pid, sleeper.pid());
}

// A reading that stands keeps what it matched, but a reload's selectors
// match every process again: a sleeping target whose entry now names
// another comm is dropped at the first scan, its facts not read again.
TEST(Discovery, AReloadMatchesStandingProcessesAgain) {
  FakeProc p;
  fs::create_symlink(std::to_string(getpid()), p.root() + "/self");
  test::Child sleeper = test::spawn({"/bin/sleep", "600"});
  // Asleep for good, its start-up done: its clock stands (a loaded machine
  // can show it asleep between the steps of its start).
  for (int i = 0; i < 200; ++i) {
    const auto before = process_cpu_ns(sleeper.pid());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (real_state(sleeper.pid()) == 'S' && before && process_cpu_ns(sleeper.pid()) == before) break;
  }
  p.add(sleeper.pid(), "svc", 10);
  Discovery d(config(p, "  - {name: svc, cmdline: \".\"}\n"), 1);
  DiscoveryResult r;
  for (int i = 0; i < 12; ++i) r = d.scan();  // past its young scans
  ASSERT_EQ(d.targets().size(), 1u);
  d.reconfigure(config(p, "  - {name: svc, cmdline: \"^nothing-runs-this$\"}\n"));
  r = d.scan();
  EXPECT_EQ(r.stat_reads, 0u) << "the reading stands";
  EXPECT_EQ(r.clock_unmoved, 1u);
  EXPECT_TRUE(d.targets().empty()) << "matched by the new selector, not by what the old one said";
  // No longer a target, it is in the refresh slices again: right after its
  // slice's scan, the next scans keep its reading.
  for (int i = 0; i < 5; ++i)
    if (d.scan().stat_reads == 1) break;
  d.reconfigure(config(p, "  - {name: svc, cmdline: \".\"}\n"));
  r = d.scan();
  EXPECT_EQ(r.stat_reads, 0u);
  EXPECT_EQ(d.targets().size(), 1u);
}

// `children: false`: forked workers (PostgreSQL's backends) go with their
// parent's target; another cluster's postmaster is a target of its own; a
// same-named process under something else is no one's child.
TEST(Discovery, ChildrenGoWithTheirParentWhenAsked) {
  FakeProc p;
  p.add(100, "postgres", 10, 1000, "", "/user.slice", 1);
  for (int i = 1; i <= 30; ++i) p.add(100 + i, "postgres", 5, 1000, "", "/user.slice", 100);
  p.add(200, "postgres", 10, 1000, "", "/user.slice", 50);  // another cluster, under a shell
  p.add(50, "bash", 1);
  p.add(201, "postgres", 5, 1000, "", "/user.slice", 200);
  p.add(300, "postgres", 5, 1000, "", "/user.slice", 50);   // a postgres under bash: no parent match
  ConfigPtr c = config(p, "  - {name: pg, comm: postgres, children: false, max_targets: 4}\n"
                          "  - {name: rest, cmdline: \".\"}\n");
  Discovery d(c, 1);
  auto r = d.scan();
  auto w = watched(d);
  EXPECT_EQ(w[100], "pg");
  EXPECT_EQ(w[200], "pg");
  EXPECT_EQ(w[300], "pg");
  EXPECT_EQ(w.count(101), 0u) << "a backend is no target of its own";
  EXPECT_EQ(w.count(201), 0u);
  EXPECT_EQ(w[50], "rest") << "grouped processes are claimed: later entries do not take them";
  EXPECT_EQ(w.size(), 4u);
  EXPECT_EQ(r.capped_new, 0u) << "grouped children never count against the cap";
  EXPECT_EQ(d.grouped().at("pg"), 31u);
  // Without the switch every backend is a target (up to the cap).
  ConfigPtr all = config(p, "  - {name: pg, comm: postgres, max_targets: 64}\n");
  Discovery d2(all, 1);
  d2.scan();
  EXPECT_EQ(d2.targets().size(), 34u);
  EXPECT_TRUE(d2.grouped().empty());
}

TEST(Discovery, CapsCountEachProcessOnceAndKeepWatchedOnes) {
  FakeProc p;
  for (int i = 0; i < 5; ++i) p.add(400 + i, "w", 10 + i);
  ConfigPtr c = config(p, "  - {name: w, comm: w, max_targets: 3}\n", 64);
  Discovery d(c, 1);
  auto r = d.scan();
  EXPECT_EQ(r.added.size(), 3u);
  EXPECT_EQ(r.capped_new, 2u);
  EXPECT_EQ(d.capped_now(), 2u);
  auto before = watched(d);
  // A larger newcomer does not displace a watched target (no churn).
  p.add(499, "w", 100000);
  r = d.scan();
  EXPECT_EQ(r.capped_new, 1u) << "only the newcomer is new";
  EXPECT_EQ(watched(d), before);
  // The global cap applies across entries.
  ConfigPtr g = config(p, "  - {name: w, comm: w}\n", 2);
  Discovery d2(g, 1);
  d2.scan();
  EXPECT_EQ(d2.targets().size(), 2u);
  EXPECT_EQ(d2.capped_now(), 4u);
}

TEST(Discovery, TopRssLeavesTheRestForLaterEntries) {
  FakeProc p;
  p.add(500, "a", 50);
  p.add(501, "b", 500);
  p.add(502, "c", 5);
  ConfigPtr c = config(p, "  - {name: top, top_rss: 1}\n  - {name: rest, cmdline: \".\"}\n");
  Discovery d(c, 1);
  d.scan();
  auto w = watched(d);
  EXPECT_EQ(w[501], "top");
  EXPECT_EQ(w[500], "rest");
  EXPECT_EQ(w[502], "rest");
}

TEST(Discovery, MalformedStatIsCountedAndSkipped) {
  FakeProc p;
  p.add(600, "ok", 10);
  fs::create_directories(p.root() + "/601");
  test::write_text(p.root() + "/601/stat", "601 (broken\n");
  ConfigPtr c = config(p, "  - {name: any, cmdline: \".\"}\n");
  Discovery d(c, 1);
  auto r = d.scan();
  EXPECT_EQ(r.scan_errors, 1u);
  EXPECT_EQ(d.targets().size(), 1u);
}

// A reload hands targets the new config's entries and lets the old config
// go (it used to be kept forever: memory grew with every SIGHUP).
TEST(Discovery, ReloadRepointsPoliciesAndReleasesTheOldConfig) {
  FakeProc p;
  p.add(700, "svc", 10);
  ConfigPtr c = config(p, "  - {name: svc, comm: svc, gc: false}\n");
  std::weak_ptr<const Config> old = c;
  Discovery d(c, 1);
  d.scan();
  ASSERT_EQ(d.targets().size(), 1u);
  EXPECT_FALSE(d.targets().begin()->second.policy->gc);
  // Reordered and changed: the target follows its entry by name.
  d.reconfigure(config(p, "  - {name: other, pid: 1}\n  - {name: svc, comm: svc, gc: true}\n"));
  c.reset();
  EXPECT_TRUE(old.expired()) << "nothing holds the previous config";
  ASSERT_EQ(d.targets().size(), 1u);
  EXPECT_TRUE(d.targets().begin()->second.policy->gc);
  d.scan();
  EXPECT_EQ(watched(d)[700], "svc");
}

// A command line far longer than anyone's selector needs: matched on its
// first kCmdlineMatchBytes only, in linear time (RE2).
TEST(Discovery, HugeCommandLineIsMatchedBoundedAndLinear) {
  FakeProc p;
  p.add(800, "java", 10, 1000, "java " + std::string(64 << 10, 'x') + " -jar app.jar");
  p.add(801, "java", 10, 1000, "java -jar " + std::string(64 << 10, 'y'));
  ConfigPtr c = config(p, "  - {name: jar, cmdline: \"java .*-jar\"}\n");
  Discovery d(c, 1);
  d.scan();
  auto w = watched(d);
  EXPECT_EQ(w.count(800), 0u) << "-jar lies beyond the bound";
  EXPECT_EQ(w[801], "jar");
}
