// Allocation tracing: the glue between discovery, the kernel side
// (bpf/alloc.bpf.c) and the rooms of collectors/alloc/ (policy: pure
// decisions; holds: exec and fork holds and the watchdog; probes: slots,
// attaching, reapers; leak_sites).
//
// Threads and locks, and what each may touch:
//  - The collection thread (App): start, target_added/removed, collect,
//    collect_global. Takes mu.
//  - The poller thread: hold events from the ring buffer (the held process
//    waits for it), duty phases (on time, not at tick granularity), held
//    processes that discovery never adopted. Takes mu.
//  - The reaper threads (alloc::Reapers): destroy the links handed to them
//    and give slots back; they touch only their graveyard (its own lock)
//    and the slot pool (map writes and atomics).
//  - The watchdog process: the hold slots only, by compare-and-swap.
//  - The kernel: stops held processes and fills hold slots; counts into
//    stats slots.
// mu guards everything in AllocState but the pool's atomics and the
// reapers. collect reads smaps (fragmentation) before it takes mu, so holds
// and duty phases never wait for a walk of every mapping.
#include "collectors/alloc_collector.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>

#include "alloc.skel.h"
#include "bpf/alloc.h"
#include "collectors/alloc/holds.h"
#include "collectors/alloc/leak_sites.h"
#include "collectors/alloc/policy.h"
#include "collectors/alloc/probes.h"
#include "collectors/bpf_support.h"
#include "collectors/elf_symbols.h"
#include "collectors/proc_parse.h"
#include "daemon/clock.h"
#include "daemon/discovery.h"
#include "daemon/procfs.h"

