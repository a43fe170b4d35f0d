#include "daemon/http_server.h"

#include <utility>  // before Asio: Boost 1.74 + g++ 12 in C++20 needs std::exchange
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/core/detect_ssl.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/random.h>

#include <array>
#include <list>
#include <map>
#include <optional>
#include <thread>
#include <type_traits>
#include <unordered_set>

#include "daemon/http_util.h"
#include "daemon/metric.h"

namespace memlens {

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using SslStream = beast::ssl_stream<beast::tcp_stream>;

// bcrypt checks waiting for the worker; beyond this a request gets 503 at
// once rather than queueing seconds of work behind wrong passwords.
constexpr std::size_t kMaxAuthPending = 32;
// Successful (user, password) checks remembered; a full cache starts over.
constexpr std::size_t kAuthCacheSize = 256;
// How long a closing connection may take to say goodbye (TLS close_notify,
// or the rest of a request we refused).
constexpr auto kLingerTime = std::chrono::seconds(1);

// A response body made of a shared buffer (the exposition: never copied per
// scrape) followed by a short string of its own.
struct ReplyBody {
  struct value_type {
    std::shared_ptr<const std::string> shared;
    std::string tail;
  };

  static std::uint64_t size(const value_type& v) { return (v.shared ? v.shared->size() : 0) + v.tail.size(); }

  class writer {
   public:
    using const_buffers_type = std::array<net::const_buffer, 2>;

    template <bool isRequest, class Fields>
    writer(const http::header<isRequest, Fields>&, const value_type& v) : v_(v) {}

    void init(beast::error_code& ec) { ec = {}; }

    boost::optional<std::pair<const_buffers_type, bool>> get(beast::error_code& ec) {
      ec = {};
      if (done_) return boost::none;
      done_ = true;
      const_buffers_type b{v_.shared ? net::buffer(*v_.shared) : net::const_buffer(), net::buffer(v_.tail)};
      return std::make_pair(b, false);
    }

   private:
    const value_type& v_;
    bool done_ = false;
  };
};

// Beast 1.74 has its own string_view.
std::string_view sv(beast::string_view s) { return std::string_view(s.data(), s.size()); }

bool is_parse_error(const beast::error_code& ec) {
  return &ec.category() == &http::make_error_code(http::error::bad_target).category();
}

}  // namespace

class SessionBase;

class HttpServer::Impl {
 public:
  Impl(const HttpServerOptions& o, std::shared_ptr<const WebConfig> w, HttpServer::Routes r)
      : opt(o), web(std::move(w)), routes(std::move(r)) {
    if (web && web->rate_interval.count() > 0) tokens = web->rate_burst;
    refilled = Clock::now();
    // The kernel's generator, not OpenSSL's: starting OpenSSL's (its
    // providers and their code) cost ~2 MiB of resident pages in a daemon
    // that serves no TLS and checks no password.
    if (getrandom(hmac_key.data(), hmac_key.size(), 0) != static_cast<ssize_t>(hmac_key.size())) {
      // Without a secret key the cache would be a plain hash of passwords.
      cache_enabled = false;
    }
  }

  void accept(std::size_t i);
  void on_accept(tcp::socket sock);
  bool take_token();
  std::string auth_digest(const std::string& user, const std::string& password) const;
  void remember(const std::string& digest) {
    if (auth_ok.size() >= kAuthCacheSize) auth_ok.clear();
    if (cache_enabled) auth_ok.insert(digest);
  }

  // Everything below is touched on the I/O thread only. The bookkeeping is
  // declared before io so it outlives the sessions io destroys.
  HttpServerOptions opt;
  std::shared_ptr<const WebConfig> web;
  HttpServer::Routes routes;

  struct Stats {
    uint64_t accepted = 0, refused = 0, evicted = 0, header_timeouts = 0, tls_errors = 0;
    std::map<int, uint64_t> codes;
  } stats;
  std::size_t open = 0;
  // Connections waiting for (the rest of) a request header, oldest first:
  // the first to close when the connection limit is reached.
  std::list<SessionBase*> waiting;

  std::unordered_set<std::string> auth_ok;
  std::size_t auth_pending = 0;
  std::array<unsigned char, 32> hmac_key{};
  bool cache_enabled = true;
  double tokens = 0;
  Clock::time_point refilled;

