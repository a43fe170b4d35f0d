// glibc malloc's own books, read from outside the process.
//
// glibc keeps exact accounts of its heap in the process's memory: every
// arena's malloc_state (free lists, top chunk, system_mem) and mp_ (the
// mmapped chunks). Reading them with process_vm_readv costs the target
// nothing: no stop, no trap. Two halves:
//  - locating: where main_arena and mp_'s two counters are in a libc (or a
//    static executable), from debug symbols found by build id when they are
//    installed, else by decoding the code of the exported mallinfo2. The
//    layout the code uses is checked, never assumed from a version number.
//  - reading: a walker over an abstract RemoteMemory (tests build synthetic
//    images) that reproduces mallinfo2() from outside, and refuses to
//    report anything it could not make consistent.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "collectors/elf_symbols.h"
#include "daemon/result.h"

namespace memlens::glibc {

// ---- layout ---------------------------------------------------------------
// struct malloc_state and heap_info of glibc 2.26+ on x86_64 (checked against
// 2.36's DWARF). locate() only accepts a libc whose mallinfo2 code uses the
// same offsets (see kNext, kSystemMem), so a changed layout is refused.
namespace layout {
constexpr uint64_t kFastbins = 16;      // mfastbinptr fastbinsY[10]
constexpr int kNumFastbins = 10;
constexpr uint64_t kTop = 96;
constexpr uint64_t kLastRemainder = 104;
constexpr uint64_t kBins = 112;         // mchunkptr bins[254]: (fd, bk) of bins 1..127
constexpr int kNumBins = 128;           // NBINS; bin 0 does not exist
constexpr uint64_t kNext = 2160;
constexpr uint64_t kSystemMem = 2184;
constexpr uint64_t kStateSize = 2200;
constexpr uint64_t kHeapInfoSize = 48;  // heap_info: ar_ptr, prev, size, mprotect_size, pagesize, pad
constexpr uint64_t kHeapMax = 64ull << 20;  // HEAP_MAX_SIZE on 64-bit (no hugetlb tunable)
constexpr uint64_t kMinSize = 32;
constexpr uint64_t kAlign = 16;
constexpr int kNonContiguous = 2;       // malloc_state.flags bit
}  // namespace layout

// ---- locating -------------------------------------------------------------

enum class Source { debug_file, own_symbols, decoded };
const char* source_name(Source s);  // "debug_file", "own_symbols", "decoded"

// Where the books are in one ELF file, as link-time addresses (add the
// load bias of the process's mapping).
struct Location {
  uint64_t main_arena = 0;
  uint64_t n_mmaps = 0;      // &mp_.n_mmaps (int)
  uint64_t mmapped_mem = 0;  // &mp_.mmapped_mem (size_t)
  Source source = Source::decoded;
  std::string build_id;
  std::string detail;        // how it was found, for logs
};

// Finds the books in `f` (libc.so.6 or a static executable): symbols of the
// debug file for its build id under `debug_dir` (empty: do not look), or its
// own .symtab, else the decoded code of mallinfo2 and the function it calls
// per arena. Errors: Errc::not_found (no mallinfo2: not glibc, or stripped),
// Errc::unavailable (code or symbols do not match the layout above).
Result<Location> locate(const elf::ElfFile& f, const std::string& debug_dir);
// The decode path alone (what a host without debug symbols gets).
Result<Location> locate_decoded(const elf::ElfFile& f);
// locate() with debug_directory(), cached by build id (file path when
// there is none) and directory: results and Errc::unavailable verdicts, not
// failed reads. Thread-safe.
Result<Location> locate_cached(const elf::ElfFile& f);

// Where debug files are looked up by build id (default /usr/lib/debug; the
// daemon's --path.debug). An empty or missing directory makes locate_cached
// decode code, as on a host without *-dbg packages.
void set_debug_directory(std::string dir);
std::string debug_directory();

// ---- reading --------------------------------------------------------------

// Another process's memory, read in batches.
class RemoteMemory {
 public:
  struct Read {
    uint64_t addr = 0;
    std::size_t len = 0;
    void* out = nullptr;
    bool ok = false;  // set by read()
  };
  virtual ~RemoteMemory() = default;
  // Fills every read it can (ok = true). An unmapped range only fails its
  // own read; an error is returned when the process is unreadable as a
  // whole (gone: not_found; no permission: permission).
  virtual Result<void> read(std::span<Read> reads) = 0;
};

// process_vm_readv on a live process: up to 1024 ranges per system call.
class ProcessMemory : public RemoteMemory {
 public:
  explicit ProcessMemory(pid_t pid) : pid_(pid) {}
  Result<void> read(std::span<Read> reads) override;
  uint64_t syscalls() const { return syscalls_; }

