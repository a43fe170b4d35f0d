#include "daemon/config.h"

#include <algorithm>
#include <re2/re2.h>
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <set>
#include <sstream>

namespace memlens {

extern const char* const kDefaultConfigYaml;

const char* alloc_mode_name(AllocMode m) {
  switch (m) {
    case AllocMode::off: return "off";
    case AllocMode::full: return "full";
    case AllocMode::duty: return "duty";
    case AllocMode::on_leak: return "on-leak";
  }
  return "off";
}

namespace {

// A plain decimal number: digits, at most one '.', digits after it. What
// stod would also take ("1.2.3" as 1.2, "1e3", "inf", " 5") is refused.
std::optional<double> parse_decimal(std::string_view s) {
  std::size_t i = 0, digits = 0, dots = 0;
  for (; i < s.size(); ++i) {
    if (s[i] >= '0' && s[i] <= '9') ++digits;
    else if (s[i] == '.' && dots == 0 && digits > 0) ++dots;
    else return std::nullopt;
  }
  if (digits == 0 || s.back() == '.' || s.size() > 32) return std::nullopt;
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::size_t number_prefix(std::string_view s) {
  std::size_t j = 0;
  while (j < s.size() && ((s[j] >= '0' && s[j] <= '9') || s[j] == '.')) ++j;
  return j;
}

}  // namespace

std::optional<Duration> parse_duration(const std::string& text) {
  // A sequence of <number><unit>, e.g. "1h30m", as Prometheus writes them;
  // the total must be a whole number of milliseconds (the resolution of
  // every interval here), at least 1 ms.
  std::string_view s = text;
  if (s.empty()) return std::nullopt;
  double total_ms = 0;
  while (!s.empty()) {
    const std::size_t j = number_prefix(s);
    auto n = parse_decimal(s.substr(0, j));
    if (!n) return std::nullopt;
    std::size_t k = j;
    while (k < s.size() && std::isalpha(static_cast<unsigned char>(s[k]))) ++k;
    const std::string_view unit = s.substr(j, k - j);
    double mul = 0;
    if (unit == "ms") mul = 1;
    else if (unit == "s") mul = 1000;
    else if (unit == "m") mul = 60'000;
    else if (unit == "h") mul = 3'600'000;
    else if (unit == "d") mul = 86'400'000;
    else return std::nullopt;
    total_ms += *n * mul;
    s.remove_prefix(k);
  }
  if (total_ms < 1 || total_ms > 1e12) return std::nullopt;
  const double whole = std::round(total_ms);
  if (std::fabs(total_ms - whole) > 1e-6 * std::max(1.0, whole)) return std::nullopt;
  return Duration(static_cast<int64_t>(whole));
}

std::optional<uint64_t> parse_bytes(const std::string& text) {
  std::string_view s = text;
  const std::size_t j = number_prefix(s);
  auto n = parse_decimal(s.substr(0, j));
  if (!n) return std::nullopt;
  std::string_view unit = s.substr(j);
  while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  double mul = 0;
  if (unit.empty() || unit == "B") mul = 1;
  else if (unit == "KiB") mul = 1024.0;
  else if (unit == "MiB") mul = 1024.0 * 1024;
  else if (unit == "GiB") mul = 1024.0 * 1024 * 1024;
  else if (unit == "TiB") mul = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "KB" || unit == "kB") mul = 1e3;
  else if (unit == "MB") mul = 1e6;
  else if (unit == "GB") mul = 1e9;
  else if (unit == "TB") mul = 1e12;
  else return std::nullopt;
  const double v = *n * mul;
  // Whole bytes only, and within what a uint64 holds exactly enough.
  if (v > 9.0e18 || std::fabs(v - std::round(v)) > 1e-6 * std::max(1.0, v)) return std::nullopt;
  return static_cast<uint64_t>(std::llround(v));
}

std::optional<double> parse_budget(BudgetUnit unit, const std::string& text) {
  std::string_view s = text;
  switch (unit) {
    case BudgetUnit::bytes: {
      auto b = parse_bytes(text);
      if (!b) return std::nullopt;
      return static_cast<double>(*b);
    }
    case BudgetUnit::bytes_per_second: {
      // "1MB/s", "10KiB/s"; a plain number is bytes per second. A size
      // without "/s" is refused: a rate written as a size is likely a slip.
      if (s.size() > 2 && s.substr(s.size() - 2) == "/s") s.remove_suffix(2);
      else if (number_prefix(s) != s.size()) return std::nullopt;
      auto b = parse_bytes(std::string(s));
      if (!b) return std::nullopt;
      return static_cast<double>(*b);
    }
    case BudgetUnit::seconds: {
      auto d = parse_duration(text);
      if (!d) return std::nullopt;
      return std::chrono::duration<double>(*d).count();
    }
    case BudgetUnit::ratio: {
      const bool percent = !s.empty() && s.back() == '%';
      if (percent) s.remove_suffix(1);
      auto v = parse_decimal(s);
      if (!v) return std::nullopt;
      if (percent) *v /= 100;
      if (*v > 1) return std::nullopt;
      return *v;
    }
  }
  return std::nullopt;
}

std::string Selector::describe() const {
  std::ostringstream o;
  const char* sep = "";
  auto add = [&](const char* k, const std::string& v) {
    o << sep << k << "=" << v;
    sep = ",";
  };
  if (self) add("self", "true");
  if (pid) add("pid", std::to_string(*pid));
  if (comm) add("comm", *comm);
  if (exe) add("exe", *exe);
  if (cmdline) add("cmdline", *cmdline);
  if (cgroup) add("cgroup", *cgroup);
  if (systemd_unit) add("systemd_unit", *systemd_unit);
  if (top_rss) add("top_rss", std::to_string(*top_rss));
  return o.str();
}

namespace {

// Carries the file name so every message reads "file:line:col: field: why".
class Parser {
 public:
  explicit Parser(std::string source) : source_(std::move(source)) {}

