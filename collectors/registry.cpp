// The one place collectors are registered: one line each, explicit (static
// initialisers could be dropped by the linker from a static library).
#include "collectors/registry.h"

#include "collectors/proc_collector.h"

namespace memlens {

std::vector<std::unique_ptr<Collector>> make_collectors() {
  std::vector<std::unique_ptr<Collector>> c;
  c.push_back(std::make_unique<ProcCollector>());
  return c;
}

}  // namespace memlens
