#include "collectors/heap_collector.h"

#include <malloc.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "collectors/elf_symbols.h"
#include "daemon/clock.h"
#include "daemon/config.h"

namespace memlens {

namespace {

struct HeapMetrics {
  MetricDesc inuse = metric("allocator_inuse", "bytes", MetricKind::gauge,
                            "Bytes the allocator has handed out, from its own books: glibc mallinfo2 uordblks + "
                            "hblkhd (chunk bytes with headers; chunks cached in tcache count as in use).");
  MetricDesc free = metric("allocator_free", "bytes", MetricKind::gauge,
                           "Bytes free inside the allocator's arenas (glibc fordblks: bins, fastbins, top chunks).");
  MetricDesc system = metric("allocator_system", "bytes", MetricKind::gauge,
                             "Bytes the allocator took from the system (glibc arena + hblkhd).");
  MetricDesc mmapped = metric("allocator_mmapped", "bytes", MetricKind::gauge,
                              "Bytes in chunks mmapped one by one (glibc hblkhd), part of in-use and system.");
  MetricDesc arenas = metric("allocator_arenas", "", MetricKind::gauge, "Arenas of the allocator (glibc: main + thread arenas).");
  MetricDesc chunks = metric("allocator_free_chunks", "", MetricKind::gauge,
                             "Free chunks in bins and fastbins (glibc ordblks + smblks less one top per arena).");
  MetricDesc frag = metric("heap_fragmentation_ratio", "", MetricKind::gauge,
                           "Free bytes inside the arenas / arena bytes (glibc fordblks / arena), from the allocator's "
                           "books, for every target they can be read for. (Under exact allocation tracing, "
                           "memlens_heap_resident_unused_ratio compares live bytes with resident memory.)");
  MetricDesc age = metric("allocator_books_age", "seconds", MetricKind::gauge,
                          "Age of the published figures: large heaps are walked every few ticks, and a walk "
                          "that could not be made consistent keeps the previous figures; 0 while the target has "
                          "not run since its last walk (its figures are current).");
  MetricDesc readable = metric(
      "allocator_readable", "", MetricKind::gauge,
      "1 (reason ok) when the allocator's books are read; 0 with the reason when they are not: disabled, "
      "unsupported_allocator, musl, no_symbols, permission_denied, layout_not_recognised, too_many_free_chunks, "
      "inconsistent.");
  // Self-metrics, daemon-wide.
  MetricDesc walks = metric("allocator_walks", "", MetricKind::counter,
                            "Walks of allocator books, by result: consistent, or inconsistent (the target changed "
                            "what was being read; retried).");
  MetricDesc failures = metric("allocator_walk_failures", "", MetricKind::counter,
                               "Collections where no walk could be made consistent: the previous figures were kept.");
  MetricDesc deferred = metric("allocator_walks_deferred", "", MetricKind::counter,
                               "Walks put off to a later tick by the per-tick chunk budget.");
  MetricDesc unchanged = metric("allocator_walks_unneeded", "", MetricKind::counter,
                                "Walks not made: the target had not run since its last consistent walk (its CPU "
                                "clock had not moved), so its figures were current.");
  MetricDesc chunks_read = metric("allocator_chunks_read", "", MetricKind::counter,
                                  "Free chunks visited by walks of allocator books.");
  MetricDesc pages_read = metric("allocator_pages_read", "", MetricKind::counter,
                                 "Pages copied from targets (process_vm_readv) by walks of allocator books.");
  MetricDesc walk_seconds = metric("allocator_walk", "seconds", MetricKind::counter,
                                   "Time memlensd spent walking allocator books.");
  MetricDesc read_calls = metric("allocator_read_calls", "", MetricKind::counter,
                                 "process_vm_readv calls made by walks of allocator books (up to 1024 ranges each).");
  MetricDesc list_retries = metric("allocator_list_rereads", "", MetricKind::counter,
                                   "Free lists read again within a walk because the target changed them meanwhile.");
};

const HeapMetrics& m() {
  static const HeapMetrics metrics;
  return metrics;
}

// How long a "cannot read" verdict stands before it is looked at again.
constexpr double kRelocateSeconds = 60;

// The [heap] (brk) mapping: possibly several adjacent lines.
std::optional<glibc::Range> brk_heap(const std::vector<Mapping>& maps) {
  std::optional<glibc::Range> r;
  for (const auto& mp : maps) {
    if (mp.path != "[heap]") continue;
    if (!r) r = glibc::Range{mp.start, mp.end};
    else if (mp.start == r->end) r->end = mp.end;
  }
  return r;
}

}  // namespace

Result<void> HeapCollector::start(const ConfigPtr& config) {
  const Config& cfg = *config;
  proc_ = ProcFs(cfg.procfs);
  tick_seconds_ = std::max(0.1, std::chrono::duration<double>(cfg.tick_interval).count());
  for (auto& [id, pt] : per_target_) pt.next_locate = 0;  // procfs root may have changed
  return {};
}

void HeapCollector::target_removed(const Target& t) { per_target_.erase(t.id); }

void HeapCollector::locate(const Target& t, PerTarget& pt, double now) {
  pt.located = false;
  pt.validated = false;
  pt.next_locate = now + kRelocateSeconds;
  pt.reason.clear();
  // Figures only ever come from the location found now: the last ones
  // stay only if it is the same (a busy heap, not an exec).
  const glibc::WalkInput before = pt.input;
  auto keep = std::move(pt.books);
  pt.books.reset();
  const pid_t pid = t.pid();
  auto text = read_file(proc_.path(pid, "maps"), 64u << 20);
  if (!text) {
    if (text.error().code == Errc::permission) pt.reason = "permission_denied";
    else pt.next_locate = 0;  // gone, or going: the proc collector says so
    return;
  }
  const auto maps = parse_maps(*text);
  auto alloc = elf::find_allocator(proc_.root(), pid);
  if (!alloc) {
    const bool musl = std::any_of(maps.begin(), maps.end(), [](const Mapping& mp) {
      return mp.path.find("ld-musl") != std::string::npos || mp.path.find("libc.musl") != std::string::npos;
    });
    pt.allocator = musl ? "musl" : "unknown";
    pt.reason = musl ? "musl" : alloc.error().code == Errc::permission ? "permission_denied" : "no_symbols";
    return;
  }
  pt.allocator = elf::allocator_name(alloc->kind);
  // A static executable with glibc's malloc linked in (symbols kept).
  const bool glibc = alloc->kind == elf::AllocatorKind::glibc ||
                     (alloc->kind == elf::AllocatorKind::other && alloc->elf->defines("mallinfo2") &&
                      alloc->elf->defines("__libc_malloc"));
  if (!glibc) {
    pt.reason = alloc->path.find("musl") != std::string::npos ? "musl" : "unsupported_allocator";
    if (pt.reason == "musl") pt.allocator = "musl";
    return;
  }
  pt.allocator = "glibc";
  auto loc = glibc::locate_cached(*alloc->elf);
  if (!loc) {
    pt.reason = loc.error().code == Errc::not_found ? "no_symbols" : "layout_not_recognised";
    if (!std::exchange(pt.logged, true))
      spdlog::info("heap: target {} pid {}: {}", t.name, pid, loc.error().message);
    return;
  }
  std::vector<Mapping> own;
  for (const auto& mp : maps)
    if (mp.path == alloc->path) own.push_back(mp);
  auto bias = alloc->elf->load_bias(own);
  if (!bias) {
    pt.reason = "layout_not_recognised";
    return;
  }
  pt.input = glibc::WalkInput{};
  pt.input.main_arena = loc->main_arena + *bias;
  pt.input.n_mmaps = loc->n_mmaps + *bias;
  pt.input.mmapped_mem = loc->mmapped_mem + *bias;
  pt.input.check_brk = brk_heap(maps);
  for (const auto& mp : maps)
    if (mp.path.empty() && mp.perms.rfind("rw", 0) == 0) pt.input.anon.push_back({mp.start, mp.end});
  pt.located = true;
  if (keep && pt.input.main_arena == before.main_arena && pt.input.n_mmaps == before.n_mmaps &&
      pt.input.mmapped_mem == before.mmapped_mem)
    pt.books = std::move(keep);
  spdlog::debug("heap: target {} pid {}: {} in {}", t.name, pid, loc->detail, alloc->path);
}

namespace {

// memlensd watching itself: a walk of its own heap would see its own
// allocations change it, so ask glibc, which locks the arenas, and count
// the arenas through main_arena.next (arenas are never freed; read through
// process_vm_readv all the same, so a wrong location faults nothing).
glibc::Books own_books(const glibc::WalkInput& in) {
  const struct mallinfo2 mi = ::mallinfo2();
  glibc::Books b{mi.arena, mi.ordblks, mi.smblks, mi.hblks, mi.hblkhd, mi.fsmblks, mi.uordblks, mi.fordblks,
                 mi.keepcost, 1};
  glibc::ProcessMemory self(getpid());
  uint64_t a = 0;
  glibc::RemoteMemory::Read rd{in.main_arena + glibc::layout::kNext, 8, &a, false};
  while (self.read(std::span(&rd, 1)) && rd.ok && a && a != in.main_arena && b.arenas < 4096) {
    ++b.arenas;
    rd = {a + glibc::layout::kNext, 8, &a, false};
  }
  return b;
}

}  // namespace

Result<void> HeapCollector::refresh(const Target& t, PerTarget& pt, double now) {
  if (t.pid() == getpid()) {
    pt.books = own_books(pt.input);
    pt.books_at = now;
    pt.validated = true;
    pt.due_tick = tick_ + 1;
    return {};
  }
  glibc::ProcessMemory mem(t.pid());
  // Read before the walk: if the process runs during it, the next look
  // sees its clock moved and walks again.
  const std::optional<uint64_t>& cpu_before = t.cpu_ns;
  const double t0 = mono_now();
  Result<glibc::Books> books = make_error(Errc::malformed, "not walked");
  uint64_t chunks = 0;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    glibc::WalkStats st;
    const double w0 = mono_now();
    books = glibc::walk(mem, pt.input, limits_, &st, &buffer_);
    spdlog::trace("heap: pid {} walk: {} chunks, {} pages, {} reads, {} lists read again, {:.1f} ms", t.pid(),
                  st.chunks, st.pages, st.batches, st.list_retries, (mono_now() - w0) * 1e3);
    list_retries_ += st.list_retries;
    chunks += st.chunks;
    pages_ += st.pages;
    if (books) {
      // Still there at the end? A process killed while its copied pages
      // were being sorted through left no failed read behind; its figures
      // are not published, and its exit is counted like one mid-read.
      uint64_t word = 0;
      glibc::RemoteMemory::Read probe{pt.input.main_arena, sizeof word, &word};
      if (auto alive = mem.read({&probe, 1}); !alive && alive.error().code == Errc::not_found) {
        books = alive.error();
        break;
      }
      ++walks_ok_;
      break;
    }
    if (books.error().code != Errc::malformed) break;
    ++walks_inconsistent_;
    spdlog::debug("heap: target {} pid {}: walk {}: {}", t.name, t.pid(), attempt + 1, books.error().message);
  }
  chunks_ += chunks;
  pt.last_seconds = mono_now() - t0;
  spent_ += pt.last_seconds;
  seconds_ += pt.last_seconds;
  syscalls_ += mem.syscalls();
  // Its share of the walking budget: 5 % of a core, or less with many
  // targets (1000 idle targets measured 17 % of a core walked every tick).
  const double share = std::min(kTargetShare, kTickShare / static_cast<double>(std::max<std::size_t>(1, per_target_.size())));
  const double ticks = std::ceil(pt.last_seconds / (share * tick_seconds_));
  pt.due_tick = tick_ + std::max<uint64_t>(1, static_cast<uint64_t>(ticks));

