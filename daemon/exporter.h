// What memlensd serves over HTTP, from the published snapshot: the
// exposition at the metrics path, /healthz, /api/v1/targets[/<name>/leaks]
// and the timeline pages at / and /targets/<name> (daemon/timeline_page.h). The exposition text is built once per snapshot
// on the publishing thread (and gzipped at most once per snapshot), so a
// scrape only appends its own few lines. Sockets, limits, TLS and auth are
// HttpServer's.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/http_server.h"
#include "daemon/result.h"
#include "daemon/snapshot.h"
#include "daemon/timeline_page.h"
#include "daemon/web_config.h"

namespace memlens {

struct ExporterOptions {
  // --web.listen-address values (repeatable; each may be a comma list).
  std::vector<std::string> listen{"127.0.0.1:19723"};
  std::string metrics_path = "/metrics";
  std::size_t max_connections = 512;
};

// --web.telemetry-path: a plain absolute path that does not hide /healthz,
// the API or the status page.
Result<void> check_metrics_path(const std::string& path);

class Exporter {
 public:
  ~Exporter();
  // Errc::invalid for bad options (exit 2), Errc::unavailable when an
  // address cannot be bound.
  static Result<std::unique_ptr<Exporter>> start(const ExporterOptions& opts,
                                                  std::shared_ptr<const WebConfig> web = nullptr);
  // The routes alone, with no sockets (tests and fuzzers call handle()).
  static std::unique_ptr<Exporter> routes_only(const std::string& metrics_path);
  // On the collection thread: swaps in the tick's snapshot (its text written
  // once by the tick; scrapes share it).
  void publish(std::shared_ptr<const Snapshot> s);
  std::shared_ptr<const Snapshot> current() const;
  const std::string& metrics_path() const { return metrics_path_; }
  int port() const { return ports_.empty() ? 0 : ports_.front(); }
  const std::vector<int>& ports() const { return ports_; }
  // The pages someone asked for lately: the tick draws those.
  const PageWants& page_wants() const { return wants_; }

  // The routes, on the HTTP I/O thread (or in a test, with no server).
  Access access(std::string_view path) const;
  HttpReply handle(const HttpRequest& req) const;

 private:
  // One published snapshot and its serialised forms.
  struct Exposition;

  Exporter() = default;
  std::shared_ptr<const Exposition> exposition() const;
  HttpReply metrics(const HttpRequest& req) const;
  HttpReply heap_profile(const HttpRequest& req, const std::shared_ptr<const Snapshot>& snap) const;
  HttpReply page(const std::string& path, const std::shared_ptr<const Snapshot>& snap) const;

  mutable std::mutex mu_;
  std::shared_ptr<const Exposition> current_;
  std::string metrics_path_;
  std::vector<int> ports_;
  mutable std::atomic<double> last_scrape_seconds_{0};
  mutable std::atomic<uint64_t> scrapes_{0};
  mutable PageWants wants_;
  // Last member: stopped first, before the state its routes read.
  std::unique_ptr<HttpServer> server_;
};

}  // namespace memlens
