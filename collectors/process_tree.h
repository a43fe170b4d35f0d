// What collectors that report a target's child processes share (the
// PostgreSQL cluster's backends, a browser's renderers): the children of a
// process, and the private memory of one.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "daemon/procfs.h"
#include "daemon/result.h"

namespace memlens {

// The children of `pid`: the kernel's lists (task/TID/children of its main
// thread, or of every thread when `every_thread`: a process that forks from
// other threads, as Chromium does), else every process's parent (kernels
// without CONFIG_PROC_CHILDREN). Empty when the process is gone.
std::vector<pid_t> children_of(const ProcFs& proc, pid_t pid, bool every_thread = false);

// Private memory of a process: its anonymous memory divided among the
// processes sharing it (smaps_rollup Pss_Anon; Private_Clean + Private_Dirty
// on kernels without it). Errc::not_found when it is gone or not ours to read.
Result<uint64_t> private_memory(const ProcFs& proc, pid_t pid);

}  // namespace memlens
