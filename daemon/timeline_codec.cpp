#include "daemon/timeline_codec.h"

#include <zlib.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace memlens::tlc {

namespace {

constexpr std::size_t kPayloadBits = sizeof(Chunk::payload) * 8;

// MSB-first bits into a byte buffer.
class BitWriter {
 public:
  BitWriter(uint8_t* buf, std::size_t cap_bits, std::size_t pos) : buf_(buf), cap_(cap_bits), pos_(pos) {}
  void put(uint64_t v, unsigned n) {
    for (unsigned i = n; i-- > 0;) {
      if (pos_ >= cap_) {
        overflow_ = true;
        return;
      }
      const uint8_t bit = static_cast<uint8_t>((v >> i) & 1u);
      uint8_t& byte = buf_[pos_ / 8];
      const unsigned shift = 7 - pos_ % 8;
      byte = static_cast<uint8_t>((byte & ~(1u << shift)) | (bit << shift));
      ++pos_;
    }
  }
  std::size_t pos() const { return pos_; }
  bool overflow() const { return overflow_; }

 private:
  uint8_t* buf_;
  std::size_t cap_, pos_;
  bool overflow_ = false;
};

class BitReader {
 public:
  BitReader(const uint8_t* buf, std::size_t nbits) : buf_(buf), n_(nbits) {}
  bool get(unsigned n, uint64_t& v) {
    v = 0;
    for (unsigned i = 0; i < n; ++i) {
      if (pos_ >= n_) return false;
      v = (v << 1) | ((buf_[pos_ / 8] >> (7 - pos_ % 8)) & 1u);
      ++pos_;
    }
    return true;
  }

 private:
  const uint8_t* buf_;
  std::size_t n_, pos_ = 0;
};

// Delta-of-delta buckets: '0' | '10'+7 | '110'+9 | '1110'+12 | '1111'+64.
void put_dod(BitWriter& w, int64_t dod) {
  if (dod == 0) {
    w.put(0, 1);
  } else if (dod >= -63 && dod <= 64) {
    w.put(0b10, 2);
    w.put(static_cast<uint64_t>(dod + 63), 7);
  } else if (dod >= -255 && dod <= 256) {
    w.put(0b110, 3);
    w.put(static_cast<uint64_t>(dod + 255), 9);
  } else if (dod >= -2047 && dod <= 2048) {
    w.put(0b1110, 4);
    w.put(static_cast<uint64_t>(dod + 2047), 12);
  } else {
    w.put(0b1111, 4);
    w.put(static_cast<uint64_t>(dod), 64);
  }
}

bool get_dod(BitReader& r, int64_t& dod) {
  uint64_t b = 0;
  unsigned ones = 0;
  while (ones < 4) {
    if (!r.get(1, b)) return false;
    if (b == 0) break;
    ++ones;
  }
  static constexpr unsigned kWidth[] = {0, 7, 9, 12, 64};
  static constexpr int64_t kBias[] = {0, 63, 255, 2047, 0};
  if (ones == 0) {
    dod = 0;
    return true;
  }
  uint64_t v = 0;
  if (!r.get(kWidth[ones], v)) return false;
  dod = static_cast<int64_t>(v) - kBias[ones];
  return true;
}

uint32_t float_bits(float f) { return std::bit_cast<uint32_t>(f); }

}  // namespace

uint32_t checksum(const Chunk& c) {
  ChunkHeader h = c.h;
  h.crc = 0;
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(&h), sizeof h);
  const std::size_t used = std::min<std::size_t>((c.h.bits + 7) / 8, sizeof c.payload);
  crc = crc32(crc, c.payload, static_cast<uInt>(used));
  return static_cast<uint32_t>(crc);
}

bool valid(const Chunk& c) {
  return c.h.seq != 0 && c.h.bits <= kPayloadBits && c.h.points > 0 && c.h.crc == checksum(c);
}

void ChunkWriter::start(Chunk& c, uint64_t seq, uint64_t owner) {
  std::memset(&c.h, 0, sizeof c.h);
  c.h.seq = seq;
  c.h.owner = owner;
  for (auto& m : c.h.max) m = std::numeric_limits<float>::quiet_NaN();
  c.h.crc = checksum(c);
  *this = ChunkWriter{};
}