namespace memlens {

static_assert(sizeof(alloc_stats) == 8 * (10 + ALLOC_HIST_BUCKETS));
static_assert(sizeof(alloc_addr_key) == 16 && sizeof(alloc_addr_val) == 16);
static_assert(sizeof(hold_slot) == 16 && sizeof(hold_event) == 32);

namespace {

struct AllocMetrics {
  MetricDesc live = metric(
      "heap_live", "bytes", MetricKind::gauge,
      "Bytes in live allocator blocks (glibc: chunk bytes incl. the 8-byte size field; other allocators: "
      "requested bytes). Exported only for targets traced since their first allocation (started after "
      "memlensd, held at exec until probes were attached), where it is exact.");
  MetricDesc net = metric(
      "heap_net_since_attach", "bytes", MetricKind::gauge,
      "Bytes allocated minus bytes freed since the probes were attached (may be negative for a target "
      "already running at attach: it frees blocks allocated before). Its slope is the live heap's slope.");
  MetricDesc alloc_bytes = metric("alloc", "bytes", MetricKind::counter,
                                  "Bytes allocated since attach (same units as heap_live). Estimated "
                                  "(observed / duty fraction) in duty mode.");
  MetricDesc free_bytes = metric("freed", "bytes", MetricKind::counter,
                                 "Bytes freed since attach, including blocks allocated before attach "
                                 "(header mode). Estimated in duty mode.");
  MetricDesc allocs = metric("allocs", "", MetricKind::counter,
                             "Allocations (malloc, calloc, realloc, memalign family) since attach.");
  MetricDesc frees = metric("frees", "", MetricKind::counter,
                            "Frees (free, realloc of a block) since attach; in address mode only frees "
                            "of blocks allocated since attach.");
  MetricDesc unknown_frees = metric("alloc_untracked_frees", "", MetricKind::counter,
                                    "Address mode: frees of blocks allocated before attach (ignored).");
  MetricDesc drops = metric("alloc_target_drops", "", MetricKind::counter,
                            "Blocks this target's probes could not account (address map full, header "
                            "unreadable); heap_live excludes them.");
  MetricDesc hist = metric("alloc_size", "bytes", MetricKind::histogram,
                           "Sizes of allocated blocks since attach (glibc: chunk bytes).");
  MetricDesc frag = metric(
      "heap_resident_unused_ratio", "", MetricKind::gauge,
      "1 - live bytes in arena chunks / resident bytes of the allocator's heap mappings ([heap] and "
      "glibc arenas; mmapped chunks excluded): the share of resident heap holding no live block. Only "
      "when heap_live is exact and the allocator is glibc. (memlens_heap_fragmentation_ratio is the "
      "allocator's own free / arena bytes.)");
  MetricDesc heap_resident = metric("heap_resident", "bytes", MetricKind::gauge,
                                    "Resident bytes of the allocator's heap mappings ([heap] and glibc arenas).");
  MetricDesc tracing = metric("alloc_tracing", "", MetricKind::gauge,
                              "1 while allocation probes are attached to this target (duty mode: counting at "
                              "some time during the last tick), 0 while off (duty off-phase, on_leak waiting); "
                              "labels give mode and coverage.");
  MetricDesc detaching = metric("alloc_probes_detaching", "", MetricKind::gauge,
                                "Uprobe links of gone targets still being detached (each waits for a "
                                "kernel grace period).");
  MetricDesc held = metric("exec_holds", "", MetricKind::counter,
                           "Processes stopped at exec until their allocation probes were attached, by "
                           "outcome: attached (before it ran), released_early (it ran before its probes were in place: "
                           "the 500 ms bound, or a SIGCONT from elsewhere; traced since attach), failed, "
                           "not_selected (its name matched, the rest of the selector did not).");
};

const AllocMetrics& m() {
  static const AllocMetrics metrics;
  return metrics;
}

const char* drop_reason_name(int r) {
  switch (r) {
    case DROP_ADDR_MAP_FULL: return "addr_map_full";
    case DROP_HEADER_READ: return "header_read";
    case DROP_STASH: return "stash";
    case DROP_RINGBUF: return "ringbuf";
    case DROP_HOLD_SLOT: return "hold_slot";
    case DROP_STACK: return "stack";
    case DROP_NO_SLOT: return "no_slot";
    default: return "other";
  }
}

double seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

uint64_t read_start_time(const ProcFs& fs, pid_t pid) {
  auto text = read_file(fs.path(pid, "stat"));
  if (!text) return 0;
  auto st = parse_stat(*text);
  return st ? st->starttime : 0;
}

Result<uint64_t> heap_resident(const ProcFs& fs, pid_t pid) {
  auto text = read_file(fs.path(pid, "smaps"), 64u << 20);
  if (!text) return text.error();
  return parse_smaps_heap_resident(*text);
}

}  // namespace

// One process being traced (or held, waiting to be adopted by discovery).
struct AllocTrace {
  // Who.
  pid_t pid = 0;
  uint64_t start_time = 0;
  std::shared_ptr<const TargetPolicy> policy;  // null while held, not yet adopted
  bool adopted = false;                        // discovery reported it (target_added)
  double created_at = 0;
  // What is probed, and how.
  std::optional<elf::AllocatorLocation> alloc;
  alloc::SlotLease slot;
  alloc::ProbeSet probes;
  bool track_addrs = false, stacks = false;
  bool from_start = false;  // probes in place before its first instruction
  double attach_seconds = 0;
  // Modes.
  double phase_start = 0;        // duty: origin of the periods
  bool duty_counting = false;    // duty: the slot's counting flag is set
  bool duty_counted = false;     // duty: it was at some time since the last collect
  double counting_since = 0;     // duty: when the flag was last set
  double counted_seconds = 0;    // duty: time the flag was on, before counting_since
  double on_leak_until = 0;      // on-leak: tracing until then
  // Counters: kernel totals at the last read, and the exported ones.
  alloc_stats last{};
  alloc::Counters out;
  // Periodic work: leak sites every 5 s, fragmentation every smaps_interval.
  double last_leak_scan = -1e18;
  double frag_at = -1e18, frag_ratio = -1, heap_resident = 0;

  bool attached() const { return probes.attached(); }
  bool duty() const { return policy && policy->alloc_mode == AllocMode::duty; }
  bool glibc() const { return alloc && alloc->kind == elf::AllocatorKind::glibc; }
  bool exact() const { return alloc::live_heap_exact(from_start, attached(), out.drops, duty()); }
};

struct AllocState {
  std::mutex mu;
  ConfigPtr cfg;
  bpf::MapMemoryReading map_memory;
  ProcFs fs;
  bool started = false;
  // The loaded object, and what the kernel offered.
  std::unique_ptr<alloc_bpf, decltype(&alloc_bpf__destroy)> skel{nullptr, alloc_bpf__destroy};
  bool multi = false;      // multi-uprobe links
  bool fork_hold = false;  // bpf_send_signal_task
  alloc::SlotPool pool;
  std::unique_ptr<alloc::Reapers> reapers;
  // Holds.
  std::unique_ptr<alloc::HoldSlots> hold_slots;
  std::unique_ptr<alloc::Watchdog> watchdog;
  alloc::EntryIds entry_ids;
  bpf::Link hold_link, fork_link;
  ring_buffer* rb = nullptr;
  std::size_t hold_count = 0;
  uint64_t holds_attached = 0, holds_failed = 0, holds_late = 0, holds_not_selected = 0;
  // The "no free slot" warning, at most once a minute (a storm of short-lived
  // targets can hit it thousands of times a second; each is counted).
  double no_slot_warned_at = -1e9;
  uint64_t no_slot_quiet = 0;
  // Traces by pid, and the leak-site documents by target name.
  std::map<pid_t, AllocTrace> traces;
  alloc::LeakSiteBook leaks;
  std::thread poller;
  std::atomic<bool> stop{false};
};

namespace {

// Gives the trace a slot (unless it has one: held at fork) and publishes its
// settings for the fork hold. False when no slot is free (counted).
bool init_target_maps(AllocState& s, AllocTrace& tr) {
  if (!tr.slot) tr.slot = s.pool.take();
  if (!tr.slot) return false;
  alloc_target_cfg c{};
  c.size_source = tr.glibc() ? ALLOC_SIZE_HEADER : ALLOC_SIZE_REQUEST;
  c.track_addrs = tr.track_addrs;
  c.capture_stacks = tr.stacks;
  c.slot = *tr.slot;
  __u32 key = static_cast<__u32>(tr.pid);
  bpf_map_update_elem(bpf_map__fd(s.skel->maps.target_cfg), &key, &c, BPF_ANY);
  return true;
}

void delete_addrs_of(AllocState& s, pid_t pid) {
  int fd = bpf_map__fd(s.skel->maps.addrs);
  alloc_addr_key k{}, next{};
  std::vector<alloc_addr_key> mine;
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, &next) == 0) {
    if (next.pid == static_cast<__u32>(pid)) mine.push_back(next);
    k = next;
    prev = &k;
  }
  for (auto& key : mine) bpf_map_delete_elem(fd, &key);
}

