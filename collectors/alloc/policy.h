// The allocation collector's decisions as pure functions of time, settings
// and counters: when duty mode attaches and counts, when on-leak switches
// on, how kernel totals advance the exported counters, when the live heap is
// exact, and which probes an allocator gets. No kernel, no locks, no clock:
// tested without root (tests/unit/alloc_policy_test.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "bpf/alloc.h"
#include "collectors/elf_symbols.h"
#include "daemon/config.h"
#include "daemon/result.h"

namespace memlens::alloc {

// ---- duty mode -----------------------------------------------------------
// Period P, on for D = P x fraction from each period's start (phase_start +
// kP). Probes go on a lead before the on-phase (twice the last attach time,
// 5-50 ms: attaching walks every process that maps the library) and off at
// its end; counting follows a flag set exactly at the on-phase, so observed /
// fraction is an unbiased estimate whatever the attach time.
struct DutyStep {
  bool links = false;     // probes should be attached now
  bool counting = false;  // the slot's counting flag should be set now
  double next_due = 0;    // when the next transition is due
};
constexpr double kDutyMinLead = 0.005, kDutyMaxLead = 0.05;
DutyStep duty_step(double now, double phase_start, double period_s, double fraction, double attach_seconds);

// ---- when probes are on (other modes) ------------------------------------
// `pol` null: held at exec, not yet adopted by discovery (trace from start).
bool wants_on(const TargetPolicy* pol, double now, double on_leak_until, bool attached);

// on-leak: the daemon's leak slope of the target over its budget switches
// tracing on for on_leak_duration. Returns the new "on until" time.
double on_leak_until(const TargetPolicy& pol, bool slope_valid, double slope_bytes_per_second, double now,
                     double until);

// ---- counters --------------------------------------------------------------
// Exported counters: kernel deltas since the last read, scaled by 1 /
// fraction in duty mode. A total that went down (a slot reused) adds nothing.
struct Counters {
  double alloc_bytes = 0, free_bytes = 0, allocs = 0, frees = 0, unknown_frees = 0, drops = 0;
  std::vector<double> hist = std::vector<double>(ALLOC_HIST_BUCKETS, 0.0);
};
double counter_scale(const TargetPolicy& pol);
void advance(Counters& out, const alloc_stats& now, const alloc_stats& last, double scale);

// Duty mode: each counter is what was counted over the share of time the
// counting flag was really on (measured by whoever set and cleared it), not
// the nominal fraction: a flag set late under load must not bias the rate.
// Counters never go down (the estimate is raised only).
double duty_estimate(double counted, double elapsed_s, double counting_s);
void advance_duty(Counters& out, const alloc_stats& now, double elapsed_s, double counting_s);

// Live bytes the kernel counted: allocated - freed + what a child held at
// fork inherited from its parent; and the part in mmapped chunks (glibc).
double live_bytes(const alloc_stats& s);
double mmapped_live_bytes(const alloc_stats& s);

// ---- exactness -------------------------------------------------------------
// The live heap is exact only with every block seen: probes in place before
// the target's first instruction, still attached, nothing dropped (a dropped
// block is missing from both sides of the sum), and counting continuously
// (not duty).
bool live_heap_exact(bool from_start, bool attached, double drops, bool duty);

// ---- probes ----------------------------------------------------------------
// One probe: where in the allocator's file, entry or return, and its cookie's
// function bits.
struct ProbeSpec {
  uint64_t offset = 0;
  bool ret = false;
  uint32_t fn = 0;
  bool operator==(const ProbeSpec&) const = default;
};
// The probe set of an allocator. glibc's chunk header gives a block's size
// at return, so header mode needs no entry probe on the malloc family;
// address mode (leak sites, other allocators) needs entries for the request.
// free's entry probe goes on the first instruction the kernel emulates
// (after its NULL test), never a guessed offset. Aliases (aligned_alloc =
// memalign) are probed once. Errc::not_found without malloc or free.
Result<std::vector<ProbeSpec>> plan_probes(const elf::ElfFile& f, bool glibc, bool track_addrs,
                                           const std::string& prefix = "");

// The settings every probe of a target carries in its cookie (CK_* in
// bpf/alloc.h): fixed for the life of its links.
uint64_t cookie_settings(bool glibc, bool track_addrs, bool stacks, bool duty, uint32_t slot);

}  // namespace memlens::alloc
