// Metric descriptions and the per-tick sample a collector fills. One helper
// builds names so the memlens_ prefix and unit suffixes stay uniform.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace memlens {

enum class MetricKind { gauge, counter, histogram };

struct MetricDesc {
  std::string name;  // full name, e.g. memlens_rss_bytes
  std::string help;
  MetricKind kind = MetricKind::gauge;
};

// memlens_<base>[_<unit>][_total]; unit is a base unit ("bytes", "seconds")
// or empty. Counters get the _total suffix here, never by hand.
MetricDesc metric(std::string_view base, std::string_view unit, MetricKind kind,
                  std::string help);

using Labels = std::vector<std::pair<std::string, std::string>>;

// Cumulative histogram: bounds are upper bounds (le), counts are per bucket
// (not cumulative); the +Inf bucket is implicit (count - sum of buckets).
struct HistogramValue {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // same size as bounds
  uint64_t count = 0;
  double sum = 0;
};

// The time series the timeline keeps for every target. kHeap is the series the
// leak slope runs on: anonymous RSS from /proc, replaced by the allocator's
// live bytes when allocation tracing sets it.
enum class SeriesId : uint8_t { rss = 0, anon, heap, count_ };
constexpr std::size_t kSeriesCount = static_cast<std::size_t>(SeriesId::count_);

struct MetricValue {
  const MetricDesc* desc = nullptr;
  Labels labels;  // extra labels beyond target/pid
  double value = 0;
  HistogramValue hist;  // when desc->kind == histogram
};

// What collectors report for one target during one tick.
class Sample {
 public:
  void gauge(const MetricDesc& d, double v, Labels extra = {});
  void counter(const MetricDesc& d, double v, Labels extra = {});
  void histogram(const MetricDesc& d, HistogramValue h, Labels extra = {});
  // Feed a timeline series. A later call for the same series wins, so a
  // more precise collector (eBPF) registered after proc overrides it.
  void series(SeriesId id, double v);

  const std::vector<MetricValue>& values() const { return values_; }
  bool has_series(SeriesId id) const { return has_[static_cast<size_t>(id)]; }
  double series_value(SeriesId id) const { return series_[static_cast<size_t>(id)]; }

 private:
  std::vector<MetricValue> values_;
  double series_[kSeriesCount] = {};
  bool has_[kSeriesCount] = {};
};

}  // namespace memlens
