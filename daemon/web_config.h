// --web.config.file: TLS, basic auth and response headers in the format of
// Prometheus' exporter-toolkit (what node_exporter users already have), plus
// one memlens key, api_users, that narrows who may read /api/ and the status
// page. Read once at start; certificates and keys are loaded then too, so a
// bad file stops the daemon before it listens.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "daemon/result.h"

struct ssl_st;

namespace boost::asio::ssl {
class context;
}

namespace memlens {

// Go's crypto/tls ClientAuthType, which the file names.
enum class ClientAuth { none, request, require_any, verify_if_given, require_and_verify };

struct TlsSettings {
  std::string cert_pem, key_pem, client_ca_pem;  // from *_file or the inline forms
  std::string cert_source, key_source, client_ca_source;  // file names (or "inline") for messages
  ClientAuth client_auth = ClientAuth::none;
  std::vector<std::string> client_allowed_sans;
  int min_version = 12, max_version = 13;  // TLS 1.x
  std::vector<std::string> cipher_suites;  // IANA names, as Go spells them
  bool prefer_server_cipher_suites = true;
  std::vector<std::string> groups;  // OpenSSL group names (P-256, X25519, ...)
};

struct WebConfig {
  std::string source;  // the file, for messages
  std::optional<TlsSettings> tls;
  std::shared_ptr<boost::asio::ssl::context> tls_context;  // built from tls by load_web_config
  std::map<std::string, std::string> users;                // user -> bcrypt hash
  // nullopt: /api/ and / are open to whoever may read /metrics. A set: only
  // these (authenticated) users; empty: nobody.
  std::optional<std::set<std::string>> api_users;
  std::vector<std::pair<std::string, std::string>> headers;  // added to every response
  std::chrono::milliseconds rate_interval{0};                // 0: no rate limit
  int rate_burst = 0;

  bool auth_required() const { return !users.empty(); }
};

// Parses the YAML; relative file names resolve against base_dir (the
// config's directory, as exporter-toolkit does) and the files are read.
// Every error names `source` and the field.
Result<WebConfig> parse_web_config(const std::string& yaml, const std::string& source, const std::string& base_dir);
// parse_web_config on the file, then the TLS context is built (certificate,
// key, client CA, versions, ciphers): a bad certificate fails here.
Result<WebConfig> load_web_config(const std::string& path);
Result<std::shared_ptr<boost::asio::ssl::context>> make_tls_context(const TlsSettings& tls, const std::string& source);

// client_allowed_sans: the peer certificate has one of the names (DNS, IP,
// e-mail or URI SAN, exact match).
bool client_sans_allowed(ssl_st* ssl, const std::vector<std::string>& allowed);

// $2a$/$2b$/$2y$, cost 04-31, 22 salt + 31 hash characters.
bool valid_bcrypt_hash(std::string_view hash);
// Slow by design (~70 ms at cost 10): never call it on the I/O thread.
// Compares in constant time.
bool bcrypt_matches(const std::string& password, const std::string& hash);

}  // namespace memlens