  if (books) {
    pt.books = *books;
    pt.books_at = now;
    pt.cpu_ns_at_books = cpu_before;
    pt.failed_ticks = 0;
    pt.reason.clear();
    if (!pt.validated) {
      // Checked against [heap] once; later walks need not re-read maps.
      pt.validated = true;
      pt.input.check_brk.reset();
    }
    return {};
  }
  const Error& e = books.error();
  switch (e.code) {
    case Errc::not_found: return e;  // exited mid-walk
    case Errc::permission:
      pt.reason = "permission_denied";
      pt.books.reset();
      break;
    case Errc::full:
      pt.reason = "too_many_free_chunks";
      pt.books.reset();  // never a figure from a partial walk
      pt.due_tick = tick_ + 60;
      break;
    case Errc::malformed:
      // No walk held together: the previous figures stay. Three ticks like
      // that: look for the books again (the process may have exec'd).
      ++failures_;
      if (++pt.failed_ticks >= 3) {
        pt.located = false;
        pt.failed_ticks = 0;
        pt.next_locate = now;
      }
      if (!pt.books) pt.reason = "inconsistent";
      break;
    default:
      pt.reason = "layout_not_recognised";
      pt.located = false;
      pt.books.reset();
      if (!std::exchange(pt.logged, true)) spdlog::info("heap: target {} pid {}: {}", t.name, t.pid(), e.message);
      break;
  }
  return {};
}

