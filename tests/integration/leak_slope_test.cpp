// The leak slope on real workloads: one leaks 10 KiB/s on top of steady
// churn, one churns the same way without leaking. Ground truth is what each
// workload reports it leaked.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <thread>

#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono;
using namespace std::chrono_literals;

TEST(LeakSlope, FindsTheLeakWithin60sAndNoFalseLeak) {
  // The no-leak soak lasts 5 minutes (MEMLENS_SOAK_SECONDS shortens it when
  // iterating by hand).
  const double soak = std::getenv("MEMLENS_SOAK_SECONDS") ? std::atof(std::getenv("MEMLENS_SOAK_SECONDS")) : 300;
  const double leak_rate = 10240;  // bytes per second
  const std::string dir = make_temp_dir();
  const std::string leak_truth = dir + "/leak.jsonl", steady_truth = dir + "/steady.jsonl";
  // Leaking starts 15 s in, so the window first holds flat history. The
  // leaked blocks (16 KiB) are larger than the churned ones (0.5-8 KiB): the
  // /proc series sees a leak as growth of resident memory, and small leaked
  // blocks first fill the allocator's free holes, showing up late (with
  // allocation tracing the slope runs on live bytes and sees them at once).
  Child leaky = spawn({workload_path("heapload"), "--hold", std::to_string(32 << 20), "--leak",
                       std::to_string(leak_rate), "--leak-after", "15", "--leak-block", "16384", "--truth", leak_truth});
  Child steady = spawn({workload_path("heapload"), "--hold", std::to_string(32 << 20), "--truth", steady_truth});
  auto d = start_daemon(
      "global: {tick_interval: 1s, rescan_interval: 1s, timeline_window: 10m, leak_window: 60s}\n"
      "targets:\n"
      "  - name: leaky\n"
      "    pid: " + std::to_string(leaky.pid()) + "\n"
      "  - name: steady\n"
      "    pid: " + std::to_string(steady.pid()) + "\n");
  ASSERT_TRUE(d);

  // 1. The leak starts when the workload says so.
  ASSERT_TRUE(wait_until([&] { return latest_truth(leak_truth).value("leaking", false); }, 40s));
  const auto leak_start = steady_clock::now();
  const double leaked0 = latest_truth(leak_truth)["leaked_bytes"].get<double>();
  const double t0 = latest_truth(leak_truth)["time"].get<double>();

  // 2. Within 60 s it is reported at the true rate, +-10%.
  std::this_thread::sleep_until(leak_start + 58s);
  bool found = false;
  double slope = 0, conf = 0, truth_rate = 0;
  while (steady_clock::now() < leak_start + 62s && !found) {
    auto s = d->scrape();
    auto t = latest_truth(leak_truth);
    truth_rate = (t["leaked_bytes"].get<double>() - leaked0) / (t["time"].get<double>() - t0);
    slope = find_sample(s, "memlens_leak_slope_bytes_per_second", {{"target", "leaky"}}).value_or(NAN);
    conf = find_sample(s, "memlens_leak_slope_confidence", {{"target", "leaky"}}).value_or(NAN);
    found = std::abs(slope - truth_rate) <= 0.1 * truth_rate;
    std::this_thread::sleep_for(500ms);
  }
  EXPECT_TRUE(found) << "slope " << slope << " B/s vs the workload's own " << truth_rate << " B/s";
  EXPECT_NEAR(truth_rate, leak_rate, 0.02 * leak_rate) << "the workload leaks at the rate asked";
  EXPECT_GT(conf, 0.5) << "a steady leak is reported with confidence";

  // 3. The steady workload never shows a leak: its slope stays within
  // noise, a tenth of the leak rate, over the whole soak.
  double worst = 0;
  int samples = 0;
  const auto soak_end = steady_clock::now() + duration<double>(std::max(0.0, soak - 75));
  do {
    auto s = d->scrape();
    auto v = find_sample(s, "memlens_leak_slope_bytes_per_second", {{"target", "steady"}});
    ASSERT_TRUE(v) << "no slope for the steady target; steady workload running: " << steady.running()
                   << "\n" << d->log();
    worst = std::max(worst, std::abs(*v));
    ++samples;
    // The leaky one keeps being found meanwhile.
    auto l = find_sample(s, "memlens_leak_slope_bytes_per_second", {{"target", "leaky"}});
    ASSERT_TRUE(l);
    EXPECT_NEAR(*l, leak_rate, 0.1 * leak_rate) << "the leak is still found " << duration<double>(steady_clock::now() - leak_start).count() << " s in";
    std::this_thread::sleep_for(5s);
  } while (steady_clock::now() < soak_end);
  EXPECT_LT(worst, 0.1 * leak_rate) << "false leak on the steady workload (worst |slope| " << worst << " B/s over "
                                    << samples << " scrapes)";
  std::printf("steady workload: worst |slope| %.0f B/s over %d scrapes; leaky: truth %.0f B/s\n", worst, samples,
              truth_rate);
}
