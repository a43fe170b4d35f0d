// The daemon as an operator meets it: flags, config errors, reloads, bad
// HTTP requests, unreadable and malformed /proc files, running unprivileged.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

TEST(Flags, VersionHelpUnknown) {
  std::string out;
  EXPECT_EQ(run(memlensd_path() + " --version", &out), 0);
  EXPECT_NE(out.find("memlensd version"), std::string::npos) << out;
  EXPECT_EQ(run(memlensd_path() + " --help", &out), 0);
  EXPECT_NE(out.find("--web.listen-address"), std::string::npos);
  EXPECT_EQ(run(memlensd_path() + " --no-such-flag", &out), 2);
  EXPECT_NE(out.find("unknown flag"), std::string::npos) << out;
  EXPECT_EQ(run(memlensd_path() + " --log.level=loud --check-config", &out), 2) << out;
}

TEST(Flags, CheckConfig) {
  const std::string dir = make_temp_dir();
  std::string out;
  EXPECT_EQ(run(memlensd_path() + " --check-config", &out), 0) << out;
  EXPECT_NE(out.find("<embedded default>: OK"), std::string::npos) << out;
  write_text(dir + "/bad.yaml", "targets:\n  - name: a\n    comm: x\n    pidd: 3\n");
  EXPECT_EQ(run(memlensd_path() + " --check-config --config.file=" + dir + "/bad.yaml", &out), 2);
  EXPECT_NE(out.find(dir + "/bad.yaml:4:5: targets[0].pidd: unknown field"), std::string::npos) << out;
  // The daemon refuses to start on it the same way.
  EXPECT_EQ(run(memlensd_path() + " --config.file=" + dir + "/bad.yaml", &out), 2);
  EXPECT_NE(out.find("targets[0].pidd"), std::string::npos) << out;
  EXPECT_EQ(run(memlensd_path() + " --config.file=" + dir + "/missing.yaml", &out), 2);
  EXPECT_NE(out.find("missing.yaml: cannot open"), std::string::npos) << out;
}

TEST(Flags, ListenAddressTakenIsAClearError) {
  auto d = start_daemon("targets: [{name: me, self: true}]\n");
  ASSERT_TRUE(d);
  std::string out;
  EXPECT_EQ(run(memlensd_path() + " --web.listen-address=127.0.0.1:" + std::to_string(d->port), &out), 1);
  EXPECT_NE(out.find("cannot listen on 127.0.0.1:" + std::to_string(d->port)), std::string::npos) << out;
  EXPECT_EQ(run(memlensd_path() + " --web.listen-address=nonsense", &out), 2) << out;
}

TEST(Reload, GoodReloadAppliesBadReloadKeepsRunningConfig) {
  const std::string dir = make_temp_dir();
  Child w = spawn({workload_path("heapload"), "--hold", "1000000", "--churn", "10", "--truth", dir + "/t"});
  auto d = start_daemon("global: {tick_interval: 200ms, rescan_interval: 200ms}\ntargets: [{name: me, self: true}]\n");
  ASSERT_TRUE(d);
  const std::string wp = std::to_string(w.pid());
  EXPECT_FALSE(find_sample(d->scrape(), "memlens_rss_bytes", {{"pid", wp}}));

  write_text(d->config_path, "global: {tick_interval: 200ms, rescan_interval: 200ms}\n"
                             "targets: [{name: me, self: true}, {name: work, pid: " + wp + "}]\n");
  ::kill(d->child.pid(), SIGHUP);
  ASSERT_TRUE(wait_until([&] { return find_sample(d->scrape(), "memlens_rss_bytes", {{"target", "work"}, {"pid", wp}}).has_value(); }, 5s))
      << d->log();
  EXPECT_EQ(find_sample(d->scrape(), "memlens_config_reloads_total", {{"result", "success"}}).value_or(0), 1);

  write_text(d->config_path, "targets:\n  - name: [broken\n");
  ::kill(d->child.pid(), SIGHUP);
  ASSERT_TRUE(wait_until([&] { return find_sample(d->scrape(), "memlens_config_reloads_total", {{"result", "failure"}}).value_or(0) == 1; }, 5s));
  std::this_thread::sleep_for(600ms);
  EXPECT_TRUE(d->child.running());
  EXPECT_TRUE(find_sample(d->scrape(), "memlens_rss_bytes", {{"target", "work"}, {"pid", wp}})) << "running config kept";
  EXPECT_NE(d->log().find("reload failed, keeping the running config: " + d->config_path + ":"), std::string::npos) << d->log();
}

