// The heap collector without root: its per-target switch, its reasons on
// recorded /proc fixtures, and the figures of a real child (a parent may
// read its own children) and of this process itself.
#include "collectors/heap_collector.h"

#include <gtest/gtest.h>
#include <malloc.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <optional>

#include "daemon/config.h"
#include "daemon/procfs.h"
#include "tests/support/sample.h"

using namespace memlens;
using memlens::test::sample_value;

// ASan replaces malloc: glibc's arenas are not where this process's (or a
// forked child's) blocks live, and mallinfo2() is ASan's, not glibc's.
#ifdef __SANITIZE_ADDRESS__
#define SKIP_UNDER_ASAN() GTEST_SKIP() << "built with AddressSanitizer: malloc is not glibc's here"
#else
#define SKIP_UNDER_ASAN() (void)0
#endif

namespace {

Target target_of(pid_t pid, const TargetPolicy* pol) {
  Target t;
  t.id.pid = pid;
  t.name = "t";
  t.policy = std::shared_ptr<const TargetPolicy>(std::shared_ptr<void>(), pol);  // not owned: the test's
  return t;
}

}  // namespace

TEST(HeapConfig, OnByDefaultOffPerTarget) {
  auto c = parse_config("targets:\n  - {name: a, comm: x}\n  - {name: b, comm: y, heap: false}\n", "t.yaml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_TRUE(c->targets[0].heap);
  EXPECT_FALSE(c->targets[1].heap);
  auto bad = parse_config("targets:\n  - {name: a, comm: x, heap: sometimes}\n", "t.yaml");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("targets[0].heap"), std::string::npos) << bad.error().message;
}

TEST(HeapCollector, ReasonsOnFixtures) {
  Config cfg;
  cfg.procfs = std::string(MEMLENS_SOURCE_DIR) + "/tests/fixtures/proc";
  HeapCollector c;
  ASSERT_TRUE(c.start(std::make_shared<const Config>(cfg)));
  TargetPolicy on, off;
  off.heap = false;
  // Fixture 4242's maps name files that are not under <procfs>/4242/root.
  Sample s;
  ASSERT_TRUE(c.collect(target_of(4242, &on), s));
  EXPECT_EQ(sample_value(s, "memlens_allocator_readable", {{"reason", "no_symbols"}}), 0.0);
  EXPECT_FALSE(sample_value(s, "memlens_allocator_inuse_bytes"));
  EXPECT_FALSE(s.has_series(SeriesId::heap));
  Sample d;
  ASSERT_TRUE(c.collect(target_of(4242, &off), d));
  EXPECT_EQ(sample_value(d, "memlens_allocator_readable", {{"reason", "disabled"}}), 0.0);
  EXPECT_EQ(d.values().size(), 1u);
}

TEST(HeapCollector, ReadsAChildExactly) {
  SKIP_UNDER_ASAN();
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::vector<void*> v(20000);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = malloc(32 + (i * 31) % 900);
    for (std::size_t i = 0; i < v.size(); i += 3) free(v[i]);
    struct mallinfo2 mi = mallinfo2();
    if (write(fds[1], &mi, sizeof mi) != sizeof mi) _exit(1);
    pause();
    _exit(0);
  }
  close(fds[1]);
  struct mallinfo2 mi {};
  ASSERT_EQ(read(fds[0], &mi, sizeof mi), static_cast<ssize_t>(sizeof mi));
  close(fds[0]);
  Config cfg;
  HeapCollector c;
  ASSERT_TRUE(c.start(std::make_shared<const Config>(cfg)));
  TargetPolicy pol;
  Sample s;
  auto r = c.collect(target_of(pid, &pol), s);
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  ASSERT_TRUE(r) << r.error().message;
  if (sample_value(s, "memlens_allocator_readable", {{"reason", "permission_denied"}}))
    GTEST_SKIP() << "process_vm_readv on a child refused here (Yama ptrace_scope 3?)";
  ASSERT_EQ(sample_value(s, "memlens_allocator_readable", {{"reason", "ok"}}), 1.0);
  EXPECT_EQ(sample_value(s, "memlens_allocator_inuse_bytes", {{"allocator", "glibc"}}),
            static_cast<double>(mi.uordblks + mi.hblkhd));
  EXPECT_EQ(sample_value(s, "memlens_allocator_free_bytes"), static_cast<double>(mi.fordblks));
  EXPECT_EQ(sample_value(s, "memlens_allocator_system_bytes"), static_cast<double>(mi.arena + mi.hblkhd));
  EXPECT_DOUBLE_EQ(*sample_value(s, "memlens_heap_fragmentation_ratio"),
                   static_cast<double>(mi.fordblks) / static_cast<double>(mi.arena));
  EXPECT_EQ(sample_value(s, "memlens_allocator_arenas"), 1.0);
  ASSERT_TRUE(s.has_series(SeriesId::heap));
  EXPECT_EQ(s.series_value(SeriesId::heap), static_cast<double>(mi.uordblks + mi.hblkhd));
  GlobalSample g;
  c.collect_global(g);
  EXPECT_GE(sample_value(g, "memlens_allocator_walks_total", {{"result", "consistent"}}).value_or(0), 1.0);
}

TEST(HeapCollector, ReadsItselfThroughMallinfo2) {
  SKIP_UNDER_ASAN();
  Config cfg;
  HeapCollector c;
  ASSERT_TRUE(c.start(std::make_shared<const Config>(cfg)));
  TargetPolicy pol;
  Sample s;
  ASSERT_TRUE(c.collect(target_of(getpid(), &pol), s));
  EXPECT_EQ(sample_value(s, "memlens_allocator_readable", {{"reason", "ok"}}), 1.0);
  EXPECT_GT(sample_value(s, "memlens_allocator_system_bytes").value_or(0), 0.0);
  EXPECT_GE(sample_value(s, "memlens_allocator_arenas").value_or(0), 1.0);
}

// Whatever order collectors run in, the heap series keeps the best value:
// books over anonymous RSS and over eBPF's count since attach, exact live
// bytes over books.
TEST(HeapSeries, BetterQualityWins) {
  Sample s;
  s.series(SeriesId::heap, 100);                                   // proc: anonymous RSS
  s.series(SeriesId::heap, 90, SeriesQuality::books);             // heap collector
  s.series(SeriesId::heap, 5, SeriesQuality::since_attach);       // alloc, full mode, attached late
  EXPECT_EQ(s.series_value(SeriesId::heap), 90);
  s.series(SeriesId::heap, 80, SeriesQuality::exact);             // alloc, traced from the start
  EXPECT_EQ(s.series_value(SeriesId::heap), 80);
  s.series(SeriesId::heap, 70, SeriesQuality::exact);             // equal: the later one
  EXPECT_EQ(s.series_value(SeriesId::heap), 70);
}
