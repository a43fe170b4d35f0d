// Memory of a process from /proc: status and stat every tick (the kernel's
// counters: cheap), smaps_rollup and the [heap] mapping in maps every
// smaps_interval (the kernel walks every page table for smaps_rollup: that
// read costs more than all the others together).
#pragma once

#include <map>
#include <string>

#include "collectors/collector.h"
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

 private:
  struct PerTarget {
    Fd stat, status;          // kept open across ticks
    double next_smaps = 0;    // monotonic seconds
    bool have_rollup = false;
    double pss = 0, uss = 0;
    bool have_heap = false;
    double heap = 0;
    Result<void> smaps_error;  // of the last smaps read, repeated until the next
  };
  Result<void> read_smaps(const Target& t, PerTarget& pt);

  ProcFs proc_;
  double smaps_interval_ = 5;
  std::map<TargetId, PerTarget> per_target_;
  std::string buf_;  // reused read buffer
};

}  // namespace memlens
