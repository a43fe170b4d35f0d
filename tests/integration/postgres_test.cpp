// The postgres collector against a real PostgreSQL 15 cluster the test makes
// and starts itself (initdb in a temporary directory, run as nobody, a unix
// socket in that directory on a free port, no TCP: never the system
// cluster). The truth is PostgreSQL's own, asked with psql at the same
// moment: SHOW shared_buffers, shared_memory_size, pg_stat_activity,
// pg_ls_tmpdir(). Everything started here is stopped, on failure too.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include "tests/support/postgres_cluster.h"
#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {

const std::string kBin = kPgBin;

std::map<std::string, std::string> of(pid_t pid) { return {{"pid", std::to_string(pid)}}; }
std::map<std::string, std::string> of(pid_t pid, const std::string& type) {
  return {{"pid", std::to_string(pid)}, {"backend_type", type}};
}

// The postgres series of a scrape, as "name{labels}" strings.
std::set<std::string> postgres_series(const std::vector<PromSample>& s) {
  std::set<std::string> out;
  for (const auto& x : s) {
    if (x.name.rfind("memlens_postgres_", 0) != 0) continue;
    std::string k = x.name + "{";
    for (const auto& [n, v] : x.labels) k += n + "=" + v + ",";
    out.insert(k + "}");
  }
  return out;
}

// The pids of a process's children, from the kernel's list.
std::set<std::string> children_of(pid_t pid) {
  std::set<std::string> out;
  std::istringstream in(read_text("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children"));
  for (std::string k; in >> k;) out.insert(k);
  return out;
}

double value(const Daemon& d, const std::string& name, const std::map<std::string, std::string>& labels) {
  return find_sample(d.scrape(), name, labels).value_or(-1);
}

}  // namespace

