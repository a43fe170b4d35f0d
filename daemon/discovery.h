// Discovery: rescans procfs, applies the selectors in config order (first
// match wins), enforces the caps, and diffs against the previous set.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "collectors/proc_parse.h"
#include "daemon/config.h"
#include "daemon/kubernetes.h"
#include "daemon/procfs.h"
#include "daemon/target.h"

namespace memlens {

struct DiscoveryResult {
  std::vector<Target> added;
  std::vector<Target> removed;   // no longer matched or exited
  std::size_t exited = 0;        // of `removed`, those whose process is gone
  std::size_t capped_new = 0;    // processes newly turned away by a cap
  std::size_t scan_errors = 0;   // unreadable or malformed stat files
  std::size_t processes = 0;     // user processes seen (kernel threads and zombies aside)
  std::size_t stat_reads = 0;    // stat files read (the rest stood from an earlier scan)
  std::size_t clock_unmoved = 0; // of targets and young processes, not read: their CPU clock stood still
};

// Whether process `pid` matches the per-process fields of a selector (all
// but top_rss), reading what it needs from procfs: the exec hold asks before
// discovery has seen the process.
bool process_matches(const ProcFs& fs, const Selector& s, pid_t pid, pid_t self_pid);

class Discovery {
 public:
  Discovery(ConfigPtr cfg, pid_t self_pid);
  // Swaps in a new config; current targets are re-matched on the next scan.
  void reconfigure(ConfigPtr cfg);
  DiscoveryResult scan();
  const std::map<TargetId, Target>& targets() const { return targets_; }
  std::size_t capped_now() const { return capped_now_; }
  // Processes covered by their parent's target (`children: false`), by
  // entry name, as of the last scan.
  const std::map<std::string, std::size_t>& grouped() const { return grouped_; }
  // Kubernetes labels (global.kubernetes_labels): what failed, by reason.
  const PodLabeler& pods() const { return pods_; }
  // Whether the procfs root names memlensd's own pids, so that the CPU
  // clocks of the pids found there can be read (ProcFs::shows_own_pids).
  bool same_pid_ns() const { return same_pid_ns_; }

 private:
  struct Proc;
  bool matches(const Selector& s, Proc& p);

  // Every process's stat file is re-read at least once in this many scans.
  static constexpr uint64_t kRefreshEvery = 5;
  // ... and at every scan while young (fewer scans than this since first seen).
  static constexpr uint64_t kYoungScans = 10;
  struct Known {
    ProcStat stat;                   // its last reading
    uint64_t first_seen;             // the scan that first saw the pid
    std::optional<uint64_t> cpu_ns;  // its CPU clock before that reading
    // What selectors read beyond stat, kept while that reading stands.
    std::optional<std::string> exe, cmdline, cgroup;
    // Which of the first 64 entries' selectors it matched (bit set in
    // known), under config generation match_gen: facts that stand match as
    // they did (a cmdline pattern was 4 % of memlensd's time at 1000 targets).
    uint64_t match_gen = 0, match_known = 0, match_yes = 0;
  };
  uint64_t config_gen_ = 1;

  ConfigPtr cfg_;
  ProcFs proc_;
  bool same_pid_ns_ = false;  // proc_ names our pids: CPU clocks can be read
  std::unordered_map<pid_t, Known> known_;
  uint64_t scans_ = 0;
  pid_t self_pid_;
  std::map<TargetId, Target> targets_;
  std::set<TargetId> capped_seen_;  // counted once each, pruned when gone
  std::size_t capped_now_ = 0;
  std::map<std::string, std::size_t> grouped_;
  PodLabeler pods_;
  bool relabel_ = false;  // the switch or the runtime state root changed
};

}  // namespace memlens
