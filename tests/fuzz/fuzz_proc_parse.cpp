// Every /proc parser on the same bytes: a process's files are written by the
// kernel, but --path.procfs can point anywhere, and a target can put almost
// anything in its comm and command line.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "collectors/proc_parse.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view t(reinterpret_cast<const char*>(data), size);
  if (auto s = memlens::parse_stat(t); s.ok() && s->comm.size() > t.size()) __builtin_trap();
  (void)memlens::parse_status(t);
  (void)memlens::parse_smaps_rollup(t);
  (void)memlens::parse_maps_heap(t);
  for (const auto& m : memlens::parse_maps(t))
    if (m.path.size() > t.size()) __builtin_trap();
  (void)memlens::parse_smaps_heap_resident(t);
  (void)memlens::parse_btime(t);
  (void)memlens::parse_u64(t);
  return 0;
}
