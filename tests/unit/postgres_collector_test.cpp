// The postgres collector on a procfs and a server file system made of
// fixtures (--path.procfs points at them): what it reports, which targets it
// leaves alone, and that a child gone mid-read, a malformed configuration
// line or a missing configuration file are errors it returns and goes on.
#include "collectors/postgres_collector.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <optional>

#include "daemon/config.h"
#include "tests/support/sample.h"
#include "tests/support/support.h"

using namespace memlens;
using memlens::test::sample_value;
namespace fs = std::filesystem;
using memlens::test::read_text;
using memlens::test::write_text;

namespace {

const std::string kFixtures = std::string(MEMLENS_SOURCE_DIR) + "/tests/fixtures/postgres/";
const std::string kExe = "/usr/lib/postgresql/15/bin/postgres";

std::string stat_line(pid_t pid, pid_t ppid) {
  std::string s = std::to_string(pid) + " (postgres) S " + std::to_string(ppid);
  for (int f = 5; f <= 24; ++f) s += f == 22 ? " 4242" : " 1";
  return s + "\n";
}

std::string rollup(uint64_t pss_anon_kb) {
  return "55cc137dc000-7fff96cfa000 ---p 00000000 00:00 0                          [rollup]\n"
         "Rss:               25256 kB\nPss:               13689 kB\nPss_Anon:           " +
         std::to_string(pss_anon_kb) + " kB\nPrivate_Clean:      4448 kB\nPrivate_Dirty:      5604 kB\n";
}

// A fake /proc with a postmaster (100, parent 1: init), its checkpointer
// (101), a client backend (102) and a child that exited after it was
// listed (103); the server's root is a copy of the fixture tree, with
// temporary files in the data directory and in a tablespace.
struct FakeCluster {
  std::string dir = memlens::test::make_temp_dir("memlens-pgunit");
  std::string proc = dir + "/proc", root = dir + "/root";

  FakeCluster() {
    fs::copy(kFixtures + "root", root, fs::copy_options::recursive);
    auto mk = [&](pid_t pid) {
      fs::create_directories(proc + "/" + std::to_string(pid));
      return proc + "/" + std::to_string(pid) + "/";
    };
    const std::string pm = mk(100);
    write_text(pm + "stat", stat_line(100, 1));
    write_text(pm + "cmdline", std::string("/usr/lib/postgresql/15/bin/postgres\0-D\0/srv/pg/data\0", 52));
    fs::create_symlink("/srv/pg/data", pm + "cwd");
    fs::create_symlink(root, pm + "root");
    fs::create_symlink(kExe, pm + "exe");
    write_text(pm + "smaps", read_text(kFixtures + "smaps/postmaster_mmap"));
    write_text(pm + "smaps_rollup", rollup(500));
    fs::create_directories(pm + "task/100");
    write_text(pm + "task/100/children", "101 102 103 ");
    const std::string init = mk(1);
    fs::create_symlink("/sbin/init", init + "exe");
    write_text(mk(101) + "cmdline", read_text(kFixtures + "titles/checkpointer"));
    write_text(proc + "/101/smaps_rollup", rollup(1000));
    write_text(mk(102) + "cmdline", read_text(kFixtures + "titles/client_local_select"));
    write_text(proc + "/102/smaps_rollup", rollup(2000));
    // Temporary files: two in the data directory (one in a shared
    // fileset), one in this version's directory of a tablespace; one of
    // another version's directory, which this server does not use.
    const std::string tmp = root + "/srv/pg/data/base/pgsql_tmp";
    fs::create_directories(tmp + "/pgsql_tmp100.1.fileset");
    write_text(tmp + "/pgsql_tmp100.0", std::string(12345, 'x'));
    write_text(tmp + "/pgsql_tmp100.1.fileset/o1of2.p0.0", std::string(1000, 'x'));
    fs::create_directories(root + "/srv/pg/data/pg_tblspc");
    fs::create_symlink("/tblspc/a", root + "/srv/pg/data/pg_tblspc/16384");
    fs::create_directories(root + "/tblspc/a/PG_15_202209061/pgsql_tmp");
    write_text(root + "/tblspc/a/PG_15_202209061/pgsql_tmp/pgsql_tmp102.0", std::string(500, 'x'));
    fs::create_directories(root + "/tblspc/a/PG_14_202107181/pgsql_tmp");
    write_text(root + "/tblspc/a/PG_14_202107181/pgsql_tmp/pgsql_tmp9.0", std::string(7, 'x'));
  }
  ~FakeCluster() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }

  ConfigPtr config() const {
    auto c = std::make_shared<Config>();
    c->procfs = proc;
    return c;
  }
};

Target target(pid_t pid, const std::string& exe, const TargetPolicy* pol = nullptr) {
  Target t;
  t.id.pid = pid;
  t.id.start_time = 4242;
  t.name = "pg";
  t.exe = exe;
  t.comm = "postgres";
  if (pol) t.policy = std::shared_ptr<const TargetPolicy>(std::shared_ptr<void>(), pol);  // the test's
  return t;
}

Labels type(const char* t) { return {{"backend_type", t}}; }

}  // namespace

