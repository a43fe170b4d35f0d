#include "tests/support/dashboard.h"

#include <curl/curl.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <regex>

#include "tests/support/support.h"

namespace memlens::test {

namespace {
std::string escape(const std::string& s) {
  char* e = curl_easy_escape(nullptr, s.c_str(), static_cast<int>(s.size()));
  std::string out = e ? e : "";
  curl_free(e);
  return out;
}

}  // namespace

// What Grafana sends with every variable at "All" (allValue ".*") and a
// Prometheus scraped every 15 s, the shipped scrape interval.
std::string grafana_substitute(std::string e) {
  for (const auto& [var, value] : std::vector<std::pair<std::string, std::string>>{
           {"$__rate_interval", "1m"}, {"$__interval", "15s"}, {"$instance", ".*"}, {"$target", ".*"},
           {"$pid", ".*"}})
    for (size_t at; (at = e.find(var)) != std::string::npos;) e.replace(at, var.size(), value);
  return e;
}

std::vector<DashboardQuery> dashboard_queries() {
  const auto d = nlohmann::json::parse(read_text(std::string(MEMLENS_SOURCE_DIR) + "/deploy/grafana/memlens-dashboard.json"));
  std::vector<DashboardQuery> out;
  std::function<void(const nlohmann::json&)> walk = [&](const nlohmann::json& panels) {
    for (const auto& p : panels) {
      if (p.contains("targets"))
        for (const auto& t : p["targets"])
          out.push_back({"panel '" + p.value("title", "?") + "' / " + t.value("refId", "?"), t.value("expr", ""),
                         t.value("instant", false)});
      if (p.contains("panels")) walk(p["panels"]);
    }
  };
  walk(d["panels"]);
  // label_values(EXPR, label): the variable has values when EXPR has series.
  static const std::regex lv(R"(^\s*label_values\((.*),\s*\w+\s*\)\s*$)");
  for (const auto& v : d["templating"]["list"]) {
    if (v.value("type", "") != "query") continue;
    std::smatch m;
    const std::string q = v["query"].is_string() ? v["query"].get<std::string>() : v["query"].value("query", "");
    if (std::regex_match(q, m, lv)) out.push_back({"variable " + v.value("name", "?"), m[1], true});
  }
  for (const auto& a : d["annotations"]["list"])
    if (a.contains("expr")) out.push_back({"annotation '" + a.value("name", "?") + "'", a["expr"], false});
  return out;
}

// The series of an instant query (now) or a range query (the last 2
// minutes), as JSON; a null on error.
nlohmann::json prom_query(int port, const DashboardQuery& q) {
  const std::string base = "http://127.0.0.1:" + std::to_string(port) + "/api/v1/";
  std::string url;
  if (q.instant) {
    url = base + "query?query=" + escape(grafana_substitute(q.expr));
  } else {
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch()).count();
    url = base + "query_range?query=" + escape(grafana_substitute(q.expr)) + "&start=" + std::to_string(now - 120) +
          "&end=" + std::to_string(now) + "&step=2";
  }
  auto r = http_get(url);
  auto doc = nlohmann::json::parse(r.body, nullptr, false);
  if (r.status != 200 || doc.is_discarded() || doc.value("status", "") != "success") {
    nlohmann::json err;
    err["error"] = r.status != 200 ? "HTTP " + std::to_string(r.status) + ": " + r.body : r.body;
    return err;
  }
  return doc["data"]["result"];
}

// Whether any series has a value that is not NaN (Grafana draws nothing for NaN).
bool has_data(const nlohmann::json& result) {
  if (!result.is_array()) return false;
  auto drawable = [](const nlohmann::json& v) { return !std::isnan(std::stod(v[1].get<std::string>())); };
  for (const auto& s : result) {
    if (s.contains("value") && drawable(s["value"])) return true;
    if (s.contains("values"))
      for (const auto& v : s["values"])
        if (drawable(v)) return true;
  }
  return false;
}

}  // namespace memlens::test