// Stops counting and hands the links to the reapers.
void detach(AllocState& s, AllocTrace& tr) {
  if (!tr.attached()) return;
  if (tr.duty_counting && tr.slot) {
    s.pool.set_counting(*tr.slot, false);
    tr.duty_counting = false;
    tr.counted_seconds += mono_now() - tr.counting_since;
  }
  tr.probes.reset();
}

// Everything the kernel holds for a trace that ends (its slot goes back
// once its links are detached).
void forget(AllocState& s, AllocTrace& tr) {
  detach(s, tr);
  __u32 key = static_cast<__u32>(tr.pid);
  bpf_map_delete_elem(bpf_map__fd(s.skel->maps.target_cfg), &key);
  if (tr.track_addrs) delete_addrs_of(s, tr.pid);
  tr.slot.reset();
}

Result<void> attach(AllocState& s, AllocTrace& tr) {
  if (tr.attached()) return {};
  if (!tr.slot) return make_error(Errc::unavailable, "no stats slot");
  auto specs = alloc::plan_probes(*tr.alloc->elf, tr.glibc(), tr.track_addrs, tr.alloc->prefix);
  if (!specs) return specs.error();
  alloc::AttachPlan plan;
  plan.entry = s.skel->progs.alloc_entry;
  plan.ret = s.skel->progs.alloc_return;
  plan.multi = s.multi;
  plan.pid = tr.pid;
  plan.binary = tr.alloc->open_path;
  plan.specs = std::move(*specs);
  plan.settings = alloc::cookie_settings(tr.glibc(), tr.track_addrs, tr.stacks, tr.duty(), *tr.slot);
  auto set = alloc::attach_probes(*s.reapers, plan, tr.slot);
  if (!set) return set.error();
  tr.probes = std::move(*set);
  return {};
}

void configure_trace(AllocState& s, AllocTrace& tr, std::shared_ptr<const TargetPolicy> pol) {
  tr.policy = std::move(pol);
  const TargetPolicy* p = tr.policy.get();
  tr.track_addrs = p && (p->leak_sites || p->alloc_mode == AllocMode::on_leak);
  tr.stacks = tr.track_addrs;
  if (tr.alloc && !tr.glibc()) tr.track_addrs = true;  // no size header: sizes by address
  if (s.skel && !init_target_maps(s, tr)) {
    if (const double now = mono_now(); now - s.no_slot_warned_at < 60) {
      ++s.no_slot_quiet;
    } else {
      spdlog::warn("alloc: pid {}: no free stats slot (bpf.max_targets, or targets exiting faster than their "
                   "probes detach); not traced ({} more since the last warning)",
                   tr.pid, s.no_slot_quiet);
      s.no_slot_warned_at = now;
      s.no_slot_quiet = 0;
    }
  }
}

void apply_mode(AllocState& s, AllocTrace& tr, bool on) {
  if (!tr.alloc) return;
  if (on && !tr.attached()) {
    const double t0 = mono_now();
    if (auto r = attach(s, tr); !r) {
      spdlog::debug("alloc: pid {}: {}", tr.pid, r.error().message);
    } else {
      tr.attach_seconds = mono_now() - t0;
      spdlog::debug("alloc: pid {}: attached in {:.2f} ms", tr.pid, tr.attach_seconds * 1e3);
    }
  } else if (!on && tr.attached()) {
    detach(s, tr);
    spdlog::debug("alloc: pid {}: detaching", tr.pid);
  }
}

