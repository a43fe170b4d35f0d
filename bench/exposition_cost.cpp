// What the exposition costs, per published snapshot (once a tick, on the
// collection thread) and per scrape (on the HTTP thread), for snapshots of
// 10, 100 and 1000 targets shaped like memlensd's (~20 series per target).
// Prints a Markdown table; bench/exposition.sh runs it.
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "daemon/http_util.h"
#include "daemon/metric.h"
#include "daemon/snapshot.h"

using namespace memlens;
using Clock = std::chrono::steady_clock;

namespace {

const std::vector<MetricDesc>& descs() {
  static std::vector<MetricDesc> d;
  if (d.empty())
    for (int i = 0; i < 20; ++i)
      d.push_back(metric("bench_series_" + std::to_string(i), "bytes", MetricKind::gauge, "A series of the bench."));
  return d;
}

// One tick's exposition as memlensd makes it: the values gathered into a
// series set (at the tick), then rendered (by the first scrape).
std::shared_ptr<const SeriesSet> tick_set(int targets) {
  SnapshotBuilder b;
  for (int t = 0; t < targets; ++t) {
    const std::size_t base = b.base({{"target", "bench"}, {"pid", std::to_string(100000 + t)}});
    for (const auto& d : descs()) b.add(MetricValue{&d, {}, 1e6 + t * 4096.0 + 0.5, {}}, base);
  }
  return b.take_set();
}

// The same as it was written before: prometheus-cpp's families, then its
// serializer.
std::string families_text(int targets) {
  std::map<std::string, prometheus::MetricFamily> fams;
  for (int t = 0; t < targets; ++t)
    for (const auto& d : descs()) {
      auto& f = fams[d.name];
      f.name = d.name;
      f.help = d.help;
      f.type = prometheus::MetricType::Gauge;
      auto& m = f.metric.emplace_back();
      m.label = {{"target", "bench"}, {"pid", std::to_string(100000 + t)}};
      m.gauge.value = 1e6 + t * 4096.0 + 0.5;
    }
  std::vector<prometheus::MetricFamily> v;
  for (auto& [n, f] : fams) v.push_back(std::move(f));
  return prometheus::TextSerializer().Serialize(v);
}

// Median of `reps` runs of f, in milliseconds.
template <class F>
double median_ms(int reps, F f) {
  std::vector<double> v;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    v.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main() {
  std::printf("| targets | series | text KiB | gzip KiB | gather per tick ms | render ms (per snapshot, first scrape) | "
              "before: prometheus-cpp families ms | gzip ms (per snapshot, first gzip scrape) | scrape ms, plain | "
              "scrape ms, gzip |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  const prometheus::TextSerializer ser;
  for (int n : {10, 100, 1000}) {
    std::string text, before_text;
    // Interleaved, so both see the same machine.
    std::vector<double> now_ms, render_ms, before_ms;
    for (int i = 0; i < 21; ++i) {
      std::shared_ptr<const SeriesSet> set;
      now_ms.push_back(median_ms(1, [&] { set = tick_set(n); }));
      render_ms.push_back(median_ms(1, [&] { text = set->render(); }));
      before_ms.push_back(median_ms(1, [&] { before_text = families_text(n); }));
    }
    for (auto* v : {&now_ms, &render_ms, &before_ms}) std::sort(v->begin(), v->end());
    if (text != before_text) {
      std::fprintf(stderr, "exposition_cost: the two texts differ at %d targets\n", n);
      return 1;
    }
    GzipHead head;
    const double gzip = median_ms(11, [&] { head = gzip_start(text); });
    // A scrape: the tail families serialised, plus the gzip splice.
    std::vector<prometheus::MetricFamily> tail(8);
    for (std::size_t i = 0; i < tail.size(); ++i) {
      tail[i].name = "memlens_tail_" + std::to_string(i);
      tail[i].help = "Tail.";
      tail[i].type = prometheus::MetricType::Counter;
      tail[i].metric.emplace_back().counter.value = 42;
    }
    std::string tail_text, spliced;
    const double plain = median_ms(201, [&] { tail_text = ser.Serialize(tail); });
    const double gz = median_ms(201, [&] { spliced = gzip_finish(head, ser.Serialize(tail)); });
    std::printf("| %d | %d | %zu | %zu | %.2f | %.2f | %.2f | %.2f | %.3f | %.3f |\n", n, n * 20, text.size() / 1024,
                (head.bytes.size() + spliced.size()) / 1024, now_ms[now_ms.size() / 2],
                render_ms[render_ms.size() / 2], before_ms[before_ms.size() / 2], gzip, plain, gz);
  }
  return 0;
}
