// A restart keeps its history: with --state.path, memlensd killed (or
// upgraded) and started again resumes the timelines of targets still
// running (same pid and start time): their points, leak slope and peak are
// there at its first scrape. A damaged file loses only its damaged part; a
// disk with no room is reported and memlensd runs on in memory.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

// A short leak window, so a slope exists after a few seconds.
std::string config(pid_t pid, const std::string& tick = "250ms") {
  return "global: {tick_interval: " + tick + ", rescan_interval: 250ms, timeline_window: 2m, leak_window: 8s}\n"
         "targets:\n  - {name: leaky, pid: " + std::to_string(pid) + "}\n  - {name: me, self: true}\n";
}

double value(const std::vector<PromSample>& s, const std::string& name, const std::string& pid) {
  return find_sample(s, name, {{"target", "leaky"}, {"pid", pid}}).value_or(-1);
}

// A daemon with the given state directory on the config of `pid`.
std::optional<Daemon> daemon_with_state(pid_t pid, const std::string& state, const std::string& tick = "250ms") {
  return start_daemon(config(pid, tick), {"--state.path=" + state});
}

}  // namespace

TEST(StateFile, RestartResumesTimelinesOfTargetsStillRunning) {
  const std::string dir = make_temp_dir(), state = make_temp_dir("memlens-state");
  // Leaks 64 KiB/s in 4 KiB blocks: RSS grows steadily.
  Child w = spawn({workload_path("heapload"), "--hold", "4000000", "--churn", "100", "--leak", "65536",
                   "--leak-block", "4096", "--truth", dir + "/t"});
  const std::string pid = std::to_string(w.pid());
  double points_before = 0, peak_before = 0;
  {
    auto d = daemon_with_state(w.pid(), state);
    ASSERT_TRUE(d);
    ASSERT_TRUE(wait_until([&] { return value(d->scrape(), "memlens_leak_slope_bytes_per_second", pid) > 0; }, 20s))
        << d->log();
    std::this_thread::sleep_for(2s);
    auto s = d->scrape();
    points_before = value(s, "memlens_timeline_points", pid);
    peak_before = value(s, "memlens_rss_window_peak_bytes", pid);
    EXPECT_EQ(find_sample(s, "memlens_state_persistent"), 1.0);
    EXPECT_GE(points_before, 20);
    d->child.stop(SIGKILL, 5s);  // a crash: nothing is written at exit
  }
  auto d = daemon_with_state(w.pid(), state);
  ASSERT_TRUE(d);
  // The first scrape with the target already holds its history and slope;
  // a fresh start would need half the leak window (4 s) for a slope.
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return value(s, "memlens_timeline_points", pid) > 0;
  }, 10s)) << d->log();
  EXPECT_GE(value(s, "memlens_timeline_points", pid), points_before);
  EXPECT_GT(value(s, "memlens_leak_slope_bytes_per_second", pid), 0) << "a slope at once";
  EXPECT_GE(value(s, "memlens_rss_window_peak_bytes", pid), peak_before);
  EXPECT_EQ(find_sample(s, "memlens_state_resumed_timelines_total"), 1.0) << d->log();
  EXPECT_NE(d->log().find("resumed 1 timeline(s) from the state file"), std::string::npos) << d->log();
  // memlensd itself is a new process (another pid): never resumed.
  EXPECT_LT(find_sample(s, "memlens_timeline_points", {{"target", "me"}}).value_or(0), points_before);
}