bool ChunkWriter::append(Chunk& c, int64_t t_ms, const float (&v)[kSeriesCount]) {
  // Encode into scratch first: the chunk changes only if the point fits.
  uint8_t scratch[40] = {};
  BitWriter w(scratch, sizeof scratch * 8, 0);
  ChunkWriter next = *this;
  if (c.h.points > 0) {
    const int64_t delta = t_ms - prev_t_;
    put_dod(w, delta - prev_delta_);
    next.prev_delta_ = delta;
  }
  next.prev_t_ = t_ms;
  for (std::size_t i = 0; i < kSeriesCount; ++i) {
    const uint32_t bits = float_bits(v[i]);
    const uint32_t x = bits ^ prev_v_[i];
    next.prev_v_[i] = bits;
    if (x == 0) {
      w.put(0, 1);
      continue;
    }
    const unsigned lead = std::min(31u, static_cast<unsigned>(std::countl_zero(x)));
    const unsigned trail = static_cast<unsigned>(std::countr_zero(x));
    if (have_window_[i] && lead >= lead_[i] && trail >= trail_[i]) {
      w.put(0b10, 2);
      w.put(x >> trail_[i], 32 - lead_[i] - trail_[i]);
    } else {
      const unsigned sig = 32 - lead - trail;  // 1..32
      w.put(0b11, 2);
      w.put(lead, 5);
      w.put(sig - 1, 5);
      w.put(x >> trail, sig);
      next.lead_[i] = lead;
      next.trail_[i] = trail;
      next.have_window_[i] = true;
    }
  }
  const std::size_t n = w.pos();
  if (c.h.bits + n > kPayloadBits) return false;
  BitWriter out(c.payload, kPayloadBits, c.h.bits);
  BitReader in(scratch, n);
  for (std::size_t done = 0; done < n;) {
    const unsigned take = static_cast<unsigned>(std::min<std::size_t>(32, n - done));
    uint64_t bits = 0;
    in.get(take, bits);
    out.put(bits, take);
    done += take;
  }
  if (c.h.points == 0) c.h.first_ms = t_ms;
  c.h.points += 1;
  c.h.bits = static_cast<uint32_t>(out.pos());
  for (std::size_t i = 0; i < kSeriesCount; ++i)
    if (!std::isnan(v[i]) && (std::isnan(c.h.max[i]) || v[i] > c.h.max[i])) c.h.max[i] = v[i];
  c.h.crc = checksum(c);
  *this = next;
  return true;
}

bool decode(const Chunk& c, std::vector<DecodedPoint>& out) {
  if (!valid(c)) return false;
  const std::size_t start = out.size();
  BitReader r(c.payload, c.h.bits);
  int64_t t = c.h.first_ms, delta = 0;
  uint32_t prev[kSeriesCount] = {};
  unsigned lead[kSeriesCount] = {}, trail[kSeriesCount] = {};
  for (uint32_t p = 0; p < c.h.points; ++p) {
    DecodedPoint dp;
    if (p > 0) {
      int64_t dod = 0;
      if (!get_dod(r, dod)) break;
      delta += dod;
      t += delta;
    }
    dp.t_ms = t;
    bool ok = true;
    for (std::size_t i = 0; i < kSeriesCount && ok; ++i) {
      uint64_t b = 0;
      ok = r.get(1, b);
      uint32_t x = 0;
      if (ok && b == 1) {
        ok = r.get(1, b);
        if (ok && b == 0) {
          const unsigned sig = 32 - lead[i] - trail[i];
          uint64_t m = 0;
          ok = sig >= 1 && sig <= 32 && r.get(sig, m);
          x = static_cast<uint32_t>(m << trail[i]);
        } else if (ok) {
          uint64_t l = 0, s = 0, m = 0;
          ok = r.get(5, l) && r.get(5, s) && l + s + 1 <= 32 && r.get(static_cast<unsigned>(s + 1), m);
          lead[i] = static_cast<unsigned>(l);
          trail[i] = static_cast<unsigned>(32 - l - (s + 1));
          x = static_cast<uint32_t>(m << trail[i]);
        }
      }
      prev[i] ^= x;
      dp.v[i] = std::bit_cast<float>(prev[i]);
    }
    if (!ok) {
      out.resize(start);
      return false;
    }
    out.push_back(dp);
  }
  if (out.size() - start != c.h.points) {
    out.resize(start);
    return false;
  }
  return true;
}

}  // namespace memlens::tlc
