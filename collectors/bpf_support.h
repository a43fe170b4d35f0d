// Shared helpers for every eBPF collector (alloc, faults, gc): the one-time
// environment setup (libbpf logging into spdlog, tracefs, memlock rlimit),
// the capability check that decides whether eBPF runs at all, RAII for links,
// per-pid uprobe attachment, and reading counters and map memory back.
//
// Every eBPF collector depends on it: extend it, keep what is here.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "daemon/metric.h"
#include "daemon/result.h"

struct bpf_link;
struct bpf_program;
struct bpf_map;
struct bpf_object;

namespace memlens::bpf {

// Routes libbpf's messages into spdlog (warn -> warn, info -> debug,
// debug -> trace). Idempotent; prepare() calls it.
void init_libbpf_logging();

// Mounts tracefs at /sys/kernel/tracing when it is not mounted (SEC("tp/...")
// programs need it to find event ids). Returns an error when mounting fails;
// raw tracepoints and uprobes work without it.
Result<void> ensure_tracefs();

// Raises RLIMIT_MEMLOCK to infinity. EPERM is expected and ignored: kernels
// >= 5.11 account BPF memory to the memory cgroup instead.
void bump_memlock_rlimit();

// Do we hold what loading tracing programs needs? CAP_BPF + CAP_PERFMON, or
// CAP_SYS_ADMIN. On failure the message names what is missing, e.g.
// "missing CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)". Errc::permission.
Result<void> check_capabilities();

// All of the above, once per process (later calls return the first result).
// A collector calls this first in start(); on error it returns the error so
// the framework reports it disabled.
Result<void> prepare();

// Move-only owner of a bpf_link, or of a raw link fd made without libbpf
// (detached on destruction).
class Link {
 public:
  Link() = default;
  explicit Link(bpf_link* l) : l_(l) {}
  explicit Link(int fd) : fd_(fd) {}
  Link(Link&& o) noexcept : l_(o.l_), fd_(o.fd_) {
    o.l_ = nullptr;
    o.fd_ = -1;
  }
  Link& operator=(Link&& o) noexcept;
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;
  ~Link();
  bpf_link* get() const { return l_; }
  explicit operator bool() const { return l_ != nullptr || fd_ >= 0; }
  void reset();

 private:
  bpf_link* l_ = nullptr;
  int fd_ = -1;
};

// `pid` of a probe for every process that maps the binary, now or later.
// Only for probes a process hits rarely (a GC's begin and end): every
// process that runs the code pays the trap, watched or not. Allocation
// probes are always per pid.
inline constexpr pid_t kEveryProcess = -1;

// Attaches `prog` as a uprobe (or uretprobe) at `file_offset` in `binary`,
// for `pid` (> 0) or kEveryProcess.
Result<Link> attach_uprobe(bpf_program* prog, pid_t pid, const std::string& binary,
                           uint64_t file_offset, bool retprobe);
// Same, with a cookie the program reads with bpf_get_attach_cookie().
Result<Link> attach_uprobe(bpf_program* prog, pid_t pid, const std::string& binary,
                           uint64_t file_offset, bool retprobe, uint64_t cookie);

// Marks `prog` for multi-uprobe links; call between open and load (libbpf
// 1.1 knows no SEC("uprobe.multi")). Such a program can only be attached
// with attach_uprobe_multi.
void set_uprobe_multi(bpf_program* prog);

// One link for many uprobes (kernel >= 6.6): `prog` at every offset of
// `binary` for `pid`, each with its cookie (bpf_get_attach_cookie). A link
// costs one kernel grace period to detach however many probes it holds,
// which matters with many short-lived targets. Errc::unavailable when the
// kernel lacks multi-uprobe links.
Result<Link> attach_uprobe_multi(bpf_program* prog, pid_t pid, const std::string& binary,
                                 const std::vector<uint64_t>& offsets,
                                 const std::vector<uint64_t>& cookies, bool retprobe);

// USDT probe `provider:name` in `binary` for `pid` (> 0) or kEveryProcess
// (libbpf's usdt support; the kernel sets a probe's semaphore in every
// process that maps the binary).
Result<Link> attach_usdt(bpf_program* prog, pid_t pid, const std::string& binary,
                         const std::string& provider, const std::string& name,
                         uint64_t cookie = 0);

// Sum over CPUs of a u64 value at `key` in a per-CPU array or hash map.
// A missing key gives 0.
Result<uint64_t> sum_percpu_u64(int map_fd, const void* key);

// Per-CPU values at `key`, `value_size` bytes each, summed field by field as
// u64s (value_size must be a multiple of 8). A missing key gives zeros.
Result<std::vector<uint64_t>> sum_percpu_fields(int map_fd, const void* key,
                                                std::size_t value_size);

// Kernel memory charged to a map ("memlock:" in /proc/self/fdinfo/FD).
uint64_t map_memory_bytes(int map_fd);
// Same for every map of a loaded object (bpf_object), for self-metrics: read
// at most every 10 s, the last reading in between (opening every map's fdinfo
// at every tick was 6 % of memlensd's CPU at 100 targets). One per collector,
// beside the object it reads; another object is read at once.
class MapMemoryReading {
 public:
  uint64_t bytes(const bpf_object* obj);

