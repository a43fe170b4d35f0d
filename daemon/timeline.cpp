#include "daemon/timeline.h"

#include <algorithm>
#include <cmath>
#include <limits>


namespace memlens {

Timeline::Timeline(std::span<tlc::Chunk> ring, uint64_t owner, bool resume, double window_seconds,
                   std::size_t tail_points)
    : ring_(ring), owner_(owner), window_ms_(static_cast<int64_t>(std::max(0.0, window_seconds) * 1000)) {
  tail_.resize(tail_points);
  std::fill(std::begin(max_), std::end(max_), std::numeric_limits<float>::quiet_NaN());
  if (!resume) return;
  uint64_t newest = 0;
  for (std::size_t i = 0; i < ring_.size(); ++i) {
    const auto& h = ring_[i].h;
    if (h.seq == 0 || h.owner != owner_) continue;
    if (!tlc::valid(ring_[i])) {
      ring_[i].h.seq = 0;  // dropped: only this chunk's points are lost
      ++dropped_;
      continue;
    }
    points_ += h.points;
    if (h.seq >= newest) {
      newest = h.seq;
      cur_ = i;
    }
  }
  next_seq_ = newest + 1;
  read_headers();
  // The next point starts a new chunk (the writer's state of the newest is
  // gone with the old process): one not written yet, else the oldest.
  if (newest) cur_ = next_chunk(std::nullopt);
}

void Timeline::push(double t_seconds, const Sample& s) {
  if (ring_.empty()) return;
  float v[kSeriesCount];
  for (std::size_t i = 0; i < kSeriesCount; ++i) {
    const auto id = static_cast<SeriesId>(i);
    v[i] = s.has_series(id) ? static_cast<float>(s.series_value(id)) : std::numeric_limits<float>::quiet_NaN();
  }
  const auto t_ms = static_cast<int64_t>(std::llround(t_seconds * 1000));
  for (int attempt = 0; attempt < 2; ++attempt) {
    tlc::Chunk& c = ring_[cur_];
    if (!writing_) {
      // Taking over the slot's oldest chunk: its points leave the ring.
      const bool had_points = c.h.seq != 0 && c.h.owner == owner_ && c.h.points > 0;
      if (had_points) points_ -= std::min<std::size_t>(points_, c.h.points);
      writer_.start(c, next_seq_++, owner_);
      writing_ = true;
      // With no other chunk left, the ring starts again at this point.
      if (had_points && !read_headers()) oldest_ms_ = t_ms;
    }
    if (writer_.append(c, t_ms, v)) {
      ++points_;
      for (std::size_t i = 0; i < kSeriesCount; ++i)
        if (!std::isnan(v[i]) && (std::isnan(max_[i]) || v[i] > max_[i])) max_[i] = v[i];
      if (!tail_.empty()) {
        TailPoint& p = tail_[tail_next_];
        p.t_ms = t_ms;
        std::copy(std::begin(v), std::end(v), std::begin(p.v));
        tail_next_ = (tail_next_ + 1) % tail_.size();
        tail_count_ = std::min(tail_count_ + 1, tail_.size());
      }
      return;
    }
    cur_ = next_chunk(t_ms);
    writing_ = false;
  }
}

std::size_t Timeline::next_chunk(std::optional<int64_t> now_ms) const {
  const auto order = newest_first();
  // The oldest chunk's points have all left the window once the chunk
  // after it began before the window did: write it again.
  if (now_ms && window_ms_ > 0 && order.size() >= 2 &&
      ring_[order[order.size() - 2]].h.first_ms <= *now_ms - window_ms_)
    return order.back();
  // Else a chunk nobody wrote (or another owner's, left over), in ring order.
  for (std::size_t k = 1; k <= ring_.size(); ++k) {
    const std::size_t i = (cur_ + k) % ring_.size();
    if (ring_[i].h.seq == 0 || ring_[i].h.owner != owner_) return i;
  }
  // The ring is full of the window: the oldest goes.
  return order.empty() ? (cur_ + 1) % ring_.size() : order.back();
}

bool Timeline::read_headers() {
  // Each chunk keeps its own maxima: no decoding (the chunks were checked
  // when resumed, or written here).
  oldest_ms_ = std::numeric_limits<int64_t>::min();  // none: nothing to leave out
  std::fill(std::begin(max_), std::end(max_), std::numeric_limits<float>::quiet_NaN());
  bool any = false;
  for (const auto& c : ring_) {
    if (c.h.seq == 0 || c.h.owner != owner_ || c.h.points == 0) continue;
    oldest_ms_ = any ? std::min(oldest_ms_, c.h.first_ms) : c.h.first_ms;
    any = true;
    for (std::size_t k = 0; k < kSeriesCount; ++k)
      if (!std::isnan(c.h.max[k]) && (std::isnan(max_[k]) || c.h.max[k] > max_[k])) max_[k] = c.h.max[k];
  }
  return any;
}

std::vector<std::size_t> Timeline::newest_first() const {
  std::vector<std::size_t> idx;
  for (std::size_t i = 0; i < ring_.size(); ++i)
    if (ring_[i].h.seq != 0 && ring_[i].h.owner == owner_) idx.push_back(i);
  std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return ring_[a].h.seq > ring_[b].h.seq; });
  return idx;
}

std::vector<Point> Timeline::window(SeriesId id, double since) const {
  const auto k = static_cast<std::size_t>(id);
  const auto since_ms = static_cast<int64_t>(std::floor(since * 1000));
  const std::size_t first = (tail_next_ + tail_.size() - tail_count_) % std::max<std::size_t>(tail_.size(), 1);
  // The tail holds every point since `since` when its oldest is older, or
  // when it holds every point the ring does.
  if (tail_count_ > 0 && (tail_[first].t_ms < since_ms || tail_count_ >= points_)) {
    std::vector<Point> out;
    out.reserve(tail_count_);
    const int64_t from = std::max(since_ms, oldest_ms_);
    for (std::size_t n = 0, i = first; n < tail_count_; ++n, i = (i + 1) % tail_.size()) {
      const TailPoint& p = tail_[i];
      if (p.t_ms < from || std::isnan(p.v[k])) continue;
      out.push_back(Point{static_cast<double>(p.t_ms) / 1000, static_cast<double>(p.v[k])});
    }
    return out;
  }
  // Newest chunks first, until one starts before `since`: a window of the
  // last minute decodes two or three chunks, not the ring.
  std::vector<std::vector<tlc::DecodedPoint>> parts;
  for (std::size_t i : newest_first()) {
    std::vector<tlc::DecodedPoint> pts;
    if (!tlc::decode(ring_[i], pts)) continue;
    parts.push_back(std::move(pts));
    if (ring_[i].h.first_ms < since_ms) break;
  }
  std::vector<Point> out;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it)
    for (const auto& p : *it) {
      if (p.t_ms < since_ms || std::isnan(p.v[k])) continue;
      out.push_back(Point{static_cast<double>(p.t_ms) / 1000, static_cast<double>(p.v[k])});
    }
  return out;
}

double Timeline::max(SeriesId id) const { return max_[static_cast<std::size_t>(id)]; }

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
  // A flat window (an idle process's series) has every pairwise slope 0:
  // the fit is 0 with no confidence, known without the O(n^2) pairs.
  if (std::all_of(pts.begin(), pts.end(), [&](const Point& p) { return p.v == pts.front().v; })) return fit;
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
