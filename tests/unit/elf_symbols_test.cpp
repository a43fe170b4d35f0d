// Prologue decoding, maps parsing and symbol lookup (on this system's libc).
#include "collectors/elf_symbols.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>

using namespace memlens::elf;

namespace {
ProbeSite decode(std::vector<uint8_t> b) { return choose_probe_site(b); }
}  // namespace

TEST(Prologue, PushIsEmulatedAtEntry) {
  auto s = decode({0x41, 0x54, 0x55, 0x53});  // push %r12; push %rbp; push %rbx
  EXPECT_EQ(s.offset, 0u);
  EXPECT_TRUE(s.emulated);
  EXPECT_TRUE(decode({0x55, 0x48, 0x89, 0xe5}).emulated);  // push %rbp
}

TEST(Prologue, NullTestSkippedToTheBranch) {
  // glibc 2.36 free: test %rdi,%rdi; je rel32; push %rbp
  auto s = decode({0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55});
  EXPECT_EQ(s.offset, 3u);
  EXPECT_TRUE(s.emulated);
  auto s8 = decode({0x48, 0x85, 0xff, 0x74, 0x10, 0x55});  // je rel8
  EXPECT_EQ(s8.offset, 3u);
}

TEST(Prologue, TestOfTwoDifferentRegistersIsNotSkipped) {
  auto s = decode({0x48, 0x85, 0xf7, 0x74, 0x10});  // test %rsi,%rdi
  EXPECT_EQ(s.offset, 0u);
  EXPECT_FALSE(s.emulated);
}

TEST(Prologue, TestWithoutBranchIsNotSkipped) {
  auto s = decode({0x48, 0x85, 0xff, 0x48, 0x89, 0xf8});  // test; mov
  EXPECT_EQ(s.offset, 0u);
  EXPECT_FALSE(s.emulated);
}

TEST(Prologue, Endbr64ThenPush) {
  auto s = decode({0xf3, 0x0f, 0x1e, 0xfa, 0x41, 0x57});
  EXPECT_EQ(s.offset, 4u);
  EXPECT_TRUE(s.emulated);
  auto t = decode({0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xec, 0x08});  // endbr64; sub
  EXPECT_EQ(t.offset, 0u);
  EXPECT_FALSE(t.emulated);
}

TEST(Prologue, UnknownAndEmpty) {
  EXPECT_FALSE(decode({0x48, 0x83, 0xec, 0x18}).emulated);  // sub $0x18,%rsp
  EXPECT_EQ(decode({}).offset, 0u);
  EXPECT_TRUE(decode({0x0f, 0x1f, 0x44, 0x00, 0x00}).emulated);  // nop5
}

TEST(Maps, Parses) {
  auto m = memlens::parse_maps(
      "55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]\n"
      "7f1c2a428000-7f1c2a44e000 r--p 00000000 fe:01 1311232                    /usr/lib/x86_64-linux-gnu/libc.so.6\n"
      "7f1c2a44e000-7f1c2a5a3000 r-xp 00026000 fe:01 1311232                    /usr/lib/x86_64-linux-gnu/libc.so.6\n"
      "7ffd5c3fe000-7ffd5c400000 r-xp 00000000 00:00 0 \n");
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[0].path, "[heap]");
  EXPECT_EQ(m[0].start, 0x55d0c0a00000u);
  EXPECT_EQ(m[2].offset, 0x26000u);
  EXPECT_EQ(m[2].perms, "r-xp");
  EXPECT_EQ(m[2].inode, 1311232u);
  EXPECT_EQ(m[2].path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
  EXPECT_EQ(m[3].path, "");
}

TEST(ElfSymbols, FindsMallocInOurOwnAllocator) {
  auto loc = find_allocator("/proc", getpid());
  ASSERT_TRUE(loc.ok()) << loc.error().message;
  auto m = loc->elf->find("malloc");
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_GT(m->file_offset, 0u);
  // The bytes the decoder sees are the bytes of the running code.
  auto bytes = loc->elf->read_bytes(m->file_offset, 4);
  ASSERT_TRUE(bytes.ok());
  ASSERT_EQ(bytes->size(), 4u);
  auto site = probe_site(*loc->elf, *m);
  ASSERT_TRUE(site.ok());
  EXPECT_LE(site->offset, 8u);
}

TEST(ElfSymbols, SymbolizesAnAddressOfOurOwn) {
  auto s = Symbolizer::for_pid("/proc", getpid());
  ASSERT_TRUE(s.ok());
  auto name = s->symbolize(reinterpret_cast<uint64_t>(&::malloc));
  EXPECT_NE(name.find("malloc"), std::string::npos) << name;
}

// A name known only by its start (V8's Heap::CollectGarbage changes its
// parameter list between versions): the first such function, or not_found.
TEST(ElfSymbols, FindsAFunctionByThePrefixOfItsName) {
  auto loc = find_allocator("/proc", getpid());
  ASSERT_TRUE(loc.ok()) << loc.error().message;
  auto m = loc->elf->find_prefix("mallo");
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_TRUE(m->name.starts_with("mallo")) << m->name;
  EXPECT_GT(m->file_offset, 0u);
  auto exact = loc->elf->find_prefix("malloc");
  ASSERT_TRUE(exact.ok());
  EXPECT_TRUE(exact->name.starts_with("malloc"));
  EXPECT_EQ(loc->elf->find_prefix("_ZN2v88internal4Heap14CollectGarbageE").error().code, memlens::Errc::not_found);
  EXPECT_EQ(loc->elf->find_prefix("\xff\xff").error().code, memlens::Errc::not_found);
}
