#include "collectors/glibc_heap.h"

#include <elf.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fmt/format.h>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

namespace memlens::glibc {

using elf::ElfFile;
using elf::Insn;

const char* source_name(Source s) {
  switch (s) {
    case Source::debug_file: return "debug_file";
    case Source::own_symbols: return "own_symbols";
    case Source::decoded: return "decoded";
  }
  return "decoded";
}

// ---- locating -------------------------------------------------------------

namespace {

// A function without a symbol (int_mallinfo is static) has no known size:
// decode this much of it, stopping earlier at an encoding we do not know.
constexpr uint64_t kCalleeBytes = 1536;
// Where mp_'s counters sit in struct malloc_par, by the struct's size as
// debug symbols give it: 136 bytes is 2.35+ (thp/hp fields, tcache), whose
// layout was checked against 2.36's DWARF. Other sizes rely on the code.
struct ParLayout { uint64_t size, n_mmaps, mmapped_mem; };
constexpr ParLayout kParLayouts[] = {{136, 60, 80}};

Error unavailable(std::string msg) { return make_error(Errc::unavailable, std::move(msg)); }

Result<std::vector<Insn>> decode_at(const ElfFile& f, uint64_t vaddr, uint64_t size) {
  auto off = f.vaddr_to_offset(vaddr);
  if (!off) return unavailable(fmt::format("{}: {:#x} is outside the file's segments", f.path(), vaddr));
  auto bytes = f.read_bytes(*off, size);
  if (!bytes) return bytes.error();
  return elf::decode_code(*bytes, vaddr);
}

bool in_writable(const ElfFile& f, uint64_t vaddr, uint64_t len) {
  const auto* s = f.segment_of(vaddr);
  return s && (s->flags & PF_W) && vaddr + len <= s->vaddr + s->memsz;
}

bool in_code(const ElfFile& f, uint64_t vaddr) {
  const auto* s = f.segment_of(vaddr);
  return s && (s->flags & PF_X);
}

// Bytes a RIP-relative instruction loads from memory into a register, 0
// for anything else (stores, lea, arithmetic on memory).
int load_width(const Insn& in) {
  if (!in.rip_relative || in.vex) return 0;
  if (in.map == 1) {
    if (in.opcode == 0x8b) return in.rex_w ? 8 : in.mandatory == 0x66 ? 2 : 4;  // mov
    if (in.opcode == 0x63 && in.rex_w) return 4;                                  // movslq
    return 0;
  }
  if (in.map == 2) {
    if (in.opcode == 0x12 || in.opcode == 0x16) return 8;                   // movlps/movhps m64
    if (in.opcode == 0x7e && in.mandatory == 0xf3) return 8;                // movq xmm, m64
    if (in.opcode == 0x6e && in.mandatory == 0x66) return in.rex_w ? 8 : 4; // movq/movd xmm, r/m
  }
  return 0;
}

// Whether the code reads a field at `disp` from a base register: the
// fingerprint of a struct layout (mallinfo2 follows ->next at +2160).
bool uses_offset(const std::vector<Insn>& code, int64_t disp) {
  return std::any_of(code.begin(), code.end(),
                     [&](const Insn& in) { return in.mem && !in.rip_relative && in.disp == disp; });
}

struct Decoded {
  uint64_t main_arena = 0, n_mmaps = 0, mmapped_mem = 0;
  std::string detail;
};

bool plausible_counters(const ElfFile& f, uint64_t main_arena, uint64_t n, uint64_t m) {
  auto outside_arena = [&](uint64_t a, uint64_t len) {
    return a + len <= main_arena || a >= main_arena + layout::kStateSize;
  };
  return n % 4 == 0 && m % 8 == 0 && m > n && m - n <= 64 && in_writable(f, n, 4) && in_writable(f, m, 8) &&
         outside_arena(n, 4) && outside_arena(m, 8);
}

// mallinfo2 in glibc 2.33+:
//   ar_ptr = &main_arena; do { lock; int_mallinfo(ar_ptr, &m); unlock;
//   ar_ptr = ar_ptr->next; } while (ar_ptr != &main_arena);
// and int_mallinfo, for the main arena only, copies mp_.n_mmaps and
// mp_.mmapped_mem. So: main_arena is the first RIP-relative lea of
// mallinfo2; the counters are the first 4- and 8-byte RIP-relative loads
// shortly after int_mallinfo compares its argument with &main_arena.
Result<Decoded> decode_books(const ElfFile& f) {
  auto sym = f.find("mallinfo2");
  if (!sym) return make_error(Errc::not_found, f.path() + ": no mallinfo2 (not glibc 2.33+, or stripped)");
  auto body = decode_at(f, sym->vaddr, sym->size ? sym->size : 512);
  if (!body) return body.error();
  Decoded d;
  auto lea = std::find_if(body->begin(), body->end(),
                          [](const Insn& in) { return in.map == 1 && in.opcode == 0x8d && in.rip_relative; });
  if (lea == body->end()) return unavailable(f.path() + ": mallinfo2 has no RIP-relative lea");
  d.main_arena = lea->target;
  if (!in_writable(f, d.main_arena, layout::kStateSize))
    return unavailable(fmt::format("{}: mallinfo2's first lea names {:#x}, not a writable {}-byte object",
                                   f.path(), d.main_arena, layout::kStateSize));
  if (!uses_offset(*body, static_cast<int64_t>(layout::kNext)))
    return unavailable(f.path() + ": mallinfo2 does not follow malloc_state.next at +2160: unknown layout");

  std::vector<std::vector<Insn>> candidates{*body};
  for (const auto& in : *body) {
    if (!in.call || !in_code(f, in.target) || candidates.size() > 8) continue;
    auto callee = decode_at(f, in.target, kCalleeBytes);
    if (callee) candidates.push_back(std::move(*callee));
  }
  for (const auto& code : candidates) {
    // system_mem at +2184: the per-arena function really is int_mallinfo.
    if (!uses_offset(code, static_cast<int64_t>(layout::kSystemMem))) continue;
    for (std::size_t i = 0; i < code.size(); ++i) {
      if (!code[i].rip_relative || code[i].target != d.main_arena) continue;
      uint64_t n = 0, m = 0;
      for (std::size_t j = i + 1; j < code.size() && code[j].vaddr < code[i].vaddr + 128; ++j) {
        const int w = load_width(code[j]);
        if (w == 4 && !n) n = code[j].target;
        if (w == 8 && !m) m = code[j].target;
      }
      if (n && m && plausible_counters(f, d.main_arena, n, m)) {
        d.n_mmaps = n;
        d.mmapped_mem = m;
        d.detail = fmt::format("decoded: mallinfo2 lea -> main_arena {:#x}; loads after &main_arena at {:#x} -> "
                               "mp_.n_mmaps {:#x}, mp_.mmapped_mem {:#x}",
                               d.main_arena, code[i].vaddr, n, m);
        return d;
      }
    }
  }
  return unavailable(f.path() + ": mp_.n_mmaps / mp_.mmapped_mem not found in mallinfo2 or its callees");
}

Result<Location> from_symbols(const ElfFile& f, const std::string& symfile, Source source) {
  auto objs = elf::find_objects(symfile, {"main_arena", "mp_"});
  if (!objs) return objs.error();
  auto ma = objs->find("main_arena");
  auto mp = objs->find("mp_");
  if (ma == objs->end() || mp == objs->end())
    return make_error(Errc::not_found, symfile + ": no main_arena / mp_ symbols");
  if (ma->second.size != layout::kStateSize)
    return unavailable(fmt::format("{}: main_arena is {} bytes, not the {}-byte malloc_state this reader knows",
                                   symfile, ma->second.size, layout::kStateSize));
  // The code must use the same layout (debug files may be mismatched, too).
  auto mi = f.find("mallinfo2");
  if (!mi) return make_error(Errc::not_found, f.path() + ": no mallinfo2 (not glibc 2.33+)");
  auto body = decode_at(f, mi->vaddr, mi->size ? mi->size : 512);
  if (!body) return body.error();
  if (!uses_offset(*body, static_cast<int64_t>(layout::kNext)))
    return unavailable(f.path() + ": mallinfo2 does not follow malloc_state.next at +2160: unknown layout");

  Location loc;
  loc.source = source;
  loc.build_id = f.build_id();
  loc.main_arena = ma->second.vaddr;
  const uint64_t par = mp->second.vaddr, par_size = mp->second.size;
  auto decoded = decode_books(f);
  for (const auto& l : kParLayouts) {
    if (l.size != par_size) continue;
    loc.n_mmaps = par + l.n_mmaps;
    loc.mmapped_mem = par + l.mmapped_mem;
  }
  if (!loc.n_mmaps) {
    // A malloc_par we have no layout for: the code's loads, if they land inside it.
    if (!decoded || decoded->n_mmaps < par || decoded->mmapped_mem + 8 > par + par_size)
      return unavailable(fmt::format("{}: mp_ is {} bytes, a malloc_par layout this reader does not know", symfile,
                                     par_size));
    loc.n_mmaps = decoded->n_mmaps;
    loc.mmapped_mem = decoded->mmapped_mem;
  }
  if (decoded && (decoded->main_arena != loc.main_arena || decoded->n_mmaps != loc.n_mmaps ||
                  decoded->mmapped_mem != loc.mmapped_mem))
    return unavailable(fmt::format("{}: symbols and code disagree (main_arena {:#x} vs {:#x})", symfile,
                                   loc.main_arena, decoded->main_arena));
  loc.detail = fmt::format("{} ({}): main_arena {:#x}, mp_ {:#x} ({} bytes){}", source_name(source), symfile,
                           loc.main_arena, par, par_size, decoded ? ", code agrees" : "");
  return loc;
}

std::mutex g_mu;
std::string g_debug_dir = "/usr/lib/debug";
std::map<std::string, Result<Location>> g_cache;

}  // namespace

Result<Location> locate_decoded(const ElfFile& f) {
  auto d = decode_books(f);
  if (!d) return d.error();
  Location loc;
  loc.main_arena = d->main_arena;
  loc.n_mmaps = d->n_mmaps;
  loc.mmapped_mem = d->mmapped_mem;
  loc.source = Source::decoded;
  loc.build_id = f.build_id();
  loc.detail = d->detail;
  return loc;
}

Result<Location> locate(const ElfFile& f, const std::string& debug_dir) {
  if (auto dbg = elf::debug_file_for(debug_dir, f.build_id())) {
    auto loc = from_symbols(f, *dbg, Source::debug_file);
    if (loc || loc.error().code == Errc::unavailable) return loc;
  }
  // A static executable (or an unstripped libc) names them itself.
  auto own = from_symbols(f, f.path(), Source::own_symbols);
  if (own || own.error().code == Errc::unavailable) return own;
  return locate_decoded(f);
}

void set_debug_directory(std::string dir) {
  std::lock_guard lock(g_mu);
  g_debug_dir = std::move(dir);
}

std::string debug_directory() {
  std::lock_guard lock(g_mu);
  return g_debug_dir;
}

Result<Location> locate_cached(const ElfFile& f) {
  const std::string dir = debug_directory();
  const std::string key = (f.build_id().empty() ? "path:" + f.path() : f.build_id()) + "|" + dir;
  {
    std::lock_guard lock(g_mu);
    if (auto it = g_cache.find(key); it != g_cache.end()) return it->second;
  }
  auto loc = locate(f, dir);
  // A verdict on the file is kept; a failed read (the process whose
  // /proc/PID/root named it exited meanwhile) is not.
  if (loc || loc.error().code == Errc::unavailable) {
    std::lock_guard lock(g_mu);
    g_cache.insert_or_assign(key, loc);
  }
  return loc;
}

// ---- reading: process_vm_readv -----------------------------------------------

Result<void> ProcessMemory::read(std::span<Read> reads) {
  constexpr std::size_t kMaxIov = 1024;  // UIO_MAXIOV
  std::array<iovec, kMaxIov> local{}, remote{};
  std::size_t i = 0;
  while (i < reads.size()) {
    const std::size_t n = std::min(kMaxIov, reads.size() - i);
    for (std::size_t k = 0; k < n; ++k) {
      local[k] = {reads[i + k].out, reads[i + k].len};
      remote[k] = {reinterpret_cast<void*>(reads[i + k].addr), reads[i + k].len};
    }
    ++syscalls_;
    const ssize_t got = process_vm_readv(pid_, local.data(), n, remote.data(), n, 0);
    if (got < 0) {
      const int err = errno;
      if (err == EFAULT) {  // the first range is not mapped: skip it
        reads[i++].ok = false;
        continue;
      }
      return make_error(errc_from_errno(err), fmt::format("process_vm_readv pid {}: {}", pid_, std::strerror(err)));
    }
    // Transfers stop at the first range that cannot be read whole.
    uint64_t left = static_cast<uint64_t>(got);
    std::size_t k = i;
    for (; k < i + n && left >= reads[k].len; ++k) {
      reads[k].ok = true;
      left -= reads[k].len;
    }
    if (k < i + n) reads[k++].ok = false;
    i = k;
  }
  return {};
}

// ---- reading: the walk ------------------------------------------------------------

int bin_index(uint64_t size) {
  if (size < 1024) return static_cast<int>(size >> 4);  // small bins, 16 bytes apart
  if ((size >> 6) <= 48) return static_cast<int>(48 + (size >> 6));
  if ((size >> 9) <= 20) return static_cast<int>(91 + (size >> 9));
  if ((size >> 12) <= 10) return static_cast<int>(110 + (size >> 12));
  if ((size >> 15) <= 4) return static_cast<int>(119 + (size >> 15));
  if ((size >> 18) <= 2) return static_cast<int>(124 + (size >> 18));
  return 126;
}

namespace {

constexpr uint64_t kPage = 4096;
// Read-ahead, as the kernel does it for files: a list whose next chunk is
// on the page right after (or before) the pages last read for it gets twice
// as many next time, up to kMaxAhead; any other miss reads one page. Copying
// a page costs about as much as copying 24 bytes (pinning the page is the
// cost), so a wider read only pays for lists laid out in address order,
// like chunks freed one after another into the unsorted bin. Measured on a
// 100k-chunk unsorted bin: 300 ms with one page a read, 240 with 8.
constexpr int64_t kMaxAhead = 256;
constexpr uint64_t kIsMmapped = 2, kNonMainArena = 4, kSizeBits = 7;

uint64_t u64_at(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

Error inconsistent(std::string msg) { return make_error(Errc::malformed, std::move(msg)); }

// User space ends at 2^47 (2^56 with five-level page tables): no mapping a
// target can have lies above, and a range that wraps at 2^64 is none.
constexpr uint64_t kUserTop = 1ull << 56;
bool user_range(uint64_t addr, std::size_t len) { return len > 0 && addr < kUserTop && len <= kUserTop - addr; }

// Pages of the target copied during one walk: a free list often runs
// through neighbouring chunks, so one page serves many steps, and the
// pages every list needs next are fetched together in one batch.
class PageCache {
 public:
  enum class Got { hit, miss, bad };
  PageCache(RemoteMemory& mem, std::size_t max_pages, WalkStats& st, std::vector<uint8_t>& store)
      : mem_(mem), max_pages_(max_pages), st_(st), store_(store) {}

  // The generation the next fetch gives its pages.
  uint32_t next_generation() const { return gen_ + 1; }

  // Copies [addr, addr+len) if every page of it is cached, fetched in
  // generation `min_gen` or later.
  Got get(uint64_t addr, void* out, std::size_t len, uint32_t min_gen = 0) {
    // A pointer read from the target may be anything: a range past user
    // space (or wrapping at 2^64) is not mapped, whatever the cache holds.
    if (!user_range(addr, len)) return Got::bad;
    const uint64_t first = addr / kPage, last = (addr + len - 1) / kPage;
    bool missing = false;
    for (uint64_t p = first; p <= last; ++p) {
      if (!fresh(p, min_gen)) missing = true;
      else if (index_.find(p)->second.slot == kBadSlot) return Got::bad;
    }
    if (missing) return Got::miss;
    auto* dst = static_cast<uint8_t*>(out);
    while (len) {
      const uint64_t p = addr / kPage, off = addr % kPage;
      const std::size_t n = std::min<std::size_t>(len, kPage - off);
      std::memcpy(dst, &store_[static_cast<std::size_t>(index_[p].slot) * kPage + off], n);
      dst += n;
      addr += n;
      len -= n;
    }
    return Got::hit;
  }

  // Asks for what get() missed, and `ahead` pages from its first missing
  // page on (negative: before it), for the next fetch.
  void want(uint64_t addr, std::size_t len, uint32_t min_gen, int64_t ahead) {
    if (!user_range(addr, len)) return;
    const uint64_t first = addr / kPage, last = (addr + len - 1) / kPage;
    std::optional<uint64_t> missing;
    for (uint64_t p = first; p <= last; ++p)
      if (!fresh(p, min_gen)) {
        wanted_.push_back(p);
        if (!missing) missing = p;
      }
    if (!missing) return;
    for (int64_t k = 1; k < std::abs(ahead); ++k) {
      const uint64_t p = ahead > 0 ? *missing + static_cast<uint64_t>(k) : *missing - static_cast<uint64_t>(k);
      if (!fresh(p, min_gen)) wanted_.push_back(p);
    }
  }

  bool wanting() const { return !wanted_.empty(); }

  // Reads every wanted page (again, for pages too old), runs of
  // neighbours as one range.
  Result<void> fetch() {
    ++gen_;
    std::sort(wanted_.begin(), wanted_.end());
    wanted_.erase(std::unique(wanted_.begin(), wanted_.end()), wanted_.end());
    std::size_t fresh = 0;
    for (uint64_t p : wanted_) fresh += index_.count(p) ? 0 : 1;
    if (used_ + fresh > max_pages_) {
      index_.clear();  // over budget: start again (pages are re-read as needed)
      used_ = 0;
    }
    // A page read again keeps its slot; a new one takes the next.
    std::vector<uint32_t> slots(wanted_.size());
    for (std::size_t i = 0; i < wanted_.size(); ++i) {
      auto it = index_.find(wanted_[i]);
      slots[i] = it != index_.end() && it->second.slot != kBadSlot ? it->second.slot : static_cast<uint32_t>(used_++);
    }
    if (store_.size() < used_ * kPage) store_.resize(used_ * kPage);
    std::vector<RemoteMemory::Read> reads;
    std::vector<std::pair<std::size_t, std::size_t>> runs;  // (first wanted index, pages)
    for (std::size_t i = 0; i < wanted_.size();) {
      std::size_t j = i + 1;
      while (j < wanted_.size() && wanted_[j] == wanted_[j - 1] + 1 && slots[j] == slots[j - 1] + 1 && j - i < kMaxAhead)
        ++j;
      reads.push_back({wanted_[i] * kPage, (j - i) * kPage, &store_[std::size_t{slots[i]} * kPage], false});
      runs.emplace_back(i, j - i);
      i = j;
    }
    ++st_.batches;
    if (auto r = mem_.read(reads); !r) return r;
    // A run that failed: page by page, to tell the readable ones apart.
    std::vector<RemoteMemory::Read> retry;
    std::vector<std::size_t> retry_of;
    for (std::size_t r = 0; r < reads.size(); ++r) {
      const auto [i, len] = runs[r];
      for (std::size_t k = i; k < i + len; ++k) {
        if (reads[r].ok) {
          index_[wanted_[k]] = {slots[k], gen_};
        } else {
          retry.push_back({wanted_[k] * kPage, kPage, &store_[std::size_t{slots[k]} * kPage], false});
          retry_of.push_back(k);
        }
      }
      st_.pages += reads[r].ok ? len : 0;
    }
    if (!retry.empty()) {
      ++st_.batches;
      if (auto r = mem_.read(retry); !r) return r;
      for (std::size_t x = 0; x < retry.size(); ++x) {
        const std::size_t k = retry_of[x];
        index_[wanted_[k]] = {retry[x].ok ? slots[k] : kBadSlot, gen_};
        st_.pages += retry[x].ok ? 1 : 0;
      }
    }
    wanted_.clear();
    return {};
  }

 private:
  static constexpr uint32_t kBadSlot = ~uint32_t{0};
  struct Entry {
    uint32_t slot = 0;  // kBadSlot: not mapped
    uint32_t gen = 0;   // fetch that read it
  };
  RemoteMemory& mem_;
  std::size_t max_pages_;
  WalkStats& st_;
  std::vector<uint8_t>& store_;  // slots of kPage bytes; kept by the caller across walks
  std::size_t used_ = 0;         // slots in use
  uint32_t gen_ = 0;
  std::unordered_map<uint64_t, Entry> index_;  // page number -> slot
  std::vector<uint64_t> wanted_;

  bool fresh(uint64_t page, uint32_t min_gen) const {
    auto it = index_.find(page);
    return it != index_.end() && it->second.gen >= min_gen;
  }
};

struct Arena {
  uint64_t addr = 0;
  bool main = false;
  int flags = 0;
  uint64_t top = 0, top_size = 0, system_mem = 0;
  std::array<uint64_t, layout::kNumFastbins> fast{};
  std::array<uint64_t, layout::kNumBins> bin_fd{}, bin_bk{};  // of bins 1..127
  std::vector<Range> regions;  // where its chunks may be
  // Sums, as int_mallinfo keeps them.
  uint64_t avail = 0, nblocks = 1, nfast = 0, fastavail = 0;
  uint64_t steps = 0, max_steps = 0;

  uint64_t bin_head(int i) const { return addr + layout::kBins + static_cast<uint64_t>(i - 1) * 16 - 16; }
  bool holds(uint64_t p, uint64_t size) const {
    return std::any_of(regions.begin(), regions.end(), [&](const Range& r) { return r.contains(p, size); });
  }
};

void parse_header(Arena& a, const uint8_t* h) {
  int flags;
  std::memcpy(&flags, h + 4, 4);
  a.flags = flags;
  for (int i = 0; i < layout::kNumFastbins; ++i) a.fast[static_cast<std::size_t>(i)] = u64_at(h + layout::kFastbins + 8 * i);
  a.top = u64_at(h + layout::kTop);
  for (int i = 1; i < layout::kNumBins; ++i) {
    a.bin_fd[static_cast<std::size_t>(i)] = u64_at(h + layout::kBins + 16 * (i - 1));
    a.bin_bk[static_cast<std::size_t>(i)] = u64_at(h + layout::kBins + 16 * (i - 1) + 8);
  }
  a.system_mem = u64_at(h + layout::kSystemMem);
}

// One free list being walked: a bin (backwards through bk, as
// int_mallinfo does) or a fastbin (forwards through the mangled fd). The
// target runs while we read: a list whose links do not hold is read again
// from its head, through pages fetched after that head, a few times before
// the whole walk is called inconsistent.
struct Cursor {
  std::size_t arena = 0;
  int bin = 0;          // 1..127, or -1 - fastbin index
  uint64_t head = 0;    // bin header address (bins)
  uint64_t prev = 0;    // the node we came from: its fd must point back
  uint64_t cur = 0;
  bool done = false;
  // Reads made straight from the target: the list's head (fastbinsY[i], or
  // the bin header's fd and bk) to start again, and the header's fd once a
  // bin's bk walk is back at it (it must name the last chunk seen).
  enum class Need { nothing, head, tail } need = Need::nothing;
  std::array<uint64_t, 2> direct{};
  int restarts = 0;
  uint32_t min_gen = 0;  // cached pages older than this are too old for it
  // Read-ahead: the pages last asked for, [ra_lo, ra_hi), and how many.
  uint64_t ra_lo = 0, ra_hi = 0;
  int64_t ra = 1;
  // This list's own sums, added to its arena once it is complete.
  uint64_t count = 0, bytes = 0, steps = 0;

  bool fast() const { return bin < 0; }
  void restart(uint32_t gen) {
    ++restarts;
    need = Need::head;
    min_gen = gen;
    count = bytes = steps = 0;
  }
};

// Lists longer than this are not read a second time (see walk_lists).
constexpr uint64_t kLongList = 32;

// Times one list is read again before the walk gives up on it. A long list
// that many operations of the target touch (a busy large bin under churn
// of varied sizes) rarely holds still for a whole read: more tries only
// cost more.
constexpr int kListRetries = 4;

class Walker {
 public:
  Walker(RemoteMemory& mem, const WalkInput& in, const WalkLimits& lim, WalkStats& st, std::vector<uint8_t>& store)
      : mem_(mem), in_(in), lim_(lim), st_(st),
        cache_(mem, std::max<std::size_t>(lim.cache_bytes / kPage, 64), st, store) {}

  Result<Books> run() {
    if (auto r = read_arenas(); !r) return r.error();
    if (auto r = walk_lists(); !r) return r.error();
    return finish();
  }

 private:
  Result<void> read_one(uint64_t addr, void* out, std::size_t len, const char* what) {
    RemoteMemory::Read rd{addr, len, out, false};
    ++st_.batches;
    if (auto r = mem_.read(std::span(&rd, 1)); !r) return r;
    if (!rd.ok) return inconsistent(fmt::format("{} at {:#x} is not readable", what, addr));
    return {};
  }

  Result<void> read_arenas() {
    // The main arena and mp_'s counters in one batch.
    std::vector<uint8_t> hdr(layout::kStateSize);
    int32_t n_mmaps = 0;
    uint64_t mmapped = 0;
    std::array<RemoteMemory::Read, 3> rd{{{in_.main_arena, hdr.size(), hdr.data(), false},
                                          {in_.n_mmaps, 4, &n_mmaps, false},
                                          {in_.mmapped_mem, 8, &mmapped, false}}};
    ++st_.batches;
    if (auto r = mem_.read(rd); !r) return r;
    if (!rd[0].ok || !rd[1].ok || !rd[2].ok)
      return unavailable(fmt::format("main_arena {:#x} or mp_ counters not readable", in_.main_arena));
    if (mmapped % kPage != 0)
      return unavailable(fmt::format("mp_.mmapped_mem {} is not a whole number of pages: not glibc's mp_", mmapped));
    if (n_mmaps < 0 || mmapped < static_cast<uint64_t>(n_mmaps) * kPage)
      return inconsistent(fmt::format("mp_: {} mmapped chunks in {} bytes", n_mmaps, mmapped));
    n_mmaps_ = static_cast<uint64_t>(n_mmaps);
    mmapped_ = mmapped;

    Arena m;
    m.addr = in_.main_arena;
    m.main = true;
    parse_header(m, hdr.data());
    if (auto r = main_regions(m, hdr.data()); !r) return r;
    arenas_.push_back(std::move(m));

    uint64_t next = u64_at(hdr.data() + layout::kNext);
    while (next != in_.main_arena) {
      if (next == 0 || next % 8 != 0)
        return unavailable(fmt::format("main_arena.next is {:#x}: not an arena list", next));
      if (arenas_.size() >= lim_.max_arenas)
        return unavailable(fmt::format("the arena list does not return to main_arena within {} arenas",
                                       lim_.max_arenas));
      for (const auto& a : arenas_)
        if (a.addr == next) return unavailable(fmt::format("the arena list loops at {:#x}, not through main_arena", next));
      Arena a;
      a.addr = next;
      if (auto r = read_one(next, hdr.data(), hdr.size(), "arena"); !r)
        return r.error().code == Errc::malformed ? unavailable(r.error().message) : r.error();
      parse_header(a, hdr.data());
      if (auto r = thread_regions(a); !r) return r;
      next = u64_at(hdr.data() + layout::kNext);
      arenas_.push_back(std::move(a));
    }
    return {};
  }

  // Top chunk's size; the top of an arena that never allocated is
  // bin_at(1) (whose "size" is last_remainder) or, before malloc ran, 0.
  Result<uint64_t> top_size(const Arena& a, const uint8_t* hdr) {
    if (a.top == 0) return uint64_t{0};
    if (a.top == a.bin_head(1)) return u64_at(hdr + layout::kLastRemainder) & ~kSizeBits;
    uint64_t raw = 0;
    if (auto r = read_one(a.top + 8, &raw, 8, "top chunk"); !r) return r.error();
    return raw & ~kSizeBits;
  }

  Result<void> main_regions(Arena& m, const uint8_t* hdr) {
    auto ts = top_size(m, hdr);
    if (!ts) return ts.error();
    m.top_size = *ts;
    if (m.system_mem == 0) {
      // Never took memory: nothing but the initial top.
      if (m.top != 0 && m.top != m.bin_head(1))
        return unavailable(fmt::format("main_arena: top {:#x} with system_mem 0", m.top));
      m.top_size = 0;
      return {};
    }
    if (m.top % layout::kAlign || m.top_size % layout::kAlign || m.top_size > m.system_mem)
      return inconsistent(fmt::format("main_arena: top {:#x} of {} bytes in {} bytes", m.top, m.top_size, m.system_mem));
    if (m.flags & layout::kNonContiguous) {
      if (in_.anon.empty()) return unavailable("main_arena is non-contiguous (brk failed): not supported");
      m.regions = in_.anon;
    } else {
      // Contiguous: from the first sbrk to the end of top.
      const uint64_t end = m.top + m.top_size;
      m.regions.push_back({end - m.system_mem, end});
    }
    if (in_.check_brk && !(m.flags & layout::kNonContiguous)) {
      const auto& brk = *in_.check_brk;
      const Range r = m.regions.front();
      // Its start never moves; its end may have grown since maps was read.
      // A range that overlaps the mapping but starts before it was read
      // while the process took memory from top (the header and the top
      // chunk's size are two reads): read again, not a layout refused.
      if (brk && r.start < brk->start && r.end > brk->start)
        return inconsistent(fmt::format("main_arena [{:#x}, {:#x}) straddles the start of [heap] at {:#x} (read while "
                                        "top moved)",
                                        r.start, r.end, brk->start));
      if (!brk || r.start < brk->start || r.start >= brk->end)
        return unavailable(fmt::format("main_arena [{:#x}, {:#x}) is not the [heap] mapping {}", r.start, r.end,
                                       brk ? fmt::format("[{:#x}, {:#x})", brk->start, brk->end) : "(none)"));
    }
    if (!m.holds(m.top, m.top_size)) return inconsistent("main_arena: top outside the arena");
    m.max_steps = m.system_mem / layout::kMinSize + 1;
    return {};
  }

  // A thread arena lives in its first heap, right after heap_info; its top
  // is in its latest heap; heaps are HEAP_MAX_SIZE-aligned and chained
  // back through prev, and their sizes add up to system_mem.
  Result<void> thread_regions(Arena& a) {
    const uint64_t first = a.addr - layout::kHeapInfoSize;
    if (first % layout::kHeapMax != 0)
      return unavailable(fmt::format("arena {:#x} does not follow a {} MiB-aligned heap_info", a.addr,
                                     layout::kHeapMax >> 20));
    if (a.top % layout::kAlign || a.top == 0) return inconsistent(fmt::format("arena {:#x}: top {:#x}", a.addr, a.top));
    uint64_t raw = 0;
    if (auto r = read_one(a.top + 8, &raw, 8, "top chunk"); !r) return r;
    a.top_size = raw & ~kSizeBits;
    uint64_t h = a.top & ~(layout::kHeapMax - 1), total = 0;
    for (uint32_t n = 0;; ++n) {
      if (n >= lim_.max_heaps) return inconsistent(fmt::format("arena {:#x}: heap chain too long", a.addr));
      std::array<uint64_t, 6> info{};
      if (auto r = read_one(h, info.data(), layout::kHeapInfoSize, "heap_info"); !r) return r;
      const uint64_t ar_ptr = info[0], prev = info[1], size = info[2];
      if (ar_ptr != a.addr)
        return n == 0 ? unavailable(fmt::format("heap {:#x} of arena {:#x} names arena {:#x}", h, a.addr, ar_ptr))
                      : inconsistent(fmt::format("heap {:#x} names arena {:#x}", h, ar_ptr));
      if (size > layout::kHeapMax || size < layout::kHeapInfoSize)
        return inconsistent(fmt::format("heap {:#x}: size {}", h, size));
      if (n == 0 && a.top + a.top_size != h + size)
        return inconsistent(fmt::format("arena {:#x}: top does not end its heap", a.addr));
      a.regions.push_back({h, h + size});
      total += size;
      if (prev == 0) {
        if (h != first) return inconsistent(fmt::format("arena {:#x}: heap chain ends at {:#x}", a.addr, h));
        break;
      }
      if (prev % layout::kHeapMax != 0) return inconsistent(fmt::format("heap {:#x}: prev {:#x}", h, prev));
      h = prev;
    }
    if (total != a.system_mem)
      return inconsistent(fmt::format("arena {:#x}: heaps hold {} bytes, system_mem says {}", a.addr, total, a.system_mem));
    a.max_steps = a.system_mem / layout::kMinSize + 1;
    return {};
  }

  // Every list of every arena, in step (one batch of reads a round), then
  // a second pass: the lists a round or two read whole are over early,
  // the long ones late, and chunks flow between them meanwhile (a large
  // chunk split by malloc leaves its remainder in the unsorted bin). So
  // every list but the long ones is read again, from a fresh copy of the
  // arena headers, once the long ones are done: all lists end about
  // together. (Under churn of varied sizes this took the published in-use
  // from ~0.1 % above anything mallinfo2 saw to within its range.)
  Result<void> walk_lists() {
    std::vector<Cursor> first;
    for (std::size_t ai = 0; ai < arenas_.size(); ++ai) add_cursors(ai, first, 0, nullptr);
    if (auto r = run(first); !r) return r;

    std::vector<std::vector<uint8_t>> hdrs(arenas_.size(), std::vector<uint8_t>(layout::kStateSize));
    std::vector<RemoteMemory::Read> rd;
    for (std::size_t ai = 0; ai < arenas_.size(); ++ai) rd.push_back({arenas_[ai].addr, layout::kStateSize, hdrs[ai].data(), false});
    ++st_.batches;
    if (auto r = mem_.read(rd); !r) return r;
    std::vector<std::set<int>> long_lists(arenas_.size());
    for (auto& c : first) {
      if (!c.fast() && c.count > kLongList) {
        long_lists[c.arena].insert(c.bin);
        continue;
      }
      uncount(c);
    }
    std::vector<Cursor> second;
    for (std::size_t ai = 0; ai < arenas_.size(); ++ai) {
      if (!rd[ai].ok) return inconsistent("arena header no longer readable");
      Arena fresh = arenas_[ai];
      parse_header(fresh, hdrs[ai].data());
      arenas_[ai].fast = fresh.fast;
      arenas_[ai].bin_fd = fresh.bin_fd;
      arenas_[ai].bin_bk = fresh.bin_bk;
      add_cursors(ai, second, cache_.next_generation(), &long_lists[ai]);
    }
    ++st_.second_passes;
    return run(second);
  }

  // Cursors for an arena's lists as its header copy has them, but those in
  // `skip`; pages older than `min_gen` are too old for them.
  void add_cursors(std::size_t ai, std::vector<Cursor>& out, uint32_t min_gen, const std::set<int>* skip) {
    const Arena& a = arenas_[ai];
    for (int i = 0; i < layout::kNumFastbins; ++i)
      if (const uint64_t p = a.fast[static_cast<std::size_t>(i)]) {
        Cursor c;
        c.arena = ai;
        c.bin = -1 - i;
        c.cur = p;
        c.min_gen = min_gen;
        out.push_back(c);
      }
    if (a.top == 0) return;  // malloc never initialised: bins are not lists yet
    for (int i = 1; i < layout::kNumBins; ++i) {
      const uint64_t head = a.bin_head(i), fd = a.bin_fd[static_cast<std::size_t>(i)],
                     bk = a.bin_bk[static_cast<std::size_t>(i)];
      if ((bk == head && fd == head) || (skip && skip->count(i))) continue;
      Cursor c;
      c.arena = ai;
      c.bin = i;
      c.head = c.prev = head;
      c.cur = bk;
      c.min_gen = min_gen;
      if (bk == head || fd == head) c.restart(min_gen);  // copied mid-update
      out.push_back(c);
    }
  }

  Result<void> run(std::vector<Cursor>& cursors) {
    std::vector<Cursor*> active;
    for (auto& c : cursors) active.push_back(&c);
    std::vector<Cursor*> waiting;  // cursors with a direct read queued
    std::vector<RemoteMemory::Read> direct;
    while (!active.empty()) {
      waiting.clear();
      direct.clear();
      bool sprinted = false;  // a sprint fetches the pages others wanted, too
      for (Cursor* c : active) {
        if (auto r = advance(*c); !r) return r;
        // A list that changed under us is read again on its own, in rounds
        // of one read each: in step with the others, a round costs hundreds
        // of microseconds, and a busy list changes faster than that.
        if (!c->done && c->restarts > 0) {
          sprinted = true;
          if (auto r = sprint(*c); !r) return r;
        }
        if (c->done || c->need == Cursor::Need::nothing) continue;
        direct.push_back(head_read(*c));
        waiting.push_back(c);
      }
      active.erase(std::remove_if(active.begin(), active.end(), [](const Cursor* c) { return c->done; }),
                   active.end());
      if (active.empty()) break;
      if (!cache_.wanting() && direct.empty() && !sprinted) return inconsistent("walk made no progress");  // a guard
      if (cache_.wanting())
        if (auto r = cache_.fetch(); !r) return r;
      if (direct.empty()) continue;
      ++st_.batches;
      if (auto r = mem_.read(direct); !r) return r;
      for (std::size_t i = 0; i < direct.size(); ++i)
        if (auto r = apply_direct(*waiting[i], direct[i].ok); !r) return r;
    }
    return {};
  }

  // What a direct read of a list's head gives: a fresh start, or the end
  // of a bin's walk (the header's fd must name the last chunk seen).
  Result<void> apply_direct(Cursor& c, bool ok) {
    const auto need = std::exchange(c.need, Cursor::Need::nothing);
    if (!ok) return fail(c, "its head is not readable");
    if (need == Cursor::Need::tail) {
      if (c.direct[0] != c.prev) return fail(c, "the list changed while read");
      complete(c);
    } else if (c.fast()) {
      c.cur = c.direct[0];
    } else if ((c.direct[0] == c.head) != (c.direct[1] == c.head)) {
      return fail(c, "its header is being updated");
    } else {
      c.prev = c.head;
      c.cur = c.direct[1];
    }
    return {};
  }

  // Reads one list to its end alone (see walk_lists).
  Result<void> sprint(Cursor& c) {
    while (!c.done) {
      if (c.need != Cursor::Need::nothing) {
        RemoteMemory::Read rd = head_read(c);
        ++st_.batches;
        if (auto r = mem_.read(std::span(&rd, 1)); !r) return r;
        if (auto r = apply_direct(c, rd.ok); !r) return r;
        continue;
      }
      if (auto r = advance(c); !r) return r;
      if (c.done || c.need != Cursor::Need::nothing) continue;
      if (!cache_.wanting()) return inconsistent("walk made no progress");  // a guard
      if (auto r = cache_.fetch(); !r) return r;
    }
    return {};
  }

  RemoteMemory::Read head_read(Cursor& c) const {
    if (c.fast())
      return {arenas_[c.arena].addr + layout::kFastbins + 8 * static_cast<uint64_t>(-1 - c.bin), 8, c.direct.data(), false};
    return {c.head + 16, c.need == Cursor::Need::head ? 16u : 8u, c.direct.data(), false};
  }

  void complete(Cursor& c) {
    Arena& a = arenas_[c.arena];
    c.done = true;
    a.steps += c.steps;
    if (c.fast()) {
      a.nfast += c.count;
      a.fastavail += c.bytes;
    } else {
      a.nblocks += c.count;
      a.avail += c.bytes;
    }
  }

  // Takes back what complete() added (the list is read again).
  void uncount(const Cursor& c) {
    Arena& a = arenas_[c.arena];
    a.steps -= c.steps;
    if (c.fast()) {
      a.nfast -= c.count;
      a.fastavail -= c.bytes;
    } else {
      a.nblocks -= c.count;
      a.avail -= c.bytes;
    }
  }

  // A list that did not hold together: read it again, or give up.
  Result<void> fail(Cursor& c, const std::string& why) {
    if (c.restarts >= kListRetries)
      return inconsistent(fmt::format("{} {} of arena {:#x} changed under {} reads: {}", c.fast() ? "fastbin" : "bin",
                                      c.fast() ? -1 - c.bin : c.bin, arenas_[c.arena].addr, kListRetries + 1, why));
    ++st_.list_retries;
    // Pages fetched after its head is read again (the sprint reads the
    // head before it fetches anything).
    c.restart(cache_.next_generation());
    return {};
  }

  // How many pages to read for the list's next chunk, and which way.
  int64_t read_ahead(Cursor& c) const {
    const uint64_t p = (c.cur + 8) / kPage;
    if (c.ra_hi && p == c.ra_hi) {
      c.ra = std::min(std::abs(c.ra) * 2, kMaxAhead);
    } else if (c.ra_lo && p + 1 == c.ra_lo) {
      c.ra = -std::min(std::abs(c.ra) * 2, kMaxAhead);
    } else if (p < c.ra_lo || p >= c.ra_hi) {
      c.ra = 1;
    }
    c.ra_lo = c.ra > 0 ? p : p + 1 - static_cast<uint64_t>(-c.ra);
    c.ra_hi = c.ra > 0 ? p + static_cast<uint64_t>(c.ra) : p + 1;
    return c.ra;
  }

  // Steps through a list as far as what has been read allows.
  Result<void> advance(Cursor& c) {
    Arena& a = arenas_[c.arena];
    const bool fast = c.fast();
    while (!c.done && c.need == Cursor::Need::nothing) {
      if (fast && c.cur == 0) {
        complete(c);
        break;
      }
      if (!fast && c.cur == c.head) {
        // Back at the header: its fd, read now, must name the last chunk seen.
        c.need = Cursor::Need::tail;
        break;
      }
      if (c.cur % layout::kAlign) return fail(c, fmt::format("misaligned chunk {:#x}", c.cur));
      std::array<uint64_t, 3> node{};  // size, fd, bk
      const std::size_t len = fast ? 16 : 24;
      switch (cache_.get(c.cur + 8, node.data(), len, c.min_gen)) {
        case PageCache::Got::miss:
          cache_.want(c.cur + 8, len, c.min_gen, read_ahead(c));
          return {};
        case PageCache::Got::bad: return fail(c, fmt::format("chunk {:#x} is not mapped", c.cur));
        case PageCache::Got::hit: break;
      }
      const uint64_t size = node[0] & ~kSizeBits;
      // The non-main-arena bit is kept by fastbin chunks (freed as they
      // were), not by chunks that went through consolidation into bins.
      if (size < layout::kMinSize || size % layout::kAlign || (node[0] & kIsMmapped) ||
          (fast && ((node[0] & kNonMainArena) != 0) == a.main) || !a.holds(c.cur, size))
        return fail(c, fmt::format("chunk {:#x}: size field {:#x} is not a free chunk of this arena", c.cur, node[0]));
      if (++st_.chunks > lim_.max_chunks)
        return make_error(Errc::full, fmt::format("more than {} free chunks", lim_.max_chunks));
      // Free chunks of one arena are disjoint and at least kMinSize: a list
      // longer than that is a cycle.
      if (++c.steps + a.steps > a.max_steps) return fail(c, "more free chunks than the arena can hold (a cycle)");
      if (fast) {
        const int idx = -1 - c.bin;
        if (static_cast<int>(size >> 4) - 2 != idx)
          return fail(c, fmt::format("chunk {:#x} of {} bytes in fastbin {}", c.cur, size, idx));
        ++c.count;
        c.bytes += size;
        // Safe-linking (2.32+): fd is stored xor'ed with its own address >> 12.
        c.cur = ((c.cur + 16) >> 12) ^ node[1];
        continue;
      }
      if (node[1] != c.prev)
        return fail(c, fmt::format("chunk {:#x}'s fd is {:#x}, not {:#x}", c.cur, node[1], c.prev));
      if (c.bin >= 2 && c.bin < layout::kNumBins - 1 && bin_index(size) != c.bin)
        return fail(c, fmt::format("chunk {:#x} of {} bytes in bin {}", c.cur, size, c.bin));
      ++c.count;
      c.bytes += size;
      c.prev = c.cur;
      c.cur = node[2];
    }
    return {};
  }

  // Sums as int_mallinfo makes them. The counters that move with every
  // sbrk, trim or mmap (system_mem, top, mp_'s) are read once more at the
  // end, together, and those are the ones used: a heap that grew or shrank
  // during the walk did so through its top.
  Result<Books> finish() {
    std::vector<uint64_t> sys(arenas_.size());
    int32_t n_mmaps = 0;
    uint64_t mmapped = 0;
    std::vector<RemoteMemory::Read> rd;
    for (std::size_t i = 0; i < arenas_.size(); ++i) rd.push_back({arenas_[i].addr + layout::kSystemMem, 8, &sys[i], false});
    rd.push_back({in_.n_mmaps, 4, &n_mmaps, false});
    rd.push_back({in_.mmapped_mem, 8, &mmapped, false});
    ++st_.batches;
    if (auto r = mem_.read(rd); !r) return r.error();
    for (const auto& x : rd)
      if (!x.ok) return inconsistent("arena counters no longer readable");
    if (n_mmaps < 0 || mmapped % kPage || mmapped < static_cast<uint64_t>(n_mmaps) * kPage)
      return inconsistent(fmt::format("mp_: {} mmapped chunks in {} bytes", n_mmaps, mmapped));
    for (std::size_t i = 0; i < arenas_.size(); ++i) {
      if (sys[i] == arenas_[i].system_mem) continue;
      ++st_.arena_rereads;
      if (auto r = reread_top(arenas_[i]); !r) return r.error();
    }

    Books b;
    for (auto& a : arenas_) {
      const uint64_t avail = a.avail + a.fastavail + a.top_size;
      if (avail > a.system_mem)
        return inconsistent(fmt::format("arena {:#x}: {} bytes free of {}", a.addr, avail, a.system_mem));
      b.arena += a.system_mem;
      b.ordblks += a.nblocks;
      b.smblks += a.nfast;
      b.fsmblks += a.fastavail;
      b.fordblks += avail;
      b.uordblks += a.system_mem - avail;
      if (a.main) b.keepcost = a.top_size;
    }
    b.hblks = static_cast<uint64_t>(n_mmaps);
    b.hblkhd = mmapped;
    b.arenas = arenas_.size();
    return b;
  }

  // An arena whose system_mem moved during the walk: its header, top and
  // heaps as they are now.
  Result<void> reread_top(Arena& a) {
    std::vector<uint8_t> hdr(layout::kStateSize);
    if (auto r = read_one(a.addr, hdr.data(), hdr.size(), "arena"); !r) return r;
    Arena now;
    now.addr = a.addr;
    now.main = a.main;
    parse_header(now, hdr.data());
    if (auto r = a.main ? main_regions(now, hdr.data()) : thread_regions(now); !r) return r;
    a.top = now.top;
    a.top_size = now.top_size;
    a.system_mem = now.system_mem;
    return {};
  }

  RemoteMemory& mem_;
  const WalkInput& in_;
  const WalkLimits& lim_;
  WalkStats& st_;
  PageCache cache_;
  std::vector<Arena> arenas_;
  uint64_t n_mmaps_ = 0, mmapped_ = 0;
};

}  // namespace

Result<Books> walk(RemoteMemory& mem, const WalkInput& in, const WalkLimits& limits, WalkStats* stats,
                   WalkBuffer* buffer) {
  WalkStats local;
  WalkBuffer own;
  Walker w(mem, in, limits, stats ? *stats : local, buffer ? buffer->bytes : own.bytes);
  return w.run();
}

}  // namespace memlens::glibc
