#include "collectors/profile_stacks.h"

#include <bpf/bpf.h>

#include "daemon/procfs.h"

namespace memlens {

StackResolver StackResolver::for_pid(const std::string& procfs, pid_t pid) {
  StackResolver r;
  if (auto s = elf::Symbolizer::for_pid(procfs, pid)) r.sym.emplace(std::move(*s));
  if (auto exe = read_link(ProcFs(procfs).path(pid, "exe"))) r.exe = *exe;
  return r;
}

std::vector<uint64_t> stack_locations(pprof::Builder& b, const StackResolver& r, std::span<const uint64_t> ips) {
  std::vector<uint64_t> locs;
  std::string producer;
  bool leading = true;
  for (std::size_t i = 0; i < ips.size() && ips[i]; ++i) {
    elf::Symbolizer::Frame fr;
    if (r.sym) fr = r.sym->resolve(ips[i]);
    const std::string file = fr.map ? fr.map->path : std::string();
    if (i == 0 && !file.empty() && file != r.exe) producer = file;
    const bool last = i + 1 == ips.size() || !ips[i + 1];
    if (leading && !producer.empty() && file == producer && !last) continue;
    leading = false;
    uint64_t mapping = 0;
    if (fr.map) mapping = b.mapping(fr.map->start, fr.map->end, fr.map->offset, fr.map->path, fr.build_id);
    // A return address points after its call: name the call itself.
    const uint64_t back = i == 0 ? 0 : 1;
    std::vector<elf::SourceFrame> src;
    if (fr.vaddr) src = r.lines.lookup(fr.open_path, fr.build_id, *fr.vaddr - back);
    // The function the code is in: the file's own symbol first (what the
    // probes were attached by), the debug file's where the file has none.
    if (src.empty()) src.emplace_back();
    if (!fr.function.empty()) src.back().function = fr.function;
    std::vector<pprof::Builder::Line> lines;
    for (const auto& s : src) lines.push_back({pprof::demangle(s.function), s.file, s.line});
    locs.push_back(b.location(ips[i] - back, mapping, lines));
  }
  if (locs.empty()) locs.push_back(b.location(0, 0, "[unknown stack]"));
  return locs;
}

std::vector<uint64_t> read_stack(int stacks_fd, int64_t stack_id, std::size_t depth) {
  std::vector<uint64_t> ips(depth, 0);
  if (stack_id < 0) return {};
  __u32 sid = static_cast<__u32>(stack_id);
  if (bpf_map_lookup_elem(stacks_fd, &sid, ips.data()) != 0) return {};
  std::size_t n = 0;
  while (n < ips.size() && ips[n]) ++n;
  ips.resize(n);
  return ips;
}

}  // namespace memlens
