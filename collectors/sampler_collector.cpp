#include "collectors/sampler_collector.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "bpf/sampler.h"
#include "collectors/elf_symbols.h"
#include "collectors/glibc_heap.h"
#include "collectors/profile_stacks.h"
#include "daemon/clock.h"
#include "daemon/config.h"
#include "daemon/http_util.h"
#include "daemon/pprof.h"
#include "sampler/memlens_sampler.h"
#include "sampler.skel.h"

namespace memlens {

static_assert(sizeof(sampled_key) == 16);
static_assert(sizeof(sampled_val) == 24);
static_assert(sizeof(site_key) == 8);
static_assert(sizeof(site_val) == 40);

namespace {

struct SamplerMetrics {
  // The allocation counters share their names with the uprobe collector's;
  // `source` says which one counted.
  MetricDesc allocs = metric("allocs", "", MetricKind::counter,
                             "Allocations (malloc, calloc, realloc, memalign family) since attach.");
  MetricDesc frees = metric("frees", "", MetricKind::counter,
                            "Frees (free, realloc of a block) since attach; in address mode only frees "
                            "of blocks allocated since attach.");
  MetricDesc alloc_bytes = metric("alloc", "bytes", MetricKind::counter,
                                  "Bytes allocated since attach (same units as heap_live). Estimated "
                                  "(observed / duty fraction) in duty mode.");
  MetricDesc samples = metric("sampler_samples", "", MetricKind::counter,
                              "Allocations the in-process sampler drew, by outcome: kept (in the process's own "
                              "table of sites, which memlensd reads), dropped (its table of sampled blocks or of "
                              "sites was full).");
  MetricDesc fired = metric("sampler_probes_fired", "", MetricKind::counter,
                            "Kept samples the in-process sampler also fired as otel_memory:alloc, because a "
                            "consumer was attached to its probes (memlensd is, for `sampler: probes`).");
  MetricDesc sites = metric("sampler_sites", "", MetricKind::gauge,
                            "Call sites the in-process sampler keeps (at most 4096, or MEMLENS_SAMPLER_SITES).");
  MetricDesc interval = metric("sampler_mean_interval", "bytes", MetricKind::gauge,
                               "Mean bytes between two samples of the in-process sampler (0: it only counts).");
  MetricDesc attached = metric("sampler_usdt_attached", "", MetricKind::gauge,
                               "Binaries of this process whose otel_memory USDT probes memlensd has attached.");
  MetricDesc drops = metric("sampler_bpf_drops", "", MetricKind::counter,
                            "Sampled allocations the kernel side could not keep, by reason: stack (stack map full), "
                            "sampled_full (sampled-block map full), sites_full (profile site map full), "
                            "free_unknown (a free of a block sampled before memlensd attached).");
  MetricDesc failures = metric("sampler_failures", "", MetricKind::counter,
                               "Sampler work that failed, by what: attach (a USDT probe), page_read (the counting "
                               "page of a process).");
  MetricDesc line_lookups = metric("profile_line_lookups", "", MetricKind::counter,
                                   "Addresses of heap-profile stacks given a source line, by where the answer came "
                                   "from: cache (known already) or dwarf (a file's line tables, opened for it).");
  MetricDesc line_cache = metric("profile_line_cache_entries", "", MetricKind::gauge,
                                 "Addresses whose source line (or its absence) memlensd keeps; it starts over past "
                                 "200,000.");
};
const SamplerMetrics& m() {
  static const SamplerMetrics d;
  return d;
}

const Labels kFromSampler = {{"source", "sampler"}};

// `len` bytes at `addr` in process `pid`, whole or not at all (the process
// gone: not_found).
Result<void> read_remote(pid_t pid, uint64_t addr, void* out, std::size_t len) {
  glibc::RemoteMemory::Read r{addr, len, out};
  glibc::ProcessMemory mem(pid);
  if (auto e = mem.read({&r, 1}); !e) return e;
  if (!r.ok) return make_error(Errc::malformed, "unmapped");
  return {};
}

}  // namespace

void SamplerCollector::SkelDeleter::operator()(sampler_bpf* s) const { sampler_bpf__destroy(s); }

SamplerCollector::SamplerCollector() = default;
SamplerCollector::~SamplerCollector() {
  watches_.clear();  // links first, then the object they point into
  skel_.reset();
}

Result<void> SamplerCollector::start(const ConfigPtr& config) {
  const Config& cfg = *config;
  proc_ = ProcFs(cfg.procfs);
  for (auto& [id, w] : watches_) w.look_cpu_ns.reset();  // the procfs root may have changed
  if (skel_) return {};  // a reload keeps the loaded programs
  if (auto r = bpf::prepare(); !r) return r;
  std::unique_ptr<sampler_bpf, SkelDeleter> skel(sampler_bpf__open());
  if (!skel)
    return make_error(errc_from_errno(errno), std::string("sampler: open BPF object: ") + std::strerror(errno));
  bpf_map__set_max_entries(skel->maps.sampled, cfg.bpf.max_sampled_blocks);
  bpf_map__set_max_entries(skel->maps.sampler_stacks, cfg.bpf.max_stacks);
  bpf_map__set_max_entries(skel->maps.sites, std::max<uint32_t>(1024, cfg.bpf.max_stacks));
  if (int err = sampler_bpf__load(skel.get()); err)
    return make_error(Errc::unavailable, std::string("sampler: load BPF object: ") + std::strerror(-err));
  skel_ = std::move(skel);
  return {};
}

void SamplerCollector::target_added(const Target& t) {
  Watch& w = watches_[t.id];
  w.name = t.name;
  w.pid = t.pid();
}

void SamplerCollector::target_removed(const Target& t) {
  auto it = watches_.find(t.id);
  if (it == watches_.end()) return;
  const pid_t pid = it->second.pid;
  watches_.erase(it);  // detaches its probes
  forget_pid(pid);
}

namespace {
// Deletes every key of `fd` (a hash map keyed by a struct whose first field
// is the pid) that belongs to `pid`: collected first, deleted after, so the
// walk never follows a key it removed.
template <typename Key>
void delete_pid_keys(int fd, pid_t pid) {
  std::vector<Key> mine;
  Key k{}, next{};
  for (const void* prev = nullptr; bpf_map_get_next_key(fd, prev, &next) == 0; prev = &k) {
    k = next;
    if (next.pid == static_cast<__u32>(pid)) mine.push_back(next);
  }
  for (auto& x : mine) bpf_map_delete_elem(fd, &x);
}
}  // namespace

// Drops a gone process's kernel state (its pid may come back as another).
void SamplerCollector::forget_pid(pid_t pid) {
  if (!skel_) return;
  delete_pid_keys<site_key>(bpf_map__fd(skel_->maps.sites), pid);
  delete_pid_keys<sampled_key>(bpf_map__fd(skel_->maps.sampled), pid);
}

// Finds, in the process's mappings, the sampler's counting page and every
// binary carrying otel_memory probes not attached yet (a library dlopened
// since the last look shows up here).
std::size_t SamplerCollector::look(const Target& t, Watch& w) {
  auto text = read_file(proc_.path(t.pid(), "maps"));
  if (!text) return 0;
  const auto maps = parse_maps(*text);
  const std::string root = proc_.path(t.pid(), "root");
  std::set<std::string> seen;
  for (const auto& mp : maps) {
    if (mp.path.empty() || mp.path[0] != '/' || !seen.insert(mp.path).second) continue;
    if (mp.path.ends_with(" (deleted)")) continue;
    // Notes and segments are all this needs: no file's functions are kept for it.
    auto f = elf::open_cached(root + mp.path, elf::Keep::none);
    if (!f) continue;
    const bool contract = (*f)->has_usdt("otel_memory", "alloc");
    // A binary whose probes are attached or refused was searched at that look.
    const bool known = w.probed.count(mp.path) || w.refused.count(mp.path);
    if (!w.page_addr && !known && (contract || mp.path.find("memlens-sampler") != std::string::npos)) {
      // The sampler preloaded, or linked into a binary of its own.
      auto objs = elf::find_objects(root + mp.path, {"memlens_sampler_page"});
      if (objs && objs->count("memlens_sampler_page")) {
        std::vector<Mapping> mine;
        for (const auto& x : maps)
          if (x.path == mp.path) mine.push_back(x);
        if (auto bias = (*f)->load_bias(mine)) {
          w.page_addr = *bias + objs->at("memlens_sampler_page").vaddr;
          w.page_path = mp.path;
        }
      }
    }
    if (!skel_ || !contract || known) continue;
    // The sampler's own probes: its sites are read from its page, with no
    // trap, unless the entry asks for them through the probes.
    if (mp.path == w.page_path && !(t.policy && t.policy->sampler_probes)) continue;
    auto a = bpf::attach_usdt(skel_->progs.otel_alloc, t.pid(), root + mp.path, "otel_memory", "alloc");
    Result<bpf::Link> fr = make_error(Errc::not_found, "no free probe");
    if (a && (*f)->has_usdt("otel_memory", "free"))
      fr = bpf::attach_usdt(skel_->progs.otel_free, t.pid(), root + mp.path, "otel_memory", "free");
    if (!a || !fr) {
      ++attach_failures_;
      w.refused.insert(mp.path);
      spdlog::warn("sampler: otel_memory probes of {} in pid {} not attached: {}", mp.path, t.pid(),
                   (!a ? a.error() : fr.error()).message);
      continue;
    }
    w.links.push_back(std::move(*a));
    w.links.push_back(std::move(*fr));
    w.probed.insert(mp.path);
    spdlog::info("sampler: otel_memory probes of {} attached for pid {} ({})", mp.path, t.pid(), t.name);
  }
  return seen.size();
}

Result<void> SamplerCollector::read_page(Watch& w) {
  memlens_sampler_page page;
  if (auto r = read_remote(w.pid, w.page_addr, &page, sizeof(page)); !r) return r;
  // A page not yet filled (the library's constructor has not run) or not
  // ours: try again next tick.
  if (page.magic != MEMLENS_SAMPLER_MAGIC || page.version != MEMLENS_SAMPLER_VERSION ||
      page.slots != MEMLENS_SAMPLER_SLOTS)
    return make_error(Errc::malformed, "sampler page not recognised");
  // A forked child keeps its parent's counts until its first allocation
  // resets them: not this process's books yet.
  if (page.pid != w.pid) return {};
  Counts c;
  for (const auto& s : page.slot) {
    c.allocs += static_cast<double>(s.allocs);
    c.frees += static_cast<double>(s.frees);
    c.alloc_bytes += static_cast<double>(s.alloc_bytes);
    c.kept += static_cast<double>(s.sampled);
  }
  c.dropped = static_cast<double>(page.dropped);
  c.fired = static_cast<double>(page.fired);
  auto raise = [](double& a, double b) { a = std::max(a, b); };
  raise(w.seen.allocs, c.allocs);
  raise(w.seen.frees, c.frees);
  raise(w.seen.alloc_bytes, c.alloc_bytes);
  raise(w.seen.kept, c.kept);
  raise(w.seen.dropped, c.dropped);
  raise(w.seen.fired, c.fired);
  w.mean_interval = page.enabled ? page.mean_interval : 0;
  w.sites_addr = page.sites_addr;
  w.sites_count = std::min<uint32_t>(page.sites_count, std::min<uint32_t>(page.sites_max, MEMLENS_SAMPLER_MAX_SITES));
  w.sampling = true;
  return {};
}

Result<void> SamplerCollector::collect(const Target& t, Sample& out) {
  if (!t.policy || !t.policy->sampler) return {};
  auto it = watches_.find(t.id);
  if (it == watches_.end()) return {};
  Watch& w = it->second;
  if (t.policy->sampler_probes != w.via_probes) {
    // A reload changed how the sampler is read: start over, so that no
    // sample is counted both from the page and through the probes.
    w.links.clear();
    w.probed.clear();
    w.refused.clear();
    forget_pid(w.pid);
    w.next_look = 0;
    w.look_cpu_ns.reset();
    w.via_probes = t.policy->sampler_probes;
  }
  const double now = mono_now();
  if (now >= w.next_look) {
    // Only the process's own threads map a library or the counting page: a
    // CPU clock that has not moved since the last look means the same
    // mappings (read before the look, so that one running during it is
    // looked at again).
    const std::optional<uint64_t>& cpu_ns = t.cpu_ns;
    if (cpu_ns && cpu_ns == w.look_cpu_ns) {
      w.look_every = std::min(w.look_every * 2, kLookMaxSeconds);
    } else {
      const std::size_t files = look(t, w);
      w.look_every = files == w.files ? std::min(w.look_every * 2, kLookMaxSeconds) : kLookSeconds;
      w.files = files;
      w.look_cpu_ns = cpu_ns;
    }
    w.next_look = now + w.look_every;
  }
  if (w.page_addr) {
    if (auto r = read_page(w); !r) {
      ++page_read_failures_;
      if (r.error().code == Errc::not_found) return r;  // the process is gone
    }
  }
  if (w.sampling) {
    out.counter(m().allocs, w.seen.allocs, kFromSampler);
    out.counter(m().frees, w.seen.frees, kFromSampler);
    out.counter(m().alloc_bytes, w.seen.alloc_bytes, kFromSampler);
    out.counter(m().samples, w.seen.kept, {{"outcome", "kept"}});
    out.counter(m().samples, w.seen.dropped, {{"outcome", "dropped"}});
    out.counter(m().fired, w.seen.fired);
    out.gauge(m().interval, static_cast<double>(w.mean_interval));
    out.gauge(m().sites, static_cast<double>(w.sites_count));
  }
  if (!w.probed.empty()) out.gauge(m().attached, static_cast<double>(w.probed.size()));
  return {};
}

// ---- profiles -------------------------------------------------------------

namespace {

// One pprof profile of the given rows (one process, or every process of a
// target).
template <typename Row>
std::string encode_profile(const std::vector<const Row*>& rows, const std::string& procfs, uint64_t period) {
  pprof::Builder b({{"alloc_objects", "count"}, {"alloc_space", "bytes"}, {"inuse_objects", "count"},
                    {"inuse_space", "bytes"}},
                   "inuse_space", {"space", "bytes"}, static_cast<int64_t>(period));
  b.time_nanos(std::chrono::duration_cast<std::chrono::nanoseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count());
  std::map<pid_t, StackResolver> resolvers;
  for (const Row* r : rows) {
    auto it = resolvers.find(r->pid);
    if (it == resolvers.end()) it = resolvers.emplace(r->pid, StackResolver::for_pid(procfs, r->pid)).first;
    auto locs = stack_locations(b, it->second, r->ips);
    const double ao = static_cast<double>(r->alloc_objects) / 1000.0;
    const double io = static_cast<double>(std::max<int64_t>(0, r->inuse_objects)) / 1000.0;
    b.sample(std::move(locs), {static_cast<int64_t>(ao + 0.5), static_cast<int64_t>(r->alloc_space),
                               static_cast<int64_t>(io + 0.5), std::max<int64_t>(0, r->inuse_space)});
  }
  return b.encode();
}

}  // namespace

std::vector<SamplerCollector::ProfileRow> SamplerCollector::read_sites(const Watch& w) {
  std::vector<ProfileRow> rows;
  if (!w.sites_addr || !w.sites_count) return rows;
  std::vector<memlens_sampler_site> sites(w.sites_count);
  if (!read_remote(w.pid, w.sites_addr, sites.data(), sites.size() * sizeof(memlens_sampler_site))) {
    ++page_read_failures_;
    return rows;
  }
  rows.reserve(sites.size());
  for (const auto& st : sites) {
    ProfileRow r;
    r.pid = w.pid;
    r.ips.assign(st.pc, st.pc + std::min<uint32_t>(st.depth, MEMLENS_SAMPLER_DEPTH));
    r.alloc_space = st.alloc_space;
    r.alloc_objects = st.alloc_objects;
    r.inuse_space = st.inuse_space;
    r.inuse_objects = st.inuse_objects;
    rows.push_back(std::move(r));
  }
  return rows;
}

void SamplerCollector::collect_global(GlobalSample& out) {
  if (!skel_) return;
  static const char* kDrop[SAMPLER_DROP_MAX] = {"stack", "sampled_full", "sites_full", "free_unknown"};
  const int drops_fd = bpf_map__fd(skel_->maps.sampler_drops);
  for (__u32 i = 0; i < SAMPLER_DROP_MAX; ++i) {
    auto v = bpf::sum_percpu_u64(drops_fd, &i);
    out.counter(m().drops, v ? static_cast<double>(*v) : 0, {{"reason", kDrop[i]}});
  }
  out.counter(m().failures, static_cast<double>(attach_failures_), {{"what", "attach"}});
  out.counter(m().failures, static_cast<double>(page_read_failures_), {{"what", "page_read"}});
  const auto lines = elf::SourceLines::stats();
  out.counter(m().line_lookups, static_cast<double>(lines.hits), {{"from", "cache"}});
  out.counter(m().line_lookups, static_cast<double>(lines.misses), {{"from", "dwarf"}});
  out.gauge(m().line_cache, static_cast<double>(lines.entries));
  out.counter(bpf::self_metrics().missed, static_cast<double>(bpf::object_missed_runs(skel_->obj)),
              {{"collector", "sampler"}});

  // Profiles: rebuilt every few seconds for targets with probes attached or
  // sites in their sampler's page, from one walk of the site map and one
  // read of each page's sites; published every tick.
  const double now = mono_now();
  auto profiled = [](const Watch& w) { return !w.probed.empty() || (w.sites_count > 0 && !w.via_probes); };
  std::map<std::string, std::vector<Watch*>> by_target;
  for (auto& [id, w] : watches_)
    if (profiled(w)) by_target[w.name].push_back(&w);
  if (now >= next_build_ && !by_target.empty()) {
    next_build_ = now + kProfileSeconds;
    std::vector<ProfileRow> kernel_rows;
    const int sites_fd = bpf_map__fd(skel_->maps.sites);
    const int stacks_fd = bpf_map__fd(skel_->maps.sampler_stacks);
    site_key k{}, next{};
    for (const void* prev = nullptr; bpf_map_get_next_key(sites_fd, prev, &next) == 0; prev = &k) {
      k = next;
      site_val v{};
      if (bpf_map_lookup_elem(sites_fd, &next, &v) != 0) continue;
      ProfileRow r;
      r.pid = static_cast<pid_t>(next.pid);
      r.ips = read_stack(stacks_fd, next.stack_id, SAMPLER_STACK_DEPTH);
      r.alloc_space = v.alloc_space;
      r.alloc_objects = v.alloc_objects;
      r.inuse_space = v.inuse_space;
      r.inuse_objects = v.inuse_objects;
      kernel_rows.push_back(std::move(r));
    }
    for (auto& [name, ws] : by_target) {
      std::vector<std::vector<ProfileRow>> page_rows;  // kept alive for `all`
      page_rows.reserve(ws.size());
      std::vector<const ProfileRow*> all;
      uint64_t period = 0;
      for (Watch* w : ws) {
        std::vector<const ProfileRow*> mine;
        for (const auto& r : kernel_rows)
          if (r.pid == w->pid) mine.push_back(&r);
        // `sampler: probes`: the page's sites are what the probes report.
        page_rows.push_back(w->via_probes ? std::vector<ProfileRow>{} : read_sites(*w));
        for (const auto& r : page_rows.back()) mine.push_back(&r);
        period = std::max(period, w->mean_interval);
        all.insert(all.end(), mine.begin(), mine.end());
        w->profile = std::make_shared<const std::string>(gzip(encode_profile(mine, proc_.root(), w->mean_interval)));
      }
      profiles_[name] = std::make_shared<const std::string>(gzip(encode_profile(all, proc_.root(), period)));
    }
  }
  for (auto it = profiles_.begin(); it != profiles_.end();)
    it = by_target.count(it->first) ? std::next(it) : profiles_.erase(it);
  for (const auto& [name, gz] : profiles_) out.profile(name, gz);
  for (const auto& [id, w] : watches_)
    if (w.profile && profiled(w)) out.profile(w.name + "/" + std::to_string(w.pid), w.profile);
}

}  // namespace memlens
