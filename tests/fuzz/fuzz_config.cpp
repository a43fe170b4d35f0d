// The configuration parser (YAML, selectors' regexes, durations, sizes,
// files targets' glob patterns): whatever a file holds, a Result, never a
// crash, an abort or a hang. The same bytes go to the duration and size
// parsers.
#include <cstddef>
#include <cstdint>
#include <string>

#include "daemon/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto c = memlens::parse_config(text, "fuzz.yaml");
  if (c.ok()) {
    // What validation promises the rest of the daemon.
    if (c->targets.empty() || c->tick_interval.count() < 100) __builtin_trap();
    if (static_cast<double>(c->timeline_points()) * memlens::kTimelineBytesPerPoint * c->max_targets >
        static_cast<double>(memlens::kMaxTimelineBytes))
      __builtin_trap();
    // A files target: absolute patterns within their bounds, no selector.
    for (const auto& t : c->targets) {
      if (!t.files) continue;
      const auto& f = *t.files;
      if (f.paths.empty() || f.paths.size() > memlens::kMaxFilePatterns ||
          f.entry.size() > memlens::kMaxFilePatterns || f.max_files < 1 || f.max_files > memlens::kMaxFilesPerTarget)
        __builtin_trap();
      for (const auto* list : {&f.paths, &f.entry})
        for (const auto& p : *list)
          if (p.empty() || p.front() != '/' || p.find('\0') != std::string::npos) __builtin_trap();
      if (!t.selector.describe().empty()) __builtin_trap();
      for (const auto& b : t.budgets)
        if (b.resource != "bundle") __builtin_trap();
    }
  } else if (c.error().message.rfind("fuzz.yaml", 0) != 0) {
    __builtin_trap();  // every error names the file
  }
  if (auto d = memlens::parse_duration(text); d && d->count() < 1) __builtin_trap();
  (void)memlens::parse_bytes(text);
  return 0;
}
