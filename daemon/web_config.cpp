#include "daemon/web_config.h"

#include <utility>  // before Asio: Boost 1.74 + g++ 12 in C++20 needs std::exchange
#include <boost/asio/ssl.hpp>

#include <arpa/inet.h>
#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "daemon/config.h"  // parse_duration

namespace memlens {

namespace {

namespace ssl = boost::asio::ssl;

// Every message reads "file:line:col: field: why", as the main config's do.
class Parser {
 public:
  Parser(std::string source, std::string base_dir) : source_(std::move(source)), base_(std::move(base_dir)) {}

  Error err(const YAML::Node& n, const std::string& field, const std::string& why) const {
    std::ostringstream o;
    o << source_;
    if (n.IsDefined() && n.Mark().line >= 0) o << ":" << n.Mark().line + 1 << ":" << n.Mark().column + 1;
    o << ": " << field << ": " << why;
    return make_error(Errc::invalid, o.str());
  }

  Result<void> known_keys(const YAML::Node& map, const std::string& field, const std::set<std::string>& keys) const {
    if (!map.IsMap()) return err(map, field, "expected a mapping");
    for (const auto& kv : map) {
      const std::string k = kv.first.Scalar();
      if (!keys.count(k)) return err(kv.first, field.empty() ? k : field + "." + k, "unknown field");
    }
    return {};
  }

  Result<std::string> str(const YAML::Node& n, const std::string& field) const {
    if (!n.IsScalar()) return err(n, field, "expected a string");
    return n.Scalar();
  }

  Result<bool> boolean(const YAML::Node& n, const std::string& field) const {
    if (n.IsScalar()) {
      const std::string& s = n.Scalar();
      if (s == "true") return true;
      if (s == "false") return false;
    }
    return err(n, field, "expected true or false");
  }

  Result<std::vector<std::string>> strings(const YAML::Node& n, const std::string& field) const {
    std::vector<std::string> out;
    if (n.IsNull()) return out;
    if (!n.IsSequence()) return err(n, field, "expected a list of strings");
    for (std::size_t i = 0; i < n.size(); ++i) {
      auto s = str(n[i], field + "[" + std::to_string(i) + "]");
      if (!s) return s.error();
      out.push_back(*s);
    }
    return out;
  }

