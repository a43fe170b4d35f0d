#include "collectors/postgres_parse.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "collectors/proc_parse.h"

namespace memlens::pg {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool starts_with_word(std::string_view s, std::string_view word) {
  return s.substr(0, word.size()) == word && (s.size() == word.size() || s[word.size()] == ' ');
}

// Titles of the processes PostgreSQL names after their type (the first
// words of the title; what follows is detail: a database, a PID, a WAL
// position).
struct KnownTitle {
  std::string_view words;
  BackendType type;
};
constexpr KnownTitle kTitles[] = {
    {"autovacuum launcher", BackendType::autovacuum_launcher},
    {"autovacuum worker", BackendType::autovacuum_worker},
    {"background writer", BackendType::background_writer},
    {"checkpointer", BackendType::checkpointer},
    {"walwriter", BackendType::walwriter},
    {"walsender", BackendType::walsender},
    {"walreceiver", BackendType::walreceiver},
    {"startup", BackendType::startup},
    {"archiver", BackendType::archiver},
    {"logger", BackendType::logger},
    {"logical replication launcher", BackendType::logical_replication_launcher},
    {"logical replication worker", BackendType::logical_replication_worker},
    {"logical replication apply worker", BackendType::logical_replication_worker},
    {"logical replication tablesync worker", BackendType::logical_replication_worker},
    {"parallel worker", BackendType::parallel_worker},
};

std::optional<BackendType> known_title(std::string_view rest) {
  for (const auto& k : kTitles)
    if (starts_with_word(rest, k.words)) return k.type;
  return std::nullopt;
}

// A client backend's title is "user [database] host activity", the host
// "[local]" for a unix socket or "address(port)" for TCP: that is what
// tells it from a background worker named by an extension.
bool looks_like_client(std::string_view rest) {
  int words = 0;
  while (!rest.empty() && words < 3) {
    const auto sp = rest.find(' ');
    const std::string_view w = rest.substr(0, sp);
    rest = sp == std::string_view::npos ? std::string_view{} : rest.substr(sp + 1);
    if (w.empty()) continue;
    ++words;
    if (words == 1) continue;  // the user
    if (w == "[local]") return true;
    const auto open = w.rfind('(');
    if (open != std::string_view::npos && open > 0 && w.back() == ')' && w.size() > open + 2) {
      const std::string_view port = w.substr(open + 1, w.size() - open - 2);
      if (std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) return true;
    }
  }
  return false;
}

}  // namespace

const char* backend_type_name(BackendType t) {
  switch (t) {
    case BackendType::postmaster: return "postmaster";
    case BackendType::client_backend: return "client backend";
    case BackendType::autovacuum_launcher: return "autovacuum launcher";
    case BackendType::autovacuum_worker: return "autovacuum worker";
    case BackendType::background_writer: return "background writer";
    case BackendType::checkpointer: return "checkpointer";
    case BackendType::walwriter: return "walwriter";
    case BackendType::walsender: return "walsender";
    case BackendType::walreceiver: return "walreceiver";
    case BackendType::startup: return "startup";
    case BackendType::archiver: return "archiver";
    case BackendType::logger: return "logger";
    case BackendType::logical_replication_launcher: return "logical replication launcher";
    case BackendType::logical_replication_worker: return "logical replication worker";
    case BackendType::parallel_worker: return "parallel worker";
    case BackendType::other:
    case BackendType::count_: break;
  }
  return "other";
}

BackendType classify_title(std::string_view cmdline, std::string_view cluster_name) {
  // The title is the first string; the rest of the old argv area is NULs.
  std::string_view title = trim(cmdline.substr(0, cmdline.find('\0')));
  constexpr std::string_view kPrefix = "postgres: ";
  // A child forked a moment ago still shows the postmaster's command line.
  if (title.substr(0, kPrefix.size()) != kPrefix) return BackendType::other;
  std::string_view rest = title.substr(kPrefix.size());
  if (!cluster_name.empty() && rest.substr(0, cluster_name.size()) == cluster_name &&
      rest.substr(cluster_name.size(), 2) == ": ")
    rest.remove_prefix(cluster_name.size() + 2);
  if (auto t = known_title(rest)) return *t;
  if (looks_like_client(rest)) return BackendType::client_backend;
  // "postgres: <cluster_name>: title" with a cluster name we were not told
  // (Debian sets cluster_name = '15/main').
  if (const auto colon = rest.find(": "); colon != std::string_view::npos) {
    const std::string_view after = rest.substr(colon + 2);
    if (auto t = known_title(after)) return *t;
    if (looks_like_client(after)) return BackendType::client_backend;
  }
  return BackendType::other;
}

