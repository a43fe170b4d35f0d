#include "daemon/timeline.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "daemon/config.h"

namespace memlens {

// config.cpp bounds the timelines' memory with this figure.
static_assert(sizeof(double) + sizeof(float) * kSeriesCount == kTimelineBytesPerPoint);

Timeline::Timeline(std::size_t capacity)
    : capacity_(std::max<std::size_t>(capacity, 2)), t_(new double[capacity_]) {
  // new[] without value-initialisation: pages are touched as the ring fills.
  for (auto& v : v_) v.reset(new float[capacity_]);
}

void Timeline::push(double t_seconds, const Sample& s) {
  t_[head_] = t_seconds;
  for (std::size_t i = 0; i < kSeriesCount; ++i) {
    const auto id = static_cast<SeriesId>(i);
    v_[i][head_] = s.has_series(id) ? static_cast<float>(s.series_value(id))
                                    : std::numeric_limits<float>::quiet_NaN();
  }
  head_ = (head_ + 1) % capacity_;
  size_ = std::min(size_ + 1, capacity_);
}

std::vector<Point> Timeline::window(SeriesId id, double since) const {
  std::vector<Point> out;
  const auto& v = v_[static_cast<std::size_t>(id)];
  for (std::size_t k = 0; k < size_; ++k) {
    std::size_t i = (head_ + capacity_ - size_ + k) % capacity_;
    if (t_[i] < since || std::isnan(v[i])) continue;
    out.push_back(Point{t_[i], static_cast<double>(v[i])});
  }
  return out;
}

double Timeline::max(SeriesId id) const {
  const auto& v = v_[static_cast<std::size_t>(id)];
  double m = std::numeric_limits<double>::quiet_NaN();
  for (std::size_t k = 0; k < size_; ++k) {
    std::size_t i = (head_ + capacity_ - size_ + k) % capacity_;
    if (!std::isnan(v[i]) && (std::isnan(m) || v[i] > m)) m = v[i];
  }
  return m;
}

SlopeFit theil_sen(const std::vector<Point>& all, std::size_t max_points) {
  SlopeFit fit;
  std::vector<Point> pts;
  if (all.size() > max_points && max_points >= 2) {
    // Even decimation keeps the first and last points.
    pts.reserve(max_points);
    for (std::size_t k = 0; k < max_points; ++k)
      pts.push_back(all[k * (all.size() - 1) / (max_points - 1)]);
  } else {
    pts = all;
  }
  fit.points = pts.size();
  if (pts.size() < 3) return fit;
  std::vector<double> slopes;
  slopes.reserve(pts.size() * (pts.size() - 1) / 2);
  for (std::size_t i = 0; i < pts.size(); ++i)
    for (std::size_t j = i + 1; j < pts.size(); ++j) {
      double dt = pts[j].t - pts[i].t;
      if (dt > 1e-9) slopes.push_back((pts[j].v - pts[i].v) / dt);
    }
  if (slopes.empty()) return fit;
  auto mid = slopes.begin() + static_cast<std::ptrdiff_t>(slopes.size() / 2);
  std::nth_element(slopes.begin(), mid, slopes.end());
  double median = *mid;
  if (slopes.size() % 2 == 0) {
    double lower = *std::max_element(slopes.begin(), mid);
    median = (median + lower) / 2;
  }
  fit.slope = median;
  // Zero slopes (flat steps of a page-granular series) count half each way.
  double agree = 0;
  for (double s : slopes) {
    if (s == 0) agree += 0.5;
    else if ((s > 0) == (median > 0)) agree += 1;
  }
  double p = agree / static_cast<double>(slopes.size());
  fit.confidence = median == 0 ? 0 : std::clamp(2 * p - 1, 0.0, 1.0);
  return fit;
}

}  // namespace memlens