TEST(Postgres, ClusterFromOutside) {
  if (!is_root()) GTEST_SKIP() << "needs root (to run PostgreSQL as nobody and read its /proc files)";
  for (const char* b : {"initdb", "postgres", "psql", "pgbench"})
    if (!executable(kBin + b)) GTEST_SKIP() << "no PostgreSQL 15 (" << kBin << b << "); scripts/deps.sh installs it";
  const auto t0 = std::chrono::steady_clock::now();
  // Where the time goes, for a run that is slow or fails on a loaded machine.
  auto phase = [&](const char* what) {
    std::printf("[%5.1f s] %s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), what);
    std::fflush(stdout);
  };
  // postgresql.conf says 48MB, postgresql.auto.conf (ALTER SYSTEM's file)
  // 56MB, which wins.
  auto pg = start_cluster("shared_buffers = 48MB\nmax_connections = 50\n", "shared_buffers = '56MB'\n");
  ASSERT_TRUE(pg->error.empty()) << pg->error;
  phase("cluster started");
  const pid_t pm = pg->postmaster.pid();
  auto d = start_daemon("global: {tick_interval: 250ms, rescan_interval: 500ms, smaps_interval: 1s}\n"
                        "targets:\n  - {name: pg, pid: " + std::to_string(pm) + "}\n");
  ASSERT_TRUE(d);
  phase("memlensd started");

  // shared_buffers, exactly as the server has it.
  const double truth_sb = std::stod(pg->sql("select setting::bigint * 8192 from pg_settings where name = 'shared_buffers'"));
  EXPECT_EQ(truth_sb, 56.0 * (1 << 20));
  ASSERT_TRUE(wait_until([&] { return value(*d, "memlens_postgres_shared_buffers_bytes", of(pm)) >= 0; }, 15s))
      << d->log();
  EXPECT_EQ(value(*d, "memlens_postgres_shared_buffers_bytes", of(pm)), truth_sb);

  // The main segment: larger than shared_buffers, within shared_memory_size
  // (whole MB, rounded up); resident, some but not more than all of it.
  const double shm_mb = std::stod(pg->sql("select setting from pg_settings where name = 'shared_memory_size'"));
  ASSERT_TRUE(wait_until([&] { return value(*d, "memlens_postgres_shared_memory_resident_bytes", of(pm)) > 0; }, 10s));
  auto s = d->scrape();
  const double seg = find_sample(s, "memlens_postgres_shared_memory_bytes", of(pm)).value_or(-1);
  const double res0 = find_sample(s, "memlens_postgres_shared_memory_resident_bytes", of(pm)).value_or(-1);
  std::printf("shared_buffers %.0f; segment %.0f (shared_memory_size %.0f MB); resident %.0f\n", truth_sb, seg, shm_mb,
              res0);
  EXPECT_GT(seg, truth_sb);
  EXPECT_LE(seg, shm_mb * (1 << 20));
  EXPECT_GT(res0, 0);
  EXPECT_LE(res0, seg);
  EXPECT_EQ(find_sample(s, "memlens_postgres_backends", of(pm, "checkpointer")), 1.0);
  EXPECT_EQ(find_sample(s, "memlens_postgres_backends", of(pm, "postmaster")), 1.0);
  EXPECT_EQ(find_sample(s, "memlens_postgres_temp_file_bytes", of(pm)), 0.0);
  // No client, once the psql sessions asking for the truth above are gone
  // (a tick may have seen one) and smaps were read since.
  EXPECT_TRUE(wait_until([&] {
    return value(*d, "memlens_postgres_connections", of(pm)) == 0 &&
           value(*d, "memlens_postgres_backend_private_bytes", of(pm, "client backend")) == 0;
  }, 5s));

  // 20 pgbench clients: 20 connections, as pg_stat_activity counts them
  // (less psql's own), and their private memory.
  std::string out;
  ASSERT_EQ(run(kBin + "pgbench " + pg->client_args() + " -i -s 1 -q postgres", &out), 0) << out;
  phase("pgbench -i done");
  Child bench = spawn({kBin + "pgbench", "-h", pg->dir, "-p", std::to_string(pg->port), "-U", "postgres", "-c", "20",
                       "-j", "2", "-T", "12", "-n", "postgres"},
                      pg->dir + "/pgbench.log");
  ASSERT_TRUE(wait_until([&] { return value(*d, "memlens_postgres_connections", of(pm)) == 20; }, 10s))
      << value(*d, "memlens_postgres_connections", of(pm)) << "\n" << read_text(pg->dir + "/pgbench.log");
  const double before = value(*d, "memlens_postgres_connections", of(pm));
  const std::string truth_conn = pg->sql(
      "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()");
  const double after = value(*d, "memlens_postgres_connections", of(pm));
  std::printf("connections: memlens %.0f / %.0f, pg_stat_activity %s\n", before, after, truth_conn.c_str());
  EXPECT_EQ(truth_conn, "20");
  // psql's own session is a client too while it runs: a tick may count it.
  EXPECT_TRUE(before >= 20 && before <= 21 && after >= 20 && after <= 21);
  double private20 = 0;
  EXPECT_TRUE(wait_until([&] {
    private20 = value(*d, "memlens_postgres_backend_private_bytes", of(pm, "client backend"));
    return private20 > 20 * 256 * 1024.0;
  }, 5s)) << private20;
  // What a tick costs memlensd with 26 processes in the cluster (the
  // smaps reads come every second here, every 5 s by default).
  double slowest = 0;
  for (int i = 0; i < 12; ++i) {
    slowest = std::max(slowest, value(*d, "memlens_collector_duration_seconds", {{"collector", "postgres"}}));
    std::this_thread::sleep_for(150ms);
  }
  std::printf("postgres collector: slowest tick seen %.2f ms\n", slowest * 1e3);
  const double res20 = value(*d, "memlens_postgres_shared_memory_resident_bytes", of(pm));
  std::printf("20 clients: private %.0f bytes (%.0f a connection); shared resident %.0f -> %.0f\n", private20,
              private20 / 20, res0, res20);
  EXPECT_GE(res20, res0);
  EXPECT_LE(res20, seg);

  // pgbench ends: back to none.
  EXPECT_EQ(bench.wait_exit(20s) >= 0, true) << "pgbench did not end";
  phase("pgbench done");
  EXPECT_TRUE(wait_until([&] {
    return value(*d, "memlens_postgres_connections", of(pm)) == 0 &&
           value(*d, "memlens_postgres_backend_private_bytes", of(pm, "client backend")) == 0;
  }, 10s));

  // A sort far larger than work_mem spills while it runs: to base/pgsql_tmp,
  // then, with temp_tablespaces, to a tablespace's PG_15_*/pgsql_tmp (its
  // location reached through pg_tblspc/OID, a link in the server's view).
  const std::string ts = pg->dir + "/spill";
  std::filesystem::create_directories(ts);
  ASSERT_EQ(::chown(ts.c_str(), 65534, 65534), 0);
  pg->sql("create tablespace spill location '" + ts + "'");
  ASSERT_EQ(pg->sql("select count(*) from pg_tablespace where spcname = 'spill'"), "1");
  auto spill = [&](const char* where, const std::string& settings, const std::string& tmpdir) {
    Child sort = spawn({kBin + "psql", "-h", pg->dir, "-p", std::to_string(pg->port), "-U", "postgres", "-X", "-Atq",
                        "-d", "postgres", "-c",
                        settings + "set work_mem = '64kB'; select count(*) from (select g from "
                                   "generate_series(1, 1000000) g order by md5(g::text)) s"},
                       pg->dir + "/sort.log");
    double temp = 0;
    std::string truth_temp;
    EXPECT_TRUE(wait_until([&] {
      temp = value(*d, "memlens_postgres_temp_file_bytes", of(pm));
      truth_temp = pg->sql("select coalesce(sum(size), 0) from pg_ls_tmpdir(" + tmpdir + ")");
      return temp > 1 << 20 && truth_temp != "0";
    }, 20s, 50ms)) << where << ": " << read_text(pg->dir + "/sort.log");
    std::printf("sort spilling to %s: temp files %.0f bytes (pg_ls_tmpdir there a moment later: %s), %.0f files\n",
                where, temp, truth_temp.c_str(), value(*d, "memlens_postgres_temp_files", of(pm)));
    EXPECT_GE(sort.wait_exit(60s), 0) << "the sort did not end";
    EXPECT_EQ(read_text(pg->dir + "/sort.log"), "1000000\n");
    std::filesystem::remove(pg->dir + "/sort.log");
    EXPECT_TRUE(wait_until([&] { return value(*d, "memlens_postgres_temp_file_bytes", of(pm)) == 0; }, 5s));
    EXPECT_EQ(pg->sql("select count(*) from pg_ls_tmpdir(" + tmpdir + ")"), "0");
  };
  spill("base/pgsql_tmp", "", "");
  phase("sort done");
  spill("a tablespace", "set temp_tablespaces = 'spill'; ", "(select oid from pg_tablespace where spcname = 'spill')");
  phase("sort in a tablespace done");

  // 200 short connections (pgbench -C: a new one for every transaction):
  // the same series before, during and after.
  const auto series = postgres_series(d->scrape());
  phase("short connections");
  EXPECT_EQ(series.size(), 6u + 2 * 16u);  // 6 for the cluster, 2 x 16 by backend_type
  Child shorts = spawn({kBin + "pgbench", "-h", pg->dir, "-p", std::to_string(pg->port), "-U", "postgres", "-C",
                        "-c", "4", "-j", "2", "-t", "50", "-S", "-n", "postgres"},
                       pg->dir + "/short.log");
  int scrapes = 0;
  double most = 0;
  while (shorts.running()) {
    auto now = d->scrape();
    EXPECT_EQ(postgres_series(now), series);
    most = std::max(most, find_sample(now, "memlens_postgres_connections", of(pm)).value_or(0));
    ++scrapes;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_NE(read_text(pg->dir + "/short.log").find("number of transactions actually processed: 200/200"),
            std::string::npos)
      << read_text(pg->dir + "/short.log");
  std::this_thread::sleep_for(600ms);
  EXPECT_EQ(postgres_series(d->scrape()), series);
  std::printf("200 short connections: %d scrapes, at most %.0f connections seen, %zu series throughout\n", scrapes,
              most, series.size());
  double errors = 0;
  for (const auto& x : d->scrape())
    if (x.name == "memlens_collector_errors_total" && x.labels.count("collector") &&
        x.labels.at("collector") == "postgres")
      errors += x.value;
  EXPECT_EQ(errors, 0.0) << d->log();
  phase("done");
}

// Debian's layout: the configuration in its own directory (/etc/postgresql/
// 15/main on a Debian host), named by -c config_file, with a conf.d and
// cluster_name = '15/main', which every child's title then carries.
TEST(Postgres, DebianLayoutConfigFileAndClusterName) {
  if (!is_root()) GTEST_SKIP() << "needs root (to run PostgreSQL as nobody and read its /proc files)";
  for (const char* b : {"initdb", "postgres", "psql"})
    if (!executable(kBin + b)) GTEST_SKIP() << "no PostgreSQL 15 (" << kBin << b << "); scripts/deps.sh installs it";
  auto pg = start_cluster(
      "", "",
      [&](Cluster& c) {
        const std::string etc = c.dir + "/etc";
        std::filesystem::create_directories(etc + "/conf.d");
        // initdb's file moves out of the data directory, as pg_createcluster puts it in /etc.
        write_text(etc + "/postgresql.conf", read_text(c.data + "/postgresql.conf") +
                                                 "shared_buffers = 32MB\ncluster_name = '15/main'\n"
                                                 "include_dir = 'conf.d'\n");
        std::filesystem::remove(c.data + "/postgresql.conf");
        write_text(etc + "/conf.d/tuning.conf", "shared_buffers = '0.04GB'   # 40.96 MB, 41 MB first, then 5248 blocks\n");
        run("chown -R 65534:65534 " + sh_quote(etc));
        return std::vector<std::string>{"-c", "config_file=" + etc + "/postgresql.conf"};
      });
  ASSERT_TRUE(pg->error.empty()) << pg->error;
  const pid_t pm = pg->postmaster.pid();
  // A psql session held open: one client, titled "postgres: 15/main: postgres postgres [local] ...".
  Child client = spawn({kBin + "psql", "-h", pg->dir, "-p", std::to_string(pg->port), "-U", "postgres", "-X", "-Atq",
                        "-d", "postgres", "-c", "select pg_sleep(30)"});
  // The postmaster alone by its command line (docs/postgres.md's recipe:
  // a child's is its title); the children by executable, after it.
  auto d = start_daemon("global: {tick_interval: 250ms, rescan_interval: 500ms, smaps_interval: 1s}\n"
                        "targets:\n"
                        "  - {name: pm, comm: postgres, cmdline: '^\\S*(postgres|postmaster)( |$)'}\n"
                        "  - {name: pg, exe: '.*/postgres', max_targets: 100}\n");
  ASSERT_TRUE(d);
  const double truth_sb =
      std::stod(pg->sql("select setting::bigint * 8192 from pg_settings where name = 'shared_buffers'"));
  EXPECT_EQ(truth_sb, 5248.0 * 8192);
  EXPECT_EQ(pg->sql("show cluster_name"), "15/main");
  // Every title understood ("other" is only ever a child caught between
  // its fork and its retitle, as an autovacuum worker may be).
  ASSERT_TRUE(wait_until([&] {
    return value(*d, "memlens_postgres_connections", of(pm)) == 1 &&
           value(*d, "memlens_postgres_backends", of(pm, "other")) == 0;
  }, 15s)) << d->log();
  auto s = d->scrape();
  EXPECT_EQ(find_sample(s, "memlens_postgres_shared_buffers_bytes", of(pm)), truth_sb);
  for (const char* t : {"checkpointer", "background writer", "walwriter", "autovacuum launcher",
                        "logical replication launcher", "postmaster"})
    EXPECT_EQ(find_sample(s, "memlens_postgres_backends", of(pm, t)), 1.0) << t;
  // The exe selector takes the children: targets of their own, with /proc
  // metrics and no PostgreSQL ones.
  std::set<std::string> with_postgres;
  std::map<std::string, std::set<std::string>> rss_pids;
  for (const auto& x : s) {
    if (x.name == "memlens_rss_bytes" && x.labels.count("target")) rss_pids[x.labels.at("target")].insert(x.labels.at("pid"));
    if (x.name.rfind("memlens_postgres_", 0) == 0) with_postgres.insert(x.labels.at("target") + "/" + x.labels.at("pid"));
  }
  // Other tests' clusters may run beside this one: look at ours.
  const std::set<std::string> kids = children_of(pm);
  ASSERT_GE(kids.size(), 5u);
  EXPECT_TRUE(rss_pids["pm"].count(std::to_string(pm)));
  for (const auto& k : kids) {
    EXPECT_FALSE(rss_pids["pm"].count(k)) << "child " << k << " taken by the postmaster's entry";
    EXPECT_FALSE(with_postgres.count("pg/" + k)) << "a child gets no PostgreSQL series";
  }
  EXPECT_GE(rss_pids["pg"].size(), 6u);
  EXPECT_TRUE(with_postgres.count("pm/" + std::to_string(pm)));
}

// The default config's postgres entry (`children: false`): a cluster is one
// target, its postmaster; the backends, however many connect, go with it and
// are reported by type, not as targets of their own.
TEST(Postgres, DefaultConfigWatchesAClusterAsOneTarget) {
  ASSERT_TRUE(is_root()) << "the cluster runs as nobody: start the test as root";
  ASSERT_EQ(postgres_missing(), "") << "Debian package postgresql";
  auto pg = start_cluster("", "");
  ASSERT_TRUE(pg && pg->error.empty()) << (pg ? pg->error : "no cluster");
  const pid_t pm = pg->postmaster.pid();
  // Five sessions held open.
  std::vector<Child> clients;
  for (int i = 0; i < 5; ++i)
    clients.push_back(spawn({kPgBin + "psql", "-h", pg->dir, "-p", std::to_string(pg->port), "-U", "postgres", "-X",
                             "-Atq", "-d", "postgres", "-c", "select pg_sleep(30)"}));
  auto d = start_daemon(read_text(std::string(MEMLENS_SOURCE_DIR) + "/config/default.yaml"));
  ASSERT_TRUE(d);
  ASSERT_TRUE(wait_until([&] { return value(*d, "memlens_postgres_connections", of(pm)) == 5; }, 30s)) << d->log();
  const auto s = d->scrape();
  std::set<std::string> pids;
  for (const auto& x : s)
    if (x.name == "memlens_rss_bytes" && x.labels.count("target") && x.labels.at("target") == "postgres")
      pids.insert(x.labels.at("pid"));
  // Other tests' clusters may run beside this one: ours is its postmaster
  // alone, none of its children.
  EXPECT_TRUE(pids.count(std::to_string(pm))) << "the postmaster is the cluster's target";
  for (const auto& k : children_of(pm)) EXPECT_FALSE(pids.count(k)) << "child " << k << " is a target of its own";
  // Its children: the five clients and the background processes.
  const double grouped = find_sample(s, "memlens_targets_grouped", {{"target", "postgres"}}).value_or(0);
  const double backends = std::stod(pg->sql("select count(*) from pg_stat_activity")) ;
  std::printf("grouped under the postmaster: %.0f processes; pg_stat_activity: %.0f\n", grouped, backends);
  EXPECT_GE(grouped, 5 + 3) << "clients, checkpointer, background writer, walwriter at least";
  EXPECT_GT(find_sample(s, "memlens_postgres_backend_private_bytes", {{"pid", std::to_string(pm)},
                                                                      {"backend_type", "client backend"}})
                .value_or(0),
            0);
}
