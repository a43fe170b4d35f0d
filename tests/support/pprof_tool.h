// Reading memlensd's heap profiles the way a user does: with
// `go tool pprof` (Debian golang-go), its -raw and -top outputs parsed.
#pragma once

#include <sstream>
#include <string>
#include <vector>

#include "tests/support/support.h"

namespace memlens::test {

// `go tool pprof` with its caches in `dir` (HOME may be unset under CI).
inline std::string pprof(const std::string& dir, const std::string& args) {
  std::string out;
  run("HOME=" + dir + " GOCACHE=" + dir + "/gocache PPROF_TMPDIR=" + dir + " go tool pprof " + args + " 2>&1", &out);
  return out;
}

struct ProfileTotals {
  double alloc_objects = 0, alloc_space = 0, inuse_objects = 0, inuse_space = 0;
  int samples = 0;
};

// Sums the sample values `go tool pprof -raw` prints ("v1 v2 ...: locs"),
// by the sample types its header names (types a profile lacks stay 0).
inline ProfileTotals raw_totals(const std::string& raw) {
  ProfileTotals t;
  std::istringstream in(raw);
  std::string line;
  std::vector<std::string> types;
  bool in_samples = false;
  while (std::getline(in, line)) {
    if (line.rfind("Samples:", 0) == 0) {
      in_samples = true;
      std::getline(in, line);  // "alloc_objects/count alloc_space/bytes ...[dflt]"
      std::istringstream h(line);
      for (std::string w; h >> w;) types.push_back(w.substr(0, w.find('/')));
      continue;
    }
    if (!in_samples) continue;
    if (line.find(':') == std::string::npos || line.rfind("Locations", 0) == 0) break;
    std::istringstream v(line.substr(0, line.find(':')));
    double x = 0;
    for (std::size_t i = 0; i < types.size() && (v >> x); ++i) {
      if (types[i] == "alloc_objects") t.alloc_objects += x;
      if (types[i] == "alloc_space") t.alloc_space += x;
      if (types[i] == "inuse_objects") t.inuse_objects += x;
      if (types[i] == "inuse_space") t.inuse_space += x;
    }
    ++t.samples;
  }
  return t;
}

// The first row of `go tool pprof -top` (highest flat): its function, and
// with -lines what follows it ("/path/file.c:40").
inline std::pair<std::string, std::string> top_entry(const std::string& top) {
  std::istringstream in(top);
  std::string line;
  bool header = false;
  while (std::getline(in, line)) {
    if (line.find("flat%") != std::string::npos) {
      header = true;
      continue;
    }
    if (!header) continue;
    std::istringstream f(line);
    std::string flat, flatp, sum, cum, cump, fn, rest;
    if (f >> flat >> flatp >> sum >> cum >> cump >> fn) {
      f >> rest;
      return {fn, rest};
    }
  }
  return {};
}

// The function on that row.
inline std::string top_function(const std::string& top) { return top_entry(top).first; }

}  // namespace memlens::test
