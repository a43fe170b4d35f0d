// What a scrape reads: an immutable snapshot built once per tick on the
// collection thread and swapped in whole, so /metrics is always consistent.
#pragma once

#include <prometheus/metric_family.h>
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "daemon/metric.h"

namespace memlens {

struct TargetView {
  std::string name, selector, comm, exe;
  pid_t pid = 0;
  uint64_t start_time = 0;
  std::vector<std::pair<std::string, double>> values;  // "metric{labels}" -> value
};

struct Snapshot {
  std::vector<prometheus::MetricFamily> families;
  std::vector<TargetView> targets;
  // Extra JSON documents served under /api/v1/ (e.g. leak sites), by path.
  std::map<std::string, std::string> documents;
  // Gzipped pprof heap profiles by "NAME" and "NAME/PID".
  std::map<std::string, std::shared_ptr<const std::string>> profiles;
  double built_at = 0;  // unix seconds
};

// Accumulates MetricValues into families, keyed by metric name.
class SnapshotBuilder {
 public:
  void add(const MetricValue& v, const Labels& base);
  void gauge(const MetricDesc& d, double v, const Labels& labels = {});
  void counter(const MetricDesc& d, double v, const Labels& labels = {});
  std::vector<prometheus::MetricFamily> take();

 private:
  prometheus::MetricFamily& family(const MetricDesc& d);
  std::map<std::string, prometheus::MetricFamily> families_;
};

// "name{a="x",b="y"}" for the JSON view.
std::string series_key(const MetricValue& v);

}  // namespace memlens
