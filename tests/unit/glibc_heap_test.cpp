// glibc's books read from outside: the walker on synthetic memory images
// (consistent heaps, and every way a read can fail to hold together), the
// x86-64 decoder, locating main_arena/mp_ in this system's libc with debug
// symbols shown and hidden, and one real child process against its own
// mallinfo2().
#include "collectors/glibc_heap.h"

#include <gtest/gtest.h>
#include <malloc.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <map>

#include "daemon/procfs.h"
#include "tests/support/synth_heap.h"

using namespace memlens;
using namespace memlens::glibc;
using memlens::test::FakeMemory;
using memlens::test::SynthHeap;
namespace L = memlens::glibc::layout;

// ASan replaces malloc: glibc's arenas are not where this process's (or a
// forked child's) blocks live, and mallinfo2() is ASan's, not glibc's.
#ifdef __SANITIZE_ADDRESS__
#define SKIP_UNDER_ASAN() GTEST_SKIP() << "built with AddressSanitizer: malloc is not glibc's here"
#else
#define SKIP_UNDER_ASAN() (void)0
#endif

namespace {


constexpr uint64_t kBrk = 0x555555600000;
constexpr uint64_t kHeapA = 0x7e0004000000;  // 64 MiB-aligned thread heaps
constexpr uint64_t kHeapB = 0x7e0008000000;
constexpr uint64_t kHeapC = 0x7e000c000000;

// A main arena with chunks in small, large and unsorted bins and fastbins,
// and two thread arenas, one of them over two heaps.
SynthHeap rich_heap() {
  SynthHeap h;
  auto& m = h.add_main(kBrk, 1 << 20);
  for (int i = 0; i < 40; ++i) {
    h.carve(m, 48);                        // in use
    const uint64_t f = h.carve(m, 48);     // small bin 3
    h.to_bin(m, 3, f);
  }
  for (int i = 0; i < 5; ++i) {
    h.carve(m, 96);
    h.to_bin(m, bin_index(2000), h.carve(m, 2000));  // large bin
    h.to_bin(m, 1, h.carve(m, 320));                 // unsorted
    h.to_fast(m, h.carve(m, 32));                    // fastbin 0
    h.to_fast(m, h.carve(m, 64));                    // fastbin 2
  }
  h.n_mmaps = 3;
  h.mmapped = 3 * 270336;
  auto& a = h.add_thread(kHeapA, 256 << 10);
  for (int i = 0; i < 30; ++i) {
    h.carve(a, 128);
    h.to_bin(a, 8, h.carve(a, 128));
    h.to_fast(a, h.carve(a, 48));
  }
  auto& b = h.add_thread(kHeapB, 128 << 10);
  for (int i = 0; i < 10; ++i) h.to_bin(b, bin_index(5000), h.carve(b, 5008));
  h.grow(b, kHeapC, 64 << 10);
  for (int i = 0; i < 10; ++i) {
    h.carve(b, 256);
    h.to_bin(b, 16, h.carve(b, 256));
  }
  h.finish();
  return h;
}

}  // namespace

// ---- the walker: consistent images -------------------------------------------------

TEST(GlibcWalk, ReproducesMallinfo2OnAConsistentHeap) {
  auto h = rich_heap();
  WalkStats st;
  auto b = walk(h.mem, h.input(), {}, &st);
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(*b, h.expected());
  EXPECT_EQ(b->arenas, 3u);
  EXPECT_EQ(b->hblks, 3u);
  EXPECT_GT(b->smblks, 0u);
  // Short lists are read twice (once more after the long ones).
  EXPECT_GE(st.chunks, b->ordblks - b->arenas + b->smblks);
  EXPECT_EQ(st.second_passes, 1u);
}

