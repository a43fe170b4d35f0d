// The shipped Grafana dashboard's queries, and a Prometheus to ask them of:
// shared by the test that feeds every panel and the demo's test.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace memlens::test {

struct DashboardQuery {
  std::string where;  // "panel 'title' / A", "variable pid", "annotation ..."
  std::string expr;   // as in the dashboard
  bool instant = false;
};

// Every panel target, query variable (label_values(EXPR, l): EXPR) and
// annotation of deploy/grafana/memlens-dashboard.json.
std::vector<DashboardQuery> dashboard_queries();
// The expression as Grafana sends it with every variable at "All".
std::string grafana_substitute(std::string e);
// The series of an instant query (now) or a range query (the last 2
// minutes) from the Prometheus on 127.0.0.1:port; a JSON with "error" on failure.
nlohmann::json prom_query(int port, const DashboardQuery& q);
// Whether any series has a value that is not NaN (Grafana draws nothing for NaN).
bool has_data(const nlohmann::json& result);

}  // namespace memlens::test
