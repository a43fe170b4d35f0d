// The pieces of the sampler path that need no root: pprof encoding and
// names, SDT notes, query parameters. The profiles themselves are read by
// `go tool pprof` in the integration test.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "collectors/elf_symbols.h"
#include "collectors/source_lines.h"
#include "daemon/http_util.h"
#include "daemon/pprof.h"

using namespace memlens;

TEST(Pprof, DemanglesCppAndRustLegacyNames) {
  EXPECT_EQ(pprof::demangle("_ZN3foo3barEv"), "foo::bar()");
  EXPECT_EQ(pprof::demangle("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"), "core::ptr::drop_in_place");
  EXPECT_EQ(pprof::demangle("malloc"), "malloc");
  EXPECT_EQ(pprof::demangle("_Znot valid"), "_Znot valid");
  EXPECT_EQ(pprof::demangle(""), "");
}

TEST(Pprof, EncodesTheProfileMessage) {
  pprof::Builder b({{"inuse_space", "bytes"}}, "inuse_space", {"space", "bytes"}, 524288);
  const uint64_t m = b.mapping(0x1000, 0x2000, 0, "/bin/x", "ab");
  const uint64_t l1 = b.location(0x1010, m, "leaf"), l2 = b.location(0x1020, m, "root");
  EXPECT_EQ(b.location(0x1010, m, "leaf"), l1) << "a location is made once";
  b.sample({l1, l2}, {300});
  const std::string pb = b.encode();
  // First field: sample_type (1, length-delimited) = {type 1: "inuse_space"
  // (string 1), unit 2: "bytes" (string 2)}.
  ASSERT_GE(pb.size(), 6u);
  EXPECT_EQ(static_cast<uint8_t>(pb[0]), 0x0a);
  EXPECT_EQ(static_cast<uint8_t>(pb[1]), 4);
  EXPECT_EQ(pb.substr(2, 4), std::string("\x08\x01\x10\x02", 4));
  // Then the sample: packed locations {1, 2}, packed values {300 = ac 02}.
  EXPECT_NE(pb.find(std::string("\x12\x08\x0a\x02\x01\x02\x12\x02\xac\x02", 10)), std::string::npos);
  // Strings are in the table once, the empty string first.
  EXPECT_NE(pb.find(std::string("\x32\x00", 2)), std::string::npos);
  EXPECT_NE(pb.find("inuse_space"), std::string::npos);
  EXPECT_EQ(pb.find("inuse_space"), pb.rfind("inuse_space"));
}

TEST(Usdt, ParsesAStapsdtNote) {
  std::string d(24, '\0');
  const uint64_t pc = 0x1944, base = 0x30b0, sem = 0x50f2;
  std::memcpy(d.data(), &pc, 8);
  std::memcpy(d.data() + 8, &base, 8);
  std::memcpy(d.data() + 16, &sem, 8);
  d += std::string("otel_memory\0alloc\0" "8@%r13 8@%r12 8@%rdx\0", 39);
  auto n = elf::parse_stapsdt({reinterpret_cast<const uint8_t*>(d.data()), d.size()});
  ASSERT_TRUE(n);
  EXPECT_EQ(n->provider, "otel_memory");
  EXPECT_EQ(n->name, "alloc");
  EXPECT_EQ(n->args, "8@%r13 8@%r12 8@%rdx");
  EXPECT_EQ(n->pc, pc);
  EXPECT_EQ(n->semaphore, sem);
  // Cut anywhere in the strings: refused, never read past the end.
  for (std::size_t cut = 0; cut < d.size(); ++cut)
    EXPECT_FALSE(elf::parse_stapsdt({reinterpret_cast<const uint8_t*>(d.data()), cut})) << cut;
}

TEST(Usdt, FindsTheSamplersProbesInItsLibrary) {
  auto f = elf::ElfFile::open(std::string(MEMLENS_BINARY_DIR) + "/lib/libmemlens-sampler.so");
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_TRUE((*f)->has_usdt("otel_memory", "alloc"));
  EXPECT_TRUE((*f)->has_usdt("otel_memory", "free"));
  EXPECT_FALSE((*f)->has_usdt("otel_memory", "realloc"));
  for (const auto& n : (*f)->usdt()) EXPECT_NE(n.semaphore, 0u) << n.name << " has a semaphore";
}

TEST(Http, QueryParameters) {
  EXPECT_EQ(raw_query("/debug/pprof/heap?target=a&pid=1#x"), "target=a&pid=1");
  EXPECT_EQ(raw_query("/x"), "");
  EXPECT_EQ(query_param("target=a&pid=1", "pid"), "1");
  EXPECT_EQ(query_param("target=my+app%2Fv2", "target"), "my app/v2");
  EXPECT_EQ(query_param("target=a&target=b", "target"), "a");
  EXPECT_FALSE(query_param("target=a", "pid"));
  EXPECT_FALSE(query_param("target=%ff", "target")) << "not UTF-8";
  EXPECT_FALSE(query_param("target=%00", "target")) << "NUL";
  EXPECT_FALSE(query_param("target=%4", "target")) << "cut escape";
  EXPECT_EQ(query_param("target", "target"), "");
}

