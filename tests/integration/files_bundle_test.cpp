// A files target on the real memlensd: a front-end build's output written
// by the test in a temporary directory, its files' sizes and gzip sizes and
// the initial bundle compared exactly with what the test wrote and with
// zlib's gzip stream of the same bytes; then a rebuild (a new hashed entry,
// a chunk rewritten larger, a vendor file deleted) seen within a couple of
// rescans, the deleted files' series gone, and nothing read again while
// nothing changes. Needs no root.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// Minified-looking code: compressible, not trivially.
std::string code(std::size_t n, unsigned seed) {
  std::string s;
  uint32_t x = seed * 2654435761u + 1;
  while (s.size() < n) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    s += "function f" + std::to_string(x % 5000) + "(a,b){return a" + "+-*/"[x % 4] + "b*" +
         std::to_string(x % 977) + "}";
  }
  s.resize(n);
  return s;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST(FilesBundle, SizesGzipSizesBundleAndRebuild) {
  const std::string dir = make_temp_dir("memlens-files-bundle");
  const std::string dist = dir + "/dist";
  fs::create_directories(dist + "/assets/chunks");
  std::map<std::string, std::string> wrote;  // path -> bytes
  auto put = [&](const std::string& rel, std::string bytes) {
    write_text(dist + rel, bytes);
    wrote[dist + rel] = std::move(bytes);
  };
  put("/index-3f9a1c.js", code(180000, 1));
  put("/vendor-77be02.js", code(240000, 2));
  put("/index-3f9a1c.css", code(30000, 3));
  put("/assets/chunks/settings-1d2e.js", code(60000, 4));
  put("/assets/chunks/report-9c8b.js", code(45000, 5));
  write_text(dist + "/index.html", "<!doctype html>");  // matched by no pattern
  fs::create_symlink("loop-b.js", dist + "/loop-a.js");  // a link loop: counted, never a crash
  fs::create_symlink("loop-a.js", dist + "/loop-b.js");

  const std::string yaml =
      "global: {tick_interval: 250ms, rescan_interval: 500ms}\n"
      "targets:\n"
      "  - name: web-bundle\n"
      "    files:\n"
      "      paths: [\"" + dist + "/**/*.js\", \"" + dist + "/**/*.css\"]\n"
      "      entry: [\"" + dist + "/index-*.js\", \"" + dist + "/vendor-*.js\", \"" + dist + "/index-*.css\"]\n"
      "    budgets: {bundle: 500KB}\n";
  auto d = start_daemon(yaml);
  ASSERT_TRUE(d);
  const std::map<std::string, std::string> web{{"target", "web-bundle"}};
  auto of_file = [](const std::string& path) {
    return std::map<std::string, std::string>{{"target", "web-bundle"}, {"file", path}};
  };
  auto bundle = [&](const std::vector<PromSample>& s, const char* enc) {
    return find_sample(s, "memlens_bundle_bytes", {{"target", "web-bundle"}, {"encoding", enc}});
  };
  auto entry_sum = [&](bool gz) {
    uint64_t sum = 0;
    for (const auto& [path, bytes] : wrote)
      if (path.find("/assets/") == std::string::npos) sum += gz ? zlib_gzip_size(bytes) : bytes.size();
    return sum;
  };

  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_files_matched", web) == 5 && bundle(s, "gzip").has_value();
  }, 10s)) << d->log();
  for (const auto& [path, bytes] : wrote) {
    EXPECT_EQ(find_sample(s, "memlens_file_size_bytes", of_file(path)), bytes.size()) << path;
    EXPECT_EQ(find_sample(s, "memlens_file_gzip_size_bytes", of_file(path)), zlib_gzip_size(bytes)) << path;
  }
  EXPECT_EQ(bundle(s, "identity"), entry_sum(false));
  EXPECT_EQ(bundle(s, "gzip"), entry_sum(true));
  EXPECT_EQ(find_sample(s, "memlens_bundle_files", web), 3);
  EXPECT_EQ(find_sample(s, "memlens_budget_bytes", {{"target", "web-bundle"}, {"resource", "bundle"}}), 500e3);
  EXPECT_EQ(find_sample(s, "memlens_files_dropped", web), 0);
  EXPECT_GE(find_sample(s, "memlens_files_errors_total", {{"target", "web-bundle"}, {"reason", "loop"}}).value_or(0),
            2);
  EXPECT_FALSE(find_sample(s, "memlens_targets_watched", web)) << "a files target is no process";
  std::printf("bundle: %.0f B identity, %.0f B gzip (3 entry files); 5 files, %.0f B read\n",
              *bundle(s, "identity"), *bundle(s, "gzip"),
              find_sample(s, "memlens_files_read_bytes_total", web).value_or(-1));

  // The JSON views and the page still answer; the files target has its own.
  EXPECT_EQ(http_get(d->url("/api/v1/targets")).status, 200);
  EXPECT_EQ(http_get(d->url("/")).status, 200);
  const auto page = http_get(d->url("/targets/web-bundle"));
  EXPECT_EQ(page.status, 404);
  EXPECT_NE(page.body.find("/api/v1/targets/web-bundle/files"), std::string::npos) << page.body;
  auto doc = nlohmann::json::parse(http_get(d->url("/api/v1/targets/web-bundle/files")).body, nullptr, false);
  ASSERT_FALSE(doc.is_discarded());
  EXPECT_EQ(doc["files"].size(), 5u);
  EXPECT_EQ(doc["bundle"]["bytes"].get<uint64_t>(), entry_sum(false));

  // Nothing changes: nothing is read again, over several rescans.
  const double read0 = find_sample(s, "memlens_files_read_bytes_total", web).value_or(-1);
  std::this_thread::sleep_for(1500ms);
  s = d->scrape();
  EXPECT_EQ(find_sample(s, "memlens_files_read_bytes_total", web), read0);

  // A rebuild: a new hashed index (the old one deleted), a chunk rewritten
  // larger in place, the vendor file gone.
  const auto t0 = std::chrono::steady_clock::now();
  const std::string old_index = dist + "/index-3f9a1c.js", vendor = dist + "/vendor-77be02.js";
  put("/index-5e6f70.js", code(260000, 6));
  fs::remove(old_index);
  wrote.erase(old_index);
  fs::remove(vendor);
  wrote.erase(vendor);
  put("/assets/chunks/settings-1d2e.js", code(90000, 7));
  const uint64_t want = entry_sum(false), want_gz = entry_sum(true);
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return bundle(s, "identity") == want && bundle(s, "gzip") == want_gz &&
           find_sample(s, "memlens_file_gzip_size_bytes", of_file(dist + "/assets/chunks/settings-1d2e.js")) ==
               zlib_gzip_size(wrote[dist + "/assets/chunks/settings-1d2e.js"]);
  }, 5s)) << "bundle " << bundle(s, "identity").value_or(-1) << " want " << want;
  const double seen = seconds_since(t0);
  std::printf("rebuild seen after %.2f s (rescan 500 ms, tick 250 ms): bundle %llu B, gzip %llu B\n", seen,
              static_cast<unsigned long long>(want), static_cast<unsigned long long>(want_gz));
  EXPECT_LT(seen, 2.5) << "within a couple of rescans";
  EXPECT_FALSE(find_sample(s, "memlens_file_size_bytes", of_file(old_index))) << "a deleted file's series goes";
  EXPECT_FALSE(find_sample(s, "memlens_file_gzip_size_bytes", of_file(vendor)));
  EXPECT_EQ(find_sample(s, "memlens_files_matched", web), 4);
  EXPECT_EQ(find_sample(s, "memlens_bundle_files", web), 2);
  for (const auto& [path, bytes] : wrote) {
    EXPECT_EQ(find_sample(s, "memlens_file_size_bytes", of_file(path)), bytes.size()) << path;
    EXPECT_EQ(find_sample(s, "memlens_file_gzip_size_bytes", of_file(path)), zlib_gzip_size(bytes)) << path;
  }
  std::printf("files collector: %.3f ms in the last tick\n",
              1e3 * find_sample(s, "memlens_collector_duration_seconds", {{"collector", "files"}}).value_or(-1));

  EXPECT_GE(d->child.stop(SIGTERM, 5s), 0);
  fs::remove_all(dir);
}
