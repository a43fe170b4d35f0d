// Metric descriptions and the per-tick sample a collector fills. One helper
// builds names so the memlens_ prefix and unit suffixes stay uniform.
#pragma once

#include <concepts>
#include <cstdint>
#include <map>
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

// A label set kept for the daemon's lifetime and named by a small number:
// a value carries the number, not a copy. For the sets collectors emit for
// every target at every tick ({kind="minor"}, {allocator="glibc"}): each
// copy was a heap allocation per value per tick, freed with the snapshot.
// Only sets drawn from a fixed vocabulary belong here (the table never
// shrinks); past kMaxFixedLabels distinct sets, a set is carried as a copy.
class FixedLabels {
 public:
  FixedLabels() = default;  // no labels
  explicit FixedLabels(Labels labels);
  uint32_t id() const { return id_; }
  // The set (a copy's, when the table was full).
  const Labels& labels() const { return id_ ? of(id_) : copy_; }
  // The set behind an id; 0: the empty set.
  static const Labels& of(uint32_t id);
  static constexpr uint32_t kMaxFixedLabels = 4096;

 private:
  uint32_t id_ = 0;
  Labels copy_;
};

// The fixed set {key="v"} followed by `also`, for each v of a small
// vocabulary (allocator names, mmap calls, heap sources), made at its
// first use. One owner, one thread: a collector's, the tick's.
class FixedLabelsFor {
 public:
  explicit FixedLabelsFor(std::string key, Labels also = {}) : key_(std::move(key)), also_(std::move(also)) {}
  const FixedLabels& operator()(std::string_view value);

 private:
  std::string key_;
  Labels also_;
  std::map<std::string, FixedLabels, std::less<>> sets_;
};

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
  uint32_t fixed = 0;   // extra labels as a FixedLabels id instead (labels empty)
  const Labels& extra() const { return fixed ? FixedLabels::of(fixed) : labels; }
};

// A value with a fixed label set (or its copy, when the table was full).
MetricValue value_of(const MetricDesc& d, double v, const FixedLabels& extra);

// What collectors report for one target during one tick.
class Sample {
 public:
  void gauge(const MetricDesc& d, double v, Labels extra = {});
  void counter(const MetricDesc& d, double v, Labels extra = {});
  // With a fixed label set (templates, so that a braced list of labels
  // still means Labels).
  template <std::same_as<FixedLabels> L>
  void gauge(const MetricDesc& d, double v, const L& extra) {
    add_fixed(d, v, extra);
  }
  template <std::same_as<FixedLabels> L>
  void counter(const MetricDesc& d, double v, const L& extra) {
    add_fixed(d, v, extra);
  }
  void histogram(const MetricDesc& d, HistogramValue h, Labels extra = {});
  // Feed a timeline series. A later call for the same series wins unless
  // its quality is lower than the value's already there.
  void series(SeriesId id, double v, SeriesQuality q = SeriesQuality::estimate);

  const std::vector<MetricValue>& values() const { return values_; }
  // Each value moved to `f`, then none left (the storage stays for the
  // next target's: a sample is reused across a tick).
  template <class F>
  void drain(F&& f) {
    for (auto& v : values_) f(std::move(v));
    clear();
  }
  void clear() {
    values_.clear();
    for (auto& h : has_) h = false;
  }
  bool has_series(SeriesId id) const { return has_[static_cast<size_t>(id)]; }
  double series_value(SeriesId id) const { return series_[static_cast<size_t>(id)]; }

 private:
  void add_fixed(const MetricDesc& d, double v, const FixedLabels& extra);
  std::vector<MetricValue> values_;
  double series_[kSeriesCount] = {};
  bool has_[kSeriesCount] = {};
  SeriesQuality quality_[kSeriesCount] = {};
};

}  // namespace memlens
