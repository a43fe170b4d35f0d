// Pure pieces of the HTTP server, kept apart so they are unit-tested without
// sockets: request-line and path checks, header parsing, and the gzip splice
// that lets a scrape append its own few lines to a body compressed once.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "daemon/result.h"

namespace memlens {

// The first line of an HTTP/1.x request, without its "\n": "METHOD SP
// TARGET SP HTTP/1.0|1.1 CR". Anything else (an HTTP/0.9 "GET /path", bare
// LF, junk) is answered 400 at once instead of waiting for a header end
// that will never come.
bool valid_request_line(std::string_view line);

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(std::string_view s);
// Text for HTML: markup characters escaped; not valid UTF-8 (names and comms
// come from processes: any bytes) replaced, byte by byte, with U+FFFD.
std::string html_text(const std::string& s);

// The request target -> the path routes match: query dropped, %XX decoded.
// Errors (Errc::malformed) carry the reason a 400 says: a bad escape, bytes
// that are not UTF-8, a NUL, a target that is not a path.
Result<std::string> decode_target_path(std::string_view target);

// The raw query of a request target (after '?', before '#'; "" when none).
std::string raw_query(std::string_view target);
// The value of `key` in a query ("a=1&b=x%20y"), percent- and '+'-decoded;
// nullopt when absent, or when the value is malformed, has NUL or is not
// valid UTF-8. The first occurrence wins.
std::optional<std::string> query_param(std::string_view query, std::string_view key);

// Whether an Accept-Encoding value allows gzip (gzip or x-gzip with q > 0).
bool accepts_gzip(std::string_view accept_encoding);

// "Basic base64(user:password)" -> (user, password); nullopt when malformed.
std::optional<std::pair<std::string, std::string>> parse_basic_auth(std::string_view authorization);

// A gzip member split in two: `head` is the gzip header and the deflate
// blocks of a large text, ending at a sync flush (byte-aligned, not final);
// gzip_finish() compresses a short tail in a fresh deflate stream and adds
// the trailer (CRC-32 combined, total length). head + finish is one valid
// gzip member: the big part is compressed once per snapshot, the tail per
// scrape.
struct GzipHead {
  std::string bytes;
  uint32_t crc = 0;
  uint64_t length = 0;
};
GzipHead gzip_start(std::string_view text);
std::string gzip_finish(const GzipHead& head, std::string_view tail);  // the bytes after head.bytes
// One whole gzip member of `data`.
std::string gzip(std::string_view data);

}  // namespace memlens
