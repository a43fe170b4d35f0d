// memlensd: parses flags, loads the config, starts HTTP and the event loop.
// Only here do errors become exit codes: 2 for bad flags or config.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <malloc.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "collectors/glibc_heap.h"
#include "collectors/registry.h"
#include "daemon/app.h"

namespace {

constexpr const char* kUsage = R"(usage: memlensd [flags]

Watches the memory of processes from the outside (/proc and eBPF) and serves
it to Prometheus.

Flags:
  --config.file=PATH          YAML configuration (default: the embedded default,
                              which watches memlensd, java/node/python/postgres
                              processes and the 10 largest processes by RSS)
  --web.listen-address=ADDR   address to serve on (default 127.0.0.1:19723):
                              IPv4:port, [IPv6]:port, localhost:port, or
                              :port for every interface; repeat the flag (or
                              give a comma-separated list) for several
  --web.telemetry-path=PATH   path of the metrics (default /metrics)
  --web.config.file=PATH      TLS and basic auth (exporter-toolkit web config
                              format, plus api_users); read at start
  --web.max-connections=N     simultaneous HTTP connections (default 512)
  --path.procfs=PATH          procfs mount point (default /proc)
  --path.run=PATH             the host's /run, where container runtimes keep
                              each container's state (default /run); read for
                              global.kubernetes_labels
  --state.path=DIR            keep timelines in DIR/timelines.state, so a restart
                              resumes the history of targets still running
                              (default: none, timelines in memory only)
  --path.debug=PATH           where debug symbols are found by build id
                              (default /usr/lib/debug); without them glibc's
                              heap books are located by decoding libc's code
  --log.level=LEVEL           debug, info, warn or error (default info)
  --check-config              validate the configuration and flags and exit (0 ok,
                              2 bad; 1 for a bad --web.config.file)
  --version                   print the version and exit
  -h, --help                  this text

Signals: SIGHUP reloads the configuration (a bad file keeps the running one),
SIGTERM and SIGINT stop.
)";

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "memlensd: %s\n(see memlensd --help)\n", msg.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // memlensd's own heap: glibc's defaults keep what it frees. Its dynamic
  // mmap threshold rises to the largest block ever freed (a scrape's
  // exposition), and the trim threshold with it to twice that, so freed
  // arenas stayed resident: 300 targets that came and went left 17 MiB
  // behind in the HTTP threads' arenas. Fixed thresholds and one arena (our
  // threads allocate little) keep RSS at its level (+1 MiB measured).
  mallopt(M_MMAP_THRESHOLD, 128 << 10);
  mallopt(M_TRIM_THRESHOLD, 128 << 10);
  mallopt(M_ARENA_MAX, 1);
  memlens::Options opts;
  memlens::ExporterOptions web;
  std::vector<std::string> listen;
  std::string web_config_file;
  std::string log_level = "info";
  bool check_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string key = a, value;
    bool has_value = false;
    if (auto eq = a.find('='); eq != std::string::npos && a.rfind("--", 0) == 0) {
      key = a.substr(0, eq);
      value = a.substr(eq + 1);
      has_value = true;
    }
    auto take = [&]() -> bool {
      if (has_value) return true;
      if (i + 1 >= argc) return false;
      value = argv[++i];
      return true;
    };
    if (key == "-h" || key == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (key == "--version") {
      std::printf("memlensd version %s (revision %s)\n", MEMLENS_VERSION, MEMLENS_REVISION);
      return 0;
    } else if (key == "--check-config") {
      check_only = true;
    } else if (key == "--config.file") {
      if (!take()) return usage_error("--config.file needs a value");
      opts.config_file = value;
    } else if (key == "--web.listen-address") {
      if (!take()) return usage_error("--web.listen-address needs a value");
      listen.push_back(value);
    } else if (key == "--web.telemetry-path") {
      if (!take()) return usage_error("--web.telemetry-path needs a value");
      web.metrics_path = value;
    } else if (key == "--web.config.file") {
      if (!take()) return usage_error("--web.config.file needs a value");
      web_config_file = value;
    } else if (key == "--web.max-connections") {
      if (!take()) return usage_error("--web.max-connections needs a value");
      if (value.empty() || value.size() > 6 || value.find_first_not_of("0123456789") != std::string::npos ||
          std::stoul(value) < 1 || std::stoul(value) > 100000)
        return usage_error("--web.max-connections must be a number from 1 to 100000");
      web.max_connections = std::stoul(value);
    } else if (key == "--state.path") {
      if (!take()) return usage_error("--state.path needs a value");
      opts.state_path = value;
    } else if (key == "--path.procfs") {
      if (!take()) return usage_error("--path.procfs needs a value");
      opts.procfs = value;
    } else if (key == "--path.run") {
      if (!take()) return usage_error("--path.run needs a value");
      if (value.empty() || value.front() != '/') return usage_error("--path.run must be an absolute path");
      opts.run = value;
    } else if (key == "--path.debug") {
      if (!take()) return usage_error("--path.debug needs a value");
      memlens::glibc::set_debug_directory(value);
    } else if (key == "--log.level") {
      if (!take()) return usage_error("--log.level needs a value");
      log_level = value;
    } else {
      return usage_error("unknown flag '" + a + "'");
    }
  }
  if (!listen.empty()) web.listen = listen;
  // Flag errors are found before anything starts, --check-config included.
  if (auto addrs = memlens::parse_listen_addresses(web.listen); !addrs) return usage_error(addrs.error().message);
  if (auto p = memlens::check_metrics_path(web.metrics_path); !p) return usage_error(p.error().message);

  auto logger = spdlog::stderr_color_mt("memlensd");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  const auto level = spdlog::level::from_str(log_level);
  if (level == spdlog::level::off && log_level != "off")
    return usage_error("--log.level must be one of debug, info, warn, error");
  spdlog::set_level(level);

  auto cfg = opts.config_file.empty() ? memlens::default_config() : memlens::load_config_file(opts.config_file);
  if (!cfg) {
    std::fprintf(stderr, "memlensd: bad configuration: %s\n", cfg.error().message.c_str());
    return 2;
  }
  if (!opts.procfs.empty()) cfg->procfs = opts.procfs;
  if (!opts.run.empty()) cfg->run = opts.run;
  if (auto r = memlens::ProcFs(cfg->procfs).check(); !r) {
    std::fprintf(stderr, "memlensd: %s %s\n", opts.procfs.empty() ? "global.path_procfs:" : "--path.procfs:",
                 r.error().message.c_str());
    return 2;
  }
  if (check_only) {
    std::printf("%s: OK (%zu target selector(s))\n", cfg->source.c_str(), cfg->targets.size());
    if (!web_config_file.empty()) {
      auto wc = memlens::load_web_config(web_config_file);
      if (!wc) {
        std::fprintf(stderr, "memlensd: bad web config: %s\n", wc.error().message.c_str());
        return 1;
      }
      std::printf("%s: OK (%s, %zu user(s))\n", web_config_file.c_str(), wc->tls_context ? "TLS" : "plain HTTP",
                  wc->users.size());
    }
    return 0;
  }

  // The proc collector keeps two /proc files open per target: lift the soft
  // descriptor limit to the hard one (allowed without privileges).
  if (rlimit rl{}; getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) spdlog::debug("could not raise RLIMIT_NOFILE");
  }

  // A bad web config exits 1, as exporter-toolkit's users expect.
  std::shared_ptr<const memlens::WebConfig> web_config;
  if (!web_config_file.empty()) {
    auto wc = memlens::load_web_config(web_config_file);
    if (!wc) {
      spdlog::critical("bad web config: {}", wc.error().message);
      return 1;
    }
    web_config = std::make_shared<const memlens::WebConfig>(std::move(*wc));
  }
  auto exporter = memlens::Exporter::start(web, web_config);
  if (!exporter) {
    spdlog::critical("{}", exporter.error().message);
    return exporter.error().code == memlens::Errc::invalid ? 2 : 1;
  }
  std::string where;
  for (const auto& l : web.listen) where += (where.empty() ? "" : ", ") + l;
  spdlog::info("memlensd {} serving {} on {} ({}{}; {} target selector(s) from {})", MEMLENS_VERSION,
               web.metrics_path, where, web_config && web_config->tls_context ? "TLS" : "plain HTTP",
               web_config && web_config->auth_required() ? ", basic auth" : "", cfg->targets.size(), cfg->source);
  memlens::App app(opts, std::make_shared<const memlens::Config>(std::move(*cfg)), std::move(*exporter),
                   memlens::make_collectors());
  const int rc = app.run();
  spdlog::info("stopped");
  return rc;
}
