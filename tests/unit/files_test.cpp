// Files targets: the `files:` entry's validation, the glob walk (`**`,
// hidden files, symlink loops, the cap), gzip sizes against zlib's own
// one-shot gzip stream, and the collector's figures and their upkeep on a
// directory the test writes and rewrites.
#include "collectors/files_collector.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <optional>

#include "collectors/file_glob.h"
#include "daemon/config.h"
#include "tests/support/sample.h"
#include "tests/support/support.h"

using namespace memlens;
using memlens::test::sample_value;
using memlens::test::zlib_gzip_size;
namespace fs = std::filesystem;
using memlens::test::write_text;

namespace {

Result<Config> parse(const std::string& entry) {
  return parse_config("targets:\n  - name: web\n" + entry, "test.yaml");
}

std::string error_of(const std::string& entry) {
  auto c = parse(entry);
  EXPECT_FALSE(c.ok()) << "accepted:\n" << entry;
  return c.ok() ? "" : c.error().message;
}

std::string text_of(std::size_t n, unsigned seed) {
  std::string s;
  while (s.size() < n) s += "export const v" + std::to_string(seed++ * 7919 % 100003) + " = () => null;\n";
  s.resize(n);
  return s;
}

}  // namespace

TEST(FilesConfig, EntryParses) {
  auto c = parse(
      "    files:\n"
      "      paths: [\"/srv/web/dist/**/*.js\", \"/srv/web/dist/**/*.css\"]\n"
      "      entry: /srv/web/dist/index-*.js\n"
      "      max_files: 5000\n"
      "    budgets: {bundle: 500KB}\n");
  ASSERT_TRUE(c.ok()) << c.error().message;
  const TargetPolicy& p = c->targets[0];
  ASSERT_TRUE(p.files);
  EXPECT_EQ(p.files->paths.size(), 2u);
  EXPECT_EQ(p.files->entry, std::vector<std::string>{"/srv/web/dist/index-*.js"});
  EXPECT_EQ(p.files->max_files, 5000);
  ASSERT_EQ(p.budgets.size(), 1u) << "no leak budget on a files target";
  EXPECT_EQ(p.budgets[0].resource, "bundle");
  EXPECT_EQ(p.budgets[0].value, 500e3);
}

TEST(FilesConfig, StrictErrorsNameFileLineAndField) {
  EXPECT_EQ(error_of("    comm: node\n    files: {paths: [/a/*.js]}\n"),
            "test.yaml:3:5: targets[0].comm: not allowed with files: a files target watches build artefacts, "
            "not a process (it takes name, files and budgets)");
  EXPECT_NE(error_of("    files: {paths: [/a/*.js]}\n    alloc: {mode: full}\n").find("targets[0].alloc: not allowed"),
            std::string::npos);
  EXPECT_NE(error_of("    files: {}\n").find("targets[0].files.paths: is required"), std::string::npos);
  EXPECT_NE(error_of("    files: {paths: []}\n").find("needs at least one pattern"), std::string::npos);
  EXPECT_NE(error_of("    files: {paths: [dist/*.js]}\n").find("targets[0].files.paths[0]: must be an absolute"),
            std::string::npos);
  EXPECT_NE(error_of("    files: {paths: [/a/../*.js]}\n").find(". or .. components"), std::string::npos);
  EXPECT_NE(error_of("    files: {paths: [/a/x**/*.js]}\n").find("whole path component"), std::string::npos);
  EXPECT_NE(error_of("    files: {paths: [/a/**/b/**/*.js]}\n").find("at most one **"), std::string::npos);
  EXPECT_NE(error_of("    files: {paths: [/a/**]}\n").find("must name files"), std::string::npos);
  EXPECT_NE(error_of("    files: {paths: [/a//b.js]}\n").find("empty component"), std::string::npos);
  EXPECT_NE(error_of("    files: {paths: [\"/a/\\0.js\"]}\n").find("NUL"), std::string::npos);
  EXPECT_NE(error_of("    files: {paths: [/a/*.js], entry: {x: 1}}\n").find("targets[0].files.entry: expected a list"),
            std::string::npos);
  EXPECT_NE(error_of("    files: {paths: [/a/*.js], max_files: 10001}\n").find("between 1 and 10000"),
            std::string::npos);
  EXPECT_NE(error_of("    files: {paths: [/a/*.js], typo: 1}\n").find("targets[0].files.typo: unknown field"),
            std::string::npos);
  EXPECT_NE(error_of("    files: {paths: [/a/*.js]}\n    budgets: {rss: 1MiB}\n")
                .find("targets[0].budgets.rss: unknown field (known: bundle)"),
            std::string::npos);
  std::string many = "    files:\n      paths:\n";
  for (int i = 0; i < 65; ++i) many += "        - /a/" + std::to_string(i) + ".js\n";
  EXPECT_NE(error_of(many).find("more than 64 patterns"), std::string::npos);
}

class FilesDir : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("memlens-files"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::set<std::string> glob(const std::string& pattern, std::size_t max = 1000) {
    std::set<std::string> out;
    glob_files(dir_ + pattern, max, out, stats_);
    return out;
  }
  std::string p(const std::string& rel) const { return dir_ + rel; }
  std::string dir_;
  GlobStats stats_;
};

