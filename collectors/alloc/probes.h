// Where a target's counters live and how its probes are attached and let go.
//
// Slots: a target's counters are one slot of a per-CPU array (the slot
// rides in every probe's attach cookie, so the hot path needs no lookup). A
// slot is leased for as long as anything can still write to it: its
// target's probes, or links still being detached; the last holder gives it
// back, zeroed.
//
// Links: detaching a uprobe waits for a kernel grace period (~10 ms each
// here), so links are destroyed by reaper threads: exec holds and ticks never
// wait, and concurrent waits share grace periods. An attached ProbeSet owns
// its links and its slot lease; destroying it hands both to the reapers.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collectors/alloc/policy.h"
#include "collectors/bpf_support.h"

struct bpf_program;

namespace memlens::alloc {

using SlotLease = std::shared_ptr<const uint32_t>;

class SlotPool {
 public:
  // The stats array, the queue of free slots, the per-slot counting flags;
  // `slots` entries, all free.
  void init(int stats_fd, int queue_fd, int on_fd, uint32_t slots);
  // A free slot, or null when none is (counted in exhausted()).
  SlotLease take();
  // A slot the kernel took from the queue itself (a child held at fork).
  SlotLease lease(uint32_t slot);
  // Duty mode: whether the probes of the slot count (CK_DUTY).
  void set_counting(uint32_t slot, bool on);
  int stats_fd() const { return stats_fd_; }
  uint64_t in_use() const { return in_use_.load(); }
  uint64_t exhausted() const { return exhausted_.load(); }

 private:
  void release(const uint32_t* slot);
  int stats_fd_ = -1, queue_fd_ = -1, on_fd_ = -1;
  std::atomic<uint64_t> in_use_{0};
  std::atomic<uint64_t> exhausted_{0};
};

class Reapers {
 public:
  explicit Reapers(int threads);
  // Destroys what is left, then stops the threads.
  ~Reapers();
  Reapers(const Reapers&) = delete;
  Reapers& operator=(const Reapers&) = delete;
  void bury(std::vector<bpf::Link> links, SlotLease slot);
  // Links handed over and not yet destroyed.
  uint64_t detaching() const { return detaching_.load(); }

 private:
  void loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<bpf::Link, SlotLease>> graveyard_;
  std::atomic<uint64_t> detaching_{0};
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

class ProbeSet {
 public:
  ProbeSet() = default;
  ProbeSet(Reapers* reapers, std::vector<bpf::Link> links, SlotLease slot)
      : reapers_(reapers), links_(std::move(links)), slot_(std::move(slot)) {}
  ProbeSet(ProbeSet&& o) noexcept
      : reapers_(o.reapers_), links_(std::move(o.links_)), slot_(std::move(o.slot_)) {
    o.links_.clear();
  }
  ProbeSet& operator=(ProbeSet&& o) noexcept;
  ProbeSet(const ProbeSet&) = delete;
  ProbeSet& operator=(const ProbeSet&) = delete;
  ~ProbeSet() { reset(); }
  bool attached() const { return !links_.empty(); }
  // Hands the links (and the slot lease) to the reapers.
  void reset();

 private:
  Reapers* reapers_ = nullptr;
  std::vector<bpf::Link> links_;
  SlotLease slot_;
};

// What to attach: the same two programs whatever the allocator, the cookie
// telling them the function, the target's settings and its slot.
struct AttachPlan {
  bpf_program* entry = nullptr;
  bpf_program* ret = nullptr;
  bool multi = false;  // two multi-uprobe links (kernel >= 6.6), else one link per probe
  pid_t pid = 0;
  std::string binary;  // as opened (through /proc/PID/root)
  std::vector<ProbeSpec> specs;
  uint64_t settings = 0;  // cookie_settings()
};
// All or nothing: on error, what was attached is already handed back.
Result<ProbeSet> attach_probes(Reapers& reapers, const AttachPlan& plan, SlotLease slot);

}  // namespace memlens::alloc
