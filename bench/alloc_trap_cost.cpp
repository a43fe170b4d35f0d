// Attaches empty eBPF programs to a process's malloc and free at the sites
// memlens's alloc collector uses (malloc: return probe, which also traps at
// entry; free: first emulated instruction), so bench/alloc.sh can time the
// bare trap cost. --entry-only: malloc entry instead (no return trap).
// --multi: the same sites through multi-uprobe links, as memlensd attaches.
// usage: alloc_trap_cost PID [--entry-only|--multi]   (detaches when PID exits)
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "alloc_bare.skel.h"
#include "collectors/bpf_support.h"
#include "collectors/elf_symbols.h"

using namespace memlens;

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  pid_t pid = std::atoi(argv[1]);
  bool entry_only = argc > 2 && std::strcmp(argv[2], "--entry-only") == 0;
  bool multi = argc > 2 && std::strcmp(argv[2], "--multi") == 0;
  if (auto r = bpf::prepare(); !r) {
    std::fprintf(stderr, "%s\n", r.error().message.c_str());
    return 1;
  }
  // The process may still be exec'ing: wait (up to 2 s) for its libc.
  auto loc = elf::find_allocator("/proc", pid);
  for (int i = 0; i < 200 && !loc; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    loc = elf::find_allocator("/proc", pid);
  }
  if (!loc) {
    std::fprintf(stderr, "%s\n", loc.error().message.c_str());
    return 1;
  }
  std::unique_ptr<alloc_bare_bpf, decltype(&alloc_bare_bpf__destroy)> skel(alloc_bare_bpf__open(),
                                                                        alloc_bare_bpf__destroy);
  if (!skel) return 1;
  if (multi) {
    bpf::set_uprobe_multi(skel->progs.bare_entry);
    bpf::set_uprobe_multi(skel->progs.bare_return);
  }
  if (alloc_bare_bpf__load(skel.get()) != 0) return 1;
  auto m = loc->elf->find("malloc");
  auto f = loc->elf->find("free");
  if (!m || !f) return 1;
  auto site = elf::probe_site(*loc->elf, *f);
  uint64_t free_off = f->file_offset + (site ? site->offset : 0);
  std::vector<bpf::Link> links;
  auto add = [&](Result<bpf::Link> l) {
    if (!l) {
      std::fprintf(stderr, "%s\n", l.error().message.c_str());
      std::exit(1);
    }
    links.push_back(std::move(*l));
  };
  if (multi) {
    add(bpf::attach_uprobe_multi(skel->progs.bare_return, pid, loc->open_path, {m->file_offset}, {1}, true));
    add(bpf::attach_uprobe_multi(skel->progs.bare_entry, pid, loc->open_path, {free_off}, {6}, false));
  } else if (entry_only)
    add(bpf::attach_uprobe(skel->progs.bare_entry, pid, loc->open_path, m->file_offset, false));
  else
    add(bpf::attach_uprobe(skel->progs.bare_return, pid, loc->open_path, m->file_offset, true));
  if (!multi) add(bpf::attach_uprobe(skel->progs.bare_entry, pid, loc->open_path, free_off, false));
  std::printf("attached\n");
  std::fflush(stdout);
  while (kill(pid, 0) == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  return 0;
}
