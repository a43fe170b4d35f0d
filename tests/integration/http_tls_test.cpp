// --web.config.file: TLS, basic auth, client certificates and api_users, on
// a real memlensd with certificates made here by the openssl CLI and
// bcrypt hashes made here by libxcrypt; and a real Prometheus scraping it
// over HTTPS with basic auth.
#include <crypt.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

const char* kSelf = "global: {tick_interval: 200ms, rescan_interval: 200ms}\ntargets: [{name: me, self: true}]\n";

// A CA, a server certificate for 127.0.0.1/localhost and two client
// certificates, in one temporary directory.
struct Pki {
  std::string dir, ca, server_cert, server_key, client_cert, client_key, other_cert, other_key;
  bool ok = false;
  std::string log;
};

Pki make_pki() {
  Pki p;
  p.dir = make_temp_dir("memlens-tls");
  const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  write_text(p.dir + "/server.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  write_text(p.dir + "/client.ext", "subjectAltName=DNS:scraper.test\nextendedKeyUsage=clientAuth\n");
  write_text(p.dir + "/other.ext", "subjectAltName=DNS:intruder.test\nextendedKeyUsage=clientAuth\n");
  std::string cmd = "cd " + p.dir + " && openssl req -x509" + ec +
                    " -keyout ca.key -out ca.crt -days 2 -subj /CN=memlens-test-ca";
  for (const char* n : {"server", "client", "other"}) {
    const std::string s(n);
    cmd += " && openssl req" + ec + " -keyout " + s + ".key -out " + s + ".csr -subj /CN=" + s +
           " && openssl x509 -req -in " + s + ".csr -CA ca.crt -CAkey ca.key -CAcreateserial -out " + s +
           ".crt -days 2 -extfile " + s + ".ext";
  }
  p.ok = run("(" + cmd + ")", &p.log) == 0;
  p.ca = p.dir + "/ca.crt";
  p.server_cert = p.dir + "/server.crt";
  p.server_key = p.dir + "/server.key";
  p.client_cert = p.dir + "/client.crt";
  p.client_key = p.dir + "/client.key";
  p.other_cert = p.dir + "/other.crt";
  p.other_key = p.dir + "/other.key";
  return p;
}

std::string bcrypt(const std::string& pw, int cost) {
  crypt_data d{};
  char setting[64];
  std::snprintf(setting, sizeof setting, "$2b$%02d$%s", cost, "Xq1vD5r9Kc2mN8pL3sT6wY");
  const char* h = crypt_r(pw.c_str(), setting, &d);
  return h ? h : "";
}

double seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

HttpOptions as(const Pki& p, const std::string& user = "", const std::string& pw = "") {
  HttpOptions o;
  o.ca_file = p.ca;
  o.user = user;
  o.password = pw;
  return o;
}

}  // namespace

class HttpTls : public ::testing::Test {
 protected:
  void SetUp() override {
    if (run("command -v openssl") != 0) GTEST_SKIP() << "the openssl CLI is missing (Debian package openssl)";
    pki_ = make_pki();
    ASSERT_TRUE(pki_.ok) << pki_.log;
  }
  Pki pki_;
};

