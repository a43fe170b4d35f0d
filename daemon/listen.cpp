#include "daemon/listen.h"

#include <arpa/inet.h>

#include <set>

namespace memlens {

namespace {

Error bad(std::string_view text, const std::string& why) {
  return make_error(Errc::invalid, "--web.listen-address '" + std::string(text) + "': " + why);
}

}  // namespace

Result<ListenAddress> parse_listen_address(std::string_view text) {
  // Longest valid form: "[" 45-character IPv6 text "]:65535".
  if (text.empty()) return bad(text, "empty address");
  if (text.size() > 64) return bad(text.substr(0, 64), "too long");
  const std::size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad(text, "expected host:port, [ipv6]:port or :port");
  const std::string_view host = text.substr(0, colon), port = text.substr(colon + 1);
  if (port.empty() || port.size() > 5) return bad(text, "the port must be 1 to 65535");
  unsigned long p = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return bad(text, "the port must be decimal digits");
    p = p * 10 + static_cast<unsigned long>(c - '0');
  }
  if (p < 1 || p > 65535) return bad(text, "the port must be 1 to 65535");

  ListenAddress a;
  a.text = std::string(text);
  a.port = static_cast<uint16_t>(p);
  if (host.empty()) {
    a.kind = ListenAddress::Kind::any;
    return a;
  }
  if (host == "localhost") {
    // As Go's listener does: the IPv4 loopback only.
    a.ip = "127.0.0.1";
    return a;
  }
  unsigned char buf[16];
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return bad(text, "an IPv6 address needs both brackets");
    const std::string ip(host.substr(1, host.size() - 2));
    if (inet_pton(AF_INET6, ip.c_str(), buf) != 1) return bad(text, "'" + ip + "' is not an IPv6 address");
    a.kind = ListenAddress::Kind::ipv6;
    a.ip = ip;
    return a;
  }
  const std::string ip(host);
  if (ip.find(':') != std::string::npos) return bad(text, "write an IPv6 address in brackets: [" + ip + "]:port");
  // inet_pton, unlike inet_aton, takes exactly four decimal octets 0-255.
  if (inet_pton(AF_INET, ip.c_str(), buf) != 1)
    return bad(text, "'" + ip + "' is not an IPv4 address (host names other than localhost are not resolved)");
  a.ip = ip;
  return a;
}

Result<std::vector<ListenAddress>> parse_listen_addresses(const std::vector<std::string>& values) {
  std::vector<ListenAddress> out;
  std::set<std::pair<std::string, uint16_t>> seen;
  for (const auto& v : values) {
    std::size_t start = 0;
    for (;;) {
      const std::size_t comma = v.find(',', start);
      const std::string_view one = std::string_view(v).substr(start, comma == std::string::npos ? std::string::npos
                                                                                                  : comma - start);
      auto a = parse_listen_address(one);
      if (!a) return a.error();
      // localhost and 127.0.0.1 are the same socket.
      const std::string key = a->kind == ListenAddress::Kind::any ? "*" : a->ip;
      if (!seen.insert({key, a->port}).second) return bad(one, "given twice");
      out.push_back(std::move(*a));
      if (out.size() > kMaxListenAddresses)
        return make_error(Errc::invalid, "--web.listen-address: more than " + std::to_string(kMaxListenAddresses) +
                                             " addresses");
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  if (out.empty()) return make_error(Errc::invalid, "--web.listen-address: no address");
  return out;
}

}  // namespace memlens
