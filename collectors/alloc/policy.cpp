#include "collectors/alloc/policy.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>
#include <string_view>

namespace memlens::alloc {

DutyStep duty_step(double now, double phase_start, double period_s, double fraction, double attach_seconds) {
  const double period = std::max(0.1, period_s);
  const double on_for = period * std::clamp(fraction, 0.0, 1.0);
  const double lead = std::clamp(2 * attach_seconds, kDutyMinLead, kDutyMaxLead);
  // The period whose on-phase (with its lead) is current or next.
  const double k = std::floor((now - phase_start + lead) / period);
  const double on_at = phase_start + k * period, off_at = on_at + on_for;
  DutyStep s;
  s.links = on_for > 0 && now >= on_at - lead && now < off_at;
  s.counting = s.links && now >= on_at;
  if (now < on_at - lead) s.next_due = on_at - lead;
  else if (now < on_at) s.next_due = on_at;
  else if (now < off_at) s.next_due = off_at;
  else s.next_due = on_at + period - lead;
  return s;
}

bool wants_on(const TargetPolicy* pol, double now, double on_leak_until, bool attached) {
  if (!pol) return true;
  switch (pol->alloc_mode) {
    case AllocMode::off: return false;
    case AllocMode::full: return true;
    case AllocMode::duty: return attached;  // duty_step decides
    case AllocMode::on_leak: return now < on_leak_until;
  }
  return false;
}

double on_leak_until(const TargetPolicy& pol, bool slope_valid, double slope_bytes_per_second, double now,
                     double until) {
  if (pol.alloc_mode != AllocMode::on_leak || !slope_valid || pol.leak_budget_bytes_per_second <= 0 || now < until)
    return until;
  if (slope_bytes_per_second <= pol.leak_budget_bytes_per_second) return until;
  return now + std::chrono::duration<double>(pol.on_leak_duration).count();
}

double counter_scale(const TargetPolicy& pol) {
  return pol.alloc_mode == AllocMode::duty && pol.duty_fraction > 0 ? 1.0 / pol.duty_fraction : 1.0;
}

void advance(Counters& out, const alloc_stats& now, const alloc_stats& last, double scale) {
  auto add = [&](double& acc, uint64_t n, uint64_t l) {
    if (n >= l) acc += static_cast<double>(n - l) * scale;
  };
  add(out.alloc_bytes, now.alloc_bytes, last.alloc_bytes);
  add(out.free_bytes, now.free_bytes, last.free_bytes);
  add(out.allocs, now.allocs, last.allocs);
  add(out.frees, now.frees, last.frees);
  add(out.unknown_frees, now.unknown_frees, last.unknown_frees);
  // Drops are what was lost, not an estimate: never scaled.
  out.drops += static_cast<double>(now.drops - std::min(now.drops, last.drops));
  for (std::size_t i = 0; i < ALLOC_HIST_BUCKETS; ++i) add(out.hist[i], now.hist[i], last.hist[i]);
}

double duty_estimate(double counted, double elapsed_s, double counting_s) {
  if (counting_s <= 0 || elapsed_s <= 0) return 0;
  return counted * std::max(1.0, elapsed_s / counting_s);
}

void advance_duty(Counters& out, const alloc_stats& now, double elapsed_s, double counting_s) {
  auto raise = [&](double& acc, uint64_t n) {
    acc = std::max(acc, duty_estimate(static_cast<double>(n), elapsed_s, counting_s));
  };
  raise(out.alloc_bytes, now.alloc_bytes);
  raise(out.free_bytes, now.free_bytes);
  raise(out.allocs, now.allocs);
  raise(out.frees, now.frees);
  raise(out.unknown_frees, now.unknown_frees);
  out.drops = std::max(out.drops, static_cast<double>(now.drops));
  for (std::size_t i = 0; i < ALLOC_HIST_BUCKETS; ++i) raise(out.hist[i], now.hist[i]);
}

double live_bytes(const alloc_stats& s) {
  return static_cast<double>(s.alloc_bytes) - static_cast<double>(s.free_bytes) +
         static_cast<double>(static_cast<int64_t>(s.inherited_bytes));
}

double mmapped_live_bytes(const alloc_stats& s) {
  return static_cast<double>(s.mmap_alloc_bytes) - static_cast<double>(s.mmap_free_bytes) +
         static_cast<double>(static_cast<int64_t>(s.inherited_mmap_bytes));
}

bool live_heap_exact(bool from_start, bool attached, double drops, bool duty) {
  return from_start && attached && drops == 0 && !duty;
}

Result<std::vector<ProbeSpec>> plan_probes(const elf::ElfFile& f, bool glibc, bool track_addrs,
                                           const std::string& prefix) {
  const bool entries = track_addrs || !glibc;
  struct Want {
    const char* sym;
    uint32_t fn;
    bool entry, ret;
  };
  // jemalloc's own API has the argument order of the standard calls it
  // stands beside: mallocx(size, flags) as malloc, rallocx(ptr, size, flags)
  // as realloc, sdallocx(ptr, size, flags) and dallocx(ptr, flags) as free.
  // Rust's allocator API goes through them, never through malloc and free.
  const Want want[] = {
      {"malloc", FN_MALLOC, entries, true},     {"calloc", FN_CALLOC, entries, true},
      {"memalign", FN_MEMALIGN, entries, true}, {"aligned_alloc", FN_MEMALIGN, entries, true},
      {"valloc", FN_MALLOC, entries, true},     {"pvalloc", FN_MALLOC, entries, true},
      {"posix_memalign", FN_POSIX_MEMALIGN, true, true},
      {"realloc", FN_REALLOC, true, true},      {"free", FN_FREE, true, false},
      {"mallocx", FN_MALLOC, true, true},       {"rallocx", FN_REALLOC, true, true},
      {"sdallocx", FN_FREE, true, false},       {"dallocx", FN_FREE, true, false},
  };
  std::vector<ProbeSpec> out;
  std::set<std::pair<uint64_t, bool>> seen;
  bool some_alloc = false, some_free = false;
  for (const auto& w : want) {
    // The x-API is jemalloc's: never planned for glibc.
    const bool x_api = std::string_view(w.sym).ends_with("allocx");
    if (x_api && glibc) continue;
    auto sym = f.find(prefix + w.sym);
    if (!sym) continue;
    some_alloc |= w.fn != FN_FREE;
    some_free |= w.fn == FN_FREE;
    if (w.entry) {
      uint64_t off = sym->file_offset;
      if (!w.ret) {
        if (auto site = elf::probe_site(f, *sym)) {
          off += site->offset;
          if (!site->emulated)
            spdlog::debug("alloc: {} in {}: {} (probe will be single-stepped)", w.sym, f.path(), site->note);
        }
      }
      if (seen.insert({off, false}).second) out.push_back({off, false, w.fn});
    }
    // Without an entry probe nothing is stashed: the return probe's cookie
    // says so, and it skips the stash lookup.
    const bool header_only = !w.entry && (w.fn == FN_MALLOC || w.fn == FN_CALLOC || w.fn == FN_MEMALIGN);
    if (w.ret && seen.insert({sym->file_offset, true}).second)
      out.push_back({sym->file_offset, true, w.fn | (header_only ? uint32_t{FN_HEADER_ONLY} : 0u)});
  }
  if (!some_alloc || !some_free)
    return make_error(Errc::not_found, f.path() + ": no " + prefix + "malloc/" + prefix + "free pair to probe");
  return out;
}

uint64_t cookie_settings(bool glibc, bool track_addrs, bool stacks, bool duty, uint32_t slot) {
  return CK_VALID | (glibc ? CK_HEADER : 0) | (track_addrs ? CK_TRACK : 0) | (stacks ? CK_STACKS : 0) |
         (duty ? CK_DUTY : 0) | (static_cast<uint64_t>(slot) << CK_SLOT_SHIFT);
}

}  // namespace memlens::alloc
