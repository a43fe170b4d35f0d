// How timelines are stored: fixed-size chunks of points compressed the way
// time-series databases do it (Gorilla): timestamps as delta-of-delta in
// variable-width buckets, each series' float as the XOR with its previous
// value, written as a run of meaningful bits. A regular, quiet series costs
// a couple of bits a point; every point is still exact.
//
// A chunk is self-contained and checksummed (CRC-32 over its header and
// used payload), rewritten as each point is appended: a chunk torn by a
// crash or a disk error fails its check and is dropped alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "daemon/metric.h"

namespace memlens::tlc {

constexpr std::size_t kChunkBytes = 512;

struct ChunkHeader {
  uint64_t seq;       // 0: empty; increases along a timeline
  uint64_t owner;     // the slot generation that wrote it (others ignore it)
  int64_t first_ms;   // time of the first point (CLOCK_BOOTTIME, ms)
  uint32_t points;
  uint32_t bits;      // payload bits used
  float max[kSeriesCount];  // largest value of each series (NaN: none)
  uint32_t crc;       // CRC-32 of the header (this field 0) and payload[0, ceil(bits / 8))
};

struct Chunk {
  ChunkHeader h;
  uint8_t payload[kChunkBytes - sizeof(ChunkHeader)];
};
static_assert(sizeof(Chunk) == kChunkBytes);

struct DecodedPoint {
  int64_t t_ms = 0;
  float v[kSeriesCount] = {};
};

// Appends points to one chunk, in place; the chunk's checksum is valid
// after every call.
class ChunkWriter {
 public:
  // Empties `c` and makes it the next of its timeline.
  void start(Chunk& c, uint64_t seq, uint64_t owner);
  // False when the point does not fit: `c` is unchanged, start a new chunk.
  bool append(Chunk& c, int64_t t_ms, const float (&v)[kSeriesCount]);

 private:
  int64_t prev_t_ = 0, prev_delta_ = 0;
  uint32_t prev_v_[kSeriesCount] = {};
  unsigned lead_[kSeriesCount] = {}, trail_[kSeriesCount] = {};
  bool have_window_[kSeriesCount] = {};
};

uint32_t checksum(const Chunk& c);
// Whether the chunk is intact (its checksum and counts are consistent).
bool valid(const Chunk& c);
// Appends the chunk's points to `out`; false (nothing appended) when it is
// not intact or its bits do not decode.
bool decode(const Chunk& c, std::vector<DecodedPoint>& out);

}  // namespace memlens::tlc
