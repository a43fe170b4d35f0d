// The timeline pages as a person sees them: headless Chromium (Debian's
// `chromium`) opens / and /targets/<name> of a memlensd watching a workload
// that leaks at a known rate toward its heap budget. What Chromium parsed
// (its DOM) must show the workload's own figures, and what it drew (a
// screenshot) must hold the heap line, the budget line and the trend to it.
#include <gtest/gtest.h>

#include <regex>
#include <thread>

#include "tests/support/png.h"
#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono;
using namespace std::chrono_literals;

namespace {

// Chromium, headless, on one URL: its DOM (`--dump-dom`) or a screenshot.
struct Browser {
  std::string dir = make_temp_dir("memlens-chromium");
  std::string run_on(const std::string& flags, const std::string& url) const {
    std::string out;
    const int rc = run("timeout 90 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars "
                       "--no-first-run --user-data-dir=" + dir + " " + flags + " '" + url + "' 2>/dev/null",
                       &out);
    EXPECT_EQ(rc, 0) << "chromium " << flags << " " << url << ": " << out;
    return out;
  }
  std::string dom(const std::string& url) const { return run_on("--dump-dom", url); }
  std::optional<Image> screenshot(const std::string& url, const std::string& png, const std::string& size) const {
    run_on("--window-size=" + size + " --screenshot=" + png, url);
    return read_png(png);
  }
  ~Browser() { run("rm -rf " + dir); }
};

// The number in an attribute of the first element that carries it after `from`.
std::optional<double> attribute(const std::string& html, const std::string& name, std::size_t from) {
  const std::string key = name + "=\"";
  const auto at = html.find(key, from);
  if (at == std::string::npos) return std::nullopt;
  return std::stod(html.substr(at + key.size()));
}

}  // namespace