  net::io_context io{1};
  // bcrypt runs here, never on the I/O thread.
  net::thread_pool auth_pool{1};
  struct Listener {
    explicit Listener(net::io_context& io) : acceptor(io), retry(io) {}
    tcp::acceptor acceptor;
    net::steady_timer retry;
    bool warned = false;
  };
  std::vector<std::unique_ptr<Listener>> listeners;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::thread thread;
};

// What the server needs of every connection: its place in the waiting list
// and a way to close it.
class SessionBase {
 public:
  explicit SessionBase(HttpServer::Impl& s) : srv_(s) { ++srv_.open; }
  virtual ~SessionBase() {
    unwait();
    --srv_.open;
  }
  SessionBase(const SessionBase&) = delete;
  SessionBase& operator=(const SessionBase&) = delete;
  // Closes the socket now; the pending operation ends with an error.
  virtual void evict() = 0;

 protected:
  void wait_for_request() {
    if (waiting_) return;
    it_ = srv_.waiting.insert(srv_.waiting.end(), this);
    waiting_ = true;
  }
  void unwait() {
    if (!waiting_) return;
    srv_.waiting.erase(it_);
    waiting_ = false;
  }

  HttpServer::Impl& srv_;

 private:
  std::list<SessionBase*>::iterator it_;
  bool waiting_ = false;
};

namespace {

// One connection, plain or TLS, from its first request to its close.
template <class Stream>
class Session : public SessionBase, public std::enable_shared_from_this<Session<Stream>> {
  static constexpr bool kTls = std::is_same_v<Stream, SslStream>;

 public:
  Session(HttpServer::Impl& s, Stream&& stream, beast::flat_buffer&& buffer)
      : SessionBase(s), stream_(std::move(stream)), buffer_(std::move(buffer)) {
    buffer_.max_size(srv_.opt.header_limit + 4096);
  }

  beast::tcp_stream& lowest() { return beast::get_lowest_layer(stream_); }

  void start_plain() {
    lowest().expires_after(srv_.opt.header_timeout);
    begin_request(true);
  }

  // The deadline set when the connection was accepted covers the handshake.
  void start_tls() {
    if constexpr (kTls) {
      wait_for_request();
      stream_.async_handshake(ssl::stream_base::server, buffer_.data(),
                              [self = this->shared_from_this()](beast::error_code ec, std::size_t used) {
                                self->on_handshake(ec, used);
                              });
    }
  }

  // Plain HTTP on the TLS port: say so, as Go's server does, and close.
  void reject_plain() { reply_error(400, "Client sent an HTTP request to an HTTPS server.\n"); }

  void evict() override {
    evicted_ = true;
    unwait();
    lowest().close();
  }

 private:
  void on_handshake(beast::error_code ec, std::size_t used) {
    if constexpr (kTls) {
      if (ec) {
        if (!evicted_) ++(ec == beast::error::timeout ? srv_.stats.header_timeouts : srv_.stats.tls_errors);
        close_now();
        return;
      }
      buffer_.consume(used);
      if (!srv_.web->tls->client_allowed_sans.empty() &&
          !client_sans_allowed(stream_.native_handle(), srv_.web->tls->client_allowed_sans)) {
        ++srv_.stats.tls_errors;
        close_now();
        return;
      }
      begin_request(true);
    }
  }

  void begin_request(bool first) {
    wait_for_request();
    parser_.reset();
    res_.reset();
    head_ = false;
    keep_alive_ = false;
    idle_ = !first;
    if (idle_) lowest().expires_after(srv_.opt.idle_timeout);
    if (buffer_.size() > 0) got_bytes();
    else read_more();
  }

  void read_more() {
    const std::size_t room = buffer_.max_size() - buffer_.size();
    stream_.async_read_some(buffer_.prepare(std::min<std::size_t>(4096, room)),
                            [self = this->shared_from_this()](beast::error_code ec, std::size_t n) {
                              self->on_read(ec, n);
                            });
  }

  void on_read(beast::error_code ec, std::size_t n) {
    if (ec) {
      // A keep-alive connection idle too long is normal; a header that
      // never completes is the slow-client attack.
      if (ec == beast::error::timeout && !idle_) ++srv_.stats.header_timeouts;
      close_now();
      return;
    }
    buffer_.commit(n);
    got_bytes();
  }

