// Exec and fork holds. A process whose comm is a held name is stopped by the
// kernel at exec (and a traced glibc target's child at fork) until memlensd
// has attached its probes, so its live heap is exact from its first
// allocation. Here: which names a config holds, the kernel's table of them,
// the hold slots shared with the kernel and the watchdog, the release
// handshake, and the watchdog process that never lets a hold outlast its
// bound or memlensd.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bpf/alloc.h"
#include "daemon/config.h"
#include "daemon/procfs.h"
#include "daemon/result.h"

namespace memlens::alloc {

// The comms a selector's processes get at exec (the executable's base name,
// 15 bytes at most), when they are known before the process runs: a literal
// comm or an alternation of literals, else an exe given as a literal path
// (or ".*/name"), or an alternation of those. Empty when not known (the
// process is then traced since attach, not held).
std::vector<std::string> hold_comms(const Selector& s);

// Config entries get a stable id by name for the daemon's life: the kernel
// names the entry of a held process by it, so an event read after a reload
// that moved or removed the entry still finds the right one, or none.
class EntryIds {
 public:
  uint32_t id_of(const std::string& name);
  const std::string* name_of(uint32_t id) const;

 private:
  std::map<std::string, uint32_t> ids_;
  std::map<uint32_t, std::string> names_;
  uint32_t next_ = 1;
};

// What the kernel's hold_comms map should hold for a config: every name of
// every entry in mode full (duty and on-leak report no live heap anyway).
struct HeldName {
  std::string comm;
  uint32_t entry = 0;
};
std::vector<HeldName> held_names(const Config& cfg, EntryIds& ids);
// Replaces the map's contents; returns how many names it took.
std::size_t load_held_names(int map_fd, const std::vector<HeldName>& names);

// The hold slots: a memory-mapped BPF array shared by the kernel (which
// fills a slot when it stops a process), memlensd and the watchdog. Whoever
// swaps a slot's pid to 0 first owns the release and sends the SIGCONT: a
// process is resumed exactly once, and memlensd knows whether its probes
// were in place before it ran.
class HoldSlots {
 public:
  static Result<std::unique_ptr<HoldSlots>> map(int map_fd);
  ~HoldSlots();
  HoldSlots(const HoldSlots&) = delete;
  HoldSlots& operator=(const HoldSlots&) = delete;
  // Releases `pid` if it is still held and nobody released it yet; true when
  // this call did (and sent the SIGCONT).
  bool release(pid_t pid);
  hold_slot* data() const { return slots_; }

 private:
  HoldSlots(hold_slot* slots, std::size_t len) : slots_(slots), len_(len) {}
  hold_slot* slots_;
  std::size_t len_;
};

// Whether a held process has not run since its stop: it is stopped, or the
// SIGSTOP is still pending. Waits up to 100 ms for a pending stop to land.
bool still_held(const ProcFs& fs, pid_t pid);

// The watchdog: a forked child that only makes system calls (the parent is
// multi-threaded: no allocation after fork). It releases every process held
// longer than the bound, and all of them when memlensd goes away (its pipe
// closes or its parent changes), so a held process is never left stopped.
class Watchdog {
 public:
  static Result<std::unique_ptr<Watchdog>> start(hold_slot* slots, uint64_t bound_ns);
  // Closes the pipe (the watchdog releases everything and exits) and reaps it.
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  Watchdog(pid_t pid, int pipe_wr) : pid_(pid), pipe_wr_(pipe_wr) {}
  pid_t pid_;
  int pipe_wr_;
};

// How long a process may stay held before the watchdog releases it.
constexpr uint64_t kHoldBoundNs = 500ull * 1000000ull;

}  // namespace memlens::alloc
