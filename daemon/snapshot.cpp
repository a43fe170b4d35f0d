#include "daemon/snapshot.h"

#include <algorithm>
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

void append_header(std::string& out, std::string_view name, std::string_view help, MetricKind kind) {
  out += "# HELP ";
  out += name;
  out += ' ';
  for (char c : help) {  // the format escapes backslash and newline here
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  out += "\n# TYPE ";
  out += name;
  out += kind == MetricKind::counter     ? " counter\n"
         : kind == MetricKind::histogram ? " histogram\n"
                                         : " gauge\n";
}

}  // namespace
}  // namespace expo

uint32_t SnapshotBuilder::family(const MetricDesc& d) {
  Hint& h = hints_[(reinterpret_cast<uintptr_t>(&d) >> 4) & (hints_.size() - 1)];
  if (h.desc == &d) return h.family;
  uint32_t f;
  if (auto it = by_desc_.find(&d); it != by_desc_.end()) {
    f = it->second;
  } else {
    auto [named, fresh] = by_name_.try_emplace(d.name, static_cast<uint32_t>(set().families_.size()));
    if (fresh) set().families_.push_back({d.name, d.help, d.kind});
    by_desc_.emplace(&d, named->second);
    f = named->second;
  }
  h = {&d, f};
  return f;
}

std::size_t SnapshotBuilder::base(Labels labels) {
  if (labels.empty()) return 0;
  const std::size_t n = set().entries_.size();
  set().bases_.push_back({std::move(labels), n, n});
  return set().bases_.size() - 1;
}

void SnapshotBuilder::add(MetricValue v, std::size_t base) {
  const uint32_t f = family(*v.desc);
  SeriesSet& s = set();
  auto& b = s.bases_[base];
  if (base != 0) {
    if (b.first == b.last) b.first = s.entries_.size();
    b.last = s.entries_.size() + 1;
  }
  uint32_t hist = SeriesSet::kNoHist;
  if (v.desc->kind == MetricKind::histogram) {
    hist = static_cast<uint32_t>(s.hists_.size());
    s.hists_.push_back(std::move(v.hist));
  }
  s.entries_.push_back({f, static_cast<uint32_t>(base), hist, v.fixed, v.value, std::move(v.labels)});
}

void SnapshotBuilder::gauge(const MetricDesc& d, double v, Labels labels) {
  add(MetricValue{&d, std::move(labels), v, {}}, 0);
}

void SnapshotBuilder::counter(const MetricDesc& d, double v, Labels labels) {
  add(MetricValue{&d, std::move(labels), v, {}}, 0);
}

SeriesSet& SnapshotBuilder::set() {
  if (set_) return *set_;
  set_ = std::make_unique<SeriesSet>();
  // The storage of a set released since (the snapshot before the last):
  // 46,000 values at 1000 targets take ~2 MiB, which malloc mapped afresh for
  // every set and the tick then faulted in page by page.
  {
    std::lock_guard<std::mutex> l(spare_->mu);
    set_->entries_ = std::move(spare_->entries);
    if (spare_->bases.capacity() > set_->bases_.capacity()) set_->bases_ = std::move(spare_->bases);
  }
  set_->entries_.clear();
  set_->bases_.resize(1);  // [0]: no labels
  set_->entries_.reserve(last_entries_ + last_entries_ / 8);
  set_->bases_.reserve(last_bases_ + last_bases_ / 8);
  return *set_;
}

std::shared_ptr<const SeriesSet> SnapshotBuilder::take_set() {
  SeriesSet& s = set();
  last_entries_ = s.entries_.size();
  last_bases_ = s.bases_.size();
  by_desc_.clear();
  by_name_.clear();
  hints_.fill({});
  // Released on whichever thread lets go last: its values are destroyed
  // there and its storage kept for the next set.
  return std::shared_ptr<const SeriesSet>(set_.release(), [spare = spare_](const SeriesSet* gone) {
    std::unique_ptr<SeriesSet> owned(const_cast<SeriesSet*>(gone));
    owned->entries_.clear();
    owned->bases_.clear();
    std::lock_guard<std::mutex> l(spare->mu);
    if (owned->entries_.capacity() > spare->entries.capacity()) spare->entries = std::move(owned->entries_);
    if (owned->bases_.capacity() > spare->bases.capacity()) spare->bases = std::move(owned->bases_);
  });
}