TEST_F(HttpTls, TlsAndBasicAuth) {
  // Cost 11: slow enough (~0.1 s) that a cache that did not work would show.
  const std::string alice = bcrypt("alice-pw", 11), bob = bcrypt("bob-pw", 11);
  ASSERT_FALSE(alice.empty());
  // Relative file names resolve against the config's directory.
  const std::string web = pki_.dir + "/web.yml";
  write_text(web, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                  "basic_auth_users:\n  alice: " + alice + "\n  bob: " + bob + "\n"
                  "api_users: [alice]\n"
                  "http_server_config:\n  headers:\n    X-Frame-Options: deny\n");
  auto d = start_daemon(kSelf, {"--web.config.file=" + web}, {}, as(pki_));
  ASSERT_TRUE(d);
  const std::string https = d->url(""), http = "http://127.0.0.1:" + std::to_string(d->port);

  // Plain HTTP to the TLS port is refused (with a plain-text 400, as Go does).
  auto r = http_get(http + "/metrics");
  EXPECT_NE(r.status, 200);
  EXPECT_NE(r.body.find("HTTPS"), std::string::npos) << r.status << " " << r.body;
  // A client that does not trust our CA fails the handshake.
  r = http_get(https + "/healthz");
  EXPECT_EQ(r.status, 0) << "verified against the system CAs?";
  EXPECT_FALSE(r.error.empty());

  // /healthz needs no credentials (probes carry none).
  r = http_fetch(https + "/healthz", as(pki_));
  EXPECT_EQ(r.status, 200) << r.error;
  EXPECT_EQ(r.header("X-Frame-Options"), "deny") << r.headers;

  r = http_fetch(https + "/metrics", as(pki_));
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.header("WWW-Authenticate"), "Basic realm=\"memlens\"");
  EXPECT_EQ(http_fetch(https + "/metrics", as(pki_, "alice", "wrong")).status, 401);
  EXPECT_EQ(http_fetch(https + "/metrics", as(pki_, "mallory", "alice-pw")).status, 401);
  EXPECT_EQ(http_fetch(https + "/metrics", as(pki_, "alice", "")).status, 401);
  EXPECT_EQ(http_fetch(https + "/nothing", as(pki_)).status, 401) << "unknown paths too, before routing";
  r = http_fetch(https + "/metrics", as(pki_, "alice", "alice-pw"));
  EXPECT_EQ(r.status, 200) << r.error;
  EXPECT_TRUE(find_sample(parse_exposition(r.body), "memlens_rss_bytes", {{"target", "me"}}));

  // The check is cached: ten more scrapes cost far less than ten bcrypts.
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_FALSE(bcrypt("alice-pw", 11).empty());
  const double one_bcrypt = seconds(t0);
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 10; ++i) EXPECT_EQ(http_fetch(https + "/metrics", as(pki_, "alice", "alice-pw")).status, 200);
  const double ten = seconds(t0);
  std::printf("one bcrypt (cost 11): %.3f s; ten cached authenticated HTTPS scrapes: %.3f s\n", one_bcrypt, ten);
  EXPECT_LT(ten, 3 * one_bcrypt);

  // api_users: [alice]: bob may scrape but not read the API or the page.
  EXPECT_EQ(http_fetch(https + "/metrics", as(pki_, "bob", "bob-pw")).status, 200);
  EXPECT_EQ(http_fetch(https + "/api/v1/targets", as(pki_, "bob", "bob-pw")).status, 403);
  EXPECT_EQ(http_fetch(https + "/", as(pki_, "bob", "bob-pw")).status, 403);
  EXPECT_EQ(http_fetch(https + "/api/v1/targets", as(pki_)).status, 401);
  r = http_fetch(https + "/api/v1/targets", as(pki_, "alice", "alice-pw"));
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("\"me\""), std::string::npos);
  EXPECT_EQ(http_fetch(https + "/", as(pki_, "alice", "alice-pw")).status, 200);

  auto s = parse_exposition(http_fetch(https + "/metrics", as(pki_, "alice", "alice-pw")).body);
  EXPECT_GE(find_sample(s, "memlens_http_requests_total", {{"code", "401"}}).value_or(0), 5);
  EXPECT_GE(find_sample(s, "memlens_http_requests_total", {{"code", "403"}}).value_or(0), 2);
  EXPECT_GE(find_sample(s, "memlens_http_tls_handshake_errors_total").value_or(0), 2);
  EXPECT_TRUE(d->child.running());
  EXPECT_EQ(d->log().find("alice-pw"), std::string::npos) << "passwords are never logged";
}

