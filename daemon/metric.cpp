#include "daemon/metric.h"

#include <mutex>

namespace memlens {

namespace {
// Written under the lock before an id is handed out, never changed after:
// an id reaches another thread only through what synchronises (a snapshot
// published under the exporter's lock).
std::mutex fixed_mu;
uint32_t fixed_count = 1;
const Labels* fixed_table[FixedLabels::kMaxFixedLabels] = {};
const Labels kNoLabels;
}  // namespace

FixedLabels::FixedLabels(Labels labels) {
  if (labels.empty()) return;
  std::lock_guard lock(fixed_mu);
  for (uint32_t i = 1; i < fixed_count; ++i)
    if (*fixed_table[i] == labels) {
      id_ = i;
      return;
    }
  if (fixed_count == kMaxFixedLabels) {
    copy_ = std::move(labels);
    return;
  }
  fixed_table[fixed_count] = new Labels(std::move(labels));  // kept for the daemon's lifetime
  id_ = fixed_count++;
}

const Labels& FixedLabels::of(uint32_t id) {
  return id == 0 || id >= kMaxFixedLabels || !fixed_table[id] ? kNoLabels : *fixed_table[id];
}

const FixedLabels& FixedLabelsFor::operator()(std::string_view value) {
  if (auto it = sets_.find(value); it != sets_.end()) return it->second;
  Labels l{{key_, std::string(value)}};
  l.insert(l.end(), also_.begin(), also_.end());
  return sets_.emplace(std::string(value), FixedLabels(std::move(l))).first->second;
}

MetricDesc metric(std::string_view base, std::string_view unit, MetricKind kind, std::string help) {
  std::string name = "memlens_";
  name += base;
  if (!unit.empty()) {
    name += "_";
    name += unit;
  }
  if (kind == MetricKind::counter) name += "_total";
  return MetricDesc{std::move(name), std::move(help), kind};
}

void Sample::gauge(const MetricDesc& d, double v, Labels extra) {
  values_.push_back(MetricValue{&d, std::move(extra), v, {}});
}

void Sample::counter(const MetricDesc& d, double v, Labels extra) {
  values_.push_back(MetricValue{&d, std::move(extra), v, {}});
}

MetricValue value_of(const MetricDesc& d, double v, const FixedLabels& extra) {
  if (extra.id()) return MetricValue{&d, {}, v, {}, extra.id()};
  return MetricValue{&d, extra.labels(), v, {}};
}

void Sample::add_fixed(const MetricDesc& d, double v, const FixedLabels& extra) {
  values_.push_back(value_of(d, v, extra));
}

void Sample::histogram(const MetricDesc& d, HistogramValue h, Labels extra) {
  values_.push_back(MetricValue{&d, std::move(extra), 0, std::move(h)});
}

void Sample::series(SeriesId id, double v, SeriesQuality q) {
  const auto i = static_cast<size_t>(id);
  if (has_[i] && q < quality_[i]) return;
  series_[i] = v;
  has_[i] = true;
  quality_[i] = q;
}

}  // namespace memlens
