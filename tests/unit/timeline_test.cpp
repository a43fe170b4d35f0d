#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>

#include "daemon/timeline.h"

using namespace memlens;

namespace {
Sample with(double rss, double heap) {
  Sample s;
  s.series(SeriesId::rss, rss);
  s.series(SeriesId::heap, heap);
  return s;
}
}  // namespace

namespace {
// A ring of `chunks` chunks in ordinary memory, as the state store hands out.
struct Ring {
  explicit Ring(std::size_t chunks) : mem(chunks) {}
  std::span<tlc::Chunk> span() { return mem; }
  std::vector<tlc::Chunk> mem;
};
}  // namespace

TEST(Timeline, RingKeepsTheNewestPointsExactly) {
  Ring r(4);
  Timeline tl(r.span(), 1, false);
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> pages(0, 50);
  // 10,000 ticks of a busy series: the ring keeps the newest, every value
  // and time exact (floats, as before compression).
  std::vector<std::pair<double, float>> truth;
  for (int i = 0; i < 10000; ++i) {
    const double t = 1000 + i * 1.0 + (i % 3) * 0.001;  // a tick with ms jitter
    const float v = static_cast<float>(64e6 + 4096.0 * pages(rng));
    tl.push(t, with(v, v / 2));
    truth.push_back({t, v});
  }
  auto w = tl.window(SeriesId::rss, 0);
  ASSERT_EQ(w.size(), tl.size());
  ASSERT_GT(w.size(), 100u);
  for (std::size_t k = 0; k < w.size(); ++k) {
    const auto& [t, v] = truth[truth.size() - w.size() + k];
    EXPECT_NEAR(w[k].t, t, 0.0005);
    EXPECT_EQ(w[k].v, v);
  }
  EXPECT_EQ(w.back().t, truth.back().first);
  // A window keeps only points at or after `since`.
  EXPECT_EQ(tl.window(SeriesId::heap, truth.back().first - 9.5).size(), 10u);
}

// The window the leak slope reads every tick comes from the decoded tail;
// it must be the very points the chunks give, including when the ring has
// taken over chunks the tail still remembers, and with NaNs (series absent).
TEST(Timeline, TheDecodedTailGivesTheSamePointsAsTheChunks) {
  for (std::size_t chunks : {1u, 2u, 3u, 16u}) {
    Ring r(chunks);
    Timeline tl(r.span(), 7, false, 0, 64);
    std::mt19937 rng(static_cast<unsigned>(chunks));
    std::uniform_real_distribution<double> noise(0, 1e6);
    for (int i = 0; i < 3000; ++i) {
      const double t = 500 + i + (i % 7) * 0.001;
      Sample s;
      // Noisy: a chunk holds fewer points than the tail.
      if (i % 11 != 0) s.series(SeriesId::rss, 8e6 + noise(rng));
      if (i % 5 != 0) s.series(SeriesId::heap, i < 1500 ? 1e6 : 1e6 + i);   // flat, then rising
      tl.push(t, s);
      if (i % 37 != 0) continue;
      // A copy of the ring resumed: nothing decoded, every window from chunks.
      Ring copy(chunks);
      copy.mem = r.mem;
      Timeline decoded(copy.span(), 7, true);
      for (SeriesId id : {SeriesId::rss, SeriesId::heap, SeriesId::anon}) {  // the kept maxima too
        const double a = tl.max(id), b = decoded.max(id);
        ASSERT_TRUE((std::isnan(a) && std::isnan(b)) || a == b) << a << " vs " << b << " tick " << i;
      }
      for (double back : {0.0, 10.0, 60.5, 63.0, 80.0, 1e6}) {
        for (SeriesId id : {SeriesId::rss, SeriesId::heap, SeriesId::anon}) {
          const auto a = tl.window(id, t - back);
          const auto b = decoded.window(id, t - back);
          ASSERT_EQ(a.size(), b.size()) << "chunks " << chunks << " tick " << i << " back " << back;
          for (std::size_t k = 0; k < a.size(); ++k) {
            ASSERT_EQ(a[k].t, b[k].t);
            ASSERT_EQ(a[k].v, b[k].v);
          }
        }
      }
    }
    // What the tail answers is read from it, not from the chunks: with the
    // chunks' bytes gone, the last minute is still there.
    const double now = 500 + 2999 + (2999 % 7) * 0.001;
    const auto before = tl.window(SeriesId::heap, now - 60);
    ASSERT_GE(before.size(), 40u);
    for (auto& c : r.mem) std::fill(std::begin(c.payload), std::end(c.payload), uint8_t{0xff});
    EXPECT_EQ(tl.window(SeriesId::heap, now - 60).size(), before.size());
  }
}

TEST(Timeline, QuietSeriesCompressWell) {
  // A target whose memory barely moves: a 1 h window at 1 s in ~2 KiB.
  Ring r(64);
  Timeline tl(r.span(), 1, false);
  for (int i = 0; i < 3600; ++i) tl.push(i, with(10e6 + (i % 600 == 0 ? 4096 : 0) * (i / 600), 5e6));
  EXPECT_EQ(tl.size(), 3600u);
  std::size_t used = 0;
  for (const auto& c : r.mem) used += c.h.seq ? c.h.bits : 0;
  EXPECT_LT(used / 8.0 / 3600, 1.5) << "bytes per point (3 series and a time)";
}

