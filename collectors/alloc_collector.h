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
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

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

// Leak sites of the target(s) configured as `target_name` (the `target`
// label), from the last snapshot the collection thread published (no BPF
// work on the caller's thread). Shape:
//   {"target": name, "available": bool, "reason": "..." (when not),
//    "processes": [{"pid": N, "captured_at_unix": T, "tracking": bool,
//                   "outstanding_bytes": B, "outstanding_blocks": K,
//                   "sites": [{"bytes": B, "blocks": K, "stack": ["fn+0x1a (lib)", ...]}]}]}
// Sites are the top 20 stacks by outstanding bytes.
nlohmann::json alloc_leak_sites_json(const std::string& target_name);

// The comms under which a selector's processes can be held at exec (see
// README, "Targets started after memlensd"): literal comm names or
// alternations of them, else the base names of literal exe paths. Empty
// when the selector gives no name known before the process runs.
std::vector<std::string> alloc_hold_comms(const Selector& s);

}  // namespace memlens
