#include "daemon/metric.h"

namespace memlens {

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