  // A file named in the config: relative to the config's directory.
  Result<std::string> file(const YAML::Node& n, const std::string& field, std::string* resolved) const {
    auto name = str(n, field);
    if (!name) return name.error();
    if (name->empty()) return err(n, field, "empty file name");
    *resolved = (name->front() == '/' || base_.empty()) ? *name : base_ + "/" + *name;
    std::ifstream in(*resolved, std::ios::binary);
    if (!in) return err(n, field, "cannot read " + *resolved + ": " + std::strerror(errno));
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  const std::string& source() const { return source_; }

 private:
  std::string source_, base_;
};

Result<int> tls_version(const Parser& p, const YAML::Node& n, const std::string& field) {
  auto s = p.str(n, field);
  if (!s) return s.error();
  if (*s == "TLS10") return 10;
  if (*s == "TLS11") return 11;
  if (*s == "TLS12") return 12;
  if (*s == "TLS13") return 13;
  return p.err(n, field, "'" + *s + "': expected TLS10, TLS11, TLS12 or TLS13");
}

Result<void> parse_tls(const Parser& p, const YAML::Node& t, std::optional<TlsSettings>& out) {
  const std::string f = "tls_server_config";
  if (t.IsNull()) return {};
  if (auto r = p.known_keys(t, f,
                            {"cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file",
                             "client_allowed_sans", "min_version", "max_version", "cipher_suites",
                             "prefer_server_cipher_suites", "curve_preferences"});
      !r)
    return r.error();
  TlsSettings s;
  // Each PEM comes inline or from a file, never both (exporter-toolkit's rule).
  struct Pem {
    const char* inline_key;
    const char* file_key;
    std::string* pem;
    std::string* source;
  };
  for (const Pem& pem : {Pem{"cert", "cert_file", &s.cert_pem, &s.cert_source},
                         Pem{"key", "key_file", &s.key_pem, &s.key_source},
                         Pem{"client_ca", "client_ca_file", &s.client_ca_pem, &s.client_ca_source}}) {
    const YAML::Node in = t[pem.inline_key], file = t[pem.file_key];
    if (in && !in.IsNull() && file && !file.IsNull())
      return p.err(file, f + "." + pem.file_key, std::string("set either ") + pem.inline_key + " or " + pem.file_key);
    if (in && !in.IsNull()) {
      auto v = p.str(in, f + "." + pem.inline_key);
      if (!v) return v.error();
      *pem.pem = *v;
      *pem.source = p.source() + ": " + f + "." + pem.inline_key;
    } else if (file && !file.IsNull()) {
      std::string resolved;
      auto v = p.file(file, f + "." + pem.file_key, &resolved);
      if (!v) return v.error();
      *pem.pem = *v;
      *pem.source = resolved;
    }
  }
  if (const YAML::Node n = t["client_auth_type"]; n && !n.IsNull()) {
    auto v = p.str(n, f + ".client_auth_type");
    if (!v) return v.error();
    static const std::map<std::string, ClientAuth> kinds = {
        {"NoClientCert", ClientAuth::none},
        {"RequestClientCert", ClientAuth::request},
        {"RequireAnyClientCert", ClientAuth::require_any},
        {"VerifyClientCertIfGiven", ClientAuth::verify_if_given},
        {"RequireAndVerifyClientCert", ClientAuth::require_and_verify}};
    auto it = kinds.find(*v);
    if (it == kinds.end())
      return p.err(n, f + ".client_auth_type",
                   "'" + *v + "': expected NoClientCert, RequestClientCert, RequireAnyClientCert, "
                              "VerifyClientCertIfGiven or RequireAndVerifyClientCert");
    s.client_auth = it->second;
  }
  if (const YAML::Node n = t["client_allowed_sans"]; n) {
    auto v = p.strings(n, f + ".client_allowed_sans");
    if (!v) return v.error();
    s.client_allowed_sans = *v;
    if (!s.client_allowed_sans.empty() && s.client_auth != ClientAuth::require_any &&
        s.client_auth != ClientAuth::require_and_verify)
      return p.err(n, f + ".client_allowed_sans",
                   "needs client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert");
  }
  if (const YAML::Node n = t["min_version"]; n && !n.IsNull()) {
    auto v = tls_version(p, n, f + ".min_version");
    if (!v) return v.error();
    s.min_version = *v;
  }
  if (const YAML::Node n = t["max_version"]; n && !n.IsNull()) {
    auto v = tls_version(p, n, f + ".max_version");
    if (!v) return v.error();
    s.max_version = *v;
  }
  if (s.min_version > s.max_version) return p.err(t["max_version"], f + ".max_version", "below min_version");
  if (const YAML::Node n = t["cipher_suites"]; n) {
    auto v = p.strings(n, f + ".cipher_suites");
    if (!v) return v.error();
    s.cipher_suites = *v;
  }
  if (const YAML::Node n = t["prefer_server_cipher_suites"]; n && !n.IsNull()) {
    auto v = p.boolean(n, f + ".prefer_server_cipher_suites");
    if (!v) return v.error();
    s.prefer_server_cipher_suites = *v;
  }
  if (const YAML::Node n = t["curve_preferences"]; n) {
    auto v = p.strings(n, f + ".curve_preferences");
    if (!v) return v.error();
    static const std::map<std::string, std::string> curves = {
        {"CurveP256", "P-256"}, {"CurveP384", "P-384"}, {"CurveP521", "P-521"}, {"X25519", "X25519"}};
    for (const auto& c : *v) {
      auto it = curves.find(c);
      if (it == curves.end())
        return p.err(n, f + ".curve_preferences", "'" + c + "': expected CurveP256, CurveP384, CurveP521 or X25519");
      s.groups.push_back(it->second);
    }
  }

  const bool any_pem = !s.cert_pem.empty() || !s.key_pem.empty();
  if (!any_pem && s.client_ca_pem.empty() && s.client_auth == ClientAuth::none) return {};  // no TLS, as the toolkit
  if (s.cert_pem.empty()) return p.err(t, f, "missing cert_file");
  if (s.key_pem.empty()) return p.err(t, f, "missing key_file");
  const bool verifies = s.client_auth == ClientAuth::verify_if_given || s.client_auth == ClientAuth::require_and_verify;
  if (verifies && s.client_ca_pem.empty())
    return p.err(t, f, "client_auth_type verifies client certificates: set client_ca_file");
  if (!s.client_ca_pem.empty() && s.client_auth == ClientAuth::none)
    return p.err(t, f, "client_ca_file is set but client_auth_type is NoClientCert");
  out = std::move(s);
  return {};
}

Result<void> parse_http_server(const Parser& p, const YAML::Node& h, WebConfig& out) {
  const std::string f = "http_server_config";
  if (h.IsNull()) return {};
  if (auto r = p.known_keys(h, f, {"http2", "headers"}); !r) return r.error();
  // http2: accepted for compatibility; memlensd speaks HTTP/1.1 only.
  if (const YAML::Node n = h["http2"]; n && !n.IsNull())
    if (auto v = p.boolean(n, f + ".http2"); !v) return v.error();
  const YAML::Node hs = h["headers"];
  if (!hs || hs.IsNull()) return {};
  if (!hs.IsMap()) return p.err(hs, f + ".headers", "expected a mapping");
  // The headers exporter-toolkit allows, with the values it allows.
  static const std::map<std::string, std::vector<std::string>> allowed = {
      {"Content-Security-Policy", {}},
      {"X-Frame-Options", {"deny", "sameorigin"}},
      {"X-Content-Type-Options", {"nosniff"}},
      {"X-XSS-Protection", {}},
      {"Strict-Transport-Security", {}}};
  for (const auto& kv : hs) {
    const std::string name = kv.first.Scalar(), field = f + ".headers." + name;
    auto it = allowed.find(name);
    if (it == allowed.end()) return p.err(kv.first, field, "this header cannot be configured");
    auto v = p.str(kv.second, field);
    if (!v) return v.error();
    if (v->empty()) continue;  // blank: unset
    if (v->find_first_of("\r\n") != std::string::npos || v->find('\0') != std::string::npos)
      return p.err(kv.second, field, "line breaks are not allowed in a header value");
    if (!it->second.empty()) {
      std::string lower = *v;
      for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      bool ok = false;
      for (const auto& a : it->second) ok |= lower == a;
      if (!ok) return p.err(kv.second, field, "'" + *v + "' is not an accepted value");
    }
    out.headers.emplace_back(name, *v);
  }
  return {};
}

}  // namespace

bool valid_bcrypt_hash(std::string_view h) {
  if (h.size() != 60 || h[0] != '$' || h[1] != '2' || h[3] != '$' || h[6] != '$') return false;
  if (h[2] != 'a' && h[2] != 'b' && h[2] != 'y') return false;
  if (h[4] < '0' || h[4] > '9' || h[5] < '0' || h[5] > '9') return false;
  const int cost = (h[4] - '0') * 10 + (h[5] - '0');
  if (cost < 4 || cost > 31) return false;
  for (char c : h.substr(7))
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '/'))
      return false;
  return true;
}

