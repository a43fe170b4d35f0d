// The configuration: global settings, per-target selectors and policies.
// Loaded from YAML (yaml-cpp); every error names file, line and field.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/result.h"

namespace re2 {
class RE2;
}

namespace memlens {

using Duration = std::chrono::milliseconds;

// How allocation tracing runs for a target (see README, "Allocation tracing").
enum class AllocMode { off, full, duty, on_leak };
const char* alloc_mode_name(AllocMode m);

// What selects processes. Every field that is set must match (AND); an entry
// with `top_rss` picks the N largest remaining processes by RSS.
struct Selector {
  std::optional<pid_t> pid;
  bool self = false;                      // memlensd itself
  // Regexes are RE2 (the syntax of Prometheus relabelling): linear time in
  // the text, no recursion, whatever a process puts in its argv.
  std::optional<std::string> comm;        // full-match regex on /proc/PID/comm
  std::optional<std::string> exe;         // full-match regex on the exe path
  std::optional<std::string> cmdline;     // search regex on the joined cmdline (its first kCmdlineMatchBytes)
  std::optional<std::string> cgroup;      // prefix of the cgroup v2 path
  std::optional<std::string> systemd_unit;  // unit name in the cgroup path
  std::optional<int> top_rss;             // the N largest by RSS
  // Compiled forms (shared so a Config stays copyable).
  std::shared_ptr<const re2::RE2> comm_re, exe_re, cmdline_re;
  std::string describe() const;
};

// How much of a command line a cmdline selector sees, and how long a
// configured regex may be: bounds on what one process or one config line
// can cost a scan.
constexpr std::size_t kCmdlineMatchBytes = 16 << 10;
constexpr std::size_t kMaxRegexBytes = 4096;
// The most the timelines of all targets may reserve (validated at load).
constexpr uint64_t kMaxTimelineBytes = 1ull << 30;
// What a timeline reserves per point of its window: points are compressed
// (daemon/timeline_codec.h), ~20 bytes raw; a series that compresses worse
// than this budget holds a shorter window.
constexpr std::size_t kTimelineBytesPerPoint = 8;

// A memory budget of a target (`budgets:` in its entry), exported the way
// kube-state-metrics exports limits: one series per (target, resource), in
// the family of its unit, so one alert rule per resource serves every target.
enum class BudgetUnit { bytes, bytes_per_second, seconds, ratio };
struct Budget {
  std::string resource;  // the `resource` label: rss, heap, peak, alloc_rate, ...
  BudgetUnit unit = BudgetUnit::bytes;
  double value = 0;      // in the base unit (bytes, bytes/s, seconds, 0..1)
};
// Every budget key, its unit, in the order they are exported.
struct BudgetKey {
  const char* name;
  BudgetUnit unit;
};
inline constexpr BudgetKey kBudgetKeys[] = {
    {"rss", BudgetUnit::bytes},
    {"heap", BudgetUnit::bytes},
    {"peak", BudgetUnit::bytes},
    {"alloc_rate", BudgetUnit::bytes_per_second},
    {"fragmentation", BudgetUnit::ratio},
    {"gc_pause_p99", BudgetUnit::seconds},
    {"leak", BudgetUnit::bytes_per_second},
    // PostgreSQL (the postgres collector), a files target's initial bundle
    // as on disk (the files collector; the only key a files target takes)
    // and browser renderers (their collector comes separately).
    {"shared_buffers", BudgetUnit::bytes},
    {"connection_memory", BudgetUnit::bytes},
    {"temp_files", BudgetUnit::bytes},
    {"bundle", BudgetUnit::bytes},
    {"renderer_memory", BudgetUnit::bytes},
};

// A files target (`files:` in an entry, instead of a process selector): build
// artefacts matched by glob patterns, their sizes and gzip sizes, and the
// initial bundle (docs/files.md). Patterns are absolute; `*`, `?` and `[...]`
// match within one path component, a component `**` any number of
// directories (symlinked directories are not descended by it).
struct FilesSpec {
  std::vector<std::string> paths;  // every artefact watched
  std::vector<std::string> entry;  // the initial bundle; empty: every file matched
  int max_files = 1000;            // matches beyond it are dropped (and counted)
};
constexpr std::size_t kMaxFilePatterns = 64;  // per list (paths, entry)
constexpr int kMaxFilesPerTarget = 10000;

// Per-target policy: what the selector matches and how each is watched.
struct TargetPolicy {
  std::string name;  // the `target` label
  Selector selector;
  int max_targets = 0;  // 0: only the global cap applies
  AllocMode alloc_mode = AllocMode::off;
  double duty_fraction = 0.1;          // share of each duty period traced
  Duration duty_period{10000};
  bool leak_sites = false;             // keep stacks of outstanding blocks
  double leak_budget_bytes_per_second = 0;  // 0: no budget (on-leak never fires)
  Duration on_leak_duration{60000};    // how long on-leak tracing stays on
  bool gc = true;                      // GC pause tracing for runtimes
  bool heap = true;                    // read the allocator's books (glibc)
  bool sampler = true;                 // in-process sampler page and otel_memory probes
  // `sampler: probes`: libmemlens-sampler.so is consumed through its
  // otel_memory probes (a uprobe hit a sample) rather than its page's sites.
  bool sampler_probes = false;
  // false: a matching process whose parent matched this entry too, with the
  // same comm (a forked worker: PostgreSQL's backends), is no target of its
  // own; its parent's target covers it (the postgres collector reports the
  // children by backend type).
  bool children = true;
  // In kBudgetKeys order; `leak` is 0 unless set when the block is present.
  std::vector<Budget> budgets;
  const Budget* budget(std::string_view resource) const {
    for (const auto& b : budgets)
      if (b.resource == resource) return &b;
    return nullptr;
  }
  // A PostgreSQL cluster (the postgres collector): unset, when the
  // executable is named postgres or postmaster; true or false forces it.
  std::optional<bool> postgres;
  // Set: a files target (the files collector); it has no selector and
  // discovery never matches a process for it.
  std::optional<FilesSpec> files;
};

// Bounds on kernel-side state; every map is sized up front.
struct BpfLimits {
  uint32_t max_targets = 1024;          // per-target counter maps
  uint32_t max_tracked_allocs = 262144; // address -> size map (leak sites)
  uint32_t max_stacks = 16384;          // stack trace map
  uint32_t max_sampled_blocks = 65536;  // otel_memory: sampled blocks not yet freed
  uint32_t ringbuf_bytes = 1 << 18;     // exec and fork holds, 40 bytes each: ~6,500 in flight
  // The mmap collector's syscall tracepoints: every system call on the host
  // takes the kernel's slower path while any is attached (~20-30 ns here).
  bool syscalls = true;
};

struct Config {
  std::string source;  // file path, or "<embedded default>"
  Duration tick_interval{1000};
  Duration rescan_interval{2000};
  Duration timeline_window{3600 * 1000};
  Duration leak_window{60 * 1000};
  // Window of the slopes that predict when a budget is crossed.
  Duration breach_window{10 * 60 * 1000};
  Duration smaps_interval{5000};  // smaps_rollup and maps: costly, read less often
  int max_targets = 64;
  std::string procfs = "/proc";
  // namespace/pod/container labels on targets in Kubernetes pods, named by
  // the container runtime's state under `run` (the host's /run).
  bool kubernetes_labels = false;
  std::string run = "/run";
  BpfLimits bpf;
  std::vector<TargetPolicy> targets;

  std::size_t timeline_points() const {
    return static_cast<std::size_t>(timeline_window / tick_interval);
  }
};

// A loaded configuration is immutable and shared by whoever needs it
// (discovery, targets through their policy, collectors); it goes when the
// last holder lets go, so a reload never leaves the old one behind.
using ConfigPtr = std::shared_ptr<const Config>;

// Parses YAML text; `source` names it in error messages.
Result<Config> parse_config(const std::string& yaml, const std::string& source);
// Reads and parses a file.
Result<Config> load_config_file(const std::string& path);
// The embedded default (config/default.yaml compiled in).
Result<Config> default_config();

// "1s", "250ms", "5m", "1h" -> Duration.
std::optional<Duration> parse_duration(const std::string& s);
// 1024, "10KiB", "4MiB", "1GB" -> bytes.
std::optional<uint64_t> parse_bytes(const std::string& s);
// A budget's value as people write it, in its unit's base: "128MiB" (bytes),
// "1MB/s" (bytes per second; a plain number is bytes/s), "10ms" (seconds),
// "20%" or 0.2 (ratio, 0..1).
std::optional<double> parse_budget(BudgetUnit unit, const std::string& s);

}  // namespace memlens
