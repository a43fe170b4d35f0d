#include "tests/support/support.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string_view>
#include <thread>

namespace memlens::test {

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    this->~Child();
    pid_ = o.pid_;
    status_ = o.status_;
    o.pid_ = -1;
  }
  return *this;
}

Child::~Child() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
}

bool Child::running() {
  if (pid_ <= 0) return false;
  int st = 0;
  pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    status_ = st;
    pid_ = -1;
    return false;
  }
  return true;
}

int Child::wait_exit(std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (!running()) return status_;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

int Child::stop(int sig, std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return status_;
  ::kill(pid_, sig);
  return wait_exit(timeout);
}

Child spawn(const std::vector<std::string>& argv, const std::string& log, const std::vector<std::string>& env) {
  Child c;
  pid_t pid = ::fork();
  if (pid == 0) {
    if (!log.empty()) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::close(fd);
      }
    }
    for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  c.pid_ = pid;
  return c;
}

int run(const std::string& shell_cmd, std::string* out) {
  FILE* p = ::popen((shell_cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  std::string o;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) o.append(buf, n);
  int st = ::pclose(p);
  if (out) *out = o;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

namespace {
size_t write_cb(char* ptr, size_t size, size_t nmemb, void* user) {
  static_cast<std::string*>(user)->append(ptr, size * nmemb);
  return size * nmemb;
}
}  // namespace

HttpResponse http_fetch(const std::string& url, const HttpOptions& o) {
  HttpResponse r;
  CURL* c = curl_easy_init();
  if (!c) return r;
  char err[CURL_ERROR_SIZE] = {};
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  // Paths go out as written ("//metrics", "/./x"): the server is under test.
  curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, o.method.c_str());
  if (o.method == "HEAD") curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  if (!o.body.empty()) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, o.body.c_str());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(o.body.size()));
  }
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, write_cb);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &r.headers);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, o.timeout_ms);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
  if (!o.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, o.ca_file.c_str());
  if (!o.user.empty()) {
    curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(c, CURLOPT_USERNAME, o.user.c_str());
    curl_easy_setopt(c, CURLOPT_PASSWORD, o.password.c_str());
  }
  if (!o.client_cert.empty()) {
    curl_easy_setopt(c, CURLOPT_SSLCERT, o.client_cert.c_str());
    curl_easy_setopt(c, CURLOPT_SSLKEY, o.client_key.c_str());
  }
  if (o.tls12_only)
    curl_easy_setopt(c, CURLOPT_SSLVERSION,
                     static_cast<long>(CURL_SSLVERSION_TLSv1_2) | static_cast<long>(CURL_SSLVERSION_MAX_TLSv1_2));
  if (o.gzip) curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "gzip");
  curl_slist* hdrs = nullptr;
  for (const auto& h : o.headers) hdrs = curl_slist_append(hdrs, h.c_str());
  if (hdrs) curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
  const CURLcode rc = curl_easy_perform(c);
  if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  else r.error = err[0] ? err : curl_easy_strerror(rc);
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(c);
  return r;
}

HttpResponse http_request(const std::string& method, const std::string& url, long timeout_ms) {
  HttpOptions o;
  o.method = method;
  o.timeout_ms = timeout_ms;
  return http_fetch(url, o);
}

HttpResponse http_get(const std::string& url, long timeout_ms) { return http_request("GET", url, timeout_ms); }

std::string HttpResponse::header(const std::string& name) const {
  std::istringstream in(headers);
  std::string line;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos || colon != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < colon; ++i)
      same &= std::tolower(static_cast<unsigned char>(line[i])) == std::tolower(static_cast<unsigned char>(name[i]));
    if (!same) continue;
    std::string v = line.substr(colon + 1);
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.erase(0, 1);
    while (!v.empty() && (v.back() == '\r' || v.back() == ' ')) v.pop_back();
    return v;
  }
  return "";
}