// Duty mode (alloc::duty_step): links on and off, counting flag on time.
// Returns when the next transition is due.
double run_duty(AllocState& s, AllocTrace& tr, double now) {
  const auto step = alloc::duty_step(now, tr.phase_start, seconds(tr.policy->duty_period), tr.policy->duty_fraction,
                                     tr.attach_seconds);
  if (step.links) apply_mode(s, tr, true);
  if (step.counting != tr.duty_counting && tr.attached() && tr.slot) {
    s.pool.set_counting(*tr.slot, step.counting);
    // The times the flag really changed: the scaling uses them.
    const double at = mono_now();
    if (step.counting) tr.counting_since = at;
    else tr.counted_seconds += at - tr.counting_since;
    tr.duty_counting = step.counting;
    tr.duty_counted |= step.counting;
  }
  if (!step.links) apply_mode(s, tr, false);
  return step.next_due;
}

const TargetPolicy* entry_by_id(const AllocState& s, uint32_t id) {
  const std::string* name = s.entry_ids.name_of(id);
  if (!name) return nullptr;
  for (const auto& p : s.cfg->targets)
    if (p.name == *name) return &p;
  return nullptr;
}

// A process the kernel stopped at exec (or fork) because its comm is held:
// attach its probes and release it, quickly.
void on_hold_event(AllocState& s, const hold_event& e) {
  const pid_t pid = static_cast<pid_t>(e.pid);
  if (!s.hold_slots) return;
  // The kernel held it by name; the rest of the selector (cmdline, cgroup,
  // ...) is checked now, so a process that only shares the name is let go
  // at once, without probes.
  const TargetPolicy* pol = entry_by_id(s, e.entry);
  if (!pol || !process_matches(s.fs, pol->selector, pid, getpid())) {
    s.hold_slots->release(pid);
    if (e.forked) {
      __u32 key = e.pid;
      bpf_map_delete_elem(bpf_map__fd(s.skel->maps.target_cfg), &key);
      s.pool.lease(e.slot);  // given back at once
    }
    ++s.holds_not_selected;
    return;
  }
  const bool leak_sites = pol->leak_sites;
  AllocTrace tr;
  tr.pid = pid;
  tr.start_time = read_start_time(s.fs, pid);
  tr.created_at = mono_now();
  tr.phase_start = tr.created_at;
  if (e.forked) tr.slot = s.pool.lease(e.slot);  // the kernel took it, with the inheritance
  bool ok = false;
  auto exe = read_link(s.fs.path(pid, "exe"));
  if (exe) {
    // At exec the libraries are not mapped yet: decide from the executable
    // and what the loader will preload; a forked child has its parent's
    // mappings.
    const std::string root = s.fs.path(pid, "root");
    Result<elf::AllocatorLocation> loc = make_error(Errc::not_found, "");
    if (e.forked) {
      loc = elf::find_allocator(s.fs.root(), pid);
    } else {
      auto env = read_file(s.fs.path(pid, "environ"), 1 << 20);
      auto etc = read_file(root + "/etc/ld.so.preload");
      loc = elf::find_allocator_for_exe(root + *exe, elf::preload_libraries(env ? *env : "", etc ? *etc : "", root));
    }
    if (loc) {
      tr.alloc = *loc;
      tr.track_addrs = !tr.glibc() || leak_sites;
      tr.stacks = leak_sites;
      if (init_target_maps(s, tr)) {
        auto r = attach(s, tr);
        ok = r.ok();
        if (!ok) spdlog::warn("alloc: exec hold of pid {} ({}): {}", pid, e.comm, r.error().message);
      }
    }
  }
  // Still stopped (or about to stop) at exec, so nothing ran before the
  // probes? Anyone may send a SIGCONT: another tracer holding the same
  // name, a shell, a supervisor.
  const bool unran = ok && alloc::still_held(s.fs, pid);
  // Release it now, unless the watchdog did already at the bound: then it
  // ran for a while without probes and is traced since attach only.
  const bool claimed = s.hold_slots->release(pid);
  const bool in_time = claimed && unran;
  tr.from_start = in_time;
  spdlog::debug("alloc: {} hold of pid {} ({}): {} after {:.1f} ms", e.forked ? "fork" : "exec", pid, e.comm,
                !ok ? "failed" : in_time ? "attached" : "released before the probes were in place",
                (mono_now() - tr.created_at) * 1e3);
  if (!ok) {
    ++s.holds_failed;
    forget(s, tr);
    return;
  }
  ++(in_time ? s.holds_attached : s.holds_late);
  s.traces[pid] = std::move(tr);
}

