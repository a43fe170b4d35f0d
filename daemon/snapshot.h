// What a scrape reads: an immutable snapshot built once per tick on the
// collection thread and swapped in whole, so /metrics is always consistent.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "daemon/metric.h"

namespace memlens {

struct TargetView {
  std::string name, selector, comm, exe;
  pid_t pid = 0;
  uint64_t start_time = 0;
  Labels labels;  // Kubernetes labels, when on and found
  std::vector<std::pair<std::string, double>> values;  // "metric{labels}" -> value
};

struct Snapshot {
  // Every family the tick produced, in the Prometheus text format (0.0.4),
  // families in name order: what /metrics serves, with a few lines of the
  // scrape's own after it.
  std::string text;
  std::vector<TargetView> targets;
  // Extra JSON documents served under /api/v1/ (e.g. leak sites), by path.
  std::map<std::string, std::string> documents;
  // Gzipped pprof heap profiles by "NAME" and "NAME/PID".
  std::map<std::string, std::shared_ptr<const std::string>> profiles;
  // The timeline pages drawn for this snapshot (HTML), by path: "/" and
  // "/targets/NAME"; only those someone asked for lately (PageWants).
  std::map<std::string, std::shared_ptr<const std::string>> pages;
  double built_at = 0;  // unix seconds
};

// Accumulates MetricValues into families, keyed by metric name, writing
// each series' text line as it comes: one append per series, where building
// prometheus-cpp's MetricFamily objects and serialising them cost an
// allocation per label and stream inserts per value (the largest share of
// a tick at 1000 targets). The format is the one prometheus-cpp writes
// (tests/unit/exposition_test.cpp compares the two).
class SnapshotBuilder {
 public:
  void add(const MetricValue& v, const Labels& base);
  void gauge(const MetricDesc& d, double v, const Labels& labels = {});
  void counter(const MetricDesc& d, double v, const Labels& labels = {});
  // The exposition of everything added; the builder is empty after. Its
  // buffers keep their capacity: a builder kept from tick to tick writes
  // the next exposition without growing them again.
  std::string take();
  // Drops what was added (a tick given up half way), keeping the buffers.
  void clear();

 private:
  struct Family {
    const MetricDesc* desc = nullptr;
    std::string lines;
  };
  Family& family(const MetricDesc& d);
  std::map<std::string, Family> families_;  // by name: two descs of one name share a family; empty ones not written
  std::unordered_map<const MetricDesc*, Family*> by_desc_;
};

// "name{a="x",b="y"}" for the JSON view.
std::string series_key(const MetricValue& v);

}  // namespace memlens
