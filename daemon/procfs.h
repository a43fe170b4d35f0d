// Access to procfs under a configurable root (--path.procfs), so parsers run
// on recorded fixtures and the daemon works from inside a container.
#pragma once

#include <dirent.h>

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/result.h"

namespace memlens {

class ProcFs {
 public:
  explicit ProcFs(std::string root = "/proc") : root_(std::move(root)) {}
  const std::string& root() const { return root_; }
  std::string path(pid_t pid, std::string_view file) const;
  std::string path(std::string_view file) const;  // e.g. "meminfo"
  // Numeric entries of the root directory.
  Result<std::vector<pid_t>> pids() const;
  // Whether the root looks like a procfs mount: a process entry with a
  // readable stat file. Checked at start and on reload (a wrong
  // --path.procfs would otherwise serve an empty, "healthy" daemon).
  Result<void> check() const;
  // Whether the root shows memlensd's own pid namespace (its self link
  // names our pid: /proc, or the host's /proc under hostPID), so that a pid
  // read there is one our system calls (CPU clocks, process_vm_readv) name.
  bool shows_own_pids() const;

 private:
  std::string root_;
};

// Reads a whole (proc) file; errors map errno to Errc (ENOENT/ESRCH ->
// not_found, EACCES -> permission). `limit` bounds what is read.
Result<std::string> read_file(const std::string& path, std::size_t limit = 1 << 22);
Result<std::string> read_link(const std::string& path);
// An open directory stream, closed when it goes.
struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;
// The names in a directory, "." and ".." left out.
Result<std::vector<std::string>> list_dir(const std::string& dir);

class Fd;
// Opens `path` into `fd` if it is not open yet, then reads it whole from
// offset 0 into `out` (reusing its capacity). Keeping /proc/PID/stat and
// status open saves an open/close per read; once the process is gone (or the
// pid reused) reads fail with ESRCH, which maps to Errc::not_found.
Result<void> pread_file(Fd& fd, const std::string& path, std::string& out, std::size_t limit = 1 << 20);

// The CPU time of process `pid`, every thread's, live and exited, in ns,
// from its CPU-time clock: one system call, no file, exact (the stat file's
// utime and stime move in 10 ms steps). For a pid of memlensd's own pid
// namespace (ProcFs::shows_own_pids). None once the process is gone.
std::optional<uint64_t> process_cpu_ns(pid_t pid);

}  // namespace memlens
