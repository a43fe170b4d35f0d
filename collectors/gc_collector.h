// GC pauses of managed runtimes (JVM, Node.js/V8, CPython), timed in the
// kernel by bpf/gc.bpf.c, and JVM heap spaces from hsperfdata. Attaches per
// target pid; a runtime binary without USDT probes or symbols is reported as
// untraceable (memlens_gc_tracing_available 0 with a reason), never an error.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bpf/gc.h"
#include "collectors/bpf_support.h"
#include "collectors/collector.h"
#include "collectors/runtime_detect.h"
#include "daemon/procfs.h"

struct gc_bpf;

namespace memlens {

// Bucket upper bounds of the kernel's fine histogram, in ns (GC_NBOUNDS).
const std::vector<uint64_t>& gc_fine_bounds_ns();
// The exported Prometheus bounds, in seconds: 0.1 ms .. 10 s, 1-2.5-5 steps.
const std::vector<double>& gc_export_bounds_seconds();
// Quantile q of a fine histogram (counts per bucket, GC_NBUCKETS), linear
// within a bucket; NaN when it is empty.
double gc_quantile_seconds(const std::vector<uint64_t>& counts, double q);
// Label value for a (runtime, kind) pair as the kernel records it.
const char* gc_kind_name(Runtime r, int kind);

class GcCollector : public Collector {
 public:
  GcCollector();
  ~GcCollector() override;
  GcCollector(const GcCollector&) = delete;
  GcCollector& operator=(const GcCollector&) = delete;
  std::string_view name() const override { return "gc"; }
  Result<void> start(const ConfigPtr& cfg) override;
  void target_added(const Target& t) override;
  void target_removed(const Target& t) override;
  Result<void> collect(const Target& t, Sample& out) override;
  void collect_global(GlobalSample& out) override;

  // Window of memlens_gc_pause_max_seconds, the quantiles and the time share.
  static constexpr double kWindowSeconds = 60;
  // A runtime binary's identity: (st_dev, st_ino).
  using FileKey = std::pair<uint64_t, uint64_t>;
  // At most this many binaries get probes for every process that maps them;
  // targets of further ones get probes of their own.
  static constexpr std::size_t kMaxArmed = 32;

 private:
  struct Snap {
    double t = 0;
    std::vector<uint64_t> counts;  // fine buckets, summed over kinds
  };
  struct Watch {
    Runtime runtime = Runtime::none;
    std::string method = "none";  // "usdt" or "uprobe"
    std::string reason = "ok";    // why not available
    bool available = false;
    std::vector<bpf::Link> links;
    double attached_at = 0;
    double detect_next = 0;  // runtime not recognised yet: when to look again
    int detect_tries = 0;
    std::deque<Snap> snaps;  // for the window quantiles
    bool v8_heap = false;  // Node: uretprobes on Heap::SizeOfObjects/CommittedMemory attached
    // hsperfdata (JVM only)
    std::string perf_path;
    double perf_next_try = 0;
    int perf_misses = 0;
  };

  // The probes of one runtime binary, for every process that maps it: a
  // runtime started later is timed from its first collection, before
  // discovery finds it (bpf/gc.bpf.c keeps what young processes did).
  struct Armed {
    Runtime runtime = Runtime::none;
    std::string method;
    bool v8_heap = false;
    std::vector<bpf::Link> links;
  };

  void attach(const Target& t, Watch& w);
  // The host's runtime binaries that some entry of `cfg` could watch.
  void arm_host_binaries(const Config& cfg);
  void sweep_unwatched(double now);
  void read_jvm_memory(const Target& t, Watch& w, double now, Sample& out);
  void read_v8_heap(const Target& t, Sample& out);
  void delete_keys(pid_t pid, Runtime r);

  struct SkelDeleter {
    void operator()(gc_bpf* s) const;
  };
  std::unique_ptr<gc_bpf, SkelDeleter> skel_;
  bpf::Link exit_link_;
  ProcFs proc_;
  std::map<TargetId, Watch> watches_;
  std::map<FileKey, Armed> armed_;
  // Processes the kernel kept pauses for that no target watches (young ones
  // discovery may still find): when each was first seen so.
  std::map<pid_t, double> unwatched_;
  double next_sweep_ = 0;
  double young_s_ = 30;  // bpf/gc.bpf.c's young_ns
  uint64_t attach_failures_ = 0;
  uint64_t watched_full_ = 0;
};

}  // namespace memlens