TEST(TimelinePage, ChromiumShowsTheLeakItsBudgetAndItsBreach) {
  ASSERT_EQ(run("command -v chromium"), 0) << "chromium is missing (Debian package chromium, in scripts/deps.sh)";
  ASSERT_TRUE(is_root()) << "the heap figure is read from the allocator's books with process_vm_readv: run as root";
  const double leak_rate = 65536, budget = 64.0 * (1 << 20);
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/leak.jsonl";
  Child leaky = spawn({workload_path("heapload"), "--hold", std::to_string(32 << 20), "--churn", "2000", "--leak",
                       std::to_string(leak_rate), "--leak-after", "2", "--truth", truth});
  auto d = start_daemon(
      "global: {tick_interval: 1s, rescan_interval: 1s, timeline_window: 10m, leak_window: 30s, breach_window: 30s}\n"
      "targets:\n"
      "  - name: leaky\n"
      "    pid: " + std::to_string(leaky.pid()) + "\n"
      "    budgets: {heap: 64MiB}\n");
  ASSERT_TRUE(d);
  ASSERT_TRUE(wait_until([&] { return latest_truth(truth).value("leaking", false); }, 30s));
  const auto leak_start = steady_clock::now();
  const auto first = latest_truth(truth);

  // Nobody has looked yet: the first request asks for the page and gets one
  // that reloads itself.
  auto r = http_get(d->url("/"));
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("reloads in a second"), std::string::npos) << r.body;
  http_get(d->url("/targets/leaky"));

  // Half a minute into the leak the slope and the breach are known.
  std::this_thread::sleep_until(leak_start + 32s);
  ASSERT_TRUE(wait_until([&] {
    r = http_get(d->url("/"));
    return r.body.find("data-breach-seconds") != std::string::npos;
  }, 20s)) << r.body << d->log();

  Browser browser;
  const std::string dom = browser.dom(d->url("/"));
  const auto t = latest_truth(truth);
  const auto row = dom.find("data-target=\"leaky\"");
  ASSERT_NE(row, std::string::npos) << dom;
  const auto heap = attribute(dom, "data-heap-bytes", row);
  const auto slope = attribute(dom, "data-slope", row);
  const auto breach = attribute(dom, "data-breach-seconds", row);
  ASSERT_TRUE(heap && slope && breach) << dom;
  // The workload's own books (mallinfo2: in use = uordblks + hblkhd) and rate.
  const double in_use = t["uordblks"].get<double>() + t["hblkhd"].get<double>();
  const double rate = (t["leaked_bytes"].get<double>() - first["leaked_bytes"].get<double>()) /
                      (t["time"].get<double>() - first["time"].get<double>());
  const double true_breach = (budget - in_use) / rate;
  std::printf("page: heap %.0f B (workload %.0f), slope %.0f B/s (workload %.0f), breach in %.0f s (true %.0f s)\n",
              *heap, in_use, *slope, rate, *breach, true_breach);
  // The page is redrawn every 5 s: up to 5 s of leak (320 KiB) behind.
  EXPECT_NEAR(*heap, in_use, 0.03 * in_use);
  EXPECT_NEAR(*slope, rate, 0.1 * rate);
  EXPECT_NEAR(*breach, true_breach, 0.2 * true_breach);
  EXPECT_EQ(count_of(dom, "<svg"), 1u) << "one chart per target";
  EXPECT_NE(dom.find("<polyline data-series=\"heap\""), std::string::npos);
  EXPECT_NE(dom.find("<line data-series=\"budget\""), std::string::npos) << "a 64 MiB budget over a ~35 MiB heap";
  EXPECT_NE(dom.find("data-series=\"trend\""), std::string::npos);
  // The heap line holds at least ~25 points (a minute of ticks, decimated
  // to the chart's columns).
  const auto pl = dom.find("<polyline data-series=\"heap\"");
  const auto pts = dom.substr(pl, dom.find("\"", dom.find("points=\"", pl) + 8) - pl);
  EXPECT_GE(count_of(pts, ","), 25u) << pts;

  // What it drew: the heap's blue, the budget's red and the trend's orange
  // (each also in the key above the table: 42 pixels).
  const auto shot = browser.screenshot(d->url("/"), dir + "/overview.png", "1400,400");
  ASSERT_TRUE(shot) << "no readable screenshot";
  const std::size_t blue = shot->count_near(0x1f, 0x77, 0xb4, 30), red = shot->count_near(0xd6, 0x27, 0x28, 30),
                    orange = shot->count_near(0xff, 0x7f, 0x0e, 30);
  std::printf("screenshot %ux%u: heap %zu, budget %zu, trend %zu pixels\n", shot->width, shot->height, blue, red, orange);
  EXPECT_GE(blue, 42u + 100) << "the heap line";
  EXPECT_GE(red, 42u + 100) << "the budget line";
  EXPECT_GE(orange, 42u + 20) << "the trend and the breach";

  // The target's own page: every series, read by Chromium too.
  ASSERT_TRUE(wait_until([&] {
    return http_get(d->url("/targets/leaky")).body.find("every series now") != std::string::npos;
  }, 15s));
  const std::string detail = browser.dom(d->url("/targets/leaky"));
  EXPECT_EQ(count_of(detail, "<svg"), 2u) << detail;
  for (const char* s : {"heap", "rss", "anon"})
    EXPECT_NE(detail.find(std::string("<polyline data-series=\"") + s + "\""), std::string::npos) << s;
  for (const char* series : {"memlens_allocator_inuse_bytes", "memlens_heap_bytes", "memlens_leak_slope_bytes_per_second",
                             "memlens_budget_breach_seconds", "memlens_rss_bytes"})
    EXPECT_NE(detail.find(series), std::string::npos) << series;
  const auto dshot = browser.screenshot(d->url("/targets/leaky"), dir + "/detail.png", "1000,1400");
  ASSERT_TRUE(dshot);
  EXPECT_GE(dshot->count_near(0x1f, 0x77, 0xb4, 30), 42u + 250) << "the heap line, 900 px wide";

  // A target that is not watched is a 404, not a page drawn on demand.
  EXPECT_EQ(http_get(d->url("/targets/nothing-here")).status, 404);
  EXPECT_TRUE(d->child.running()) << d->log();
  if (const char* keep = std::getenv("MEMLENS_SCREENSHOTS")) run("cp " + dir + "/*.png " + keep);
  run("rm -rf " + dir);
}
