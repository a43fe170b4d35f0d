// --web.listen-address, parsed strictly: an address memlensd binds is never a
// guess. Accepted forms: "IPv4:port", "[IPv6]:port", ":port" (every
// interface, IPv6 and IPv4) and "localhost:port" (127.0.0.1). The flag may be
// repeated, and one value may hold a comma-separated list.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/result.h"

namespace memlens {

struct ListenAddress {
  enum class Kind { ipv4, ipv6, any };
  std::string text;  // as given, for messages
  Kind kind = Kind::ipv4;
  std::string ip;    // numeric literal without brackets; empty for `any`
  uint16_t port = 0;
};

// Bounded so a mistyped list cannot open hundreds of sockets.
constexpr std::size_t kMaxListenAddresses = 16;

Result<ListenAddress> parse_listen_address(std::string_view text);
// Every flag value, each split at commas; duplicates are an error (the
// second bind would fail with a less clear message).
Result<std::vector<ListenAddress>> parse_listen_addresses(const std::vector<std::string>& values);

}  // namespace memlens
