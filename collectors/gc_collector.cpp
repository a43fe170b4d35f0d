#include "collectors/gc_collector.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <malloc.h>
#include <re2/re2.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <limits>
#include <set>

#include "collectors/elf_symbols.h"
#include "collectors/hsperfdata.h"
#include "daemon/clock.h"
#include "daemon/config.h"
#include "gc.skel.h"

namespace memlens {

static_assert(sizeof(gc_key) == 8);
static_assert(sizeof(gc_hist) == 8 * (2 + GC_NBUCKETS) + 32 * GC_SLOTS);
static_assert(sizeof(gc_open) == 16);

// ---- buckets and quantiles ------------------------------------------------

const std::vector<uint64_t>& gc_fine_bounds_ns() {
  static const std::vector<uint64_t> b = [] {
    const uint64_t mant[] = {GC_MANTISSAS};
    static_assert(sizeof(mant) / sizeof(mant[0]) == GC_STEPS_PER_DECADE);
    std::vector<uint64_t> v;
    uint64_t scale = GC_FIRST_BOUND_NS;  // ns at mantissa 100
    for (int d = 0; d <= GC_DECADES; ++d, scale *= 10)
      for (uint64_t m : mant) {
        if (v.size() == GC_NBOUNDS) break;
        v.push_back(m * scale / 100);
      }
    return v;
  }();
  return b;
}

const std::vector<double>& gc_export_bounds_seconds() {
  static const std::vector<double> b = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                        0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,     10};
  return b;
}

double gc_quantile_seconds(const std::vector<uint64_t>& counts, double q) {
  const auto& bounds = gc_fine_bounds_ns();
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  if (total == 0) return std::numeric_limits<double>::quiet_NaN();
  const double rank = q * static_cast<double>(total);
  double cum = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) continue;
    const double next = cum + static_cast<double>(counts[i]);
    if (next >= rank) {
      if (i >= bounds.size()) return static_cast<double>(bounds.back()) / 1e9;
      const double lo = i == 0 ? 0 : static_cast<double>(bounds[i - 1]);
      const double hi = static_cast<double>(bounds[i]);
      const double frac = (rank - cum) / static_cast<double>(counts[i]);
      return (lo + (hi - lo) * frac) / 1e9;
    }
    cum = next;
  }
  return static_cast<double>(bounds.back()) / 1e9;
}

const char* gc_kind_name(Runtime r, int kind) {
  switch (r) {
    case Runtime::jvm: return kind == 1 ? "full" : "minor";
    case Runtime::node: return kind == 1 ? "scavenge" : kind == 2 ? "mark_compact" : "other";
    case Runtime::python: {
      static const char* gens[] = {"gen0", "gen1", "gen2", "other"};
      return kind >= 0 && kind <= GC_MAX_KIND ? gens[kind] : "other";
    }
    case Runtime::none: break;
  }
  return "other";
}

