// A JVM's hsperfdata file is written by the JVM, in a directory any user of
// the JVM's uid writes: the parser takes it as hostile.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "collectors/hsperfdata.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view t(reinterpret_cast<const char*>(data), size);
  if (auto p = memlens::parse_hsperfdata(t); p.ok()) (void)memlens::jvm_memory(*p);
  (void)memlens::hsperfdata_path_from_maps(t);
  return 0;
}
