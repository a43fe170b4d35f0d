// Memory of a process from /proc: smaps_rollup, status, stat and the [heap]
// mapping in maps. Cheap and always on.
#pragma once

#include "collectors/collector.h"
#include "daemon/procfs.h"

namespace memlens {

class ProcCollector : public Collector {
 public:
  std::string_view name() const override { return "proc"; }
  Result<void> start(const Config& cfg) override;
  Result<void> collect(const Target& t, Sample& out) override;

 private:
  ProcFs proc_;
};

}  // namespace memlens
