// A synthetic address space and glibc-shaped arenas built in it, for the
// heap walker's unit tests and its fuzzer (tests/fuzz/fuzz_glibc_walk.cpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <vector>

#include "collectors/glibc_heap.h"

namespace memlens::test {

using namespace glibc;
namespace L = glibc::layout;

class FakeMemory : public RemoteMemory {
 public:
  std::vector<uint8_t>& map(uint64_t start, std::size_t size) {
    auto& r = regions_[start];
    r.assign(size, 0);
    return r;
  }
  uint8_t* at(uint64_t addr, std::size_t len) {
    auto it = regions_.upper_bound(addr);
    if (it == regions_.begin()) return nullptr;
    --it;
    const std::size_t size = it->second.size();
    if (len > size || addr - it->first > size - len) return nullptr;  // no wrap at 2^64
    return it->second.data() + (addr - it->first);
  }
  void put(uint64_t addr, uint64_t v) { std::memcpy(at(addr, 8), &v, 8); }
  void put32(uint64_t addr, uint32_t v) { std::memcpy(at(addr, 4), &v, 4); }
  uint64_t get(uint64_t addr) {
    uint64_t v;
    std::memcpy(&v, at(addr, 8), 8);
    return v;
  }

  Result<void> read(std::span<Read> reads) override {
    ++calls;
    if (gone_after >= 0 && calls > gone_after) return make_error(Errc::not_found, "no such process");
    if (on_read) on_read(calls);
    for (auto& r : reads) {
      const uint8_t* p = at(r.addr, r.len);
      r.ok = p != nullptr;
      if (p) std::memcpy(r.out, p, r.len);
    }
    return {};
  }

  int calls = 0;
  int gone_after = -1;                 // read calls after which the process is gone
  std::function<void(int)> on_read;    // the target running while we read

 private:
  std::map<uint64_t, std::vector<uint8_t>> regions_;
};

// Builds glibc-shaped arenas in a FakeMemory, and the mallinfo2 they imply.
class SynthHeap {
 public:
  static constexpr uint64_t kLibcData = 0x7f0000100000;  // main_arena and mp_ live here
  static constexpr uint64_t kMainArena = kLibcData + 0xc60;
  static constexpr uint64_t kNMmaps = kLibcData + 0x37c;
  static constexpr uint64_t kMmappedMem = kLibcData + 0x390;

  struct Arena {
    uint64_t addr = 0;
    bool main = false;
    uint64_t cursor = 0;  // where the next chunk goes
    std::vector<std::pair<uint64_t, uint64_t>> heaps;  // thread arenas: (heap_info, size), newest last
    std::map<int, std::vector<uint64_t>> bins;  // bin -> chunks in fd order
    std::map<int, std::vector<uint64_t>> fast;  // fastbin -> chunks from the head
    uint64_t top = 0, top_size = 0, system_mem = 0;
  };

  FakeMemory mem;
  std::vector<Arena> arenas;
  int n_mmaps = 0;
  uint64_t mmapped = 0;

  SynthHeap() { mem.map(kLibcData, 0x2000); }

  Arena& add_main(uint64_t brk, uint64_t size) {
    mem.map(brk, size);
    Arena a;
    a.addr = kMainArena;
    a.main = true;
    a.cursor = brk;
    a.system_mem = size;
    heap_end_[0] = brk + size;
    arenas.insert(arenas.begin(), a);
    return arenas.front();
  }

  // A thread arena in a 64 MiB-aligned heap of `size` bytes.
  Arena& add_thread(uint64_t heap, uint64_t size) {
    mem.map(heap, size);
    Arena a;
    a.addr = heap + L::kHeapInfoSize;
    a.cursor = (a.addr + L::kStateSize + 15) & ~uint64_t{15};
    a.heaps.push_back({heap, size});
    a.system_mem = size;
    arenas.push_back(a);
    return arenas.back();
  }

  // A second heap for a thread arena: its top moves there.
  void grow(Arena& a, uint64_t heap, uint64_t size) {
    mem.map(heap, size);
    a.heaps.push_back({heap, size});
    a.system_mem += size;
    a.cursor = heap + L::kHeapInfoSize + 16;  // chunks after heap_info, aligned
  }

