// Pure parsers for watching a PostgreSQL cluster from outside: process
// titles, configuration files and the postmaster's command line, memory
// settings in PostgreSQL's units, and the shared memory segment in smaps.
// Reading is kept apart (the collector, or a test's in-memory files).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/result.h"

namespace memlens::pg {

// What a child of the postmaster is, from its process title. The values are
// pg_stat_activity.backend_type's, plus the postmaster itself and "other"
// (a title we do not know, or a child forked and not yet retitled): a fixed
// set, so the backend_type label never grows with the processes.
enum class BackendType : uint8_t {
  postmaster,
  client_backend,
  autovacuum_launcher,
  autovacuum_worker,
  background_writer,
  checkpointer,
  walwriter,
  walsender,
  walreceiver,
  startup,
  archiver,
  logger,
  logical_replication_launcher,
  logical_replication_worker,
  parallel_worker,
  other,
  count_,
};
constexpr std::size_t kBackendTypes = static_cast<std::size_t>(BackendType::count_);
const char* backend_type_name(BackendType t);

// Classifies /proc/PID/cmdline of a child (NUL-separated, NUL-padded:
// PostgreSQL overwrites its argv with "postgres: [cluster_name: ]title").
// `cluster_name` is the setting, when known; an unknown one is also skipped
// when what follows it is a title we know.
BackendType classify_title(std::string_view cmdline, std::string_view cluster_name = {});

// The argv of /proc/PID/cmdline.
std::vector<std::string> split_cmdline(std::string_view cmdline);

// PostgreSQL's block size (BLCKSZ): 8 kB in every build we know of, and the
// unit of shared_buffers given without one.
constexpr uint64_t kBlockSize = 8192;

// A memory setting whose base unit is the 8 kB block (shared_buffers,
// wal_buffers...), parsed as PostgreSQL parses it: an integer (decimal, 0x
// hex, 0 octal) or a decimal fraction, optional spaces, an optional unit
// B, kB, MB, GB or TB (case-sensitive, 1024 multipliers); no unit means
// blocks. Fractions are rounded first to the next smaller unit, then to
// whole blocks. Returns bytes (whole blocks).
Result<uint64_t> parse_block_setting(std::string_view value);
// shared_buffers in bytes: a block setting within what the server accepts
// (16 blocks .. INT_MAX / 2).
Result<uint64_t> parse_shared_buffers(std::string_view value);

// One line of a configuration file that sets something. Names are lower
// case (GUC names are case-insensitive); include, include_if_exists and
// include_dir come through as entries of those names.
struct ConfEntry {
  std::string name, value;
  int line = 0;
};
struct ConfFile {
  std::vector<ConfEntry> entries;
  std::vector<std::string> errors;  // "line N: why", for lines that did not parse
};
// postgresql.conf / postgresql.auto.conf syntax: `name [=] value`, values
// bare or single-quoted ('' and \' for a quote, backslash escapes), `#`
// comments. A line that does not parse is reported and skipped.
ConfFile parse_conf(std::string_view text);

// What the postmaster's command line says.
struct PostmasterArgs {
  std::optional<std::string> data_dir;  // -D
  // -c name=value, --name=value (dashes as underscores), -B blocks; in
  // order, a later one wins.
  std::vector<std::pair<std::string, std::string>> options;
  std::optional<std::string> option(std::string_view name) const;
};
PostmasterArgs parse_postmaster_args(const std::vector<std::string>& argv);

// Where settings are read from: paths are those of the server's own
// namespace; the collector maps them under /proc/PID/root.
struct ConfFs {
  std::function<Result<std::string>(const std::string& path)> read;
  // Names (not paths) of the entries of a directory.
  std::function<Result<std::vector<std::string>>(const std::string& dir)> list;
};

struct Setting {
  std::string value;
  std::string source;  // "path:line" or "command line"
};
struct Settings {
  std::map<std::string, Setting> values;  // lower-case name -> the winning value
  std::string config_file;                // the postgresql.conf that was read
  bool config_read = false;               // whether it could be read
  Errc config_errc = Errc::io;            // why not, when it could not
  std::vector<std::string> errors;        // what could not be read or parsed (the first 64)
  std::size_t errors_dropped = 0;         // beyond those
  std::optional<std::string> get(std::string_view name) const;
};

// The settings a postmaster started with, in PostgreSQL's order: its
// config file (config_file option, else <-D or data dir>/postgresql.conf)
// with its includes where they stand, then <data dir>/postgresql.auto.conf,
// then the command line, a later value winning. `data_dir` is the server's
// data directory (its working directory: the postmaster changes to it).
Settings resolve_settings(const ConfFs& fs, const std::string& data_dir, const PostmasterArgs& args);

// The main shared memory segment in the postmaster's /proc/PID/smaps: the
// largest shared writable mapping of /dev/zero (shared_memory_type=mmap,
// the default on Linux), /anon_hugepage (huge pages) or SYSV* (sysv).
struct SharedSegment {
  uint64_t start = 0, end = 0;
  std::string path;
  uint64_t rss = 0;   // what the postmaster itself has mapped
  uint64_t swap = 0;  // swapped out, of the whole object (shmem)
  uint64_t size() const { return end - start; }
};
std::optional<SharedSegment> find_shared_segment(std::string_view smaps);

}  // namespace memlens::pg