TEST_F(FilesDir, GlobWalk) {
  fs::create_directories(p("/dist/assets/deep/er"));
  fs::create_directories(p("/dist/.cache"));
  write_text(p("/dist/index-1a2b.js"), "a");
  write_text(p("/dist/assets/chunk.js"), "b");
  write_text(p("/dist/assets/deep/er/x.js"), "c");
  write_text(p("/dist/assets/style.css"), "d");
  write_text(p("/dist/.hidden.js"), "e");
  write_text(p("/dist/.cache/y.js"), "f");
  fs::create_directory(p("/dist/dir.js"));  // a directory is no match
  // A link loop: a file pattern meets ELOOP, `**` does not follow the link.
  fs::create_symlink("loop-b.js", p("/dist/loop-a.js"));
  fs::create_symlink("loop-a.js", p("/dist/loop-b.js"));
  fs::create_directory_symlink(p("/dist"), p("/dist/assets/up"));
  fs::create_symlink(p("/dist/assets/chunk.js"), p("/dist/link.js"));
  write_text(p("/dist/latin1-\xe9.js"), "g");  // not UTF-8: no label value can carry it

  EXPECT_EQ(glob("/dist/*.js"), (std::set<std::string>{p("/dist/index-1a2b.js"), p("/dist/link.js")}));
  EXPECT_EQ(stats_.loop, 2u);
  EXPECT_EQ(stats_.not_utf8, 1u);
  EXPECT_EQ(glob("/dist/**/*.js"),
            (std::set<std::string>{p("/dist/index-1a2b.js"), p("/dist/link.js"), p("/dist/assets/chunk.js"),
                                   p("/dist/assets/deep/er/x.js")}));
  EXPECT_EQ(glob("/dist/**/x.js"), std::set<std::string>{p("/dist/assets/deep/er/x.js")});
  EXPECT_EQ(glob("/dist/assets/*.[cj]s?"), std::set<std::string>{p("/dist/assets/style.css")});
  EXPECT_EQ(glob("/dist/index-????.js"), std::set<std::string>{p("/dist/index-1a2b.js")});
  EXPECT_EQ(glob("/dist/.cache/*.js"), std::set<std::string>{p("/dist/.cache/y.js")}) << "a dot matched by a dot";
  EXPECT_TRUE(glob("/nowhere/**/*.js").empty());
  EXPECT_TRUE(glob("/dist/**").empty()) << "a pattern must name files";
  EXPECT_EQ(stats_.other + stats_.permission + stats_.truncated, 0u);

  stats_ = {};
  EXPECT_EQ(glob("/dist/**/*.js", 2).size(), 2u);
  EXPECT_EQ(stats_.dropped, 2u);
}

TEST_F(FilesDir, UnreadableDirectoryIsCounted) {
  fs::create_directories(p("/dist/locked"));
  write_text(p("/dist/locked/a.js"), "a");
  ::chmod(dir_.c_str(), 0755);
  ::chmod(p("/dist/locked").c_str(), 0);
  // Root reads a mode-000 directory anyway: the walk runs as nobody, in a
  // child, which says what it found by its exit status.
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(3);
    const bool none = glob("/dist/locked/*.js").empty();
    const bool counted = stats_.permission == 1;
    ::_exit(none && counted ? 0 : none ? 1 : 2);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ::chmod(p("/dist/locked").c_str(), 0755);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: not counted as permission, 2: matched anyway, 3: setuid failed";
}

TEST(GzipSizer, MatchesZlibOneShot) {
  GzipSizer g;
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{1000}, std::size_t{200000},
                        std::size_t{3} << 20}) {
    const std::string bytes = text_of(n, static_cast<unsigned>(n));
    EXPECT_EQ(g.size_of(bytes), zlib_gzip_size(bytes)) << n << " bytes";
  }
}