  // Checks the request line as soon as it is complete, so an HTTP/0.9 or
  // junk line is answered at once, then lets Beast parse the header.
  void got_bytes() {
    if (idle_) {
      idle_ = false;
      lowest().expires_after(srv_.opt.header_timeout);
    }
    for (;;) {  // empty lines before a request are allowed (RFC 9112, 2.2)
      const std::string_view v(static_cast<const char*>(buffer_.data().data()), buffer_.size());
      if (v.rfind("\r\n", 0) == 0) buffer_.consume(2);
      else if (v.rfind("\n", 0) == 0) buffer_.consume(1);
      else break;
    }
    const std::string_view v(static_cast<const char*>(buffer_.data().data()), buffer_.size());
    const std::size_t eol = v.find('\n');
    if (eol == std::string_view::npos) {
      if (v.size() >= srv_.opt.header_limit) reply_error(414, "request line too long\n");
      else read_more();
      return;
    }
    if (!valid_request_line(v.substr(0, eol))) {
      reply_error(400, "malformed request line (memlensd speaks HTTP/1.0 and HTTP/1.1)\n");
      return;
    }
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(srv_.opt.header_limit));
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                              self->on_header(ec);
                            });
  }

  void on_header(beast::error_code ec) {
    if (ec) {
      if (ec == beast::error::timeout) ++srv_.stats.header_timeouts;
      if (ec == http::error::header_limit || ec == http::error::buffer_overflow)
        reply_error(431, "request header too large\n");
      else if (is_parse_error(ec) && ec != http::error::end_of_stream && ec != http::error::partial_message)
        reply_error(400, "malformed request header\n");
      else
        close_now();
      return;
    }
    unwait();
    process();
  }

  void process() {
    const auto& req = parser_->get();
    // A body is never read: answer and close, or its bytes would be taken
    // for the next request.
    const bool has_body = !parser_->is_done();
    version_ = req.version();
    keep_alive_ = req.keep_alive() && !has_body;
    head_ = req.method() == http::verb::head;
    HttpRequest r;
    r.method = std::string(sv(req.method_string()));
    r.head = head_;
    if (!srv_.take_token()) return reply(429, "too many requests (rate_limit of the web config)\n");
    if (req.method() != http::verb::get && !head_) return reply(405, "only GET and HEAD are allowed\n");
    if (has_body) return reply(413, "a request body is not accepted\n");
    auto path = decode_target_path(sv(req.target()));
    if (!path) return reply(400, path.error().message + "\n");
    r.path = std::move(*path);
    r.query = raw_query(sv(req.target()));
    if (auto it = req.find(http::field::accept_encoding); it != req.end()) r.gzip = accepts_gzip(sv(it->value()));
    const Access access = srv_.routes.access(r.path);
    const WebConfig* web = srv_.web.get();
    if (access == Access::api && web && web->api_users && web->api_users->empty())
      return reply(403, "the API is disabled by the web config (api_users: [])\n");
    if (access == Access::open || !web || !web->auth_required()) return respond(std::move(r), access);
    auto cred = parse_basic_auth(sv(req[http::field::authorization]));
    if (!cred) return reply(401, "authentication required\n");
    authenticate(std::move(r), std::move(cred->first), std::move(cred->second), access);
  }

  void authenticate(HttpRequest r, std::string user, std::string password, Access access) {
    auto it = srv_.web->users.find(user);
    const bool known = it != srv_.web->users.end();
    std::string digest = srv_.auth_digest(user, password);
    if (known && srv_.auth_ok.count(digest)) {
      r.user = std::move(user);
      return authorized(std::move(r), access);
    }
    if (srv_.auth_pending >= kMaxAuthPending) {
      HttpReply busy{503, "text/plain; charset=utf-8", nullptr, "busy checking credentials; retry\n",
                     {{"Retry-After", "1"}}};
      return send(std::move(busy));
    }
    ++srv_.auth_pending;
    // An unknown user is checked against a configured hash (same cost), so
    // a wrong name takes as long as a wrong password: names do not leak.
    std::string hash = known ? it->second : srv_.web->users.begin()->second;
    net::post(srv_.auth_pool, [self = this->shared_from_this(), r = std::move(r), user = std::move(user),
                               password = std::move(password), hash = std::move(hash), digest = std::move(digest),
                               known, access]() mutable {
      const bool ok = bcrypt_matches(password, hash) && known;
      net::post(self->srv_.io, [self, r = std::move(r), user = std::move(user), digest = std::move(digest), ok,
                                access]() mutable {
        --self->srv_.auth_pending;
        if (!ok) return self->reply(401, "wrong user name or password\n");
        self->srv_.remember(digest);
        r.user = std::move(user);
        self->authorized(std::move(r), access);
      });
    });
  }

  void authorized(HttpRequest r, Access access) {
    const WebConfig* web = srv_.web.get();
    if (access == Access::api && web->api_users && !web->api_users->count(r.user))
      return reply(403, "this user may not read the API (api_users of the web config)\n");
    respond(std::move(r), access);
  }

  void respond(HttpRequest r, Access) {
    HttpReply rep;
    try {
      rep = srv_.routes.handle(r);
    } catch (const std::exception& e) {
      // Routes return errors as replies; this is only a last line.
      spdlog::error("HTTP {}: {}", r.path, e.what());
      rep = HttpReply{500, "text/plain; charset=utf-8", nullptr, "internal error\n", {}};
    }
    send(std::move(rep));
  }

  void reply(int status, std::string text) {
    send(HttpReply{status, "text/plain; charset=utf-8", nullptr, std::move(text), {}});
  }

  // Before a request was parsed: HTTP/1.1, and the connection closes.
  void reply_error(int status, std::string text) {
    unwait();
    version_ = 11;
    keep_alive_ = false;
    head_ = false;
    reply(status, std::move(text));
  }

  void send(HttpReply rep) {
    unwait();
    res_.emplace();
    res_->version(version_);
    res_->result(static_cast<unsigned>(rep.status));
    res_->set(http::field::content_type, rep.content_type);
    res_->set(http::field::cache_control, "no-store");
    if (rep.status == 401) res_->set(http::field::www_authenticate, "Basic realm=\"memlens\"");
    if (rep.status == 405) res_->set(http::field::allow, "GET, HEAD");
    if (srv_.web)
      for (const auto& [k, v] : srv_.web->headers) res_->set(k, v);
    for (const auto& [k, v] : rep.headers) res_->set(k, v);
    const std::uint64_t length = (rep.shared ? rep.shared->size() : 0) + rep.body.size();
    if (!head_) {
      res_->body().shared = std::move(rep.shared);
      res_->body().tail = std::move(rep.body);
    }
    res_->content_length(length);
    res_->keep_alive(keep_alive_);
    ++srv_.stats.codes[rep.status];
    lowest().expires_after(srv_.opt.write_timeout);
    http::async_write(stream_, *res_, [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
      self->on_write(ec);
    });
  }

  void on_write(beast::error_code ec) {
    if (ec) return close_now();
    if (!keep_alive_) return close_gracefully();
    begin_request(false);
  }

  void close_now() {
    unwait();
    lowest().close();
  }

  // Half-close and drain for a moment: closing with unread request bytes
  // would reset the connection and could destroy the response in flight.
  void close_gracefully() {
    lowest().expires_after(kLingerTime);
    if constexpr (kTls) {
      stream_.async_shutdown([self = this->shared_from_this()](beast::error_code) { self->close_now(); });
    } else {
      beast::error_code ec;
      lowest().socket().shutdown(tcp::socket::shutdown_send, ec);
      drain();
    }
  }

  void drain() {
    stream_.async_read_some(net::buffer(drain_), [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->close_now();
      self->drain();
    });
  }

  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::empty_body>> parser_;
  std::optional<http::response<ReplyBody>> res_;
  std::array<char, 1024> drain_{};
  unsigned version_ = 11;
  bool keep_alive_ = false, head_ = false, idle_ = false, evicted_ = false;
};

