// Memory of a process from /proc: status and stat every tick (the kernel's
// counters: cheap), smaps_rollup and the [heap] mapping in maps every
// smaps_interval (the kernel walks every page table for smaps_rollup: that
// read costs more than all the others together).
//
// What only the process itself can change is not read again while it has
// not run: stat's fields (faults, threads, CPU time) and the [heap] mapping
// (brk) stay those of the last read while the process's CPU-time clock
// (exact, one system call) has not moved. status (resident memory, which
// reclaim and swap change without the process running) stands while statm
// does too, for a few ticks; smaps_rollup (PSS, which other processes'
// sharing changes too) likewise, for a few of its intervals.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "collectors/collector.h"
#include "collectors/proc_parse.h"
#include "daemon/fd.h"
#include "daemon/procfs.h"

namespace memlens {

class ProcCollector : public Collector {
 public:
  std::string_view name() const override { return "proc"; }
  Result<void> start(const ConfigPtr& cfg) override;
  void target_removed(const Target& t) override;
  Result<void> collect(const Target& t, Sample& out) override;
  bool tells_exit() const override { return true; }
  void collect_global(GlobalSample& out) override;

 private:
  struct PerTarget {
    Fd stat, status, statm, smaps_rollup;  // kept open across ticks
    double next_smaps = 0;    // monotonic seconds
    bool have_rollup = false;
    double pss = 0, uss = 0;
    bool have_heap = false;
    double heap = 0;
    // stat's fields as last read, and the CPU clock just before that read
    // (and before the last maps read).
    uint64_t minflt = 0, majflt = 0, threads = 0, cpu_ticks = 0;
    std::optional<uint64_t> stat_cpu_ns, maps_cpu_ns;
    // status as last read, the CPU clock before that read, statm as read
    // since with the clock standing still ("" once the process ran), and the
    // ticks that reading has stood for.
    std::optional<ProcStatus> status_read;
    std::optional<uint64_t> status_cpu_ns;
    std::string statm_text;
    unsigned status_stood = 0;
    Result<void> smaps_error;  // of the last smaps read, repeated until the next
    // The clock and statm at the last smaps_rollup read, and the intervals
    // that reading has stood for since.
    std::optional<uint64_t> smaps_cpu_ns;
    std::string smaps_statm;
    unsigned smaps_stood = 0;
  };
  Result<void> read_smaps(const Target& t, PerTarget& pt, const std::optional<uint64_t>& cpu_ns);

  ProcFs proc_;
  double smaps_interval_ = 5;
  // A status reading stands for at most this many ticks (statm misses two
  // opposite moves of the same counter within one tick).
  static constexpr unsigned kStatusStandsFor = 10;
  // A smaps_rollup reading serves at most this many intervals (it misses
  // only other processes' changes to what they share with the target).
  static constexpr unsigned kSmapsStandsFor = 6;
  uint64_t stat_reads_saved_ = 0, maps_reads_saved_ = 0, status_reads_saved_ = 0, smaps_reads_saved_ = 0;
  std::map<TargetId, PerTarget> per_target_;
  std::string buf_, statm_buf_;  // reused read buffers
};

}  // namespace memlens
