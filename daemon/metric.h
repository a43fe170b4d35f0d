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
// leak slope runs on: anonymous RSS from /proc, or better, by SeriesQuality.
enum class SeriesId : uint8_t { rss = 0, anon, heap, count_ };
constexpr std::size_t kSeriesCount = static_cast<std::size_t>(SeriesId::count_);

// How good a value of a series is; a better one replaces a worse one
// whatever the order collectors run in, an equal one replaces the earlier.
// For kHeap: anonymous RSS (proc) < bytes allocated minus freed since the
// probes were attached (alloc, full mode: the live heap's slope, not its
// level) < in-use bytes from the allocator's own books (heap, glibc) <
// exact live bytes (alloc, traced from the first allocation).
// runtime: the runtime's own heap (V8's used bytes at a collection's end),
// above the allocator's books for a process whose objects live outside
// malloc.
enum class SeriesQuality : uint8_t { estimate = 0, since_attach, books, runtime, exact };

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
  // Feed a timeline series. A later call for the same series wins unless
  // its quality is lower than the value's already there.
  void series(SeriesId id, double v, SeriesQuality q = SeriesQuality::estimate);

  const std::vector<MetricValue>& values() const { return values_; }
  // The values, moved out (the sample has none after).
  std::vector<MetricValue> take_values() { return std::move(values_); }
  bool has_series(SeriesId id) const { return has_[static_cast<size_t>(id)]; }
  double series_value(SeriesId id) const { return series_[static_cast<size_t>(id)]; }

 private:
  std::vector<MetricValue> values_;
  double series_[kSeriesCount] = {};
  bool has_[kSeriesCount] = {};
  SeriesQuality quality_[kSeriesCount] = {};
};

}  // namespace memlens
