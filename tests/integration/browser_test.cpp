// A real headless Chromium (Debian `chromium`) on a local page whose
// JavaScript retains 64 KiB every 250 ms and logs what it holds (the browser
// process writes the page's console to its log): memlensd, watching the
// browser process only, finds its zygotes, renderers and helpers by type;
// exactly one renderer leaks, at the page's rate, holding what the page
// holds, and the idle ones (headless's own UI, a spare) do not.
#include <gtest/gtest.h>
#include <unistd.h>

#include <regex>
#include <sstream>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

struct Retained {
  std::vector<std::pair<double, double>> points;  // (seconds, bytes the page holds)
};

// "[29353:29353:1203/225113.854643:INFO:CONSOLE:12] "memlens-retained 1796338273853 262144", ..."
Retained page_log(const std::string& path) {
  static const std::regex line(R"("memlens-retained (\d+) (\d+)\")");
  Retained r;
  std::istringstream in(read_text(path));
  std::smatch m;
  for (std::string l; std::getline(in, l);)
    if (std::regex_search(l, m, line)) r.points.emplace_back(std::stod(m[1].str()) / 1e3, std::stod(m[2].str()));
  return r;
}

}  // namespace

TEST(Browser, RenderersOfAHeadlessChromiumAndTheLeakOfAPage) {
  ASSERT_TRUE(is_root()) << "reads other processes' smaps_rollup";
  const std::string chromium = "/usr/lib/chromium/chromium";
  ASSERT_EQ(access(chromium.c_str(), X_OK), 0) << "Debian package chromium (scripts/deps.sh)";
  const std::string dir = make_temp_dir("memlens-browser");
  const std::string log = dir + "/chromium.log";
  Child browser = spawn({chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                         "--v=0", "--user-data-dir=" + dir + "/profile",
                         "file://" + std::string(MEMLENS_SOURCE_DIR) + "/tests/workloads/renderer_leak.html"},
                        log);
  auto d = start_daemon("global: {tick_interval: 1s, smaps_interval: 1s, leak_window: 30s}\n"
                        "targets:\n"
                        "  - {name: web, pid: " + std::to_string(browser.pid()) + "}\n");
  ASSERT_TRUE(d);
  const std::map<std::string, std::string> of{{"target", "web"}, {"pid", std::to_string(browser.pid())}};
  auto with = [&](std::map<std::string, std::string> l, const std::string& k, const std::string& v) {
    l[k] = v;
    return l;
  };
  ASSERT_TRUE(wait_until([&] { return page_log(log).points.size() >= 3; }, 30s)) << read_text(log);
  std::vector<PromSample> s;
  Retained truth;
  // The renderers' slopes, by renderer pid.
  auto slopes = [&] {
    std::map<std::string, double> out;
    for (const auto& x : s)
      if (x.name == "memlens_renderer_leak_slope_bytes_per_second" && x.labels.count("renderer"))
        out[x.labels.at("renderer")] = x.value;
    return out;
  };
  // 30 s of the page's leak: the window the slope is taken over.
  ASSERT_TRUE(wait_until([&] {
    truth = page_log(log);
    s = d->scrape();
    return truth.points.back().first - truth.points.front().first >= 32 && !slopes().empty();
  }, 60s, 500ms)) << d->log();

  EXPECT_EQ(find_sample(s, "memlens_browser_processes", with(of, "type", "browser")), 1.0);
  EXPECT_GE(find_sample(s, "memlens_browser_processes", with(of, "type", "zygote")).value_or(0), 1.0);
  EXPECT_GE(find_sample(s, "memlens_browser_processes", with(of, "type", "renderer")).value_or(0), 1.0);
  EXPECT_GE(find_sample(s, "memlens_browser_processes", with(of, "type", "utility")).value_or(0), 1.0);
  EXPECT_EQ(find_sample(s, "memlens_browser_v8_heap_available", with(of, "reason", "no_symbols")), 0.0)
      << "Debian's chromium has no symbols for V8's heap";
  // The page's renderer: the one that leaks. Its slope is the page's rate,
  // its memory holds what the page retains.
  const double t0 = truth.points.front().first, t1 = truth.points.back().first;
  const double rate = (truth.points.back().second - truth.points.front().second) / (t1 - t0);
  const double held = truth.points.back().second;
  std::string leaking;
  for (const auto& [pid, slope] : slopes()) {
    std::printf("renderer %s: slope %.0f B/s, memory %.0f B\n", pid.c_str(), slope,
                find_sample(s, "memlens_renderer_memory_bytes", with(of, "renderer", pid)).value_or(-1));
    if (slope > rate * 0.1) {
      EXPECT_TRUE(leaking.empty()) << "two renderers leak: " << leaking << " and " << pid;
      leaking = pid;
    }
  }
  ASSERT_FALSE(leaking.empty()) << "no renderer leaks";
  const auto r = with(of, "renderer", leaking);
  const double memory = find_sample(s, "memlens_renderer_memory_bytes", r).value_or(0);
  const double slope = find_sample(s, "memlens_renderer_leak_slope_bytes_per_second", r).value_or(0);
  std::printf("the page's renderer %s: memory %.0f B (the page holds %.0f B); slope %.0f B/s (the page's %.0f B/s), "
              "confidence %.2f\n",
              leaking.c_str(), memory, held, slope, rate,
              find_sample(s, "memlens_renderer_leak_slope_confidence", r).value_or(-1));
  EXPECT_GE(memory, held) << "the renderer's private memory holds the page's buffers";
  EXPECT_LE(memory, held + (256 << 20)) << "and not much else";
  EXPECT_NEAR(slope, rate, rate * 0.1) << "leak slope of the page's renderer";
  EXPECT_GT(find_sample(s, "memlens_renderer_leak_slope_confidence", r).value_or(0), 0.8);
  EXPECT_GE(find_sample(s, "memlens_browser_private_bytes", with(of, "type", "renderer")).value_or(0), memory);
}