TEST(GlibcWalk, MainArenaOnly) {
  SynthHeap h;
  auto& m = h.add_main(kBrk, 64 << 10);
  for (int i = 0; i < 10; ++i) {
    h.carve(m, 1040);
    h.to_bin(m, bin_index(1040), h.carve(m, 1040));
  }
  h.finish();
  auto b = walk(h.mem, h.input(), {});
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(*b, h.expected());
  EXPECT_EQ(b->keepcost, h.arenas[0].top_size);
}

TEST(GlibcWalk, MallocNeverRanGivesEmptyBooks) {
  // main_arena as linked: zeroes but next -> itself.
  SynthHeap h;
  h.mem.put(SynthHeap::kMainArena + L::kNext, SynthHeap::kMainArena);
  auto b = walk(h.mem, h.input(), {});
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(b->arena, 0u);
  EXPECT_EQ(b->uordblks, 0u);
  EXPECT_EQ(b->ordblks, 1u);  // the top, as mallinfo2 counts it
  EXPECT_EQ(b->arenas, 1u);
}

TEST(GlibcWalk, ChecksTheLocationAgainstTheHeapMapping) {
  auto h = rich_heap();
  auto in = h.input();
  in.check_brk = Range{kBrk, kBrk + (1 << 20)};
  EXPECT_TRUE(walk(h.mem, in, {}));
  in.check_brk = Range{kBrk + (2 << 20), kBrk + (3 << 20)};
  auto b = walk(h.mem, in, {});
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, Errc::unavailable);
  in.check_brk = std::optional<Range>{};  // the process has no [heap]
  EXPECT_EQ(walk(h.mem, in, {}).error().code, Errc::unavailable);
  // Starting before the mapping but overlapping it: the arena was read
  // while top moved (two reads), so it is read again, not refused.
  in.check_brk = Range{kBrk + 16, kBrk + (1 << 20) + 16};
  b = walk(h.mem, in, {});
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, Errc::malformed) << b.error().message;
}

// ---- the walker: what must never become a figure --------------------------------------

namespace {
Errc walk_error(SynthHeap& h, WalkLimits lim = {}) {
  auto b = walk(h.mem, h.input(), lim);
  EXPECT_FALSE(b) << "a figure from an inconsistent image: arena " << (b ? b->arena : 0);
  return b ? Errc::io : b.error().code;
}
}  // namespace

TEST(GlibcWalk, BrokenBackLinkIsInconsistent) {
  auto h = rich_heap();
  const uint64_t c = h.arenas[0].bins[3][10];
  h.mem.put(c + 16, h.arenas[0].bins[3][12]);  // fd skips one: fd->bk != p
  EXPECT_EQ(walk_error(h), Errc::malformed);
}

TEST(GlibcWalk, ListTruncatedWhileReadIsInconsistent) {
  auto h = rich_heap();
  // The bin header's fd (first chunk) no longer matches the end of the bk walk.
  const uint64_t head = SynthHeap::kMainArena + L::kBins + 2 * 16 - 16;
  h.mem.put(head + 16, h.arenas[0].bins[3][1]);
  EXPECT_EQ(walk_error(h), Errc::malformed);
}

TEST(GlibcWalk, FastbinCycleIsCaught) {
  auto h = rich_heap();
  const auto& v = h.arenas[0].fast[0];
  const uint64_t last = v.back();
  h.mem.put(last + 16, ((last + 16) >> 12) ^ v.front());  // back to the head
  EXPECT_EQ(walk_error(h), Errc::malformed);
}

TEST(GlibcWalk, BinCycleIsCaught) {
  auto h = rich_heap();
  // Two chunks whose bk pointers chase each other: the second lap breaks
  // the fd check (and the arena's size bounds any lap).
  auto& a = h.arenas[1];
  const uint64_t x = a.bins[8][0], y = a.bins[8][1];
  const uint64_t head = a.addr + L::kBins + 7 * 16 - 16;
  h.mem.put(head + 24, x);
  h.mem.put(x + 16, head);
  h.mem.put(x + 24, y);
  h.mem.put(y + 16, x);
  h.mem.put(y + 24, x);
  EXPECT_EQ(walk_error(h), Errc::malformed);
}