// A ring sized for a busy target (64 chunks) holding a quiet one for 6 h
// with a 1 h window: once the oldest chunk's points have all left the
// window it is written again, so the ring touches only the chunks an hour
// needs (the pages behind the others are never faulted in) and still holds
// the whole window, exact. A busy series keeps the whole ring, as before.
TEST(Timeline, AQuietTargetReusesChunksThatLeftTheWindow) {
  Ring r(64);
  Timeline tl(r.span(), 1, false, 3600);
  for (int i = 0; i < 6 * 3600; ++i) tl.push(i, with(10e6 + 4096.0 * (i / 600), 5e6));
  std::size_t touched = 0;
  for (const auto& c : r.mem) touched += c.h.seq ? 1 : 0;
  const auto w = tl.window(SeriesId::rss, 6 * 3600 - 3600);
  std::printf("6 h of a quiet target, 1 h window: %zu of 64 chunks written, %zu points held\n", touched, tl.size());
  EXPECT_LE(touched, 16u);
  ASSERT_EQ(w.size(), 3600u) << "the last hour, every point";
  EXPECT_EQ(w.back().v, static_cast<float>(10e6 + 4096.0 * ((6 * 3600 - 1) / 600)));
  EXPECT_EQ(w.front().t, 6 * 3600 - 3600);
  // A restart over that ring (chunks no longer in ring order) resumes it and
  // writes on without overwriting any of the window.
  // Bursts of churn now and then make the ring take chunks it had not
  // written while the oldest is still in the window, so that the chunks
  // are no longer in ring order; restarts land anywhere in that.
  std::mt19937 noise(3);
  std::uniform_int_distribution<int> noisy(0, 1 << 20);
  for (int restart = 0, t = 6 * 3600; restart < 40; ++restart) {
    Timeline back(r.span(), 1, true, 3600);
    const int at = t;
    for (; t < at + 950; ++t) {
      const bool burst = (t / 950) % 5 == 0 && t % 950 < 300;
      back.push(t, with(burst ? 4096.0 * noisy(noise) : 10e6, 5e6));
    }
    ASSERT_EQ(back.window(SeriesId::rss, t - 3600).size(), 3600u) << "after a restart at " << at;
  }

  Ring busy(8);
  Timeline tb(busy.span(), 1, false, 3600);
  std::mt19937 rng(2);
  std::uniform_int_distribution<int> pages(0, 1 << 20);
  for (int i = 0; i < 2000; ++i) {
    const float v = static_cast<float>(4096.0 * pages(rng));
    tb.push(i, with(v, v));
  }
  std::size_t written = 0;
  for (const auto& c : busy.mem) written += c.h.seq ? 1 : 0;
  EXPECT_EQ(written, 8u) << "a busy series within its window uses every chunk";
  EXPECT_EQ(tb.window(SeriesId::rss, 0).size(), tb.size());
}

TEST(Timeline, MissingSeriesAreSkipped) {
  Ring r(2);
  Timeline tl(r.span(), 1, false);
  Sample only_rss;
  only_rss.series(SeriesId::rss, 5);
  tl.push(0, only_rss);
  tl.push(1, with(6, 7));
  EXPECT_EQ(tl.window(SeriesId::heap, 0).size(), 1u);
  EXPECT_EQ(tl.window(SeriesId::rss, 0).size(), 2u);
  Ring empty(2);
  EXPECT_TRUE(std::isnan(Timeline(empty.span(), 1, false).max(SeriesId::rss)));
  EXPECT_EQ(tl.max(SeriesId::rss), 6);
}

TEST(Timeline, ResumesIntactChunksAndDropsOnlyDamagedOnes) {
  Ring r(16);
  {
    Timeline tl(r.span(), 7, false);
    for (int i = 0; i < 2000; ++i) tl.push(i, with(1e6 + i * 4096.0, i));
  }
  // Another generation's chunk in the ring is not ours.
  r.mem[0].h.owner = 99;
  // A chunk torn mid-write (a crash, a bad sector).
  r.mem[5].payload[3] ^= 0x40;
  Timeline back(r.span(), 7, true);
  EXPECT_EQ(back.dropped_chunks(), 1u);
  auto w = back.window(SeriesId::heap, 0);
  EXPECT_EQ(w.size(), back.size());
  EXPECT_GT(w.size(), 500u);
  for (std::size_t k = 1; k < w.size(); ++k) EXPECT_GT(w[k].t, w[k - 1].t);
  EXPECT_EQ(w.back().v, 1999);
  // It goes on from there.
  back.push(2000, with(0, 2000));
  EXPECT_EQ(back.window(SeriesId::heap, 1999.5).back().v, 2000);
}

