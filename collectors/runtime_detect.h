// Tells which managed runtime (JVM, Node.js/V8, CPython) a process runs, from
// its exe and the files it has mapped, and which binaries carry its GC probes.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "daemon/procfs.h"
#include "daemon/result.h"

namespace memlens {

enum class Runtime { none, jvm, node, python };
const char* runtime_name(Runtime r);  // "jvm", "node", "python", "none"

struct RuntimeInfo {
  Runtime runtime = Runtime::none;
  // Paths as the target sees them (its mount namespace), most likely holder
  // of the GC probes first: libjvm.so; libnode.so or the node exe; libpython
  // then the python exe (a static build has everything in the exe).
  std::vector<std::string> binaries;
};

// The last component of a path.
std::string_view basename_of(std::string_view path);
// A path without the " (deleted)" the kernel appends to a deleted or
// replaced file (/proc/PID/exe, maps).
std::string_view strip_deleted(std::string_view path);

// Pure: `exe` is the readlink of /proc/PID/exe, `maps` the text of
// /proc/PID/maps.
RuntimeInfo detect_runtime(std::string_view exe, std::string_view maps);

// Reads exe and maps of `pid` under `proc`.
Result<RuntimeInfo> detect_runtime(const ProcFs& proc, pid_t pid);

// The path under which memlensd reaches a file the target sees as `path`:
// <procfs>/PID/root/<path>, so targets in containers work.
std::string host_path(const ProcFs& proc, pid_t pid, std::string_view path);

}  // namespace memlens
