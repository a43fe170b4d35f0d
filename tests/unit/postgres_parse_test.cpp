// The PostgreSQL parsers on fixtures: process titles captured from a real
// PostgreSQL 15 (and Debian's, with cluster_name), configuration files with
// includes in a directory tree standing for a server's file system, memory
// units as the server parses them (the expected values are what
// `postgres -C shared_buffers -c shared_buffers=VALUE` printed), and the
// shared memory segment in a captured smaps.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>

#include "collectors/postgres_parse.h"
#include "daemon/procfs.h"
#include "tests/support/support.h"

using namespace memlens;
using namespace memlens::pg;
using memlens::test::read_text;

namespace {

const std::string kFixtures = std::string(MEMLENS_SOURCE_DIR) + "/tests/fixtures/postgres/";

std::string title(const std::string& name) { return read_text(kFixtures + "titles/" + name); }

// The fixture tree stands for the server's root directory.
ConfFs fixture_fs() {
  const std::string root = kFixtures + "root";
  return ConfFs{[root](const std::string& p) { return read_file(root + p); },
                [root](const std::string& d) -> Result<std::vector<std::string>> {
                  std::error_code ec;
                  std::vector<std::string> names;
                  for (const auto& e : std::filesystem::directory_iterator(root + d, ec))
                    names.push_back(e.path().filename().string());
                  if (ec) return make_error(Errc::not_found, d + ": " + ec.message());
                  return names;
                }};
}

// Files held in memory, for cases no fixture tree needs.
ConfFs memory_fs(std::map<std::string, std::string> files) {
  return ConfFs{[files](const std::string& p) -> Result<std::string> {
                  auto it = files.find(p);
                  if (it == files.end()) return make_error(Errc::not_found, p + ": No such file or directory");
                  return it->second;
                },
                [](const std::string& d) -> Result<std::vector<std::string>> {
                  return make_error(Errc::not_found, d + ": No such file or directory");
                }};
}

uint64_t blocks(std::string_view v) {
  auto r = parse_block_setting(v);
  EXPECT_TRUE(r.ok()) << v << ": " << (r ? "" : r.error().message);
  return r ? *r / kBlockSize : 0;
}

}  // namespace

TEST(PostgresTitle, RealTitlesOfPostgres15) {
  EXPECT_EQ(classify_title(title("checkpointer")), BackendType::checkpointer);
  EXPECT_EQ(classify_title(title("background_writer")), BackendType::background_writer);
  EXPECT_EQ(classify_title(title("walwriter")), BackendType::walwriter);
  EXPECT_EQ(classify_title(title("autovacuum_launcher")), BackendType::autovacuum_launcher);
  EXPECT_EQ(classify_title(title("logical_replication_launcher")), BackendType::logical_replication_launcher);
  EXPECT_EQ(classify_title(title("client_local_select")), BackendType::client_backend);
  // A child forked a moment ago still has the postmaster's command line.
  EXPECT_EQ(classify_title(title("postmaster")), BackendType::other);
}

TEST(PostgresTitle, WorkersAndDetail) {
  EXPECT_EQ(classify_title(title("parallel_worker")), BackendType::parallel_worker);
  EXPECT_EQ(classify_title(title("autovacuum_worker")), BackendType::autovacuum_worker);
  EXPECT_EQ(classify_title(title("logical_replication_worker")), BackendType::logical_replication_worker);
  // Background workers of extensions are named by them: not clients.
  EXPECT_EQ(classify_title(title("extension_worker")), BackendType::other);
  EXPECT_EQ(classify_title(title("extension_worker_words")), BackendType::other);
  EXPECT_EQ(classify_title(std::string("postgres: app shop 192.168.1.4(5432) idle\0\0", 44)),
            BackendType::client_backend);
  EXPECT_EQ(classify_title("postgres: app [local] idle"), BackendType::client_backend);  // no database
  EXPECT_EQ(classify_title("postgres: app shop host(port) idle"), BackendType::other);
  EXPECT_EQ(classify_title("postgres: walsender rep [local] streaming 0/1"), BackendType::walsender);
  EXPECT_EQ(classify_title("postgres: startup recovering 000000010000000000000003"), BackendType::startup);
  EXPECT_EQ(classify_title("postgres: checkpointerx"), BackendType::other);  // whole words only
  EXPECT_EQ(classify_title(""), BackendType::other);
  EXPECT_EQ(classify_title(std::string(4096, '\0')), BackendType::other);
}

