#include "collectors/alloc_collector.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <condition_variable>
#include <set>

#include "alloc.skel.h"
#include "bpf/alloc.h"
#include "collectors/bpf_support.h"
#include "collectors/elf_symbols.h"
#include "collectors/proc_parse.h"
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
      "heap_fragmentation_ratio", "", MetricKind::gauge,
      "1 - live bytes in arena chunks / resident bytes of the allocator's heap mappings ([heap] and "
      "glibc arenas; mmapped chunks excluded). Only when heap_live is exact and the allocator is glibc.");
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

double mono_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

uint64_t mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// A regex that matches one fixed string (escaped dots allowed; a bare '.'
// is taken literally too: holding is an optimisation, a process it misses
// is still traced, only "since attach").
std::optional<std::string> literal(std::string_view re) {
  std::string out;
  for (std::size_t i = 0; i < re.size(); ++i) {
    char c = re[i];
    if (c == '\\' && i + 1 < re.size() && re[i + 1] == '.') {
      out.push_back('.');
      ++i;
      continue;
    }
    if (std::strchr("\\^$|?*+()[]{}", c)) return std::nullopt;
    out.push_back(c);
  }
  if (out.empty()) return std::nullopt;
  return out;
}

// The top-level alternatives of a regex ("api|worker", "(api|worker)",
// "(?:api|worker)" give two), or the regex itself.
std::vector<std::string_view> alternatives(std::string_view re) {
  if (re.size() >= 2 && re.front() == '(' && re.back() == ')') {
    std::string_view inner = re.substr(1, re.size() - 2);
    if (inner.rfind("?:", 0) == 0) inner.remove_prefix(2);
    // Only when the parentheses enclose everything ("(a)|(b)" does not).
    if (inner.find_first_of("()") == std::string_view::npos) re = inner;
  }
  std::vector<std::string_view> out;
  for (std::size_t i = 0;;) {
    std::size_t bar = re.find('|', i);
    out.push_back(re.substr(i, bar == std::string_view::npos ? std::string_view::npos : bar - i));
    if (bar == std::string_view::npos) return out;
    i = bar + 1;
  }
}

}  // namespace

// The comms a selector's processes get at exec (the executable's base name,
// 15 bytes at most), when they are known before the process runs: a literal
// comm or an alternation of literals, else an exe given as a literal path
// (or ".*/name"), or an alternation of those. Empty when not known.
std::vector<std::string> alloc_hold_comms(const Selector& s) {
  std::vector<std::string> out;
  auto add_all = [&](const std::string& re, bool path) {
    for (auto alt : alternatives(re)) {
      std::string a(alt);
      if (path && a.rfind(".*/", 0) == 0) a = a.substr(2);
      auto lit = literal(a);
      if (!lit || (path && lit->find('/') == std::string::npos)) return false;
      out.push_back(path ? lit->substr(lit->rfind('/') + 1) : *lit);
    }
    return true;
  };
  if (!(s.comm && add_all(*s.comm, false))) {
    out.clear();
    if (!(s.exe && add_all(*s.exe, true))) out.clear();
  }
  for (auto& c : out)
    if (c.size() > ALLOC_COMM_LEN - 1) c.resize(ALLOC_COMM_LEN - 1);
  return out;
}

