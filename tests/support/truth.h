// The ground truth a workload writes once a second (one JSON object a line).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "tests/support/support.h"

namespace memlens::test {

// The workload's latest report, or an empty object before its first.
inline nlohmann::json latest_truth(const std::string& path) {
  const std::string line = last_line(path);
  if (line.empty()) return nlohmann::json::object();
  return nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
}

}  // namespace memlens::test