TEST(GlibcWalk, UnmangledFastbinPointerIsInconsistent) {
  auto h = rich_heap();
  const auto& v = h.arenas[1].fast[1];
  h.mem.put(v[0] + 16, v[1]);  // as if safe-linking were off: decodes to garbage
  EXPECT_EQ(walk_error(h), Errc::malformed);
}

TEST(GlibcWalk, MangledFastbinPointersAreFollowed) {
  // The consistent image stores every fastbin fd mangled; the walk counts
  // exactly the chunks put there.
  auto h = rich_heap();
  auto b = walk(h.mem, h.input(), {});
  ASSERT_TRUE(b);
  uint64_t n = 0;
  for (const auto& a : h.arenas)
    for (const auto& [i, v] : a.fast) n += v.size();
  EXPECT_EQ(b->smblks, n);
  EXPECT_EQ(b->fsmblks, 5u * (32 + 64) + 30u * 48);
}

TEST(GlibcWalk, PointerOutsideEveryMappingIsInconsistent) {
  auto h = rich_heap();
  const uint64_t c = h.arenas[0].bins[3][5];
  h.mem.put(c + 24, 0x10000000);  // bk into nothing
  EXPECT_EQ(walk_error(h), Errc::malformed);
}

// Found by fuzzing: a link near 2^64 made the page arithmetic wrap and the
// walker copy from a page it never read (a crash of memlensd that any
// target could cause by writing its own heap).
TEST(GlibcWalk, PointerPastUserSpaceIsInconsistent) {
  for (uint64_t bad : {0xfffffffffffffff0ull, 0xffff800000000000ull, 1ull << 56}) {
    auto h = rich_heap();
    const uint64_t c = h.arenas[0].bins[3][5];
    h.mem.put(c + 24, bad);
    EXPECT_EQ(walk_error(h), Errc::malformed) << std::hex << bad;
  }
}

TEST(GlibcWalk, PointerIntoAnotherMappingIsInconsistent) {
  auto h = rich_heap();
  // A readable address, but in libc's data, not in the arena's heap.
  const uint64_t c = h.arenas[0].bins[1][2];
  h.mem.put(c + 24, SynthHeap::kLibcData + 0x100);
  EXPECT_EQ(walk_error(h), Errc::malformed);
}

TEST(GlibcWalk, MisalignedChunkIsInconsistent) {
  auto h = rich_heap();
  const uint64_t c = h.arenas[2].bins[16][3];
  h.mem.put(c + 24, h.arenas[2].bins[16][4] + 8);
  EXPECT_EQ(walk_error(h), Errc::malformed);
}

TEST(GlibcWalk, ChunkOfTheWrongSizeForItsBinIsInconsistent) {
  auto h = rich_heap();
  const uint64_t c = h.arenas[0].bins[3][7];
  h.mem.put(c + 8, 64 | 1);  // 64 bytes in the 48-byte bin
  EXPECT_EQ(walk_error(h), Errc::malformed);
}

TEST(GlibcWalk, HeapThatGrewDuringTheWalkIsReadAgainAtTheEnd) {
  auto h = rich_heap();
  // Thread arena A grows by a page through its top while the lists are read.
  auto& a = h.arenas[1];
  h.mem.on_read = [&](int call) {
    if (call != 6) return;
    h.mem.put(a.top + 8, (a.top_size + 4096) | 1);
    h.mem.put(a.addr + L::kSystemMem, a.system_mem + 4096);
    h.mem.put(a.heaps[0].first + 16, a.heaps[0].second + 4096);
  };
  WalkStats st;
  auto b = walk(h.mem, h.input(), {}, &st);
  ASSERT_TRUE(b) << b.error().message;
  Books want = h.expected();
  want.arena += 4096;
  want.fordblks += 4096;
  EXPECT_EQ(*b, want);
  EXPECT_EQ(st.arena_rereads, 1u);
}