// TLS port: peeks at the first bytes to tell a TLS ClientHello from plain
// HTTP, then hands the connection on.
class Detect : public SessionBase, public std::enable_shared_from_this<Detect> {
 public:
  Detect(HttpServer::Impl& s, tcp::socket sock) : SessionBase(s), stream_(std::move(sock)) {
    buffer_.max_size(srv_.opt.header_limit + 4096);
  }

  void run() {
    wait_for_request();
    stream_.expires_after(srv_.opt.header_timeout);
    beast::async_detect_ssl(stream_, buffer_, [self = shared_from_this()](beast::error_code ec, bool tls) {
      self->on_detect(ec, tls);
    });
  }

  void evict() override {
    evicted_ = true;
    unwait();
    stream_.close();
  }

 private:
  void on_detect(beast::error_code ec, bool tls) {
    unwait();
    if (ec) {
      if (ec == beast::error::timeout) ++srv_.stats.header_timeouts;
      stream_.close();
      return;
    }
    if (tls) {
      auto s = std::make_shared<Session<SslStream>>(srv_, SslStream(std::move(stream_), *srv_.web->tls_context),
                                                    std::move(buffer_));
      s->start_tls();
    } else {
      ++srv_.stats.tls_errors;
      auto s = std::make_shared<Session<beast::tcp_stream>>(srv_, std::move(stream_), std::move(buffer_));
      s->reject_plain();
    }
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  bool evicted_ = false;
};

}  // namespace

