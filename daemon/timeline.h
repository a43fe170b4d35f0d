// Fixed-size ring buffers per (target, series). All memory is allocated when
// the target is added: points x (8 + 4 x kSeriesCount) bytes per target.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "daemon/metric.h"

namespace memlens {

struct Point {
  double t = 0;  // seconds (monotonic)
  double v = 0;
};

class Timeline {
 public:
  explicit Timeline(std::size_t capacity);
  // Appends one tick; series not present in `s` are stored as NaN.
  void push(double t_seconds, const Sample& s);
  std::size_t size() const { return size_; }
  std::size_t capacity() const { return capacity_; }
  // Points of one series with t >= since (oldest first), NaNs skipped.
  std::vector<Point> window(SeriesId id, double since) const;
  // Largest value of a series over the whole ring; NaN if none.
  double max(SeriesId id) const;
  static std::size_t bytes_per_point() { return sizeof(double) + sizeof(float) * kSeriesCount; }

 private:
  std::size_t capacity_;
  std::size_t head_ = 0;  // next slot to write
  std::size_t size_ = 0;
  std::unique_ptr<double[]> t_;
  // Values as float: exact to the byte below 16 MiB, to 64 B at 1 GiB,
  // far below the noise of any memory series.
  std::unique_ptr<float[]> v_[kSeriesCount];
};

// Robust slope of a series: Theil-Sen (median of pairwise slopes), with a
// confidence in [0, 1]: how consistently the pairwise slopes agree on the
// sign of the median (|2p - 1|, p the share of slopes with that sign).
struct SlopeFit {
  double slope = 0;       // units per second
  double confidence = 0;  // 0: no trend, 1: every pair agrees
  std::size_t points = 0;
};
// At most `max_points` (evenly decimated) enter the O(n^2) estimator.
SlopeFit theil_sen(const std::vector<Point>& pts, std::size_t max_points = 120);

}  // namespace memlens