namespace {

// V8's Heap methods the probes go on (mangled). CollectGarbage changes its
// parameter list between versions: found by this prefix.
constexpr std::string_view kV8Collect = "_ZN2v88internal4Heap14CollectGarbageE";
constexpr std::string_view kV8SizeOfObjects = "_ZN2v88internal4Heap13SizeOfObjectsEv";
constexpr std::string_view kV8CommittedMemory = "_ZN2v88internal4Heap15CommittedMemoryEv";

uint16_t rt_code(Runtime r) {
  switch (r) {
    case Runtime::jvm: return GC_RT_JVM;
    case Runtime::node: return GC_RT_NODE;
    case Runtime::python: return GC_RT_PYTHON;
    case Runtime::none: break;
  }
  return 0;
}

constexpr uint64_t kSlotNs = static_cast<uint64_t>(GcCollector::kWindowSeconds * 1e9) / (GC_SLOTS - 1);

// Where a runtime binary keeps its GC probes.
struct BinaryFacts {
  bool python_usdt = false;
  bool jvm_usdt = false;
  std::string v8_collect;  // mangled name of Heap::CollectGarbage, or empty
};

BinaryFacts facts_of(const elf::ElfFile& f, Runtime r) {
  BinaryFacts b;
  if (r == Runtime::python) b.python_usdt = f.has_usdt("python", "gc__start") && f.has_usdt("python", "gc__done");
  if (r == Runtime::jvm) b.jvm_usdt = f.has_usdt("hotspot", "gc__begin") && f.has_usdt("hotspot", "gc__end");
  // Heap::CollectGarbage changes its parameter list between versions: the
  // mangled name is found by its prefix.
  if (r == Runtime::node)
    if (auto s = f.find_prefix(kV8Collect)) b.v8_collect = s->name;
  return b;
}

// facts_of, cached per binary identity and runtime.
const BinaryFacts& facts_for(const elf::ElfFile& f, const std::string& path, Runtime r) {
  static std::map<std::string, BinaryFacts> cache;
  const std::string key = (f.build_id().empty() ? path : f.build_id()) + "/" + runtime_name(r);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  return cache.emplace(key, facts_of(f, r)).first->second;
}

const MetricDesc& m_pause() {
  static const MetricDesc d = metric("gc_pause", "seconds", MetricKind::histogram,
                                     "GC pauses of the target's runtime, timed in the kernel from the runtime's "
                                     "own GC begin/end points, by runtime and kind of collection.");
  return d;
}
const MetricDesc& m_pause_max() {
  static const MetricDesc d = metric("gc_pause_max", "seconds", MetricKind::gauge,
                                     "Longest GC pause in the last 60 s (0 when there was none).");
  return d;
}
const MetricDesc& m_pause_q() {
  static const MetricDesc d =
      metric("gc_pause_quantile", "seconds", MetricKind::gauge,
             "GC pause percentiles (label percentile: 50, 90, 99) over the last 60 s, all kinds together "
             "(from a fine kernel histogram, within a few percent); absent when there was no pause. "
             "Not a summary: the label is not called quantile, so rate() never mixes it with one.");
  return d;
}
const MetricDesc& m_ratio() {
  static const MetricDesc d = metric("gc_time_ratio", "", MetricKind::gauge,
                                     "Share of wall time spent in GC pauses over the last 60 s (seconds per second).");
  return d;
}
const MetricDesc& m_available() {
  static const MetricDesc d =
      metric("gc_tracing_available", "", MetricKind::gauge,
             "1 when GC pauses of this runtime target are traced; 0 with the reason when they cannot be "
             "(no USDT probes nor symbols in the runtime binary, attach failure, disabled by config).");
  return d;
}
const MetricDesc& m_heap_used() {
  static const MetricDesc d = metric("jvm_heap_used", "bytes", MetricKind::gauge,
                                     "JVM heap used per space (hsperfdata, the counters jstat reads).");
  return d;
}
const MetricDesc& m_heap_committed() {
  static const MetricDesc d = metric("jvm_heap_committed", "bytes", MetricKind::gauge,
                                     "JVM heap committed (capacity) per space (hsperfdata).");
  return d;
}
const MetricDesc& m_nonheap_used() {
  static const MetricDesc d = metric("jvm_nonheap_used", "bytes", MetricKind::gauge,
                                     "JVM metaspace and compressed class space used (hsperfdata).");
  return d;
}
const MetricDesc& m_nonheap_committed() {
  static const MetricDesc d = metric("jvm_nonheap_committed", "bytes", MetricKind::gauge,
                                     "JVM metaspace and compressed class space committed (hsperfdata).");
  return d;
}
const MetricDesc& m_v8_used() {
  static const MetricDesc d =
      metric("v8_heap_used", "bytes", MetricKind::gauge,
             "V8's heap used at the end of the last collection, all isolates of the process (main thread and "
             "workers): Heap::SizeOfObjects, what v8.getHeapStatistics() calls used_heap_size.");
  return d;
}
const MetricDesc& m_v8_committed() {
  static const MetricDesc d =
      metric("v8_heap_committed", "bytes", MetricKind::gauge,
             "V8's heap committed at the end of the last collection, all isolates: Heap::CommittedMemory, "
             "v8.getHeapStatistics()'s total_heap_size.");
  return d;
}
const MetricDesc& m_errors() {
  static const MetricDesc d = metric("gc_bpf_errors", "", MetricKind::counter,
                                     "Kernel-side GC tracing events lost, by reason (hist_full: no room for a new "
                                     "histogram; open_full: no room for an open pause; unmatched: an end without "
                                     "a begin in a process started after the probes were attached; mid_pause: an "
                                     "end without a begin in a process that was mid-pause when they were attached; "
                                     "v8_full: no room for a thread's V8 heap figures; watched_full: a target left "
                                     "out of the kernel's watched set) and attach failures.");
  return d;
}
const MetricDesc& m_armed() {
  static const MetricDesc d = metric("gc_probed_binaries", "", MetricKind::gauge,
                                     "Runtime binaries (libjvm.so, node, python) whose GC probes are attached for "
                                     "every process that maps them, so a runtime started later is timed from its "
                                     "first collection.");
  return d;
}
const MetricDesc& m_traced() {
  static const MetricDesc d =
      metric("gc_traced_targets", "", MetricKind::gauge, "Targets whose GC pauses are being traced.");
  return d;
}

}  // namespace