void HttpServer::Impl::accept(std::size_t i) {
  Listener& l = *listeners[i];
  l.acceptor.async_accept([this, i](beast::error_code ec, tcp::socket sock) {
    Listener& l = *listeners[i];
    if (ec == net::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors (EMFILE) and the like: wait, do not spin.
      if (!l.warned) spdlog::warn("HTTP: accept failed: {}; retrying", ec.message());
      l.warned = true;
      l.retry.expires_after(std::chrono::milliseconds(100));
      l.retry.async_wait([this, i](beast::error_code e) {
        if (!e) accept(i);
      });
      return;
    }
    l.warned = false;
    on_accept(std::move(sock));
    accept(i);
  });
}

void HttpServer::Impl::on_accept(tcp::socket sock) {
  ++stats.accepted;
  if (open >= opt.max_connections) {
    if (waiting.empty()) {
      ++stats.refused;
      beast::error_code ec;
      sock.close(ec);
      return;
    }
    // Every slot is held: the connection that has waited longest for a
    // request makes room. A scrape sends its request at once, so slow
    // clients cannot keep it out.
    SessionBase* victim = waiting.front();
    victim->evict();
    ++stats.evicted;
  }
  beast::error_code ec;
  sock.set_option(tcp::no_delay(true), ec);
  if (web && web->tls_context) {
    std::make_shared<Detect>(*this, std::move(sock))->run();
  } else {
    std::make_shared<Session<beast::tcp_stream>>(*this, beast::tcp_stream(std::move(sock)), beast::flat_buffer())
        ->start_plain();
  }
}

bool HttpServer::Impl::take_token() {
  if (!web || web->rate_interval.count() <= 0) return true;
  const auto now = Clock::now();
  const double add = std::chrono::duration<double>(now - refilled).count() /
                     std::chrono::duration<double>(web->rate_interval).count();
  tokens = std::min(static_cast<double>(web->rate_burst), tokens + add);
  refilled = now;
  if (tokens < 1) return false;
  tokens -= 1;
  return true;
}

// A keyed hash (HMAC with a key made at start) of user and password: the
// cache holds nothing that could be checked against a guessed password.
std::string HttpServer::Impl::auth_digest(const std::string& user, const std::string& password) const {
  std::string msg = user;
  msg.push_back('\0');
  msg += password;
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), hmac_key.data(), static_cast<int>(hmac_key.size()),
            reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out, &len))
    return {};
  return std::string(reinterpret_cast<const char*>(out), len);
}

