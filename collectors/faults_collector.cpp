#include "collectors/faults_collector.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

#include <cstring>
#include <vector>

#include "bpf/faults.h"
#include "collectors/bpf_support.h"
#include "daemon/config.h"
#include "faults.skel.h"

namespace memlens {

static_assert(sizeof(fault_stats) == 16);

namespace {

struct FaultMetrics {
  MetricDesc faults = metric("bpf_page_faults", "", MetricKind::counter,
                             "User page faults handled by the kernel for the target since it was added "
                             "(eBPF tracepoint exceptions:page_fault_user), by access read/write.");
};

const FaultMetrics& m() {
  static const FaultMetrics metrics;
  return metrics;
}

}  // namespace

struct FaultsState {
  std::unique_ptr<faults_bpf, decltype(&faults_bpf__destroy)> skel{nullptr, faults_bpf__destroy};
  bpf::Link link;
  // The whole map, read once a tick at its first target.
  bpf::U32MapView view{sizeof(fault_stats), true};
  bpf::MapMemoryReading map_memory;
};

FaultsCollector::FaultsCollector() : s_(std::make_unique<FaultsState>()) {}
FaultsCollector::~FaultsCollector() = default;

Result<void> FaultsCollector::start(const ConfigPtr& config) {
  const Config& cfg = *config;
  if (s_->skel) return {};  // reload: maps and program stay
  if (auto r = bpf::prepare(); !r) return make_error(r.error().code, "eBPF unavailable: " + r.error().message);
  s_->skel.reset(faults_bpf__open());
  if (!s_->skel) return make_error(Errc::unavailable, std::string("faults: open: ") + std::strerror(errno));
  bpf_map__set_max_entries(s_->skel->maps.fault_stats, std::max(16u, cfg.bpf.max_targets));
  if (int err = faults_bpf__load(s_->skel.get()); err != 0) {
    s_->skel.reset();
    return make_error(Errc::unavailable, std::string("faults: load: ") + std::strerror(-err));
  }
  bpf_link* l = bpf_program__attach(s_->skel->progs.page_fault_user);
  if (!l) {
    int err = errno;
    s_->skel.reset();
    return make_error(Errc::unavailable,
                      std::string("faults: raw tracepoint page_fault_user: ") + std::strerror(err));
  }
  s_->link = bpf::Link(l);
  return {};
}

void FaultsCollector::target_added(const Target& t) {
  if (!s_->skel) return;
  __u32 key = static_cast<__u32>(t.pid());
  std::vector<fault_stats> zero(static_cast<std::size_t>(bpf::possible_cpus()));
  // A full map (more targets than bpf.max_targets) leaves this one uncounted;
  // the entries gauge shows it.
  bpf_map_update_elem(bpf_map__fd(s_->skel->maps.fault_stats), &key, zero.data(), BPF_NOEXIST);
}

void FaultsCollector::target_removed(const Target& t) {
  if (!s_->skel) return;
  __u32 key = static_cast<__u32>(t.pid());
  bpf_map_delete_elem(bpf_map__fd(s_->skel->maps.fault_stats), &key);
}

Result<void> FaultsCollector::collect(const Target& t, Sample& out) {
  if (!s_->skel) return {};
  __u32 key = static_cast<__u32>(t.pid());
  auto f = s_->view.find_this_tick(bpf_map__fd(s_->skel->maps.fault_stats), key);
  if (!f) return f.error();
  // A pid the map does not hold (it was full) counts zeros, as it always did.
  const uint64_t all = *f ? (*f)[0] : 0, writes = *f ? (*f)[1] : 0;
  out.counter(m().faults, static_cast<double>(all - std::min(all, writes)), {{"access", "read"}});
  out.counter(m().faults, static_cast<double>(writes), {{"access", "write"}});
  return {};
}

void FaultsCollector::collect_global(GlobalSample& out) {
  const auto& self = bpf::self_metrics();
  if (!s_->skel) return;
  out.gauge(self.map_memory, static_cast<double>(s_->map_memory.bytes(s_->skel->obj)), {{"collector", "faults"}});
  out.counter(self.missed, static_cast<double>(bpf::object_missed_runs(s_->skel->obj)), {{"collector", "faults"}});
  const uint64_t n = s_->view.end_tick(bpf_map__fd(s_->skel->maps.fault_stats));
  out.gauge(self.map_entries, static_cast<double>(n), {{"map", "fault_stats"}});
}

}  // namespace memlens
