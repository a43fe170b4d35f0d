// ELF symbol lookup for uprobes and symbolisation (libelf):
//  - symbol -> file offset (what a uprobe is attached at),
//  - a function's first bytes, and a prologue decoder that picks the first
//    instruction the kernel can emulate rather than single-step,
//  - which allocator a process uses (/proc/PID/maps, or an exe before it runs),
//  - address -> "function+0xoff" for leak-site stacks,
//  - data symbols read on demand, debug files found by build id, and a
//    linear x86-64 decoder for code that must be read rather than named.
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



// One USDT probe of a binary's .note.stapsdt (SystemTap's SDT notes, which
// every USDT producer emits: <sys/sdt.h>, the JVM, Node, CPython).
struct UsdtNote {
  std::string provider, name, args;
  uint64_t pc = 0, base = 0, semaphore = 0;  // link-time addresses (0: no semaphore)
};
inline constexpr uint32_t kNtStapsdt = 3;
// Decodes one note's descriptor. Pure, for tests and fuzzing; nullopt when
// it is short or its strings are not NUL-ended.
std::optional<UsdtNote> parse_stapsdt(std::span<const uint8_t> desc);

// One parsed ELF file: its function symbols (.symtab and .dynsym, defined
// only), PT_LOAD segments, build-id and DT_NEEDED entries. Immutable once
// built, so it is shared between threads through the cache.
class ElfFile {
 public:
  // Opens and parses `path`. Errc::not_found / permission / malformed.
  // With `only`, keeps just the functions whose names start with one of its
  // prefixes (none when it is empty): a look-up of a few names in a large
  // executable without indexing its every function.
  static Result<std::shared_ptr<const ElfFile>> open(const std::string& path,
                                                     const std::vector<std::string_view>* only = nullptr);

  const std::string& path() const { return path_; }
  const std::string& build_id() const { return build_id_; }  // hex, may be empty
  const std::vector<std::string>& needed() const { return needed_; }
  const std::vector<UsdtNote>& usdt() const { return usdt_; }
  bool has_usdt(std::string_view provider, std::string_view name) const;

  // Defined function (or ifunc) symbol by exact name; a versioned name
  // ("malloc@@GLIBC_2.2.5") matches its base name too.
  Result<Symbol> find(std::string_view name) const;
  bool defines(std::string_view name) const { return find(name).ok(); }
  // The defined function whose name comes first among those starting with
  // `prefix` (a mangled name without its parameter list, which changes
  // between versions: V8's Heap::CollectGarbage).
  Result<Symbol> find_prefix(std::string_view prefix) const;
  // The function containing `vaddr`, and the offset into it.
  std::optional<std::pair<Symbol, uint64_t>> symbolize(uint64_t vaddr) const;
  // File offset <-> virtual address through the PT_LOAD segments.
  std::optional<uint64_t> vaddr_to_offset(uint64_t vaddr) const;
  std::optional<uint64_t> offset_to_vaddr(uint64_t offset) const;
  // Up to `n` bytes of the file at `file_offset`.
  Result<std::vector<uint8_t>> read_bytes(uint64_t file_offset, std::size_t n) const;

  struct Segment { uint64_t vaddr, memsz, offset, filesz; uint32_t flags = 0; /* PF_R/W/X */ };
  const std::vector<Segment>& segments() const { return segments_; }
  // The PT_LOAD segment holding `vaddr` (in memory, .bss included).
  const Segment* segment_of(uint64_t vaddr) const;
  // Load bias of this file in a process, from that process's mappings of
  // it (`maps` filtered to this file): mapping start - segment vaddr.
  std::optional<uint64_t> load_bias(const std::vector<Mapping>& maps) const;

 private:
  ElfFile() = default;
  std::string path_;
  std::string build_id_;
  std::vector<std::string> needed_;
  std::vector<UsdtNote> usdt_;
  std::vector<Segment> segments_;
  // Function symbols: each name once in names_, entries sorted by vaddr
  // (the largest first at one address), indices sorted by name, and the
  // versioned names ("malloc@@GLIBC_2.2.5") by their base name.
  struct Entry {
    uint64_t vaddr, size, file_offset;
    uint32_t name_off, name_len;
  };
  struct Found {
    std::string_view name;
    uint64_t vaddr, size;
  };
  std::string names_;
  std::vector<Entry> syms_;
  std::vector<uint32_t> by_name_;
  std::vector<std::pair<std::string, uint32_t>> by_base_;
  void index_symbols(std::vector<Found> found);
  std::string_view name_of(const Entry& e) const;
  Symbol symbol(const Entry& e) const;
};