Result<std::unique_ptr<HttpServer>> HttpServer::start(const HttpServerOptions& opts, std::shared_ptr<const WebConfig> web,
                                                       Routes routes) {
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->impl_ = std::make_unique<Impl>(opts, std::move(web), std::move(routes));
  Impl& impl = *server->impl_;
  for (const auto& a : opts.listen) {
    auto l = std::make_unique<Impl::Listener>(impl.io);
    tcp::acceptor& acc = l->acceptor;
    beast::error_code ec;
    tcp::endpoint ep;
    bool v6only = true;
    if (a.kind == ListenAddress::Kind::any) {
      // Every interface: one dual-stack IPv6 socket, or IPv4 alone where
      // the kernel has no IPv6.
      ep = tcp::endpoint(tcp::v6(), a.port);
      v6only = false;
      acc.open(ep.protocol(), ec);
      if (ec) {
        ep = tcp::endpoint(tcp::v4(), a.port);
        ec = {};
        acc.open(ep.protocol(), ec);
      }
    } else {
      ep = tcp::endpoint(net::ip::make_address(a.ip, ec), a.port);
      if (!ec) acc.open(ep.protocol(), ec);
    }
    if (!ec && ep.protocol() == tcp::v6()) acc.set_option(net::ip::v6_only(v6only), ec);
    if (!ec) acc.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acc.bind(ep, ec);
    if (!ec) acc.listen(net::socket_base::max_listen_connections, ec);
    if (ec) return make_error(Errc::unavailable, "cannot listen on " + a.text + ": " + ec.message());
    server->ports_.push_back(acc.local_endpoint(ec).port());
    impl.listeners.push_back(std::move(l));
  }
  for (std::size_t i = 0; i < impl.listeners.size(); ++i) impl.accept(i);
  impl.work.emplace(impl.io.get_executor());
  impl.thread = std::thread([&impl] {
    pthread_setname_np(pthread_self(), "memlensd-http");
    for (;;) {
      try {
        impl.io.run();
        return;
      } catch (const std::exception& e) {
        // A handler threw (out of memory, a Beast limit): that connection
        // is lost, the server goes on.
        spdlog::error("HTTP: {}", e.what());
      }
    }
  });
  return server;
}

HttpServer::~HttpServer() {
  if (!impl_) return;
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  // Queued checks are dropped; one in progress finishes (tens of ms).
  impl_->auth_pool.stop();
  impl_->auth_pool.join();
  // Members go in reverse order: listeners, the pool, io (and with it every
  // session), then the bookkeeping the sessions update as they go.
  impl_.reset();
}

void HttpServer::append_metrics(std::vector<prometheus::MetricFamily>& out) const {
  static const MetricDesc requests = metric("http_requests", "", MetricKind::counter,
                                            "HTTP responses sent, by status code.");
  static const MetricDesc accepted = metric("http_connections", "", MetricKind::counter,
                                            "TCP connections accepted by the HTTP server.");
  static const MetricDesc open = metric("http_connections_open", "", MetricKind::gauge,
                                        "HTTP connections currently open.");
  static const MetricDesc refused = metric("http_connections_refused", "", MetricKind::counter,
                                           "Connections closed at once: --web.max-connections were open and "
                                           "none was waiting for a request.");
  static const MetricDesc evicted = metric("http_connections_evicted", "", MetricKind::counter,
                                           "Connections closed to make room for a new one at --web.max-connections "
                                           "(the one that had waited longest for a request).");
  static const MetricDesc timeouts = metric("http_header_timeouts", "", MetricKind::counter,
                                            "Connections closed because their request header (or TLS handshake) "
                                            "did not arrive within 10 s.");
  static const MetricDesc tls = metric("http_tls_handshake_errors", "", MetricKind::counter,
                                       "TLS handshakes that failed, plain HTTP sent to the TLS port and client "
                                       "certificates refused included.");
  const Impl& s = *impl_;
  auto family = [&](const MetricDesc& d) -> prometheus::MetricFamily& {
    out.push_back(prometheus::MetricFamily{
        d.name, d.help, d.kind == MetricKind::counter ? prometheus::MetricType::Counter : prometheus::MetricType::Gauge,
        {}});
    return out.back();
  };
  auto sample = [](prometheus::MetricFamily& f, double v, std::vector<prometheus::ClientMetric::Label> labels = {}) {
    prometheus::ClientMetric m;
    m.label = std::move(labels);
    if (f.type == prometheus::MetricType::Counter) m.counter.value = v;
    else m.gauge.value = v;
    f.metric.push_back(std::move(m));
  };
  auto& req = family(requests);
  for (const auto& [code, n] : s.stats.codes) sample(req, static_cast<double>(n), {{"code", std::to_string(code)}});
  sample(family(accepted), static_cast<double>(s.stats.accepted));
  sample(family(open), static_cast<double>(s.open));
  sample(family(refused), static_cast<double>(s.stats.refused));
  sample(family(evicted), static_cast<double>(s.stats.evicted));
  sample(family(timeouts), static_cast<double>(s.stats.header_timeouts));
  sample(family(tls), static_cast<double>(s.stats.tls_errors));
}

}  // namespace memlens
