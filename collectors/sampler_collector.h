// Allocation sampling in the process itself, read from outside:
//  - the counting page of libmemlens-sampler.so (sampler/memlens_sampler.h),
//    read with process_vm_readv each tick: exact allocation and free counts
//    and bytes with no trap at all;
//  - the sampled call sites that library keeps beside its page (stacks it
//    walked itself, what their samples stand for, allocated and in use),
//    read the same way every few seconds: samples with no kernel entry;
//  - OpenTelemetry's memory USDT contract (otel_memory:alloc/free), fired
//    by any producer that adopts it, attached per pid wherever a mapped
//    binary carries the notes (bpf/sampler.bpf.c), folded in the kernel
//    into per-stack sites. That library fires it too, while someone listens;
//    memlensd listens to it only for `sampler: probes`.
// Both are served as pprof heap profiles
// (/debug/pprof/heap?target=NAME[&pid=N]).
// Threads: everything here runs on the collection thread; the profiles go to
// the HTTP thread inside the published snapshot.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "collectors/bpf_support.h"
#include "collectors/collector.h"
#include "daemon/procfs.h"

struct sampler_bpf;

namespace memlens {

class SamplerCollector : public Collector {
 public:
  SamplerCollector();
  ~SamplerCollector() override;
  std::string_view name() const override { return "sampler"; }
  Result<void> start(const ConfigPtr& cfg) override;
  void target_added(const Target& t) override;
  void target_removed(const Target& t) override;
  Result<void> collect(const Target& t, Sample& out) override;
  void collect_global(GlobalSample& out) override;

  // How often a target's mappings are looked at again for new binaries
  // (dlopen): every 2 s, half as often after each look that found the same
  // files mapped, down to every 32 s; a change goes back to 2 s. (Reading
  // maps and checking each file every 2 s was the largest share of the
  // collector's cost with 1000 idle targets.) Profiles rebuild every 2 s.
  static constexpr double kLookSeconds = 2;
  static constexpr double kLookMaxSeconds = 32;
  static constexpr double kProfileSeconds = 2;

 private:
  struct Counts {
    double allocs = 0, frees = 0, alloc_bytes = 0, kept = 0, dropped = 0, fired = 0;
  };
  struct Watch {
    std::string name;
    pid_t pid = 0;
    uint64_t page_addr = 0;            // 0: no sampler page found
    std::string page_path;             // the binary the page is in (its probes are not attached)
    uint64_t sites_addr = 0;           // the sites the page names, and how many are filled
    uint32_t sites_count = 0;
    bool via_probes = false;           // the entry says `sampler: probes`
    uint64_t mean_interval = 0;
    bool sampling = false;
    Counts seen;                       // highest totals read (counters never go back)
    std::set<std::string> probed;      // binaries (maps paths) whose probes are attached
    std::set<std::string> refused;     // binaries whose attach failed (not retried)
    std::vector<bpf::Link> links;
    double next_look = 0, next_profile = 0;
    double look_every = kLookSeconds;
    std::size_t files = 0;             // distinct files mapped at the last look
    std::optional<uint64_t> look_cpu_ns;  // the process's CPU clock before the last look
    std::shared_ptr<const std::string> profile;  // gzipped pprof
  };
  // The number of distinct files mapped (0 when the maps are unreadable).
  std::size_t look(const Target& t, Watch& w);
  Result<void> read_page(Watch& w);
  // One site of a profile, from the kernel's site map or a page's sites.
  struct ProfileRow {
    pid_t pid = 0;
    std::vector<uint64_t> ips;  // leaf first
    uint64_t alloc_space = 0, alloc_objects = 0;  // objects x1000
    int64_t inuse_space = 0, inuse_objects = 0;
  };
  // The page's sites as profile rows (none when the read fails).
  std::vector<ProfileRow> read_sites(const Watch& w);
  void build_profile(Watch& w);
  void forget_pid(pid_t pid);

  struct SkelDeleter {
    void operator()(sampler_bpf* s) const;
  };
  std::unique_ptr<sampler_bpf, SkelDeleter> skel_;
  ProcFs proc_;
  std::map<TargetId, Watch> watches_;
  std::map<std::string, std::shared_ptr<const std::string>> profiles_;  // per target name
  double next_build_ = 0;
  uint64_t attach_failures_ = 0;
  uint64_t page_read_failures_ = 0;
};

}  // namespace memlens
