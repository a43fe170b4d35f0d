// What the exposition costs, per published snapshot (once a tick, on the
// collection thread) and per scrape (on the HTTP thread), for snapshots of
// 10, 100 and 1000 targets shaped like memlensd's (~20 series per target).
// Prints a Markdown table; bench/exposition.sh runs it.
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "daemon/http_util.h"
#include "daemon/metric.h"
#include "daemon/snapshot.h"

using namespace memlens;
using Clock = std::chrono::steady_clock;

namespace {

std::vector<prometheus::MetricFamily> families(int targets) {
  static std::vector<MetricDesc> descs;
  if (descs.empty())
    for (int i = 0; i < 20; ++i)
      descs.push_back(metric("bench_series_" + std::to_string(i), "bytes", MetricKind::gauge, "A series of the bench."));
  SnapshotBuilder b;
  for (int t = 0; t < targets; ++t)
    for (const auto& d : descs)
      b.gauge(d, 1e6 + t * 4096.0 + 0.5, {{"target", "bench"}, {"pid", std::to_string(100000 + t)}});
  return b.take();
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
  std::printf("| targets | series | text KiB | gzip KiB | serialise ms (per tick) | gzip ms (per snapshot, first gzip scrape) "
              "| scrape ms, plain | scrape ms, gzip | before: serialise per scrape ms |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  const prometheus::TextSerializer ser;
  for (int n : {10, 100, 1000}) {
    const auto fams = families(n);
    std::string text;
    const double serialise = median_ms(21, [&] { text = ser.Serialize(fams); });
    GzipHead head;
    const double gzip = median_ms(11, [&] { head = gzip_start(text); });
    // A scrape now: the tail families serialised, plus the gzip splice.
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
    // Before: every scrape copied the families and serialised them all.
    const double before = median_ms(21, [&] {
      auto copy = fams;
      text = ser.Serialize(copy);
    });
    std::size_t series = 0;
    for (const auto& f : fams) series += f.metric.size();
    std::printf("| %d | %zu | %zu | %zu | %.2f | %.2f | %.3f | %.3f | %.2f |\n", n, series, text.size() / 1024,
                (head.bytes.size() + spliced.size()) / 1024, serialise, gzip, plain, gz, before);
  }
  return 0;
}
