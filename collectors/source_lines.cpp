#include "collectors/source_lines.h"

#include <elfutils/libdwfl.h>

#include <mutex>
#include <unordered_map>
#include <vector>

namespace memlens::elf {

namespace {

// Answers by file (build id, or path when there is none) and address. File
// names are interned: a program's lines name a few dozen files.
struct Cache {
  std::mutex mu;
  std::unordered_map<std::string, std::unordered_map<uint64_t, int32_t>> by_file;  // -1: nothing known
  struct Entry {
    uint32_t file, function;  // interned names
    int64_t line;
  };
  std::vector<Entry> lines;  // indexed by the values above
  std::vector<std::string> names;
  std::unordered_map<std::string, uint32_t> name_ids;
  uint32_t intern(const std::string& n) {
    auto [it, added] = name_ids.try_emplace(n, static_cast<uint32_t>(names.size()));
    if (added) names.push_back(n);
    return it->second;
  }
  uint64_t entries = 0, hits = 0, misses = 0, files_opened = 0;
};
Cache& cache() {
  static Cache c;
  return c;
}
// Past this many answers the cache starts over: stacks of a long-lived
// process settle; a pathological one cannot grow memlensd without bound.
constexpr uint64_t kMaxEntries = 200000;

const Dwfl_Callbacks kCallbacks = {
    .find_elf = nullptr,
    .find_debuginfo = dwfl_standard_find_debuginfo,
    .section_address = dwfl_offline_section_address,
    .debuginfo_path = nullptr,  // ":.debug:/usr/lib/debug", with .build-id/ there
};

}  // namespace

struct SourceLines::Open {
  Dwfl* dwfl = nullptr;
  Dwfl_Module* mod = nullptr;
  Dwarf_Addr bias = 0;  // Dwfl address - DWARF (link-time) address
  ~Open() {
    if (dwfl) dwfl_end(dwfl);
  }
};

SourceLines::SourceLines() = default;
SourceLines::~SourceLines() = default;
SourceLines::SourceLines(SourceLines&&) noexcept = default;
SourceLines& SourceLines::operator=(SourceLines&&) noexcept = default;

std::optional<SourceLine> SourceLines::lookup(const std::string& path, const std::string& build_id, uint64_t vaddr) {
  Cache& c = cache();
  const std::string& key = build_id.empty() ? path : build_id;
  {
    std::lock_guard lock(c.mu);
    auto f = c.by_file.find(key);
    if (f != c.by_file.end())
      if (auto a = f->second.find(vaddr); a != f->second.end()) {
        ++c.hits;
        if (a->second < 0) return std::nullopt;
        const auto& e = c.lines[static_cast<std::size_t>(a->second)];
        return SourceLine{c.names[e.file], e.line, c.names[e.function]};
      }
    ++c.misses;
  }

  auto it = open_.find(path);
  if (it == open_.end()) {
    auto o = std::make_unique<Open>();
    o->dwfl = dwfl_begin(&kCallbacks);
    if (o->dwfl) {
      // Base 0: the module's addresses are the file's own; the bias below
      // says so either way.
      o->mod = dwfl_report_elf(o->dwfl, path.c_str(), path.c_str(), -1, 0, false);
      dwfl_report_end(o->dwfl, nullptr, nullptr);
      if (o->mod && !dwfl_module_getdwarf(o->mod, &o->bias)) o->mod = nullptr;
    }
    {
      std::lock_guard lock(c.mu);
      ++c.files_opened;
    }
    if (!o->mod) o.reset();  // no DWARF: remembered for this build, answered "none"
    it = open_.emplace(path, std::move(o)).first;
  }

  std::optional<SourceLine> found;
  if (const Open* o = it->second.get()) {
    SourceLine sl;
    if (Dwfl_Line* l = dwfl_module_getsrc(o->mod, vaddr + o->bias)) {
      int line = 0;
      const char* file = dwfl_lineinfo(l, nullptr, &line, nullptr, nullptr, nullptr);
      if (file && line > 0) {
        sl.file = file;
        sl.line = line;
      }
    }
    if (const char* name = dwfl_module_addrname(o->mod, vaddr + o->bias)) sl.function = name;
    if (sl.line > 0 || !sl.function.empty()) found = std::move(sl);
  }

  std::lock_guard lock(c.mu);
  if (c.entries >= kMaxEntries) {
    c.by_file.clear();
    c.lines.clear();
    c.names.clear();
    c.name_ids.clear();
    c.entries = 0;
  }
  int32_t idx = -1;
  if (found) {
    c.lines.push_back({c.intern(found->file), c.intern(found->function), found->line});
    idx = static_cast<int32_t>(c.lines.size() - 1);
  }
  c.by_file[key][vaddr] = idx;
  ++c.entries;
  return found;
}

SourceLines::Stats SourceLines::stats() {
  Cache& c = cache();
  std::lock_guard lock(c.mu);
  return {c.entries, c.hits, c.misses, c.files_opened};
}

}  // namespace memlens::elf
