// Leak sites over HTTP: a running workload that leaks from main() gets its
// outstanding blocks attributed to main's stack in
// /api/v1/targets/<name>/leaks, with the bytes it leaked since attach.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/pprof_tool.h"
#include "tests/support/support.h"
#include "tests/support/truth.h"

using namespace memlens::test;
using namespace std::chrono_literals;

TEST(LeakSites, ServedAsJsonWithTheLeakingStack) {
  if (!is_root()) GTEST_SKIP() << "eBPF needs root";
  const std::string dir = make_temp_dir();
  const std::string truth = dir + "/truth.jsonl";
  // 64 KiB/s leaked in 4 KiB blocks from main(), on top of a small churned set.
  Child w = spawn({workload_path("heapload"), "--hold", "2000000", "--churn", "2000", "--leak", "65536",
                   "--leak-block", "4096", "--truth", truth});
  ASSERT_TRUE(wait_until([&] { return !latest_truth(truth).empty(); }, 20s));
  auto d = start_daemon("global: {tick_interval: 500ms, rescan_interval: 500ms}\n"
                        "targets:\n"
                        "  - name: leaky\n"
                        "    pid: " + std::to_string(w.pid()) + "\n"
                        "    alloc: {mode: full, leak_sites: true}\n"
                        "  - name: plain\n"
                        "    self: true\n");
  ASSERT_TRUE(d);
  REQUIRE_COLLECTOR(d, "alloc");

  const double leaked0 = latest_truth(truth)["leaked_bytes"].get<double>();
  nlohmann::json doc;
  ASSERT_TRUE(wait_until([&] {
    auto r = http_get(d->url("/api/v1/targets/leaky/leaks"));
    if (r.status != 200) return false;
    doc = nlohmann::json::parse(r.body, nullptr, false);
    if (doc.is_discarded() || !doc.value("available", false)) return false;
    // A capture with the leak in it: the churned set alone can be that
    // big at the first capture, a moment after attach.
    for (const auto& p : doc["processes"]) {
      if (p["pid"] != w.pid() || p["outstanding_bytes"].get<double>() <= 5 * 65536) continue;
      for (const auto& site : p["sites"])
        if (!site["stack"].empty() && site["stack"][0].get<std::string>().rfind("main+", 0) == 0) return true;
    }
    return false;
  }, 40s)) << doc.dump(2) << "\n" << d->log();
  const double leaked = latest_truth(truth)["leaked_bytes"].get<double>() - leaked0;

  const nlohmann::json* proc = nullptr;
  for (const auto& p : doc["processes"])
    if (p["pid"] == w.pid()) proc = &p;
  ASSERT_NE(proc, nullptr);
  const auto& sites = (*proc)["sites"];
  ASSERT_FALSE(sites.empty());
  // The leak is the site allocating straight from main(); the churned set,
  // replaced since attach, is outstanding too, under replace_one().
  const nlohmann::json* leak = nullptr;
  bool churn_seen = false;
  for (const auto& site : sites) {
    const std::string first = site["stack"].empty() ? "" : site["stack"][0].get<std::string>();
    if (first.rfind("main+", 0) == 0) leak = &site;
    churn_seen |= first.rfind("replace_one+", 0) == 0;
  }
  ASSERT_NE(leak, nullptr) << sites.dump(2);
  EXPECT_TRUE(churn_seen) << sites.dump(2);
  const auto& top = *leak;
  const double top_bytes = top["bytes"].get<double>();
  // Every leaked block is 4 KiB: 4096 requested, 4112 as a glibc chunk
  // (header mode counts the chunk, as the live heap does).
  const double per_block = top["bytes"].get<double>() / top["blocks"].get<double>();
  EXPECT_TRUE(per_block == 4096 || per_block == 4112) << per_block;
  // Outstanding leaked bytes since attach: at most what the workload leaked
  // since (it leaked before attach too), and most of it.
  EXPECT_LE(top["bytes"].get<double>(), leaked + 2 * 65536);
  EXPECT_GE(top["bytes"].get<double>(), 0.5 * leaked);

  // The same capture as a pprof profile, every site: go tool pprof reads it,
  // names both call sites, and holds at least the JSON's top sites' bytes.
  auto prof = http_get(d->url("/debug/pprof/heap?target=leaky"));
  ASSERT_EQ(prof.status, 200) << prof.body;
  write_text(dir + "/leaks.pb.gz", prof.body);
  const std::string listing = pprof(dir, "-top " + dir + "/leaks.pb.gz");
  EXPECT_NE(listing.find(" main\n"), std::string::npos) << listing;
  EXPECT_NE(listing.find(" replace_one\n"), std::string::npos) << listing;
  EXPECT_GE(raw_totals(pprof(dir, "-raw " + dir + "/leaks.pb.gz")).inuse_space, 0.5 * top_bytes) << listing;
  // Never as metric labels: no series carries a stack or a symbol.
  for (const auto& sample : d->scrape())
    for (const auto& [k, v] : sample.labels) EXPECT_EQ(v.find("main+"), std::string::npos) << sample.name;

  // A target without capture, and an unknown one: 404 with a reason.
  auto plain = http_get(d->url("/api/v1/targets/plain/leaks"));
  EXPECT_EQ(plain.status, 404);
  EXPECT_NE(plain.body.find("leak_sites"), std::string::npos) << plain.body;
  auto unknown = http_get(d->url("/api/v1/targets/nope/leaks"));
  EXPECT_EQ(unknown.status, 404);
  EXPECT_NE(unknown.body.find("no such target"), std::string::npos) << unknown.body;
}

// Symbol names are whatever bytes a binary holds: a target whose symbols
// are not UTF-8 used to abort memlensd when its leak sites were served.
TEST(LeakSites, SymbolsThatAreNotUtf8AreServedReplaced) {
  if (!is_root()) GTEST_SKIP() << "eBPF needs root";
  const std::string dir = make_temp_dir();
  const std::string exe = dir + "/badsyms";
  std::string out;
  ASSERT_EQ(run("objcopy --redefine-sym \"main=$(printf 'main\\377\\376')\" --redefine-sym "
                "\"replace_one=$(printf '\\355\\240\\200x')\" " + workload_path("heapload") + " " + exe, &out), 0)
      << out;
  Child w = spawn({exe, "--hold", "200000", "--churn", "500", "--leak", "65536", "--leak-block", "4096",
                   "--truth", dir + "/truth.jsonl"});
  auto d = start_daemon("global: {tick_interval: 500ms, rescan_interval: 500ms}\n"
                        "targets:\n"
                        "  - name: bad\n"
                        "    pid: " + std::to_string(w.pid()) + "\n"
                        "    alloc: {mode: full, leak_sites: true}\n");
  ASSERT_TRUE(d);
  nlohmann::json doc;
  ASSERT_TRUE(wait_until([&] {
    auto r = http_get(d->url("/api/v1/targets/bad/leaks"));
    doc = nlohmann::json::parse(r.body, nullptr, false);
    if (r.status != 200 || doc.is_discarded()) return false;
    for (const auto& p : doc.value("processes", nlohmann::json::array()))
      for (const auto& site : p["sites"])
        if (!site["stack"].empty() && site["stack"][0].get<std::string>().rfind("main\xEF\xBF\xBD", 0) == 0)
          return true;
    return false;
  }, 40s)) << doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n" << d->log();
  // Several scrapes later it is still there to answer.
  std::this_thread::sleep_for(2s);
  EXPECT_TRUE(d->child.running());
  EXPECT_EQ(http_get(d->url("/api/v1/targets/bad/leaks")).status, 200);
}
