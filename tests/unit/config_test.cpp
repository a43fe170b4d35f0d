#include <gtest/gtest.h>

#include "daemon/config.h"

using namespace memlens;

TEST(Config, EmbeddedDefaultIsValid) {
  auto c = default_config();
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->tick_interval, Duration(1000));
}