TEST(PostgresCollector, ClusterOnFixtures) {
  FakeCluster fc;
  PostgresCollector c;
  ASSERT_TRUE(c.start(fc.config()));
  Sample s;
  auto r = c.collect(target(100, kExe), s);
  EXPECT_TRUE(r.ok()) << r.error().message;
  // postgresql.conf, conf.d/, then postgresql.auto.conf's 96MB.
  EXPECT_EQ(sample_value(s, "memlens_postgres_shared_buffers_bytes"), 96.0 * (1 << 20));
  EXPECT_EQ(sample_value(s, "memlens_postgres_shared_memory_bytes"), 59056.0 * 1024);
  // No map_files here: the postmaster's own Rss of the segment stands in.
  EXPECT_EQ(sample_value(s, "memlens_postgres_shared_memory_resident_bytes"), 6588.0 * 1024);
  EXPECT_EQ(sample_value(s, "memlens_postgres_connections"), 1.0);
  EXPECT_EQ(sample_value(s, "memlens_postgres_backends", type("checkpointer")), 1.0);
  EXPECT_EQ(sample_value(s, "memlens_postgres_backends", type("client backend")), 1.0);
  EXPECT_EQ(sample_value(s, "memlens_postgres_backends", type("postmaster")), 1.0);
  EXPECT_EQ(sample_value(s, "memlens_postgres_backends", type("walwriter")), 0.0);
  EXPECT_EQ(sample_value(s, "memlens_postgres_backend_private_bytes", type("client backend")), 2000.0 * 1024);
  EXPECT_EQ(sample_value(s, "memlens_postgres_backend_private_bytes", type("checkpointer")), 1000.0 * 1024);
  EXPECT_EQ(sample_value(s, "memlens_postgres_backend_private_bytes", type("postmaster")), 500.0 * 1024);
  EXPECT_EQ(sample_value(s, "memlens_postgres_temp_file_bytes"), 12345.0 + 1000 + 500);
  EXPECT_EQ(sample_value(s, "memlens_postgres_temp_files"), 3.0);
  std::size_t n = 0;
  for (const auto& v : s.values()) n += v.desc->name.rfind("memlens_postgres_", 0) == 0;
  EXPECT_EQ(n, 6u + 2 * pg::kBackendTypes);  // every backend_type, always
}

TEST(PostgresCollector, MalformedLineAndMissingConfigAreErrorsNotStops) {
  FakeCluster fc;
  write_text(fc.root + "/srv/pg/data/postgresql.auto.conf",
             read_text(fc.root + "/srv/pg/data/postgresql.auto.conf") + "shared_buffers = 128 MB\n");
  PostgresCollector c;
  ASSERT_TRUE(c.start(fc.config()));
  Sample s;
  auto r = c.collect(target(100, kExe), s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::malformed);
  EXPECT_NE(r.error().message.find("postgresql.auto.conf"), std::string::npos) << r.error().message;
  EXPECT_EQ(sample_value(s, "memlens_postgres_shared_buffers_bytes"), 96.0 * (1 << 20));  // the line is skipped
  EXPECT_EQ(sample_value(s, "memlens_postgres_connections"), 1.0);

  // No postgresql.conf: postgresql.auto.conf's value would still win over
  // whatever it said; without that either, nothing is reported.
  fs::remove(fc.root + "/srv/pg/data/postgresql.conf");
  fs::remove(fc.root + "/srv/pg/data/postgresql.auto.conf");
  PostgresCollector c2;
  ASSERT_TRUE(c2.start(fc.config()));
  Sample s2;
  auto r2 = c2.collect(target(100, kExe), s2);
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.error().code, Errc::not_found);
  EXPECT_FALSE(sample_value(s2, "memlens_postgres_shared_buffers_bytes"));  // nothing invented
  EXPECT_EQ(sample_value(s2, "memlens_postgres_connections"), 1.0);
  EXPECT_EQ(sample_value(s2, "memlens_postgres_temp_file_bytes"), 12345.0 + 1000 + 500);
}

TEST(PostgresCollector, OnlyPostmasters) {
  FakeCluster fc;
  // 101 as a target: its parent runs the same executable, so it is a child.
  write_text(fc.proc + "/101/stat", stat_line(101, 100));
  PostgresCollector c;
  ASSERT_TRUE(c.start(fc.config()));
  Sample child, other;
  EXPECT_TRUE(c.collect(target(101, kExe), child).ok());
  EXPECT_TRUE(child.values().empty());
  // Not named postgres or postmaster: left alone unless the config says so.
  EXPECT_TRUE(c.collect(target(100, "/opt/db/bin/pgserver"), other).ok());
  EXPECT_TRUE(other.values().empty());
  TargetPolicy forced;
  forced.postgres = true;
  PostgresCollector c1;
  ASSERT_TRUE(c1.start(fc.config()));
  Sample yes;
  EXPECT_TRUE(c1.collect(target(100, "/opt/db/bin/pgserver", &forced), yes).ok());
  EXPECT_EQ(sample_value(yes, "memlens_postgres_connections"), 1.0);
  TargetPolicy off;
  off.postgres = false;
  PostgresCollector c2;
  ASSERT_TRUE(c2.start(fc.config()));
  Sample no;
  EXPECT_TRUE(c2.collect(target(100, kExe, &off), no).ok());
  EXPECT_TRUE(no.values().empty());
}

TEST(PostgresCollector, ConfigSwitch) {
  auto c = parse_config("targets:\n  - {name: a, comm: x}\n  - {name: b, comm: y, postgres: false}\n"
                        "  - {name: c, comm: z, postgres: true}\n",
                        "t.yaml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_FALSE(c->targets[0].postgres.has_value());
  EXPECT_EQ(c->targets[1].postgres, false);
  EXPECT_EQ(c->targets[2].postgres, true);
  auto bad = parse_config("targets:\n  - {name: a, comm: x, postgres: maybe}\n", "t.yaml");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("targets[0].postgres"), std::string::npos) << bad.error().message;
}
