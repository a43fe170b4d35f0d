// Which names a target can be held under at exec, and which libraries a
// process's loader preloads (pure parts of the allocation collector).
#include <gtest/gtest.h>

#include "collectors/alloc/holds.h"
#include "collectors/elf_symbols.h"

using memlens::Selector;
using memlens::alloc::hold_comms;
using V = std::vector<std::string>;

namespace {
Selector comm(const std::string& c) {
  Selector s;
  s.comm = c;
  return s;
}
Selector exe(const std::string& e) {
  Selector s;
  s.exe = e;
  return s;
}
}  // namespace

TEST(AllocHoldComms, LiteralsAndAlternations) {
  EXPECT_EQ(hold_comms(comm("api-server")), V{"api-server"});
  EXPECT_EQ(hold_comms(comm("python3\\.11")), V{"python3.11"});
  EXPECT_EQ(hold_comms(comm("api|worker")), (V{"api", "worker"}));
  EXPECT_EQ(hold_comms(comm("(api|worker)")), (V{"api", "worker"}));
  EXPECT_EQ(hold_comms(comm("(?:api|worker)")), (V{"api", "worker"}));
  // Truncated as the kernel truncates comm (15 bytes).
  EXPECT_EQ(hold_comms(comm("a_very_long_process_name")), V{"a_very_long_pro"});
}

TEST(AllocHoldComms, PatternsThatNameNoProcessAreNotHeld) {
  EXPECT_TRUE(hold_comms(comm("python.*")).empty());
  EXPECT_TRUE(hold_comms(comm("api|work.+")).empty());
  EXPECT_TRUE(hold_comms(comm("(a)|(b)")).empty());
  EXPECT_TRUE(hold_comms(Selector{}).empty());
  Selector by_cgroup;
  by_cgroup.cgroup = "/system.slice";
  EXPECT_TRUE(hold_comms(by_cgroup).empty());
}

TEST(AllocHoldComms, ExecutablePaths) {
  EXPECT_EQ(hold_comms(exe("/usr/bin/api")), V{"api"});
  EXPECT_EQ(hold_comms(exe(".*/api")), V{"api"});
  EXPECT_EQ(hold_comms(exe("/opt/a/api|/opt/b/worker")), (V{"api", "worker"}));
  EXPECT_TRUE(hold_comms(exe("api")).empty()) << "a bare name is not a path";
  EXPECT_TRUE(hold_comms(exe("/opt/.*/api")).empty());
  // A regex comm falls back to a literal exe.
  Selector both = comm("py.*");
  both.exe = "/usr/bin/python3";
  EXPECT_EQ(hold_comms(both), V{"python3"});
}

TEST(PreloadLibraries, FromTheEnvironmentAndLdSoPreload) {
  using memlens::elf::preload_libraries;
  const std::string env = std::string("PATH=/bin\0LD_PRELOAD=/lib/x86_64-linux-gnu/libc.so.6 libm.so.6:/nope.so\0X=1", 75);
  auto libs = preload_libraries(env, "", "");
  // Absolute paths as given, names found in the library directories, and
  // what exists nowhere dropped.
  ASSERT_EQ(libs.size(), 2u);
  EXPECT_EQ(libs[0], "/lib/x86_64-linux-gnu/libc.so.6");
  EXPECT_NE(libs[1].find("libm.so.6"), std::string::npos);
  EXPECT_TRUE(preload_libraries(std::string("A=1\0B=2", 7), "", "").empty());
  auto etc = preload_libraries("", "libm.so.6\n", "");
  ASSERT_EQ(etc.size(), 1u);
}