TEST(Pprof, EncodesFileAndLine) {
  pprof::Builder b({{"inuse_space", "bytes"}}, "inuse_space", {"space", "bytes"}, 524288);
  const uint64_t m = b.mapping(0x1000, 0x2000, 0, "/bin/x", "ab");
  const uint64_t l = b.location(0x1010, m, "leaf", "/src/x.c", 300);
  b.sample({l}, {1});
  const std::string pb = b.encode();
  // Location 1: id 1, mapping 1, address 0x1010, line {function 1, line 300 = ac 02}.
  EXPECT_NE(pb.find(std::string("\x22\x0e\x08\x01\x10\x01\x18\x90\x20\x22\x05\x08\x01\x10\xac\x02", 16)),
            std::string::npos);
  // The mapping says it has file names and line numbers (fields 8 and 9).
  EXPECT_NE(pb.find(std::string("\x38\x01\x40\x01\x48\x01", 6)), std::string::npos);
  // Function 1: name and system name "leaf" (string 7), filename "/src/x.c" (string 6).
  EXPECT_NE(pb.find(std::string("\x2a\x08\x08\x01\x10\x07\x18\x07\x20\x06", 10)), std::string::npos);
  EXPECT_NE(pb.find("/src/x.c"), std::string::npos);
}

// file:line from DWARF, with a program compiled here with and without -g,
// and with a function inlined into another.
TEST(SourceLines, FindsTheLinesOfAnAddressFromDwarf) {
  char tmpl[] = "/tmp/memlens-lines-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl, src = dir + "/prog.c";
  FILE* f = std::fopen(src.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("#include <stdlib.h>\n"                                          // 1
             "static inline __attribute__((always_inline)) void* inner(size_t n) {\n"  // 2
             "  return malloc(n * 3);\n"                                       // 3
             "}\n"                                                             // 4
             "__attribute__((noinline)) void* site(size_t n) {\n"              // 5
             "  void* p = inner(n);\n"                                         // 6
             "  return p;\n"                                                   // 7
             "}\n"                                                             // 8
             "int main(int argc, char** argv) { (void)argv; return site((size_t)argc) == 0; }\n",  // 9
             f);
  std::fclose(f);
  ASSERT_EQ(std::system(("cc -g -O2 -o " + dir + "/with " + src + " && cc -O2 -o " + dir + "/without " + src).c_str()),
            0);
  auto with = elf::ElfFile::open(dir + "/with");
  ASSERT_TRUE(with.ok());
  auto site = (*with)->find("site");
  ASSERT_TRUE(site.ok());
  // The call to malloc inside site's code, found by decoding it: the
  // address a stack would hold, less one (inside the call).
  auto code = (*with)->read_bytes(site->file_offset, site->size);
  ASSERT_TRUE(code.ok());
  uint64_t call = 0;
  for (const auto& insn : elf::decode_code(*code, site->vaddr))
    if (insn.call || (insn.branch && insn.opcode == 0xe9)) call = insn.vaddr + insn.len - 1;  // a call or a tail jump
  ASSERT_NE(call, 0u) << "no call to malloc in site";

  elf::SourceLines lines;
  const auto before = elf::SourceLines::stats();
  auto at = lines.lookup(dir + "/with", (*with)->build_id(), call);
  ASSERT_EQ(at.size(), 2u) << "inner, inlined into site";
  EXPECT_EQ(at[0].function, "inner");
  EXPECT_EQ(at[0].file, src);
  EXPECT_EQ(at[0].line, 3);
  EXPECT_EQ(at[1].function, "site");
  EXPECT_EQ(at[1].file, src);
  EXPECT_EQ(at[1].line, 6) << "the line that called inner";
  // Asked again: answered from the cache, the same.
  auto again = lines.lookup(dir + "/with", (*with)->build_id(), call);
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[1].line, 6);
  EXPECT_EQ(again[0].function, "inner");
  EXPECT_EQ(elf::SourceLines::stats().hits, before.hits + 1);

  auto without = elf::ElfFile::open(dir + "/without");
  ASSERT_TRUE(without.ok());
  auto site2 = (*without)->find("site");
  ASSERT_TRUE(site2.ok());
  EXPECT_TRUE(lines.lookup(dir + "/without", (*without)->build_id(), site2->vaddr + 4).empty());
  EXPECT_TRUE(lines.lookup(dir + "/nonexistent", "", 0x1000).empty());
  std::system(("rm -rf " + dir).c_str());
}

TEST(Pprof, EncodesInlinedFramesInnermostFirst) {
  pprof::Builder b({{"inuse_space", "bytes"}}, "inuse_space", {"space", "bytes"}, 524288);
  const uint64_t m = b.mapping(0x1000, 0x2000, 0, "/bin/x", "ab");
  const uint64_t l = b.location(0x1010, m, {{"inner", "/src/x.c", 3}, {"site", "/src/x.c", 6}});
  b.sample({l}, {1});
  const std::string pb = b.encode();
  // Location 1 with two lines: {function 1, line 3}, then {function 2, line 6}.
  EXPECT_NE(pb.find(std::string("\x22\x13\x08\x01\x10\x01\x18\x90\x20\x22\x04\x08\x01\x10\x03\x22\x04\x08\x02\x10\x06", 21)),
            std::string::npos);
}
