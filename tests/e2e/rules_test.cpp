// deploy/: the Prometheus rules pass promtool's checks and their own unit
// tests, the scrape config loads in a real Prometheus config, the Grafana
// dashboard is valid JSON, and every metric the dashboard and the rules
// query is one memlensd declares (or a standard one), so a renamed metric
// breaks this test instead of silently emptying a panel or an alert.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "daemon/config.h"
#include "tests/support/support.h"

namespace fs = std::filesystem;
namespace mt = memlens::test;

namespace {

const std::string kSrc = MEMLENS_SOURCE_DIR;
const std::string kRules = kSrc + "/deploy/prometheus/memlens.rules.yml";
const std::string kRulesTest = kSrc + "/deploy/prometheus/memlens.rules.test.yml";
const std::string kScrape = kSrc + "/deploy/prometheus/scrape.yml";
const std::string kScrapeK8s = kSrc + "/deploy/prometheus/scrape-kubernetes.yml";
const std::string kDashboard = kSrc + "/deploy/grafana/memlens-dashboard.json";
const std::string kDaemonSet = kSrc + "/deploy/kubernetes/daemonset.yaml";

bool have_promtool() { return mt::run("command -v promtool >/dev/null") == 0; }

// Metric names a PromQL expression selects. Strings, label matchers, ranges
// and grouping clauses are removed first; what is left that is an identifier
// not followed by "(" (a function or aggregation) nor a keyword is a metric.
std::set<std::string> metric_names(std::string e) {
  static const std::regex strings(R"("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')");
  static const std::regex matchers(R"(\{[^}]*\})");
  static const std::regex ranges(R"(\[[^\]]*\])");
  static const std::regex grouping(R"(\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\))");
  static const std::regex comments(R"(#[^\n]*)");
  static const std::regex ident(R"([A-Za-z_:][A-Za-z0-9_:]*)");
  static const std::set<std::string> keywords = {"by", "without", "on", "ignoring", "group_left", "group_right",
                                                 "and", "or", "unless", "bool", "offset", "Inf", "NaN", "inf", "nan"};
  e = std::regex_replace(e, strings, "\"\"");
  e = std::regex_replace(e, comments, "");
  e = std::regex_replace(e, matchers, "{}");
  e = std::regex_replace(e, ranges, "");
  e = std::regex_replace(e, grouping, " ");
  std::set<std::string> out;
  for (auto it = std::sregex_iterator(e.begin(), e.end(), ident); it != std::sregex_iterator(); ++it) {
    const auto pos = static_cast<size_t>(it->position() + it->length());
    // Part of a number (1e3) or of a $variable: not a name.
    if (it->position() > 0) {
      const char before = e[static_cast<size_t>(it->position()) - 1];
      if (std::isdigit(static_cast<unsigned char>(before)) || before == '$' || before == '.') continue;
    }
    size_t next = e.find_first_not_of(" \t\n", pos);
    if (next != std::string::npos && e[next] == '(') continue;
    if (keywords.count(it->str())) continue;
    out.insert(it->str());
  }
  return out;
}

// Every memlens_* name declared in the sources through metric(base, unit,
// kind, help), with the suffixes the exposition adds.
std::set<std::string> declared_metrics() {
  static const std::regex call(R"re(\bmetric\(\s*"(\w+)"\s*,\s*"(\w*)"\s*,\s*MetricKind::(\w+))re");
  static const std::regex literal(R"re("((?:memlens|process)_\w+)")re");
  std::set<std::string> out;
  for (const char* dir : {"daemon", "collectors"}) {
    for (const auto& f : fs::directory_iterator(kSrc + "/" + dir)) {
      if (f.path().extension() != ".cpp" && f.path().extension() != ".h") continue;
      const std::string text = mt::read_text(f.path().string());
      for (auto it = std::sregex_iterator(text.begin(), text.end(), call); it != std::sregex_iterator(); ++it) {
        std::string name = "memlens_" + (*it)[1].str();
        if (!(*it)[2].str().empty()) name += "_" + (*it)[2].str();
        const std::string kind = (*it)[3];
        if (kind == "counter") {
          out.insert(name + "_total");
        } else if (kind == "histogram") {
          for (const char* s : {"_bucket", "_sum", "_count"}) out.insert(name + s);
        } else {
          out.insert(name);
        }
      }
      // Names spelled out in full (standard process_* metrics).
      for (auto it = std::sregex_iterator(text.begin(), text.end(), literal); it != std::sregex_iterator(); ++it)
        out.insert((*it)[1]);
    }
  }
  return out;
}

struct RuleSet {
  std::set<std::string> recorded;             // names made by `record:` rules
  std::vector<std::pair<std::string, std::string>> exprs;  // (rule, expr)
};

RuleSet load_rules() {
  RuleSet r;
  YAML::Node doc = YAML::LoadFile(kRules);
  for (const auto& g : doc["groups"])
    for (const auto& rule : g["rules"]) {
      const std::string name = rule["record"] ? rule["record"].as<std::string>() : rule["alert"].as<std::string>();
      if (rule["record"]) r.recorded.insert(name);
      r.exprs.emplace_back(name, rule["expr"].as<std::string>());
    }
  return r;
}

// The queries of a Grafana dashboard: panel targets (nested in rows too),
// variable queries and annotation queries.
void collect_queries(const nlohmann::json& panels, std::vector<std::pair<std::string, std::string>>& out) {
  for (const auto& p : panels) {
    const std::string title = p.value("title", "?");
    if (p.contains("targets"))
      for (const auto& t : p["targets"])
        if (t.contains("expr")) out.emplace_back("panel '" + title + "'", t["expr"].get<std::string>());
    if (p.contains("panels")) collect_queries(p["panels"], out);
  }
}

// label_values(EXPR, label) -> EXPR
std::string variable_expr(const std::string& q) {
  static const std::regex lv(R"(^\s*label_values\((.*),\s*\w+\s*\)\s*$)");
  std::smatch m;
  if (std::regex_match(q, m, lv)) return m[1];
  static const std::regex qr(R"(^\s*query_result\((.*)\)\s*$)");
  if (std::regex_match(q, m, qr)) return m[1];
  return q;
}


// Every string literal in the sources of memlensd (daemon/, collectors/ and
// below): a label value the rules or their tests use must be one of them.
std::set<std::string> source_literals() {
  static const std::regex literal(R"re("([A-Za-z0-9_.:-]+)")re");
  std::set<std::string> out;
  for (const char* dir : {"daemon", "collectors"}) {
    for (const auto& f : fs::recursive_directory_iterator(kSrc + "/" + dir)) {
      if (f.path().extension() != ".cpp" && f.path().extension() != ".h") continue;
      const std::string text = mt::read_text(f.path().string());
      for (auto it = std::sregex_iterator(text.begin(), text.end(), literal); it != std::sregex_iterator(); ++it)
        out.insert((*it)[1]);
    }
  }
  return out;
}

bool standard_name(const std::string& n) {
  return n == "up" || n == "ALERTS" || n == "ALERTS_FOR_STATE" || n.rfind("process_", 0) == 0;
}

}  // namespace

TEST(MetricNames, ParserFindsOnlyMetrics) {
  // The extractor itself: functions, labels, strings, ranges are not names.
  auto n = metric_names(
      R"(histogram_quantile(0.99, sum by (job, le) (rate(memlens_gc_pause_seconds_bucket{target=~"$t"}[5m])))
         > on (target) group_left () memlens:budget or label_replace(vector(1e3), "target", "x_y", "", "")
         and up{job="memlens"} == 0 unless process_cpu_seconds_total offset 5m)");
  EXPECT_EQ(n, (std::set<std::string>{"memlens_gc_pause_seconds_bucket", "memlens:budget", "up",
                                      "process_cpu_seconds_total"}));
}

TEST(PrometheusRules, PromtoolCheckRules) {
  if (!have_promtool()) GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  std::string out;
  EXPECT_EQ(mt::run("promtool check rules " + kRules, &out), 0) << out;
  // Control: promtool does reject a broken rule, so the check above means something.
  const std::string dir = mt::make_temp_dir("memlens-rules");
  mt::write_text(dir + "/bad.yml", "groups:\n  - name: x\n    rules:\n      - alert: Bad\n        expr: rate(memlens_x[5m]\n");
  EXPECT_NE(mt::run("promtool check rules " + dir + "/bad.yml", &out), 0) << out;
  mt::run("rm -rf " + dir);
}

TEST(PrometheusRules, PromtoolUnitTestsPass) {
  if (!have_promtool()) GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  std::string out;
  const int rc = mt::run("cd " + kSrc + "/deploy/prometheus && promtool test rules " + kRulesTest, &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("SUCCESS"), std::string::npos) << out;
  // Every alert of the rules file is exercised by the tests, firing at least once.
  const std::string tests = mt::read_text(kRulesTest);
  for (const auto& [name, expr] : load_rules().exprs) {
    if (name.rfind("Memlens", 0) != 0) continue;
    EXPECT_NE(tests.find("alertname: " + name), std::string::npos) << name << " has no promtool test";
  }
}

TEST(PrometheusRules, ScrapeConfigLoads) {
  if (!have_promtool()) GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  // scrape.yml is a `scrape_configs:` block to paste into prometheus.yml:
  // build such a file around it, with the rules, and let promtool load it.
  const std::string dir = mt::make_temp_dir("memlens-prom");
  const std::string head = "global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\nrule_files:\n  - " + kRules + "\n";
  mt::write_text(dir + "/prometheus.yml", head + mt::read_text(kScrape));
  std::string out;
  EXPECT_EQ(mt::run("promtool check config " + dir + "/prometheus.yml", &out), 0) << out;
  EXPECT_NE(out.find("SUCCESS"), std::string::npos) << out;
  // MemlensDown's job matcher (job=~"memlens.*") matches every job.
  for (const auto& file : {kScrape, kScrapeK8s}) {
    YAML::Node doc = YAML::Load(mt::read_text(file));
    ASSERT_TRUE(doc["scrape_configs"]) << file;
    for (const auto& j : doc["scrape_configs"])
      EXPECT_TRUE(std::regex_match(j["job_name"].as<std::string>(), std::regex("memlens.*"))) << file;
  }
  mt::run("rm -rf " + dir);
}

TEST(PrometheusRules, KubernetesScrapeConfigLoads) {
  if (!have_promtool()) GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  const std::string dir = mt::make_temp_dir("memlens-prom");
  mt::write_text(dir + "/prometheus.yml", "global:\n  scrape_interval: 15s\n" + mt::read_text(kScrapeK8s));
  std::string out;
  const int rc = mt::run("promtool check config " + dir + "/prometheus.yml", &out);
  mt::run("rm -rf " + dir);
  if (rc != 0 && out.find("field kubernetes_sd_configs not found") != std::string::npos)
    GTEST_SKIP() << "this promtool is built without Kubernetes service discovery (Debian's is): "
                    "scrape-kubernetes.yml not checked";
  EXPECT_EQ(rc, 0) << out;
}

TEST(GrafanaDashboard, IsValidAndHasTheVariables) {
  nlohmann::json d;
  ASSERT_NO_THROW(d = nlohmann::json::parse(mt::read_text(kDashboard))) << kDashboard;
  EXPECT_FALSE(d.value("uid", "").empty());
  EXPECT_FALSE(d.value("title", "").empty());
  std::set<std::string> vars;
  for (const auto& v : d["templating"]["list"]) vars.insert(v["name"].get<std::string>());
  for (const char* v : {"datasource", "instance", "target", "pid"}) EXPECT_TRUE(vars.count(v)) << "no $" << v;
  // Unique panel ids, no overlapping grid cells.
  std::set<int> ids;
  std::set<std::pair<int, int>> cells;
  for (const auto& p : d["panels"]) {
    EXPECT_TRUE(ids.insert(p["id"].get<int>()).second) << "duplicate panel id " << p["id"];
    const auto& g = p["gridPos"];
    for (int x = g["x"].get<int>(); x < g["x"].get<int>() + g["w"].get<int>(); ++x)
      for (int y = g["y"].get<int>(); y < g["y"].get<int>() + g["h"].get<int>(); ++y)
        EXPECT_TRUE(cells.insert({x, y}).second) << "panel '" << p.value("title", "") << "' overlaps at " << x << "," << y;
    if (p["type"] != "row") {
      ASSERT_TRUE(p.contains("targets")) << p.value("title", "");
      EXPECT_FALSE(p["targets"].empty()) << p.value("title", "");
    }
  }
}

TEST(MetricNames, DashboardAndRulesUseOnlyMemlensOrStandardMetrics) {
  const auto declared = declared_metrics();
  ASSERT_TRUE(declared.count("memlens_rss_bytes")) << "source scan found no metric() declarations";
  const RuleSet rules = load_rules();

  std::vector<std::pair<std::string, std::string>> queries;
  for (const auto& [name, expr] : rules.exprs) queries.emplace_back("rule " + name, expr);
  const auto d = nlohmann::json::parse(mt::read_text(kDashboard));
  collect_queries(d["panels"], queries);
  for (const auto& v : d["templating"]["list"])
    if (v.value("type", "") == "query") {
      const auto& q = v["query"];
      queries.emplace_back("variable " + v["name"].get<std::string>(),
                           variable_expr(q.is_string() ? q.get<std::string>() : q.value("query", "")));
    }
  for (const auto& a : d["annotations"]["list"])
    if (a.contains("expr")) queries.emplace_back("annotation " + a.value("name", ""), a["expr"].get<std::string>());
  ASSERT_GT(queries.size(), 20u);

  std::set<std::string> used;
  for (const auto& [where, expr] : queries) {
    const auto names = metric_names(expr);
    // A static vector() is the only query allowed to select nothing.
    if (expr.find("vector(") == std::string::npos) {
      EXPECT_FALSE(names.empty()) << where << " selects no metric: " << expr;
    }
    for (const auto& n : names) {
      used.insert(n);
      const bool ours = n.rfind("memlens_", 0) == 0 || n.rfind("memlens:", 0) == 0;
      EXPECT_TRUE(ours || standard_name(n)) << where << " uses " << n << ", neither memlens_* nor standard";
      if (n.rfind("memlens_", 0) == 0) {
        EXPECT_TRUE(declared.count(n)) << where << " uses " << n << ", which no metric() in daemon/ or collectors/ declares";
      }
      if (n.rfind("memlens:", 0) == 0) {
        EXPECT_TRUE(rules.recorded.count(n)) << where << " uses " << n << ", which no recording rule makes";
      }
    }
  }
  // The dashboard covers what the brief asks of it.
  for (const char* n : {"memlens_rss_bytes", "memlens_pss_bytes", "memlens_uss_bytes", "memlens_heap_live_bytes",
                        "memlens_leak_slope_bytes_per_second", "memlens_leak_slope_confidence",
                        "memlens_alloc_bytes_total", "memlens_heap_fragmentation_ratio", "memlens_heap_resident_unused_ratio",
                        "memlens_gc_pause_seconds_bucket", "memlens_page_faults_total", "memlens_tick_duration_seconds"})
    EXPECT_TRUE(used.count(n)) << n << " is on no panel or rule";
}

TEST(KubernetesDaemonSet, ConfigMapIsAValidMemlensConfig) {
  std::vector<YAML::Node> docs;
  ASSERT_NO_THROW(docs = YAML::LoadAllFromFile(kDaemonSet));
  std::string config;
  YAML::Node ds;
  for (const auto& d : docs) {
    if (!d || !d["kind"]) continue;
    if (d["kind"].as<std::string>() == "ConfigMap") config = d["data"]["memlens.yaml"].as<std::string>();
    if (d["kind"].as<std::string>() == "DaemonSet") ds = d;
  }
  ASSERT_FALSE(config.empty()) << "no ConfigMap with memlens.yaml";
  ASSERT_TRUE(ds) << "no DaemonSet";
  const auto spec = ds["spec"]["template"]["spec"];
  EXPECT_TRUE(spec["hostPID"].as<bool>());
  const auto c = spec["containers"][0];
  EXPECT_FALSE(c["securityContext"]["privileged"].as<bool>());
  EXPECT_TRUE(c["resources"]["limits"]["memory"]);

  // The container's flags and its config are accepted by the real binary.
  const std::string dir = mt::make_temp_dir("memlens-k8s");
  mt::write_text(dir + "/memlens.yaml", config);
  std::string cmd = mt::memlensd_path();
  bool procfs_flag = false;
  for (const auto& a : c["args"]) {
    std::string arg = a.as<std::string>();
    if (arg.rfind("--config.file=", 0) == 0) arg = "--config.file=" + dir + "/memlens.yaml";
    // The container sees the host's /proc at /host/proc; here it is /proc.
    if (arg == "--path.procfs=/host/proc") {
      procfs_flag = true;
      arg = "--path.procfs=/proc";
    }
    cmd += " '" + arg + "'";
  }
  std::string out;
  EXPECT_EQ(mt::run(cmd + " --check-config", &out), 0) << cmd << "\n" << out;
  EXPECT_TRUE(procfs_flag) << "the container reads the host's /proc at /host/proc";

  // Kubernetes labels are on, and the runtimes' state is mounted, read-only,
  // where --path.run says the host's /run is.
  EXPECT_TRUE(YAML::Load(config)["global"]["kubernetes_labels"].as<bool>());
  std::string run_root;
  for (const auto& a : c["args"])
    if (a.as<std::string>().rfind("--path.run=", 0) == 0) run_root = a.as<std::string>().substr(11);
  ASSERT_EQ(run_root, "/host/run");
  std::map<std::string, std::string> host_of;  // volume name -> host path
  for (const auto& v : spec["volumes"])
    if (v["hostPath"]) host_of[v["name"].as<std::string>()] = v["hostPath"]["path"].as<std::string>();
  int state_mounts = 0;
  for (const auto& m : c["volumeMounts"]) {
    const std::string at = m["mountPath"].as<std::string>();
    if (at.rfind(run_root + "/", 0) != 0) continue;
    ++state_mounts;
    EXPECT_TRUE(m["readOnly"] && m["readOnly"].as<bool>()) << at;
    // The layout under the root is the host's: /host/run/X is the host's /run/X.
    EXPECT_EQ(host_of[m["name"].as<std::string>()], "/run" + at.substr(run_root.size())) << at;
  }
  EXPECT_EQ(state_mounts, 2) << "containerd's and CRI-O's container state";
  mt::run("rm -rf " + dir);
}

// The label values the rules and their promtool tests select or feed are
// values memlensd emits (a string in its sources): runtime="v8" (the runtime
// is "node"; "v8" is a heap source) or kind="young" would test a rule
// against series that never exist.
TEST(MetricNames, RulesAndTheirTestsUseLabelValuesMemlensdEmits) {
  const auto literals = source_literals();
  ASSERT_TRUE(literals.count("mark_compact") && literals.count("capability")) << "source scan found no literals";
  static const std::regex pair(R"re(\b(runtime|kind|reason|resource|source|percentile|collector|space|part|result|mode|method)\s*=\s*"([^"]*)")re");
  int checked = 0;
  for (const auto& file : {kRules, kRulesTest}) {
    const std::string text = mt::read_text(file);
    for (auto it = std::sregex_iterator(text.begin(), text.end(), pair); it != std::sregex_iterator(); ++it) {
      if ((*it)[2].str().find("{{") != std::string::npos) continue;  // a template in an annotation
      ++checked;
      EXPECT_TRUE(literals.count((*it)[2])) << file << ": " << (*it)[0] << " is a value memlensd never emits";
    }
  }
  EXPECT_GT(checked, 50);
  // The control: a value memlensd does not emit is caught.
  EXPECT_FALSE(literals.count("old_space"));
  EXPECT_FALSE(literals.count("young"));
}

// Every budget kind of the config has an alert that joins its budget series.
TEST(PrometheusRules, EveryBudgetKindHasAnAlert) {
  const RuleSet rules = load_rules();
  for (const auto& key : memlens::kBudgetKeys) {
    const std::string sel = std::string("resource=\"") + key.name + "\"";
    bool found = false;
    for (const auto& [name, expr] : rules.exprs)
      found |= name.rfind("Memlens", 0) == 0 && expr.find("memlens_budget_") != std::string::npos &&
               expr.find(sel) != std::string::npos;
    EXPECT_TRUE(found) << "no alert joins the " << key.name << " budget";
  }
}
