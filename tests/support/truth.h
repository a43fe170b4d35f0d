// The ground truth a workload writes once a second (one JSON object a line).
#pragma once

#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/support.h"

namespace memlens::test {

// The workload's latest report, or an empty object before its first.
inline nlohmann::json latest_truth(const std::string& path) {
  const std::string line = last_line(path);
  if (line.empty()) return nlohmann::json::object();
  return nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
}

// Every complete report so far, oldest first.
inline std::vector<nlohmann::json> truth_lines(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::istringstream in(read_text(path));
  for (std::string line; std::getline(in, line);)
    if (auto j = nlohmann::json::parse(line, nullptr, false); !j.is_discarded()) out.push_back(std::move(j));
  return out;
}

}  // namespace memlens::test
