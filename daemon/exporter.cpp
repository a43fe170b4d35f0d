#include "daemon/exporter.h"

#include <CivetServer.h>
#include <civetweb.h>
#include <prometheus/collectable.h>
#include <prometheus/exposer.h>

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <nlohmann/json.hpp>

#include "daemon/metric.h"

namespace memlens {

namespace {

// civetweb's callback carries no user pointer we own; one exporter per
// process is all memlensd ever runs.
std::atomic<const Exporter*> g_exporter{nullptr};

int begin_request(mg_connection* conn) {
  const Exporter* ex = g_exporter.load();
  const mg_request_info* ri = mg_get_request_info(conn);
  if (!ex || !ri || !ri->local_uri) return 0;
  Exporter::Response r;
  if (!ex->handle(ri->request_method ? ri->request_method : "", ri->local_uri, r)) return 0;
  const bool head = ri->request_method && std::string(ri->request_method) == "HEAD";
  const char* reason = r.status == 200 ? "OK" : r.status == 404 ? "Not Found" : r.status == 405 ? "Method Not Allowed" : "Error";
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            r.status, reason, r.content_type.c_str(), r.body.size(),
            r.status == 405 ? "Allow: GET, HEAD\r\n" : "");
  if (!head) mg_write(conn, r.body.data(), r.body.size());
  return r.status;  // non-zero: handled
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

}  // namespace

// Hands the current snapshot's families to the Exposer at scrape time; the
// only work on the HTTP thread is a copy, plus the scrape's own duration.
class SnapshotCollectable : public prometheus::Collectable {
 public:
  explicit SnapshotCollectable(const Exporter* ex) : ex_(ex) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    const auto t0 = std::chrono::steady_clock::now();
    auto snap = ex_->current();
    std::vector<prometheus::MetricFamily> out;
    if (snap) out = snap->families;
    static const MetricDesc dur = metric("scrape_duration", "seconds", MetricKind::gauge,
                                         "Time the previous scrape took to assemble /metrics from the snapshot.");
    static const MetricDesc scrapes = metric("scrapes", "", MetricKind::counter, "Scrapes of /metrics served.");
    const uint64_t n = scrapes_.fetch_add(1) + 1;
    prometheus::MetricFamily f1{dur.name, dur.help, prometheus::MetricType::Gauge, {}};
    prometheus::ClientMetric m1;
    m1.gauge.value = last_seconds_.load();
    f1.metric.push_back(m1);
    prometheus::MetricFamily f2{scrapes.name, scrapes.help, prometheus::MetricType::Counter, {}};
    prometheus::ClientMetric m2;
    m2.counter.value = static_cast<double>(n);
    f2.metric.push_back(m2);
    out.push_back(std::move(f1));
    out.push_back(std::move(f2));
    last_seconds_.store(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return out;
  }

 private:
  const Exporter* ex_;
  mutable std::atomic<double> last_seconds_{0};
  mutable std::atomic<uint64_t> scrapes_{0};
};

Result<std::string> civet_listen_spec(const std::string& listen) {
  std::size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 >= listen.size())
    return make_error(Errc::invalid, "--web.listen-address '" + listen + "': expected host:port");
  const std::string host = listen.substr(0, colon), port = listen.substr(colon + 1);
  for (char c : port)
    if (c < '0' || c > '9') return make_error(Errc::invalid, "--web.listen-address '" + listen + "': bad port");
  const long p = std::stol(port);
  if (p < 1 || p > 65535) return make_error(Errc::invalid, "--web.listen-address '" + listen + "': port out of range");
  if (host.empty() || host == "0.0.0.0") return port;  // civetweb: a bare port is every IPv4 address
  return host + ":" + port;                             // "127.0.0.1:p" and "[::1]:p" as given
}

Result<std::unique_ptr<Exporter>> Exporter::start(const std::string& listen, const std::string& metrics_path) {
  auto spec = civet_listen_spec(listen);
  if (!spec) return spec.error();
  if (metrics_path.empty() || metrics_path.front() != '/')
    return make_error(Errc::invalid, "--web.telemetry-path '" + metrics_path + "': must start with /");
  std::unique_ptr<Exporter> ex(new Exporter());
  ex->metrics_path_ = metrics_path;
  static CivetCallbacks callbacks;
  callbacks.begin_request = &begin_request;
  // The callback may run as soon as the server starts.
  g_exporter.store(ex.get());
  try {
    ex->exposer_ = std::make_unique<prometheus::Exposer>(
        std::vector<std::string>{"listening_ports", *spec, "num_threads", "4",
                                 "request_timeout_ms", "10000"},
        &callbacks);
  } catch (const std::exception& e) {
    g_exporter.store(nullptr);
    return make_error(Errc::unavailable, "cannot listen on " + listen + ": " + e.what());
  }
  ex->collectable_ = std::make_shared<SnapshotCollectable>(ex.get());
  ex->exposer_->RegisterCollectable(ex->collectable_, metrics_path);
  auto ports = ex->exposer_->GetListeningPorts();
  ex->port_ = ports.empty() ? 0 : ports.front();
  // Where a connection reaches the listener (see ~Exporter).
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  if (host == "[::]") host = "::1";
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  ex->wake_host_ = host;
  return ex;
}

