// The JVM's hsperfdata file (the counters jstat reads): a pure parser plus
// the lookup of the file of one process, through its /proc root so JVMs in
// containers are found too.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/procfs.h"
#include "daemon/result.h"

namespace memlens {

// Counter name -> value. Longs ('J') land in `longs`, byte vectors ('B', the
// JVM's strings) in `strings`; other types are skipped.
struct PerfData {
  std::map<std::string, int64_t, std::less<>> longs;
  std::map<std::string, std::string, std::less<>> strings;
  std::optional<int64_t> get(std::string_view name) const;
};

// Parses a whole hsperfdata file (any byte order, format 2.x). Errors:
// Errc::malformed for a bad magic, an unknown version or an entry that points
// outside the buffer; Errc::unavailable when the JVM marks it not accessible.
Result<PerfData> parse_hsperfdata(std::string_view data);

// Heap and metaspace as jstat -gc shows them, in bytes.
struct JvmSpace {
  std::string name;  // "eden", "s0", "s1", "old" (the JVM's own names)
  uint64_t used = 0;
  uint64_t committed = 0;  // the JVM calls it capacity
};
struct JvmMemory {
  std::vector<JvmSpace> heap;
  std::optional<JvmSpace> metaspace;
  std::optional<JvmSpace> class_space;
  uint64_t heap_used() const;
};
JvmMemory jvm_memory(const PerfData& p);

// The hsperfdata file a JVM has mapped, from the text of its maps (the path
// as the JVM sees it), if any. Pure.
std::optional<std::string> hsperfdata_path_from_maps(std::string_view maps);

// The hsperfdata file of `pid`, reached through <procfs>/PID/root: the one it
// has mapped; failing that /tmp/hsperfdata_<user>/<nspid>, where nspid is the
// pid inside the target's own pid namespace (NSpid in status) and <user> is
// whichever directory holds it. Errc::not_found when there is none (e.g.
// -XX:-UsePerfData).
Result<std::string> find_hsperfdata(const ProcFs& proc, pid_t pid);

}  // namespace memlens