Result<void> HeapCollector::collect(const Target& t, Sample& out) {
  PerTarget& pt = per_target_[t.id];
  const double now = mono_now();
  if (t.policy && !t.policy->heap) {
    out.gauge(m().readable, 0, {{"allocator", "unknown"}, {"reason", "disabled"}});  // not looked at
    return {};
  }
  if (!pt.located && now >= pt.next_locate) locate(t, pt, now);
  // Not run since the last consistent walk: the figures are those of now.
  bool unchanged = false;
  // (Never memlensd itself: its figures come from mallinfo2(), with no clock.)
  if (pt.located && pt.books && pt.reason.empty() && pt.cpu_ns_at_books) {
    unchanged = t.cpu_ns == pt.cpu_ns_at_books;
    if (unchanged) {
      pt.books_at = now;
      if (tick_ >= pt.due_tick) ++unchanged_;
    }
  }
  if (pt.located && tick_ >= pt.due_tick && !unchanged) {
    // Past the tick's share only for a target long overdue, and never past
    // twice the share: the cap holds whatever the number of targets.
    const bool overdue = tick_ >= pt.due_tick + kOverdueTicks;
    const double cap = kTickShare * tick_seconds_ * (overdue ? 2 : 1);
    if (spent_ > 0 && spent_ + pt.last_seconds > cap) {
      ++deferred_;
    } else if (auto r = refresh(t, pt, now); !r) {
      return r;
    }
  }
  if (!pt.reason.empty()) {
    out.gauge(m().readable, 0, {{"allocator", pt.allocator}, {"reason", pt.reason}});
    return {};
  }
  if (!pt.books) return {};  // located, first walk still to come
  const glibc::Books& b = *pt.books;
  const FixedLabels& alloc = alloc_labels_(pt.allocator);
  out.gauge(m().readable, 1, ok_labels_(pt.allocator));
  const double inuse = static_cast<double>(b.uordblks + b.hblkhd);
  out.gauge(m().inuse, inuse, alloc);
  out.gauge(m().free, static_cast<double>(b.fordblks), alloc);
  out.gauge(m().system, static_cast<double>(b.arena + b.hblkhd), alloc);
  out.gauge(m().mmapped, static_cast<double>(b.hblkhd), alloc);
  out.gauge(m().arenas, static_cast<double>(b.arenas), alloc);
  out.gauge(m().chunks, static_cast<double>(b.ordblks + b.smblks - b.arenas), alloc);
  if (b.arena > 0) out.gauge(m().frag, static_cast<double>(b.fordblks) / static_cast<double>(b.arena), alloc);
  out.gauge(m().age, now - pt.books_at, alloc);
  // The leak slope's series: better than anonymous RSS or eBPF's count
  // since attach; eBPF's exact live heap replaces it where there is one.
  out.series(SeriesId::heap, inuse, SeriesQuality::books);
  return {};
}

void HeapCollector::collect_global(GlobalSample& out) {
  out.counter(m().walks, static_cast<double>(walks_ok_), {{"result", "consistent"}});
  out.counter(m().walks, static_cast<double>(walks_inconsistent_), {{"result", "inconsistent"}});
  out.counter(m().failures, static_cast<double>(failures_));
  out.counter(m().deferred, static_cast<double>(deferred_));
  out.counter(m().unchanged, static_cast<double>(unchanged_));
  out.counter(m().chunks_read, static_cast<double>(chunks_));
  out.counter(m().pages_read, static_cast<double>(pages_));
  out.counter(m().walk_seconds, seconds_);
  out.counter(m().list_retries, static_cast<double>(list_retries_));
  out.counter(m().read_calls, static_cast<double>(syscalls_));
  ++tick_;
  spent_ = 0;
}

}  // namespace memlens