TEST(PostgresTitle, ClusterNameKnownOrNot) {
  // Debian sets cluster_name = '15/main': "postgres: 15/main: checkpointer".
  for (std::string_view cn : {"15/main", ""}) {
    EXPECT_EQ(classify_title(title("debian_checkpointer"), cn), BackendType::checkpointer) << cn;
    EXPECT_EQ(classify_title(title("debian_client_tcp"), cn), BackendType::client_backend) << cn;
    EXPECT_EQ(classify_title(title("debian_walsender"), cn), BackendType::walsender) << cn;
  }
}

TEST(PostgresTitle, FixedSetOfNames) {
  std::set<std::string> names;
  for (std::size_t i = 0; i < kBackendTypes; ++i) names.insert(backend_type_name(static_cast<BackendType>(i)));
  EXPECT_EQ(names.size(), kBackendTypes);
  EXPECT_TRUE(names.count("client backend"));  // pg_stat_activity.backend_type's spelling
  EXPECT_TRUE(names.count("other"));
}

TEST(PostgresUnits, AsThePostmasterParsesThem) {
  EXPECT_EQ(blocks("1000"), 1000u);  // no unit: 8 kB blocks
  EXPECT_EQ(blocks("128MB"), 16384u);
  EXPECT_EQ(blocks("0.5GB"), 65536u);
  EXPECT_EQ(blocks("1.5GB"), 196608u);
  EXPECT_EQ(blocks("0x100"), 256u);
  EXPECT_EQ(blocks("010"), 8u);       // octal, as strtol reads it
  EXPECT_EQ(blocks("0.1MB"), 13u);    // 102 kB first, then blocks
  EXPECT_EQ(blocks("0.04GB"), 5248u);  // 41 MB first (40.96), not 5243 blocks
  EXPECT_EQ(blocks("100kB"), 12u);    // 12.5 rounds to even
  EXPECT_EQ(blocks("12.5"), 12u);
  EXPECT_EQ(blocks("1e3"), 1000u);
  EXPECT_EQ(blocks("300000B"), 37u);
  EXPECT_EQ(blocks("1TB"), 134217728u);
  EXPECT_EQ(blocks(" 64MB "), 8192u);  // a quoted value may hold spaces
  EXPECT_EQ(blocks("64 MB"), 8192u);   // between number and unit too
  EXPECT_EQ(*parse_block_setting("48MB"), 48u << 20);
  for (std::string_view bad : {"64mb", "64 M B", "MB", "", "64MiB", "1 2", "nan", "-5", "1e30"})
    EXPECT_FALSE(parse_block_setting(bad).ok()) << bad;
  EXPECT_FALSE(parse_shared_buffers("100kB").ok());  // 12 blocks: below the server's minimum of 16
  EXPECT_FALSE(parse_shared_buffers("16TB").ok());   // above INT_MAX / 2 blocks
  EXPECT_EQ(*parse_shared_buffers("128kB"), 128u << 10);
}

TEST(PostgresConf, SyntaxQuotesAndComments) {
  const ConfFile f = parse_conf(read_text(kFixtures + "root/srv/pg/data/postgresql.conf"));
  EXPECT_TRUE(f.errors.empty()) << f.errors.front();
  std::map<std::string, std::string> v;
  for (const auto& e : f.entries) v[e.name] = e.value;
  EXPECT_EQ(v["shared_buffers"], "128MB");  // Shared_Buffers: names are case-insensitive
  EXPECT_EQ(v["work_mem"], "4MB");
  EXPECT_EQ(v["log_line_prefix"], "%m [%p] %q%u@%d ");
  EXPECT_EQ(v["application_name"], "it's 'quoted'");
  EXPECT_EQ(v["dynamic_shared_memory_type"], "posix");
  EXPECT_EQ(v["include_dir"], "conf.d");
}

