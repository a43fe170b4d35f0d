// Heap figures of every glibc target from the allocator's own books
// (glibc_heap.h): in use, free, from the system, arenas, fragmentation, as
// mallinfo2() would give them, read with process_vm_readv. On by default
// (targets[].heap: false turns it off); the target pays nothing.
//
// Cost is memlensd's: about 1 us per free chunk on a VM. A target whose
// last walk visited N free chunks is walked every ceil(N / 100k) ticks, and
// a tick starts no new walk past 100k chunks unless a target is 5 ticks
// overdue; between walks the last consistent figures are published (their
// age is exported).
#pragma once

#include <map>
#include <optional>
#include <string>

#include "collectors/collector.h"
#include "collectors/glibc_heap.h"
#include "daemon/procfs.h"

namespace memlens {

class HeapCollector : public Collector {
 public:
  std::string_view name() const override { return "heap"; }
  Result<void> start(const Config& cfg) override;
  void target_removed(const Target& t) override;
  Result<void> collect(const Target& t, Sample& out) override;
  void collect_global(GlobalSample& out) override;

  // Walks of one target, and free chunks a tick may start walks for.
  static constexpr int kAttempts = 3;
  static constexpr uint64_t kChunksPerTick = 100'000;
  static constexpr uint64_t kOverdueTicks = 5;

 private:
  struct PerTarget {
    bool located = false;
    std::string allocator = "glibc";
    std::string reason;         // why it is not readable; empty when it is
    double next_locate = 0;     // monotonic seconds
    glibc::WalkInput input;
    bool validated = false;     // the location passed the [heap] checks once
    std::optional<glibc::Books> books;  // the last consistent walk
    double books_at = 0;
    uint64_t due_tick = 0, last_chunks = 0;
    int failed_ticks = 0;       // ticks in a row without a consistent walk
    bool logged = false;        // why it cannot be read: said once
  };
  void locate(const Target& t, PerTarget& pt, double now);
  Result<void> refresh(const Target& t, PerTarget& pt, double now);

  ProcFs proc_;
  std::map<TargetId, PerTarget> per_target_;
  glibc::WalkBuffer buffer_;
  glibc::WalkLimits limits_;
  uint64_t tick_ = 0, spent_ = 0;  // chunks walked in this tick
  // Self-metrics.
  uint64_t walks_ok_ = 0, walks_inconsistent_ = 0, failures_ = 0, deferred_ = 0;
  uint64_t chunks_ = 0, pages_ = 0, syscalls_ = 0;
  double seconds_ = 0;
};

}  // namespace memlens
