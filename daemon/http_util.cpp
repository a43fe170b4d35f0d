#include "daemon/http_util.h"

#include <zlib.h>

#include <cstring>

namespace memlens {

namespace {

bool is_tchar(char c) {
  // RFC 9110 token characters (methods are tokens).
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// Raw deflate (no zlib/gzip wrapper) of `in`, ending with `flush`.
std::string deflate_raw(std::string_view in, int flush) {
  z_stream z{};
  // Level 6 (zlib's default): the text format compresses ~10x, and this runs
  // once per snapshot, not per scrape.
  if (deflateInit2(&z, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) return {};
  std::string out;
  out.resize(deflateBound(&z, in.size()) + 16);
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  deflate(&z, flush);
  out.resize(out.size() - z.avail_out);
  deflateEnd(&z);
  return out;
}

void put_le32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

bool valid_request_line(std::string_view line) {
  if (line.empty() || line.back() != '\r') return false;
  line.remove_suffix(1);
  const std::size_t sp1 = line.find(' ');
  if (sp1 == 0 || sp1 == std::string_view::npos) return false;
  for (char c : line.substr(0, sp1))
    if (!is_tchar(c)) return false;
  const std::size_t sp2 = line.rfind(' ');
  if (sp2 == sp1) return false;  // no version: HTTP/0.9
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1), version = line.substr(sp2 + 1);
  if (target.empty()) return false;
  for (char c : target)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return false;
  return version == "HTTP/1.1" || version == "HTTP/1.0";
}

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t n;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) n = 1, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef) n = 2, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4) n = 3, cp = c & 0x07;
    else return false;  // continuation byte first, 0xc0/0xc1 (overlong), > 0xf4
    if (i + n >= s.size()) return false;  // truncated sequence
    for (std::size_t k = 1; k <= n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff))) return false;  // overlong, too big
    if (cp >= 0xd800 && cp <= 0xdfff) return false;  // UTF-16 surrogates
    i += n + 1;
  }
  return true;
}

Result<std::string> decode_target_path(std::string_view target) {
  // Absolute form ("http://host/path"), which HTTP/1.1 servers must accept.
  for (std::string_view scheme : {"http://", "https://"}) {
    if (target.size() >= scheme.size() && iequals(target.substr(0, scheme.size()), scheme)) {
      const std::size_t slash = target.find('/', scheme.size());
      target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
      break;
    }
  }
  if (target.empty() || target.front() != '/') return make_error(Errc::malformed, "the request target is not a path");
  const std::size_t q = target.find_first_of("?#");
  if (q != std::string_view::npos) target = target.substr(0, q);
  std::string out;
  out.reserve(target.size());
  for (std::size_t i = 0; i < target.size(); ++i) {
    if (target[i] != '%') {
      out += target[i];
      continue;
    }
    const int hi = i + 2 < target.size() ? hex_value(target[i + 1]) : -1;
    const int lo = hi >= 0 ? hex_value(target[i + 2]) : -1;
    if (lo < 0) return make_error(Errc::malformed, "bad percent escape in the path");
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  if (out.find('\0') != std::string::npos) return make_error(Errc::malformed, "the path contains NUL");
  if (!valid_utf8(out)) return make_error(Errc::malformed, "the decoded path is not valid UTF-8");
  return out;
}

std::string raw_query(std::string_view target) {
  const std::size_t q = target.find('?');
  if (q == std::string_view::npos) return {};
  std::string_view rest = target.substr(q + 1);
  return std::string(rest.substr(0, rest.find('#')));
}

std::optional<std::string> query_param(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    const std::size_t eq = pair.find('=');
    if (pair.substr(0, eq) != key) continue;
    std::string_view raw = eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    std::string out;
    for (std::size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '+') {
        out += ' ';
      } else if (raw[i] == '%') {
        const int hi = i + 2 < raw.size() ? hex_value(raw[i + 1]) : -1;
        const int lo = hi >= 0 ? hex_value(raw[i + 2]) : -1;
        if (lo < 0) return std::nullopt;
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
      } else {
        out += raw[i];
      }
    }
    if (out.find('\0') != std::string::npos || !valid_utf8(out)) return std::nullopt;
    return out;
  }
  return std::nullopt;
}

bool accepts_gzip(std::string_view v) {
  while (!v.empty()) {
    const std::size_t comma = v.find(',');
    std::string_view item = v.substr(0, comma);
    v = comma == std::string_view::npos ? std::string_view() : v.substr(comma + 1);
    std::string_view coding = item, params;
    if (const std::size_t semi = item.find(';'); semi != std::string_view::npos) {
      coding = item.substr(0, semi);
      params = item.substr(semi + 1);
    }
    coding = trim(coding);
    if (!iequals(coding, "gzip") && !iequals(coding, "x-gzip")) continue;
    params = trim(params);
    if (params.size() >= 2 && (params[0] == 'q' || params[0] == 'Q') && params[1] == '=') {
      // q=0, q=0.0, q=0.000 refuse it; any other weight allows it.
      bool zero = true;
      for (char c : params.substr(2))
        if (c != '0' && c != '.' && c != ' ') zero = false;
      if (zero) continue;
    }
    return true;
  }
  return false;
}

std::optional<std::pair<std::string, std::string>> parse_basic_auth(std::string_view h) {
  h = trim(h);
  if (h.size() < 6 || !iequals(h.substr(0, 6), "basic ")) return std::nullopt;
  h = trim(h.substr(6));
  std::string raw;
  uint32_t acc = 0;
  int bits = 0;
  std::size_t i = 0;
  for (; i < h.size() && h[i] != '='; ++i) {
    const char c = h[i];
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      raw.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  for (; i < h.size(); ++i)
    if (h[i] != '=') return std::nullopt;
  const std::size_t colon = raw.find(':');
  if (colon == std::string::npos) return std::nullopt;
  return std::make_pair(raw.substr(0, colon), raw.substr(colon + 1));
}

GzipHead gzip_start(std::string_view text) {
  GzipHead h;
  // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=unix
  static const char kHeader[10] = {'\x1f', '\x8b', 8, 0, 0, 0, 0, 0, 0, 3};
  h.bytes.assign(kHeader, sizeof kHeader);
  if (!text.empty()) h.bytes += deflate_raw(text, Z_SYNC_FLUSH);
  h.crc = static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(text.data()), static_cast<uInt>(text.size())));
  h.length = text.size();
  return h;
}

std::string gzip_finish(const GzipHead& head, std::string_view tail) {
  // A fresh stream has no back-references into the head's data, and the
  // head ended on a byte boundary without a final block: the two deflate
  // streams concatenate into one.
  std::string out = deflate_raw(tail, Z_FINISH);
  const uLong tail_crc = crc32(0L, reinterpret_cast<const Bytef*>(tail.data()), static_cast<uInt>(tail.size()));
  put_le32(out, static_cast<uint32_t>(crc32_combine(head.crc, tail_crc, static_cast<z_off_t>(tail.size()))));
  put_le32(out, static_cast<uint32_t>((head.length + tail.size()) & 0xffffffffu));
  return out;
}

std::string gzip(std::string_view data) {
  GzipHead h = gzip_start(data);
  return h.bytes + gzip_finish(h, {});
}

std::string html_text(const std::string& s) {
  const bool utf8 = valid_utf8(s);
  std::string o;
  for (char c : s) {
    if (!utf8 && static_cast<unsigned char>(c) >= 0x80) {
      o += "\xef\xbf\xbd";  // U+FFFD
      continue;
    }
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

}  // namespace memlens