// ---- lifecycle ---------------------------------------------------------------

void GcCollector::SkelDeleter::operator()(gc_bpf* s) const { gc_bpf__destroy(s); }

GcCollector::GcCollector() = default;
GcCollector::~GcCollector() {
  watches_.clear();  // links first, then the object they point into
  armed_.clear();
  exit_link_.reset();
  skel_.reset();
}

Result<void> GcCollector::start(const ConfigPtr& config) {
  const Config& cfg = *config;
  proc_ = ProcFs(cfg.procfs);
  if (skel_) return {};  // a reload keeps the loaded programs and attachments
  if (auto r = bpf::prepare(); !r) return r;

  std::unique_ptr<gc_bpf, SkelDeleter> skel(gc_bpf__open());
  if (!skel) return make_error(errc_from_errno(errno), std::string("gc: open BPF object: ") + std::strerror(errno));
  skel->rodata->slot_ns = kSlotNs;
  const auto& bounds = gc_fine_bounds_ns();
  for (std::size_t i = 0; i < bounds.size(); ++i) skel->rodata->gc_bounds[i] = bounds[i];
  // One histogram per (pid, kind): at most 4 kinds per runtime target, and
  // room for 64 young processes not found yet.
  const uint32_t watchable = static_cast<uint32_t>(std::max(16, cfg.max_targets)) + 64;
  bpf_map__set_max_entries(skel->maps.hists, watchable * (GC_MAX_KIND + 1));
  bpf_map__set_max_entries(skel->maps.watched, watchable);
  // Young long enough for several rescans to find a new process.
  young_s_ = std::max(30.0, 10.0 * std::chrono::duration<double>(cfg.rescan_interval).count());
  skel->rodata->young_ns = static_cast<uint64_t>(young_s_ * 1e9);
  if (int err = gc_bpf__load(skel.get()); err)
    return make_error(Errc::unavailable, std::string("gc: load BPF object: ") + std::strerror(-err));
  bpf_link* l = bpf_program__attach(skel->progs.gc_thread_exit);
  if (!l)
    return make_error(Errc::unavailable,
                      std::string("gc: attach sched_process_exit: ") + std::strerror(errno));
  exit_link_ = bpf::Link(l);
  skel_ = std::move(skel);
  arm_host_binaries(cfg);
  return {};
}