  Error err(const YAML::Node& n, const std::string& field, const std::string& why) const {
    std::ostringstream o;
    o << source_;
    if (n.IsDefined() && n.Mark().line >= 0)
      o << ":" << n.Mark().line + 1 << ":" << n.Mark().column + 1;
    o << ": " << field << ": " << why;
    return make_error(Errc::invalid, o.str());
  }

  Result<std::string> str(const YAML::Node& n, const std::string& field) const {
    if (!n.IsScalar()) return err(n, field, "expected a string");
    return n.Scalar();
  }

  Result<Duration> duration(const YAML::Node& n, const std::string& field) const {
    if (!n.IsScalar()) return err(n, field, "expected a duration such as 1s, 500ms, 5m");
    auto d = parse_duration(n.Scalar());
    if (!d) return err(n, field, "invalid duration '" + n.Scalar() + "' (use e.g. 1s, 500ms, 5m, 1h)");
    return *d;
  }

  Result<int64_t> integer(const YAML::Node& n, const std::string& field, int64_t lo, int64_t hi) const {
    if (!n.IsScalar()) return err(n, field, "expected an integer");
    const std::string& s = n.Scalar();
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno != 0)
      return err(n, field, "expected an integer, got '" + s + "'");
    if (v < lo || v > hi)
      return err(n, field, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
    return static_cast<int64_t>(v);
  }

  Result<double> number(const YAML::Node& n, const std::string& field, double lo, double hi) const {
    if (!n.IsScalar()) return err(n, field, "expected a number");
    const std::string& s = n.Scalar();
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || !std::isfinite(v))
      return err(n, field, "expected a number, got '" + s + "'");
    if (v < lo || v > hi) {
      std::ostringstream o;
      o << "must be between " << lo << " and " << hi;
      return err(n, field, o.str());
    }
    return v;
  }

  Result<uint64_t> bytes(const YAML::Node& n, const std::string& field) const {
    if (!n.IsScalar()) return err(n, field, "expected a size such as 4096 or 10KiB");
    auto b = parse_bytes(n.Scalar());
    if (!b) return err(n, field, "invalid size '" + n.Scalar() + "' (use e.g. 4096, 64KiB, 1MiB)");
    return *b;
  }

  // `expected` names what the field takes, for a field that takes a word
  // besides the booleans (the caller checks for it first).
  Result<bool> boolean(const YAML::Node& n, const std::string& field,
                       std::string_view expected = "true or false") const {
    if (!n.IsScalar()) return err(n, field, "expected " + std::string(expected));
    const std::string& s = n.Scalar();
    if (s == "true" || s == "yes" || s == "on") return true;
    if (s == "false" || s == "no" || s == "off") return false;
    return err(n, field, "expected " + std::string(expected) + ", got '" + s + "'");
  }