TEST(GlibcWalk, ArenaThatMovedInconsistentlyIsInconsistent) {
  auto h = rich_heap();
  // system_mem moves, the heap's own size does not: they no longer add up.
  h.mem.on_read = [&](int call) {
    if (call == 6) h.mem.put(h.arenas[1].addr + L::kSystemMem, h.arenas[1].system_mem + 4096);
  };
  EXPECT_EQ(walk_error(h), Errc::malformed);
}

TEST(GlibcWalk, MmapCountersAreReadAtTheEnd) {
  auto h = rich_heap();
  h.mem.on_read = [&](int call) {
    if (call != 4) return;
    h.mem.put32(SynthHeap::kNMmaps, 4);
    h.mem.put(SynthHeap::kMmappedMem, 4 * 270336);
  };
  auto b = walk(h.mem, h.input(), {});
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(b->hblks, 4u);
  EXPECT_EQ(b->hblkhd, 4u * 270336);
  // Caught between glibc's two updates: more chunks than their bytes allow.
  auto t = rich_heap();
  t.mem.on_read = [&](int call) {
    if (call == 4) t.mem.put32(SynthHeap::kNMmaps, 400);
  };
  EXPECT_EQ(walk_error(t), Errc::malformed);
}

TEST(GlibcWalk, ListChangingOnceIsReadAgain) {
  auto h = rich_heap();
  // A chunk leaves small bin 3 after the header was copied: the first read
  // of the list breaks, the second (from a fresh head) holds.
  auto& m = h.arenas[0];
  const uint64_t head = SynthHeap::kMainArena + L::kBins + 2 * 16 - 16;
  h.mem.on_read = [&](int call) {
    if (call != 3) return;
    const uint64_t last = m.bins[3].back(), before = m.bins[3][m.bins[3].size() - 2];
    h.mem.put(head + 24, before);  // unlinked from the back, as malloc does
    h.mem.put(before + 16, head);
    h.mem.put(last + 16, 0xdead0);  // and its memory reused
    m.bins[3].pop_back();
  };
  WalkStats st;
  auto b = walk(h.mem, h.input(), {}, &st);
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_GE(st.list_retries, 1u);
  EXPECT_EQ(*b, h.expected());  // without the chunk taken: it is in use now
}

TEST(GlibcWalk, ThreadHeapsNotAddingUpToSystemMemAreInconsistent) {
  auto h = rich_heap();
  h.mem.put(h.arenas[2].addr + L::kSystemMem, h.arenas[2].system_mem + 4096);
  EXPECT_EQ(walk_error(h), Errc::malformed);
}

TEST(GlibcWalk, NotAnArenaListIsUnrecognised) {
  auto h = rich_heap();
  h.mem.put(h.arenas[1].addr + L::kNext, h.arenas[1].addr);  // loops without main_arena
  EXPECT_EQ(walk_error(h), Errc::unavailable);
  auto z = rich_heap();
  z.mem.put(SynthHeap::kMainArena + L::kNext, 0);
  EXPECT_EQ(walk_error(z), Errc::unavailable);
}

TEST(GlibcWalk, MmappedBytesNotInPagesIsUnrecognised) {
  auto h = rich_heap();
  h.mem.put(SynthHeap::kMmappedMem, 12345);
  EXPECT_EQ(walk_error(h), Errc::unavailable);
}

TEST(GlibcWalk, ProcessGoneMidWalk) {
  auto h = rich_heap();
  h.mem.gone_after = 3;
  EXPECT_EQ(walk_error(h), Errc::not_found);
}

TEST(GlibcWalk, ChunkBoundGivesFullNotAFigure) {
  auto h = rich_heap();
  WalkLimits lim;
  lim.max_chunks = 10;
  EXPECT_EQ(walk_error(h, lim), Errc::full);
}