// The documented example, as shipped (its certificate names resolve next to it).
TEST_F(HttpTls, ExampleWebConfigWorksAsDocumented) {
  const std::string web = pki_.dir + "/web-config.yaml";
  write_text(web, read_text(std::string(MEMLENS_SOURCE_DIR) + "/config/web-config.example.yaml"));
  auto d = start_daemon(kSelf, {"--web.config.file=" + web}, {}, as(pki_, "prometheus", "example"));
  ASSERT_TRUE(d);
  auto r = http_fetch(d->url("/metrics"), as(pki_, "prometheus", "example"));
  EXPECT_EQ(r.status, 200) << r.error;
  EXPECT_EQ(r.header("X-Content-Type-Options"), "nosniff");
  EXPECT_EQ(http_fetch(d->url("/api/v1/targets"), as(pki_, "prometheus", "example")).status, 403);
  EXPECT_EQ(http_fetch(d->url("/api/v1/targets"), as(pki_, "alice", "example")).status, 200);
}

TEST_F(HttpTls, ApiUsersEmptyClosesTheApiToEveryone) {
  const std::string web = pki_.dir + "/web.yml";
  write_text(web, "api_users: []\n");
  auto d = start_daemon(kSelf, {"--web.config.file=" + web});
  ASSERT_TRUE(d);
  EXPECT_EQ(http_get(d->url("/api/v1/targets")).status, 403);
  EXPECT_EQ(http_get(d->url("/api/v1/targets/me/leaks")).status, 403);
  EXPECT_EQ(http_get(d->url("/")).status, 403);
  EXPECT_EQ(http_get(d->url("/metrics")).status, 200);
  EXPECT_EQ(http_get(d->url("/healthz")).status, 200);
}

TEST_F(HttpTls, ClientCertificatesAndMinimumVersion) {
  const std::string web = pki_.dir + "/web.yml";
  write_text(web, "tls_server_config:\n  cert_file: " + pki_.server_cert + "\n  key_file: " + pki_.server_key +
                      "\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: " + pki_.ca +
                      "\n  client_allowed_sans: [scraper.test]\n  min_version: TLS13\n");
  HttpOptions good = as(pki_);
  good.client_cert = pki_.client_cert;
  good.client_key = pki_.client_key;
  auto d = start_daemon(kSelf, {"--web.config.file=" + web}, {}, good);
  ASSERT_TRUE(d) << "with the client certificate";
  EXPECT_EQ(http_fetch(d->url("/metrics"), good).status, 200);
  auto r = http_fetch(d->url("/metrics"), as(pki_));
  EXPECT_EQ(r.status, 0) << "no client certificate";
  HttpOptions other = as(pki_);
  other.client_cert = pki_.other_cert;
  other.client_key = pki_.other_key;
  EXPECT_EQ(http_fetch(d->url("/metrics"), other).status, 0) << "signed by the CA but its SAN is not allowed";
  HttpOptions self_signed = as(pki_);
  self_signed.client_cert = pki_.ca;  // a certificate the CA did not sign for a client
  self_signed.client_key = pki_.dir + "/ca.key";
  EXPECT_NE(http_fetch(d->url("/metrics"), self_signed).status, 200);
  HttpOptions old = good;
  old.tls12_only = true;
  EXPECT_EQ(http_fetch(d->url("/metrics"), old).status, 0) << "min_version: TLS13";
  EXPECT_TRUE(d->child.running());
}