  Result<std::shared_ptr<const re2::RE2>> regex(const YAML::Node& n, const std::string& field) const {
    auto s = str(n, field);
    if (!s) return s.error();
    if (s->size() > kMaxRegexBytes)
      return err(n, field, "regular expression longer than " + std::to_string(kMaxRegexBytes) + " bytes");
    RE2::Options o;
    o.set_log_errors(false);
    o.set_max_mem(8 << 20);  // RE2 refuses a program larger than this rather than grow
    auto re = std::make_shared<const re2::RE2>(*s, o);
    if (!re->ok())
      return err(n, field, "invalid regular expression '" + s->substr(0, 200) + "': " + re->error().substr(0, 200));
    return re;
  }

  // Rejects keys outside `known`, so a typo is an error, not a silent default.
  Result<void> known_keys(const YAML::Node& map, const std::string& where,
                          const std::set<std::string>& known) const {
    if (!map.IsMap()) return err(map, where, "expected a mapping");
    for (const auto& kv : map) {
      if (!kv.first.IsScalar()) return err(kv.first, where, "a key must be a plain string");
      const std::string k = kv.first.Scalar();
      if (!known.count(k)) {
        std::string list;
        for (const auto& s : known) list += (list.empty() ? "" : ", ") + s;
        return err(kv.first, where.empty() ? k : where + "." + k,
                   "unknown field (known: " + list + ")");
      }
    }
    return {};
  }

  Result<void> parse_global(const YAML::Node& g, Config& c) const {
    if (auto r = known_keys(g, "global", {"tick_interval", "rescan_interval", "timeline_window",
                                          "leak_window", "breach_window", "smaps_interval", "max_targets",
                                          "path_procfs", "kubernetes_labels", "path_run"});
        !r)
      return r;
    if (g["tick_interval"]) {
      auto d = duration(g["tick_interval"], "global.tick_interval");
      if (!d) return d.error();
      if (d->count() < 100) return err(g["tick_interval"], "global.tick_interval", "must be at least 100ms");
      c.tick_interval = *d;
    }
    if (g["rescan_interval"]) {
      auto d = duration(g["rescan_interval"], "global.rescan_interval");
      if (!d) return d.error();
      c.rescan_interval = *d;
    }
    if (g["timeline_window"]) {
      auto d = duration(g["timeline_window"], "global.timeline_window");
      if (!d) return d.error();
      c.timeline_window = *d;
    }
    if (g["leak_window"]) {
      auto d = duration(g["leak_window"], "global.leak_window");
      if (!d) return d.error();
      c.leak_window = *d;
    }
    if (g["breach_window"]) {
      auto d = duration(g["breach_window"], "global.breach_window");
      if (!d) return d.error();
      c.breach_window = *d;
    }
    if (g["smaps_interval"]) {
      auto d = duration(g["smaps_interval"], "global.smaps_interval");
      if (!d) return d.error();
      c.smaps_interval = *d;
    }
    if (g["max_targets"]) {
      auto v = integer(g["max_targets"], "global.max_targets", 1, 100000);
      if (!v) return v.error();
      c.max_targets = static_cast<int>(*v);
    }
    if (g["path_procfs"]) {
      auto s = str(g["path_procfs"], "global.path_procfs");
      if (!s) return s.error();
      c.procfs = *s;
    }
    if (g["kubernetes_labels"]) {
      auto v = boolean(g["kubernetes_labels"], "global.kubernetes_labels");
      if (!v) return v.error();
      c.kubernetes_labels = *v;
    }
    if (g["path_run"]) {
      auto s = str(g["path_run"], "global.path_run");
      if (!s) return s.error();
      if (s->empty() || s->front() != '/') return err(g["path_run"], "global.path_run", "must be an absolute path");
      c.run = *s;
    }
    if (c.timeline_window < c.tick_interval * 2)
      return err(g, "global.timeline_window", "must hold at least two ticks");
    if (c.leak_window > c.timeline_window)
      return err(g["leak_window"] ? g["leak_window"] : g, "global.leak_window",
                 "must not be longer than timeline_window");
    if (c.leak_window < c.tick_interval * 4)
      return err(g["leak_window"] ? g["leak_window"] : g, "global.leak_window",
                 "must span at least 4 ticks");
    // Unset, it follows the windows it lives in: 10 minutes, but never more
    // than the timeline holds nor less than the leak window.
    if (!g["breach_window"]) c.breach_window = std::clamp(c.breach_window, c.leak_window, c.timeline_window);
    if (c.breach_window > c.timeline_window)
      return err(g["breach_window"] ? g["breach_window"] : g, "global.breach_window",
                 "must not be longer than timeline_window");
    if (c.breach_window < c.tick_interval * 4)
      return err(g["breach_window"] ? g["breach_window"] : g, "global.breach_window",
                 "must span at least 4 ticks");
    // Timelines are reserved up front for every target: say so here rather
    // than fail to allocate at start.
    const double bytes = static_cast<double>(c.timeline_points()) * static_cast<double>(kTimelineBytesPerPoint) *
                         static_cast<double>(c.max_targets);
    if (bytes > static_cast<double>(kMaxTimelineBytes)) {
      std::ostringstream o;
      o << "timeline_window / tick_interval x max_targets would reserve " << std::fixed << std::setprecision(1)
        << bytes / (1 << 20) << " MiB of timelines (" << c.timeline_points() << " points x "
        << kTimelineBytesPerPoint << " B x " << c.max_targets << " targets); the most is "
        << (kMaxTimelineBytes >> 20) << " MiB: shorten the window, lengthen the tick or lower max_targets";
      return err(g["timeline_window"] ? g["timeline_window"] : g, "global.timeline_window", o.str());
    }
    return {};
  }

