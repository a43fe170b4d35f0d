// Leak sites: a target's outstanding blocks (the kernel's address map)
// grouped by allocation stack, the top 20 by bytes, symbolised, served as
// /api/v1/targets/<name>/leaks. Shape:
//   {"target": name, "available": true,
//    "processes": [{"pid": N, "captured_at_unix": T, "tracking": bool, "since_start": bool,
//                   "outstanding_bytes": B, "outstanding_blocks": K,
//                   "sites": [{"bytes": B, "blocks": K, "stack": ["fn+0x1a (lib)", ...]}]}]}
// Symbol names are whatever bytes the target's binaries hold: documents are
// dumped with invalid UTF-8 replaced, never trusted.
// The same capture, every site, also goes out as a gzipped pprof profile
// (inuse_objects, inuse_space) at /debug/pprof/heap?target=NAME[&pid=N].
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "daemon/procfs.h"

namespace memlens::alloc {

struct LeakScan {
  pid_t pid = 0;
  bool tracking = false;     // probes attached now
  bool since_start = false;  // traced from the first instruction
};
struct LeakCapture {
  nlohmann::json process;                       // its entry in the JSON document
  std::shared_ptr<const std::string> profile;   // gzipped pprof
};
// One process's entry, from the address map (`addrs_fd`) and stack map
// (`stacks_fd`). A full walk of the address map: call every few seconds.
LeakCapture scan_leak_sites(int addrs_fd, int stacks_fd, const ProcFs& fs, const LeakScan& what);

// The documents by target name, kept on the collection thread.
class LeakSiteBook {
 public:
  void put(const std::string& target, LeakCapture capture);
  void remove(const std::string& target, pid_t pid);
  // (path, JSON text) for every target with a capture.
  std::vector<std::pair<std::string, std::string>> documents() const;
  // ("NAME/PID", profile) for every process; ("NAME", profile) too when the
  // target has one process.
  std::vector<std::pair<std::string, std::shared_ptr<const std::string>>> profiles() const;

 private:
  std::map<std::string, nlohmann::json> docs_;
  std::map<std::string, std::map<pid_t, std::shared_ptr<const std::string>>> profiles_;
};

}  // namespace memlens::alloc