namespace {

// civetweb's master thread notices mg_stop() only when its poll() on the
// listening socket returns, which it does every 2 s when idle: shutdown would
// take 2 s. Connecting to ourselves wakes it at once.
void poke(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return;
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    (void)::connect(fd, res->ai_addr, res->ai_addrlen);
    ::close(fd);
  }
  freeaddrinfo(res);
}

}  // namespace

Exporter::~Exporter() {
  std::atomic<bool> stopped{false};
  std::thread waker([&] {
    while (!stopped.load()) {
      if (port_ > 0) poke(wake_host_, port_);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  exposer_.reset();  // stops the HTTP threads before the snapshot goes
  stopped.store(true);
  waker.join();
  g_exporter.store(nullptr);
}

void Exporter::publish(std::shared_ptr<const Snapshot> s) {
  std::lock_guard<std::mutex> l(mu_);
  snap_ = std::move(s);
}

std::shared_ptr<const Snapshot> Exporter::current() const {
  std::lock_guard<std::mutex> l(mu_);
  return snap_;
}

bool Exporter::handle(const std::string& method, const std::string& path, Response& out) const {
  const bool ours = path == "/" || path == "/healthz" || path.rfind("/api/v1/", 0) == 0;
  if (!ours || path == metrics_path_) return false;
  if (method != "GET" && method != "HEAD") {
    out = {405, "text/plain; charset=utf-8", "only GET and HEAD are allowed\n"};
    return true;
  }
  auto snap = current();
  if (path == "/healthz") {
    // Healthy once the first tick has published a snapshot.
    if (snap) out = {200, "text/plain; charset=utf-8", "ok\n"};
    else out = {503, "text/plain; charset=utf-8", "starting\n"};
    return true;
  }
  if (!snap) {
    out = {503, "text/plain; charset=utf-8", "no data yet\n"};
    return true;
  }
  if (path == "/api/v1/targets") {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& t : snap->targets) {
      nlohmann::json values = nlohmann::json::object();
      for (const auto& [k, v] : t.values) values[k] = v;
      arr.push_back({{"name", t.name}, {"pid", t.pid}, {"start_time_ticks", t.start_time},
                     {"selector", t.selector}, {"comm", t.comm}, {"exe", t.exe}, {"values", values}});
    }
    nlohmann::json doc = {{"status", "success"}, {"built_at", snap->built_at}, {"targets", arr}};
    out = {200, "application/json", doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n"};
    return true;
  }
  if (auto it = snap->documents.find(path); it != snap->documents.end()) {
    out = {200, "application/json", it->second};
    return true;
  }
  static const std::string kTargets = "/api/v1/targets/", kLeaks = "/leaks";
  if (path.size() > kTargets.size() + kLeaks.size() && path.rfind(kTargets, 0) == 0 &&
      path.compare(path.size() - kLeaks.size(), kLeaks.size(), kLeaks) == 0) {
    const std::string name = path.substr(kTargets.size(), path.size() - kTargets.size() - kLeaks.size());
    bool known = false;
    for (const auto& t : snap->targets) known |= t.name == name;
    nlohmann::json doc = {{"target", name}, {"available", false},
                          {"reason", known ? "no leak sites captured for this target: set alloc.leak_sites: true "
                                             "(mode full or duty), or mode on-leak once its budget is crossed"
                                           : "no such target is watched"}};
    out = {404, "application/json", doc.dump(2) + "\n"};
    return true;
  }
  if (path == "/") {
    std::string b =
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>memlens</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body><h1>memlens</h1>"
        "<p><a href=\"" + html_escape(metrics_path_) + "\">metrics</a> &middot; <a href=\"/api/v1/targets\">targets (JSON)</a>"
        " &middot; <a href=\"/healthz\">health</a></p><table><tr><th>target</th><th>pid</th><th>comm</th>"
        "<th>RSS MiB</th><th>leak slope B/s</th></tr>";
    for (const auto& t : snap->targets) {
      double rss = 0, slope = 0;
      for (const auto& [k, v] : t.values) {
        if (k == "memlens_rss_bytes") rss = v;
        if (k == "memlens_leak_slope_bytes_per_second") slope = v;
      }
      char row[128];
      std::snprintf(row, sizeof row, "<td>%d</td>", t.pid);
      b += "<tr><td>" + html_escape(t.name) + "</td>" + row + "<td>" + html_escape(t.comm) + "</td>";
      std::snprintf(row, sizeof row, "<td>%.1f</td><td>%.0f</td></tr>", rss / 1048576.0, slope);
      b += row;
    }
    b += "</table></body></html>\n";
    out = {200, "text/html; charset=utf-8", b};
    return true;
  }
  out = {404, "application/json", "{\"status\":\"error\",\"error\":\"not found\"}\n"};
  return true;
}

}  // namespace memlens
