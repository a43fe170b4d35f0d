#include "daemon/budget.h"

#include <cmath>

namespace memlens {

const BudgetMetrics& budget_metrics() {
  static const BudgetMetrics m{
      metric("budget", "bytes", MetricKind::gauge,
             "Budget of a target (config budgets:) by resource, in bytes: rss, heap, peak, shared_buffers, "
             "connection_memory, temp_files, bundle, renderer_memory."),
      metric("budget", "bytes_per_second", MetricKind::gauge,
             "Budget of a target (config budgets:) by resource, in bytes per second: alloc_rate, leak (0 unless "
             "set, once a target has a budgets block: no leak allowed)."),
      metric("budget", "seconds", MetricKind::gauge,
             "Budget of a target (config budgets:) by resource, in seconds: gc_pause_p99."),
      metric("budget_ratio", "", MetricKind::gauge,
             "Budget of a target (config budgets:) by resource, as a ratio 0..1: fragmentation."),
      metric("heap", "bytes", MetricKind::gauge,
             "The best heap figure memlensd has for the target, the one its heap budget is held against; "
             "label source: live (exact, allocation tracing), v8 (V8's heap used at its last collection's "
             "end), allocator (in-use bytes from the allocator's books), jvm (JVM heap used, hsperfdata) or "
             "anon (resident anonymous memory)."),
      metric("budget_breach", "seconds", MetricKind::gauge,
             "Predicted time until the resource crosses the target's budget at its current trend (Theil-Sen "
             "slope over global.breach_window); absent when the resource is not growing or already over."),
      metric("budget_breach_confidence", "", MetricKind::gauge,
             "Confidence of the trend behind memlens_budget_breach_seconds: 0 no trend, 1 every pair of points "
             "agrees."),
  };
  return m;
}

const MetricDesc& BudgetMetrics::of(BudgetUnit u) const {
  switch (u) {
    case BudgetUnit::bytes: return bytes;
    case BudgetUnit::bytes_per_second: return bytes_per_second;
    case BudgetUnit::seconds: return seconds;
    case BudgetUnit::ratio: return ratio;
  }
  return bytes;
}

std::optional<double> sample_value(const Sample& s, std::string_view name) {
  for (const auto& v : s.values())
    if (v.desc->kind == MetricKind::gauge && v.desc->name == name) return v.value;
  return std::nullopt;
}

std::optional<HeapFigure> best_heap(const Sample& s) {
  if (auto v = sample_value(s, "memlens_heap_live_bytes")) return HeapFigure{*v, "live"};
  // A Node process's objects live in V8's pages, not in malloc's books
  // (which hold only its native memory): V8's heap first.
  if (auto v = sample_value(s, "memlens_v8_heap_used_bytes")) return HeapFigure{*v, "v8"};
  if (auto v = sample_value(s, "memlens_allocator_inuse_bytes")) return HeapFigure{*v, "allocator"};
  // The JVM exports one gauge per heap space: the heap is their sum.
  double jvm = 0;
  bool have_jvm = false;
  for (const auto& v : s.values())
    if (v.desc->name == "memlens_jvm_heap_used_bytes") {
      jvm += v.value;
      have_jvm = true;
    }
  if (have_jvm) return HeapFigure{jvm, "jvm"};
  if (auto v = sample_value(s, "memlens_anon_bytes")) return HeapFigure{*v, "anon"};
  return std::nullopt;
}

std::optional<double> breach_seconds(double budget, double current, const SlopeFit& fit) {
  if (!(fit.slope > 0) || !std::isfinite(fit.slope) || !(current < budget)) return std::nullopt;
  return (budget - current) / fit.slope;
}

}  // namespace memlens