TEST(GlibcWalk, SmallCacheGivesTheSameFigures) {
  auto h = rich_heap();
  WalkLimits lim;
  lim.cache_bytes = 4096;  // evicted all the time
  WalkBuffer buf;
  auto b = walk(h.mem, h.input(), lim, nullptr, &buf);
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(*b, h.expected());
  auto again = walk(h.mem, h.input(), lim, nullptr, &buf);  // buffer reused
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, *b);
}

TEST(GlibcWalk, BinIndexMatchesGlibcBoundaries) {
  EXPECT_EQ(bin_index(32), 2);
  EXPECT_EQ(bin_index(1008), 63);
  EXPECT_EQ(bin_index(1024), 64);
  EXPECT_EQ(bin_index(3071), 95);   // 48 + 3071/64
  EXPECT_EQ(bin_index(3136), 97);   // past 3072: 512-byte steps
  EXPECT_EQ(bin_index(1 << 20), 126);
}

// ---- x86-64 decoding -------------------------------------------------------------------

namespace {
elf::Insn one(std::vector<uint8_t> b, uint64_t at = 0x1000) {
  auto in = elf::decode_insn(b, 0, at);
  EXPECT_TRUE(in.has_value());
  EXPECT_EQ(in ? in->len : 0, b.size());
  return in.value_or(elf::Insn{});
}
}  // namespace

TEST(X86Decode, RipRelativeOperands) {
  // Instructions of glibc 2.36's mallinfo2 / int_mallinfo (objdump).
  auto lea = one({0x4c, 0x8d, 0x25, 0xa9, 0x9e, 0x13, 0x00}, 0x99db0);  // lea main_arena(%rip),%r12
  EXPECT_TRUE(lea.rip_relative);
  EXPECT_EQ(lea.opcode, 0x8d);
  EXPECT_EQ(lea.target, 0x1d3c60u);
  auto movslq = one({0x48, 0x63, 0x05, 0x10, 0xea, 0x13, 0x00}, 0x94965);
  EXPECT_EQ(movslq.target, 0x1d337cu);
  auto movhps = one({0x0f, 0x16, 0x05, 0x18, 0xea, 0x13, 0x00}, 0x94971);
  EXPECT_EQ(movhps.map, 2);
  EXPECT_EQ(movhps.target, 0x1d3390u);
  auto cmpb = one({0x80, 0x3d, 0xe2, 0x06, 0x14, 0x00, 0x00}, 0x99d9f);  // cmpb $0,x(%rip): imm after disp
  EXPECT_EQ(cmpb.target, 0x1da488u);
}

TEST(X86Decode, LengthsAndOperands) {
  auto next = one({0x48, 0x8b, 0x9b, 0x70, 0x08, 0x00, 0x00});  // mov 0x870(%rbx),%rbx
  EXPECT_TRUE(next.mem);
  EXPECT_FALSE(next.rip_relative);
  EXPECT_EQ(next.disp, 0x870);
  EXPECT_EQ(one({0x49, 0x8b, 0x81, 0x88, 0x08, 0x00, 0x00}).disp, 0x888);  // mov 0x888(%r9),%rax
  one({0x49, 0xc7, 0x42, 0x28, 0x00, 0x00, 0x00, 0x00});                   // movq $0,0x28(%r10)
  one({0x66, 0x48, 0x0f, 0x6e, 0xc0});                                     // movq %rax,%xmm0
  one({0xf0, 0x0f, 0xb1, 0x13});                                           // lock cmpxchg %edx,(%rbx)
  one({0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00});             // mov %fs:0x28,%rax
  one({0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00});       // cs nopw 0(%rax,%rax,1)
  one({0xc5, 0xf8, 0x77});                                                 // vzeroupper
  one({0xc4, 0xe3, 0x79, 0x16, 0xc0, 0x01});                               // vpextrd $1,%xmm0,%eax
  one({0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8});                               // movabs $imm64,%rax
  one({0x66, 0xb8, 0x34, 0x12});                                           // mov $0x1234,%ax
  one({0xf6, 0xc2, 0x0f});                                                 // test $0xf,%dl
  one({0xf7, 0xd8});                                                       // neg %eax: no immediate
  auto call = one({0xe8, 0x74, 0xaa, 0xff, 0xff}, 0x99df7);                // call int_mallinfo
  EXPECT_TRUE(call.call);
  EXPECT_EQ(call.target, 0x94870u);
  auto jne = one({0x0f, 0x85, 0x8f, 0x00, 0x00, 0x00}, 0x99deb);
  EXPECT_TRUE(jne.branch);
  EXPECT_EQ(jne.target, 0x99e80u);
  EXPECT_TRUE(one({0xc3}).ret);
}