TEST(PostgresConf, MalformedLinesAreSkippedAndSaid) {
  const ConfFile f = parse_conf(read_text(kFixtures + "malformed.conf"));
  // "128 MB" (two tokens), "= 5", "9lives", an unterminated quote, no
  // value, 0.5GB and * unquoted: each an error to PostgreSQL as well.
  ASSERT_EQ(f.errors.size(), 7u);
  EXPECT_NE(f.errors[0].find("line 2"), std::string::npos) << f.errors[0];
  EXPECT_NE(f.errors[5].find("must be quoted"), std::string::npos) << f.errors[5];
  ASSERT_EQ(f.entries.size(), 2u);
  EXPECT_EQ(f.entries.back().value, "40MB");
  EXPECT_EQ(f.entries.back().line, 9);
  // Bare values PostgreSQL's lexer takes whole.
  for (const char* ok : {"x = 128MB", "x = -1", "x = 0x1F", "x = 1.5", "x = .5e-3", "x = on", "x = en_US.UTF-8",
                         "x = pg_catalog.english", "x = 'any thing'"})
    EXPECT_TRUE(parse_conf(ok).errors.empty()) << ok;
  for (const char* bad : {"x = 1e3", "x = 1.5GB", "x = 15/main", "x = /tmp", "x = 0x", "x = 1.5e"})
    EXPECT_EQ(parse_conf(bad).errors.size(), 1u) << bad;
}

TEST(PostgresSettings, IncludesInOrderThenAutoConf) {
  const ConfFs fs = fixture_fs();
  PostmasterArgs args;
  args.data_dir = "/srv/pg/data";
  Settings s = resolve_settings(fs, "/srv/pg/data", args);
  EXPECT_TRUE(s.errors.empty()) << s.errors.front();
  EXPECT_TRUE(s.config_read);
  EXPECT_EQ(s.config_file, "/srv/pg/data/postgresql.conf");
  // postgresql.conf 128MB < conf.d/01 48MB < conf.d/02 64MB < postgresql.auto.conf 96MB;
  // .hidden.conf and notes.txt are not read.
  EXPECT_EQ(s.get("shared_buffers"), "96MB");
  EXPECT_EQ(s.values["shared_buffers"].source, "/srv/pg/data/postgresql.auto.conf:3");
  EXPECT_EQ(s.get("effective_cache_size"), "4GB");  // include '../shared/common.conf'
  EXPECT_EQ(*parse_shared_buffers(*s.get("shared_buffers")), 96u << 20);
}

TEST(PostgresSettings, CommandLineWins) {
  const ConfFs fs = fixture_fs();
  auto at = [&](std::vector<std::string> argv) {
    return resolve_settings(fs, "/srv/pg/data", parse_postmaster_args(argv)).get("shared_buffers");
  };
  const std::string pg = "/usr/lib/postgresql/15/bin/postgres";
  EXPECT_EQ(at({pg, "-D", "/srv/pg/data", "-c", "shared_buffers=200MB"}), "200MB");
  EXPECT_EQ(at({pg, "-D/srv/pg/data", "-cshared_buffers=300MB"}), "300MB");
  EXPECT_EQ(at({pg, "--shared-buffers=400MB", "-D", "/srv/pg/data"}), "400MB");
  EXPECT_EQ(at({pg, "-B", "1000", "-c", "shared_buffers=1GB", "-B2000"}), "2000");  // the last one
  // -k takes a value: "-c..." there is a socket directory, not an option.
  EXPECT_EQ(at({pg, "-k", "-cshared_buffers=1MB", "-p", "5433"}), "96MB");
  // A relative -D was relative to where the server started: the data
  // directory (its working directory) stands in for it.
  EXPECT_EQ(at({pg, "-D", "data"}), "96MB");
}

TEST(PostgresSettings, DebianConfigFileInEtc) {
  const auto argv = split_cmdline(read_text(kFixtures + "titles/postmaster"));
  ASSERT_EQ(argv.size(), 9u);
  EXPECT_EQ(argv[0], "/usr/lib/postgresql/15/bin/postgres");
  EXPECT_EQ(argv[8], "listen_addresses=");
  // What Debian's pg_ctlcluster starts.
  const auto args = parse_postmaster_args({"/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/postgresql/15/main",
                                           "-c", "config_file=/etc/postgresql/15/main/postgresql.conf"});
  EXPECT_EQ(args.data_dir, "/var/lib/postgresql/15/main");
  Settings s = resolve_settings(fixture_fs(), "/var/lib/postgresql/15/main", args);
  EXPECT_TRUE(s.errors.empty()) << s.errors.front();
  EXPECT_EQ(s.config_file, "/etc/postgresql/15/main/postgresql.conf");
  EXPECT_EQ(s.get("shared_buffers"), "0.5GB");  // from conf.d/tuning.conf
  EXPECT_EQ(s.get("cluster_name"), "15/main");
  EXPECT_EQ(*parse_shared_buffers("0.5GB"), 512u << 20);
}