std::vector<std::string> split_cmdline(std::string_view cmdline) {
  std::vector<std::string> argv;
  while (!cmdline.empty()) {
    const auto nul = cmdline.find('\0');
    argv.emplace_back(cmdline.substr(0, nul));
    if (nul == std::string_view::npos) break;
    cmdline.remove_prefix(nul + 1);
  }
  return argv;
}

namespace {

// "'value': why", the value cut at 64 bytes.
Error bad_value(std::string_view value, std::string_view why) {
  std::string msg;
  msg.reserve(72 + why.size());
  msg.append("'").append(value.substr(0, 64)).append("': ").append(why);
  return make_error(Errc::malformed, std::move(msg));
}

}  // namespace

Result<uint64_t> parse_block_setting(std::string_view value) {
  auto bad = [&](std::string_view why) { return bad_value(value, why); };
  const std::string text(trim(value));
  if (text.empty()) return bad("empty");
  if (text.size() > 64) return bad("too long");
  const char* s = text.c_str();
  char* end = nullptr;
  // An integer as strtol reads one with base 0 (0x hex, 0 octal); a
  // fraction or an exponent, or a value too large for that, as a double.
  errno = 0;
  double v = static_cast<double>(std::strtol(s, &end, 0));
  if (*end == '.' || *end == 'e' || *end == 'E' || errno == ERANGE) {
    errno = 0;
    v = std::strtod(s, &end);
  }
  if (end == s || errno == ERANGE || std::isnan(v)) return bad("not a number");
  std::string_view unit(end);
  unit = trim(unit);
  // Multipliers into blocks, largest unit first: a fraction is rounded to
  // the next smaller unit before it is rounded to whole blocks.
  constexpr double kBlockKb = static_cast<double>(kBlockSize) / 1024.0;
  struct Unit {
    std::string_view name;
    double blocks;
  };
  constexpr Unit kUnits[] = {{"TB", 1024.0 * 1024.0 * 1024.0 / kBlockKb},
                             {"GB", 1024.0 * 1024.0 / kBlockKb},
                             {"MB", 1024.0 / kBlockKb},
                             {"kB", 1.0 / kBlockKb},
                             {"B", 1.0 / static_cast<double>(kBlockSize)}};
  if (!unit.empty()) {
    const auto* u = std::find_if(std::begin(kUnits), std::end(kUnits), [&](const Unit& x) { return x.name == unit; });
    if (u == std::end(kUnits)) return bad("unit must be B, kB, MB, GB or TB");
    v *= u->blocks;
    if (u + 1 != std::end(kUnits)) v = std::rint(v / (u + 1)->blocks) * (u + 1)->blocks;
  }
  v = std::rint(v);
  if (v < 0) return bad("negative");
  if (v > 2147483647.0) return bad("out of range");
  return static_cast<uint64_t>(v) * kBlockSize;
}

Result<uint64_t> parse_shared_buffers(std::string_view value) {
  auto bytes = parse_block_setting(value);
  if (!bytes) return bytes;
  const uint64_t blocks = *bytes / kBlockSize;
  if (blocks < 16 || blocks > 1073741823)
    return bad_value(value, std::to_string(blocks) + " blocks is outside 16 .. 1073741823");
  return bytes;
}

namespace {

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
         static_cast<unsigned char>(c) >= 0x80;
}

bool digit(char c) { return c >= '0' && c <= '9'; }
bool letter(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || static_cast<unsigned char>(c) >= 0x80;
}

