#include <gtest/gtest.h>

#include <string>

#include "collectors/browser_collector.h"

using namespace memlens;
using namespace std::string_literals;

TEST(Browser, ProcessTypeFromTheCommandLine) {
  // As the kernel keeps it (NUL-separated) ...
  EXPECT_EQ(classify_browser_process("/usr/lib/chromium/chromium\0--type=renderer\0--lang=en\0"s),
            BrowserProcess::renderer);
  EXPECT_EQ(classify_browser_process("/usr/lib/chromium/chromium\0--headless=new\0"s), BrowserProcess::browser);
  // ... and as Chromium rewrites its children's titles (one string, spaces).
  EXPECT_EQ(classify_browser_process("/usr/lib/chromium/chromium --type=zygote --no-sandbox"),
            BrowserProcess::zygote);
  EXPECT_EQ(classify_browser_process("/usr/lib/chromium/chromium --type=gpu-process --gpu-preferences=x"),
            BrowserProcess::gpu);
  EXPECT_EQ(classify_browser_process("chrome --type=utility --utility-sub-type=network.mojom.NetworkService"),
            BrowserProcess::utility);
  EXPECT_EQ(classify_browser_process("chrome --type=crashpad-handler"), BrowserProcess::other);
  // A switch that only contains the text is not a type.
  EXPECT_EQ(classify_browser_process("chrome --flag=--type=renderer"), BrowserProcess::browser);
  EXPECT_EQ(classify_browser_process(""), BrowserProcess::browser);
  EXPECT_EQ(classify_browser_process("--type="), BrowserProcess::other);
  EXPECT_STREQ(browser_process_name(BrowserProcess::gpu), "gpu");
}

TEST(Browser, BrowserExecutables) {
  EXPECT_TRUE(is_browser_exe("/usr/lib/chromium/chromium"));
  EXPECT_TRUE(is_browser_exe("/opt/google/chrome/chrome"));
  EXPECT_TRUE(is_browser_exe("/opt/google/chrome/chrome (deleted)"));
  EXPECT_TRUE(is_browser_exe("chrome-headless-shell"));
  EXPECT_FALSE(is_browser_exe("/usr/bin/node"));
  EXPECT_FALSE(is_browser_exe("/usr/lib/chromium/chrome_crashpad_handler"));
  EXPECT_FALSE(is_browser_exe(""));
}
