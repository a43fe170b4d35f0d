// The glibc heap walker's validation: memlensd reads a target's arenas while
// the target (or anyone who can write its memory) changes them, so every
// pointer, size and count it reads may be anything. A consistent synthetic
// heap (three arenas, every kind of bin) is patched with the input's words,
// then walked: never a crash or a hang, and a result that is returned adds
// up.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tests/support/synth_heap.h"

using namespace memlens;
using namespace memlens::glibc;
using memlens::test::SynthHeap;

namespace {

constexpr uint64_t kBrk = 0x55d000000000;
constexpr uint64_t kHeapA = 0x7e0004000000;
constexpr uint64_t kHeapB = 0x7e0008000000;

SynthHeap heap() {
  SynthHeap h;
  auto& m = h.add_main(kBrk, 64 << 10);
  for (int i = 0; i < 6; ++i) {
    h.carve(m, 48);
    h.to_bin(m, 3, h.carve(m, 48));
    h.to_bin(m, bin_index(2000), h.carve(m, 2000));
    h.to_bin(m, 1, h.carve(m, 320));
    h.to_fast(m, h.carve(m, 32));
  }
  h.n_mmaps = 1;
  h.mmapped = 270336;
  auto& a = h.add_thread(kHeapA, 64 << 10);
  for (int i = 0; i < 4; ++i) {
    h.carve(a, 128);
    h.to_bin(a, 8, h.carve(a, 128));
    h.to_fast(a, h.carve(a, 48));
  }
  auto& b = h.add_thread(kHeapB, 32 << 10);
  h.to_bin(b, bin_index(5000), h.carve(b, 5008));
  h.finish();
  return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const SynthHeap clean = heap();
  SynthHeap h = clean;
  // Each 11 bytes: which region (1), an offset in it (2, scaled by 8), and a
  // word (8) written there: pointers into the heap, sizes, counts, junk.
  const uint64_t bases[] = {SynthHeap::kLibcData, SynthHeap::kMainArena, kBrk, kHeapA, kHeapB};
  for (size_t i = 0; i + 11 <= size && i < 11 * 64; i += 11) {
    uint16_t off = 0;
    uint64_t word = 0;
    std::memcpy(&off, data + i + 1, 2);
    std::memcpy(&word, data + i + 3, 8);
    const uint64_t base = bases[data[i] % 5];
    // Small words become addresses near a region, so links point somewhere.
    if (word < 0x100000) word = bases[word % 5] + (word & 0xfff0);
    uint8_t* p = h.mem.at(base + uint64_t{off} * 8 % 0x8000, 8);
    if (p) std::memcpy(p, &word, 8);
  }
  WalkLimits limits;
  limits.max_chunks = 20000;
  limits.max_arenas = 64;
  limits.max_heaps = 256;
  auto b = walk(h.mem, h.input(), limits);
  if (b.ok()) {
    // A figure is published only when the books add up.
    if (b->fordblks > b->arena || b->uordblks + b->fordblks != b->arena) __builtin_trap();
    if (b->arenas == 0 || b->arenas > limits.max_arenas) __builtin_trap();
  }
  return 0;
}