// Whether an unquoted value is one token of PostgreSQL's configuration
// lexer: an integer with unit letters (128MB, 0x100, -1), a real without
// them (0.5, 1.5e3), or a word (on, posix, en_US.UTF-8). "0.5GB" is a
// real followed by another token, a syntax error: such values need quotes.
bool bare_token(std::string_view v) {
  if (v.empty()) return false;
  if (letter(v[0]))
    return std::all_of(v.begin(), v.end(), [](char c) {
      return letter(c) || digit(c) || c == '-' || c == '.' || c == ':' || c == '/';
    });
  std::size_t i = (v[0] == '+' || v[0] == '-') ? 1 : 0;
  auto skip = [&](auto is) {
    const std::size_t b = i;
    while (i < v.size() && is(v[i])) ++i;
    return i - b;
  };
  auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (v.substr(i, 2) == "0x") {
    i += 2;
    if (skip([](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }) == 0) return false;
    skip(alpha);
    return i == v.size();
  }
  const std::size_t whole = skip(digit);
  if (i < v.size() && v[i] == '.') {
    ++i;
    skip(digit);
    if (i < v.size() && (v[i] == 'e' || v[i] == 'E')) {
      ++i;
      if (i < v.size() && (v[i] == '+' || v[i] == '-')) ++i;
      if (skip(digit) == 0) return false;
    }
    return i == v.size();
  }
  if (whole == 0) return false;
  skip(alpha);
  return i == v.size();
}

// A single-quoted value from just after the opening quote; '' and \' are
// quotes, \b \f \n \r \t and \ooo what they are in C, any other \x is x.
std::optional<std::string> quoted(std::string_view& s) {
  std::string out;
  std::size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (c == '\'') {
      if (i + 1 < s.size() && s[i + 1] == '\'') {
        out += '\'';
        i += 2;
        continue;
      }
      s.remove_prefix(i + 1);
      return out;
    }
    if (c == '\\' && i + 1 < s.size()) {
      const char e = s[i + 1];
      i += 2;
      switch (e) {
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        default:
          if (e >= '0' && e <= '7') {
            int v = e - '0';
            for (int k = 0; k < 2 && i < s.size() && s[i] >= '0' && s[i] <= '7'; ++k, ++i) v = v * 8 + (s[i] - '0');
            out += static_cast<char>(v & 0xff);
          } else {
            out += e;
          }
      }
      continue;
    }
    out += c;
    ++i;
  }
  return std::nullopt;  // no closing quote on the line
}

}  // namespace

ConfFile parse_conf(std::string_view text) {
  ConfFile f;
  int lineno = 0;
  while (!text.empty()) {
    const auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    ++lineno;
    auto error = [&](const std::string& why) { f.errors.push_back("line " + std::to_string(lineno) + ": " + why); };
    line = trim(line);
    if (line.empty() || line.front() == '#') continue;
    std::size_t i = 0;
    while (i < line.size() && name_char(line[i])) ++i;
    if (i == 0 || (line[0] >= '0' && line[0] <= '9')) {
      error("expected a parameter name");
      continue;
    }
    ConfEntry e{lower(line.substr(0, i)), {}, lineno};
    std::string_view rest = trim(line.substr(i));
    if (!rest.empty() && rest.front() == '=') rest = trim(rest.substr(1));
    if (rest.empty() || rest.front() == '#') {
      error("'" + e.name + "' has no value");
      continue;
    }
    if (rest.front() == '\'') {
      rest.remove_prefix(1);
      auto v = quoted(rest);
      if (!v) {
        error("unterminated quoted value of '" + e.name + "'");
        continue;
      }
      e.value = std::move(*v);
    } else {
      std::size_t j = 0;
      while (j < rest.size() && !is_space(rest[j]) && rest[j] != '#' && rest[j] != '\'') ++j;
      e.value = std::string(rest.substr(0, j));
      rest.remove_prefix(j);
      if (!bare_token(e.value)) {
        std::string why = "the value of '";
        why.append(e.name).append("' must be quoted: ").append(e.value.substr(0, 32));
        error(why);
        continue;
      }
    }
    // One value a line: "128 MB" is a syntax error to PostgreSQL too.
    rest = trim(rest);
    if (!rest.empty() && rest.front() != '#') {
      error("unexpected '" + std::string(rest.substr(0, 32)) + "' after the value of '" + e.name + "'");
      continue;
    }
    f.entries.push_back(std::move(e));
  }
  return f;
}

