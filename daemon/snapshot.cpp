#include "daemon/snapshot.h"

#include <cmath>

namespace memlens {

prometheus::MetricFamily& SnapshotBuilder::family(const MetricDesc& d) {
  auto [it, inserted] = families_.try_emplace(d.name);
  if (inserted) {
    it->second.name = d.name;
    it->second.help = d.help;
    it->second.type = d.kind == MetricKind::counter   ? prometheus::MetricType::Counter
                      : d.kind == MetricKind::histogram ? prometheus::MetricType::Histogram
                                                        : prometheus::MetricType::Gauge;
  }
  return it->second;
}

void SnapshotBuilder::add(const MetricValue& v, const Labels& base) {
  auto& fam = family(*v.desc);
  prometheus::ClientMetric m;
  for (const auto& [k, val] : base) m.label.push_back({k, val});
  for (const auto& [k, val] : v.labels) m.label.push_back({k, val});
  switch (v.desc->kind) {
    case MetricKind::gauge: m.gauge.value = v.value; break;
    case MetricKind::counter: m.counter.value = v.value; break;
    case MetricKind::histogram: {
      uint64_t cum = 0;
      for (std::size_t i = 0; i < v.hist.bounds.size() && i < v.hist.counts.size(); ++i) {
        cum += v.hist.counts[i];
        m.histogram.bucket.push_back({cum, v.hist.bounds[i]});
      }
      m.histogram.bucket.push_back({std::max(cum, v.hist.count), INFINITY});
      m.histogram.sample_count = std::max(cum, v.hist.count);
      m.histogram.sample_sum = v.hist.sum;
      break;
    }
  }
  fam.metric.push_back(std::move(m));
}

void SnapshotBuilder::gauge(const MetricDesc& d, double v, const Labels& labels) {
  add(MetricValue{&d, labels, v, {}}, {});
}

void SnapshotBuilder::counter(const MetricDesc& d, double v, const Labels& labels) {
  add(MetricValue{&d, labels, v, {}}, {});
}

std::vector<prometheus::MetricFamily> SnapshotBuilder::take() {
  std::vector<prometheus::MetricFamily> out;
  out.reserve(families_.size());
  for (auto& [name, fam] : families_) out.push_back(std::move(fam));
  families_.clear();
  return out;
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