 private:
  pid_t pid_;
  uint64_t syscalls_ = 0;
};

// What mallinfo2() returns (same names, same meaning), plus the arena count.
// Chunks held in tcache count as in use, as in mallinfo2: glibc marks them
// in use and keeps them off every free list.
struct Books {
  uint64_t arena = 0;     // bytes from the system for arenas (sum of system_mem)
  uint64_t ordblks = 0;   // free chunks in bins, plus each arena's top
  uint64_t smblks = 0;    // chunks in fastbins
  uint64_t hblks = 0;     // mmapped chunks (mp_.n_mmaps)
  uint64_t hblkhd = 0;    // bytes in mmapped chunks (mp_.mmapped_mem)
  uint64_t fsmblks = 0;   // bytes in fastbins
  uint64_t uordblks = 0;  // bytes in use in arenas
  uint64_t fordblks = 0;  // bytes free in arenas (bins, fastbins, tops)
  uint64_t keepcost = 0;  // main arena's top chunk
  uint64_t arenas = 0;
  bool operator==(const Books&) const = default;
};

struct Range {
  uint64_t start = 0, end = 0;
  bool contains(uint64_t a, uint64_t len) const { return a >= start && a <= end && len <= end - a; }
};

// Addresses in the target (load bias applied).
struct WalkInput {
  uint64_t main_arena = 0, n_mmaps = 0, mmapped_mem = 0;
  // The [heap] (brk) mapping, when the caller wants the location checked
  // against it: the main arena must lie in it and end where it ends
  // (system_mem 0 and no mapping for a process that never used brk).
  std::optional<std::optional<Range>> check_brk;
  // Writable anonymous mappings: where a non-contiguous main arena (brk
  // failed, mmap used instead) may keep chunks. Empty: refuse that case.
  std::vector<Range> anon;
};

struct WalkLimits {
  uint64_t max_chunks = 2'000'000;  // free chunks in one walk (beyond: Errc::full); ~1 us each
  uint32_t max_arenas = 4096;
  uint32_t max_heaps = 65536;       // heap_info records across thread arenas
  // Pages of the target kept during one walk. Locality is within a round
  // of reads, so a small cache does as well as a large one (4 MiB vs
  // 160 MiB on a 130 MB heap: same time).
  std::size_t cache_bytes = 4u << 20;
};

struct WalkStats {
  uint64_t chunks = 0;  // free chunks visited (fastbins and bins, re-reads included)
  uint64_t pages = 0;   // pages copied from the target
  uint64_t batches = 0; // RemoteMemory::read calls
  uint64_t list_retries = 0;  // free lists read again because they changed under the walk
  uint64_t arena_rereads = 0; // arenas whose top and system_mem were read again (they moved)
  uint64_t second_passes = 0; // passes over the short lists once the long ones were read
};

// The pages a walk copies from the target. Keep one and pass it to every
// walk: a fresh buffer costs memlensd a page fault per page copied, more
// than the copy itself. Grows to at most WalkLimits::cache_bytes.
struct WalkBuffer {
  std::vector<uint8_t> bytes;
};

// One walk: every arena (main_arena, then its next chain back to it), each
// thread arena's heaps, every bin and fastbin, then the header counters
// once more. Not atomic: each free list is read whole and consistent (links
// checked both ways), a list that changed under the walk is read again from
// its head, and lists are read at slightly different instants, so under
// churn a chunk moving between lists meanwhile may be counted in both or
// neither. Errors: Errc::malformed when what was read does not hold together
// (the target changed it under us: retry), Errc::unavailable when the
// location is not glibc's books after all, Errc::full over max_chunks, and
// RemoteMemory's errors (not_found, permission).
Result<Books> walk(RemoteMemory& mem, const WalkInput& in, const WalkLimits& limits, WalkStats* stats = nullptr,
                   WalkBuffer* buffer = nullptr);

// glibc's largebin_index for 64-bit, and the bin a free chunk of `size`
// belongs in (2..126): what the walker checks every chunk against.
int bin_index(uint64_t size);

}  // namespace memlens::glibc
