// A PostgreSQL cluster watched from outside, without SQL: the postmaster is
// the target; its children (found through /proc, by parent) are grouped
// under it by the type their process title names. Reads the configured
// shared_buffers from the cluster's own configuration, the resident part of
// its main shared memory segment, client connections and private memory per
// backend type, and the bytes of temporary files. See docs/postgres.md.
#pragma once

#include <array>
#include <map>
#include <optional>
#include <string>

#include "collectors/collector.h"
#include "collectors/postgres_parse.h"
#include "daemon/procfs.h"

namespace memlens {

class PostgresCollector : public Collector {
 public:
  std::string_view name() const override { return "postgres"; }
  Result<void> start(const ConfigPtr& cfg) override;
  void target_removed(const Target& t) override;
  Result<void> collect(const Target& t, Sample& out) override;

  // PostgreSQL's shared_buffers when no file and no option sets it (16384
  // blocks, in every release since 9.3).
  static constexpr uint64_t kDefaultSharedBuffers = 16384 * pg::kBlockSize;

 private:
  enum class Kind { unknown, not_postgres, child, postmaster };
  struct PerTarget {
    Kind kind = Kind::unknown;
    std::string data_dir;           // in the server's mount namespace
    std::string pg_version;         // PG_VERSION, e.g. "15"
    std::string cluster_name;
    std::optional<uint64_t> shared_buffers;
    double next_settings = 0;       // monotonic seconds; settings are read once, retried when they fail
    double next_smaps = 0;
    // From the last smaps read (every smaps_interval).
    std::optional<pg::SharedSegment> segment;
    std::optional<uint64_t> segment_resident;
    bool have_private = false;
    std::array<double, pg::kBackendTypes> private_bytes{};
    bool logged_resident = false, logged_settings = false;
  };
  Result<void> classify(const Target& t, PerTarget& pt);
  Result<void> read_settings(const Target& t, PerTarget& pt);
  Result<void> read_segment(const Target& t, PerTarget& pt);

  ProcFs proc_;
  double smaps_interval_ = 5;
  std::map<TargetId, PerTarget> per_target_;
};

}  // namespace memlens
