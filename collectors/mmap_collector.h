// The large-chunk path per target: mmap, munmap, mremap, brk and mprotect
// from the per-syscall tracepoints (bpf/mmap.bpf.c), each call charged the
// change of the kernel's private writable page count (VmData) it made. Sees
// heap growth where no allocator symbol can be probed (stripped static
// binaries, custom allocators); on in every mode: these calls are rare.
#pragma once

#include <array>
#include <cstdint>
#include <memory>

#include "bpf/mmap.h"
#include "collectors/collector.h"

namespace memlens {

// What one target's kernel record says about one call, in exported units.
struct MmapCallCounts {
  const char* call;  // "mmap", "munmap", "mremap", "brk", "mprotect"
  uint64_t calls = 0;
  uint64_t mapped_bytes = 0;    // growth of data_vm charged to the call
  uint64_t unmapped_bytes = 0;  // shrinkage
};
std::array<MmapCallCounts, MMAP_CALLS> mmap_call_counts(const mmap_stats& v, uint64_t page_bytes);

// The first baseline (data_vm pages) from status VmData in bytes.
inline uint64_t mmap_baseline_pages(uint64_t vm_data_bytes, uint64_t page_bytes) {
  return vm_data_bytes / page_bytes;
}

struct MmapState;

class MmapCollector : public Collector {
 public:
  MmapCollector();
  ~MmapCollector() override;
  std::string_view name() const override { return "mmap"; }
  Result<void> start(const ConfigPtr& cfg) override;
  void target_added(const Target& t) override;
  void target_removed(const Target& t) override;
  Result<void> collect(const Target& t, Sample& out) override;
  void collect_global(GlobalSample& out) override;

 private:
  std::unique_ptr<MmapState> s_;
};

}  // namespace memlens
