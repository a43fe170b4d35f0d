#include "daemon/snapshot.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace memlens {

// The text format's pieces (used only by the builder).
namespace expo {
namespace {

void append_value(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "Nan";
    return;
  }
  if (std::isinf(v)) {
    out += v < 0 ? "-Inf" : "+Inf";
    return;
  }
  char buf[32];
  // Most values are whole numbers (bytes, counts): %.16g writes those below
  // 1e16 as plain digits, which to_chars does without parsing a format.
  if (v == std::trunc(v) && std::fabs(v) < 1e16 && !(v == 0 && std::signbit(v))) {
    auto r = std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(v));
    out.append(buf, r.ptr);
    return;
  }
  const int n = std::snprintf(buf, sizeof buf, "%.16g", v);
  out.append(buf, static_cast<std::size_t>(n));
}

void append_label_value(std::string& out, std::string_view s) {
  for (char c : s) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
}

void append_labels(std::string& out, const Labels& labels, bool& first) {
  for (const auto& [k, v] : labels) {
    out += first ? '{' : ',';
    first = false;
    out += k;
    out += "=\"";
    append_label_value(out, v);
    out += '"';
  }
}

void append_series(std::string& out, std::string_view name, std::string_view suffix, const Labels& base,
                   const Labels& extra, const double* le, double v) {
  out += name;
  out += suffix;
  bool first = true;
  append_labels(out, base, first);
  append_labels(out, extra, first);
  if (le) {
    out += first ? "{le=\"" : ",le=\"";
    first = false;
    append_value(out, *le);
    out += '"';
  }
  if (!first) out += '}';
  out += ' ';
  append_value(out, v);
  out += '\n';
}

void append_header(std::string& out, const MetricDesc& d) {
  out += "# HELP ";
  out += d.name;
  out += ' ';
  for (char c : d.help) {  // the format escapes backslash and newline here
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  out += "\n# TYPE ";
  out += d.name;
  out += d.kind == MetricKind::counter     ? " counter\n"
         : d.kind == MetricKind::histogram ? " histogram\n"
                                           : " gauge\n";
}

}  // namespace
}  // namespace expo

SnapshotBuilder::Family& SnapshotBuilder::family(const MetricDesc& d) {
  if (auto it = by_desc_.find(&d); it != by_desc_.end()) return *it->second;
  auto it = families_.try_emplace(d.name).first;
  // The first desc of the name since the builder was emptied is the one
  // its header is written from (a family kept from an earlier tick may
  // name a desc that is gone).
  if (it->second.lines.empty()) it->second.desc = &d;
  by_desc_.emplace(&d, &it->second);
  return it->second;
}

void SnapshotBuilder::add(const MetricValue& v, const Labels& base) {
  Family& f = family(*v.desc);
  const std::string& name = v.desc->name;
  switch (v.desc->kind) {
    case MetricKind::gauge:
    case MetricKind::counter: expo::append_series(f.lines, name, "", base, v.labels, nullptr, v.value); break;
    case MetricKind::histogram: {
      const auto& h = v.hist;
      uint64_t total = 0;
      for (std::size_t i = 0; i < h.bounds.size() && i < h.counts.size(); ++i) total += h.counts[i];
      total = std::max(total, h.count);
      expo::append_series(f.lines, name, "_count", base, v.labels, nullptr, static_cast<double>(total));
      expo::append_series(f.lines, name, "_sum", base, v.labels, nullptr, h.sum);
      uint64_t cum = 0;
      for (std::size_t i = 0; i < h.bounds.size() && i < h.counts.size(); ++i) {
        cum += h.counts[i];
        expo::append_series(f.lines, name, "_bucket", base, v.labels, &h.bounds[i], static_cast<double>(cum));
      }
      const double inf = INFINITY;
      expo::append_series(f.lines, name, "_bucket", base, v.labels, &inf, static_cast<double>(total));
      break;
    }
  }
}

void SnapshotBuilder::gauge(const MetricDesc& d, double v, const Labels& labels) {
  add(MetricValue{&d, labels, v, {}}, {});
}

void SnapshotBuilder::counter(const MetricDesc& d, double v, const Labels& labels) {
  add(MetricValue{&d, labels, v, {}}, {});
}

std::string SnapshotBuilder::take() {
  std::size_t size = 0;
  for (const auto& [name, f] : families_)
    if (!f.lines.empty()) size += f.lines.size() + f.desc->help.size() + 2 * name.size() + 32;
  std::string out;
  out.reserve(size);
  for (const auto& [name, f] : families_) {
    if (f.lines.empty()) continue;
    expo::append_header(out, *f.desc);
    out += f.lines;
  }
  clear();
  return out;
}

void SnapshotBuilder::clear() {
  for (auto& [name, f] : families_) f.lines.clear();
  by_desc_.clear();
}

std::string series_key(const MetricValue& v) {
  std::string k = v.desc->name;
  if (v.labels.empty()) return k;
  k += '{';
  for (std::size_t i = 0; i < v.labels.size(); ++i) {
    if (i) k += ',';
    k += v.labels[i].first + "=\"" + v.labels[i].second + "\"";
  }
  k += '}';
  return k;
}

}  // namespace memlens