int ringbuf_cb(void* ctx, void* data, size_t size) {
  if (size < sizeof(hold_event)) return 0;
  auto* s = static_cast<AllocState*>(ctx);
  hold_event e;
  std::memcpy(&e, data, sizeof e);
  std::lock_guard lock(s->mu);
  on_hold_event(*s, e);
  return 0;
}

void poll_loop(AllocState* s) {
  double next_due = 0;
  while (!s->stop.load()) {
    const double wait = std::clamp(next_due - mono_now(), 0.0, 0.25);
    const int ms = static_cast<int>(std::ceil(wait * 1000));
    if (s->rb) {
      int n = ring_buffer__poll(s->rb, ms);
      if (n < 0 && n != -EINTR) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    }
    std::lock_guard lock(s->mu);
    const double now = mono_now();
    // Every 50 ms while a process is traced or held (duty cycles, holds of
    // processes that exited), else every 0.25 s: hold events wake it at once.
    next_due = now + (s->traces.empty() ? 0.25 : 0.05);
    for (auto it = s->traces.begin(); it != s->traces.end();) {
      AllocTrace& tr = it->second;
      // A held process discovery never adopted (exited, or the selector's
      // other fields did not match): drop it after a grace period.
      if (!tr.adopted && (now - tr.created_at > 15.0 || (kill(tr.pid, 0) != 0 && errno == ESRCH))) {
        forget(*s, tr);
        it = s->traces.erase(it);
        continue;
      }
      if (tr.adopted && tr.duty()) next_due = std::min(next_due, run_duty(*s, tr, now));
      ++it;
    }
  }
}

// Loads the held names from the configuration (at start and at every
// reload) and starts the hold machinery the first time some target needs
// it: the watchdog first, so no process is ever held without it, then the
// exec and fork hooks.
void update_holds(AllocState& s) {
  const auto names = alloc::held_names(*s.cfg, s.entry_ids);
  const std::size_t loaded = alloc::load_held_names(bpf_map__fd(s.skel->maps.hold_comms), names);
  if (loaded < names.size())
    spdlog::warn("alloc: exec hold for {} of {} comm(s) only (the hold table is full)", loaded, names.size());
  s.hold_count = loaded;
  if (names.empty() || s.hold_link || !s.hold_slots) return;
  if (!s.watchdog) {
    auto wd = alloc::Watchdog::start(s.hold_slots->data(), alloc::kHoldBoundNs);
    if (!wd) {
      spdlog::warn("alloc: no exec hold ({})", wd.error().message);
      return;
    }
    s.watchdog = std::move(*wd);
  }
  bpf_link* l = bpf_program__attach(s.skel->progs.hold_on_exec);
  if (!l) {
    spdlog::warn("alloc: exec hold unavailable ({}); targets started later are traced since attach",
                 std::strerror(errno));
    return;
  }
  s.hold_link = bpf::Link(l);
  if (s.fork_hold) {
    bpf_link* fl = bpf_program__attach(s.skel->progs.hold_on_fork);
    if (fl) s.fork_link = bpf::Link(fl);
    else spdlog::info("alloc: fork hold unavailable ({})", std::strerror(errno));
  }
}

}  // namespace

AllocCollector::AllocCollector() : s_(std::make_unique<AllocState>()) {}

// Teardown in dependency order: no new events, no more links, every link
// detached and slot returned (the maps must still exist), then every held
// process released, and the kernel object last.
AllocCollector::~AllocCollector() {
  s_->stop = true;
  if (s_->poller.joinable()) s_->poller.join();
  if (s_->rb) ring_buffer__free(s_->rb);
  s_->hold_link.reset();
  s_->fork_link.reset();
  s_->traces.clear();
  s_->reapers.reset();
  s_->watchdog.reset();
  s_->hold_slots.reset();
  s_->skel.reset();
}

