// memlensd: parses flags, loads the config, starts HTTP and the event loop.
// Only here do errors become exit codes: 2 for bad flags or config.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <sys/resource.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

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
  --web.listen-address=ADDR   address to serve on (default 127.0.0.1:19723;
                              ":19723" for every interface)
  --web.telemetry-path=PATH   path of the metrics (default /metrics)
  --path.procfs=PATH          procfs mount point (default /proc)
  --path.debug=PATH           where debug symbols are found by build id
                              (default /usr/lib/debug); without them glibc's
                              heap books are located by decoding libc's code
  --log.level=LEVEL           debug, info, warn or error (default info)
  --check-config              validate the configuration and exit (0 ok, 2 bad)
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
  memlens::Options opts;
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
      opts.listen = value;
    } else if (key == "--web.telemetry-path") {
      if (!take()) return usage_error("--web.telemetry-path needs a value");
      opts.metrics_path = value;
    } else if (key == "--path.procfs") {
      if (!take()) return usage_error("--path.procfs needs a value");
      opts.procfs = value;
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
  if (check_only) {
    std::printf("%s: OK (%zu target selector(s))\n", cfg->source.c_str(), cfg->targets.size());
    return 0;
  }

  // The proc collector keeps two /proc files open per target: lift the soft
  // descriptor limit to the hard one (allowed without privileges).
  if (rlimit rl{}; getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) spdlog::debug("could not raise RLIMIT_NOFILE");
  }

  auto exporter = memlens::Exporter::start(opts.listen, opts.metrics_path);
  if (!exporter) {
    spdlog::critical("{}", exporter.error().message);
    return exporter.error().code == memlens::Errc::invalid ? 2 : 1;
  }
  spdlog::info("memlensd {} serving {} on {} ({} target selector(s) from {})", MEMLENS_VERSION,
               opts.metrics_path, opts.listen, cfg->targets.size(), cfg->source);
  memlens::App app(opts, std::make_unique<memlens::Config>(std::move(*cfg)), std::move(*exporter),
                   memlens::make_collectors());
  const int rc = app.run();
  spdlog::info("stopped");
  return rc;
}