bool bcrypt_matches(const std::string& password, const std::string& hash) {
  // crypt takes a C string: a NUL would cut the password short.
  if (password.find('\0') != std::string::npos) return false;
  auto data = std::make_unique<crypt_data>();  // ~32 KiB: not on the stack
  const char* out = crypt_rn(password.c_str(), hash.c_str(), data.get(), sizeof *data);
  if (!out || std::strlen(out) != hash.size()) return false;
  return CRYPTO_memcmp(out, hash.data(), hash.size()) == 0;
}

Result<WebConfig> parse_web_config(const std::string& yaml, const std::string& source, const std::string& base_dir) {
  Parser p(source, base_dir);
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return make_error(Errc::invalid, source + ":" + std::to_string(e.mark.line + 1) + ":" +
                                         std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
  WebConfig c;
  c.source = source;
  if (root.IsNull()) return c;  // an empty file: plain HTTP, no auth
  if (auto r = p.known_keys(root, "",
                            {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit", "api_users"});
      !r)
    return r.error();
  if (const YAML::Node t = root["tls_server_config"]; t)
    if (auto r = parse_tls(p, t, c.tls); !r) return r.error();
  if (const YAML::Node h = root["http_server_config"]; h)
    if (auto r = parse_http_server(p, h, c); !r) return r.error();
  if (const YAML::Node u = root["basic_auth_users"]; u && !u.IsNull()) {
    if (!u.IsMap()) return p.err(u, "basic_auth_users", "expected a mapping of user: bcrypt hash");
    for (const auto& kv : u) {
      const std::string user = kv.first.Scalar(), field = "basic_auth_users." + user;
      if (user.empty() || user.find(':') != std::string::npos)
        return p.err(kv.first, field, "a user name must be non-empty and without ':'");
      auto h = p.str(kv.second, field);
      if (!h) return h.error();
      if (!valid_bcrypt_hash(*h))
        return p.err(kv.second, field, "not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31, 60 characters)");
      c.users[user] = *h;
    }
  }
  if (const YAML::Node a = root["api_users"]; a) {
    auto v = p.strings(a, "api_users");
    if (!v) return v.error();
    c.api_users.emplace(v->begin(), v->end());
    for (const auto& user : *c.api_users)
      if (!c.users.count(user)) return p.err(a, "api_users", "'" + user + "' is not in basic_auth_users");
  }
  if (const YAML::Node r = root["rate_limit"]; r && !r.IsNull()) {
    if (auto k = p.known_keys(r, "rate_limit", {"interval", "burst"}); !k) return k.error();
    if (const YAML::Node n = r["interval"]; n && !n.IsNull()) {
      auto s = p.str(n, "rate_limit.interval");
      if (!s) return s.error();
      if (*s != "0" && *s != "0s") {
        auto d = parse_duration(*s);
        if (!d) return p.err(n, "rate_limit.interval", "'" + *s + "': expected a duration such as 100ms or 1s");
        c.rate_interval = std::chrono::duration_cast<std::chrono::milliseconds>(*d);
      }
    }
    if (const YAML::Node n = r["burst"]; n && !n.IsNull()) {
      int b = -1;
      try {
        b = n.as<int>();
      } catch (const YAML::Exception&) {
      }
      if (b < 0 || b > 1'000'000) return p.err(n, "rate_limit.burst", "expected an integer 0-1000000");
      c.rate_burst = b;
    }
    if (c.rate_interval.count() > 0 && c.rate_burst < 1)
      return p.err(r, "rate_limit.burst", "must be at least 1 when interval is set");
  }
  return c;
}

Result<WebConfig> load_web_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(Errc::invalid, path + ": cannot open: " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  auto c = parse_web_config(ss.str(), path, dir);
  if (!c) return c;
  if (c->tls) {
    auto ctx = make_tls_context(*c->tls, path);
    if (!ctx) return ctx.error();
    c->tls_context = std::move(*ctx);
  }
  return c;
}

namespace {

std::string openssl_reason(const boost::system::error_code& ec) {
  std::string m = ec.message();
  ERR_clear_error();
  return m;
}

// Go's cipher suite names are the IANA names; OpenSSL knows those as the
// "standard name" of its own ciphers.
Result<std::string> openssl_cipher_list(const std::vector<std::string>& names, const std::string& source) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> tmp(SSL_CTX_new(TLS_server_method()), &SSL_CTX_free);
  if (!tmp || SSL_CTX_set_cipher_list(tmp.get(), "ALL:COMPLEMENTOFALL") != 1)
    return make_error(Errc::io, source + ": cannot list OpenSSL's ciphers");
  std::unique_ptr<SSL, decltype(&SSL_free)> s(SSL_new(tmp.get()), &SSL_free);
  STACK_OF(SSL_CIPHER)* all = s ? SSL_get_ciphers(s.get()) : nullptr;
  std::string list;
  for (const auto& name : names) {
    // TLS 1.3 suites are not configurable, in Go as here: accepted, unused.
    if (name == "TLS_AES_128_GCM_SHA256" || name == "TLS_AES_256_GCM_SHA384" || name == "TLS_CHACHA20_POLY1305_SHA256")
      continue;
    const char* found = nullptr;
    for (int i = 0; all && i < sk_SSL_CIPHER_num(all) && !found; ++i) {
      const SSL_CIPHER* c = sk_SSL_CIPHER_value(all, i);
      const char* std_name = SSL_CIPHER_standard_name(c);
      // Go also spells the ChaCha20 suites without their _SHA256 suffix.
      if (std_name && (name == std_name || name + "_SHA256" == std_name)) found = SSL_CIPHER_get_name(c);
    }
    if (!found)
      return make_error(Errc::invalid, source + ": tls_server_config.cipher_suites: '" + name +
                                           "' is not a cipher suite this OpenSSL provides");
    if (!list.empty()) list += ':';
    list += found;
  }
  return list;
}

int openssl_version(int v) {
  switch (v) {
    case 10: return TLS1_VERSION;
    case 11: return TLS1_1_VERSION;
    case 12: return TLS1_2_VERSION;
    default: return TLS1_3_VERSION;
  }
}

}  // namespace

Result<std::shared_ptr<ssl::context>> make_tls_context(const TlsSettings& tls, const std::string& source) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  SSL_CTX* c = ctx->native_handle();
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_compression | ssl::context::single_dh_use);
  if (SSL_CTX_set_min_proto_version(c, openssl_version(tls.min_version)) != 1 ||
      SSL_CTX_set_max_proto_version(c, openssl_version(tls.max_version)) != 1)
    return make_error(Errc::invalid, source + ": tls_server_config: TLS versions not supported by this OpenSSL");
  boost::system::error_code ec;
  ctx->use_certificate_chain(boost::asio::buffer(tls.cert_pem), ec);
  if (ec)
    return make_error(Errc::invalid,
                      source + ": tls_server_config: certificate " + tls.cert_source + ": " + openssl_reason(ec));
  ctx->use_private_key(boost::asio::buffer(tls.key_pem), ssl::context::pem, ec);
  if (ec) {
    std::string why = openssl_reason(ec);
    if (why.find("mismatch") != std::string::npos) why = "does not match certificate " + tls.cert_source;
    return make_error(Errc::invalid, source + ": tls_server_config: key " + tls.key_source + ": " + why);
  }
  if (SSL_CTX_check_private_key(c) != 1) {
    ERR_clear_error();
    return make_error(Errc::invalid, source + ": tls_server_config: key " + tls.key_source + " does not match certificate " +
                                         tls.cert_source);
  }
  if (!tls.client_ca_pem.empty()) {
    ctx->add_certificate_authority(boost::asio::buffer(tls.client_ca_pem), ec);
    if (ec)
      return make_error(Errc::invalid, source + ": tls_server_config: client CA " + tls.client_ca_source + ": " +
                                           openssl_reason(ec));
    // The CA names go into the CertificateRequest, so a client with several
    // certificates picks the right one.
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(
        BIO_new_mem_buf(tls.client_ca_pem.data(), static_cast<int>(tls.client_ca_pem.size())), &BIO_free);
    while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
      SSL_CTX_add_client_CA(c, x);
      X509_free(x);
    }
    ERR_clear_error();  // the end of the PEM list reads as an error
  }
  switch (tls.client_auth) {
    case ClientAuth::none: ctx->set_verify_mode(ssl::verify_none); break;
    case ClientAuth::request:
    case ClientAuth::require_any:
      // A certificate is asked for but not verified (Go's semantics).
      ctx->set_verify_mode(ssl::verify_peer |
                           (tls.client_auth == ClientAuth::require_any ? ssl::verify_fail_if_no_peer_cert : 0));
      ctx->set_verify_callback([](bool, ssl::verify_context&) { return true; });
      break;
    case ClientAuth::verify_if_given: ctx->set_verify_mode(ssl::verify_peer); break;
    case ClientAuth::require_and_verify:
      ctx->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
      break;
  }
  // Resumed sessions with client certificates need a session id context,
  // else OpenSSL fails the resumption.
  static const unsigned char kSid[] = "memlensd";
  SSL_CTX_set_session_id_context(c, kSid, sizeof kSid - 1);
  if (!tls.cipher_suites.empty()) {
    auto list = openssl_cipher_list(tls.cipher_suites, source);
    if (!list) return list.error();
    if (!list->empty() && SSL_CTX_set_cipher_list(c, list->c_str()) != 1) {
      ERR_clear_error();
      return make_error(Errc::invalid, source + ": tls_server_config.cipher_suites: rejected by OpenSSL");
    }
  }
  if (tls.prefer_server_cipher_suites) SSL_CTX_set_options(c, SSL_OP_CIPHER_SERVER_PREFERENCE);
  else SSL_CTX_clear_options(c, SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (!tls.groups.empty()) {
    std::string list;
    for (const auto& g : tls.groups) list += (list.empty() ? "" : ":") + g;
    if (SSL_CTX_set1_groups_list(c, list.c_str()) != 1) {
      ERR_clear_error();
      return make_error(Errc::invalid, source + ": tls_server_config.curve_preferences: rejected by OpenSSL");
    }
  }
  return ctx;
}

