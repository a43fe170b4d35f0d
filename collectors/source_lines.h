// Source file and line of code addresses, from DWARF (libdw): a file's own
// .debug_line, or its separate debug file (by build id under /usr/lib/debug,
// as Debian's *-dbg packages install it, or by .gnu_debuglink). What profiles
// show beside a function's name.
//
// Answers (found or not) are kept process-wide, bounded, so a profile rebuilt
// every few seconds from the same stacks opens no DWARF at all; the DWARF
// opened for the addresses not known yet is let go with the SourceLines that
// opened it (one per profile build).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace memlens::elf {

struct SourceLine {
  std::string file;      // as the compiler recorded it (absolute when it knew the directory); may be empty
  int64_t line = 0;      // 0 when unknown
  std::string function;  // from the debug file's symbols; empty when it has none for the address
};

class SourceLines {
 public:
  SourceLines();
  ~SourceLines();
  SourceLines(const SourceLines&) = delete;
  SourceLines& operator=(const SourceLines&) = delete;
  SourceLines(SourceLines&&) noexcept;
  SourceLines& operator=(SourceLines&&) noexcept;

  // The line of link-time address `vaddr` in the ELF file at `path` (as
  // memlensd opens it), whose build id is `build_id` (hex, may be empty),
  // and the function the debug file's symbol table names there (a stripped
  // library's local functions, e.g. libc's with libc6-dbg installed).
  // nullopt when neither the file nor a debug file for it knows the address.
  std::optional<SourceLine> lookup(const std::string& path, const std::string& build_id, uint64_t vaddr);

  // Self-metrics of the process-wide answer cache.
  struct Stats {
    uint64_t entries = 0, hits = 0, misses = 0, files_opened = 0;
  };
  static Stats stats();

 private:
  struct Open;
  std::map<std::string, std::unique_ptr<Open>> open_;  // by path; null: no DWARF
};

}  // namespace memlens::elf
