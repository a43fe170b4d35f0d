#include <gtest/gtest.h>

#include <cmath>
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

TEST(Timeline, RingKeepsTheNewestCapacityPoints) {
  Timeline tl(5);
  for (int i = 0; i < 12; ++i) tl.push(i, with(i * 10, i));
  EXPECT_EQ(tl.size(), 5u);
  auto w = tl.window(SeriesId::heap, -1);
  ASSERT_EQ(w.size(), 5u);
  EXPECT_EQ(w.front().t, 7);
  EXPECT_EQ(w.back().t, 11);
  EXPECT_EQ(tl.max(SeriesId::rss), 110);
  // A window keeps only points at or after `since`.
  EXPECT_EQ(tl.window(SeriesId::heap, 10).size(), 2u);
}

TEST(Timeline, MissingSeriesAreSkipped) {
  Timeline tl(4);
  Sample only_rss;
  only_rss.series(SeriesId::rss, 5);
  tl.push(0, only_rss);
  tl.push(1, with(6, 7));
  EXPECT_EQ(tl.window(SeriesId::heap, 0).size(), 1u);
  EXPECT_EQ(tl.window(SeriesId::rss, 0).size(), 2u);
  EXPECT_TRUE(std::isnan(Timeline(3).max(SeriesId::rss)));
}

TEST(Timeline, MemoryIsFixedUpFront) {
  EXPECT_EQ(Timeline::bytes_per_point(), 8u + 4u * kSeriesCount);
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
