// The HTTP(S) server: Boost.Beast on one Asio I/O thread. It owns the
// sockets and decides what reaches the routes: a bounded number of
// connections (the oldest one still waiting for a request is closed to make
// room), a deadline for each request header, an idle keep-alive timeout, a
// header size limit, no request bodies, strict request lines and paths, TLS
// and basic auth from the web config (bcrypt on a worker thread, successes
// cached), and the optional rate limit. The routes (Exporter) only map a
// checked request to a reply.
#pragma once

#include <prometheus/metric_family.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "daemon/listen.h"
#include "daemon/result.h"
#include "daemon/web_config.h"

namespace memlens {

struct HttpRequest {
  std::string method;
  std::string path;   // percent-decoded, valid UTF-8, no NUL
  std::string query;  // what follows '?', raw (query_param decodes a value)
  bool head = false;
  bool gzip = false;  // Accept-Encoding allows gzip
  std::string user;   // the basic-auth user, when one authenticated
};

struct HttpReply {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::shared_ptr<const std::string> shared;  // sent first and never copied (the exposition)
  std::string body;                           // sent after `shared`
  std::vector<std::pair<std::string, std::string>> headers;
};

// Who may read a path: `open` needs nothing (/healthz), `auth` basic auth
// when the web config sets users, `api` also api_users when set.
enum class Access { open, auth, api };

struct HttpServerOptions {
  std::vector<ListenAddress> listen;
  std::size_t max_connections = 512;
  // From accept (or the first byte of a keep-alive request) to the end of
  // the request header, TLS handshake included.
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds idle_timeout{120'000};   // between keep-alive requests
  std::chrono::milliseconds write_timeout{60'000};   // a response to a client that does not read
  std::size_t header_limit = 8192;                   // bytes, request line included
};

class HttpServer {
 public:
  struct Routes {
    std::function<Access(std::string_view path)> access;
    // Runs on the I/O thread: it must only copy pre-built data.
    std::function<HttpReply(const HttpRequest&)> handle;
  };

  // Binds every address (or fails naming the one that did not bind) and
  // starts the I/O thread.
  static Result<std::unique_ptr<HttpServer>> start(const HttpServerOptions& opts,
                                                    std::shared_ptr<const WebConfig> web, Routes routes);
  // Stops at once: connections are closed, a bcrypt check in progress is
  // the only thing waited for.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound ports, in the order of the addresses.
  const std::vector<int>& ports() const { return ports_; }
  // The server's own counters as metric families; call on the I/O thread
  // (from Routes::handle).
  void append_metrics(std::vector<prometheus::MetricFamily>& out) const;

  class Impl;

 private:
  HttpServer() = default;
  std::unique_ptr<Impl> impl_;
  std::vector<int> ports_;
};

}  // namespace memlens