TEST(X86Decode, UnknownOrTruncatedStops) {
  const std::vector<uint8_t> evex{0x62, 0xf1, 0x7d, 0x48, 0x6f, 0x00};
  EXPECT_FALSE(elf::decode_insn(evex, 0, 0));
  const std::vector<uint8_t> cut{0x48, 0x8b, 0x9b, 0x70};  // disp32 cut short
  EXPECT_FALSE(elf::decode_insn(cut, 0, 0));
  const std::vector<uint8_t> code{0x55, 0x48, 0x89, 0xe5, 0x62, 0x00};
  EXPECT_EQ(elf::decode_code(code, 0).size(), 2u);
}

TEST(X86Decode, WalksAllOfThisLibcsMallinfo2) {
  auto f = elf::ElfFile::open("/lib/x86_64-linux-gnu/libc.so.6");
  ASSERT_TRUE(f);
  auto s = (*f)->find("mallinfo2");
  ASSERT_TRUE(s);
  auto bytes = (*f)->read_bytes(s->file_offset, s->size);
  ASSERT_TRUE(bytes);
  auto code = elf::decode_code(*bytes, s->vaddr);
  uint64_t len = 0;
  for (const auto& in : code) len += in.len;
  EXPECT_EQ(len, s->size) << "an instruction of mallinfo2 was not decoded";
}

// ---- locating in this system's libc ------------------------------------------------------

namespace {
const char* kLibc = "/lib/x86_64-linux-gnu/libc.so.6";
}

TEST(GlibcLocate, DecodedAndDebugSymbolsAgree) {
  auto f = elf::ElfFile::open(kLibc);
  ASSERT_TRUE(f);
  if (!(*f)->defines("mallinfo2")) GTEST_SKIP() << "libc before 2.33: no mallinfo2";
  // Hidden: an empty debug directory, as on a host without libc6-dbg.
  char tmpl[] = "/tmp/memlens-nodebug.XXXXXX";
  ASSERT_TRUE(mkdtemp(tmpl));
  auto hidden = locate(**f, tmpl);
  rmdir(tmpl);
  ASSERT_TRUE(hidden) << hidden.error().message;
  EXPECT_EQ(hidden->source, Source::decoded);
  auto decoded = locate_decoded(**f);
  ASSERT_TRUE(decoded);
  EXPECT_EQ(decoded->main_arena, hidden->main_arena);

  if (!elf::debug_file_for("/usr/lib/debug", (*f)->build_id()))
    GTEST_SKIP() << "no debug file for libc " << (*f)->build_id() << " (libc6-dbg): decode path checked only";
  auto shown = locate(**f, "/usr/lib/debug");
  ASSERT_TRUE(shown) << shown.error().message;
  EXPECT_EQ(shown->source, Source::debug_file);
  EXPECT_EQ(shown->main_arena, hidden->main_arena);
  EXPECT_EQ(shown->n_mmaps, hidden->n_mmaps);
  EXPECT_EQ(shown->mmapped_mem, hidden->mmapped_mem);
  std::printf("main_arena %#lx, mp_.n_mmaps %#lx, mp_.mmapped_mem %#lx\n  %s\n  %s\n",
              static_cast<unsigned long>(shown->main_arena), static_cast<unsigned long>(shown->n_mmaps),
              static_cast<unsigned long>(shown->mmapped_mem), shown->detail.c_str(), hidden->detail.c_str());
}