Result<void> AllocCollector::start(const ConfigPtr& config) {
  const Config& cfg = *config;
  if (s_->started) {
    // Reload: policies are re-resolved when discovery re-adds the targets;
    // the loaded programs and maps stay, the held names follow the config.
    std::lock_guard lock(s_->mu);
    s_->cfg = config;
    update_holds(*s_);
    return {};
  }
  if (auto r = bpf::prepare(); !r) return make_error(r.error().code, "eBPF unavailable: " + r.error().message);
  s_->cfg = config;
  s_->fs = ProcFs(cfg.procfs);

  // The stack map is preallocated (127 frames x 8 bytes an entry): only
  // sized up when some target wants leak sites. Enabling leak sites later
  // by reload needs a restart for stacks (counts still work).
  const bool want_stacks = std::any_of(cfg.targets.begin(), cfg.targets.end(), [](const TargetPolicy& p) {
    return p.alloc_mode != AllocMode::off && (p.leak_sites || p.alloc_mode == AllocMode::on_leak);
  });
  // Held processes take slots before discovery adopts them.
  const uint32_t slots = std::max(16u, cfg.bpf.max_targets) + ALLOC_HOLD_SLOTS;
  auto open_and_load = [&](bool multi, bool fork) -> int {
    s_->skel.reset(alloc_bpf__open());
    if (!s_->skel) return -errno;
    auto& ob = *s_->skel;
    for (bpf_map* mp : {ob.maps.stats, ob.maps.free_slots, ob.maps.slot_on, ob.maps.target_cfg})
      bpf_map__set_max_entries(mp, slots);
    bpf_map__set_max_entries(ob.maps.addrs, std::max(1u, cfg.bpf.max_tracked_allocs));
    bpf_map__set_max_entries(ob.maps.stacks, want_stacks ? std::max(1u, cfg.bpf.max_stacks) : 1u);
    // Hold events (exec and fork holds) go one by one through this ring.
    bpf_map__set_max_entries(ob.maps.hold_events, cfg.bpf.ringbuf_bytes);
    if (multi) {
      bpf::set_uprobe_multi(ob.progs.alloc_entry);
      bpf::set_uprobe_multi(ob.progs.alloc_return);
    }
    if (!fork) bpf_program__set_autoload(ob.progs.hold_on_fork, false);
    int err = alloc_bpf__load(s_->skel.get());
    if (err) s_->skel.reset();
    return err;
  };
  // Newest kernel features first: fork hold (bpf_send_signal_task, 6.13),
  // multi-uprobe links (6.6); each is dropped, and said, if refused.
  if (int err = open_and_load(true, true); err == 0) {
    s_->multi = true;
    s_->fork_hold = true;
  } else if (int err1 = open_and_load(true, false); err1 == 0) {
    s_->multi = true;
    spdlog::info("alloc: no fork hold ({}): children of targets are traced since attach", std::strerror(-err));
  } else if (int err2 = open_and_load(false, false); err2 == 0) {
    spdlog::info("alloc: no multi-uprobe links ({}); one link per probe", std::strerror(-err1));
  } else {
    return make_error(Errc::unavailable, std::string("alloc: load: ") + std::strerror(-err2));
  }
  auto& o = *s_->skel;
  s_->pool.init(bpf_map__fd(o.maps.stats), bpf_map__fd(o.maps.free_slots), bpf_map__fd(o.maps.slot_on), slots);
  s_->reapers = std::make_unique<alloc::Reapers>(8);
  if (auto hs = alloc::HoldSlots::map(bpf_map__fd(o.maps.hold_slots)); hs) s_->hold_slots = std::move(*hs);
  else spdlog::warn("alloc: no exec hold ({})", hs.error().message);
  s_->rb = ring_buffer__new(bpf_map__fd(o.maps.hold_events), ringbuf_cb, s_.get(), nullptr);
  {
    std::lock_guard lock(s_->mu);
    update_holds(*s_);
  }
  s_->poller = std::thread(poll_loop, s_.get());
  s_->started = true;
  spdlog::info("alloc: loaded; exec hold for {} comm(s)", s_->hold_count);
  return {};
}

void AllocCollector::target_added(const Target& t) {
  std::lock_guard lock(s_->mu);
  if (!s_->skel || !t.policy) return;
  auto it = s_->traces.find(t.pid());
  if (it != s_->traces.end() && it->second.start_time != t.id.start_time) {
    forget(*s_, it->second);  // the pid was reused
    s_->traces.erase(it);
    it = s_->traces.end();
  }
  if (t.policy->alloc_mode == AllocMode::off) {
    if (it != s_->traces.end()) {
      forget(*s_, it->second);
      s_->traces.erase(it);
    }
    return;
  }
  const double now = mono_now();
  if (it == s_->traces.end()) {
    AllocTrace tr;
    tr.pid = t.pid();
    tr.start_time = t.id.start_time;
    tr.created_at = now;
    tr.phase_start = now;
    if (auto loc = elf::find_allocator(s_->fs.root(), t.pid())) tr.alloc = *loc;
    else spdlog::info("alloc: target {} pid {}: {}", t.name, t.pid(), loc.error().message);
    it = s_->traces.emplace(t.pid(), std::move(tr)).first;
  }
  AllocTrace& tr = it->second;
  tr.adopted = true;
  const bool had_links = tr.attached();
  const bool was_tracking = tr.track_addrs, was_stacks = tr.stacks, was_duty = tr.duty();
  configure_trace(*s_, tr, t.policy);
  // A held process attached before its policy was known: keep its probes
  // unless the policy wants a different probe set (or duty's cookie).
  if (had_links && (was_tracking != tr.track_addrs || was_stacks != tr.stacks || was_duty != tr.duty())) {
    detach(*s_, tr);
    tr.from_start = false;  // the probe set changed: counts restart from now
  }
  if (tr.duty()) {
    tr.from_start = false;
    run_duty(*s_, tr, now);
  } else {
    if (t.policy->alloc_mode == AllocMode::on_leak && !tr.attached()) tr.from_start = false;
    apply_mode(*s_, tr, alloc::wants_on(tr.policy.get(), now, tr.on_leak_until, tr.attached()));
  }
}

