#include "daemon/exporter.h"

#include <prometheus/text_serializer.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "daemon/clock.h"
#include "daemon/http_util.h"
#include "daemon/metric.h"

namespace memlens {

struct Exporter::Exposition {
  std::shared_ptr<const Snapshot> snap;
  // The snapshot's series in the text format, and its gzip, each written
  // by the first scrape that asks for it.
  mutable std::once_flag text_once, gzip_once;
  mutable std::shared_ptr<const std::string> text;
  mutable std::shared_ptr<const GzipHead> gzip;
  const std::shared_ptr<const std::string>& rendered() const {
    std::call_once(text_once, [&] {
      text = std::make_shared<const std::string>(snap && snap->series ? snap->series->render() : std::string());
    });
    return text;
  }
};

namespace {

constexpr const char* kTextPlain = "text/plain; charset=utf-8";
constexpr const char* kJson = "application/json";
constexpr const char* kExposition = "text/plain; version=0.0.4; charset=utf-8";

std::string dump(const nlohmann::json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

// Whether the snapshot has a target of that name.
bool watches(const Snapshot& snap, const std::string& name) {
  return std::any_of(snap.targets.begin(), snap.targets.end(), [&](const TargetView& t) { return t.name == name; });
}

HttpReply text(int status, std::string body) { return HttpReply{status, kTextPlain, nullptr, std::move(body), {}}; }
HttpReply json(int status, std::string body) { return HttpReply{status, kJson, nullptr, std::move(body), {}}; }

}  // namespace

Result<void> check_metrics_path(const std::string& p) {
  auto bad = [&](const std::string& why) { return make_error(Errc::invalid, "--web.telemetry-path '" + p + "': " + why); };
  if (p.empty() || p.front() != '/') return bad("must start with /");
  if (p.size() > 256) return bad("longer than 256 bytes");
  // Matched against the decoded request path: keep it plain.
  for (char c : p)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '%' || c == '?' || c == '#')
      return bad("no spaces, control characters, %, ? or # allowed");
  if (!valid_utf8(p)) return bad("not valid UTF-8");
  if (p == "/" || p == "/healthz" || p == "/api" || p.rfind("/api/", 0) == 0 || p.rfind("/targets/", 0) == 0)
    return bad("taken by the timeline pages, /healthz or the API");
  return {};
}

Result<std::unique_ptr<Exporter>> Exporter::start(const ExporterOptions& opts, std::shared_ptr<const WebConfig> web) {
  auto addrs = parse_listen_addresses(opts.listen);
  if (!addrs) return addrs.error();
  if (auto r = check_metrics_path(opts.metrics_path); !r) return r.error();
  if (opts.max_connections < 1) return make_error(Errc::invalid, "--web.max-connections must be at least 1");
  std::unique_ptr<Exporter> ex(new Exporter());
  ex->metrics_path_ = opts.metrics_path;
  ex->current_ = std::make_shared<const Exposition>();
  HttpServerOptions so;
  so.listen = std::move(*addrs);
  so.max_connections = opts.max_connections;
  const Exporter* self = ex.get();
  HttpServer::Routes routes{[self](std::string_view p) { return self->access(p); },
                            [self](const HttpRequest& r) { return self->handle(r); }};
  auto srv = HttpServer::start(so, std::move(web), std::move(routes));
  if (!srv) return srv.error();
  ex->server_ = std::move(*srv);
  ex->ports_ = ex->server_->ports();
  return ex;
}

std::unique_ptr<Exporter> Exporter::routes_only(const std::string& metrics_path) {
  std::unique_ptr<Exporter> ex(new Exporter());
  ex->metrics_path_ = metrics_path;
  ex->current_ = std::make_shared<const Exposition>();
  return ex;
}

Exporter::~Exporter() {
  server_.reset();  // no route runs after this
}

void Exporter::publish(std::shared_ptr<const Snapshot> s) {
  auto ex = std::make_shared<Exposition>();
  ex->snap = std::move(s);
  std::lock_guard<std::mutex> l(mu_);
  current_ = std::move(ex);
}

std::shared_ptr<const Exporter::Exposition> Exporter::exposition() const {
  std::lock_guard<std::mutex> l(mu_);
  return current_;
}

std::shared_ptr<const Snapshot> Exporter::current() const {
  auto ex = exposition();
  return ex ? ex->snap : nullptr;
}

Access Exporter::access(std::string_view p) const {
  if (p == "/healthz") return Access::open;  // probes carry no credentials
  if (p == metrics_path_) return Access::auth;
  if (p == "/" || p.rfind("/targets/", 0) == 0 || p == "/api" || p.rfind("/api/", 0) == 0 ||
      p == "/debug/pprof/heap")
    return Access::api;
  return Access::auth;
}

HttpReply Exporter::metrics(const HttpRequest& req) const {
  const auto t0 = std::chrono::steady_clock::now();
  auto ex = exposition();
  static const MetricDesc dur = metric("scrape_duration", "seconds", MetricKind::gauge,
                                       "Time the previous scrape took to assemble /metrics from the snapshot.");
  static const MetricDesc scrapes = metric("scrapes", "", MetricKind::counter, "Scrapes of /metrics served.");
  std::vector<prometheus::MetricFamily> tail;
  tail.push_back({dur.name, dur.help, prometheus::MetricType::Gauge, {}});
  tail.back().metric.emplace_back().gauge.value = last_scrape_seconds_.load();
  tail.push_back({scrapes.name, scrapes.help, prometheus::MetricType::Counter, {}});
  tail.back().metric.emplace_back().counter.value = static_cast<double>(scrapes_.fetch_add(1) + 1);
  if (server_) server_->append_metrics(tail);
  const std::string tail_text = prometheus::TextSerializer().Serialize(tail);

  HttpReply r{200, kExposition, nullptr, {}, {{"Vary", "Accept-Encoding"}}};
  if (req.gzip) {
    std::call_once(ex->gzip_once, [&] {
      ex->gzip = std::make_shared<const GzipHead>(gzip_start(*ex->rendered()));
    });
    r.shared = std::shared_ptr<const std::string>(ex->gzip, &ex->gzip->bytes);
    r.body = gzip_finish(*ex->gzip, tail_text);
    r.headers.emplace_back("Content-Encoding", "gzip");
  } else {
    r.shared = ex->rendered();
    r.body = tail_text;
  }
  last_scrape_seconds_.store(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return r;
}

// GET /debug/pprof/heap?target=NAME[&pid=N]: the gzipped pprof profile the
// sampler collector built (what `go tool pprof URL` fetches).
HttpReply Exporter::heap_profile(const HttpRequest& req, const std::shared_ptr<const Snapshot>& snap) const {
  if (!snap) return text(503, "no data yet\n");
  auto name = query_param(req.query, "target");
  if (!name || name->empty()) return text(400, "give the target: /debug/pprof/heap?target=NAME[&pid=PID]\n");
  std::string key = *name;
  if (auto pid = query_param(req.query, "pid")) {
    if (pid->empty() || pid->size() > 10 || pid->find_first_not_of("0123456789") != std::string::npos)
      return text(400, "pid must be a number\n");
    key += "/" + *pid;
  }
  auto it = snap->profiles.find(key);
  if (it == snap->profiles.end()) {
    return text(404, watches(*snap, *name) ? "no heap profile for this target: no otel_memory probes attached (preload "
                             "libmemlens-sampler.so, or use an allocator that fires them)\n"
                           : "no such target is watched\n");
  }
  HttpReply r;
  r.content_type = "application/octet-stream";
  r.shared = it->second;
  r.headers.emplace_back("Content-Disposition", "attachment; filename=\"heap.pb.gz\"");
  return r;
}

HttpReply Exporter::handle(const HttpRequest& req) const {
  const std::string& path = req.path;
  if (path == metrics_path_) return metrics(req);
  auto snap = current();
  if (path == "/healthz") {
    // Healthy once the first tick has published a snapshot.
    return snap ? text(200, "ok\n") : text(503, "starting\n");
  }
  if (path == "/debug/pprof/heap") return heap_profile(req, snap);
  const bool api = path.rfind("/api/", 0) == 0;
  const bool is_page = path == "/" || (path.size() > 9 && path.rfind("/targets/", 0) == 0);
  if (!api && !is_page) return text(404, "not found\n");
  if (!snap) return text(503, "no data yet\n");
  if (path == "/api/v1/targets") {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& t : snap->targets) {
      nlohmann::json values = nlohmann::json::object();
      for (const auto& [k, v] : snap->values_of(t)) values[k] = v;
      nlohmann::json entry = {{"name", t.name}, {"pid", t.pid}, {"start_time_ticks", t.start_time},
                              {"selector", t.selector}, {"comm", t.comm}, {"exe", t.exe}, {"values", values}};
      if (!t.labels.empty()) {
        nlohmann::json labels = nlohmann::json::object();
        for (const auto& [k, v] : t.labels) labels[k] = v;
        entry["labels"] = labels;
      }
      arr.push_back(std::move(entry));
    }
    return json(200, dump({{"status", "success"}, {"built_at", snap->built_at}, {"targets", arr}}));
  }
  if (auto it = snap->documents.find(path); it != snap->documents.end()) return json(200, it->second);
  static const std::string kTargets = "/api/v1/targets/", kLeaks = "/leaks";
  if (path.size() > kTargets.size() + kLeaks.size() && path.rfind(kTargets, 0) == 0 &&
      path.compare(path.size() - kLeaks.size(), kLeaks.size(), kLeaks) == 0) {
    const std::string name = path.substr(kTargets.size(), path.size() - kTargets.size() - kLeaks.size());
    const bool known = watches(*snap, name);
    return json(404, dump({{"target", name}, {"available", false},
                           {"reason", known ? "no leak sites captured for this target: set alloc.leak_sites: true "
                                              "(mode full or duty), or mode on-leak once its budget is crossed"
                                            : "no such target is watched"}}));
  }
  if (api) return json(404, "{\"status\":\"error\",\"error\":\"not found\"}\n");
  return page(path, snap);
}

// A timeline page: served from the snapshot when the tick drew it, and
// asked for (for the ticks of the next minute) in any case; until it is
// drawn, a page that reloads itself. Only names of watched targets are
// asked for, so requests cannot grow the set.
HttpReply Exporter::page(const std::string& path, const std::shared_ptr<const Snapshot>& snap) const {
  static const std::string kTargetPages = "/targets/";
  auto html = [](int status, std::string body) {
    return HttpReply{status, "text/html; charset=utf-8", nullptr, std::move(body), {}};
  };
  const double now = mono_now();
  std::string what = "the timelines";
  if (path == "/") {
    wants_.want_overview(now);
  } else {
    const std::string name = path.substr(kTargetPages.size());
    // A files target has no timeline: its figures are a document of its own.
    const std::string files = "/api/v1/targets/" + name + "/files";
    if (!watches(*snap, name) && snap->documents.count(files))
      return html(404, "<!doctype html><html><body><p>" + html_text(name) +
                           " is a files target, not a process: no timeline. Its files and bundle: <a href=\"" +
                           html_text(files) + "\">" + html_text(files) +
                           "</a>. <a href=\"/\">All targets</a></p></body></html>\n");
    if (!watches(*snap, name)) return html(404, "<!doctype html><html><body><p>No target named " + html_text(name) +
                                     " is watched. <a href=\"/\">All targets</a></p></body></html>\n");
    wants_.want_detail(name, now);
    what = "the timelines of " + name;
  }
  if (auto it = snap->pages.find(path); it != snap->pages.end()) {
    HttpReply r = html(200, "");
    r.shared = it->second;
    return r;
  }
  return html(200, render_pending(what));
}

}  // namespace memlens
