// User page faults per target from the exceptions:page_fault_user
// tracepoint (bpf/faults.bpf.c). On in every allocation mode: a fault costs
// microseconds, the counting a hash lookup.
#pragma once

#include <memory>

#include "collectors/collector.h"

namespace memlens {

struct FaultsState;

class FaultsCollector : public Collector {
 public:
  FaultsCollector();
  ~FaultsCollector() override;
  std::string_view name() const override { return "faults"; }
  Result<void> start(const ConfigPtr& cfg) override;
  void target_added(const Target& t) override;
  void target_removed(const Target& t) override;
  Result<void> collect(const Target& t, Sample& out) override;
  void collect_global(GlobalSample& out) override;

 private:
  std::unique_ptr<FaultsState> s_;
};

}  // namespace memlens
