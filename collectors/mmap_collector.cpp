#include "collectors/mmap_collector.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <vector>

#include "bpf/mmap.h"
#include "collectors/bpf_support.h"
#include "collectors/proc_parse.h"
#include "daemon/config.h"
#include "daemon/procfs.h"
#include "mmap.skel.h"

namespace memlens {

static_assert(sizeof(mmap_stats) == 8 * (1 + 3 * MMAP_CALLS));
static_assert(offsetof(mmap_stats, calls) == 8 && offsetof(mmap_stats, grown_pages) == 48 &&
              offsetof(mmap_stats, shrunk_pages) == 88);

namespace {

struct MmapMetrics {
  MetricDesc calls = metric("mmap_calls", "", MetricKind::counter,
                            "Successful mmap, munmap, mremap, brk (every brk call: a refused one returns the old "
                            "break) and mprotect system calls of the target since it was added (eBPF syscall "
                            "tracepoints; calls before discovery picked the process up are not seen), by call.");
  MetricDesc mapped = metric("mapped", "bytes", MetricKind::counter,
                             "Growth of the target's private writable memory (the kernel's data_vm, status "
                             "VmData: heaps, anonymous and private writable mappings, thread stacks) over its "
                             "mmap-family calls since it was added, by the call that made it; mapped minus "
                             "unmapped is the change of VmData since then (the level is memlens_data_bytes).");
  MetricDesc unmapped = metric("unmapped", "bytes", MetricKind::counter,
                               "Shrinkage of the target's private writable memory (data_vm, status VmData) over "
                               "its mmap-family calls since it was added, by the call that made it.");
};

const MmapMetrics& m() {
  static const MmapMetrics metrics;
  return metrics;
}

const char* drop_reason_name(int r) {
  switch (r) {
    case MMAP_DROP_READ: return "read";
    default: return "other";
  }
}

}  // namespace

std::array<MmapCallCounts, MMAP_CALLS> mmap_call_counts(const mmap_stats& v, uint64_t page_bytes) {
  static constexpr std::array<const char*, MMAP_CALLS> names = {"mmap", "munmap", "mremap", "brk", "mprotect"};
  std::array<MmapCallCounts, MMAP_CALLS> out{};
  for (std::size_t c = 0; c < out.size(); ++c)
    out[c] = {names[c], v.calls[c], v.grown_pages[c] * page_bytes, v.shrunk_pages[c] * page_bytes};
  return out;
}

struct MmapState {
  std::unique_ptr<mmap_bpf, decltype(&mmap_bpf__destroy)> skel{nullptr, mmap_bpf__destroy};
  std::vector<bpf::Link> links;
  uint64_t map_full = 0;       // targets refused because mmap_stats was full
  uint64_t update_failed = 0;  // targets refused for another reason
  uint64_t page_bytes = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  ProcFs fs;
  // The whole map, read once a tick at its first target.
  bpf::U32MapView view{sizeof(mmap_stats), false};
  bpf::MapMemoryReading map_memory;
  FixedLabelsFor call_labels{"call"};  // {call="mmap"}, ...: the same five at every tick
};

MmapCollector::MmapCollector() : s_(std::make_unique<MmapState>()) {}
MmapCollector::~MmapCollector() = default;

Result<void> MmapCollector::start(const ConfigPtr& config) {
  const Config& cfg = *config;
  s_->fs = ProcFs(cfg.procfs);
  if (!cfg.bpf.syscalls) {
    // Switched off, at start or by a reload: detached now, so system calls
    // on the host stop paying for the tracepoints.
    s_->links.clear();
    s_->skel.reset();
    return make_error(Errc::disabled, "disabled by config (bpf.syscalls: false)");
  }
  if (s_->skel) return {};  // reload: maps and programs stay
  if (auto r = bpf::prepare(); !r) return make_error(r.error().code, "eBPF unavailable: " + r.error().message);
  s_->skel.reset(mmap_bpf__open());
  if (!s_->skel) return make_error(Errc::unavailable, std::string("mmap: open: ") + std::strerror(errno));
  bpf_map__set_max_entries(s_->skel->maps.mmap_stats, cfg.bpf.max_targets);
  if (int err = mmap_bpf__load(s_->skel.get()); err != 0) {
    s_->skel.reset();
    return make_error(Errc::unavailable, std::string("mmap: load: ") + std::strerror(-err));
  }
  bpf_program* prog = nullptr;
  bpf_object__for_each_program(prog, s_->skel->obj) {
    bpf_link* l = bpf_program__attach(prog);
    if (!l) {
      int err = errno;
      std::string what = bpf_program__section_name(prog);
      s_->links.clear();
      s_->skel.reset();
      return make_error(Errc::unavailable, "mmap: attach " + what + ": " + std::strerror(err));
    }
    s_->links.emplace_back(l);
  }
  return {};
}

void MmapCollector::target_added(const Target& t) {
  if (!s_->skel) return;
  __u32 key = static_cast<__u32>(t.pid());
  mmap_stats v{};
  // The baseline is VmData now, so the charges add up to its change since
  // the target was added. Should status be unreadable, the target's first
  // traced call takes the baseline (and is charged nothing).
  v.last_data_pages = MMAP_LAST_UNSET;
  if (auto text = read_file(s_->fs.path(t.pid(), "status"))) {
    auto st = parse_status(*text);
    if (st && st->has_memory) v.last_data_pages = mmap_baseline_pages(st->vm_data, s_->page_bytes);
  }
  // BPF_ANY: a new target with the pid of a gone one starts from zero.
  if (bpf_map_update_elem(bpf_map__fd(s_->skel->maps.mmap_stats), &key, &v, BPF_ANY) != 0) {
    ++(errno == E2BIG ? s_->map_full : s_->update_failed);
    spdlog::debug("mmap: target {} pid {} not traced: {}", t.name, t.pid(), std::strerror(errno));
  }
}

void MmapCollector::target_removed(const Target& t) {
  if (!s_->skel) return;
  __u32 key = static_cast<__u32>(t.pid());
  bpf_map_delete_elem(bpf_map__fd(s_->skel->maps.mmap_stats), &key);
}

Result<void> MmapCollector::collect(const Target& t, Sample& out) {
  if (!s_->skel) return {};
  static_assert(sizeof(mmap_stats) % 8 == 0);
  __u32 key = static_cast<__u32>(t.pid());
  auto f = s_->view.find_this_tick(bpf_map__fd(s_->skel->maps.mmap_stats), key);
  if (!f) return make_error(Errc::io, "mmap: " + f.error().message);
  // Not traced (the map was full when it was added; counted as a drop): no
  // series rather than zeros that look like a quiet process.
  if (!*f) return {};
  mmap_stats v{};
  std::memcpy(&v, *f, sizeof v);
  for (const auto& c : mmap_call_counts(v, s_->page_bytes)) {
    const FixedLabels& call = s_->call_labels(c.call);
    out.counter(m().calls, static_cast<double>(c.calls), call);
    out.counter(m().mapped, static_cast<double>(c.mapped_bytes), call);
    out.counter(m().unmapped, static_cast<double>(c.unmapped_bytes), call);
  }
  return {};
}

void MmapCollector::collect_global(GlobalSample& out) {
  const auto& self = bpf::self_metrics();
  if (!s_->skel) return;
  for (int r = 0; r < MMAP_DROP_REASONS; ++r) {
    __u32 key = static_cast<__u32>(r);
    auto v = bpf::sum_percpu_u64(bpf_map__fd(s_->skel->maps.mmap_drops), &key);
    if (v) out.counter(self.dropped, static_cast<double>(*v), {{"collector", "mmap"}, {"reason", drop_reason_name(r)}});
  }
  out.counter(self.dropped, static_cast<double>(s_->map_full), {{"collector", "mmap"}, {"reason", "map_full"}});
  out.counter(self.dropped, static_cast<double>(s_->update_failed), {{"collector", "mmap"}, {"reason", "map_update"}});
  out.gauge(self.map_memory, static_cast<double>(s_->map_memory.bytes(s_->skel->obj)), {{"collector", "mmap"}});
  out.counter(self.missed, static_cast<double>(bpf::object_missed_runs(s_->skel->obj)), {{"collector", "mmap"}});
  const uint64_t n = s_->view.end_tick(bpf_map__fd(s_->skel->maps.mmap_stats));
  out.gauge(self.map_entries, static_cast<double>(n), {{"map", "mmap_stats"}});
}

}  // namespace memlens