void AllocCollector::target_removed(const Target& t) {
  std::lock_guard lock(s_->mu);
  auto it = s_->traces.find(t.pid());
  if (it == s_->traces.end()) return;
  s_->leaks.remove(t.name, t.pid());
  if (s_->skel) forget(*s_, it->second);
  s_->traces.erase(it);
}

Result<void> AllocCollector::collect(const Target& t, Sample& out) {
  // Fragmentation needs the resident bytes of the heap mappings (smaps: a
  // walk of every mapping, so only every smaps_interval) and the live bytes
  // of the same moment, read right after, under the lock.
  std::optional<Result<uint64_t>> resident;
  {
    std::lock_guard lock(s_->mu);
    auto it = s_->traces.find(t.pid());
    if (it == s_->traces.end() || !it->second.policy) return {};
    const AllocTrace& tr = it->second;
    if (tr.exact() && tr.glibc() && mono_now() - tr.frag_at >= seconds(s_->cfg->smaps_interval))
      resident.emplace(make_error(Errc::unavailable, "not read"));
  }
  if (resident) resident = heap_resident(s_->fs, t.pid());

  std::lock_guard lock(s_->mu);
  auto it = s_->traces.find(t.pid());
  if (it == s_->traces.end() || !it->second.policy) return {};
  AllocTrace& tr = it->second;
  const std::shared_ptr<const TargetPolicy> pol = tr.policy;
  const double now = mono_now();

  // on-leak: the daemon's leak slope of this target (its heap series is the
  // anon RSS while tracing is not exact from the start) over the budget
  // turns address tracking with stacks on for on_leak_duration.
  if (pol->alloc_mode == AllocMode::on_leak) {
    const double until =
        alloc::on_leak_until(*pol, t.leak_slope_valid, t.leak_slope_bytes_per_second, now, tr.on_leak_until);
    if (until != tr.on_leak_until)
      spdlog::info("alloc: target {} pid {} grows {:.0f} B/s > budget {:.0f} B/s: tracing leak sites for {} s",
                   t.name, t.pid(), t.leak_slope_bytes_per_second, pol->leak_budget_bytes_per_second,
                   seconds(pol->on_leak_duration));
    tr.on_leak_until = until;
    apply_mode(*s_, tr, alloc::wants_on(pol.get(), now, tr.on_leak_until, tr.attached()));
  }

  const bool duty = tr.duty();
  // Duty: whether it counted during the tick (a sample at tick time would
  // alias with the period).
  const bool on = duty ? (tr.duty_counting || tr.duty_counted) : tr.attached();
  tr.duty_counted = false;
  out.gauge(m().tracing, on ? 1 : 0,
            {{"mode", alloc_mode_name(pol->alloc_mode)},
             {"allocator", tr.alloc ? elf::allocator_name(tr.alloc->kind) : "none"},
             {"coverage", tr.from_start ? "since_start" : "since_attach"}});
  if (!tr.alloc || !tr.slot) return {};

  __u32 key = *tr.slot;
  auto raw = bpf::sum_percpu_fields(s_->pool.stats_fd(), &key, sizeof(alloc_stats));
  if (!raw) return raw.error();
  alloc_stats cur{};
  std::memcpy(&cur, raw->data(), sizeof cur);
  if (duty) {
    const double counting = tr.counted_seconds + (tr.duty_counting ? now - tr.counting_since : 0);
    alloc::advance_duty(tr.out, cur, now - tr.phase_start, counting);
  } else {
    alloc::advance(tr.out, cur, tr.last, alloc::counter_scale(*pol));
  }
  tr.last = cur;

  out.counter(m().alloc_bytes, tr.out.alloc_bytes);
  out.counter(m().free_bytes, tr.out.free_bytes);
  out.counter(m().allocs, tr.out.allocs);
  out.counter(m().frees, tr.out.frees);
  out.counter(m().drops, tr.out.drops);
  if (tr.track_addrs) out.counter(m().unknown_frees, tr.out.unknown_frees);
  HistogramValue h;
  for (int i = 0; i < ALLOC_HIST_BUCKETS - 1; ++i) h.bounds.push_back(static_cast<double>(16ull << i));
  for (int i = 0; i < ALLOC_HIST_BUCKETS - 1; ++i)
    h.counts.push_back(static_cast<uint64_t>(tr.out.hist[static_cast<std::size_t>(i)]));
  h.count = static_cast<uint64_t>(tr.out.allocs);
  h.sum = tr.out.alloc_bytes;
  out.histogram(m().hist, std::move(h));

  // Net and live only where counting is continuous (not duty).
  if (!duty) {
    const double net = static_cast<double>(cur.alloc_bytes) - static_cast<double>(cur.free_bytes);
    out.gauge(m().net, net);
    const double live = alloc::live_bytes(cur);
    if (tr.exact()) {
      out.gauge(m().live, live);
      out.series(SeriesId::heap, live, SeriesQuality::exact);
      if (resident && *resident && **resident > 0) {
        tr.frag_at = now;
        tr.heap_resident = static_cast<double>(**resident);
        tr.frag_ratio = std::clamp(1.0 - (live - alloc::mmapped_live_bytes(cur)) / tr.heap_resident, 0.0, 1.0);
      }
      if (tr.frag_ratio >= 0) {
        out.gauge(m().heap_resident, tr.heap_resident);
        out.gauge(m().frag, tr.frag_ratio);
      }
    } else if (pol->alloc_mode == AllocMode::full) {
      // Same slope as the live heap (they differ by a constant); the
      // allocator's books, where read, give the level too and win.
      out.series(SeriesId::heap, net, SeriesQuality::since_attach);
    }
  }
  if (tr.track_addrs && tr.stacks && now - tr.last_leak_scan >= 5.0) {
    tr.last_leak_scan = now;
    s_->leaks.put(pol->name, alloc::scan_leak_sites(bpf_map__fd(s_->skel->maps.addrs),
                                                    bpf_map__fd(s_->skel->maps.stacks), s_->fs,
                                                    {tr.pid, tr.attached(), tr.from_start}));
  }
  return {};
}