TEST(PostgresSettings, UnreadableAndCyclicFilesAreErrors) {
  // Nothing there: not read, said why, and nothing invented.
  Settings none = resolve_settings(memory_fs({}), "/data", {});
  EXPECT_FALSE(none.config_read);
  EXPECT_EQ(none.config_errc, Errc::not_found);
  EXPECT_FALSE(none.get("shared_buffers"));
  // A file that includes itself stops at PostgreSQL's depth limit.
  Settings loop = resolve_settings(
      memory_fs({{"/data/postgresql.conf", "shared_buffers = 1GB\ninclude 'postgresql.conf'\n"}}), "/data", {});
  EXPECT_TRUE(loop.config_read);
  EXPECT_EQ(loop.get("shared_buffers"), "1GB");
  ASSERT_FALSE(loop.errors.empty());
  EXPECT_NE(loop.errors.front().find("nested"), std::string::npos) << loop.errors.front();
  // Ten self-includes a file, ten deep, would be 10^10 reads: stopped.
  std::string fan;
  for (int i = 0; i < 10; ++i) fan += "include 'postgresql.conf'\n";
  int reads = 0;
  ConfFs counting = memory_fs({{"/data/postgresql.conf", fan + "shared_buffers = 3GB\n"}});
  counting.read = [inner = counting.read, &reads](const std::string& p) {
    ++reads;
    return inner(p);
  };
  Settings many = resolve_settings(counting, "/data", {});
  EXPECT_EQ(many.get("shared_buffers"), "3GB");
  EXPECT_EQ(reads, 256 + 1);  // 256 configuration files, then postgresql.auto.conf
  EXPECT_FALSE(many.errors.empty());
  // A file of bad lines included 256 times keeps 64 messages, counts the rest.
  std::string bad = "include 'postgresql.conf'\n";
  for (int i = 0; i < 100; ++i) bad += "shared_buffers = 1 GB\n";
  Settings noisy = resolve_settings(memory_fs({{"/data/postgresql.conf", bad}}), "/data", {});
  EXPECT_EQ(noisy.errors.size(), 64u);
  EXPECT_GT(noisy.errors_dropped, 1000u);
  // A missing include (not include_if_exists) is an error; the rest stands.
  Settings miss = resolve_settings(
      memory_fs({{"/data/postgresql.conf", "include 'gone.conf'\nshared_buffers = 2GB\n"}}), "/data", {});
  EXPECT_EQ(miss.get("shared_buffers"), "2GB");
  EXPECT_EQ(miss.errors.size(), 1u);
}

TEST(PostgresSegment, MainSegmentOfARealPostmaster) {
  auto seg = find_shared_segment(read_text(kFixtures + "smaps/postmaster_mmap"));
  ASSERT_TRUE(seg);
  // PostgreSQL 15, shared_memory_type = mmap, shared_buffers = 48MB: a
  // /dev/zero mapping of 59056 kB; the 4 kB SYSV one and the dynamic
  // /dev/shm/PostgreSQL.* are not it.
  EXPECT_EQ(seg->path, "/dev/zero (deleted)");
  EXPECT_EQ(seg->size(), 59056u * 1024);
  EXPECT_EQ(seg->start, 0x7f4e62a92000u);
  EXPECT_GT(seg->rss, 0u);
  EXPECT_LE(seg->rss, seg->size());
  EXPECT_EQ(seg->swap, 0u);
  EXPECT_FALSE(find_shared_segment("").has_value());
  EXPECT_FALSE(find_shared_segment("7f00-7f10 rw-p 00000000 00:01 1 /dev/zero (deleted)\nRss: 4 kB\n").has_value());
  auto sysv = find_shared_segment("7f0000000000-7f0010000000 rw-s 00000000 00:01 7 /SYSV0052e2c1 (deleted)\n"
                                  "Rss:  100 kB\nSwap:  8 kB\n");
  ASSERT_TRUE(sysv);
  EXPECT_EQ(sysv->rss, 100u * 1024);
  EXPECT_EQ(sysv->swap, 8u * 1024);
}