TEST(GlibcLocate, NotGlibcIsNotFound) {
  // This test binary defines no mallinfo2 (it calls libc's).
  auto exe = read_link("/proc/self/exe");
  ASSERT_TRUE(exe);
  auto f = elf::ElfFile::open(*exe);
  ASSERT_TRUE(f);
  auto loc = locate(**f, "");
  ASSERT_FALSE(loc);
  EXPECT_EQ(loc.error().code, Errc::not_found);
}

TEST(GlibcLocate, DebugFileMustCarryTheBuildId) {
  EXPECT_FALSE(elf::debug_file_for("/usr/lib/debug", "00112233445566778899aabbccddeeff00112233"));
  EXPECT_FALSE(elf::debug_file_for("", "93ac61ec"));
}

// ---- a real process ----------------------------------------------------------------------------

// A child builds a heap with holes and thread-free chunks, reports its own
// mallinfo2() through a pipe and waits; the walk from here must match it to
// the byte. Reading a child needs no privilege (ptrace access to one's own
// descendants), unless Yama forbids it.
TEST(GlibcWalk, RealChildMatchesItsOwnMallinfo2) {
  SKIP_UNDER_ASAN();
  auto f = elf::ElfFile::open(kLibc);
  ASSERT_TRUE(f);
  auto loc = locate(**f, "");
  if (!loc) GTEST_SKIP() << loc.error().message;
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::vector<void*> v(30000);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = malloc(16 + (i * 7919) % 3000);
    for (std::size_t i = 0; i < v.size(); i += 2) free(v[i]);
    for (int i = 0; i < 20; ++i) free(malloc(24 + 16 * (i % 4)));  // tcache, then fastbins
    void* big = malloc(1 << 20);  // an mmapped chunk
    (void)big;
    struct mallinfo2 mi = mallinfo2();
    if (write(fds[1], &mi, sizeof mi) != sizeof mi) _exit(1);
    pause();
    _exit(0);
  }
  close(fds[1]);
  struct mallinfo2 mi {};
  ASSERT_EQ(read(fds[0], &mi, sizeof mi), static_cast<ssize_t>(sizeof mi));
  close(fds[0]);
  auto maps_text = read_file("/proc/" + std::to_string(pid) + "/maps");
  ASSERT_TRUE(maps_text);
  std::vector<Mapping> own;
  for (const auto& m : parse_maps(*maps_text))
    if (m.path.find("/libc.so.6") != std::string::npos) own.push_back(m);
  auto bias = (*f)->load_bias(own);
  ASSERT_TRUE(bias);
  WalkInput in{loc->main_arena + *bias, loc->n_mmaps + *bias, loc->mmapped_mem + *bias, {}, {}};
  ProcessMemory mem(pid);
  auto b = walk(mem, in, {});
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  if (!b && b.error().code == Errc::permission) GTEST_SKIP() << "process_vm_readv refused: " << b.error().message;
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(b->arena, mi.arena);
  EXPECT_EQ(b->ordblks, mi.ordblks);
  EXPECT_EQ(b->smblks, mi.smblks);
  EXPECT_EQ(b->hblks, mi.hblks);
  EXPECT_EQ(b->hblkhd, mi.hblkhd);
  EXPECT_EQ(b->fsmblks, mi.fsmblks);
  EXPECT_EQ(b->uordblks, mi.uordblks);
  EXPECT_EQ(b->fordblks, mi.fordblks);
  EXPECT_EQ(b->keepcost, mi.keepcost);
}
