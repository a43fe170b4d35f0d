// A target's history: a ring of compressed chunks (daemon/timeline_codec.h)
// in memory it is handed (a slot of the state store: memory-mapped from the
// state file, or anonymous), fixed when the target is added. The newest
// chunk takes each tick's point; when it is full the oldest chunk is
// overwritten. How many points the ring holds depends on how well they
// compress; the ring is sized for the configured window at a budget per
// point (kTimelineBytesPerPoint).
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <vector>

#include "daemon/metric.h"
#include "daemon/timeline_codec.h"

namespace memlens {

struct Point {
  double t = 0;  // seconds (CLOCK_BOOTTIME: a restart resumes the same clock)
  double v = 0;
};

class Timeline {
 public:
  // Over `ring`, owned elsewhere; only chunks written by `owner` count.
  // With `resume`, the intact chunks already there are the history (a
  // restart); the others (torn, foreign) are dropped and counted.
  // `window_seconds` (0: none) is how far back the history must reach: a
  // chunk whose points have all left it is written again before memory the
  // ring has not touched yet, so a quiet target's ring (sized for a busy
  // one) takes only the pages its window needs.
  // `tail_points` (0: none) newest points are also kept decoded, for the
  // window the leak slope reads every tick (see window()).
  Timeline(std::span<tlc::Chunk> ring, uint64_t owner, bool resume, double window_seconds = 0,
           std::size_t tail_points = 0);
  // Appends one tick; series not present in `s` are stored as NaN.
  void push(double t_seconds, const Sample& s);
  std::size_t size() const { return points_; }
  std::size_t capacity_bytes() const { return ring_.size_bytes(); }
  // Points of one series with t >= since (oldest first), NaNs skipped.
  // From the decoded tail when it holds every point since then, else
  // decoded from the chunks: the same points either way.
  std::vector<Point> window(SeriesId id, double since) const;
  // Largest value of a series over the whole ring; NaN if none.
  double max(SeriesId id) const;
  // Chunks found damaged when resuming.
  std::size_t dropped_chunks() const { return dropped_; }

 private:
  std::span<tlc::Chunk> ring_;
  uint64_t owner_;
  std::size_t cur_ = 0;       // the chunk being written
  uint64_t next_seq_ = 1;
  bool writing_ = false;      // cur_ was started by this process
  std::size_t points_ = 0;
  std::size_t dropped_ = 0;
  tlc::ChunkWriter writer_;
  // Intact chunks of this timeline, newest first.
  std::vector<std::size_t> newest_first() const;
  // The chunk to write once the current one is full, at time now_ms
  // (without one, the window is not looked at).
  std::size_t next_chunk(std::optional<int64_t> now_ms) const;
  int64_t window_ms_ = 0;
  // The newest points appended here, decoded: a ring of tail_.size(), the
  // newest at tail_next_ - 1. Decoding a chunk means decoding all of it (a
  // chunk holds a few hundred quiet points), so a one-minute window read
  // every tick cost two or three whole chunks a tick.
  struct TailPoint {
    int64_t t_ms;
    float v[kSeriesCount];
  };
  std::vector<TailPoint> tail_;
  std::size_t tail_next_ = 0, tail_count_ = 0;
  // Time of the oldest point the ring still holds (points of a chunk taken
  // over leave the tail too), and each series' largest value there: read
  // from the chunks' headers when the ring is resumed or a chunk taken
  // over, kept with each point in between.
  int64_t oldest_ms_ = std::numeric_limits<int64_t>::min();
  float max_[kSeriesCount];
  bool read_headers();  // false: no chunk holds a point
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