namespace {
// The v8_heaps keys (pid_tgid) of one process's threads.
std::vector<uint64_t> v8_keys_of(int fd, pid_t pid) {
  std::vector<uint64_t> keys;
  uint64_t key = 0, next = 0;
  for (uint64_t* prev = nullptr; bpf_map_get_next_key(fd, prev, &next) == 0; prev = &key) {
    key = next;
    if (static_cast<pid_t>(key >> 32) == pid) keys.push_back(key);
  }
  return keys;
}

// V8's heap figures at each collection's end: uretprobes on the two Heap
// methods its GC tracer calls at the start and end of every collection.
// Optional: without them the pauses are still timed.
bool attach_v8_heap(pid_t pid, const std::string& bin, const elf::ElfFile& f, std::vector<bpf::Link>& links,
                    gc_bpf* skel) {
  auto used = f.find(kV8SizeOfObjects);
  auto committed = f.find(kV8CommittedMemory);
  if (!used || !committed) {
    spdlog::debug("gc: {} has no Heap::SizeOfObjects/CommittedMemory: no V8 heap figures", bin);
    return false;
  }
  auto l1 = bpf::attach_uprobe(skel->progs.v8_size_of_objects_return, pid, bin, used->file_offset, true);
  if (!l1) return false;
  auto l2 = bpf::attach_uprobe(skel->progs.v8_committed_memory_return, pid, bin, committed->file_offset, true);
  if (!l2) return false;
  links.push_back(std::move(*l1));
  links.push_back(std::move(*l2));
  return true;
}

// The GC probes of runtime `r` in `bin`, for `pid` or bpf::kEveryProcess.
struct Probes {
  std::string method = "none";
  bool v8_heap = false;
  std::vector<bpf::Link> links;
  std::string error;  // the last attach error, when nothing was attached
  bool ok() const { return !links.empty(); }
};

Probes attach_probes(gc_bpf* skel, pid_t pid, const std::string& bin, Runtime r, const elf::ElfFile& f,
                     const BinaryFacts& facts) {
  Probes p;
  auto keep = [&](Result<bpf::Link> l) {
    if (!l) {
      p.error = l.error().message;
      return false;
    }
    p.links.push_back(std::move(*l));
    return true;
  };
  auto usdt_pair = [&](bpf_program* begin, bpf_program* end, const char* provider, const char* b, const char* e) {
    if (keep(bpf::attach_usdt(begin, pid, bin, provider, b)) && keep(bpf::attach_usdt(end, pid, bin, provider, e))) {
      p.method = "usdt";
      return true;
    }
    p.links.clear();
    return false;
  };
  auto uprobe_pair = [&](bpf_program* entry, bpf_program* ret, const std::string& sym) {
    auto s = f.find(sym);
    if (!s) {
      p.error = s.error().message;
      return false;
    }
    if (keep(bpf::attach_uprobe(entry, pid, bin, s->file_offset, false)) &&
        keep(bpf::attach_uprobe(ret, pid, bin, s->file_offset, true))) {
      p.method = "uprobe";
      return true;
    }
    p.links.clear();
    return false;
  };
  switch (r) {
    case Runtime::jvm:
      if (facts.jvm_usdt) usdt_pair(skel->progs.jvm_gc_begin, skel->progs.jvm_gc_end, "hotspot", "gc__begin", "gc__end");
      break;
    case Runtime::python:
      if (facts.python_usdt)
        usdt_pair(skel->progs.py_gc_start, skel->progs.py_gc_done, "python", "gc__start", "gc__done");
      else if (f.defines("gc_collect_main"))
        uprobe_pair(skel->progs.py_collect_entry, skel->progs.py_collect_return, "gc_collect_main");
      break;
    case Runtime::node:
      if (!facts.v8_collect.empty() && uprobe_pair(skel->progs.node_gc_entry, skel->progs.node_gc_return, facts.v8_collect))
        p.v8_heap = attach_v8_heap(pid, bin, f, p.links, skel);
      break;
    case Runtime::none: break;
  }
  // A pause open in a running process now ends without its begin: counted
  // apart from a begin lost in a process started after this.
  if (p.ok()) skel->bss->armed_at_ns = mono_ns();
  return p;
}

GcCollector::FileKey file_key(const struct stat& st) {
  return {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

// The runtime binaries of the host, where packages put them: their probes are
// attached at start, so the first process of each is timed from its first
// collection too.
std::vector<std::pair<std::string, Runtime>> host_runtime_binaries() {
  std::vector<std::pair<std::string, Runtime>> out;
  auto add = [&](const std::string& pattern, Runtime r) {
    glob_t g{};
    if (::glob(pattern.c_str(), 0, nullptr, &g) == 0)
      for (std::size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i], r);
    ::globfree(&g);
  };
  add("/usr/lib/jvm/*/lib/server/libjvm.so", Runtime::jvm);
  for (const char* dir : {"/usr/bin", "/usr/local/bin"}) {
    add(std::string(dir) + "/node", Runtime::node);
    add(std::string(dir) + "/nodejs", Runtime::node);
    add(std::string(dir) + "/python3.[0-9]", Runtime::python);
    add(std::string(dir) + "/python3.[0-9][0-9]", Runtime::python);
  }
  return out;
}

// Could an entry of `cfg` that traces GC take a process that a runtime
// binary starts, before it starts? Entries by pid, memlensd itself or
// top_rss cannot (a process found by size is timed from then); a comm or
// exe regex must match the names the binary runs under.
bool could_watch(const Config& cfg, const std::string& path, Runtime r) {
  const std::string base(basename_of(path));
  std::vector<std::string> comms;
  switch (r) {
    case Runtime::jvm: comms = {"java"}; break;  // the launcher, which maps libjvm.so
    case Runtime::node: comms = {"node", "nodejs"}; break;
    case Runtime::python: comms = {base, "python3", "python"}; break;
    case Runtime::none: return false;
  }
  for (const TargetPolicy& p : cfg.targets) {
    const Selector& sel = p.selector;
    if (!p.gc || sel.pid || sel.self || sel.top_rss) continue;
    if (sel.comm_re && std::none_of(comms.begin(), comms.end(), [&](const std::string& c) {
          return re2::RE2::FullMatch(c.substr(0, 15), *sel.comm_re);
        }))
      continue;
    // The exe of a JVM is its launcher, beside libjvm.so's directory.
    const std::string exe = r == Runtime::jvm ? path.substr(0, path.rfind("/lib/")) + "/bin/java" : path;
    if (sel.exe_re && !re2::RE2::FullMatch(exe, *sel.exe_re)) continue;
    return true;
  }
  return false;
}
}  // namespace

void GcCollector::arm_host_binaries(const Config& cfg) {
  const double t0 = mono_now();
  for (const auto& [path, runtime] : host_runtime_binaries()) {
    char real[PATH_MAX];
    struct stat st;
    if (!::realpath(path.c_str(), real) || ::stat(real, &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (!could_watch(cfg, path, runtime) && !could_watch(cfg, real, runtime)) continue;
    if (armed_.size() >= kMaxArmed || armed_.count(file_key(st))) continue;
    // Only the symbols the probes need (none for the JVM's USDT probes),
    // parsed once and let go: a binary that no target runs keeps nothing.
    static const std::vector<std::string_view> kJvm, kNode = {kV8Collect, kV8SizeOfObjects, kV8CommittedMemory},
                                                     kPython = {"gc_collect_main"};
    auto f = elf::ElfFile::open(real, runtime == Runtime::jvm ? &kJvm : runtime == Runtime::node ? &kNode : &kPython);
    if (!f) continue;
    Probes p = attach_probes(skel_.get(), bpf::kEveryProcess, real, runtime, **f, facts_of(**f, runtime));
    if (!p.ok()) {
      spdlog::debug("gc: no GC probes in {} ({})", real, p.error.empty() ? "none found" : p.error);
      continue;
    }
    spdlog::debug("gc: {} probes ({}) in {} for every process", runtime_name(runtime), p.method, real);
    armed_.emplace(file_key(st), Armed{runtime, p.method, p.v8_heap, std::move(p.links)});
  }
  if (armed_.empty()) return;
  // The symbol tables parsed for it (75k functions in node) are gone: give
  // their pages back rather than keep them in the heap's free lists.
  ::malloc_trim(0);
  spdlog::info("gc: probes in {} runtime binar{} of this host, for every process ({:.0f} ms)", armed_.size(),
               armed_.size() == 1 ? "y" : "ies", (mono_now() - t0) * 1e3);
}

// What the kernel kept for processes no target watches goes once they are
// no longer young: the ones discovery did not take.
void GcCollector::sweep_unwatched(double now) {
  std::set<pid_t> watched;
  for (const auto& [id, w] : watches_)
    if (w.available) watched.insert(id.pid);
  std::set<pid_t> seen;
  const int hists = bpf_map__fd(skel_->maps.hists);
  gc_key key{}, next{};
  for (gc_key* prev = nullptr; bpf_map_get_next_key(hists, prev, &next) == 0; prev = &key) {
    key = next;
    if (!watched.count(static_cast<pid_t>(key.pid))) seen.insert(static_cast<pid_t>(key.pid));
  }
  // The V8 entries (one per thread) of every pid no target watches, from
  // one walk of the map.
  const int v8 = bpf_map__fd(skel_->maps.v8_heaps);
  std::map<pid_t, std::vector<uint64_t>> v8_threads;
  uint64_t tk = 0, tnext = 0;
  for (uint64_t* prev = nullptr; bpf_map_get_next_key(v8, prev, &tnext) == 0; prev = &tk) {
    tk = tnext;
    const auto pid = static_cast<pid_t>(tk >> 32);
    if (!watched.count(pid)) {
      seen.insert(pid);
      v8_threads[pid].push_back(tk);
    }
  }
  std::map<pid_t, double> still;
  for (pid_t pid : seen) {
    auto it = unwatched_.find(pid);
    const double since = it == unwatched_.end() ? now : it->second;
    if (now - since < young_s_ + 10) {
      still.emplace(pid, since);
      continue;
    }
    for (Runtime r : {Runtime::jvm, Runtime::node, Runtime::python}) delete_keys(pid, r);
    for (uint64_t k : v8_threads[pid]) bpf_map_delete_elem(v8, &k);
  }
  unwatched_ = std::move(still);
}

void GcCollector::attach(const Target& t, Watch& w) {
  auto info = detect_runtime(proc_, t.pid());
  if (!info || info->runtime == Runtime::none) return;
  w.runtime = info->runtime;
  if (t.policy && !t.policy->gc) {
    w.reason = "disabled_by_config";
    return;
  }
  const pid_t pid = t.pid();
  std::string last_error;
  bool readable = false, ok = false;
  for (const std::string& b : info->binaries) {
    const std::string bin = host_path(proc_, pid, b);
    struct stat st;
    if (::access(bin.c_str(), R_OK) != 0 || ::stat(bin.c_str(), &st) != 0) continue;
    readable = true;
    if (auto a = armed_.find(file_key(st)); a != armed_.end() && a->second.runtime == w.runtime) {
      w.method = a->second.method;  // attached for every process of this binary already
      w.v8_heap = a->second.v8_heap;
      ok = true;
      break;
    }
    auto f = elf::open_cached(bin);
    if (!f) {
      last_error = f.error().message;
      ++attach_failures_;
      continue;
    }
    // Every process of the binary, so the next one started is timed from its
    // first collection; past kMaxArmed binaries, this pid only.
    const bool every = armed_.size() < kMaxArmed && !armed_.count(file_key(st));
    Probes p = attach_probes(skel_.get(), every ? bpf::kEveryProcess : pid, bin, w.runtime, **f,
                             facts_for(**f, bin, w.runtime));
    if (!p.ok()) {
      if (!p.error.empty()) {
        last_error = p.error;
        ++attach_failures_;
      }
      continue;
    }
    w.method = p.method;
    w.v8_heap = p.v8_heap;
    if (every)
      armed_.emplace(file_key(st), Armed{w.runtime, p.method, p.v8_heap, std::move(p.links)});
    else
      w.links = std::move(p.links);
    ok = true;
    break;
  }
  if (ok) {
    w.available = true;
    w.reason = "ok";
    const uint32_t key = static_cast<uint32_t>(pid);
    const uint8_t one = 1;
    if (bpf_map_update_elem(bpf_map__fd(skel_->maps.watched), &key, &one, BPF_ANY) != 0) ++watched_full_;
    w.attached_at = mono_now();
    w.snaps.push_back(Snap{w.attached_at, std::vector<uint64_t>(GC_NBUCKETS, 0)});
    spdlog::debug("gc: tracing {} pid {} ({}) via {}", t.name, pid, runtime_name(w.runtime), w.method);
    return;
  }
  w.links.clear();
  w.method = "none";
  if (!readable) {
    w.reason = "binary_unreadable";
  } else if (!last_error.empty()) {
    w.reason = "attach_failed";
    spdlog::warn("gc: cannot trace {} pid {}: {}", t.name, pid, last_error);
  } else {
    w.reason = w.runtime == Runtime::node ? "no_symbols" : "no_usdt_or_symbols";
    spdlog::info("gc: {} pid {} runs a {} without GC probes or symbols; pauses not traced", t.name, pid,
                 runtime_name(w.runtime));
  }
}

void GcCollector::target_added(const Target& t) {
  if (!skel_) return;
  Watch w;
  attach(t, w);
  // A process caught between fork and exec (or a launcher script that execs
  // the runtime) looks like no runtime yet: look again a few times.
  if (w.runtime == Runtime::none) w.detect_next = mono_now() + 1;
  watches_[t.id] = std::move(w);
}

void GcCollector::delete_keys(pid_t pid, Runtime r) {
  const int fd = bpf_map__fd(skel_->maps.hists);
  for (uint16_t k = 0; k <= GC_MAX_KIND; ++k) {
    gc_key key{static_cast<uint32_t>(pid), rt_code(r), k};
    bpf_map_delete_elem(fd, &key);
  }
}

void GcCollector::target_removed(const Target& t) {
  auto it = watches_.find(t.id);
  if (it == watches_.end()) return;
  it->second.links.clear();
  if (skel_ && it->second.available) {
    const uint32_t key = static_cast<uint32_t>(t.pid());
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.watched), &key);
  }
  if (skel_) delete_keys(t.pid(), it->second.runtime);
  if (skel_ && it->second.v8_heap) {
    // Its threads' V8 entries (they go at thread exit too; this covers a
    // target dropped by a reload while it runs).
    const int fd = bpf_map__fd(skel_->maps.v8_heaps);
    for (uint64_t k : v8_keys_of(fd, t.pid())) bpf_map_delete_elem(fd, &k);
  }
  watches_.erase(it);
}

// ---- per tick ----------------------------------------------------------------

void GcCollector::read_jvm_memory(const Target& t, Watch& w, double now, Sample& out) {
  if (w.perf_path.empty()) {
    if (now < w.perf_next_try) return;
    auto p = find_hsperfdata(proc_, t.pid());
    if (!p) {
      // -XX:-UsePerfData, or a JVM still starting: look again later, quietly.
      ++w.perf_misses;
      w.perf_next_try = now + std::min(60.0, 2.0 * w.perf_misses);
      if (w.perf_misses == 3)
        spdlog::debug("gc: no hsperfdata for {} pid {} ({}); JVM heap gauges off", t.name, t.pid(),
                      p.error().message);
      return;
    }
    w.perf_path = *p;
  }
  auto text = read_file(w.perf_path, 1 << 22);
  if (!text) {
    w.perf_path.clear();
    return;
  }
  auto parsed = parse_hsperfdata(*text);
  if (!parsed) return;  // being written or not yet accessible: next tick
  const JvmMemory mem = jvm_memory(*parsed);
  for (const auto& s : mem.heap) {
    out.gauge(m_heap_used(), static_cast<double>(s.used), {{"space", s.name}});
    out.gauge(m_heap_committed(), static_cast<double>(s.committed), {{"space", s.name}});
  }
  for (const auto* s : {&mem.metaspace, &mem.class_space}) {
    if (!*s) continue;
    out.gauge(m_nonheap_used(), static_cast<double>((*s)->used), {{"space", (*s)->name}});
    out.gauge(m_nonheap_committed(), static_cast<double>((*s)->committed), {{"space", (*s)->name}});
  }
}

// The V8 heap of every isolate of the process (its threads' entries),
// summed, once a collection has ended with both figures read. It becomes
// the target's heap series: what a Node program leaks is JS objects, which
// live in V8's own pages, not in malloc's books.
void GcCollector::read_v8_heap(const Target& t, Sample& out) {
  const int fd = bpf_map__fd(skel_->maps.v8_heaps);
  uint64_t used = 0, committed = 0;
  bool any = false;
  v8_heap v{};
  for (uint64_t key : v8_keys_of(fd, t.pid())) {
    if (bpf_map_lookup_elem(fd, &key, &v) != 0 || v.collections == 0) continue;
    used += v.used;
    committed += v.committed;
    any = true;
  }
  if (!any) return;
  out.gauge(m_v8_used(), static_cast<double>(used));
  out.gauge(m_v8_committed(), static_cast<double>(committed));
  out.series(SeriesId::heap, static_cast<double>(used), SeriesQuality::runtime);
}

Result<void> GcCollector::collect(const Target& t, Sample& out) {
  auto it = watches_.find(t.id);
  if (it == watches_.end()) return {};
  Watch& w = it->second;
  if (w.runtime == Runtime::none) {
    if (w.detect_tries >= 3 || mono_now() < w.detect_next) return {};
    ++w.detect_tries;
    w.detect_next = mono_now() + 2.0 * w.detect_tries;
    attach(t, w);
    if (w.runtime == Runtime::none) return {};
  }
  const std::string rt = runtime_name(w.runtime);
  out.gauge(m_available(), w.available ? 1 : 0, {{"runtime", rt}, {"method", w.method}, {"reason", w.reason}});
  const double now = mono_now();
  if (w.runtime == Runtime::jvm) read_jvm_memory(t, w, now, out);
  if (!w.available) return {};
  if (w.v8_heap) read_v8_heap(t, out);

  const int fd = bpf_map__fd(skel_->maps.hists);
  const auto& fine = gc_fine_bounds_ns();
  const auto& exp = gc_export_bounds_seconds();
  const uint64_t now_epoch = static_cast<uint64_t>(now * 1e9) / kSlotNs;
  std::vector<uint64_t> all(GC_NBUCKETS, 0);
  uint64_t window_sum_ns = 0;
  gc_hist h;
  for (uint16_t k = 0; k <= GC_MAX_KIND; ++k) {
    gc_key key{static_cast<uint32_t>(t.pid()), rt_code(w.runtime), k};
    if (bpf_map_lookup_elem(fd, &key, &h) != 0) continue;
    HistogramValue hv;
    hv.bounds = exp;
    hv.counts.assign(exp.size(), 0);
    hv.count = h.count;
    hv.sum = static_cast<double>(h.sum_ns) / 1e9;
    std::size_t e = 0;
    for (std::size_t i = 0; i < GC_NBUCKETS; ++i) {
      all[i] += h.buckets[i];
      if (i >= fine.size()) break;  // above 10 s: the implicit +Inf bucket
      while (e < exp.size() && static_cast<double>(fine[i]) > exp[e] * 1e9 + 0.5) ++e;
      if (e < exp.size()) hv.counts[e] += h.buckets[i];
    }
    uint64_t max_ns = 0;
    for (const gc_slot& s : h.slots) {
      if (s.epoch + GC_SLOTS <= now_epoch || s.epoch > now_epoch) continue;  // out of the window
      max_ns = std::max<uint64_t>(max_ns, s.max_ns);
      window_sum_ns += s.sum_ns;
    }
    const Labels l{{"runtime", rt}, {"kind", gc_kind_name(w.runtime, k)}};
    out.histogram(m_pause(), std::move(hv), l);
    out.gauge(m_pause_max(), static_cast<double>(max_ns) / 1e9, l);
  }

  // Window quantiles: this tick's cumulative counts minus the newest snapshot
  // at or before the window start (or the zeros taken at attach).
  while (w.snaps.size() >= 2 && w.snaps[1].t <= now - kWindowSeconds) w.snaps.pop_front();
  std::vector<uint64_t> delta(GC_NBUCKETS);
  for (std::size_t i = 0; i < GC_NBUCKETS; ++i) delta[i] = all[i] - std::min(all[i], w.snaps.front().counts[i]);
  for (const auto& [q, name] : {std::pair{0.5, "50"}, std::pair{0.9, "90"}, std::pair{0.99, "99"}}) {
    const double v = gc_quantile_seconds(delta, q);
    if (!std::isnan(v)) out.gauge(m_pause_q(), v, {{"runtime", rt}, {"percentile", name}});
  }
  // Keep a snapshot every 1/12 of the window: bounded memory per target.
  if (now - w.snaps.back().t >= kWindowSeconds / 12) w.snaps.push_back(Snap{now, std::move(all)});

  // Slots cover GC_SLOTS-1 whole slots plus the current partial one.
  const double covered =
      std::min(now - w.attached_at, now - static_cast<double>((now_epoch + 1 - GC_SLOTS) * kSlotNs) / 1e9);
  if (covered > 0)
    out.gauge(m_ratio(), static_cast<double>(window_sum_ns) / 1e9 / covered, {{"runtime", rt}});
  return {};
}

void GcCollector::collect_global(GlobalSample& out) {
  if (!skel_) return;
  static const char* names[GC_ERR_MAX] = {"hist_full", "open_full", "unmatched", "v8_full", "mid_pause"};
  const int fd = bpf_map__fd(skel_->maps.errors);
  for (uint32_t i = 0; i < GC_ERR_MAX; ++i) {
    auto v = bpf::sum_percpu_u64(fd, &i);
    out.counter(m_errors(), v ? static_cast<double>(*v) : 0, {{"reason", names[i]}});
  }
  out.counter(m_errors(), static_cast<double>(attach_failures_), {{"reason", "attach"}});
  out.counter(m_errors(), static_cast<double>(watched_full_), {{"reason", "watched_full"}});
  out.gauge(m_armed(), static_cast<double>(armed_.size()));
  if (const double now = mono_now(); now >= next_sweep_) {
    next_sweep_ = now + 5;
    sweep_unwatched(now);
  }
  out.counter(bpf::self_metrics().missed, static_cast<double>(bpf::object_missed_runs(skel_->obj)), {{"collector", "gc"}});
  double traced = 0;
  for (const auto& [id, w] : watches_) traced += w.available ? 1 : 0;
  out.gauge(m_traced(), traced);
}

}  // namespace memlens
