// Source file and line of code addresses, from DWARF (libdw): a file's own
// .debug_line, or its separate debug file (by build id under /usr/lib/debug,
// as Debian's *-dbg packages install it, or by .gnu_debuglink). What profiles
// show beside a function's name, with the functions inlined at the address.
//
// Answers (found or not) are kept process-wide, bounded, so a profile rebuilt
// every few seconds from the same stacks opens no DWARF at all; the DWARF
// opened for the addresses not known yet is let go with the SourceLines that
// opened it (one per profile build).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace memlens::elf {

// One function at an address: an inlined one, or the function the code is in.
struct SourceFrame {
  std::string function;  // raw (mangled where the compiler gave a linkage name); may be empty
  std::string file;      // as the compiler recorded it (absolute when it knew the directory); may be empty
  int64_t line = 0;      // 0 when unknown
};

class SourceLines {
 public:
  SourceLines();
  ~SourceLines();
  SourceLines(const SourceLines&) = delete;
  SourceLines& operator=(const SourceLines&) = delete;
  SourceLines(SourceLines&&) noexcept;
  SourceLines& operator=(SourceLines&&) noexcept;

  // The functions at link-time address `vaddr` of the ELF file at `path` (as
  // memlensd opens it), whose build id is `build_id` (hex, may be empty):
  // innermost first, as pprof's Location.line wants them — each function
  // inlined there at the line the address is on (or, for the ones further
  // out, the line of the call that was inlined), the function the code is
  // in last. Its name comes from the debug file's symbol table where DWARF
  // names none (a stripped library's local functions, e.g. libc's with
  // libc6-dbg installed). Empty when neither the file nor a debug file for
  // it knows the address.
  std::vector<SourceFrame> lookup(const std::string& path, const std::string& build_id, uint64_t vaddr);

  // Self-metrics of the process-wide answer cache.
  struct Stats {
    uint64_t entries = 0, hits = 0, misses = 0;
  };
  static Stats stats();

 private:
  struct Open;
  std::map<std::string, std::unique_ptr<Open>> open_;  // by path; null: no DWARF
};

}  // namespace memlens::elf
