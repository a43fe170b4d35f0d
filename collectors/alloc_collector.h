// Allocation tracing: uprobes on each target's allocator (per pid only),
// aggregated in the kernel (bpf/alloc.bpf.c), read once per tick.
//
// What each metric covers (also in the help texts):
//  - A target traced from its first instruction (started after memlensd,
//    held at exec until its probes were in place): memlens_heap_live_bytes
//    is exact (glibc: chunk bytes incl. the 8-byte size field; other
//    allocators: requested bytes), and the fragmentation ratio is exported.
//  - A target already running at attach: only what is exact since attach:
//    bytes/blocks allocated and freed, and the net change
//    (memlens_heap_net_since_attach_bytes, may be negative). Never a
//    made-up live heap.
//  - duty mode: counters are estimates (observed / duty fraction); no live
//    heap. on_leak mode: off until the anon RSS slope crosses the target's
//    budget, then address tracking with stacks for on_leak_duration.
//
// The parts live in collectors/alloc/ (policy, holds, probes, leak_sites);
// alloc_collector.cpp names every thread and lock and what each may touch.
#pragma once

#include <memory>

#include "collectors/collector.h"
#include "daemon/config.h"

namespace memlens {

struct AllocState;  // alloc_collector.cpp

class AllocCollector : public Collector {
 public:
  AllocCollector();
  ~AllocCollector() override;
  std::string_view name() const override { return "alloc"; }
  Result<void> start(const ConfigPtr& cfg) override;
  void target_added(const Target& t) override;
  void target_removed(const Target& t) override;
  Result<void> collect(const Target& t, Sample& out) override;
  void collect_global(GlobalSample& out) override;

 private:
  std::unique_ptr<AllocState> s_;
};

}  // namespace memlens
