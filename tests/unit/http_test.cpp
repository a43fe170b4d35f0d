// The HTTP server's pure parts: listen addresses, request lines, paths,
// headers, the gzip splice, the web config and bcrypt.
#include <crypt.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <memory>

#include "daemon/exporter.h"
#include "daemon/http_util.h"
#include "daemon/listen.h"
#include "daemon/web_config.h"
#include "tests/support/support.h"

using namespace memlens;

TEST(ListenAddress, AcceptsTheDocumentedForms) {
  auto a = parse_listen_address("127.0.0.1:19723");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->kind, ListenAddress::Kind::ipv4);
  EXPECT_EQ(a->ip, "127.0.0.1");
  EXPECT_EQ(a->port, 19723);
  a = parse_listen_address(":9");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->kind, ListenAddress::Kind::any);
  a = parse_listen_address("[::1]:65535");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->kind, ListenAddress::Kind::ipv6);
  EXPECT_EQ(a->ip, "::1");
  EXPECT_EQ(a->port, 65535);
  a = parse_listen_address("[fe80::1:2]:80");
  ASSERT_TRUE(a);
  a = parse_listen_address("localhost:1");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->ip, "127.0.0.1");
}

TEST(ListenAddress, RejectsEverythingElseWithAReason) {
  for (const char* s : {"", "nonsense", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
                        "127.0.0.1:99999999999999999999", "127.0.0.1:-1", "127.0.0.1:+80", "127.0.0.1: 80",
                        "127.0.0.1:12ab", "999.1.1.1:19490", "1.2.3:80", "01.2.3.4.5:80", "example.com:80",
                        "::1:80", "[::1:80", "::1]:80", "[]:80", "[127.0.0.1]:80", "[::1%lo]:80", "[::g]:80",
                        "127.0.0.1:80 "}) {
    auto a = parse_listen_address(s);
    EXPECT_FALSE(a.ok()) << "accepted '" << s << "'";
    if (!a.ok()) {
      EXPECT_EQ(a.error().code, Errc::invalid);
      EXPECT_NE(a.error().message.find("--web.listen-address"), std::string::npos) << a.error().message;
    }
  }
  // A very long value is cut in the message, not echoed whole.
  auto a = parse_listen_address(std::string(5000, '1') + ":80");
  ASSERT_FALSE(a.ok());
  EXPECT_LT(a.error().message.size(), 200u);
}

TEST(ListenAddress, RepeatedFlagsAndCommaLists) {
  auto l = parse_listen_addresses({"127.0.0.1:1,[::1]:1", ":2"});
  ASSERT_TRUE(l) << l.error().message;
  ASSERT_EQ(l->size(), 3u);
  EXPECT_EQ((*l)[1].ip, "::1");
  EXPECT_EQ((*l)[2].kind, ListenAddress::Kind::any);
  EXPECT_FALSE(parse_listen_addresses({"127.0.0.1:1", "localhost:1"}).ok()) << "the same socket twice";
  EXPECT_FALSE(parse_listen_addresses({"127.0.0.1:1,"}).ok());
  EXPECT_FALSE(parse_listen_addresses({}).ok());
  std::vector<std::string> many;
  for (int i = 1; i <= 17; ++i) many.push_back("127.0.0.1:" + std::to_string(i));
  EXPECT_FALSE(parse_listen_addresses(many).ok());
}

TEST(HttpUtil, RequestLine) {
  EXPECT_TRUE(valid_request_line("GET /metrics HTTP/1.1\r"));
  EXPECT_TRUE(valid_request_line("HEAD / HTTP/1.0\r"));
  EXPECT_TRUE(valid_request_line("GET /a%20b?x=1 HTTP/1.1\r"));
  EXPECT_FALSE(valid_request_line("GET /metrics\r")) << "HTTP/0.9";
  EXPECT_FALSE(valid_request_line("GET /metrics"));
  EXPECT_FALSE(valid_request_line("GET /metrics HTTP/1.1")) << "bare LF";
  EXPECT_FALSE(valid_request_line("GET /metrics HTTP/2.0\r"));
  EXPECT_FALSE(valid_request_line("GET  HTTP/1.1\r"));
  EXPECT_FALSE(valid_request_line(" GET / HTTP/1.1\r"));
  EXPECT_FALSE(valid_request_line("\x01\x02GARBAGE\r"));
  EXPECT_FALSE(valid_request_line("G(T / HTTP/1.1\r"));
}

