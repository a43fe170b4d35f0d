#include "collectors/postgres_collector.h"

#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "collectors/proc_parse.h"
#include "collectors/process_tree.h"
#include "daemon/clock.h"
#include "daemon/config.h"

namespace memlens {

namespace {

struct PostgresMetrics {
  MetricDesc shared_buffers = metric(
      "postgres_shared_buffers", "bytes", MetricKind::gauge,
      "shared_buffers the cluster was configured with, from its own configuration (postgresql.conf and its "
      "includes, postgresql.auto.conf, the postmaster's command line), read when the postmaster is first seen.");
  MetricDesc shared_memory = metric("postgres_shared_memory", "bytes", MetricKind::gauge,
                                    "Size of the cluster's main shared memory segment (the postmaster's largest "
                                    "shared mapping of /dev/zero, /anon_hugepage or SYSV).");
  MetricDesc shared_resident = metric(
      "postgres_shared_memory_resident", "bytes", MetricKind::gauge,
      "Resident bytes of the main shared memory segment, whichever process touched them (the segment's pages in "
      "memory, not swapped; the postmaster's own Rss of it when /proc/PID/map_files cannot be opened).");
  MetricDesc connections = metric("postgres_connections", "", MetricKind::gauge,
                                  "Client backends now: children of the postmaster whose title is a client's.");
  MetricDesc backends = metric("postgres_backends", "", MetricKind::gauge,
                               "Processes of the cluster by backend_type (the postmaster and its children).");
  MetricDesc private_bytes = metric(
      "postgres_backend_private", "bytes", MetricKind::gauge,
      "Private memory of the cluster's processes summed per backend_type: anonymous memory divided among the "
      "processes sharing it (smaps_rollup Pss_Anon; Private_Clean + Private_Dirty on kernels without it), which "
      "leaves out the shared memory segment. Read every smaps_interval.");
  MetricDesc temp_bytes = metric("postgres_temp_file", "bytes", MetricKind::gauge,
                                 "Bytes in temporary files now (sorts, hashes and temporary tables spilled to "
                                 "disk): pgsql_tmp of the data directory and of every tablespace.");
  MetricDesc temp_files = metric("postgres_temp_files", "", MetricKind::gauge,
                                 "Temporary files now, in the same directories.");
};

const PostgresMetrics& m() {
  static const PostgresMetrics metrics;
  return metrics;
}

// How long a configuration that could not be read waits to be read again.
constexpr double kSettingsRetrySeconds = 60;
// Bounds on one temp directory walk: PostgreSQL nests at most a fileset
// directory in pgsql_tmp; a runaway directory costs at most this.
constexpr int kTempDepth = 3;
constexpr std::size_t kTempEntries = 100000;

std::string basename_of(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

struct TempUsage {
  uint64_t bytes = 0, files = 0;
  std::size_t entries = 0;
};

// Sums the regular files under `dir`. A directory that does not exist yet
// (no sort has spilled since the start) is empty; files deleted while we
// look are skipped.
Result<void> temp_usage(const std::string& dir, int depth, TempUsage& u) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT || errno == ENOTDIR) return {};
    return make_error(errc_from_errno(errno), dir + ": " + std::strerror(errno));
  }
  DirPtr d(::fdopendir(fd));  // owns fd from here
  if (!d) {
    const int err = errno;
    ::close(fd);
    return make_error(errc_from_errno(err), dir + ": " + std::strerror(err));
  }
  Result<void> result;
  while (const dirent* e = ::readdir(d.get())) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    if (++u.entries > kTempEntries) return make_error(Errc::full, dir + ": more than 100000 entries");
    struct stat st {};
    if (::fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone meanwhile
    if (S_ISREG(st.st_mode)) {
      u.bytes += static_cast<uint64_t>(st.st_size);
      ++u.files;
    } else if (S_ISDIR(st.st_mode) && depth < kTempDepth) {
      if (auto r = temp_usage(dir + "/" + e->d_name, depth + 1, u); !r && result) result = r;
    }
  }
  return result;
}

}  // namespace

Result<void> PostgresCollector::start(const ConfigPtr& config) {
  const Config& cfg = *config;
  proc_ = ProcFs(cfg.procfs);
  smaps_interval_ = std::chrono::duration<double>(cfg.smaps_interval).count();
  for (auto& [id, pt] : per_target_) {
    pt.kind = Kind::unknown;  // a reload may switch postgres on or off
    pt.next_smaps = 0;
  }
  return {};
}

void PostgresCollector::target_removed(const Target& t) { per_target_.erase(t.id); }