  Result<void> parse_bpf(const YAML::Node& b, Config& c) const {
    if (auto r = known_keys(b, "bpf", {"max_targets", "max_tracked_allocs", "max_stacks", "ringbuf_bytes",
                                       "syscalls", "max_sampled_blocks"});
        !r)
      return r;
    if (b["syscalls"]) {
      auto v = boolean(b["syscalls"], "bpf.syscalls");
      if (!v) return v.error();
      c.bpf.syscalls = *v;
    }
    auto u32 = [&](const char* key, uint32_t& out, int64_t lo, int64_t hi) -> Result<void> {
      if (!b[key]) return {};
      auto v = integer(b[key], std::string("bpf.") + key, lo, hi);
      if (!v) return v.error();
      out = static_cast<uint32_t>(*v);
      return {};
    };
    if (auto r = u32("max_targets", c.bpf.max_targets, 1, 1 << 20); !r) return r;
    if (auto r = u32("max_tracked_allocs", c.bpf.max_tracked_allocs, 1, 1 << 26); !r) return r;
    if (auto r = u32("max_stacks", c.bpf.max_stacks, 1, 1 << 22); !r) return r;
    if (auto r = u32("max_sampled_blocks", c.bpf.max_sampled_blocks, 1, 1 << 24); !r) return r;
    if (b["ringbuf_bytes"]) {
      auto v = bytes(b["ringbuf_bytes"], "bpf.ringbuf_bytes");
      if (!v) return v.error();
      // The kernel wants a power of two, at least one page.
      if (*v < 4096 || *v > (1u << 30) || (*v & (*v - 1)) != 0)
        return err(b["ringbuf_bytes"], "bpf.ringbuf_bytes", "must be a power of two between 4KiB and 1GiB");
      c.bpf.ringbuf_bytes = static_cast<uint32_t>(*v);
    }
    return {};
  }