 private:
  const bpf_object* obj_ = nullptr;
  std::chrono::steady_clock::time_point at_{};
  uint64_t total_ = 0;
};

// Runs of an object's programs the kernel skipped (bpf_prog_info's
// recursion_misses: another eBPF program was running on that CPU, so the
// event went unseen), summed over its programs.
uint64_t object_missed_runs(const bpf_object* obj);

// Number of possible CPUs (size of per-CPU value arrays).
int possible_cpus();

// Number of keys in a map with 4-byte keys (per-target maps keyed by pid).
uint64_t count_u32_keys(int map_fd);

// All entries of a hash map with 4-byte keys (per-target maps keyed by pid),
// read with BPF_MAP_LOOKUP_BATCH: a few system calls a tick for the whole
// map instead of one lookup per target (1000 targets: 2000 calls a map,
// with the count of its keys). Values as u64 fields, per-CPU ones summed.
class U32MapView {
 public:
  // value_size: bytes of one value (of one CPU's, for a per-CPU map), a
  // multiple of 8.
  U32MapView(std::size_t value_size, bool percpu)
      : fields_(value_size / 8), value_size_(value_size), percpu_(percpu) {}
  // Reads the whole map now.
  Result<void> read(int map_fd);
  // The entry's fields as read, or null when the map had no such key.
  const uint64_t* find(uint32_t key) const;
  std::size_t size() const { return index_.size(); }
  std::size_t fields() const { return fields_; }

  // Once a tick: the map is read at the tick's first find_this_tick(); a
  // key added after that read is looked up alone. Null: no such key.
  Result<const uint64_t*> find_this_tick(int map_fd, uint32_t key);
  // The map's entries at the end of the tick (as read, when it was), and
  // the next find_this_tick() reads the map again.
  uint64_t end_tick(int map_fd);

 private:
  std::size_t fields_;
  std::size_t value_size_;
  bool percpu_;
  bool fresh_ = false;
  std::unordered_map<uint32_t, std::size_t> index_;  // key -> offset in values_
  std::vector<uint64_t> values_;
  std::vector<uint32_t> keys_buf_;
  std::vector<uint64_t> raw_buf_;
  std::vector<uint64_t> single_;  // a key looked up alone
};


// The self-metric families every eBPF collector reports, declared once so
// names and help texts agree: drops by collector and reason, map memory by
// collector, entries by map, program runs the kernel skipped by collector.
struct SelfMetrics {
  MetricDesc dropped, map_memory, map_entries, missed;
};
const SelfMetrics& self_metrics();

}  // namespace memlens::bpf
