// A collector's Sample read back by the unit tests.
#pragma once

#include <algorithm>
#include <optional>
#include <string>

#include "daemon/metric.h"

namespace memlens::test {

// The value of the first series named `name` whose labels include `want`.
inline std::optional<double> sample_value(const Sample& s, const std::string& name, const Labels& want = {}) {
  for (const auto& v : s.values()) {
    if (v.desc->name != name) continue;
    bool all = true;
    for (const auto& l : want) all &= std::find(v.extra().begin(), v.extra().end(), l) != v.extra().end();
    if (all) return v.value;
  }
  return std::nullopt;
}

}  // namespace memlens::test
