// ELF parsing and symbol lookup: any local user can build a binary that
// memlensd opens (a target's executable, its libraries), and the prologue
// decoder reads its code.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "collectors/elf_symbols.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)memlens::elf::choose_probe_site(std::span<const uint8_t>(data, size));
  if (auto n = memlens::elf::parse_stapsdt(std::span<const uint8_t>(data, size));
      n && (n->provider.empty() || n->name.empty()))
    __builtin_trap();
  static const int fd = memfd_create("fuzz-elf", 0);
  if (fd < 0) return 0;
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) return 0;
  auto f = memlens::elf::ElfFile::open("/proc/self/fd/" + std::to_string(fd));
  if (!f.ok()) return 0;
  const auto& e = **f;
  for (const char* name : {"malloc", "free", "main", "_start", "mallinfo2"}) {
    auto s = e.find(name);
    if (!s) continue;
    (void)e.symbolize(s->vaddr + 1);
    (void)e.vaddr_to_offset(s->vaddr);
    if (auto site = memlens::elf::probe_site(e, *s); site && site->offset > 64) __builtin_trap();
  }
  for (const auto& n : e.usdt()) (void)e.has_usdt(n.provider, n.name);
  (void)e.symbolize(0x1000);
  (void)e.offset_to_vaddr(0x40);
  (void)e.read_bytes(0, 64);
  return 0;
}
