#pragma once

#include <memory>
#include <vector>

#include "collectors/collector.h"

namespace memlens {

// Every collector, in the order they run for each target. Later collectors
// may override the timeline series of earlier ones (eBPF live heap over
// /proc anonymous RSS).
std::vector<std::unique_ptr<Collector>> make_collectors();

}  // namespace memlens
