#include "collectors/source_lines.h"

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>

#include <cstdlib>
#include <mutex>
#include <unordered_map>

namespace memlens::elf {

namespace {

// Answers by file (build id, or path when there is none) and address: a run
// of frames in `frames`. Names are interned: a program's frames name a few
// dozen files and a few thousand functions.
struct Cache {
  struct Frame {
    uint32_t function, file;
    int64_t line;
  };
  struct Run {
    uint32_t first, count;  // count 0: nothing known
  };
  std::mutex mu;
  std::unordered_map<std::string, std::unordered_map<uint64_t, Run>> by_file;
  std::vector<Frame> frames;
  std::vector<std::string> names;
  std::unordered_map<std::string, uint32_t> name_ids;
  uint64_t entries = 0, hits = 0, misses = 0;

  uint32_t intern(const std::string& n) {
    auto [it, added] = name_ids.try_emplace(n, static_cast<uint32_t>(names.size()));
    if (added) names.push_back(n);
    return it->second;
  }
};
Cache& cache() {
  static Cache c;
  return c;
}
// Past this many answers the cache starts over: stacks of a long-lived
// process settle; a pathological one cannot grow memlensd without bound.
constexpr uint64_t kMaxEntries = 200000;
// Inlining deeper than this is cut (the outer frames are dropped).
constexpr int kMaxInlined = 32;

const Dwfl_Callbacks kCallbacks = {
    .find_elf = nullptr,
    .find_debuginfo = dwfl_standard_find_debuginfo,
    .section_address = dwfl_offline_section_address,
    .debuginfo_path = nullptr,  // ":.debug:/usr/lib/debug", with .build-id/ there
};

// A DIE's name for a profile: its linkage (mangled) name when it has one,
// else its plain name, through abstract origins and specifications.
std::string die_name(Dwarf_Die* die) {
  Dwarf_Attribute attr;
  for (unsigned at : {DW_AT_linkage_name, DW_AT_MIPS_linkage_name, DW_AT_name})
    if (dwarf_attr_integrate(die, at, &attr))
      if (const char* s = dwarf_formstring(&attr)) return s;
  return {};
}

// The call site of an inlined instance: file (from its CU's file table) and line.
std::pair<std::string, int64_t> call_site(Dwarf_Die* inlined, Dwarf_Files* files) {
  Dwarf_Attribute attr;
  Dwarf_Word file = 0, line = 0;
  std::string name;
  if (files && dwarf_attr(inlined, DW_AT_call_file, &attr) && dwarf_formudata(&attr, &file) == 0)
    if (const char* f = dwarf_filesrc(files, file, nullptr, nullptr)) name = f;
  if (dwarf_attr(inlined, DW_AT_call_line, &attr)) dwarf_formudata(&attr, &line);
  return {name, static_cast<int64_t>(line)};
}

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

std::vector<SourceFrame> SourceLines::lookup(const std::string& path, const std::string& build_id, uint64_t vaddr) {
  Cache& c = cache();
  const std::string& key = build_id.empty() ? path : build_id;
  {
    std::lock_guard lock(c.mu);
    auto f = c.by_file.find(key);
    if (f != c.by_file.end())
      if (auto a = f->second.find(vaddr); a != f->second.end()) {
        ++c.hits;
        std::vector<SourceFrame> out;
        for (uint32_t i = a->second.first; i < a->second.first + a->second.count; ++i)
          out.push_back({c.names[c.frames[i].function], c.names[c.frames[i].file], c.frames[i].line});
        return out;
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
    if (!o->mod) o.reset();  // no DWARF: remembered for this build, answered "none"
    it = open_.emplace(path, std::move(o)).first;
  }

  std::vector<SourceFrame> found;
  if (const Open* o = it->second.get()) {
    const Dwarf_Addr addr = vaddr + o->bias;
    SourceFrame at;  // where the address is: the line table's answer
    if (Dwfl_Line* l = dwfl_module_getsrc(o->mod, addr)) {
      int line = 0;
      const char* file = dwfl_lineinfo(l, nullptr, &line, nullptr, nullptr, nullptr);
      if (file && line > 0) {
        at.file = file;
        at.line = line;
      }
    }
    // The scopes around the address, innermost first: each inlined
    // instance is a frame at the current line, and its call site is the
    // line of the frame outside it.
    Dwarf_Addr cu_bias = 0;
    if (Dwarf_Die* cu = dwfl_module_addrdie(o->mod, addr, &cu_bias)) {
      Dwarf_Files* files = nullptr;
      if (dwarf_getsrcfiles(cu, &files, nullptr) != 0) files = nullptr;
      Dwarf_Die* scopes = nullptr;
      const int n = dwarf_getscopes(cu, addr - cu_bias, &scopes);
      for (int i = 0; i < n && static_cast<int>(found.size()) < kMaxInlined; ++i) {
        const int tag = dwarf_tag(&scopes[i]);
        if (tag == DW_TAG_inlined_subroutine) {
          at.function = die_name(&scopes[i]);
          found.push_back(at);
          auto [file, line] = call_site(&scopes[i], files);
          at = SourceFrame{{}, file, line};
        } else if (tag == DW_TAG_subprogram) {
          at.function = die_name(&scopes[i]);
          break;
        }
      }
      std::free(scopes);
    }
    // The function the code is in: the symbol table's name (the one the
    // rest of memlensd uses) over DWARF's.
    if (const char* name = dwfl_module_addrname(o->mod, addr)) at.function = name;
    if (at.line > 0 || !at.function.empty()) found.push_back(std::move(at));
  }

  std::lock_guard lock(c.mu);
  if (c.entries >= kMaxEntries) {
    c.by_file.clear();
    c.frames.clear();
    c.names.clear();
    c.name_ids.clear();
    c.entries = 0;
  }
  const Cache::Run run{static_cast<uint32_t>(c.frames.size()), static_cast<uint32_t>(found.size())};
  for (const auto& f : found) c.frames.push_back({c.intern(f.function), c.intern(f.file), f.line});
  c.by_file[key][vaddr] = run;
  ++c.entries;
  return found;
}

SourceLines::Stats SourceLines::stats() {
  Cache& c = cache();
  std::lock_guard lock(c.mu);
  return {c.entries, c.hits, c.misses};
}

}  // namespace memlens::elf
