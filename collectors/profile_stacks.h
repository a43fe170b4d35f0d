// User stacks from the kernel's stack maps turned into pprof locations:
// symbolised through the process's mappings, names demangled, and the
// allocator's own frames dropped from the top (a probe fires inside malloc,
// or inside the sampler; the reader looks for the caller). Shared by the
// sampler's profiles and the eBPF leak sites.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "collectors/elf_symbols.h"
#include "collectors/source_lines.h"
#include "daemon/pprof.h"

namespace memlens {

// What one process's stacks are resolved with; built once per profile.
struct StackResolver {
  std::optional<elf::Symbolizer> sym;
  std::string exe;  // the executable's path as its mappings name it
  // file:line where DWARF exists; mutable: it opens DWARF as asked.
  mutable elf::SourceLines lines;
  static StackResolver for_pid(const std::string& procfs, pid_t pid);
};

// Locations for `ips` (leaf first, zeros ended), with their function and,
// where the file or its debug file has line tables, file:line; leading frames of the
// object the leaf is in dropped unless that object is the executable (a
// program that fires its own probes keeps its frames). Never empty: a stack
// that could not be read is one "[unknown stack]" location.
std::vector<uint64_t> stack_locations(pprof::Builder& b, const StackResolver& r, std::span<const uint64_t> ips);

// The raw stack `stack_id` of a BPF stack-trace map (depth `depth`), leaf
// first; empty when the id is negative or gone.
std::vector<uint64_t> read_stack(int stacks_fd, int64_t stack_id, std::size_t depth);

}  // namespace memlens