std::optional<std::string> PostmasterArgs::option(std::string_view name) const {
  for (auto it = options.rbegin(); it != options.rend(); ++it)
    if (it->first == name) return it->second;
  return std::nullopt;
}

PostmasterArgs parse_postmaster_args(const std::vector<std::string>& argv) {
  PostmasterArgs a;
  // "name=value" as -c and --name=value give it: dashes in the name are
  // underscores, case does not matter.
  auto add_option = [&](std::string_view nv) {
    const auto eq = nv.find('=');
    if (eq == std::string_view::npos || eq == 0) return;
    std::string name = lower(nv.substr(0, eq));
    std::replace(name.begin(), name.end(), '-', '_');
    a.options.emplace_back(std::move(name), std::string(nv.substr(eq + 1)));
  };
  // The postmaster's single-letter options that take a value (its getopt
  // string): their values are skipped, never read as options.
  constexpr std::string_view kWithValue = "BCcDdfhkNprStW";
  for (std::size_t i = 1; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg.size() > 2 && arg.compare(0, 2, "--") == 0) {
      add_option(std::string_view(arg).substr(2));
      continue;
    }
    if (arg.size() < 2 || arg[0] != '-') continue;
    const char opt = arg[1];
    if (kWithValue.find(opt) == std::string_view::npos) continue;
    std::string value;
    if (arg.size() > 2) value = arg.substr(2);
    else if (i + 1 < argv.size()) value = argv[++i];
    else break;
    if (opt == 'D') a.data_dir = value;
    else if (opt == 'c') add_option(value);
    else if (opt == 'B') a.options.emplace_back("shared_buffers", value);
  }
  return a;
}

std::optional<std::string> Settings::get(std::string_view name) const {
  auto it = values.find(std::string(name));
  if (it == values.end()) return std::nullopt;
  return it->second.value;
}

namespace {

std::string dir_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string join(const std::string& dir, const std::string& rel) {
  if (!rel.empty() && rel.front() == '/') return rel;
  return dir + (dir.empty() || dir.back() == '/' ? "" : "/") + rel;
}

// PostgreSQL stops at this depth of nested includes. It has no bound on
// how many files that reaches (ten lines including the file itself, ten
// deep, are 10^10 reads); memlensd stops at this many.
constexpr int kMaxIncludeDepth = 10;
constexpr int kMaxFiles = 256;
constexpr std::size_t kMaxErrors = 64;

class Resolver {
 public:
  Resolver(const ConfFs& fs, Settings& out) : fs_(fs), out_(out) {}

  // `missing_ok`: include_if_exists, and postgresql.auto.conf.
  // Reads and applies one file; false when it cannot be read.
  bool file(const std::string& path, int depth, bool missing_ok) {
    if (depth > kMaxIncludeDepth) {
      say(path + ": includes nested more than " + std::to_string(kMaxIncludeDepth) + " deep");
      return false;
    }
    if (++files_ > kMaxFiles) {
      if (files_ == kMaxFiles + 1) say(path + ": more than 256 configuration files");
      return false;
    }
    auto text = fs_.read(path);
    if (!text) {
      if (!(missing_ok && text.error().code == Errc::not_found)) say(text.error().message);
      if (depth == 0) out_.config_errc = text.error().code;
      return false;
    }
    const ConfFile f = parse_conf(*text);
    for (const auto& e : f.errors) say(path + ": " + e);
    const std::string dir = dir_of(path);
    for (const auto& e : f.entries) {
      if (e.name == "include") file(join(dir, e.value), depth + 1, false);
      else if (e.name == "include_if_exists") file(join(dir, e.value), depth + 1, true);
      else if (e.name == "include_dir") directory(join(dir, e.value), depth + 1);
      else out_.values[e.name] = Setting{e.value, path + ":" + std::to_string(e.line)};
    }
    return true;
  }

