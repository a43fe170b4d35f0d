// Glob patterns of build artefacts, expanded by walking the directories they
// name (no glob(3): it has no `**` and no bound on what it walks). `*`, `?`
// and `[...]` match within one path component, as fnmatch(3) with
// FNM_PERIOD (a leading dot is matched only by a dot); a component `**`
// matches any number of directories, zero included, and is not carried
// into symlinked directories (a link loop cannot make it walk forever).
// Only regular files (a symlink to one included) whose path is UTF-8 are
// matches: the path is a label value, and Prometheus refuses a scrape with
// one that is not UTF-8.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <string_view>

namespace memlens {

// What one expansion met, beside its matches.
struct GlobStats {
  uint64_t dropped = 0;     // matches past the cap
  uint64_t permission = 0;  // a directory or file refused (EACCES, EPERM)
  uint64_t loop = 0;        // ELOOP: a symlink loop on the way
  uint64_t vanished = 0;    // gone between readdir and stat, or a dangling symlink
  uint64_t other = 0;       // any other error
  uint64_t truncated = 0;   // walks cut short at kMaxGlobEntries or kMaxGlobDepth
  uint64_t not_utf8 = 0;    // a matching path that is not UTF-8: no label value can carry it
};

// Bounds on one pattern's walk: directory entries read, directory levels `**`
// descends.
constexpr uint64_t kMaxGlobEntries = 200000;
constexpr int kMaxGlobDepth = 32;

// One path component against one pattern component.
bool glob_component_match(std::string_view pattern, std::string_view name);

// Adds the regular files `pattern` (absolute) matches to `out`, while `out`
// holds fewer than `max`; further matches are counted as dropped.
void glob_files(const std::string& pattern, std::size_t max, std::set<std::string>& out, GlobStats& stats);

}  // namespace memlens