  Result<TargetPolicy> parse_target(const YAML::Node& t, std::size_t idx) const {
    const std::string where = "targets[" + std::to_string(idx) + "]";
    if (auto r = known_keys(t, where,
                            {"name", "pid", "self", "comm", "exe", "cmdline", "cgroup", "systemd_unit",
                             "top_rss", "max_targets", "alloc", "gc", "heap", "sampler", "budgets", "postgres",
                             "children", "files"});
        !r)
      return r.error();
    TargetPolicy p;
    if (!t["name"]) return err(t, where + ".name", "is required");
    auto name = str(t["name"], where + ".name");
    if (!name) return name.error();
    if (name->empty()) return err(t["name"], where + ".name", "must not be empty");
    p.name = *name;
    if (t["files"]) {
      if (auto r = parse_files_target(t, where, p); !r) return r.error();
      return p;
    }
    Selector& s = p.selector;
    if (t["pid"]) {
      auto v = integer(t["pid"], where + ".pid", 1, 1 << 22);
      if (!v) return v.error();
      s.pid = static_cast<pid_t>(*v);
    }
    if (t["self"]) {
      auto v = boolean(t["self"], where + ".self");
      if (!v) return v.error();
      s.self = *v;
    }
    auto re_field = [&](const char* key, std::optional<std::string>& text,
                        std::shared_ptr<const re2::RE2>& re) -> Result<void> {
      if (!t[key]) return {};
      auto r = regex(t[key], where + "." + key);
      if (!r) return r.error();
      text = t[key].Scalar();
      re = *r;
      return {};
    };
    if (auto r = re_field("comm", s.comm, s.comm_re); !r) return r.error();
    if (auto r = re_field("exe", s.exe, s.exe_re); !r) return r.error();
    if (auto r = re_field("cmdline", s.cmdline, s.cmdline_re); !r) return r.error();
    if (t["cgroup"]) {
      auto v = str(t["cgroup"], where + ".cgroup");
      if (!v) return v.error();
      s.cgroup = *v;
    }
    if (t["systemd_unit"]) {
      auto v = str(t["systemd_unit"], where + ".systemd_unit");
      if (!v) return v.error();
      s.systemd_unit = *v;
    }
    if (t["top_rss"]) {
      auto v = integer(t["top_rss"], where + ".top_rss", 1, 10000);
      if (!v) return v.error();
      s.top_rss = static_cast<int>(*v);
    }
    if (!s.self && !s.pid && !s.comm && !s.exe && !s.cmdline && !s.cgroup && !s.systemd_unit && !s.top_rss)
      return err(t, where, "needs a selector: one of pid, self, comm, exe, cmdline, cgroup, systemd_unit, top_rss");
    if (t["max_targets"]) {
      auto v = integer(t["max_targets"], where + ".max_targets", 1, 100000);
      if (!v) return v.error();
      p.max_targets = static_cast<int>(*v);
    }
    if (t["alloc"]) {
      if (auto r = parse_alloc(t["alloc"], where + ".alloc", p); !r) return r.error();
    }
    if (t["gc"]) {
      auto v = boolean(t["gc"], where + ".gc");
      if (!v) return v.error();
      p.gc = *v;
    }
    if (t["heap"]) {
      auto v = boolean(t["heap"], where + ".heap");
      if (!v) return v.error();
      p.heap = *v;
    }
    if (t["sampler"]) {
      // true (the default), false, or `probes`: libmemlens-sampler.so's
      // sites are read through its otel_memory probes, as any consumer of
      // the contract would, instead of from its page.
      if (t["sampler"].IsScalar() && t["sampler"].Scalar() == "probes") {
        p.sampler = p.sampler_probes = true;
      } else {
        auto v = boolean(t["sampler"], where + ".sampler", "true, false or probes");
        if (!v) return v.error();
        p.sampler = *v;
      }
    }
    if (t["children"]) {
      auto v = boolean(t["children"], where + ".children");
      if (!v) return v.error();
      p.children = *v;
    }
    if (t["budgets"]) {
      if (auto r = parse_budgets(t["budgets"], where + ".budgets", p); !r) return r.error();
    }
    if (t["postgres"]) {
      auto v = boolean(t["postgres"], where + ".postgres");
      if (!v) return v.error();
      p.postgres = *v;
    }
    return p;
  }

  // A files target: name, files and budgets (only `bundle`); a process
  // selector or a process's options beside `files` is an error, not ignored.
  Result<void> parse_files_target(const YAML::Node& t, const std::string& where, TargetPolicy& p) const {
    for (const auto& kv : t) {
      const std::string k = kv.first.Scalar();
      if (k != "name" && k != "files" && k != "budgets")
        return err(kv.first, where + "." + k,
                   "not allowed with files: a files target watches build artefacts, not a process "
                   "(it takes name, files and budgets)");
    }
    const YAML::Node f = t["files"];
    const std::string fw = where + ".files";
    if (auto r = known_keys(f, fw, {"paths", "entry", "max_files"}); !r) return r;
    FilesSpec spec;
    if (!f["paths"]) return err(f, fw + ".paths", "is required: glob patterns of the files to watch");
    if (auto r = patterns(f["paths"], fw + ".paths", spec.paths); !r) return r;
    if (spec.paths.empty()) return err(f["paths"], fw + ".paths", "needs at least one pattern");
    if (f["entry"]) {
      if (auto r = patterns(f["entry"], fw + ".entry", spec.entry); !r) return r;
    }
    if (f["max_files"]) {
      auto v = integer(f["max_files"], fw + ".max_files", 1, kMaxFilesPerTarget);
      if (!v) return v.error();
      spec.max_files = static_cast<int>(*v);
    }
    p.files = std::move(spec);
    if (t["budgets"]) {
      if (auto r = parse_budgets(t["budgets"], where + ".budgets", p); !r) return r;
    }
    return {};
  }

