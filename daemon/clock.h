// The monotonic clock as the daemon reads it: CLOCK_MONOTONIC, the clock of
// the kernel's bpf_ktime_get_ns(), in seconds (schedules, timelines) or
// nanoseconds (compared with what BPF programs stamp).
#pragma once

#include <time.h>

#include <cstdint>

namespace memlens {

inline uint64_t mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// CLOCK_BOOTTIME: monotonic, counts suspend, and is the same clock across
// memlensd restarts within a boot (timelines resumed from the state file).
inline double boot_now() {
  timespec ts{};
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

inline double mono_now() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

}  // namespace memlens
