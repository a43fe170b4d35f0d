// Helpers shared by integration and end-to-end tests: real processes, real
// HTTP, the Prometheus text format parsed back.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace memlens::test {

// The memlensd under test: the one built beside this test, or the one
// MEMLENS_DAEMON names (the asan/ variants run these very tests against the
// sanitizer tree's memlensd).
std::string memlensd_path();
// Whether that memlensd is built with AddressSanitizer (MEMLENS_SANITIZED=1
// says so): its memory figures measure the sanitizer's allocator, and it
// runs ~3x slower.
bool daemon_sanitized();

// A child process, killed (SIGKILL) and reaped when the handle goes.
class Child {
 public:
  Child() = default;
  Child(Child&& o) noexcept : pid_(o.pid_) { o.pid_ = -1; }
  Child& operator=(Child&& o) noexcept;
  ~Child();
  pid_t pid() const { return pid_; }
  bool running();
  // Sends sig and waits up to `timeout` for exit; returns the wait status or -1.
  int stop(int sig, std::chrono::milliseconds timeout);
  int wait_exit(std::chrono::milliseconds timeout);

 private:
  friend Child spawn(const std::vector<std::string>&, const std::string&, const std::vector<std::string>&);
  pid_t pid_ = -1;
  int status_ = -1;
};

// Runs argv[0] (a path) with its output appended to `log` (if not empty).
// `env` entries ("K=V") are added to the environment.
Child spawn(const std::vector<std::string>& argv, const std::string& log = "",
            const std::vector<std::string>& env = {});

// Runs a command to completion; returns exit status, output into *out.
int run(const std::string& shell_cmd, std::string* out = nullptr);

struct HttpResponse {
  long status = 0;  // 0: no connection (or TLS failed): see error
  std::string body;
  std::string headers;  // the raw response header lines
  std::string error;    // libcurl's message when the request failed
  // The value of a response header (case-insensitive name), or "".
  std::string header(const std::string& name) const;
};
HttpResponse http_get(const std::string& url, long timeout_ms = 5000);
HttpResponse http_request(const std::string& method, const std::string& url, long timeout_ms = 5000);

struct HttpOptions {
  std::string method = "GET";
  long timeout_ms = 5000;
  std::string ca_file;                   // verify an HTTPS server with this CA
  std::string user, password;            // basic auth when user is set
  std::string client_cert, client_key;   // TLS client certificate (PEM files)
  std::vector<std::string> headers;      // extra request headers, "Name: value"
  std::string body;                      // sent with the request when not empty
  bool gzip = false;                     // ask for gzip (the body comes back decoded)
  bool tls12_only = false;               // cap the client at TLS 1.2
};
HttpResponse http_fetch(const std::string& url, const HttpOptions& opts);

// Sends `bytes` on a new TCP connection to 127.0.0.1:port (shutting down the
// write side when half_close), then reads until the server closes or
// `timeout` passes. *closed says whether the server closed.
std::string raw_exchange(int port, const std::string& bytes, std::chrono::milliseconds timeout,
                         bool half_close = false, bool* closed = nullptr);
// A connected TCP socket to 127.0.0.1:port (or [::1] when v6), or -1.
int tcp_connect(int port, bool v6 = false);

// One sample of the Prometheus text format.
struct PromSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
std::vector<PromSample> parse_exposition(const std::string& text);
// The value of the first sample named `name` whose labels include `labels`.
std::optional<double> find_sample(const std::vector<PromSample>& s, const std::string& name,
                                  const std::map<std::string, std::string>& labels = {});

// The value of label `label` on that sample, if it is there and has it.
std::optional<std::string> find_label(const std::vector<PromSample>& s, const std::string& name,
                                      const std::map<std::string, std::string>& labels, const std::string& label);

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout,
                std::chrono::milliseconds step = std::chrono::milliseconds(100));

int free_port();
std::string make_temp_dir(const std::string& prefix = "memlens-test");
std::string read_text(const std::string& path);
// Occurrences of `what` in `s` (overlapping ones too).
std::size_t count_of(const std::string& s, const std::string& what);
void write_text(const std::string& path, const std::string& text);
// The last complete line of a file the workload appends to (its ground truth).
std::string last_line(const std::string& path);

std::string workload_path(const std::string& name);
// A copy of workload `name` in `dir` under a name no other test uses, for an
// `exe:` selector: tests running at the same time each hold their own
// processes at exec (a hold is by name; another memlensd holding the same
// name would release ours before our probes are in place).
std::string private_workload(const std::string& name, const std::string& dir);
// The comm a process of that copy gets (its base name).
std::string exe_comm(const std::string& path);

// A memlensd running on a free port with the given YAML config.
struct Daemon {
  Child child;
  int port = 0;
  std::string dir, config_path, log_path;
  std::string scheme = "http";
  HttpOptions http;  // CA and credentials scrape() uses
  std::string url(const std::string& path) const;
  std::vector<PromSample> scrape() const;
  std::string log() const { return read_text(log_path); }
};
// Starts memlensd and waits for /healthz (fails the test on timeout).
// With `https` the daemon is expected to serve HTTPS (a web config among
// extra_flags): /healthz is probed, and scrape() goes, with those options
// (CA, client certificate, credentials).
std::optional<Daemon> start_daemon(const std::string& yaml, const std::vector<std::string>& extra_flags = {},
                                   const std::vector<std::string>& wrapper = {},
                                   const std::optional<HttpOptions>& https = std::nullopt);

bool is_root();

// The length of a gzip member of `bytes` as zlib writes it at level 9 (no
// name in the header): what memlensd's files collector claims a file's gzip
// size is, computed here in one shot, apart from its code.
uint64_t zlib_gzip_size(const std::string& bytes);

// eBPF tests never skip as root: a collector that does not load there is a
// verifier or load regression, a failure. MEMLENS_TEST_NO_BPF=1 says a
// machine has no usable eBPF; then they skip, saying so.
bool bpf_opted_out();
// Empty when collector `name` runs in `d`; else why not (with the log).
std::string collector_down(const Daemon& d, const std::string& name);
#define REQUIRE_COLLECTOR(d, name)                                                              \
  do {                                                                                          \
    const std::string why_down_ = ::memlens::test::collector_down(*(d), name);                   \
    if (!why_down_.empty()) {                                                                   \
      if (::memlens::test::bpf_opted_out()) GTEST_SKIP() << "MEMLENS_TEST_NO_BPF: " << why_down_; \
      FAIL() << why_down_;                                                                      \
    }                                                                                           \
  } while (0)

}  // namespace memlens::test
