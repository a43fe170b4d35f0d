// The host as memlensd may find it: tracefs not mounted (memlensd mounts it),
// or not mountable at all (the collectors that need it say so, the rest go
// on). Each daemon runs in a mount namespace of its own, so the host's
// tracefs (and every other test) is left alone.
#include <gtest/gtest.h>

#include "tests/support/support.h"

using namespace memlens::test;
using namespace std::chrono_literals;

namespace {
// A shell prefix run before memlensd inside a new mount namespace.
std::vector<std::string> in_namespace(const std::string& setup) {
  return {"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", setup + " && exec \"$@\"", "sh"};
}
}  // namespace

TEST(EnvironmentFaults, TracefsUnmountedIsMountedByMemlensd) {
  if (!is_root()) GTEST_SKIP() << "needs root (mount namespaces, eBPF)";
  auto d = start_daemon("targets: [{name: me, self: true}]\n", {},
                        in_namespace("(umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing "
                                     "2>/dev/null; true) && ! mountpoint -q /sys/kernel/tracing"));
  ASSERT_TRUE(d);
  REQUIRE_COLLECTOR(d, "mmap");
  EXPECT_NE(d->log().find("mounted tracefs at /sys/kernel/tracing"), std::string::npos) << d->log();
}

TEST(EnvironmentFaults, TracefsUnavailableDisablesOnlyWhatNeedsIt) {
  if (!is_root()) GTEST_SKIP() << "needs root (mount namespaces, eBPF)";
  // A read-only /sys/kernel holding only the kernel's BTF (libbpf needs it):
  // nowhere to mount tracefs.
  const std::string btf = make_temp_dir();
  auto d = start_daemon("global: {tick_interval: 200ms}\ntargets: [{name: me, self: true}]\n", {},
                        in_namespace("mount --bind /sys/kernel/btf " + btf +
                                     " && mount -t tmpfs -o size=64k none /sys/kernel && mkdir /sys/kernel/btf"
                                     " && mount --bind " + btf + " /sys/kernel/btf && mount -o remount,ro /sys/kernel"));
  ASSERT_TRUE(d);
  auto s = d->scrape();
  EXPECT_EQ(find_sample(s, "memlens_collector_enabled", {{"collector", "mmap"}}), 0.0) << d->log();
  EXPECT_EQ(find_label(s, "memlens_collector_enabled", {{"collector", "mmap"}}, "reason"), "kernel");
  EXPECT_NE(d->log().find("cannot mount tracefs"), std::string::npos) << d->log();
  // The rest goes on: /proc metrics, and the collectors without tracepoints.
  EXPECT_TRUE(find_sample(s, "memlens_rss_bytes", {{"target", "me"}}));
  for (const char* c : {"proc", "faults", "alloc", "gc"})
    EXPECT_EQ(find_sample(s, "memlens_collector_enabled", {{"collector", c}}), 1.0) << c << "\n" << d->log();
  EXPECT_TRUE(d->child.running());
}
