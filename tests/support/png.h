// Reads the pixels of a PNG (8-bit RGB or RGBA, not interlaced: what
// Chromium's --screenshot writes), for tests that check what a page showed.
#pragma once

#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

namespace memlens::test {

struct Image {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> rgb;  // width * height * 3
  // Pixels whose colour is within `tolerance` (sum of channel differences).
  std::size_t count_near(uint8_t r, uint8_t g, uint8_t b, int tolerance) const {
    std::size_t n = 0;
    for (std::size_t i = 0; i + 2 < rgb.size(); i += 3)
      n += std::abs(rgb[i] - r) + std::abs(rgb[i + 1] - g) + std::abs(rgb[i + 2] - b) <= tolerance;
    return n;
  }
};

inline std::optional<Image> read_png(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  const std::string d((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (d.size() < 8 || d.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) return std::nullopt;
  auto be32 = [&](std::size_t at) {
    return static_cast<uint32_t>(static_cast<uint8_t>(d[at])) << 24 |
           static_cast<uint32_t>(static_cast<uint8_t>(d[at + 1])) << 16 |
           static_cast<uint32_t>(static_cast<uint8_t>(d[at + 2])) << 8 | static_cast<uint8_t>(d[at + 3]);
  };
  Image img;
  int channels = 0;
  std::string idat;
  for (std::size_t pos = 8; pos + 12 <= d.size();) {
    const uint32_t n = be32(pos);
    if (pos + 12 + n > d.size()) return std::nullopt;
    const std::string type = d.substr(pos + 4, 4);
    if (type == "IHDR") {
      img.width = be32(pos + 8);
      img.height = be32(pos + 12);
      const int depth = static_cast<uint8_t>(d[pos + 16]), colour = static_cast<uint8_t>(d[pos + 17]);
      const int interlace = static_cast<uint8_t>(d[pos + 20]);
      if (depth != 8 || (colour != 2 && colour != 6) || interlace != 0) return std::nullopt;
      channels = colour == 2 ? 3 : 4;
    } else if (type == "IDAT") {
      idat += d.substr(pos + 8, n);
    }
    pos += 12 + n;
  }
  if (!channels || img.width == 0 || img.height == 0 || img.width > 16384 || img.height > 16384) return std::nullopt;
  const std::size_t stride = std::size_t{img.width} * channels;
  std::vector<uint8_t> raw((stride + 1) * img.height);
  uLongf raw_len = raw.size();
  if (uncompress(raw.data(), &raw_len, reinterpret_cast<const Bytef*>(idat.data()), idat.size()) != Z_OK ||
      raw_len != raw.size())
    return std::nullopt;
  std::vector<uint8_t> prev(stride, 0), line(stride);
  img.rgb.reserve(std::size_t{img.width} * img.height * 3);
  for (uint32_t y = 0; y < img.height; ++y) {
    const uint8_t* in = &raw[y * (stride + 1)];
    const int filter = in[0];
    for (std::size_t x = 0; x < stride; ++x) {
      const int a = x >= static_cast<std::size_t>(channels) ? line[x - channels] : 0, b = prev[x];
      const int c = x >= static_cast<std::size_t>(channels) ? prev[x - channels] : 0;
      int pred = 0;
      switch (filter) {
        case 0: pred = 0; break;
        case 1: pred = a; break;
        case 2: pred = b; break;
        case 3: pred = (a + b) / 2; break;
        case 4: {
          const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
          pred = pa <= pb && pa <= pc ? a : (pb <= pc ? b : c);
          break;
        }
        default: return std::nullopt;
      }
      line[x] = static_cast<uint8_t>(in[1 + x] + pred);
    }
    for (uint32_t x = 0; x < img.width; ++x)
      img.rgb.insert(img.rgb.end(), &line[x * channels], &line[x * channels] + 3);
    prev.swap(line);
  }
  return img;
}

}  // namespace memlens::test
