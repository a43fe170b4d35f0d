// Pure parsers of /proc/PID files. Reading is kept apart (daemon/procfs.h) so
// these run on recorded fixtures, including malformed ones.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/result.h"

namespace memlens {

// /proc/PID/stat, the fields we use (1-based numbering as in proc(5)).
struct ProcStat {
  pid_t pid = 0;
  std::string comm;      // (2), without the parentheses
  char state = '?';      // (3)
  pid_t ppid = 0;        // (4)
  uint64_t minflt = 0;   // (10)
  uint64_t majflt = 0;   // (12)
  uint64_t utime = 0;    // (14) clock ticks
  uint64_t stime = 0;    // (15)
  uint64_t num_threads = 0;  // (20)
  uint64_t starttime = 0;    // (22) clock ticks after boot
  uint64_t vsize = 0;        // (23) bytes
  uint64_t rss_pages = 0;    // (24)
};
Result<ProcStat> parse_stat(std::string_view text);

// /proc/PID/status: memory lines, in bytes (the file says kB).
struct ProcStatus {
  uint64_t vm_rss = 0, vm_hwm = 0, rss_anon = 0, rss_file = 0, rss_shmem = 0, vm_swap = 0;
  uint64_t vm_size = 0, vm_data = 0;
  bool has_memory = false;  // kernel threads and zombies have no Vm* lines
  uid_t uid = 0;
  char state = '?';          // "State:" letter (R, S, T, ...)
  uint64_t sig_pending = 0;  // SigPnd | ShdPnd: bit n-1 for signal n
};
Result<ProcStatus> parse_status(std::string_view text);

// /proc/PID/smaps_rollup, in bytes.
struct SmapsRollup {
  uint64_t rss = 0, pss = 0, shared_clean = 0, shared_dirty = 0, private_clean = 0,
           private_dirty = 0, anonymous = 0, swap = 0, swap_pss = 0;
  // Anonymous pages divided among the processes mapping them (older
  // kernels do not say: has_pss_anon is false there).
  uint64_t pss_anon = 0;
  bool has_pss_anon = false;
  uint64_t uss() const { return private_clean + private_dirty; }
  bool empty = true;  // kernel threads: the file has no lines
};
Result<SmapsRollup> parse_smaps_rollup(std::string_view text);

// /proc/PID/maps (and the mapping header lines of smaps): every line that
// parses, in order; a path may be empty, "[heap]" or end in " (deleted)".
struct Mapping {
  uint64_t start = 0, end = 0, offset = 0;
  std::string perms;  // "r-xp"
  uint64_t inode = 0;
  std::string path;
};
std::vector<Mapping> parse_maps(std::string_view text);

// /proc/PID/smaps: resident bytes of glibc's heap mappings, [heap] plus
// the non-main arenas' heaps (anonymous rw mappings aligned to
// HEAP_MAX_SIZE, 64 MiB on 64-bit).
uint64_t parse_smaps_heap_resident(std::string_view text);

// /proc/stat: the boot time ("btime"), seconds since the epoch.
std::optional<double> parse_btime(std::string_view text);

// /proc/PID/maps: the [heap] (brk) mapping, if the process has one.
struct HeapMapping {
  uint64_t start = 0, end = 0;
  uint64_t size() const { return end - start; }
};
Result<std::optional<HeapMapping>> parse_maps_heap(std::string_view text);

// Parses "<number> kB" style values: the leading unsigned integer.
std::optional<uint64_t> parse_u64(std::string_view s);

}  // namespace memlens
