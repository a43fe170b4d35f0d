// Config validation: every error names the file, line and field.
#include <gtest/gtest.h>
#include <re2/re2.h>

#include <fstream>

#include "daemon/config.h"
#include "tests/support/support.h"

using namespace memlens;

namespace {
Error bad(const std::string& yaml) {
  auto c = parse_config(yaml, "test.yaml");
  EXPECT_FALSE(c.ok()) << "accepted:\n" << yaml;
  return c.ok() ? Error{} : c.error();
}
}  // namespace

TEST(Config, EmbeddedDefaultIsValid) {
  auto c = default_config();
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->tick_interval, Duration(1000));
  EXPECT_EQ(c->timeline_window, Duration(3600 * 1000));
  ASSERT_FALSE(c->targets.empty());
  EXPECT_TRUE(c->targets.front().selector.self) << "memlensd watches itself first";
  bool top = false;
  for (const auto& t : c->targets) top |= t.selector.top_rss.value_or(0) == 10;
  EXPECT_TRUE(top);
}

TEST(Config, ExampleCoversEveryFieldAndIsValid) {
  auto c = load_config_file(std::string(MEMLENS_SOURCE_DIR) + "/config/example.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->bpf.ringbuf_bytes, 1u << 18);
  bool duty = false, on_leak = false, sites = false;
  for (const auto& t : c->targets) {
    duty |= t.alloc_mode == AllocMode::duty;
    on_leak |= t.alloc_mode == AllocMode::on_leak && t.leak_budget_bytes_per_second == 65536;
    sites |= t.leak_sites;
  }
  EXPECT_TRUE(duty && on_leak && sites);
}

TEST(Config, SyscallTracingSwitch) {
  auto on = parse_config("targets: [{name: a, comm: a}]\n", "t.yaml");
  ASSERT_TRUE(on.ok());
  EXPECT_TRUE(on->bpf.syscalls);
  auto off = parse_config("bpf: {syscalls: false}\ntargets: [{name: a, comm: a}]\n", "t.yaml");
  ASSERT_TRUE(off.ok()) << off.error().message;
  EXPECT_FALSE(off->bpf.syscalls);
  auto bad = parse_config("bpf: {syscalls: maybe}\ntargets: [{name: a, comm: a}]\n", "t.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("bpf.syscalls"), std::string::npos) << bad.error().message;
}

TEST(Config, FullParse) {
  auto c = parse_config(R"(
global:
  tick_interval: 500ms
  rescan_interval: 5s
  timeline_window: 30m
  leak_window: 2m
  max_targets: 7
targets:
  - name: web
    comm: "nginx"
    cgroup: /system.slice
    max_targets: 2
    alloc: {mode: duty, duty_fraction: 0.25, duty_period: 4s}
  - name: db
    systemd_unit: postgresql.service
    gc: false
)", "t.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->tick_interval, Duration(500));
  EXPECT_EQ(c->timeline_points(), 3600u);
  EXPECT_EQ(c->leak_window, Duration(120000));
  EXPECT_EQ(c->max_targets, 7);
  EXPECT_EQ(c->targets[0].alloc_mode, AllocMode::duty);
  EXPECT_DOUBLE_EQ(c->targets[0].duty_fraction, 0.25);
  EXPECT_TRUE(RE2::FullMatch("nginx", *c->targets[0].selector.comm_re));
  EXPECT_FALSE(RE2::FullMatch("nginx-worker", *c->targets[0].selector.comm_re)) << "comm is a full match";
  EXPECT_FALSE(c->targets[1].gc);
}

TEST(Config, InvalidYamlNamesFileAndLine) {
  auto e = bad("targets:\n  - name: a\n    comm: [unclosed\n");
  EXPECT_EQ(e.code, Errc::invalid);
  EXPECT_NE(e.message.find("test.yaml:"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("invalid YAML"), std::string::npos) << e.message;
}

TEST(Config, UnknownFieldNamesLineAndField) {
  auto e = bad("targets:\n  - name: a\n    comm: x\n    comn: y\n");
  EXPECT_NE(e.message.find("test.yaml:4:"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("targets[0].comn"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("unknown field"), std::string::npos) << e.message;
  auto g = bad("global:\n  tick: 1s\ntargets: [{name: a, self: true}]\n");
  EXPECT_NE(g.message.find("global.tick"), std::string::npos) << g.message;
}

TEST(Config, BadRegex) {
  auto e = bad("targets:\n  - name: a\n    cmdline: \"([a-\"\n");
  EXPECT_NE(e.message.find("test.yaml:3:"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("targets[0].cmdline"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("regular expression"), std::string::npos) << e.message;
}

TEST(Config, SamplerIsReadFromItsPageOrThroughItsProbes) {
  for (const auto& [v, on, probes] : {std::tuple{"true", true, false}, {"false", false, false}, {"probes", true, true}}) {
    auto c = parse_config(std::string("targets:\n  - name: a\n    self: true\n    sampler: ") + v + "\n", "t.yaml");
    ASSERT_TRUE(c) << v;
    EXPECT_EQ(c->targets[0].sampler, on) << v;
    EXPECT_EQ(c->targets[0].sampler_probes, probes) << v;
  }
}

TEST(Config, WrongTypes) {
  EXPECT_NE(bad("targets:\n  - name: a\n    pid: twelve\n").message.find("targets[0].pid: expected an integer"),
            std::string::npos);
  EXPECT_NE(bad("global:\n  tick_interval: fast\ntargets: [{name: a, self: true}]\n").message.find("invalid duration"),
            std::string::npos);
  EXPECT_NE(bad("targets:\n  - name: a\n    self: maybe\n").message.find("expected true or false"), std::string::npos);
  EXPECT_NE(bad("targets:\n  - name: a\n    self: true\n    sampler: probs\n")
                .message.find("targets[0].sampler: expected true, false or probes, got 'probs'"),
            std::string::npos);
  EXPECT_NE(bad("targets:\n  - name: a\n    top_rss: [1]\n").message.find("expected an integer"), std::string::npos);
  EXPECT_NE(bad("targets: {name: a}\n").message.find("targets"), std::string::npos);
  EXPECT_NE(bad("targets:\n  - name: a\n    self: true\n    alloc: {mode: sometimes}\n").message.find("off, full, duty, on-leak"),
            std::string::npos);
}

TEST(Config, SemanticChecks) {
  EXPECT_NE(bad("targets:\n  - name: a\n").message.find("needs a selector"), std::string::npos);
  EXPECT_NE(bad("targets:\n  - {name: a, self: true}\n  - {name: a, pid: 1}\n").message.find("duplicate name"),
            std::string::npos);
  EXPECT_NE(bad("global: {leak_window: 2h}\ntargets: [{name: a, self: true}]\n").message.find("timeline_window"),
            std::string::npos);
  EXPECT_NE(bad("global: {tick_interval: 10ms}\ntargets: [{name: a, self: true}]\n").message.find("at least 100ms"),
            std::string::npos);
  EXPECT_NE(bad("targets:\n  - name: a\n    self: true\n    alloc: {mode: on-leak}\n").message.find("leak_budget"),
            std::string::npos);
  EXPECT_NE(bad("bpf: {ringbuf_bytes: 5000}\ntargets: [{name: a, self: true}]\n").message.find("power of two"),
            std::string::npos);
  EXPECT_NE(bad("").message.find("empty"), std::string::npos);
  EXPECT_NE(bad("targets: []\n").message.find("non-empty"), std::string::npos);
}

TEST(Config, MissingFile) {
  auto c = load_config_file("/nonexistent/memlens.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("/nonexistent/memlens.yaml"), std::string::npos);
}

TEST(Units, DurationsAndSizes) {
  EXPECT_EQ(parse_duration("1h30m"), Duration(5400000));
  EXPECT_EQ(parse_duration("250ms"), Duration(250));
  EXPECT_EQ(parse_duration("1.5s"), Duration(1500));
  EXPECT_FALSE(parse_duration("5"));
  EXPECT_FALSE(parse_duration("-1s"));
  EXPECT_FALSE(parse_duration("1y"));
  EXPECT_EQ(parse_bytes("10KiB"), 10240u);
  EXPECT_EQ(parse_bytes("1MB"), 1000000u);
  EXPECT_EQ(parse_bytes("4096"), 4096u);
  EXPECT_FALSE(parse_bytes("lots"));
  EXPECT_FALSE(parse_bytes("1 XB"));
}

// Reproducers of inputs that took the parser (or the daemon, on a reload)
// down: each is now an error that names where.
TEST(Config, KeysThatAreNotPlainStrings) {
  auto e = bad("{[a]: 1}\n");
  EXPECT_NE(e.message.find("test.yaml:1:"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("a key must be a plain string"), std::string::npos) << e.message;
  EXPECT_NE(bad("targets:\n  - {name: a, self: true, {x: 1}: 2}\n").message.find("plain string"), std::string::npos);
  EXPECT_NE(bad("global: {[tick]: 1s}\ntargets: [{name: a, self: true}]\n").message.find("plain string"),
            std::string::npos);
  EXPECT_NE(bad("targets:\n  - name: a\n    self: true\n    alloc: {? [m] : full}\n").message.find("plain string"),
            std::string::npos);
}

TEST(Config, RegexesAreRe2AndBounded) {
  // ~16k nested groups: too long to be a selector (and never a recursion).
  std::string deep(16000, '(');
  deep += "a" + std::string(16000, ')');
  auto e = bad("targets:\n  - name: a\n    comm: \"" + deep + "\"\n");
  EXPECT_NE(e.message.find("longer than 4096 bytes"), std::string::npos) << e.message.substr(0, 300);
  // Within the bound, deep nesting compiles and matches in linear time.
  std::string nested(1000, '(');
  nested += "a" + std::string(1000, ')');
  auto c = parse_config("targets:\n  - name: a\n    comm: \"" + nested + "\"\n", "t.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message.substr(0, 300);
  EXPECT_TRUE(RE2::FullMatch("a", *c->targets[0].selector.comm_re));
  // Backreferences and lookaheads (std::regex ECMAScript, not RE2) are errors.
  EXPECT_NE(bad("targets:\n  - name: a\n    cmdline: \"(a)\\\\1\"\n").message.find("regular expression"),
            std::string::npos);
  EXPECT_NE(bad("targets:\n  - name: a\n    cmdline: \"a(?=b)\"\n").message.find("regular expression"),
            std::string::npos);
  // What used to take std::regex seconds per process (or its stack):
  // a 64 KiB argument against "java .*-jar" is one linear pass.
  auto j = parse_config("targets:\n  - name: a\n    cmdline: \"java .*-jar\"\n", "t.yaml");
  ASSERT_TRUE(j.ok());
  const std::string arg = "java " + std::string(64 << 10, 'x') + " -jar app.jar";
  EXPECT_TRUE(RE2::PartialMatch(arg, *j->targets[0].selector.cmdline_re));
}

TEST(Config, TimelineMemoryIsBoundedAtValidation) {
  auto e = bad("global: {tick_interval: 100ms, timeline_window: 11000d}\ntargets: [{name: a, self: true}]\n");
  EXPECT_NE(e.message.find("global.timeline_window"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("MiB of timelines"), std::string::npos) << e.message;
  // A day at one second for the default 64 targets fits (~105 MiB).
  auto ok = parse_config("global: {timeline_window: 1d}\ntargets: [{name: a, self: true}]\n", "t.yaml");
  EXPECT_TRUE(ok.ok()) << ok.error().message;
}

TEST(Config, DirectoryIsNotAConfigFile) {
  const std::string dir = memlens::test::make_temp_dir();
  auto c = load_config_file(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find(dir + ": not a regular file"), std::string::npos) << c.error().message;
}

TEST(Units, MalformedNumbersAreRefused) {
  EXPECT_FALSE(parse_duration("1.2.3s"));
  EXPECT_FALSE(parse_duration("0.0001ms")) << "below the 1 ms resolution";
  EXPECT_FALSE(parse_duration("0.5ms")) << "not a whole millisecond";
  EXPECT_FALSE(parse_duration("1e3s"));
  EXPECT_FALSE(parse_duration(" 1s"));
  EXPECT_FALSE(parse_duration("1.s"));
  EXPECT_FALSE(parse_duration(".5s"));
  EXPECT_FALSE(parse_duration("0s"));
  EXPECT_FALSE(parse_duration("s"));
  EXPECT_FALSE(parse_duration("99999999999999999999999d"));
  EXPECT_EQ(parse_duration("0.25s"), Duration(250));
  EXPECT_EQ(parse_duration("1m0.5s"), Duration(60500));
  EXPECT_FALSE(parse_bytes("1.2.3MiB"));
  EXPECT_FALSE(parse_bytes("0.5"));
  EXPECT_FALSE(parse_bytes("nan"));
  EXPECT_FALSE(parse_bytes("99999999999TiB"));
  EXPECT_EQ(parse_bytes("1.5KiB"), 1536u);
  EXPECT_EQ(parse_bytes("2 MiB"), 2u << 20);
}


TEST(Config, BreachWindowUnsetFollowsTheTimeline) {
  // Unset, it is 10 minutes, or the whole timeline when that is shorter.
  auto c = parse_config("global: {timeline_window: 2m, leak_window: 10s}\ntargets: [{name: a, self: true}]\n", "t");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->breach_window, c->timeline_window);
  auto d = parse_config("targets: [{name: a, self: true}]\n", "t");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->breach_window, Duration(10 * 60 * 1000));
  // Set, it is checked.
  auto e = parse_config("global: {timeline_window: 2m, breach_window: 5m}\ntargets: [{name: a, self: true}]\n", "t");
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("breach_window"), std::string::npos);
}

TEST(Config, KubernetesLabelsSwitchAndRuntimeStateRoot) {
  auto def = parse_config("targets: [{name: a, comm: a}]\n", "t.yaml");
  ASSERT_TRUE(def.ok());
  EXPECT_FALSE(def->kubernetes_labels) << "off unless asked for";
  EXPECT_EQ(def->run, "/run");
  auto on = parse_config("global:\n  kubernetes_labels: true\n  path_run: /host/run\ntargets: [{name: a, comm: a}]\n",
                         "t.yaml");
  ASSERT_TRUE(on.ok()) << on.error().message;
  EXPECT_TRUE(on->kubernetes_labels);
  EXPECT_EQ(on->run, "/host/run");
  auto e = bad("global:\n  tick_interval: 1s\n  kubernetes_labels: sometimes\ntargets: [{name: a, comm: a}]\n");
  EXPECT_NE(e.message.find("test.yaml:3:22: global.kubernetes_labels: expected true or false"), std::string::npos)
      << e.message;
  e = bad("global:\n  path_run: host/run\ntargets: [{name: a, comm: a}]\n");
  EXPECT_NE(e.message.find("test.yaml:2:13: global.path_run: must be an absolute path"), std::string::npos)
      << e.message;
  e = bad("global:\n  path_run: [a]\ntargets: [{name: a, comm: a}]\n");
  EXPECT_NE(e.message.find("test.yaml:2:13: global.path_run: expected a string"), std::string::npos) << e.message;
  e = bad("global:\n  kubernetes_label: true\ntargets: [{name: a, comm: a}]\n");
  EXPECT_NE(e.message.find("test.yaml:2:3: global.kubernetes_label: unknown field"), std::string::npos) << e.message;
}