namespace {

uint64_t read_start_time(const ProcFs& fs, pid_t pid) {
  auto text = read_file(fs.path(pid, "stat"));
  if (!text) return 0;
  auto st = parse_stat(*text);
  return st ? st->starttime : 0;
}

// ---- exec holds ----
// The hold slots are shared memory (a memory-mapped BPF array) between the
// kernel, memlensd and the watchdog. Whoever swaps a slot's pid to 0 first
// owns the release and sends the SIGCONT: so a process is resumed exactly
// once, and memlensd knows whether its probes were in place before it ran.
bool claim_release(hold_slot* slots, uint32_t idx, uint64_t pid) {
  __u64 expected = pid;
  return __atomic_compare_exchange_n(&slots[idx].pid, &expected, __u64{0}, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

// Whether a held process has not run since its stop at exec or fork: it is
// stopped, or the SIGSTOP is still pending (not yet back in user mode).
// Waits up to 100 ms for a pending stop to take effect.
bool still_held(const ProcFs& fs, pid_t pid) {
  for (int i = 0; i < 100; ++i) {
    auto text = read_file(fs.path(pid, "status"));
    if (!text) return false;
    auto st = parse_status(*text);
    if (!st) return false;
    if (st->state == 'T' || st->state == 't') return true;
    if (!(st->sig_pending & (1ull << (SIGSTOP - 1)))) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

// The watchdog: a forked child that only makes system calls (no allocation:
// the parent is multi-threaded). It releases every process held longer than
// the bound, and all of them when memlensd goes away, so a held process is
// never left stopped.
[[noreturn]] void watchdog_main(hold_slot* slots, int pipe_rd, pid_t parent, uint64_t bound_ns) {
  prctl(PR_SET_NAME, "memlens-hold", 0, 0, 0);
  for (;;) {
    pollfd p{pipe_rd, POLLIN, 0};
    int r = poll(&p, 1, 20);
    bool parent_gone = (r > 0) || getppid() != parent;
    uint64_t now = mono_ns();
    for (uint32_t i = 0; i < ALLOC_HOLD_SLOTS; ++i) {
      uint64_t pid = __atomic_load_n(&slots[i].pid, __ATOMIC_SEQ_CST);
      if (pid == 0) continue;
      uint64_t since = __atomic_load_n(&slots[i].since_ns, __ATOMIC_SEQ_CST);
      if ((parent_gone || now - since > bound_ns) && claim_release(slots, i, pid))
        kill(static_cast<pid_t>(pid), SIGCONT);
    }
    if (parent_gone) _exit(0);
  }
}

struct Counters {
  double alloc_bytes = 0, free_bytes = 0, allocs = 0, frees = 0, unknown_frees = 0, drops = 0;
  std::vector<double> hist = std::vector<double>(ALLOC_HIST_BUCKETS, 0.0);
};

// The bound on a hold, and how far ahead of a duty on-phase the probes are
// attached at least (twice the last attach time; counting starts on time,
// by a flag).
constexpr uint64_t kHoldBoundNs = 500ull * 1000000ull;
constexpr double kDutyLead = 0.005;

}  // namespace

// Stats slots (see bpf/alloc.bpf.c): a target holds one for as long as
// anything can write to it, its own trace or links still being detached;
// the last holder gives it back, zeroed.
struct SlotPool {
  int stats_fd = -1, queue_fd = -1, on_fd = -1;
  std::atomic<uint64_t> in_use{0};
  std::atomic<uint64_t> exhausted{0};  // targets that found no free slot

  static void release(SlotPool* pool, const uint32_t* slot) {
    std::vector<alloc_stats> zero(static_cast<std::size_t>(bpf::possible_cpus()));
    __u32 key = *slot, off = 0;
    bpf_map_update_elem(pool->stats_fd, &key, zero.data(), BPF_ANY);
    bpf_map_update_elem(pool->on_fd, &key, &off, BPF_ANY);
    bpf_map_update_elem(pool->queue_fd, nullptr, &key, BPF_ANY);
    pool->in_use.fetch_sub(1);
    delete slot;
  }
  // Wraps a slot taken from the queue (by us or by the kernel's fork hold).
  std::shared_ptr<const uint32_t> lease(uint32_t slot) {
    in_use.fetch_add(1);
    return {new uint32_t(slot), [this](const uint32_t* p) { release(this, p); }};
  }
  std::shared_ptr<const uint32_t> take() {
    __u32 slot = 0;
    if (bpf_map_lookup_and_delete_elem(queue_fd, nullptr, &slot) != 0) {
      exhausted.fetch_add(1);
      return nullptr;
    }
    return lease(slot);
  }
};
using SlotLease = std::shared_ptr<const uint32_t>;

// One process being traced (or held, waiting to be adopted by discovery).
struct AllocTrace {
  pid_t pid = 0;
  uint64_t start_time = 0;
  const TargetPolicy* policy = nullptr;
  std::string target_name;
  bool adopted = false;     // discovery reported it (target_added)
  bool from_start = false;  // probes in place before its first instruction
  double created_at = 0;
  elf::AllocatorLocation alloc;
  bool have_alloc = false;
  SlotLease slot;
  std::vector<bpf::Link> links;
  bool track_addrs = false, stacks = false;
  // Modes.
  double phase_start = 0;     // duty: origin of the periods
  double attach_seconds = 0;  // how long the last attach took
  bool duty_counting = false; // duty: slot_on is 1
  bool duty_counted = false;  // duty: it was at some time since the last collect
  double on_leak_until = 0;   // on_leak: tracing until then
  // Counters: raw kernel totals at the last read, and the exported ones.
  alloc_stats last{};
  Counters out;
  double last_leak_scan = -1e18;
  // Fragmentation, refreshed every smaps_interval (a walk of every mapping).
  double frag_at = -1e18, frag_ratio = -1, heap_res = 0;
  bool attached() const { return !links.empty(); }
};

struct AllocState {
  std::mutex mu;
  Config cfg;
  std::unique_ptr<alloc_bpf, decltype(&alloc_bpf__destroy)> skel{nullptr, alloc_bpf__destroy};
  SlotPool pool;
  bpf::Link hold_link;
  ring_buffer* rb = nullptr;
  std::map<pid_t, AllocTrace> traces;
  std::size_t hold_count = 0;
  std::thread poller;
  std::atomic<bool> stop{false};
  hold_slot* hold_view = nullptr;  // the mapped hold_slots array
  std::size_t hold_view_len = 0;
  pid_t watchdog = -1;
  int watchdog_pipe = -1;
  uint64_t holds_attached = 0, holds_failed = 0, holds_late = 0, holds_not_selected = 0;
  ProcFs fs;
  bool started = false;
  bool multi = false;  // multi-uprobe links available
  bool fork_hold = false;
  bpf::Link fork_link;
  // Detaching a uprobe waits for an SRCU grace period (~10 ms each here):
  // links are destroyed by a few reaper threads so exec holds and ticks
  // never wait, and concurrent waits share grace periods. Each carries its
  // target's slot, given back once the last of them is gone.
  std::mutex grave_mu;
  std::condition_variable grave_cv;
  std::vector<std::pair<bpf::Link, SlotLease>> graveyard;
  std::atomic<uint64_t> detaching{0};
  std::vector<std::thread> reapers;
};

namespace {

std::mutex g_leaks_mu;
std::map<std::string, nlohmann::json> g_leaks;  // target name -> json

// Gives the trace a slot (unless it has one: held, forked) and publishes its
// settings for the fork hold. False when no slot is free (counted).
bool init_target_maps(AllocState& s, AllocTrace& tr) {
  if (!tr.slot) tr.slot = s.pool.take();
  if (!tr.slot) return false;
  alloc_target_cfg c{};
  c.size_source = tr.alloc.kind == elf::AllocatorKind::glibc ? ALLOC_SIZE_HEADER : ALLOC_SIZE_REQUEST;
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

// Hands the trace's links to the reapers (with its slot: given back once
// the last of them is destroyed).
void detach(AllocState& s, AllocTrace& tr) {
  if (tr.links.empty()) return;
  if (tr.duty_counting && tr.slot) {
    __u32 key = *tr.slot, off = 0;
    bpf_map_update_elem(bpf_map__fd(s.skel->maps.slot_on), &key, &off, BPF_ANY);
    tr.duty_counting = false;
  }
  {
    std::lock_guard lock(s.grave_mu);
    for (auto& l : tr.links) s.graveyard.emplace_back(std::move(l), tr.slot);
  }
  s.detaching.fetch_add(tr.links.size());
  tr.links.clear();
  s.grave_cv.notify_all();
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

// The probe set for an allocator and mode: (function, where, return?, cookie).
struct ProbeSpec {
  uint64_t offset;
  bool ret;
  uint32_t fn;
};

Result<std::vector<ProbeSpec>> probe_specs(const AllocTrace& tr) {
  const auto& f = *tr.alloc.elf;
  const bool glibc = tr.alloc.kind == elf::AllocatorKind::glibc;
  // Request sizes come from entry probes; glibc's header gives the size at
  // return, so header mode needs no entry probe on the malloc family.
  const bool entries = tr.track_addrs || !glibc;
  struct Want {
    const char* sym;
    uint32_t fn;
    bool entry, ret;
  };
  const Want want[] = {
      {"malloc", FN_MALLOC, entries, true},     {"calloc", FN_CALLOC, entries, true},
      {"memalign", FN_MEMALIGN, entries, true}, {"aligned_alloc", FN_MEMALIGN, entries, true},
      {"valloc", FN_MALLOC, entries, true},     {"pvalloc", FN_MALLOC, entries, true},
      {"posix_memalign", FN_POSIX_MEMALIGN, true, true},
      {"realloc", FN_REALLOC, true, true},      {"free", FN_FREE, true, false},
  };
  std::vector<ProbeSpec> out;
  std::set<std::pair<uint64_t, bool>> seen;  // aliases (aligned_alloc = memalign) once
  for (const auto& w : want) {
    auto sym = f.find(w.sym);
    if (!sym) {
      if (w.fn == FN_MALLOC && std::string_view(w.sym) == "malloc") return sym.error();
      if (w.fn == FN_FREE) return sym.error();
      continue;
    }
    if (w.entry) {
      uint64_t off = sym->file_offset;
      // Entry-only probes go on the first instruction the kernel emulates
      // (free: after its NULL test), never a guessed offset.
      if (!w.ret) {
        auto site = elf::probe_site(f, *sym);
        if (site) {
          off += site->offset;
          if (!site->emulated)
            spdlog::debug("alloc: {} in {}: {} (probe will be single-stepped)", w.sym, tr.alloc.path, site->note);
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
  return out;
}

// Attaches the probe set: two multi-uprobe links (entry, return) where the
// kernel has them, else one classic link per probe; the same two programs
// either way, the cookie telling them the function, the target's settings
// and its slot.
Result<void> attach(AllocState& s, AllocTrace& tr) {
  if (tr.attached()) return {};
  if (!tr.slot) return make_error(Errc::unavailable, "no stats slot");
  auto specs = probe_specs(tr);
  if (!specs) return specs.error();
  auto& p = s.skel->progs;
  const bool duty = tr.policy && tr.policy->alloc_mode == AllocMode::duty;
  const uint64_t settings = CK_VALID | (tr.alloc.kind == elf::AllocatorKind::glibc ? CK_HEADER : 0) |
                            (tr.track_addrs ? CK_TRACK : 0) | (tr.stacks ? CK_STACKS : 0) |
                            (duty ? CK_DUTY : 0) | (static_cast<uint64_t>(*tr.slot) << CK_SLOT_SHIFT);
  std::vector<bpf::Link> links;
  auto fail = [&](const Error& e) -> Result<void> {
    tr.links = std::move(links);
    detach(s, tr);
    return e;
  };
  if (s.multi) {
    for (bool ret : {false, true}) {
      std::vector<uint64_t> offs, cookies;
      for (const auto& sp : *specs)
        if (sp.ret == ret) {
          offs.push_back(sp.offset);
          cookies.push_back(sp.fn | settings);
        }
      if (offs.empty()) continue;
      auto l = bpf::attach_uprobe_multi(ret ? p.alloc_return : p.alloc_entry, tr.pid, tr.alloc.open_path, offs,
                                        cookies, ret);
      if (!l) return fail(l.error());
      links.push_back(std::move(*l));
    }
  } else {
    for (const auto& sp : *specs) {
      auto l = bpf::attach_uprobe(sp.ret ? p.alloc_return : p.alloc_entry, tr.pid, tr.alloc.open_path, sp.offset,
                                  sp.ret, sp.fn | settings);
      if (!l) return fail(l.error());
      links.push_back(std::move(*l));
    }
  }
  tr.links = std::move(links);
  return {};
}

void reaper_loop(AllocState* s) {
  std::unique_lock lock(s->grave_mu);
  for (;;) {
    if (s->graveyard.empty()) {
      if (s->stop.load()) return;
      s->grave_cv.wait_for(lock, std::chrono::milliseconds(200));
      continue;
    }
    auto dead = std::move(s->graveyard.back());
    s->graveyard.pop_back();
    lock.unlock();
    dead.first.reset();
    dead.second.reset();
    s->detaching.fetch_sub(1);
    lock.lock();
  }
}

void configure_trace(AllocState& s, AllocTrace& tr, const TargetPolicy* pol) {
  tr.policy = pol;
  tr.target_name = pol ? pol->name : "";
  tr.track_addrs = pol && (pol->leak_sites || pol->alloc_mode == AllocMode::on_leak);
  tr.stacks = tr.track_addrs;
  if (tr.have_alloc && tr.alloc.kind != elf::AllocatorKind::glibc) tr.track_addrs = true;
  if (s.skel && !init_target_maps(s, tr))
    spdlog::warn("alloc: pid {}: no free stats slot (bpf.max_targets); not traced", tr.pid);
}

void apply_mode(AllocState& s, AllocTrace& tr, bool on) {
  if (!tr.have_alloc) return;
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

// Duty mode: period P, on for D = P x fraction from each period's start.
// Probes go on a lead (twice the last attach time, at least kDutyLead)
// before the on-phase and off at its end; counting follows the slot's flag,
// set and cleared on time, so observed / fraction is an unbiased estimate.
// Returns when the next transition is due.
double duty_step(AllocState& s, AllocTrace& tr, double now) {
  const double period = std::max(0.1, std::chrono::duration<double>(tr.policy->duty_period).count());
  const double on_for = period * std::clamp(tr.policy->duty_fraction, 0.0, 1.0);
  // Attaching takes a few ms (the kernel walks every process that maps the
  // library): start early enough that the probes are in place on time.
  const double lead = std::clamp(2 * tr.attach_seconds, kDutyLead, 0.05);
  const double k = std::floor((now - tr.phase_start + lead) / period);
  const double on_at = tr.phase_start + k * period, off_at = on_at + on_for;
  const bool want_links = on_for > 0 && now >= on_at - lead && now < off_at;
  const bool want_count = want_links && now >= on_at;
  if (want_links) apply_mode(s, tr, true);
  if (want_count != tr.duty_counting && tr.attached() && tr.slot) {
    __u32 key = *tr.slot, v = want_count ? 1 : 0;
    bpf_map_update_elem(bpf_map__fd(s.skel->maps.slot_on), &key, &v, BPF_ANY);
    tr.duty_counting = want_count;
    tr.duty_counted |= want_count;
  }
  if (!want_links) apply_mode(s, tr, false);
  if (now < on_at - lead) return on_at - lead;
  if (now < on_at) return on_at;
  if (now < off_at) return off_at;
  return on_at + period - lead;
}

// Whether a non-duty mode wants the probes on now.
bool wants_on(const AllocTrace& tr, double now) {
  if (!tr.policy) return true;  // held, not yet adopted: trace from start
  switch (tr.policy->alloc_mode) {
    case AllocMode::off: return false;
    case AllocMode::full: return true;
    case AllocMode::duty: return tr.attached();  // duty_step decides
    case AllocMode::on_leak: return now < tr.on_leak_until;
  }
  return false;
}

void on_hold_event(AllocState& s, const hold_event& e) {
  pid_t pid = static_cast<pid_t>(e.pid);
  const uint32_t idx = e.pid % ALLOC_HOLD_SLOTS;
  // The kernel held it by name; the rest of the selector (cmdline, cgroup,
  // ...) is checked now, so a process that only shares the name is let go
  // at once, without probes.
  const TargetPolicy* pol = e.policy < s.cfg.targets.size() ? &s.cfg.targets[e.policy] : nullptr;
  if (!pol || !process_matches(s.fs, pol->selector, pid, getpid())) {
    if (claim_release(s.hold_view, idx, e.pid)) kill(pid, SIGCONT);
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
      tr.have_alloc = true;
      tr.track_addrs = tr.alloc.kind != elf::AllocatorKind::glibc || leak_sites;
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
  const bool unran = ok && still_held(s.fs, pid);
  // Release it now, unless the watchdog did already at the bound: then it
  // ran for a while without probes and is traced since attach only.
  const bool claimed = claim_release(s.hold_view, idx, e.pid);
  if (claimed) kill(pid, SIGCONT);
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
  if (in_time) ++s.holds_attached;
  else ++s.holds_late;
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

// Poller thread: exec holds (must be fast: the process is stopped), duty
// phases (on time, not at tick granularity), and held processes never
// adopted.
void poll_loop(AllocState* s) {
  double next_due = 0;
  while (!s->stop.load()) {
    const double wait = std::clamp(next_due - mono_now(), 0.0, 0.05);
    const int ms = static_cast<int>(std::ceil(wait * 1000));
    if (s->rb) {
      int n = ring_buffer__poll(s->rb, ms);
      if (n < 0 && n != -EINTR) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    }
    std::lock_guard lock(s->mu);
    const double now = mono_now();
    next_due = now + 0.05;
    for (auto it = s->traces.begin(); it != s->traces.end();) {
      AllocTrace& tr = it->second;
      // A held process discovery never adopted (exited, or the selector's
      // other fields did not match): drop it after a grace period.
      if (!tr.adopted && (now - tr.created_at > 15.0 || (kill(tr.pid, 0) != 0 && errno == ESRCH))) {
        forget(*s, tr);
        it = s->traces.erase(it);
        continue;
      }
      if (tr.adopted && tr.policy && tr.policy->alloc_mode == AllocMode::duty)
        next_due = std::min(next_due, duty_step(*s, tr, now));
      ++it;
    }
  }
}

// Resident bytes of glibc's heap mappings: [heap] plus non-main arenas
// (anonymous rw mappings aligned to HEAP_MAX_SIZE, 64 MiB on 64-bit).
Result<uint64_t> heap_resident(const ProcFs& fs, pid_t pid) {
  auto text = read_file(fs.path(pid, "smaps"), 64u << 20);
  if (!text) return text.error();
  constexpr uint64_t kHeapMax = 64ull << 20;
  uint64_t total = 0;
  bool in_heap = false;
  std::string_view t = *text;
  while (!t.empty()) {
    auto nl = t.find('\n');
    std::string_view line = t.substr(0, nl);
    t = nl == std::string_view::npos ? std::string_view{} : t.substr(nl + 1);
    if (line.rfind("Rss:", 0) == 0) {
      if (in_heap) total += parse_u64(line.substr(4)).value_or(0) * 1024;
      continue;
    }
    // A mapping header: "start-end perms offset dev inode [path]".
    // Mapping headers start with a lower-case hex address; fields with a key.
    bool header = !line.empty() && ((line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f'));
    if (!header) continue;
    auto maps = elf::parse_maps(line);
    if (maps.size() == 1) {
      const auto& mp = maps[0];
      bool arena = mp.path.empty() && mp.perms.rfind("rw", 0) == 0 && mp.start % kHeapMax == 0;
      in_heap = mp.path == "[heap]" || arena;
    }
  }
  return total;
}

// Recomputes a target's leak sites (address map + stacks) and publishes them.
void scan_leak_sites(AllocState& s, AllocTrace& tr, double now) {
  if (now - tr.last_leak_scan < 5.0) return;
  tr.last_leak_scan = now;
  int fd = bpf_map__fd(s.skel->maps.addrs);
  struct Site { uint64_t bytes = 0, blocks = 0; };
  std::map<int64_t, Site> by_stack;
  uint64_t total = 0, blocks = 0;
  alloc_addr_key k{}, next{};
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, &next) == 0) {
    k = next;
    prev = &k;
    if (next.pid != static_cast<__u32>(tr.pid)) continue;
    alloc_addr_val v{};
    if (bpf_map_lookup_elem(fd, &next, &v) != 0) continue;
    auto& site = by_stack[v.stack_id];
    site.bytes += v.size;
    site.blocks += 1;
    total += v.size;
    blocks += 1;
  }
  std::vector<std::pair<int64_t, Site>> sorted(by_stack.begin(), by_stack.end());
  std::sort(sorted.begin(), sorted.end(), [](auto& a, auto& b) { return a.second.bytes > b.second.bytes; });
  if (sorted.size() > 20) sorted.resize(20);
  auto sym = elf::Symbolizer::for_pid(s.fs.root(), tr.pid);
  nlohmann::json sites = nlohmann::json::array();
  for (auto& [id, site] : sorted) {
    nlohmann::json stack = nlohmann::json::array();
    if (id >= 0) {
      uint64_t ips[127] = {};
      __u32 sid = static_cast<__u32>(id);
      if (bpf_map_lookup_elem(bpf_map__fd(s.skel->maps.stacks), &sid, ips) == 0) {
        for (uint64_t ip : ips) {
          if (!ip) break;
          stack.push_back(sym ? sym->symbolize(ip) : fmt::format("{:#x}", ip));
        }
      }
    }
    sites.push_back({{"bytes", site.bytes}, {"blocks", site.blocks}, {"stack", stack}});
  }
  nlohmann::json proc = {{"pid", tr.pid},
                         {"captured_at_unix", std::chrono::duration_cast<std::chrono::seconds>(
                                                  std::chrono::system_clock::now().time_since_epoch())
                                                  .count()},
                         {"tracking", tr.attached()},
                         {"since_start", tr.from_start},
                         {"outstanding_bytes", total},
                         {"outstanding_blocks", blocks},
                         {"sites", sites}};
  spdlog::debug("alloc: leak sites of pid {}: {} B outstanding in {} blocks, top {}", tr.pid, total, blocks,
                sites.empty() ? std::string("-") : sites.front().dump());
  std::lock_guard lock(g_leaks_mu);
  auto& j = g_leaks[tr.target_name];
  if (!j.is_object() || !j.contains("processes")) j = {{"target", tr.target_name}, {"available", true}, {"processes", nlohmann::json::array()}};
  auto& procs = j["processes"];
  for (auto it = procs.begin(); it != procs.end(); ++it)
    if ((*it)["pid"] == tr.pid) {
      procs.erase(it);
      break;
    }
  procs.push_back(proc);
}

}  // namespace

namespace {

// Loads hold_comms from the configuration (at start and at every reload) and
// starts the hold machinery the first time some target needs it: the
// watchdog first, so no process is ever held without it, then the exec and
// fork hooks.
void update_holds(AllocState& s) {
  // name -> index of its policy in cfg.targets. Only full mode is held:
  // duty and on-leak report no live heap anyway.
  std::vector<std::pair<std::string, uint32_t>> hold;
  for (std::size_t i = 0; i < s.cfg.targets.size(); ++i) {
    const auto& p = s.cfg.targets[i];
    if (p.alloc_mode != AllocMode::full) continue;
    for (const auto& c : alloc_hold_comms(p.selector)) hold.emplace_back(c, static_cast<uint32_t>(i));
  }
  int fd = bpf_map__fd(s.skel->maps.hold_comms);
  char key[ALLOC_COMM_LEN] = {}, next[ALLOC_COMM_LEN] = {};
  std::vector<std::array<char, ALLOC_COMM_LEN>> old;
  for (const void* prev = nullptr; bpf_map_get_next_key(fd, prev, next) == 0; prev = key) {
    std::memcpy(key, next, sizeof key);
    std::array<char, ALLOC_COMM_LEN> k{};
    std::memcpy(k.data(), next, sizeof next);
    old.push_back(k);
  }
  for (auto& k : old) bpf_map_delete_elem(fd, k.data());
  std::size_t loaded = 0;
  for (const auto& [comm, idx] : hold) {
    char k[ALLOC_COMM_LEN] = {};
    std::memcpy(k, comm.data(), std::min(comm.size(), sizeof k - 1));
    if (bpf_map_update_elem(fd, k, &idx, BPF_ANY) == 0) ++loaded;
  }
  if (loaded < hold.size())
    spdlog::warn("alloc: exec hold for {} of {} comm(s) only (the hold table is full)", loaded, hold.size());
  s.hold_count = loaded;
  if (hold.empty() || s.hold_link || !s.hold_view) return;

  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC) != 0) {
    spdlog::warn("alloc: no exec hold (pipe: {})", std::strerror(errno));
    return;
  }
  pid_t parent = getpid();
  pid_t child = fork();
  if (child == 0) {
    // Keep only the pipe (the slots are shared memory); drop every other fd
    // (sockets, logs, maps) so nothing outlives memlensd through us.
    for (int fd2 = 3; fd2 < 1024; ++fd2)
      if (fd2 != pfd[0]) close(fd2);
    watchdog_main(s.hold_view, pfd[0], parent, kHoldBoundNs);
  }
  close(pfd[0]);
  if (child < 0) {
    close(pfd[1]);
    spdlog::warn("alloc: no exec hold (fork: {})", std::strerror(errno));
    return;
  }
  s.watchdog = child;
  s.watchdog_pipe = pfd[1];
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

AllocCollector::~AllocCollector() {
  s_->stop = true;
  if (s_->poller.joinable()) s_->poller.join();
  if (s_->rb) ring_buffer__free(s_->rb);
  s_->hold_link.reset();
  s_->fork_link.reset();
  for (auto& [pid, tr] : s_->traces) detach(*s_, tr);
  s_->traces.clear();
  s_->grave_cv.notify_all();
  for (auto& r : s_->reapers) r.join();
  if (s_->watchdog > 0) {
    close(s_->watchdog_pipe);  // the watchdog releases everything and exits
    waitpid(s_->watchdog, nullptr, 0);
  }
  if (s_->hold_view) munmap(s_->hold_view, s_->hold_view_len);
}

Result<void> AllocCollector::start(const Config& cfg) {
  if (s_->started) {
    // Reload: policies are re-resolved when discovery re-adds the targets;
    // the loaded programs and maps stay, the held names follow the config.
    std::lock_guard lock(s_->mu);
    s_->cfg = cfg;
    update_holds(*s_);
    return {};
  }
  if (auto r = bpf::prepare(); !r) return make_error(r.error().code, "eBPF unavailable: " + r.error().message);
  s_->cfg = cfg;
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
    // Kernels before 6.6 have no multi-uprobe links: one link per probe.
    spdlog::info("alloc: no multi-uprobe links ({}); one link per probe", std::strerror(-err1));
  } else {
    return make_error(Errc::unavailable, std::string("alloc: load: ") + std::strerror(-err2));
  }
  auto& o = *s_->skel;
  s_->pool.stats_fd = bpf_map__fd(o.maps.stats);
  s_->pool.queue_fd = bpf_map__fd(o.maps.free_slots);
  s_->pool.on_fd = bpf_map__fd(o.maps.slot_on);
  for (__u32 i = 0; i < slots; ++i) bpf_map_update_elem(s_->pool.queue_fd, nullptr, &i, BPF_ANY);
  // The hold slots, shared with the kernel and the watchdog.
  s_->hold_view_len = static_cast<std::size_t>(std::max(sizeof(hold_slot) * ALLOC_HOLD_SLOTS,
                                                        static_cast<std::size_t>(sysconf(_SC_PAGESIZE))));
  void* view = mmap(nullptr, s_->hold_view_len, PROT_READ | PROT_WRITE, MAP_SHARED, bpf_map__fd(o.maps.hold_slots), 0);
  if (view == MAP_FAILED) spdlog::warn("alloc: no exec hold (mmap of the hold slots: {})", std::strerror(errno));
  else s_->hold_view = static_cast<hold_slot*>(view);
  s_->rb = ring_buffer__new(bpf_map__fd(o.maps.hold_events), ringbuf_cb, s_.get(), nullptr);
  {
    std::lock_guard lock(s_->mu);
    update_holds(*s_);
  }
  s_->poller = std::thread(poll_loop, s_.get());
  for (int i = 0; i < 8; ++i) s_->reapers.emplace_back(reaper_loop, s_.get());
  s_->started = true;
  spdlog::info("alloc: loaded; exec hold for {} comm(s)", s_->hold_count);
  return {};
}

void AllocCollector::target_added(const Target& t) {
  std::lock_guard lock(s_->mu);
  if (!s_->skel || !t.policy) return;
  auto it = s_->traces.find(t.pid());
  if (it != s_->traces.end() && it->second.start_time != t.id.start_time) {
    forget(*s_, it->second);
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
  double now = mono_now();
  if (it == s_->traces.end()) {
    AllocTrace tr;
    tr.pid = t.pid();
    tr.start_time = t.id.start_time;
    tr.created_at = now;
    tr.phase_start = now;
    auto loc = elf::find_allocator(s_->fs.root(), t.pid());
    if (loc) {
      tr.alloc = *loc;
      tr.have_alloc = true;
    } else {
      spdlog::info("alloc: target {} pid {}: {}", t.name, t.pid(), loc.error().message);
    }
    it = s_->traces.emplace(t.pid(), std::move(tr)).first;
  }
  AllocTrace& tr = it->second;
  tr.adopted = true;
  bool had_links = tr.attached();
  bool was_tracking = tr.track_addrs, was_stacks = tr.stacks;
  const bool was_duty = tr.policy && tr.policy->alloc_mode == AllocMode::duty;
  configure_trace(*s_, tr, t.policy);
  // A held process attached before its policy was known: keep its probes
  // unless the policy wants a different probe set (or duty's cookie).
  if (had_links && (was_tracking != tr.track_addrs || was_stacks != tr.stacks ||
                    was_duty != (t.policy->alloc_mode == AllocMode::duty))) {
    detach(*s_, tr);
    tr.from_start = false;  // the probe set changed: counts restart from now
  }
  if (t.policy->alloc_mode == AllocMode::duty) {
    tr.from_start = false;
    duty_step(*s_, tr, now);
  } else {
    if (t.policy->alloc_mode == AllocMode::on_leak && !tr.attached()) tr.from_start = false;
    apply_mode(*s_, tr, wants_on(tr, now));
  }
}

void AllocCollector::target_removed(const Target& t) {
  std::lock_guard lock(s_->mu);
  auto it = s_->traces.find(t.pid());
  if (it == s_->traces.end()) return;
  {
    std::lock_guard l2(g_leaks_mu);
    auto j = g_leaks.find(it->second.target_name);
    if (j != g_leaks.end() && j->second.contains("processes")) {
      auto& procs = j->second["processes"];
      for (auto p = procs.begin(); p != procs.end(); ++p)
        if ((*p)["pid"] == t.pid()) {
          procs.erase(p);
          break;
        }
    }
  }
  if (s_->skel) forget(*s_, it->second);
  s_->traces.erase(it);
}

Result<void> AllocCollector::collect(const Target& t, Sample& out) {
  std::unique_lock lock(s_->mu);
  auto it = s_->traces.find(t.pid());
  if (it == s_->traces.end()) return {};
  AllocTrace& tr = it->second;
  const TargetPolicy* pol = tr.policy;
  if (!pol) return {};
  double now = mono_now();

  // on_leak: the daemon's leak slope of this target (its heap series is the
  // anon RSS while tracing is not exact from the start) over the leak window;
  // over budget, turn address tracking with stacks on for on_leak_duration.
  if (pol->alloc_mode == AllocMode::on_leak) {
    if (t.leak_slope_valid && pol->leak_budget_bytes_per_second > 0 && now >= tr.on_leak_until &&
        t.leak_slope_bytes_per_second > pol->leak_budget_bytes_per_second) {
      spdlog::info("alloc: target {} pid {} grows {:.0f} B/s > budget {:.0f} B/s: tracing leak sites for {} s",
                   t.name, t.pid(), t.leak_slope_bytes_per_second, pol->leak_budget_bytes_per_second,
                   std::chrono::duration<double>(pol->on_leak_duration).count());
      tr.on_leak_until = now + std::chrono::duration<double>(pol->on_leak_duration).count();
    }
    apply_mode(*s_, tr, wants_on(tr, now));
  }

  const bool duty = pol->alloc_mode == AllocMode::duty;
  // Duty: whether it counted during the tick (a sample at tick time would
  // alias with the period).
  const bool on = duty ? (tr.duty_counting || tr.duty_counted) : tr.attached();
  tr.duty_counted = false;
  out.gauge(m().tracing, on ? 1 : 0,
            {{"mode", alloc_mode_name(pol->alloc_mode)},
             {"allocator", tr.have_alloc ? elf::allocator_name(tr.alloc.kind) : "none"},
             {"coverage", tr.from_start ? "since_start" : "since_attach"}});
  if (!tr.have_alloc || !tr.slot) return {};

  // Fragmentation needs resident bytes (a walk of every mapping, so only
  // every smaps_interval, outside the lock: holds and duty phases must not
  // wait for it) and the live bytes of the same moment, read right after.
  const bool exact = tr.from_start && tr.attached() && tr.out.drops == 0 && !duty;
  const bool frag_due = exact && tr.alloc.kind == elf::AllocatorKind::glibc &&
                        now - tr.frag_at >= std::chrono::duration<double>(s_->cfg.smaps_interval).count();
  std::optional<Result<uint64_t>> resident;
  if (frag_due) {
    lock.unlock();
    resident = heap_resident(s_->fs, t.pid());
    lock.lock();
    it = s_->traces.find(t.pid());
    if (it == s_->traces.end() || !it->second.slot) return {};
  }
  AllocTrace& trc = it->second;
  __u32 key = *trc.slot;
  auto raw = bpf::sum_percpu_fields(s_->pool.stats_fd, &key, sizeof(alloc_stats));
  if (!raw) return raw.error();
  alloc_stats cur{};
  std::memcpy(&cur, raw->data(), sizeof cur);
  // Counters grow by the kernel's deltas, scaled up in duty mode (counting
  // runs exactly duty_fraction of the time, see duty_step).
  double scale = 1.0;
  if (duty && pol->duty_fraction > 0) scale = 1.0 / pol->duty_fraction;
  auto add = [&](double& acc, uint64_t now_v, uint64_t last_v) {
    if (now_v >= last_v) acc += static_cast<double>(now_v - last_v) * scale;
  };
  add(trc.out.alloc_bytes, cur.alloc_bytes, trc.last.alloc_bytes);
  add(trc.out.free_bytes, cur.free_bytes, trc.last.free_bytes);
  add(trc.out.allocs, cur.allocs, trc.last.allocs);
  add(trc.out.frees, cur.frees, trc.last.frees);
  add(trc.out.unknown_frees, cur.unknown_frees, trc.last.unknown_frees);
  trc.out.drops += static_cast<double>(cur.drops - std::min(cur.drops, trc.last.drops));
  for (int i = 0; i < ALLOC_HIST_BUCKETS; ++i)
    add(trc.out.hist[static_cast<std::size_t>(i)], cur.hist[i], trc.last.hist[i]);
  trc.last = cur;

  out.counter(m().alloc_bytes, trc.out.alloc_bytes);
  out.counter(m().free_bytes, trc.out.free_bytes);
  out.counter(m().allocs, trc.out.allocs);
  out.counter(m().frees, trc.out.frees);
  out.counter(m().drops, trc.out.drops);
  if (trc.track_addrs) out.counter(m().unknown_frees, trc.out.unknown_frees);
  HistogramValue h;
  for (int i = 0; i < ALLOC_HIST_BUCKETS - 1; ++i) h.bounds.push_back(static_cast<double>(16ull << i));
  for (int i = 0; i < ALLOC_HIST_BUCKETS - 1; ++i)
    h.counts.push_back(static_cast<uint64_t>(trc.out.hist[static_cast<std::size_t>(i)]));
  h.count = static_cast<uint64_t>(trc.out.allocs);
  h.sum = trc.out.alloc_bytes;
  out.histogram(m().hist, std::move(h));

  // Net and live only where counting is continuous (not duty).
  if (!duty) {
    double net = static_cast<double>(cur.alloc_bytes) - static_cast<double>(cur.free_bytes);
    out.gauge(m().net, net);
    // A child held at fork starts with its parent's live blocks.
    const double live = net + static_cast<double>(static_cast<int64_t>(cur.inherited_bytes));
    const double mmap_live = static_cast<double>(cur.mmap_alloc_bytes) - static_cast<double>(cur.mmap_free_bytes) +
                             static_cast<double>(static_cast<int64_t>(cur.inherited_mmap_bytes));
    // Exact only with every block seen: traced from the start, and nothing
    // dropped (a dropped block is missing from both sides of the sum).
    if (trc.from_start && trc.attached() && trc.out.drops == 0) {
      out.gauge(m().live, live);
      out.series(SeriesId::heap, live, SeriesQuality::exact);
      if (resident && *resident && **resident > 0) {
        trc.frag_at = now;
        trc.heap_res = static_cast<double>(**resident);
        trc.frag_ratio = std::clamp(1.0 - (live - mmap_live) / trc.heap_res, 0.0, 1.0);
      }
      if (trc.frag_ratio >= 0) {
        out.gauge(m().heap_resident, trc.heap_res);
        out.gauge(m().frag, trc.frag_ratio);
      }
    } else if (pol->alloc_mode == AllocMode::full) {
      // Same slope as the live heap (they differ by a constant); the
      // allocator's books, where read, give the level too and win.
      out.series(SeriesId::heap, net, SeriesQuality::since_attach);
    }
  }
  if (trc.track_addrs && trc.stacks) scan_leak_sites(*s_, trc, now);
  return {};
}

void AllocCollector::collect_global(GlobalSample& out) {
  const auto& self = bpf::self_metrics();
  {
    // Leak sites go out as /api/v1/targets/<name>/leaks documents: the HTTP
    // threads only copy them from the snapshot.
    std::lock_guard leaks_lock(g_leaks_mu);
    for (const auto& [name, doc] : g_leaks) out.document("/api/v1/targets/" + name + "/leaks", doc.dump(2) + "\n");
  }
  std::lock_guard lock(s_->mu);
  if (!s_->skel) return;
  for (int r = 0; r < DROP_REASONS; ++r) {
    __u32 key = static_cast<__u32>(r);
    auto v = bpf::sum_percpu_u64(bpf_map__fd(s_->skel->maps.drops), &key);
    // Targets that found no free slot are counted in user space.
    const double extra = r == DROP_NO_SLOT ? static_cast<double>(s_->pool.exhausted.load()) : 0.0;
    if (v)
      out.counter(self.dropped, static_cast<double>(*v) + extra,
                  {{"collector", "alloc"}, {"reason", drop_reason_name(r)}});
  }
  out.gauge(self.map_memory, static_cast<double>(bpf::object_map_memory_bytes(s_->skel->obj)),
            {{"collector", "alloc"}});
  const uint64_t cfg_entries = bpf::count_u32_keys(bpf_map__fd(s_->skel->maps.target_cfg));
  out.gauge(self.map_entries, static_cast<double>(s_->pool.in_use.load()), {{"map", "alloc_stats"}});
  out.gauge(self.map_entries, static_cast<double>(cfg_entries), {{"map", "alloc_target_cfg"}});
  out.gauge(self.map_entries, static_cast<double>(s_->traces.size()), {{"map", "alloc_traces"}});
  out.gauge(m().detaching, static_cast<double>(s_->detaching.load()));
  out.counter(m().held, static_cast<double>(s_->holds_attached), {{"outcome", "attached"}});
  out.counter(m().held, static_cast<double>(s_->holds_late), {{"outcome", "released_early"}});
  out.counter(m().held, static_cast<double>(s_->holds_failed), {{"outcome", "failed"}});
  out.counter(m().held, static_cast<double>(s_->holds_not_selected), {{"outcome", "not_selected"}});
}

nlohmann::json alloc_leak_sites_json(const std::string& target_name) {
  std::lock_guard lock(g_leaks_mu);
  auto it = g_leaks.find(target_name);
  if (it == g_leaks.end())
    return {{"target", target_name},
            {"available", false},
            {"reason", "no leak-site capture for this target (needs alloc_mode full/duty with leak_sites: true, "
                       "or alloc_mode on_leak after its budget was crossed)"}};
  return it->second;
}

}  // namespace memlens