  // A list of absolute glob patterns (one string is a list of one).
  Result<void> patterns(const YAML::Node& n, const std::string& field, std::vector<std::string>& out) const {
    if (n.IsScalar()) return pattern(n, field, out);
    if (!n.IsSequence()) return err(n, field, "expected a list of glob patterns such as [\"/srv/web/dist/**/*.js\"]");
    if (n.size() > kMaxFilePatterns)
      return err(n, field, "more than " + std::to_string(kMaxFilePatterns) + " patterns");
    for (std::size_t i = 0; i < n.size(); ++i)
      if (auto r = pattern(n[i], field + "[" + std::to_string(i) + "]", out); !r) return r;
    return {};
  }

  Result<void> pattern(const YAML::Node& n, const std::string& field, std::vector<std::string>& out) const {
    auto s = str(n, field);
    if (!s) return s.error();
    if (s->empty() || s->front() != '/') return err(n, field, "must be an absolute path pattern");
    if (s->size() > kMaxRegexBytes)
      return err(n, field, "pattern longer than " + std::to_string(kMaxRegexBytes) + " bytes");
    if (s->find('\0') != std::string::npos) return err(n, field, "must not contain a NUL byte");
    int globstars = 0;
    std::size_t i = 1;
    while (i <= s->size()) {
      std::size_t j = s->find('/', i);
      if (j == std::string::npos) j = s->size();
      const std::string_view c(s->data() + i, j - i);
      if (c == "." || c == "..") return err(n, field, "must not contain . or .. components");
      if (c == "**") ++globstars;
      else if (c.find("**") != std::string_view::npos)
        return err(n, field, "** must be a whole path component (as in /dist/**/*.js)");
      if (c.empty() && j < s->size()) return err(n, field, "must not contain an empty component (//)");
      i = j + 1;
    }
    if (globstars > 1) return err(n, field, "at most one ** per pattern");
    if (s->back() == '/' || s->ends_with("/**"))
      return err(n, field, "must name files, not a directory (end it with e.g. /*.js)");
    out.push_back(*s);
    return {};
  }

  Result<void> parse_budgets(const YAML::Node& b, const std::string& where, TargetPolicy& p) const {
    std::set<std::string> known;
    for (const auto& k : kBudgetKeys)
      if (!p.files || std::string_view(k.name) == "bundle") known.insert(k.name);
    if (auto r = known_keys(b, where, known); !r) return r;
    for (const auto& k : kBudgetKeys) {
      const YAML::Node n = b[k.name];
      const std::string field = where + "." + k.name;
      double value = 0;
      if (n) {
        static const char* const examples[] = {"128MiB", "1MB/s", "10ms", "20%"};
        const char* example = examples[static_cast<int>(k.unit)];
        if (!n.IsScalar()) return err(n, field, std::string("expected a value such as ") + example);
        auto v = parse_budget(k.unit, n.Scalar());
        if (!v) {
          static const char* const what[] = {"size", "rate", "duration", "ratio"};
          return err(n, field, std::string("invalid ") + what[static_cast<int>(k.unit)] + " '" + n.Scalar() +
                                   "' (use e.g. " + example + ")");
        }
        value = *v;
      } else if (std::string_view(k.name) != "leak" || p.files) {
        continue;  // not budgeted; only `leak` has a default (none allowed)
      }
      p.budgets.push_back(Budget{k.name, k.unit, value});
    }
    return {};
  }