void AllocCollector::collect_global(GlobalSample& out) {
  const auto& self = bpf::self_metrics();
  std::lock_guard lock(s_->mu);
  // Leak sites go out as /api/v1/targets/<name>/leaks documents: the HTTP
  // thread only copies them from the snapshot.
  for (auto& [path, body] : s_->leaks.documents()) out.document(std::move(path), std::move(body));
  for (auto& [key, gz] : s_->leaks.profiles()) out.profile(std::move(key), std::move(gz));
  if (!s_->skel) return;
  for (int r = 0; r < DROP_REASONS; ++r) {
    __u32 key = static_cast<__u32>(r);
    auto v = bpf::sum_percpu_u64(bpf_map__fd(s_->skel->maps.drops), &key);
    // Targets that found no free slot are counted in user space.
    const double extra = r == DROP_NO_SLOT ? static_cast<double>(s_->pool.exhausted()) : 0.0;
    if (v)
      out.counter(self.dropped, static_cast<double>(*v) + extra,
                  {{"collector", "alloc"}, {"reason", drop_reason_name(r)}});
  }
  out.gauge(self.map_memory, static_cast<double>(s_->map_memory.bytes(s_->skel->obj)),
            {{"collector", "alloc"}});
  out.counter(self.missed, static_cast<double>(bpf::object_missed_runs(s_->skel->obj)), {{"collector", "alloc"}});
  const uint64_t cfg_entries = bpf::count_u32_keys(bpf_map__fd(s_->skel->maps.target_cfg));
  out.gauge(self.map_entries, static_cast<double>(s_->pool.in_use()), {{"map", "alloc_stats"}});
  out.gauge(self.map_entries, static_cast<double>(cfg_entries), {{"map", "alloc_target_cfg"}});
  out.gauge(self.map_entries, static_cast<double>(s_->traces.size()), {{"map", "alloc_traces"}});
  out.gauge(m().detaching, static_cast<double>(s_->reapers ? s_->reapers->detaching() : 0));
  out.counter(m().held, static_cast<double>(s_->holds_attached), {{"outcome", "attached"}});
  out.counter(m().held, static_cast<double>(s_->holds_late), {{"outcome", "released_early"}});
  out.counter(m().held, static_cast<double>(s_->holds_failed), {{"outcome", "failed"}});
  out.counter(m().held, static_cast<double>(s_->holds_not_selected), {{"outcome", "not_selected"}});
}

}  // namespace memlens