TEST(StateFile, DamagedChunksAreDroppedAloneAndATornHeaderStartsAfresh) {
  const std::string dir = make_temp_dir(), state = make_temp_dir("memlens-state");
  Child w = spawn({workload_path("heapload"), "--hold", "4000000", "--churn", "100", "--leak", "65536",
                   "--leak-block", "4096", "--truth", dir + "/t"});
  const std::string pid = std::to_string(w.pid());
  {
    // Enough points for a few chunks (~50 points each for this workload).
    auto d = daemon_with_state(w.pid(), state, "100ms");
    ASSERT_TRUE(d);
    ASSERT_TRUE(wait_until([&] { return value(d->scrape(), "memlens_timeline_points", pid) >= 200; }, 40s));
    d->child.stop(SIGTERM, 5s);
  }
  // Damage every other chunk of the target's ring. The layout
  // (daemon/state_store.cpp): a 4 KiB file header; a table of 128-byte slot
  // headers {u32 used, i32 pid, u64 start_time, u64 owner, ...} padded to
  // pages (64 slots: 8 KiB); then one ring per slot of 512-byte chunks
  // {u64 seq, u64 owner, ...; 48-byte header, then the payload}.
  const std::string file = state + "/timelines.state";
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f);
  f.seekg(0, std::ios::end);
  const auto size = static_cast<std::size_t>(f.tellg());
  std::vector<char> bytes(size);
  f.seekg(0);
  f.read(bytes.data(), static_cast<std::streamsize>(size));
  constexpr std::size_t kSlots = 64, kRings = 4096 + 8192;
  const std::size_t ring_bytes = (size - kRings) / kSlots;
  std::size_t damaged = 0;
  for (std::size_t i = 0; i < kSlots; ++i) {
    int32_t spid = 0;
    uint64_t owner = 0;
    std::memcpy(&spid, &bytes[4096 + i * 128 + 4], 4);
    std::memcpy(&owner, &bytes[4096 + i * 128 + 16], 8);
    if (spid != w.pid()) continue;
    std::size_t written = 0;
    for (std::size_t off = kRings + i * ring_bytes; off < kRings + (i + 1) * ring_bytes; off += 512) {
      uint64_t seq = 0, chunk_owner = 0;
      std::memcpy(&seq, &bytes[off], 8);
      std::memcpy(&chunk_owner, &bytes[off + 8], 8);
      if (seq == 0 || chunk_owner != owner || ++written % 2) continue;
      bytes[off + 48] ^= 0x5a;  // the first payload byte
      ++damaged;
    }
  }
  ASSERT_GE(damaged, 1u) << "no chunk found to damage in " << size << " bytes";
  f.seekp(0);
  f.write(bytes.data(), static_cast<std::streamsize>(size));
  f.close();
  {
    auto d = daemon_with_state(w.pid(), state, "100ms");
    ASSERT_TRUE(d);
    std::vector<PromSample> s;
    ASSERT_TRUE(wait_until([&] {
      s = d->scrape();
      return value(s, "memlens_timeline_points", pid) > 0;
    }, 10s));
    EXPECT_EQ(find_sample(s, "memlens_state_dropped_total", {{"part", "chunk"}}), static_cast<double>(damaged));
    EXPECT_EQ(find_sample(s, "memlens_state_resumed_timelines_total"), 1.0);
    EXPECT_GE(value(s, "memlens_timeline_points", pid), 60) << "the rest of its history is kept";
    d->child.stop(SIGTERM, 5s);
  }
  // A torn file header: the file is started afresh, memlensd runs.
  std::fstream g(file, std::ios::in | std::ios::out | std::ios::binary);
  g.seekp(3);
  g.put('X');
  g.close();
  auto d = daemon_with_state(w.pid(), state, "100ms");
  ASSERT_TRUE(d);
  auto s = d->scrape();
  EXPECT_EQ(find_sample(s, "memlens_state_dropped_total", {{"part", "file"}}), 1.0);
  EXPECT_EQ(find_sample(s, "memlens_state_resumed_timelines_total"), 0.0);
  EXPECT_EQ(find_sample(s, "memlens_state_persistent"), 1.0);
}

TEST(StateFile, NoRoomOnTheDiskIsReportedAndMemlensdRunsInMemory) {
  if (!is_root()) GTEST_SKIP() << "needs root to mount a tiny tmpfs";
  const std::string state = make_temp_dir("memlens-full");
  ASSERT_EQ(::mount("tmpfs", state.c_str(), "tmpfs", 0, "size=16k"), 0) << std::strerror(errno);
  auto d = start_daemon("targets: [{name: me, self: true}]\n", {"--state.path=" + state});
  ASSERT_TRUE(d);
  ASSERT_TRUE(wait_until([&] { return find_sample(d->scrape(), "memlens_timeline_points", {{"target", "me"}}).value_or(0) > 1; }, 10s));
  EXPECT_EQ(find_sample(d->scrape(), "memlens_state_persistent"), 0.0);
  EXPECT_NE(d->log().find("state file unusable, timelines kept in memory only"), std::string::npos) << d->log();
  EXPECT_NE(d->log().find("No space left on device"), std::string::npos) << d->log();
  d->child.stop(SIGTERM, 5s);
  ::umount(state.c_str());
}