 private:
  // Errors are kept up to a bound (a file of malformed lines, included
  // many times, must not cost memory in proportion); the rest are counted.
  void say(std::string e) {
    if (out_.errors.size() < kMaxErrors) out_.errors.push_back(std::move(e));
    else ++out_.errors_dropped;
  }

  // Every *.conf file of the directory not starting with '.', in byte
  // order of their names, as PostgreSQL reads them.
  void directory(const std::string& dir, int depth) {
    auto names = fs_.list(dir);
    if (!names) {
      say(dir + ": " + names.error().message);
      return;
    }
    std::vector<std::string> confs;
    for (const auto& n : *names)
      if (n.size() > 5 && n.front() != '.' && n.compare(n.size() - 5, 5, ".conf") == 0) confs.push_back(n);
    std::sort(confs.begin(), confs.end());
    for (const auto& n : confs) file(join(dir, n), depth, false);
  }

  const ConfFs& fs_;
  Settings& out_;
  int files_ = 0;
};

}  // namespace

Settings resolve_settings(const ConfFs& fs, const std::string& data_dir, const PostmasterArgs& args) {
  Settings s;
  // -D names the configuration directory, which is the data directory
  // unless its postgresql.conf says data_directory = elsewhere; a relative
  // -D or config_file was relative to where the server was started, which
  // we cannot know: the data directory stands in for it.
  const std::string conf_dir = args.data_dir && !args.data_dir->empty() && args.data_dir->front() == '/'
                                   ? *args.data_dir
                                   : data_dir;
  if (auto cf = args.option("config_file")) s.config_file = join(data_dir, *cf);
  else s.config_file = join(conf_dir, "postgresql.conf");
  Resolver r(fs, s);
  s.config_read = r.file(s.config_file, 0, false);
  // ALTER SYSTEM's file, read after the main one, in the data directory
  // (with a file budget of its own: it wins whatever the main one did).
  Resolver(fs, s).file(join(data_dir, "postgresql.auto.conf"), 0, true);
  for (const auto& [name, value] : args.options) s.values[name] = Setting{value, "command line"};
  return s;
}

std::optional<SharedSegment> find_shared_segment(std::string_view t) {
  // Plain values while scanning (the path is copied once, at the end).
  struct Candidate {
    uint64_t start = 0, end = 0, rss = 0, swap = 0;
    std::string_view path;
  };
  Candidate best, cur;
  bool have_best = false, in_cur = false;
  auto close = [&] {
    if (in_cur && (!have_best || cur.end - cur.start > best.end - best.start)) {
      best = cur;
      have_best = true;
    }
    in_cur = false;
  };
  while (!t.empty()) {
    const auto nl = t.find('\n');
    const std::string_view line = t.substr(0, nl);
    t = nl == std::string_view::npos ? std::string_view{} : t.substr(nl + 1);
    if (line.empty()) continue;
    const bool header = (line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f');
    if (header) {
      close();
      auto maps = parse_maps(line);
      if (maps.size() != 1) continue;
      const Mapping& mp = maps[0];
      const bool shared_rw = mp.perms.size() == 4 && mp.perms[1] == 'w' && mp.perms[3] == 's';
      const std::string_view path = line.substr(line.size() - std::min(line.size(), mp.path.size()));
      const bool main_kind = path == "/dev/zero (deleted)" || path == "/anon_hugepage (deleted)" ||
                             path.substr(0, 5) == "/SYSV";
      if (shared_rw && main_kind && mp.end > mp.start) {
        cur = Candidate{mp.start, mp.end, 0, 0, path};
        in_cur = true;
      }
      continue;
    }
    if (!in_cur) continue;
    if (line.substr(0, 4) == "Rss:") cur.rss = parse_u64(line.substr(4)).value_or(0) * 1024;
    else if (line.substr(0, 5) == "Swap:") cur.swap = parse_u64(line.substr(5)).value_or(0) * 1024;
  }
  close();
  if (!have_best) return std::nullopt;
  SharedSegment seg;
  seg.start = best.start;
  seg.end = best.end;
  seg.path = std::string(best.path);
  seg.rss = best.rss;
  seg.swap = best.swap;
  return seg;
}

}  // namespace memlens::pg
