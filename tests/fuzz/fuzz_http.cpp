// What an unauthenticated client controls: the request line, the target
// (percent-encoded path and query), the Accept-Encoding and Authorization
// headers. Targets that decode go through the routes (and so the JSON and
// HTML escaping of names and paths) against a snapshot with targets.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "daemon/exporter.h"
#include "daemon/http_util.h"
#include "daemon/snapshot.h"

namespace {
memlens::Exporter& exporter() {
  static const std::unique_ptr<memlens::Exporter> ex = [] {
    auto e = memlens::Exporter::routes_only("/metrics");
    auto snap = std::make_shared<memlens::Snapshot>();
    // The first target's values come from the series set, the second's
    // from the view itself (as where a page was drawn).
    static const memlens::MetricDesc rss =
        memlens::metric("rss", "bytes", memlens::MetricKind::gauge, "Resident set size.");
    memlens::SnapshotBuilder b;
    const std::size_t web = b.base({{"target", "web"}, {"pid", "42"}});
    b.add(memlens::MetricValue{&rss, {}, 1e6, {}}, web);
    b.add(memlens::MetricValue{&rss, {{"kind", "a\"b\\c\n"}}, 2, {}}, web);
    snap->series = b.take_set();
    snap->targets.push_back({"web", "comm=web", "web", "/usr/bin/web", 42, 1, {}, web, {}});
    snap->targets.push_back({"ünï\"<&>", "exe=x", "x\xff", "/tmp/\xc3", 43, 2, {}, 0, {{"memlens_rss_bytes", 3}}});
    snap->pages["/"] = std::make_shared<const std::string>("<p>drawn</p>");
    snap->documents["/api/v1/targets/web/leaks"] = "{\"target\":\"web\"}\n";
    e->publish(snap);
    return e;
  }();
  return *ex;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  (void)memlens::valid_request_line(in);
  (void)memlens::accepts_gzip(in);
  (void)memlens::parse_basic_auth(in);
  const bool utf8 = memlens::valid_utf8(in);
  // Query values (the profile's target and pid) decode to valid UTF-8 or
  // to nothing.
  const std::string query = memlens::raw_query(in);
  for (const char* key : {"target", "pid"})
    if (auto v = memlens::query_param(query, key); v && (!memlens::valid_utf8(*v) || v->find('\0') != std::string::npos))
      __builtin_trap();
  auto path = memlens::decode_target_path(in);
  if (!path) return 0;
  if (!memlens::valid_utf8(*path) || path->find('\0') != std::string::npos) __builtin_trap();
  for (const char* method : {"GET", "HEAD", "POST"}) {
    memlens::HttpRequest req;
    req.method = method;
    req.head = std::string_view(method) == "HEAD";
    req.path = *path;
    req.query = query;
    auto reply = exporter().handle(req);
    if (reply.status < 200 || reply.status > 599) __builtin_trap();
    // Bodies are text a browser or a JSON parser takes: valid UTF-8.
    if (!memlens::valid_utf8(reply.body)) __builtin_trap();
  }
  (void)utf8;
  return 0;
}
