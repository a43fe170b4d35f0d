// ELF symbol lookup for uprobes and symbolisation (libelf):
//  - symbol -> file offset (what a uprobe is attached at),
//  - a function's first bytes, and a prologue decoder that picks the first
//    instruction the kernel can emulate rather than single-step,
//  - which allocator a process uses (/proc/PID/maps, or an exe before it runs),
//  - address -> "function+0xoff" for leak-site stacks.
// Parsed files are cached per build-id (or path+inode+mtime when there is none).
// The GC and allocation collectors depend on it: extend it, keep what is here.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "collectors/proc_parse.h"
#include "daemon/result.h"

namespace memlens::elf {

struct Symbol {
  std::string name;
  uint64_t vaddr = 0;        // st_value
  uint64_t size = 0;         // st_size
  uint64_t file_offset = 0;  // where a uprobe goes
};

// One parsed ELF file: its function symbols (.symtab and .dynsym, defined
// only), PT_LOAD segments, build-id and DT_NEEDED entries. Immutable once
// built, so it is shared between threads through the cache.
class ElfFile {
 public:
  // Opens and parses `path`. Errc::not_found / permission / malformed.
  static Result<std::shared_ptr<const ElfFile>> open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::string& build_id() const { return build_id_; }  // hex, may be empty
  const std::vector<std::string>& needed() const { return needed_; }

  // Defined function (or ifunc) symbol by exact name; a versioned name
  // ("malloc@@GLIBC_2.2.5") matches its base name too.
  Result<Symbol> find(std::string_view name) const;
  bool defines(std::string_view name) const { return find(name).ok(); }
  // The function containing `vaddr`, and the offset into it.
  std::optional<std::pair<const Symbol*, uint64_t>> symbolize(uint64_t vaddr) const;
  // File offset <-> virtual address through the PT_LOAD segments.
  std::optional<uint64_t> vaddr_to_offset(uint64_t vaddr) const;
  std::optional<uint64_t> offset_to_vaddr(uint64_t offset) const;
  // Up to `n` bytes of the file at `file_offset`.
  Result<std::vector<uint8_t>> read_bytes(uint64_t file_offset, std::size_t n) const;

  struct Segment { uint64_t vaddr, memsz, offset, filesz; };

 private:
  ElfFile() = default;
  std::string path_;
  std::string build_id_;
  std::vector<std::string> needed_;
  std::vector<Segment> segments_;
  std::vector<Symbol> syms_;           // sorted by vaddr
  std::map<std::string, std::size_t, std::less<>> by_name_;
};

// Process-wide cache of parsed files, keyed by build-id (falls back to
// device+inode+mtime). Thread-safe.
Result<std::shared_ptr<const ElfFile>> open_cached(const std::string& path);

// ---- prologue decoding -------------------------------------------------

// Where to put an entry uprobe in a function. The kernel emulates some
// instructions (push, jcc/jmp/call rel, nop) and must single-step the others
// (~4x dearer on a VM), so we skip a leading NULL test
// ("test %rdi,%rdi; je ...") or endbr64 when doing so keeps every argument
// register intact.
struct ProbeSite {
  uint64_t offset = 0;     // bytes from the function start
  bool emulated = false;   // the instruction at `offset` is one the kernel emulates
  std::string note;        // what was decoded, for logs
};

// Decodes the first bytes of a function. Pure, for unit tests. Never
// guesses: an unknown first instruction gives offset 0, emulated=false.
ProbeSite choose_probe_site(std::span<const uint8_t> code);

// Reads the function's first bytes from the file and decodes them.
Result<ProbeSite> probe_site(const ElfFile& f, const Symbol& s);

// ---- allocators --------------------------------------------------------

enum class AllocatorKind { glibc, jemalloc, tcmalloc, mimalloc, other };
const char* allocator_name(AllocatorKind k);

struct AllocatorLocation {
  AllocatorKind kind = AllocatorKind::other;
  std::string path;      // as the process sees it (maps path)
  std::string open_path; // what we open/attach (through /proc/PID/root)
  std::shared_ptr<const ElfFile> elf;
};

// The allocator a running process calls: the executable if it defines
// malloc (static jemalloc, Rust/C++ binaries with their own), else a
// jemalloc/tcmalloc/mimalloc library, else libc.
Result<AllocatorLocation> find_allocator(const std::string& procfs, pid_t pid);

// Same decision for an executable that has not run yet (exec hold): its own
// symbols, then its DT_NEEDED libraries in the standard library directories.
Result<AllocatorLocation> find_allocator_for_exe(const std::string& exe_path);
// Same, with the libraries the dynamic loader will preload first
// (LD_PRELOAD, /etc/ld.so.preload; paths as they are opened): a preloaded
// allocator wins over libc's (not over the executable's own, which the
// loader searches first).
Result<AllocatorLocation> find_allocator_for_exe(const std::string& exe_path,
                                                 const std::vector<std::string>& preload);

// The libraries a process's dynamic loader preloads: the words of LD_PRELOAD
// in `environ` (NUL-separated, as /proc/PID/environ), then those of
// `ld_so_preload` (the file's text). Separators are spaces and colons, as
// ld.so(8) takes them. Names without a slash are looked up in the standard
// library directories under `root` (the process's root, "" for ours).
// Pure but for the directory lookup; names that resolve nowhere are dropped.
std::vector<std::string> preload_libraries(std::string_view environ, std::string_view ld_so_preload,
                                           const std::string& root);

// ---- symbolisation -----------------------------------------------------

// Turns user addresses of one process into "func+0x1a (libfoo.so.1)" using
// a snapshot of its maps. Build it once per report, not per address.
class Symbolizer {
 public:
  static Result<Symbolizer> for_pid(const std::string& procfs, pid_t pid);
  std::string symbolize(uint64_t addr) const;

 private:
  std::string procfs_;
  pid_t pid_ = 0;
  std::vector<Mapping> maps_;
};

}  // namespace memlens::elf
