// The PostgreSQL parsers on the same bytes: a process title (a backend's
// argv, which any client's user and database names reach), a command line,
// a configuration file (every file of an include tree is these bytes: include
// cycles and fan-outs must stay bounded), a memory setting, an smaps.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "collectors/postgres_parse.h"

using namespace memlens;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view t(reinterpret_cast<const char*>(data), size);
  if (pg::classify_title(t) >= pg::BackendType::count_) __builtin_trap();
  (void)pg::classify_title(t, t.substr(0, t.size() / 3));
  const auto argv = pg::split_cmdline(t);
  const auto args = pg::parse_postmaster_args(argv);
  (void)pg::parse_block_setting(t);
  (void)pg::parse_shared_buffers(t);
  for (const auto& e : pg::parse_conf(t).entries)
    if (e.value.size() > t.size() || e.name.size() > t.size()) __builtin_trap();
  int reads = 0;
  pg::ConfFs fs{[&](const std::string&) -> Result<std::string> {
                  if (++reads > 1000) __builtin_trap();  // the resolver's bound failed
                  return std::string(t);
                },
                [&](const std::string&) -> Result<std::vector<std::string>> {
                  return std::vector<std::string>{"a.conf", "b.conf", ".c.conf"};
                }};
  const auto settings = pg::resolve_settings(fs, "/data", args);
  if (auto sb = settings.get("shared_buffers")) (void)pg::parse_shared_buffers(*sb);
  if (auto seg = pg::find_shared_segment(t); seg && seg->end <= seg->start) __builtin_trap();
  return 0;
}