std::string SnapshotBuilder::take() { return take_set()->render(); }

void SnapshotBuilder::clear() {
  if (set_) {
    set_->families_.clear();
    set_->bases_.resize(1);
    set_->entries_.clear();
    set_->hists_.clear();
  }
  by_desc_.clear();
  by_name_.clear();
  hints_.fill({});
}

std::string SeriesSet::render() const {
  // Families in name order; within one, series in the order added (a
  // counting sort of the entries by their family's rank).
  std::vector<uint32_t> order(families_.size());
  for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return families_[a].name < families_[b].name; });
  std::vector<std::size_t> rank(families_.size()), start(families_.size() + 1, 0);
  for (std::size_t r = 0; r < order.size(); ++r) rank[order[r]] = r;
  for (const auto& e : entries_) ++start[rank[e.family] + 1];
  for (std::size_t r = 0; r < order.size(); ++r) start[r + 1] += start[r];
  std::vector<uint32_t> sorted(entries_.size());
  {
    std::vector<std::size_t> at(start.begin(), start.end() - 1);
    for (uint32_t i = 0; i < entries_.size(); ++i) sorted[at[rank[entries_[i].family]]++] = i;
  }
  std::string out;
  out.reserve(entries_.size() * 96 + families_.size() * 160);
  for (std::size_t r = 0; r < order.size(); ++r) {
    if (start[r] == start[r + 1]) continue;
    const Family& f = families_[order[r]];
    expo::append_header(out, f.name, f.help, f.kind);
    for (std::size_t k = start[r]; k < start[r + 1]; ++k) {
      const Entry& e = entries_[sorted[k]];
      const Labels& base = bases_[e.base].labels;
      switch (f.kind) {
        case MetricKind::gauge:
        case MetricKind::counter: expo::append_series(out, f.name, "", base, e.extra(), nullptr, e.value); break;
        case MetricKind::histogram: {
          static const HistogramValue none;
          const auto& h = e.hist < hists_.size() ? hists_[e.hist] : none;
          uint64_t total = 0;
          for (std::size_t i = 0; i < h.bounds.size() && i < h.counts.size(); ++i) total += h.counts[i];
          total = std::max(total, h.count);
          expo::append_series(out, f.name, "_count", base, e.extra(), nullptr, static_cast<double>(total));
          expo::append_series(out, f.name, "_sum", base, e.extra(), nullptr, h.sum);
          uint64_t cum = 0;
          for (std::size_t i = 0; i < h.bounds.size() && i < h.counts.size(); ++i) {
            cum += h.counts[i];
            expo::append_series(out, f.name, "_bucket", base, e.extra(), &h.bounds[i], static_cast<double>(cum));
          }
          const double inf = INFINITY;
          expo::append_series(out, f.name, "_bucket", base, e.extra(), &inf, static_cast<double>(total));
          break;
        }
      }
    }
  }
  return out;
}

std::vector<std::pair<std::string, double>> SeriesSet::values(std::size_t base) const {
  std::vector<std::pair<std::string, double>> out;
  if (base == 0 || base >= bases_.size()) return out;
  const Base& b = bases_[base];
  for (std::size_t i = b.first; i < b.last; ++i) {
    const Entry& e = entries_[i];
    const Family& f = families_[e.family];
    if (e.base != base || f.kind == MetricKind::histogram) continue;
    out.emplace_back(series_key(f.name, e.extra()), e.value);
  }
  return out;
}

std::vector<std::pair<std::string, double>> Snapshot::values_of(const TargetView& t) const {
  if (!t.values.empty() || !series) return t.values;
  return series->values(t.base);
}

std::string series_key(std::string_view name, const Labels& labels) {
  std::string k(name);
  if (labels.empty()) return k;
  k += '{';
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (i) k += ',';
    k += labels[i].first + "=\"" + labels[i].second + "\"";
  }
  k += '}';
  return k;
}

}  // namespace memlens