  Result<void> parse_alloc(const YAML::Node& a, const std::string& where, TargetPolicy& p) const {
    if (auto r = known_keys(a, where, {"mode", "duty_fraction", "duty_period", "leak_sites",
                                       "leak_budget", "on_leak_duration"});
        !r)
      return r;
    if (a["mode"]) {
      auto m = str(a["mode"], where + ".mode");
      if (!m) return m.error();
      if (*m == "off") p.alloc_mode = AllocMode::off;
      else if (*m == "full") p.alloc_mode = AllocMode::full;
      else if (*m == "duty") p.alloc_mode = AllocMode::duty;
      else if (*m == "on-leak") p.alloc_mode = AllocMode::on_leak;
      else return err(a["mode"], where + ".mode", "must be one of off, full, duty, on-leak; got '" + *m + "'");
    }
    if (a["duty_fraction"]) {
      auto v = number(a["duty_fraction"], where + ".duty_fraction", 0.001, 1.0);
      if (!v) return v.error();
      p.duty_fraction = *v;
    }
    if (a["duty_period"]) {
      auto d = duration(a["duty_period"], where + ".duty_period");
      if (!d) return d.error();
      p.duty_period = *d;
    }
    if (a["leak_sites"]) {
      auto v = boolean(a["leak_sites"], where + ".leak_sites");
      if (!v) return v.error();
      p.leak_sites = *v;
    }
    if (a["leak_budget"]) {
      // Bytes per second, e.g. "10KiB" (per second implied).
      auto v = bytes(a["leak_budget"], where + ".leak_budget");
      if (!v) return v.error();
      p.leak_budget_bytes_per_second = static_cast<double>(*v);
    }
    if (a["on_leak_duration"]) {
      auto d = duration(a["on_leak_duration"], where + ".on_leak_duration");
      if (!d) return d.error();
      p.on_leak_duration = *d;
    }
    if (p.alloc_mode == AllocMode::on_leak && p.leak_budget_bytes_per_second <= 0)
      return err(a, where + ".leak_budget", "is required when mode is on-leak");
    return {};
  }

  Result<Config> parse(const std::string& yaml) const {
    YAML::Node root;
    try {
      root = YAML::Load(yaml);
    } catch (const YAML::Exception& e) {
      std::ostringstream o;
      o << source_ << ":" << e.mark.line + 1 << ":" << e.mark.column + 1 << ": invalid YAML: " << e.msg;
      return make_error(Errc::invalid, o.str());
    }
    Config c;
    c.source = source_;
    if (root.IsNull()) return err(root, "targets", "the file is empty; at least one target is required");
    if (auto r = known_keys(root, "", {"global", "bpf", "targets"}); !r) return r.error();
    if (root["global"]) {
      if (auto r = parse_global(root["global"], c); !r) return r.error();
    }
    if (root["bpf"]) {
      if (auto r = parse_bpf(root["bpf"], c); !r) return r.error();
    }
    const YAML::Node ts = root["targets"];
    if (!ts || !ts.IsSequence() || ts.size() == 0)
      return err(ts ? ts : root, "targets", "a non-empty list of targets is required");
    std::set<std::string> names;
    for (std::size_t i = 0; i < ts.size(); ++i) {
      auto p = parse_target(ts[i], i);
      if (!p) return p.error();
      if (!names.insert(p->name).second)
        return err(ts[i]["name"], "targets[" + std::to_string(i) + "].name", "duplicate name '" + p->name + "'");
      c.targets.push_back(std::move(*p));
    }
    return c;
  }

 private:
  std::string source_;
};

}  // namespace

Result<Config> parse_config(const std::string& yaml, const std::string& source) {
  // The parser checks every node's type before reading it; this is the net
  // under it, so no input can take the daemon down on a reload.
  try {
    return Parser(source).parse(yaml);
  } catch (const YAML::Exception& e) {
    std::ostringstream o;
    o << source << ":" << e.mark.line + 1 << ":" << e.mark.column + 1 << ": invalid YAML: " << e.msg;
    return make_error(Errc::invalid, o.str());
  } catch (const std::exception& e) {
    return make_error(Errc::invalid, source + ": cannot be parsed: " + e.what());
  }
}

Result<Config> load_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(Errc::invalid, path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return make_error(Errc::invalid, path + ": cannot open: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return make_error(Errc::invalid, path + ": not a regular file");
  constexpr std::size_t kMaxConfigBytes = 16 << 20;
  std::string text(kMaxConfigBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) return make_error(Errc::invalid, path + ": cannot read: " + std::strerror(errno));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > kMaxConfigBytes)
    return make_error(Errc::invalid, path + ": larger than " + std::to_string(kMaxConfigBytes >> 20) + " MiB");
  return parse_config(text, path);
}

Result<Config> default_config() { return parse_config(kDefaultConfigYaml, "<embedded default>"); }

}  // namespace memlens