// Process-wide cache of parsed files, keyed by build-id (falls back to
// device+inode+mtime). Thread-safe. What of the function symbols is kept:
// all of them; none (USDT notes, segments, build id and DT_NEEDED only); or
// the allocator's entry points alone (whether the file is an allocator).
// A 100 MB executable's 75k function names cost memlensd ~10 MiB: only a
// file whose functions are named (probes, profiles) is opened with all.
// A partial open is answered from a full one when there is one.
enum class Keep { all, none, allocator };
Result<std::shared_ptr<const ElfFile>> open_cached(const std::string& path, Keep keep = Keep::all);

// Data symbols (STT_OBJECT, local ones included) of `path` by exact name,
// read on demand from .symtab and .dynsym: ElfFile keeps only functions,
// and few callers need data. Names not found are absent from the map.
Result<std::map<std::string, Symbol, std::less<>>> find_objects(const std::string& path,
                                                                const std::vector<std::string>& names);

// The separate debug file of a build id as distributions install it
// (Debian's *-dbg packages: <debug_dir>/.build-id/ab/cdef....debug), if it
// exists and carries that build id.
std::optional<std::string> debug_file_for(const std::string& debug_dir, const std::string& build_id);

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

// ---- x86-64 instruction decoding -----------------------------------------

// One decoded instruction: enough to walk compiled code linearly and to see
// which memory it names. Covers the one- and two-byte opcode maps, 0F38/0F3A
// and VEX; anything else (EVEX, 3DNow!, far forms) ends the walk.
struct Insn {
  uint64_t vaddr = 0;
  uint8_t len = 0;
  uint8_t map = 1;          // 1: one-byte opcodes, 2: 0F xx, 3: 0F 38 xx, 4: 0F 3A xx
  uint8_t opcode = 0;
  uint8_t mandatory = 0;    // last 66/F2/F3 prefix seen (SSE forms), 0 if none
  bool rex_w = false;
  bool vex = false;
  bool has_modrm = false;
  uint8_t mod = 0, reg = 0, rm = 0;  // ModRM fields, reg and rm widened by REX
  bool mem = false;         // has a memory operand
  bool rip_relative = false;
  int64_t disp = 0;         // of the memory operand
  uint64_t target = 0;      // rip-relative: the address named; rel branch: where it goes
  bool branch = false;      // jmp/jcc/call with a relative target
  bool call = false;
  bool ret = false;
};

// Decodes the instruction at code[at], which lives at `vaddr`. nullopt
// when the bytes run out or the encoding is one this decoder does not know.
std::optional<Insn> decode_insn(std::span<const uint8_t> code, std::size_t at, uint64_t vaddr);
// Decodes from the start of `code` (at `vaddr`) until the bytes end or an
// unknown encoding: a function body, when `code` is bounded by its size.
std::vector<Insn> decode_code(std::span<const uint8_t> code, uint64_t vaddr);

// ---- allocators --------------------------------------------------------

enum class AllocatorKind { glibc, jemalloc, tcmalloc, mimalloc, other };
const char* allocator_name(AllocatorKind k);

struct AllocatorLocation {
  AllocatorKind kind = AllocatorKind::other;
  std::string path;      // as the process sees it (maps path)
  std::string open_path; // what we open/attach (through /proc/PID/root)
  std::shared_ptr<const ElfFile> elf;
  // Before every entry point's name: "" for malloc/free, "_rjem_" for the
  // jemalloc Rust programs link through tikv-jemallocator (_rjem_mallocx,
  // _rjem_sdallocx, ...), which never goes through malloc or free.
  std::string prefix;
};

// The prefix of the allocator entry points `f` defines (see
// AllocatorLocation::prefix); nullopt when it defines none.
std::optional<std::string> allocator_prefix(const ElfFile& f);

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
  // The same address as parts: its mapping (nullptr when in none), the raw
  // symbol name (empty when unknown) and the file's build id.
  struct Frame {
    const Mapping* map = nullptr;
    std::string function;
    std::string build_id;
    std::string open_path;          // the file as memlensd opened it (through /proc/PID/root)
    std::optional<uint64_t> vaddr;  // the address in the file's link-time space
  };
  Frame resolve(uint64_t addr) const;

 private:
  std::string procfs_;
  pid_t pid_ = 0;
  std::vector<Mapping> maps_;
};

}  // namespace memlens::elf