TEST(HttpUtil, Utf8) {
  EXPECT_TRUE(valid_utf8(""));
  EXPECT_TRUE(valid_utf8("plain"));
  EXPECT_TRUE(valid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_TRUE(valid_utf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF
  EXPECT_FALSE(valid_utf8("\xff"));
  EXPECT_FALSE(valid_utf8("\xc3"));            // truncated
  EXPECT_FALSE(valid_utf8("a\xc3"));
  EXPECT_FALSE(valid_utf8("\xed\xa0\x80"));    // surrogate
  EXPECT_FALSE(valid_utf8("\xc0\xaf"));        // overlong '/'
  EXPECT_FALSE(valid_utf8("\xe0\x80\xaf"));    // overlong
  EXPECT_FALSE(valid_utf8("\xf0\x80\x80\xaf"));
  EXPECT_FALSE(valid_utf8("\xf4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(valid_utf8("\x80"));
}

TEST(HttpUtil, DecodeTargetPath) {
  EXPECT_EQ(*decode_target_path("/metrics"), "/metrics");
  EXPECT_EQ(*decode_target_path("/metrics?x=%ff"), "/metrics") << "the query is not decoded";
  EXPECT_EQ(*decode_target_path("/api/v1/targets/a%20b/leaks"), "/api/v1/targets/a b/leaks");
  EXPECT_EQ(*decode_target_path("/caf%C3%A9"), "/caf\xc3\xa9");
  EXPECT_EQ(*decode_target_path("http://host:1/metrics"), "/metrics");
  EXPECT_EQ(*decode_target_path("HTTP://host"), "/");
  for (const char* bad : {"/api/v1/targets/%ff/leaks", "/%c3", "/%ed%a0%80", "/%C0%AF", "/metrics%00", "/%", "/%4",
                          "/%zz", "*", "metrics", ""}) {
    auto r = decode_target_path(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.error().code, Errc::malformed);
    }
  }
  EXPECT_NE(decode_target_path("/metrics%00").error().message.find("NUL"), std::string::npos);
  EXPECT_NE(decode_target_path("/%ff").error().message.find("UTF-8"), std::string::npos);
}

TEST(HttpUtil, AcceptEncoding) {
  EXPECT_TRUE(accepts_gzip("gzip"));
  EXPECT_TRUE(accepts_gzip("deflate, GZIP;q=0.5"));
  EXPECT_TRUE(accepts_gzip("x-gzip"));
  EXPECT_TRUE(accepts_gzip("gzip;q=1, identity"));
  EXPECT_FALSE(accepts_gzip(""));
  EXPECT_FALSE(accepts_gzip("identity"));
  EXPECT_FALSE(accepts_gzip("gzip;q=0"));
  EXPECT_FALSE(accepts_gzip("gzip; q=0.000"));
  EXPECT_FALSE(accepts_gzip("gzipx"));
}

TEST(HttpUtil, BasicAuthHeader) {
  auto c = parse_basic_auth("Basic YWxpY2U6cHc6eA==");  // alice:pw:x
  ASSERT_TRUE(c);
  EXPECT_EQ(c->first, "alice");
  EXPECT_EQ(c->second, "pw:x");
  c = parse_basic_auth("basic Ym9iOg");  // bob: (no padding)
  ASSERT_TRUE(c);
  EXPECT_EQ(c->first, "bob");
  EXPECT_EQ(c->second, "");
  EXPECT_FALSE(parse_basic_auth(""));
  EXPECT_FALSE(parse_basic_auth("Bearer abc"));
  EXPECT_FALSE(parse_basic_auth("Basic !!!"));
  EXPECT_FALSE(parse_basic_auth("Basic YWxpY2U="));  // no colon
  EXPECT_FALSE(parse_basic_auth("Basic YW=xp"));
}

namespace {
std::string gunzip(const std::string& in) {
  z_stream z{};
  EXPECT_EQ(inflateInit2(&z, 16 + MAX_WBITS), Z_OK);
  std::string out(1 << 20, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  const int rc = inflate(&z, Z_FINISH);
  EXPECT_EQ(rc, Z_STREAM_END) << "not one complete gzip member";
  EXPECT_EQ(z.avail_in, 0u) << "bytes after the gzip member";
  // (z.total_out, not size - avail_out: g++ 12 cannot bound the latter.)
  out.resize(std::min<std::size_t>(z.total_out, out.size()));
  inflateEnd(&z);
  return out;
}
}  // namespace

TEST(HttpUtil, GzipSpliceIsOneMember) {
  std::string big;
  for (int i = 0; i < 5000; ++i) big += "memlens_rss_bytes{target=\"t\",pid=\"" + std::to_string(i) + "\"} 12345\n";
  const std::string tail = "# HELP memlens_scrapes_total Scrapes.\n# TYPE memlens_scrapes_total counter\nmemlens_scrapes_total 3\n";
  const GzipHead head = gzip_start(big);
  EXPECT_LT(head.bytes.size(), big.size() / 5) << "it compresses";
  EXPECT_EQ(gunzip(head.bytes + gzip_finish(head, tail)), big + tail);
  // The same head serves many tails.
  EXPECT_EQ(gunzip(head.bytes + gzip_finish(head, "x 1\n")), big + "x 1\n");
  // Empty parts.
  const GzipHead empty = gzip_start("");
  EXPECT_EQ(gunzip(empty.bytes + gzip_finish(empty, tail)), tail);
  EXPECT_EQ(gunzip(head.bytes + gzip_finish(head, "")), big);
}

TEST(MetricsPath, ReservedAndOddPathsAreRefused) {
  EXPECT_TRUE(check_metrics_path("/metrics"));
  EXPECT_TRUE(check_metrics_path("/memlens/metrics"));
  for (const char* p : {"", "metrics", "/", "/healthz", "/api", "/api/v1/targets", "/a b", "/a%20", "/a?x", "/a#x",
                        "/\xff"})
    EXPECT_FALSE(check_metrics_path(p).ok()) << p;
}

namespace {
std::string make_hash(const std::string& pw, const std::string& prefix = "$2b$04$") {
  crypt_data d{};
  const char* h = crypt_r(pw.c_str(), (prefix + "abcdefghijklmnopqrstuv").c_str(), &d);
  return h ? h : "";
}
Error web_bad(const std::string& yaml) {
  auto c = parse_web_config(yaml, "web.yml", "/nonexistent");
  EXPECT_FALSE(c.ok()) << "accepted:\n" << yaml;
  return c.ok() ? Error{} : c.error();
}
}  // namespace

TEST(Bcrypt, MatchesOnlyTheRightPassword) {
  for (const char* prefix : {"$2b$04$", "$2y$04$", "$2a$04$"}) {
    const std::string h = make_hash("s3cret", prefix);
    ASSERT_TRUE(valid_bcrypt_hash(h)) << h;
    EXPECT_TRUE(bcrypt_matches("s3cret", h));
    EXPECT_FALSE(bcrypt_matches("s3cre", h));
    EXPECT_FALSE(bcrypt_matches("s3cret ", h));
    EXPECT_FALSE(bcrypt_matches(std::string("s3cret\0x", 8), h)) << "a NUL must not cut the password";
    EXPECT_FALSE(bcrypt_matches("", h));
  }
  EXPECT_FALSE(valid_bcrypt_hash("$1$abc$def"));
  EXPECT_FALSE(valid_bcrypt_hash("plaintext"));
  EXPECT_FALSE(valid_bcrypt_hash("$2b$03$abcdefghijklmnopqrstuuj7m4XYqbm74SxoBcXyw8to0CQ061DVG"));
  EXPECT_FALSE(valid_bcrypt_hash("$2x$10$abcdefghijklmnopqrstuuj7m4XYqbm74SxoBcXyw8to0CQ061DVG"));
  EXPECT_FALSE(valid_bcrypt_hash("$2b$10$abcdefghijklmnopqrstuuj7m4XYqbm74SxoBcXyw8to0CQ061DV!"));
}

TEST(WebConfig, ParsesTheToolkitFormat) {
  const std::string h = make_hash("pw");
  auto c = parse_web_config("basic_auth_users:\n  alice: " + h + "\n  bob: " + h +
                                "\napi_users: [alice]\n"
                                "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n"
                                "    Content-Security-Policy: \"default-src 'self'\"\n    X-XSS-Protection: ''\n"
                                "rate_limit: {interval: 100ms, burst: 5}\n",
                            "web.yml", "/tmp");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_TRUE(c->auth_required());
  EXPECT_EQ(c->users.size(), 2u);
  ASSERT_TRUE(c->api_users);
  EXPECT_EQ(*c->api_users, std::set<std::string>{"alice"});
  EXPECT_FALSE(c->tls);
  ASSERT_EQ(c->headers.size(), 2u) << "a blank header value is unset";
  EXPECT_EQ(c->rate_interval.count(), 100);
  EXPECT_EQ(c->rate_burst, 5);
  // Empty file, empty tls_server_config: plain HTTP without auth.
  c = parse_web_config("", "web.yml", "/tmp");
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->auth_required());
  EXPECT_FALSE(c->api_users);
  c = parse_web_config("tls_server_config: {}\napi_users: []\n", "web.yml", "/tmp");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_FALSE(c->tls);
  ASSERT_TRUE(c->api_users);
  EXPECT_TRUE(c->api_users->empty());
}

TEST(WebConfig, ErrorsNameFileLineAndField) {
  EXPECT_EQ(web_bad("basic_auth_user:\n  a: b\n").message, "web.yml:1:1: basic_auth_user: unknown field");
  EXPECT_EQ(web_bad("basic_auth_users:\n  alice: plain\n").message.substr(0, 37),
            "web.yml:2:10: basic_auth_users.alice:");
  EXPECT_NE(web_bad("tls_server_config:\n  cert_file: c.pem\n").message.find(
                "web.yml:2:14: tls_server_config.cert_file: cannot read /nonexistent/c.pem"),
            std::string::npos);
  EXPECT_NE(web_bad("tls_server_config:\n  cert: x\n").message.find("missing key_file"), std::string::npos);
  EXPECT_NE(web_bad("tls_server_config:\n  cert: x\n  key: y\n  client_auth_type: Maybe\n").message.find("client_auth_type"),
            std::string::npos);
  EXPECT_NE(web_bad("tls_server_config:\n  cert: x\n  key: y\n  client_auth_type: RequireAndVerifyClientCert\n")
                .message.find("client_ca_file"),
            std::string::npos);
  EXPECT_NE(web_bad("tls_server_config:\n  cert: x\n  key: y\n  min_version: TLS14\n").message.find("min_version"),
            std::string::npos);
  EXPECT_NE(web_bad("tls_server_config:\n  cert: x\n  key: y\n  min_version: TLS13\n  max_version: TLS12\n")
                .message.find("below min_version"),
            std::string::npos);
  EXPECT_NE(web_bad("tls_server_config:\n  cert: x\n  key: y\n  curve_preferences: [CurveP999]\n").message.find("CurveP999"),
            std::string::npos);
  EXPECT_NE(web_bad("tls_server_config:\n  cert: x\n  key: y\n  client_allowed_sans: [a]\n").message.find("client_auth_type"),
            std::string::npos);
  EXPECT_NE(web_bad("http_server_config:\n  headers:\n    Server: x\n").message.find("cannot be configured"), std::string::npos);
  EXPECT_NE(web_bad("http_server_config:\n  headers:\n    X-Frame-Options: allow\n").message.find("not an accepted value"),
            std::string::npos);
  EXPECT_NE(web_bad("api_users: [carol]\n").message.find("'carol' is not in basic_auth_users"), std::string::npos);
  EXPECT_NE(web_bad("rate_limit: {interval: 1s}\n").message.find("rate_limit.burst"), std::string::npos);
  EXPECT_NE(web_bad("basic_auth_users: [a, b]\n").message.find("basic_auth_users"), std::string::npos);
  EXPECT_NE(web_bad("a: [unclosed\n").message.find("web.yml:"), std::string::npos);
}

TEST(WebConfig, LoadNamesAMissingFile) {
  auto c = load_web_config("/nonexistent/web.yml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("/nonexistent/web.yml: cannot open"), std::string::npos) << c.error().message;
}
