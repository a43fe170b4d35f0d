// The one place collectors are registered: one line each, explicit (static
// initialisers could be dropped by the linker from a static library).
#include "collectors/registry.h"

#include "collectors/alloc_collector.h"
#include "collectors/browser_collector.h"
#include "collectors/faults_collector.h"
#include "collectors/files_collector.h"
#include "collectors/gc_collector.h"
#include "collectors/heap_collector.h"
#include "collectors/mmap_collector.h"
#include "collectors/postgres_collector.h"
#include "collectors/proc_collector.h"
#include "collectors/sampler_collector.h"

namespace memlens {

std::vector<std::unique_ptr<Collector>> make_collectors() {
  std::vector<std::unique_ptr<Collector>> c;
  c.push_back(std::make_unique<ProcCollector>());
  c.push_back(std::make_unique<HeapCollector>());
  c.push_back(std::make_unique<FaultsCollector>());
  c.push_back(std::make_unique<MmapCollector>());
  c.push_back(std::make_unique<AllocCollector>());
  c.push_back(std::make_unique<GcCollector>());
  c.push_back(std::make_unique<SamplerCollector>());
  c.push_back(std::make_unique<PostgresCollector>());
  c.push_back(std::make_unique<BrowserCollector>());
  c.push_back(std::make_unique<FilesCollector>());
  return c;
}

}  // namespace memlens
