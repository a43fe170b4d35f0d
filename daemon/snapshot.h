// What a scrape reads: an immutable snapshot built once per tick on the
// collection thread and swapped in whole, so /metrics is always consistent.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
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
  std::size_t base = 0;  // its series in Snapshot::series
  // "metric{labels}" -> value: filled only where a page is drawn for it
  // (Snapshot::values_of reads the series otherwise).
  std::vector<std::pair<std::string, double>> values;
};

// The series one tick published, kept as values: their text exposition
// (format 0.0.4) is written when a scrape first asks for it, not at every
// tick (a 15 s scrape of a 1 s tick read one text in 15). A base is the
// labels a target's series start with. The set names its families by copies
// of their name, help and kind: a collector's descriptions may go before a
// snapshot a scrape still holds.
class SeriesSet {
 public:
  // Families in name order, series in the order they were added; the bytes
  // prometheus-cpp's TextSerializer writes (tests/unit/exposition_test.cpp).
  std::string render() const;
  // "name{a=\"x\"}" -> value of the series added under `base` (its own
  // labels only), histograms aside.
  std::vector<std::pair<std::string, double>> values(std::size_t base) const;
  std::size_t size() const { return entries_.size(); }

 private:
  friend class SnapshotBuilder;
  struct Family {
    std::string name, help;
    MetricKind kind = MetricKind::gauge;
  };
  struct Base {
    Labels labels;
    std::size_t first = 0, last = 0;  // its entries lie in [first, last)
  };
  static constexpr uint32_t kNoHist = ~0u;
  struct Entry {  // 48 bytes: a histogram's buckets are kept apart (few series have them)
    uint32_t family = 0;
    uint32_t base = 0;
    uint32_t hist = kNoHist;  // index into hists_
    uint32_t fixed = 0;       // its own labels as a FixedLabels id (labels empty)
    double value = 0;
    Labels labels;  // its own, after the base's
    const Labels& extra() const { return fixed ? FixedLabels::of(fixed) : labels; }
  };
  std::vector<Family> families_;
  std::vector<Base> bases_{Base{}};  // [0]: no labels
  std::vector<Entry> entries_;
  std::vector<HistogramValue> hists_;
};

struct Snapshot {
  // Every series the tick produced: what /metrics serves (rendered by the
  // first scrape), with a few lines of the scrape's own after it.
  std::shared_ptr<const SeriesSet> series;
  std::vector<TargetView> targets;
  // Extra JSON documents served under /api/v1/ (e.g. leak sites), by path.
  std::map<std::string, std::string> documents;
  // Gzipped pprof heap profiles by "NAME" and "NAME/PID".
  std::map<std::string, std::shared_ptr<const std::string>> profiles;
  // The timeline pages drawn for this snapshot (HTML), by path: "/" and
  // "/targets/NAME"; only those someone asked for lately (PageWants).
  std::map<std::string, std::shared_ptr<const std::string>> pages;
  double built_at = 0;  // unix seconds
  // A target's values: TargetView::values when filled, else from the series.
  std::vector<std::pair<std::string, double>> values_of(const TargetView& t) const;
};

// Gathers one tick's MetricValues into a SeriesSet, families keyed by
// metric name (two descriptions of one name share a family, with the
// first one's help). Writing each series' text at every tick was the
// largest share of a tick at 1000 targets; a value is now moved in whole.
class SnapshotBuilder {
 public:
  // A new base: the labels the series added under it start with.
  std::size_t base(Labels labels);
  void add(MetricValue v, std::size_t base);
  void add(const MetricValue& v, const Labels& base) { add(MetricValue(v), this->base(base)); }
  void gauge(const MetricDesc& d, double v, Labels labels = {});
  void counter(const MetricDesc& d, double v, Labels labels = {});
  // Everything added; the builder is empty after.
  std::shared_ptr<const SeriesSet> take_set();
  // take_set()->render().
  std::string take();
  // Drops what was added (a tick given up half way).
  void clear();

 private:
  uint32_t family(const MetricDesc& d);
  SeriesSet& set();  // the one being gathered, made on first use
  struct Spare {
    std::mutex mu;
    std::vector<SeriesSet::Entry> entries;  // a released set's storage, empty
    std::vector<SeriesSet::Base> bases;
  };
  std::unique_ptr<SeriesSet> set_;
  std::shared_ptr<Spare> spare_ = std::make_shared<Spare>();
  std::size_t last_entries_ = 0, last_bases_ = 0;  // of the last set taken
  std::unordered_map<const MetricDesc*, uint32_t> by_desc_;
  // In front of by_desc_: a description's family by its address, direct
  // mapped (a tick adds ~40 values a target, from the same few dozen).
  struct Hint {
    const MetricDesc* desc = nullptr;
    uint32_t family = 0;
  };
  std::array<Hint, 256> hints_{};
  std::unordered_map<std::string, uint32_t> by_name_;
};

// "name{a="x",b="y"}" for the JSON view.
std::string series_key(std::string_view name, const Labels& labels);

}  // namespace memlens
