// Budgets (`budgets:` in a target's entry): the figures they are held
// against and when one will be crossed at the current trend. The budgets
// themselves are exported per (target, resource) like kube-state-metrics'
// limits; the alert rules (deploy/prometheus) join usage to them.
#pragma once

#include <optional>

#include "daemon/config.h"
#include "daemon/metric.h"
#include "daemon/timeline.h"

namespace memlens {

// The best heap figure memlensd has for a target this tick, and its source:
// "live" (exact live bytes from allocation tracing), else "v8" (V8's heap used
// at its last collection's end, Node), else "allocator" (in-use
// bytes from the allocator's own books), else "jvm" (the JVM heap from
// hsperfdata, all spaces), else "anon" (resident anonymous memory).
struct HeapFigure {
  double bytes = 0;
  const char* source = "";
};
std::optional<HeapFigure> best_heap(const Sample& s);

// The value of the first gauge of a sample with that full name.
std::optional<double> sample_value(const Sample& s, std::string_view name);

// Seconds until `current` reaches `budget` at the fitted slope; none when
// the series is not growing or is already at or over the budget.
std::optional<double> breach_seconds(double budget, double current, const SlopeFit& fit);

struct BudgetMetrics {
  MetricDesc bytes, bytes_per_second, seconds, ratio;
  MetricDesc heap;
  MetricDesc breach, breach_confidence;
  const MetricDesc& of(BudgetUnit u) const;
};
const BudgetMetrics& budget_metrics();

}  // namespace memlens