// A postmaster is a PostgreSQL process whose parent is not one: children
// have the same executable as their parent (they are forked, never exec'd).
Result<void> PostgresCollector::classify(const Target& t, PerTarget& pt) {
  const std::string exe_name = basename_of(t.exe.empty() ? t.comm : t.exe);
  const bool named = exe_name == "postgres" || exe_name == "postmaster";
  const std::optional<bool> forced = t.policy ? t.policy->postgres : std::nullopt;
  if (forced ? !*forced : !named) {
    pt.kind = Kind::not_postgres;
    return {};
  }
  auto stat_text = read_file(proc_.path(t.pid(), "stat"));
  if (!stat_text) return stat_text.error();
  auto st = parse_stat(*stat_text);
  if (!st) return st.error();
  auto parent_exe = read_link(proc_.path(st->ppid, "exe"));
  pt.kind = parent_exe && !t.exe.empty() && *parent_exe == t.exe ? Kind::child : Kind::postmaster;
  return {};
}

Result<void> PostgresCollector::read_settings(const Target& t, PerTarget& pt) {
  const pid_t pid = t.pid();
  pt.next_settings = mono_now() + kSettingsRetrySeconds;
  // The postmaster works in its data directory (it changes to it at start).
  auto cwd = read_link(proc_.path(pid, "cwd"));
  if (!cwd) return cwd.error();
  pt.data_dir = *cwd;
  auto cmdline = read_file(proc_.path(pid, "cmdline"), 1 << 16);
  if (!cmdline) return cmdline.error();
  const auto args = pg::parse_postmaster_args(pg::split_cmdline(*cmdline));
  // Paths are the server's: read them through its root, in its namespace.
  const std::string root = proc_.path(pid, "root");
  pg::ConfFs fs{[&](const std::string& p) { return read_file(root + p, 4 << 20); },
                [&](const std::string& d) { return list_dir(root + d); }};
  if (auto v = read_file(root + pt.data_dir + "/PG_VERSION", 64)) {
    pt.pg_version = *v;
    while (!pt.pg_version.empty() && (pt.pg_version.back() == '\n' || pt.pg_version.back() == ' '))
      pt.pg_version.pop_back();
  }
  const pg::Settings s = pg::resolve_settings(fs, pt.data_dir, args);
  pt.cluster_name = s.get("cluster_name").value_or("");
  // Lines that did not parse are skipped (and counted); an unreadable
  // config file leaves only what the command line says.
  Result<void> result;
  if (!s.errors.empty()) {
    if (!std::exchange(pt.logged_settings, true))
      spdlog::warn("postgres: target {} pid {}: {}{}", t.name, pid, s.errors.front(),
                   s.errors.size() > 1 ? fmt::format(" (and {} more)", s.errors.size() - 1 + s.errors_dropped) : "");
    result = make_error(s.config_read ? Errc::malformed : s.config_errc, s.errors.front());
  }
  const auto sb = s.values.find("shared_buffers");
  if (sb == s.values.end()) {
    // Nothing sets it: the built-in default, if the config file was read.
    if (s.config_read) pt.shared_buffers = kDefaultSharedBuffers;
  } else if (auto bytes = pg::parse_shared_buffers(sb->second.value)) {
    pt.shared_buffers = *bytes;
    spdlog::debug("postgres: target {} pid {}: shared_buffers = {} ({})", t.name, pid, sb->second.value,
                  sb->second.source);
  } else {
    return make_error(Errc::malformed, sb->second.source + ": shared_buffers " + bytes.error().message);
  }
  if (result) pt.next_settings = 1e300;  // read once: a change needs a restart, a new target
  return result;
}

// The segment's pages in memory, whoever touched them: the segment is one
// shmem object, whose allocated blocks stat reports through map_files;
// smaps' Swap of a shared shmem mapping is the object's swapped part. The
// postmaster's own Rss would count only pages it mapped itself.
Result<void> PostgresCollector::read_segment(const Target& t, PerTarget& pt) {
  const pid_t pid = t.pid();
  pt.segment.reset();
  pt.segment_resident.reset();
  auto smaps = read_file(proc_.path(pid, "smaps"), 64 << 20);
  if (!smaps) return smaps.error();
  pt.segment = pg::find_shared_segment(*smaps);
  if (!pt.segment) return {};
  const std::string range = fmt::format("map_files/{:x}-{:x}", pt.segment->start, pt.segment->end);
  struct stat st {};
  if (::stat(proc_.path(pid, range).c_str(), &st) == 0) {
    const uint64_t allocated = static_cast<uint64_t>(st.st_blocks) * 512;
    pt.segment_resident = allocated > pt.segment->swap ? allocated - pt.segment->swap : 0;
    return {};
  }
  const int err = errno;
  if (!std::exchange(pt.logged_resident, true))
    spdlog::info("postgres: target {} pid {}: {}: {}; the resident shared memory is the postmaster's own share",
                 t.name, pid, range, std::strerror(err));
  pt.segment_resident = pt.segment->rss;
  return {};
}