int tcp_connect(int port, bool v6) {
  int fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int rc;
  if (v6) {
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(static_cast<uint16_t>(port));
    a.sin6_addr = in6addr_loopback;
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  } else {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  if (rc != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string raw_exchange(int port, const std::string& bytes, std::chrono::milliseconds timeout, bool half_close,
                         bool* closed) {
  std::string out;
  if (closed) *closed = false;
  int fd = tcp_connect(port);
  if (fd < 0) return out;
  // The server may answer (and close) before it has read everything.
  (void)!::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  if (half_close) ::shutdown(fd, SHUT_WR);
  const auto end = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    char buf[8192];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      if (closed) *closed = true;
      break;
    }
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

std::vector<PromSample> parse_exposition(const std::string& text) {
  std::vector<PromSample> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    PromSample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = line.substr(0, i);
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        size_t eq = line.find('=', i);
        if (eq == std::string::npos) break;
        std::string k = line.substr(i, eq - i);
        size_t j = eq + 2;  // skip ="
        std::string v;
        while (j < line.size() && line[j] != '"') {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            v += line[j] == 'n' ? '\n' : line[j];
          } else {
            v += line[j];
          }
          ++j;
        }
        s.labels[k] = v;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // '}'
    }
    while (i < line.size() && line[i] == ' ') ++i;
    size_t end = line.find(' ', i);
    std::string v = line.substr(i, end == std::string::npos ? std::string::npos : end - i);
    if (v == "+Inf") s.value = INFINITY;
    else if (v == "-Inf") s.value = -INFINITY;
    else if (v == "NaN") s.value = NAN;
    else s.value = std::strtod(v.c_str(), nullptr);
    out.push_back(std::move(s));
  }
  return out;
}

namespace {
const PromSample* find_first(const std::vector<PromSample>& all, const std::string& name,
                             const std::map<std::string, std::string>& labels) {
  for (const auto& s : all) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) {
        ok = false;
        break;
      }
    }
    if (ok) return &s;
  }
  return nullptr;
}
}  // namespace

std::optional<double> find_sample(const std::vector<PromSample>& all, const std::string& name,
                                  const std::map<std::string, std::string>& labels) {
  const PromSample* s = find_first(all, name, labels);
  return s ? std::optional<double>(s->value) : std::nullopt;
}

std::optional<std::string> find_label(const std::vector<PromSample>& all, const std::string& name,
                                      const std::map<std::string, std::string>& labels, const std::string& label) {
  const PromSample* s = find_first(all, name, labels);
  if (!s) return std::nullopt;
  auto it = s->labels.find(label);
  return it == s->labels.end() ? std::nullopt : std::optional<std::string>(it->second);
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout,
                std::chrono::milliseconds step) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(step);
  }
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

namespace {

// The directories this test process made, removed when it exits: a whole run
// makes thousands. Kept when a test failed (their logs say why) or when
// MEMLENS_TEST_KEEP_TMP=1.
class TempDirs {
 public:
  void add(std::string dir) {
    std::lock_guard lock(mu_);
    dirs_.push_back(std::move(dir));
  }
  ~TempDirs() {
    const char* keep = std::getenv("MEMLENS_TEST_KEEP_TMP");
    if ((keep && std::string_view(keep) == "1") || ::testing::UnitTest::GetInstance()->Failed()) {
      for (const auto& d : dirs_) std::fprintf(stderr, "kept %s\n", d.c_str());
      return;
    }
    std::error_code ec;
    for (const auto& d : dirs_) std::filesystem::remove_all(d, ec);
  }

 private:
  std::mutex mu_;
  std::vector<std::string> dirs_;
};

TempDirs& temp_dirs() {
  static TempDirs dirs;
  return dirs;
}

}  // namespace

std::string make_temp_dir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data())) return "/tmp";
  temp_dirs().add(buf.data());
  return buf.data();
}

