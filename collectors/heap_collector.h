// Heap figures of every glibc target from the allocator's own books
// (glibc_heap.h): in use, free, from the system, arenas, fragmentation, as
// mallinfo2() would give them, read with process_vm_readv. On by default
// (targets[].heap: false turns it off); the target pays nothing.
//
// Cost is memlensd's: about 1-3 us per free chunk on a VM (more under
// churn, when lists are read again). All walks together may take 5 % of a
// core, split among the targets (each at most 5 %): one that took W seconds
// is walked again after ceil(W / (share * tick)) ticks, share = min(5 %,
// 5 % / targets) (a 1M-chunk heap, ~1 s a walk: every 20 s at the default
// 1 s tick; 1000 small heaps: each every few ticks). A tick starts no new
// walk once walks took 5 % of it (10 % for a target 5 ticks overdue).
// Between walks the last consistent figures are published, with their age.
// A target that has not run since its last consistent walk (its CPU-time
// clock, exact to the nanosecond, has not moved) is not walked: only its
// own threads change its books, so its figures are current (age 0). Most
// processes of a host are idle most of the time; this is what keeps 1000
// idle targets cheap.
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
  Result<void> start(const ConfigPtr& cfg) override;
  void target_removed(const Target& t) override;
  Result<void> collect(const Target& t, Sample& out) override;
  void collect_global(GlobalSample& out) override;

  // Walks per collection, and the CPU they may take (see above).
  static constexpr int kAttempts = 3;
  static constexpr double kTargetShare = 0.05;
  // All walks together: a share of a core, split among the targets, so that
  // many small heaps are refreshed less often instead of costing more.
  static constexpr double kTickShare = 0.05;
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
    // The target's CPU time just before that walk: while it stays the same,
    // the process has not run, so its books cannot have changed.
    std::optional<uint64_t> cpu_ns_at_books;
    uint64_t due_tick = 0;
    double last_seconds = 0;    // of the last collection's walks
    int failed_ticks = 0;       // ticks in a row without a consistent walk
    bool logged = false;        // why it cannot be read: said once
  };
  void locate(const Target& t, PerTarget& pt, double now);
  Result<void> refresh(const Target& t, PerTarget& pt, double now);

  ProcFs proc_;
  std::map<TargetId, PerTarget> per_target_;
  FixedLabelsFor alloc_labels_{"allocator"}, ok_labels_{"allocator", {{"reason", "ok"}}};
  glibc::WalkBuffer buffer_;
  glibc::WalkLimits limits_;
  double tick_seconds_ = 1;
  uint64_t tick_ = 0;
  double spent_ = 0;  // seconds walked in this tick
  // Self-metrics.
  uint64_t walks_ok_ = 0, walks_inconsistent_ = 0, failures_ = 0, deferred_ = 0, unchanged_ = 0;
  uint64_t chunks_ = 0, pages_ = 0, syscalls_ = 0, list_retries_ = 0;
  double seconds_ = 0;
};

}  // namespace memlens