Result<void> PostgresCollector::collect(const Target& t, Sample& out) {
  PerTarget& pt = per_target_[t.id];
  if (pt.kind == Kind::unknown) {
    if (auto r = classify(t, pt); !r) return r;
  }
  if (pt.kind != Kind::postmaster) return {};
  const pid_t pid = t.pid();
  const double now = mono_now();
  Result<void> result;
  auto keep = [&](Result<void> r) {
    if (!r && result) result = std::move(r);
  };
  if (now >= pt.next_settings) keep(read_settings(t, pt));
  if (pt.shared_buffers) out.gauge(m().shared_buffers, static_cast<double>(*pt.shared_buffers));

  const bool smaps_due = now >= pt.next_smaps;
  if (smaps_due) {
    pt.next_smaps = now + smaps_interval_;
    keep(read_segment(t, pt));
  }
  if (pt.segment) {
    out.gauge(m().shared_memory, static_cast<double>(pt.segment->size()));
    if (pt.segment_resident) out.gauge(m().shared_resident, static_cast<double>(*pt.segment_resident));
  }

  const std::vector<pid_t> kids = children_of(proc_, pid);
  std::array<double, pg::kBackendTypes> count{}, priv{};
  auto private_of = [&](pid_t p) -> double {
    auto r = private_memory(proc_, p);
    if (!r && r.error().code != Errc::not_found) keep(r.error());  // gone meanwhile, or not ours to read: no error
    return r ? static_cast<double>(*r) : 0;
  };
  count[static_cast<std::size_t>(pg::BackendType::postmaster)] = 1;
  if (smaps_due)
    priv[static_cast<std::size_t>(pg::BackendType::postmaster)] += private_of(pid);
  for (pid_t k : kids) {
    // A backend that exits between the list and this read is simply gone.
    auto title = read_file(proc_.path(k, "cmdline"), 512);
    if (!title) continue;
    const auto type = static_cast<std::size_t>(pg::classify_title(*title, pt.cluster_name));
    count[type] += 1;
    if (smaps_due) priv[type] += private_of(k);
  }
  if (smaps_due) {
    pt.private_bytes = priv;
    pt.have_private = true;
  }
  out.gauge(m().connections, count[static_cast<std::size_t>(pg::BackendType::client_backend)]);
  // Every type, always: the series are the same whatever comes and goes.
  for (std::size_t i = 0; i < pg::kBackendTypes; ++i) {
    const Labels type{{"backend_type", pg::backend_type_name(static_cast<pg::BackendType>(i))}};
    out.gauge(m().backends, count[i], type);
    if (pt.have_private) out.gauge(m().private_bytes, pt.private_bytes[i], type);
  }

  // Temporary files: base/pgsql_tmp, and pgsql_tmp in this version's
  // directory of every tablespace (pg_tblspc/OID -> location/PG_15_<catalog>).
  if (!pt.data_dir.empty()) {
    const std::string root = proc_.path(pid, "root");
    TempUsage u;
    Result<void> temp = temp_usage(root + pt.data_dir + "/base/pgsql_tmp", 0, u);
    const std::string tblspc = pt.data_dir + "/pg_tblspc";
    if (auto oids = list_dir(root + tblspc)) {
      const std::string prefix = pt.pg_version.empty() ? "PG_" : "PG_" + pt.pg_version + "_";
      for (const auto& oid : *oids) {
        // A symbolic link to the location (in the server's namespace), or
        // an in-place tablespace's directory.
        auto link = read_link(root + tblspc + "/" + oid);
        std::string loc = tblspc + "/" + oid;
        if (link && !link->empty()) loc = link->front() == '/' ? *link : tblspc + "/" + *link;
        auto versions = list_dir(root + loc);
        if (!versions) {
          if (temp) temp = versions.error();
          continue;
        }
        for (const auto& v : *versions)
          if (v.rfind(prefix, 0) == 0)
            if (auto r = temp_usage(root + loc + "/" + v + "/pgsql_tmp", 0, u); !r && temp) temp = r;
      }
    } else if (oids.error().code != Errc::not_found && temp) {
      temp = oids.error();
    }
    if (temp) {
      out.gauge(m().temp_bytes, static_cast<double>(u.bytes));
      out.gauge(m().temp_files, static_cast<double>(u.files));
    } else {
      keep(temp);
    }
  }
  return result;
}

}  // namespace memlens