TEST(TimelineCodec, ExtremesRoundTrip) {
  tlc::Chunk c{};
  tlc::ChunkWriter w;
  w.start(c, 1, 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float vals[][kSeriesCount] = {{0, nan, 1}, {3.4e38f, -0.0f, 1}, {1e-38f, 7, 1}, {nan, nan, nan}};
  const int64_t times[] = {-5, 1'000'000'000'000, 1'000'000'000'001, 999'999'999'000};  // big jumps, back in time
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(w.append(c, times[i], vals[i]));
  std::vector<tlc::DecodedPoint> out;
  ASSERT_TRUE(tlc::decode(c, out));
  ASSERT_EQ(out.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(out[i].t_ms, times[i]);
    for (std::size_t k = 0; k < kSeriesCount; ++k)
      EXPECT_EQ(std::bit_cast<uint32_t>(out[i].v[k]), std::bit_cast<uint32_t>(vals[i][k]));
  }
  EXPECT_EQ(c.h.max[0], 3.4e38f);
  // A full chunk refuses the point and stays intact.
  int n = 4;
  float noisy[kSeriesCount];
  std::mt19937 rng(3);
  while (true) {
    for (auto& v : noisy) v = std::bit_cast<float>(static_cast<uint32_t>(rng() & 0x7f7fffff));
    if (!w.append(c, 1'000'000'000'000 + n * 1000, noisy)) break;
    ++n;
  }
  EXPECT_TRUE(tlc::valid(c));
  out.clear();
  ASSERT_TRUE(tlc::decode(c, out));
  EXPECT_EQ(static_cast<int>(out.size()), n);
  c.h.points += 1;  // counts that lie
  EXPECT_FALSE(tlc::decode(c, out));
}

TEST(TheilSen, ExactOnALine) {
  std::vector<Point> p;
  for (int i = 0; i < 60; ++i) p.push_back({double(i), 1000 + 10240.0 * i});
  auto f = theil_sen(p);
  EXPECT_DOUBLE_EQ(f.slope, 10240);
  EXPECT_DOUBLE_EQ(f.confidence, 1);
}

TEST(TheilSen, RobustToOutliersAndSteps) {
  std::mt19937 rng(7);
  std::normal_distribution<double> noise(0, 200e3);  // 200 KB churn noise
  std::vector<Point> p;
  for (int i = 0; i < 60; ++i) p.push_back({double(i), 64e6 + 10240.0 * i + noise(rng)});
  p[10].v += 50e6;  // a transient spike (e.g. a burst freed a second later)
  p[40].v -= 30e6;
  auto f = theil_sen(p);
  EXPECT_NEAR(f.slope, 10240, 1024);
}

TEST(TheilSen, FlatPageGranularSeriesHasNoSlopeNoConfidence) {
  std::vector<Point> p;
  for (int i = 0; i < 60; ++i) p.push_back({double(i), 70e6 + (i % 7 == 0 ? 4096 : 0)});
  auto f = theil_sen(p);
  EXPECT_EQ(f.slope, 0);
  EXPECT_EQ(f.confidence, 0);
}

TEST(TheilSen, FlatWindowAndOneThatMovesAtItsEnd) {
  std::vector<Point> p;
  for (int i = 0; i < 120; ++i) p.push_back({double(i), 5e6});
  auto f = theil_sen(p);
  EXPECT_EQ(f.points, 120u);
  EXPECT_EQ(f.slope, 0);
  EXPECT_EQ(f.confidence, 0);
  // Not flat once any point differs: the pairs decide.
  for (int i = 80; i < 120; ++i) p[i].v += 4096.0 * (i - 79);
  f = theil_sen(p);
  EXPECT_GE(f.slope, 0);
  EXPECT_GT(f.confidence, 0);
  p.back().v = 5e6 + 1;
  for (int i = 80; i < 119; ++i) p[i].v = 5e6;
  f = theil_sen(p);
  EXPECT_EQ(f.slope, 0);  // one point off a flat line: median of pairs still 0
  EXPECT_EQ(f.points, 120u);
}

TEST(TheilSen, PureNoiseHasLowConfidence) {
  std::mt19937 rng(11);
  std::normal_distribution<double> noise(0, 100e3);
  std::vector<Point> p;
  for (int i = 0; i < 60; ++i) p.push_back({double(i), 50e6 + noise(rng)});
  auto f = theil_sen(p);
  EXPECT_LT(std::abs(f.slope), 5000);
  EXPECT_LT(f.confidence, 0.3);
}

TEST(TheilSen, DecimatesLongWindows) {
  std::vector<Point> p;
  for (int i = 0; i < 3600; ++i) p.push_back({double(i), 3.0 * i});
  auto f = theil_sen(p, 100);
  EXPECT_EQ(f.points, 100u);
  EXPECT_DOUBLE_EQ(f.slope, 3);
}

TEST(TheilSen, TooFewPoints) {
  EXPECT_EQ(theil_sen({{0, 1}, {1, 2}}).points, 2u);
  EXPECT_EQ(theil_sen({{0, 1}, {1, 2}}).slope, 0);
  EXPECT_EQ(theil_sen({{1, 1}, {1, 2}, {1, 3}}).slope, 0);  // no time spread
}