std::size_t count_of(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (auto pos = s.find(what); pos != std::string::npos; pos = s.find(what, pos + 1)) ++n;
  return n;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

std::string last_line(const std::string& path) {
  std::string t = read_text(path);
  if (t.empty()) return "";
  if (t.back() != '\n') {  // a line being written: ignore it
    auto nl = t.rfind('\n');
    if (nl == std::string::npos) return "";
    t.resize(nl + 1);
  }
  t.pop_back();
  auto nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

std::string memlensd_path() {
  const char* d = std::getenv("MEMLENS_DAEMON");
  return d && *d ? d : std::string(MEMLENS_BINARY_DIR) + "/memlensd";
}
bool daemon_sanitized() {
  const char* s = std::getenv("MEMLENS_SANITIZED");
  return s && std::string_view(s) == "1";
}
std::string workload_path(const std::string& name) { return std::string(MEMLENS_WORKLOAD_DIR) + "/" + name; }

std::string exe_comm(const std::string& path) {
  std::string base = path.substr(path.rfind('/') + 1);
  if (base.size() > 15) base.resize(15);
  return base;
}

std::string private_workload(const std::string& name, const std::string& dir) {
  static int n = 0;
  // "w<pid>-<n>": at most 15 bytes, so it is the whole comm.
  const std::string path = dir + "/w" + std::to_string(getpid() % 1000000) + "-" + std::to_string(n++ % 100);
  std::ifstream in(workload_path(name), std::ios::binary);
  std::ofstream out(path, std::ios::binary);
  out << in.rdbuf();
  out.close();
  chmod(path.c_str(), 0755);
  return path;
}

std::string Daemon::url(const std::string& path) const {
  return scheme + "://127.0.0.1:" + std::to_string(port) + path;
}

std::vector<PromSample> Daemon::scrape() const { return parse_exposition(http_fetch(url("/metrics"), http).body); }

std::optional<Daemon> start_daemon(const std::string& yaml, const std::vector<std::string>& extra_flags,
                                   const std::vector<std::string>& wrapper, const std::optional<HttpOptions>& https) {
  Daemon d;
  if (https) {
    d.scheme = "https";
    d.http = *https;
  }
  HttpOptions probe = d.http;
  probe.timeout_ms = 500;
  d.dir = make_temp_dir("memlensd");
  ::chmod(d.dir.c_str(), 0755);  // readable by a daemon run unprivileged
  d.config_path = d.dir + "/memlens.yaml";
  d.log_path = d.dir + "/memlensd.log";
  write_text(d.config_path, yaml);
  for (int attempt = 0; attempt < 3; ++attempt) {
    d.port = free_port();
    std::vector<std::string> argv = wrapper;
    argv.push_back(memlensd_path());
    argv.push_back("--config.file=" + d.config_path);
    argv.push_back("--web.listen-address=127.0.0.1:" + std::to_string(d.port));
    for (const auto& f : extra_flags) argv.push_back(f);
    d.child = spawn(argv, d.log_path);
    const bool up = wait_until(
        [&] { return !d.child.running() ? true : http_fetch(d.url("/healthz"), probe).status == 200; },
        std::chrono::seconds(20));
    if (up && d.child.running()) return d;
    d.child.stop(SIGKILL, std::chrono::seconds(2));
  }
  std::fprintf(stderr, "memlensd did not start; log:\n%s\n", read_text(d.log_path).c_str());
  return std::nullopt;
}

bool is_root() { return ::geteuid() == 0; }

bool bpf_opted_out() {
  const char* v = std::getenv("MEMLENS_TEST_NO_BPF");
  return v && std::string(v) == "1";
}

std::string collector_down(const Daemon& d, const std::string& name) {
  auto s = d.scrape();
  if (find_sample(s, "memlens_collector_enabled", {{"collector", name}}).value_or(0) == 1) return "";
  return "collector " + name + " is disabled (reason " +
         find_label(s, "memlens_collector_enabled", {{"collector", name}}, "reason").value_or("?") + "):\n" + d.log();
}

uint64_t zlib_gzip_size(const std::string& bytes) {
  z_stream z{};
  if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) return 0;
  std::string out(deflateBound(&z, bytes.size()) + 64, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  z.avail_in = static_cast<uInt>(bytes.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  const bool done = deflate(&z, Z_FINISH) == Z_STREAM_END;
  const uint64_t n = z.total_out;
  deflateEnd(&z);
  return done ? n : 0;
}

}  // namespace memlens::test
