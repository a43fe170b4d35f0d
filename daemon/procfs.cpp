#include "daemon/procfs.h"

#include "daemon/fd.h"

#include <dirent.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace memlens {

std::string ProcFs::path(pid_t pid, std::string_view file) const {
  std::string p = root_;
  p += '/';
  p += std::to_string(pid);
  p += '/';
  p += file;
  return p;
}

std::string ProcFs::path(std::string_view file) const {
  std::string p = root_;
  p += '/';
  p += file;
  return p;
}

Result<std::vector<pid_t>> ProcFs::pids() const {
  DirPtr d(opendir(root_.c_str()));
  if (!d) return make_error(errc_from_errno(errno), root_ + ": " + std::strerror(errno));
  std::vector<pid_t> out;
  while (dirent* e = readdir(d.get())) {
    const char* n = e->d_name;
    if (*n < '1' || *n > '9') continue;
    char* end = nullptr;
    long v = std::strtol(n, &end, 10);
    if (*end == '\0' && v > 0) out.push_back(static_cast<pid_t>(v));
  }
  return out;
}

Result<void> ProcFs::check() const {
  auto ps = pids();
  if (!ps) return ps.error();
  for (pid_t pid : *ps)
    if (read_file(path(pid, "stat"), 4096)) return {};
  return make_error(Errc::invalid, root_ + ": not a procfs mount (no readable <pid>/stat entry)");
}

Result<std::string> read_file(const std::string& path, std::size_t limit) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error(errc_from_errno(errno), path + ": " + std::strerror(errno));
  std::string out;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return make_error(errc_from_errno(e), path + ": " + std::strerror(e));
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.size() >= limit) break;
  }
  ::close(fd);
  return out;
}

Result<void> pread_file(Fd& fd, const std::string& path, std::string& out, std::size_t limit) {
  if (!fd.valid()) {
    fd = Fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return make_error(errc_from_errno(errno), path + ": " + std::strerror(errno));
  }
  out.clear();
  char buf[8192];
  off_t off = 0;
  for (;;) {
    ssize_t n = ::pread(fd.get(), buf, sizeof buf, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      fd.reset();
      return make_error(errc_from_errno(e), path + ": " + std::strerror(e));
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    off += n;
    if (out.size() >= limit) break;
  }
  return {};
}

Result<std::string> read_link(const std::string& path) {
  char buf[4096];
  ssize_t n = ::readlink(path.c_str(), buf, sizeof buf - 1);
  if (n < 0) return make_error(errc_from_errno(errno), path + ": " + std::strerror(errno));
  return std::string(buf, static_cast<std::size_t>(n));
}

Result<std::vector<std::string>> list_dir(const std::string& dir) {
  DirPtr d(::opendir(dir.c_str()));
  if (!d) return make_error(errc_from_errno(errno), dir + ": " + std::strerror(errno));
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d.get())) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    names.emplace_back(e->d_name);
  }
  return names;
}

bool ProcFs::shows_own_pids() const {
  auto self = read_link(path("self"));
  return self && *self == std::to_string(getpid());
}

std::optional<uint64_t> process_cpu_ns(pid_t pid) {
  // The kernel's clock id of a process's CPU-time clock (CPUCLOCK_SCHED of
  // the whole thread group), as clock_getcpuclockid() makes it; built here
  // because that function checks the clock with one more system call.
  const clockid_t clock = static_cast<clockid_t>((~static_cast<unsigned>(pid)) << 3) | 2;
  timespec ts{};
  if (clock_gettime(clock, &ts) != 0) return std::nullopt;
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace memlens