TEST_F(FilesDir, CollectorFiguresAndUpkeep) {
  fs::create_directories(p("/dist/assets"));
  const std::string index = text_of(120000, 1), chunk = text_of(50000, 2), css = text_of(7000, 3);
  write_text(p("/dist/index-aaaa.js"), index);
  write_text(p("/dist/assets/chunk.js"), chunk);
  write_text(p("/dist/assets/app.css"), css);
  // Expanded at every tick (the rescan interval is shorter than a tick).
  auto c = parse_config("global: {rescan_interval: 1ms}\ntargets:\n  - name: web\n    files:\n      paths: [" +
                            p("/dist/**/*.js") + ", " + p("/dist/**/*.css") + "]\n      entry: [" +
                            p("/dist/index-*.js") + ", " + p("/dist/assets/*.css") + "]\n",
                        "test.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  FilesCollector col;
  ASSERT_TRUE(col.start(std::make_shared<const Config>(*c)).ok());
  auto tick = [&] {
    GlobalSample g;
    col.collect_global(g);
    return g;
  };
  auto file = [&](const GlobalSample& g, const char* metric, const std::string& rel) {
    return sample_value(g, metric, {{"target", "web"}, {"file", p(rel)}});
  };
  auto bundle = [&](const GlobalSample& g, const char* enc) {
    return sample_value(g, "memlens_bundle_bytes", {{"target", "web"}, {"encoding", enc}});
  };
  GlobalSample g = tick();
  EXPECT_EQ(sample_value(g, "memlens_files_matched", {{"target", "web"}}), 3);
  EXPECT_EQ(file(g, "memlens_file_size_bytes", "/dist/index-aaaa.js"), 120000);
  EXPECT_EQ(file(g, "memlens_file_gzip_size_bytes", "/dist/index-aaaa.js"), zlib_gzip_size(index));
  EXPECT_EQ(file(g, "memlens_file_gzip_size_bytes", "/dist/assets/chunk.js"), zlib_gzip_size(chunk));
  EXPECT_EQ(bundle(g, "identity"), 127000);
  EXPECT_EQ(bundle(g, "gzip"), zlib_gzip_size(index) + zlib_gzip_size(css));
  EXPECT_EQ(sample_value(g, "memlens_bundle_files", {{"target", "web"}}), 2);
  EXPECT_EQ(sample_value(g, "memlens_files_read_bytes_total", {{"target", "web"}}), 177000);
  ASSERT_EQ(g.documents().size(), 1u);
  EXPECT_EQ(g.documents()[0].first, "/api/v1/targets/web/files");

  // Nothing changed: nothing read again.
  g = tick();
  EXPECT_EQ(sample_value(g, "memlens_files_read_bytes_total", {{"target", "web"}}), 177000);

  // A rebuild: a new hashed entry, the old one gone, the chunk rewritten.
  const std::string index2 = text_of(150000, 9), chunk2 = text_of(60000, 4);
  write_text(p("/dist/index-bbbb.js"), index2);
  fs::remove(p("/dist/index-aaaa.js"));
  write_text(p("/dist/assets/chunk.js.tmp"), chunk2);
  fs::rename(p("/dist/assets/chunk.js.tmp"), p("/dist/assets/chunk.js"));
  g = tick();
  EXPECT_FALSE(file(g, "memlens_file_size_bytes", "/dist/index-aaaa.js"));
  EXPECT_EQ(file(g, "memlens_file_gzip_size_bytes", "/dist/index-bbbb.js"), zlib_gzip_size(index2));
  EXPECT_EQ(file(g, "memlens_file_gzip_size_bytes", "/dist/assets/chunk.js"), zlib_gzip_size(chunk2));
  EXPECT_EQ(bundle(g, "identity"), 157000);
  EXPECT_EQ(sample_value(g, "memlens_files_read_bytes_total", {{"target", "web"}}), 177000 + 210000);

  // A file too large for a gzip size: its size alone, counted once; the
  // bundle's gzip figure is absent while one of its files has none.
  write_text(p("/dist/index-cccc.js"), std::string(kMaxGzipFileBytes + 1, 'x'));
  g = tick();
  EXPECT_EQ(file(g, "memlens_file_size_bytes", "/dist/index-cccc.js"), kMaxGzipFileBytes + 1);
  EXPECT_FALSE(file(g, "memlens_file_gzip_size_bytes", "/dist/index-cccc.js"));
  EXPECT_FALSE(bundle(g, "gzip"));
  g = tick();
  EXPECT_EQ(sample_value(g, "memlens_files_errors_total", {{"target", "web"}, {"reason", "too_large"}}), 1);

  // Everything gone: no bundle figure (no bundle is not an empty one).
  fs::remove_all(p("/dist"));
  g = tick();
  EXPECT_EQ(sample_value(g, "memlens_files_matched", {{"target", "web"}}), 0);
  EXPECT_FALSE(bundle(g, "identity"));
  EXPECT_EQ(sample_value(g, "memlens_bundle_files", {{"target", "web"}}), 0);
}

TEST_F(FilesDir, ReadBudgetSpreadsWorkOverTicks) {
  fs::create_directories(p("/dist"));
  for (unsigned i = 0; i < 3; ++i)
    write_text(p("/dist/f" + std::to_string(i) + ".js"), text_of(kGzipBytesPerTick / 2 + 1, i));
  auto c = parse_config("targets:\n  - name: web\n    files: {paths: [" + p("/dist/*.js") + "]}\n", "test.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  FilesCollector col;
  ASSERT_TRUE(col.start(std::make_shared<const Config>(*c)).ok());
  GlobalSample g;
  col.collect_global(g);
  // A tick starts files while it has read less than its budget: two of these,
  // just over half of it each, are read; the third waits for the next tick.
  EXPECT_EQ(sample_value(g, "memlens_files_gzip_pending", {{"target", "web"}}), 1);
  EXPECT_FALSE(sample_value(g, "memlens_bundle_bytes", {{"target", "web"}, {"encoding", "gzip"}}));
  GlobalSample g2;
  col.collect_global(g2);
  EXPECT_EQ(sample_value(g2, "memlens_files_gzip_pending", {{"target", "web"}}), 0);
  EXPECT_TRUE(sample_value(g2, "memlens_bundle_bytes", {{"target", "web"}, {"encoding", "gzip"}}));
}
