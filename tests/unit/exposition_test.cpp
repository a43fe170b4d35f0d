// The snapshot's text exposition, written by SnapshotBuilder, against what
// prometheus-cpp's TextSerializer writes for the same families: the bytes
// must be the same (the golden exposition test and every scraper saw the
// latter until the tick wrote its text itself).
#include <gtest/gtest.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "daemon/metric.h"
#include "daemon/snapshot.h"

namespace memlens {
namespace {

// The same value into both: a builder and prometheus-cpp's families.
struct Both {
  SnapshotBuilder b;
  std::map<std::string, prometheus::MetricFamily> fams;

  prometheus::ClientMetric& metric(const MetricDesc& d, const Labels& base, const Labels& extra) {
    auto [it, fresh] = fams.try_emplace(d.name);
    if (fresh) {
      it->second.name = d.name;
      it->second.help = d.help;
      it->second.type = d.kind == MetricKind::counter     ? prometheus::MetricType::Counter
                        : d.kind == MetricKind::histogram ? prometheus::MetricType::Histogram
                                                          : prometheus::MetricType::Gauge;
    }
    auto& m = it->second.metric.emplace_back();
    for (const auto& [k, v] : base) m.label.push_back({k, v});
    for (const auto& [k, v] : extra) m.label.push_back({k, v});
    return m;
  }
  void add(const MetricDesc& d, double v, const Labels& base, const Labels& extra = {}) {
    b.add(MetricValue{&d, extra, v, {}}, base);
    auto& m = metric(d, base, extra);
    if (d.kind == MetricKind::counter) m.counter.value = v;
    else m.gauge.value = v;
  }
  void add(const MetricDesc& d, const HistogramValue& h, const Labels& base) {
    b.add(MetricValue{&d, {}, 0, h}, base);
    auto& m = metric(d, base, {});
    uint64_t cum = 0;
    for (std::size_t i = 0; i < h.bounds.size(); ++i) {
      cum += h.counts[i];
      m.histogram.bucket.push_back({cum, h.bounds[i]});
    }
    m.histogram.bucket.push_back({std::max(cum, h.count), INFINITY});
    m.histogram.sample_count = std::max(cum, h.count);
    m.histogram.sample_sum = h.sum;
  }
  std::string theirs() const {
    std::vector<prometheus::MetricFamily> v;
    for (const auto& [n, f] : fams) v.push_back(f);
    return prometheus::TextSerializer().Serialize(v);
  }
};

TEST(Exposition, SameBytesAsPrometheusCpp) {
  const MetricDesc g = metric("rss", "bytes", MetricKind::gauge, "Resident memory.");
  const MetricDesc c = metric("allocs", "", MetricKind::counter, "Allocations.");
  const MetricDesc h = metric("gc_pause", "seconds", MetricKind::histogram, "GC pauses.");
  const MetricDesc none = metric("up", "", MetricKind::gauge, "No labels at all.");
  const double values[] = {0,       -0.0,   1,       9019392, 0.04,      1e20,     1.5e-7,
                           0.1 + 0.2, 1.0 / 3, 2.5e15, 1e16,    123456789012345678.0, -42.5, 9.999999999999999e15,
                           std::numeric_limits<double>::quiet_NaN(), INFINITY, -INFINITY,
                           std::numeric_limits<double>::denorm_min(), 18446744073709551615.0, -1e15};
  Both x;
  int pid = 1;
  for (double v : values) {
    const Labels base{{"target", "svc \"a\"\\b\nc"}, {"pid", std::to_string(pid++)}};
    x.add(g, v, base);
    x.add(c, v, base, {{"source", "sampler"}});
  }
  x.add(none, 7, {});
  HistogramValue hv{{0.001, 0.01, 0.5}, {3, 0, 2}, 9, 0.125};
  x.add(h, hv, {{"target", "t"}, {"pid", "9"}});
  HistogramValue empty{{0.001}, {0}, 0, 0};
  x.add(h, empty, {{"target", "t"}, {"pid", "10"}});
  EXPECT_EQ(x.b.take(), x.theirs());
}

TEST(Exposition, TwoDescriptionsOfOneNameShareAFamily) {
  const MetricDesc a = metric("heap", "bytes", MetricKind::gauge, "Heap.");
  const MetricDesc b = metric("heap", "bytes", MetricKind::gauge, "Heap.");
  SnapshotBuilder sb;
  sb.gauge(a, 1, {{"pid", "1"}});
  sb.gauge(b, 2, {{"pid", "2"}});
  EXPECT_EQ(sb.take(), "# HELP memlens_heap_bytes Heap.\n# TYPE memlens_heap_bytes gauge\n"
                       "memlens_heap_bytes{pid=\"1\"} 1\nmemlens_heap_bytes{pid=\"2\"} 2\n");
  EXPECT_EQ(sb.take(), "") << "empty after take";
}

// The tick keeps one builder: each exposition is what a fresh builder
// writes, with no family of an earlier tick and nothing of a tick given up.
TEST(Exposition, AKeptBuilderWritesEachTickAfresh) {
  const MetricDesc rss = metric("rss", "bytes", MetricKind::gauge, "Resident memory.");
  const MetricDesc faults = metric("faults", "", MetricKind::counter, "Faults.");
  SnapshotBuilder kept;
  kept.gauge(rss, 1, {{"pid", "1"}});
  kept.counter(faults, 5, {{"pid", "1"}});
  ASSERT_NE(kept.take().find("memlens_faults_total"), std::string::npos);
  kept.counter(faults, 6, {{"pid", "1"}});
  kept.clear();  // a tick given up half way
  kept.gauge(rss, 2, {{"pid", "2"}});
  SnapshotBuilder fresh;
  fresh.gauge(rss, 2, {{"pid", "2"}});
  EXPECT_EQ(kept.take(), fresh.take());
}

// A snapshot's series are rendered when a scrape first asks, maybe after
// the descriptions they were added with are gone (a collector restarted by
// a reload); each target's values come from its base alone.
TEST(Exposition, ASetOutlivesItsDescriptionsAndKeepsEachTargetsValues) {
  std::shared_ptr<const SeriesSet> set;
  std::size_t a = 0, b = 0;
  {
    const auto faults = std::make_unique<MetricDesc>(metric("faults", "", MetricKind::counter, "Faults."));
    const auto rss = std::make_unique<MetricDesc>(metric("rss", "bytes", MetricKind::gauge, "Resident."));
    SnapshotBuilder sb;
    a = sb.base({{"target", "a"}, {"pid", "1"}});
    sb.add(MetricValue{faults.get(), {{"kind", "minor"}}, 5, {}}, a);
    sb.add(MetricValue{rss.get(), {}, 4096, {}}, a);
    b = sb.base({{"target", "b"}, {"pid", "2"}});
    sb.add(MetricValue{rss.get(), {}, 8192, {}}, b);
    sb.gauge(*rss, 1);
    set = sb.take_set();
  }
  EXPECT_EQ(set->render(),
            "# HELP memlens_faults_total Faults.\n# TYPE memlens_faults_total counter\n"
            "memlens_faults_total{target=\"a\",pid=\"1\",kind=\"minor\"} 5\n"
            "# HELP memlens_rss_bytes Resident.\n# TYPE memlens_rss_bytes gauge\n"
            "memlens_rss_bytes{target=\"a\",pid=\"1\"} 4096\nmemlens_rss_bytes{target=\"b\",pid=\"2\"} 8192\n"
            "memlens_rss_bytes 1\n");
  using Values = std::vector<std::pair<std::string, double>>;
  EXPECT_EQ(set->values(a), (Values{{"memlens_faults_total{kind=\"minor\"}", 5}, {"memlens_rss_bytes", 4096}}));
  EXPECT_EQ(set->values(b), (Values{{"memlens_rss_bytes", 8192}}));
  EXPECT_TRUE(set->values(0).empty());
  EXPECT_EQ(set->size(), 4u);
}

// A fixed label set (interned once, carried as a number) writes the same
// series as the same labels carried by copy, in the text and in a target's
// values; once the table is full a set is carried as a copy, still the same.
TEST(Exposition, FixedLabelSetsWriteWhatCopiesWrite) {
  const MetricDesc faults = metric("faults", "", MetricKind::counter, "Faults.");
  const FixedLabels minor(Labels{{"kind", "minor"}});
  ASSERT_NE(minor.id(), 0u);
  EXPECT_EQ(FixedLabels(Labels{{"kind", "minor"}}).id(), minor.id()) << "one set, one number";
  auto render = [&](const FixedLabels* fixed) {
    Sample s;
    if (fixed) s.counter(faults, 5, *fixed);
    else s.counter(faults, 5, {{"kind", "minor"}});
    SnapshotBuilder sb;
    const std::size_t base = sb.base({{"target", "a"}, {"pid", "1"}});
    s.drain([&](MetricValue&& v) { sb.add(std::move(v), base); });
    EXPECT_TRUE(s.values().empty());
    auto set = sb.take_set();
    return std::pair{set->render(), set->values(base)};
  };
  EXPECT_EQ(render(&minor), render(nullptr));
  // Fill the table: later sets are copies.
  std::vector<FixedLabels> many;
  for (uint32_t i = 0; i < FixedLabels::kMaxFixedLabels; ++i)
    many.emplace_back(Labels{{"n", std::to_string(i)}, {"fill", "table"}});
  const FixedLabels late(Labels{{"kind", "late"}, {"fill", "past"}});
  EXPECT_EQ(late.id(), 0u);
  EXPECT_EQ(late.labels(), (Labels{{"kind", "late"}, {"fill", "past"}}));
  EXPECT_EQ(FixedLabels::of(minor.id()), (Labels{{"kind", "minor"}})) << "earlier sets stay";
  Sample s;
  s.counter(faults, 1, late);
  ASSERT_EQ(s.values().size(), 1u);
  EXPECT_EQ(s.values()[0].extra(), late.labels());
}

}  // namespace
}  // namespace memlens