TEST(Http, BadRequestsGetErrorsAndTheDaemonLives) {
  auto d = start_daemon("targets: [{name: me, self: true}]\n");
  ASSERT_TRUE(d);
  EXPECT_EQ(http_request("POST", d->url("/api/v1/targets")).status, 405);
  EXPECT_EQ(http_request("DELETE", d->url("/healthz")).status, 405);
  EXPECT_EQ(http_get(d->url("/api/v1/nothing")).status, 404);
  EXPECT_EQ(http_get(d->url("/no/such/page")).status, 404);
  EXPECT_EQ(http_request("HEAD", d->url("/healthz")).status, 200);
  // The timeline page: asked for by the first request, drawn by a tick.
  HttpResponse page;
  EXPECT_TRUE(wait_until([&] {
    page = http_get(d->url("/"));
    return page.status == 200 && page.body.find("<table>") != std::string::npos;
  }, 10s)) << page.status << " " << page.body;
  EXPECT_EQ(http_get(d->url("/targets/me")).status, 200);
  EXPECT_EQ(http_get(d->url("/targets/nobody")).status, 404);
  // Garbage on the socket: a malformed request line, a truncated header, a
  // huge header.
  for (const std::string& junk : {std::string("\x01\x02GARBAGE\r\n\r\n"), std::string("GET /metrics HTTP/1.1\r\nHost"),
                                 "GET /" + std::string(70000, 'a') + " HTTP/1.1\r\n\r\n"}) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(d->port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    (void)!::write(fd, junk.data(), junk.size());
    ::shutdown(fd, SHUT_WR);
    char buf[512];
    (void)!::read(fd, buf, sizeof buf);
    ::close(fd);
  }
  EXPECT_EQ(http_get(d->url("/healthz")).status, 200);
  EXPECT_TRUE(d->child.running());
}

TEST(Proc, MalformedAndMissingFilesAreCountedNotFatal) {
  // A procfs tree where one target's status is malformed and another has no
  // smaps_rollup (as when permission is denied); a third is fine.
  const std::string root = make_temp_dir("fakeproc");
  const std::string fx = std::string(MEMLENS_SOURCE_DIR) + "/tests/fixtures/proc/";
  for (int pid : {7001, 7002, 7003}) {
    fs::create_directories(root + "/" + std::to_string(pid));
    for (const char* f : {"stat", "status", "smaps_rollup", "maps", "cmdline", "cgroup"})
      fs::copy_file(fx + "4242/" + f, root + "/" + std::to_string(pid) + "/" + f);
  }
  fs::copy_file(fx + "malformed/status", root + "/7002/status", fs::copy_options::overwrite_existing);
  fs::remove(root + "/7003/smaps_rollup");
  auto d = start_daemon("global: {tick_interval: 200ms, rescan_interval: 200ms}\n"
                        "targets: [{name: fake, comm: heapload}]\n",
                        {"--path.procfs=" + root});
  ASSERT_TRUE(d);
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_collector_errors_total", {{"collector", "proc"}, {"reason", "malformed"}}).value_or(0) >= 2;
  }, 5s)) << d->log();
  EXPECT_TRUE(find_sample(s, "memlens_rss_bytes", {{"pid", "7001"}})) << "the healthy target is unaffected";
  EXPECT_TRUE(find_sample(s, "memlens_rss_bytes", {{"pid", "7003"}})) << "RSS still comes from status";
  EXPECT_FALSE(find_sample(s, "memlens_pss_bytes", {{"pid", "7003"}}));
  EXPECT_GE(find_sample(s, "memlens_collector_errors_total", {{"collector", "proc"}, {"reason", "unavailable"}}).value_or(0), 1);
  EXPECT_EQ(find_sample(s, "memlens_collector_success", {{"collector", "proc"}}).value_or(-1), 0);
  // Logged once per target, not once per tick.
  std::this_thread::sleep_for(1s);
  const std::string log = d->log();
  size_t n = 0;
  for (size_t at = log.find("pid 7002"); at != std::string::npos; at = log.find("pid 7002", at + 1)) ++n;
  EXPECT_EQ(n, 1u) << log;
  EXPECT_TRUE(d->child.running());
  fs::remove_all(root);
}

TEST(Proc, UnprivilegedDaemonStillServesWhatItCanRead) {
  if (!is_root()) GTEST_SKIP() << "needs root to drop privileges to nobody";
  if (run("command -v setpriv") != 0) GTEST_SKIP() << "setpriv (util-linux) is missing";
  const std::string dir = make_temp_dir();
  ::chmod(dir.c_str(), 0755);
  Child w = spawn({workload_path("heapload"), "--hold", "4000000", "--churn", "10", "--truth", dir + "/t"});
  // As nobody with no capabilities: another user's smaps_rollup is denied.
  auto d = start_daemon("global: {tick_interval: 200ms, rescan_interval: 200ms}\n"
                        "targets: [{name: work, pid: " + std::to_string(w.pid()) + "}]\n",
                        {}, {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                             "--bounding-set=-all"});
  ASSERT_TRUE(d);
  std::vector<PromSample> s;
  ASSERT_TRUE(wait_until([&] {
    s = d->scrape();
    return find_sample(s, "memlens_rss_bytes", {{"target", "work"}}).has_value();
  }, 5s)) << d->log();
  EXPECT_GE(find_sample(s, "memlens_collector_errors_total", {{"collector", "proc"}, {"reason", "permission"}}).value_or(0), 1);
  EXPECT_GT(*find_sample(s, "memlens_rss_bytes", {{"target", "work"}}), 4e6);
  EXPECT_TRUE(d->child.running());
}