TEST_F(HttpTls, BadWebConfigExits1NamingTheFile) {
  const std::string port = std::to_string(free_port());
  const std::string good_tls = "tls_server_config:\n  cert_file: " + pki_.server_cert + "\n  key_file: " + pki_.server_key + "\n";
  write_text(pki_.dir + "/garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
  struct Case {
    std::string name, yaml, expect;
  };
  for (const Case& c : std::vector<Case>{
           {"unknown-field.yml", "tls_server_confg:\n  cert_file: x\n", "tls_server_confg: unknown field"},
           {"bad-hash.yml", "basic_auth_users:\n  alice: secret\n", "not a bcrypt hash"},
           {"missing-cert.yml", "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
            pki_.dir + "/nope.crt"},
           {"garbage-cert.yml", "tls_server_config:\n  cert_file: garbage.pem\n  key_file: server.key\n",
            pki_.dir + "/garbage.pem"},
           {"wrong-key.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n", "does not match"},
           {"bad-yaml.yml", good_tls + "  [oops\n", "bad-yaml.yml:"},
           {"bad-api-user.yml", "api_users: [nobody]\n", "'nobody' is not in basic_auth_users"}}) {
    const std::string path = pki_.dir + "/" + c.name;
    write_text(path, c.yaml);
    std::string out;
    const int rc = run(memlensd_path() + " --web.listen-address=127.0.0.1:" + port + " --web.config.file=" + path, &out);
    EXPECT_EQ(rc, 1) << c.name << ": " << out;
    EXPECT_NE(out.find(path), std::string::npos) << c.name << ": the message names the file: " << out;
    EXPECT_NE(out.find(c.expect), std::string::npos) << c.name << ": " << out;
  }
  std::string out;
  EXPECT_EQ(run(memlensd_path() + " --web.listen-address=127.0.0.1:" + port + " --web.config.file=" + pki_.dir +
                    "/absent.yml", &out), 1);
  EXPECT_NE(out.find(pki_.dir + "/absent.yml: cannot open"), std::string::npos) << out;
  // --check-config checks it too.
  EXPECT_EQ(run(memlensd_path() + " --check-config --web.config.file=" + pki_.dir + "/bad-hash.yml", &out), 1) << out;
  EXPECT_NE(out.find("bad-hash.yml"), std::string::npos) << out;
  write_text(pki_.dir + "/good.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n");
  EXPECT_EQ(run(memlensd_path() + " --check-config --web.config.file=" + pki_.dir + "/good.yml", &out), 0) << out;
  EXPECT_NE(out.find("good.yml: OK (TLS"), std::string::npos) << out;
}

// Prometheus (Go's TLS client, gzip, basic auth) scrapes memlensd.
TEST_F(HttpTls, PrometheusScrapesOverHttpsWithBasicAuth) {
  if (run("command -v prometheus") != 0) GTEST_SKIP() << "prometheus is not installed (Debian package prometheus)";
  const std::string web = pki_.dir + "/web.yml";
  write_text(web, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                  "basic_auth_users:\n  prom: " + bcrypt("prom-pw", 10) + "\n");
  auto d = start_daemon(kSelf, {"--web.config.file=" + web}, {}, as(pki_, "prom", "prom-pw"));
  ASSERT_TRUE(d);
  const int prom_port = free_port();
  const std::string cfg = pki_.dir + "/prometheus.yml";
  write_text(cfg, "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                  "scrape_configs:\n"
                  "  - job_name: memlens\n"
                  "    scheme: https\n"
                  "    tls_config: {ca_file: " + pki_.ca + "}\n"
                  "    basic_auth: {username: prom, password: prom-pw}\n"
                  "    static_configs: [{targets: ['127.0.0.1:" + std::to_string(d->port) + "']}]\n");
  Child prom = spawn({"prometheus", "--config.file=" + cfg, "--storage.tsdb.path=" + pki_.dir + "/data",
                      "--web.listen-address=127.0.0.1:" + std::to_string(prom_port), "--log.level=warn"},
                     pki_.dir + "/prometheus.log");
  const std::string api = "http://127.0.0.1:" + std::to_string(prom_port) + "/api/v1/query?query=";
  auto value = [&](const std::string& q) -> std::optional<std::string> {
    auto r = http_get(api + q);
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    if (j.is_discarded() || !j.contains("data") || j["data"]["result"].empty()) return std::nullopt;
    return j["data"]["result"][0]["value"][1].get<std::string>();
  };
  EXPECT_TRUE(wait_until([&] { return value("up%7Bjob%3D%22memlens%22%7D") == std::optional<std::string>("1"); }, 40s))
      << read_text(pki_.dir + "/prometheus.log");
  EXPECT_TRUE(wait_until([&] { return value("memlens_rss_bytes%7Btarget%3D%22me%22%7D").has_value(); }, 10s));
  // Prometheus asked for gzip, and memlensd served it.
  EXPECT_TRUE(wait_until([&] { return value("memlens_scrapes_total").has_value(); }, 10s));
}