bool client_sans_allowed(ssl_st* s, const std::vector<std::string>& allowed) {
  if (allowed.empty()) return true;
  std::unique_ptr<X509, decltype(&X509_free)> cert(SSL_get1_peer_certificate(s), &X509_free);
  if (!cert) return false;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert.get(), NID_subject_alt_name, nullptr, nullptr));
  if (!names) return false;
  bool ok = false;
  for (int i = 0; i < sk_GENERAL_NAME_num(names) && !ok; ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names, i);
    std::string value;
    if (gn->type == GEN_DNS || gn->type == GEN_EMAIL || gn->type == GEN_URI) {
      const ASN1_IA5STRING* s5 = gn->d.ia5;
      value.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s5)),
                   static_cast<std::size_t>(ASN1_STRING_length(s5)));
    } else if (gn->type == GEN_IPADD) {
      const int len = ASN1_STRING_length(gn->d.iPAddress);
      char buf[INET6_ADDRSTRLEN] = {};
      if ((len == 4 || len == 16) &&
          inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(gn->d.iPAddress), buf, sizeof buf))
        value = buf;
    }
    if (value.empty()) continue;
    for (const auto& a : allowed) {
      if (a == value) ok = true;
      // An IPv6 SAN matches however the config spells the address.
      unsigned char bin[16];
      char norm[INET6_ADDRSTRLEN] = {};
      if (gn->type == GEN_IPADD && inet_pton(AF_INET6, a.c_str(), bin) == 1 &&
          inet_ntop(AF_INET6, bin, norm, sizeof norm) && value == norm)
        ok = true;
    }
  }
  GENERAL_NAMES_free(names);
  return ok;
}

}  // namespace memlens