  uint64_t carve(Arena& a, uint64_t size, bool main_bit_hint = true) {
    (void)main_bit_hint;
    const uint64_t c = a.cursor;
    mem.put(c + 8, size | 1 | (a.main ? 0 : 4));
    a.cursor += size;
    return c;
  }
  void to_bin(Arena& a, int bin, uint64_t chunk) { a.bins[bin].push_back(chunk); }
  void to_fast(Arena& a, uint64_t chunk) {
    const uint64_t size = mem.get(chunk + 8) & ~uint64_t{7};
    a.fast[static_cast<int>(size >> 4) - 2].push_back(chunk);
  }

  // Writes headers, lists, tops, heap_infos and the arena chain.
  void finish() {
    for (std::size_t ai = 0; ai < arenas.size(); ++ai) {
      Arena& a = arenas[ai];
      const uint64_t end = a.main ? heap_end_[0] : a.heaps.back().first + a.heaps.back().second;
      a.top = a.cursor;
      a.top_size = end - a.cursor;
      mem.put(a.top + 8, a.top_size | 1);
      mem.put32(a.addr + 4, a.main ? 0 : L::kNonContiguous);
      mem.put(a.addr + L::kTop, a.top);
      for (int i = 1; i < L::kNumBins; ++i) {
        const uint64_t head = a.addr + L::kBins + static_cast<uint64_t>(i - 1) * 16 - 16;
        auto it = a.bins.find(i);
        if (it == a.bins.end() || it->second.empty()) {
          mem.put(head + 16, head);
          mem.put(head + 24, head);
          continue;
        }
        const auto& v = it->second;
        mem.put(head + 16, v.front());
        mem.put(head + 24, v.back());
        for (std::size_t k = 0; k < v.size(); ++k) {
          mem.put(v[k] + 16, k + 1 < v.size() ? v[k + 1] : head);
          mem.put(v[k] + 24, k > 0 ? v[k - 1] : head);
        }
      }
      for (const auto& [idx, v] : a.fast) {
        mem.put(a.addr + L::kFastbins + 8 * static_cast<uint64_t>(idx), v.front());
        for (std::size_t k = 0; k < v.size(); ++k) {
          const uint64_t next = k + 1 < v.size() ? v[k + 1] : 0;
          mem.put(v[k] + 16, ((v[k] + 16) >> 12) ^ next);  // safe-linking
        }
      }
      mem.put(a.addr + L::kNext, arenas[(ai + 1) % arenas.size()].addr);
      mem.put(a.addr + L::kSystemMem, a.system_mem);
      for (std::size_t h = 0; h < a.heaps.size(); ++h) {
        const auto [base, size] = a.heaps[h];
        mem.put(base, a.addr);
        mem.put(base + 8, h ? a.heaps[h - 1].first : 0);
        mem.put(base + 16, size);
        mem.put(base + 24, size);
      }
    }
    mem.put32(kNMmaps, static_cast<uint32_t>(n_mmaps));
    mem.put(kMmappedMem, mmapped);
  }

  // What mallinfo2() says about this heap.
  Books expected() const {
    Books b;
    for (const auto& a : arenas) {
      uint64_t avail = a.top_size, fast = 0, nfast = 0, nblocks = 1;
      for (const auto& [i, v] : a.bins)
        for (uint64_t c : v) {
          avail += size_of(c);
          ++nblocks;
        }
      for (const auto& [i, v] : a.fast)
        for (uint64_t c : v) {
          fast += size_of(c);
          ++nfast;
        }
      avail += fast;
      b.arena += a.system_mem;
      b.ordblks += nblocks;
      b.smblks += nfast;
      b.fsmblks += fast;
      b.fordblks += avail;
      b.uordblks += a.system_mem - avail;
      if (a.main) b.keepcost = a.top_size;
    }
    b.hblks = static_cast<uint64_t>(n_mmaps);
    b.hblkhd = mmapped;
    b.arenas = arenas.size();
    return b;
  }

  WalkInput input() const { return WalkInput{kMainArena, kNMmaps, kMmappedMem, {}, {}}; }

  uint64_t size_of(uint64_t chunk) const {
    return const_cast<FakeMemory&>(mem).get(chunk + 8) & ~uint64_t{7};
  }

 private:
  std::map<int, uint64_t> heap_end_;
};

}  // namespace memlens::test
