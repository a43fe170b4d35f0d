#include "tests/support/postgres_cluster.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

namespace memlens::test {

using namespace std::chrono_literals;

bool executable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

std::string sh_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string postgres_missing() {
  for (const char* b : {"initdb", "postgres", "psql", "pgbench"})
    if (!executable(kPgBin + b)) return "no PostgreSQL 15 (" + kPgBin + b + "); scripts/deps.sh installs it";
  return "";
}

Cluster::~Cluster() {
  if (postmaster.pid() > 0 && postmaster.stop(SIGINT, 15s) == -1) postmaster.stop(SIGKILL, 5s);
  std::error_code ec;
  if (!dir.empty() && dir != "/tmp") std::filesystem::remove_all(dir, ec);
}

std::string Cluster::client_args() const {
  return "-h " + sh_quote(dir) + " -p " + std::to_string(port) + " -U postgres";
}

std::string Cluster::sql(const std::string& query) const {
  std::string out;
  run(kPgBin + "psql " + client_args() + " -X -Atq -d postgres -c " + sh_quote(query), &out);
  return out.substr(0, out.find('\n'));
}

std::unique_ptr<Cluster> start_cluster(const std::string& postgresql_conf, const std::string& auto_conf,
                                       const Prepare& prepare) {
  auto c = std::make_unique<Cluster>();
  c->dir = make_temp_dir("memlens-pg");
  c->data = c->dir + "/data";
  c->port = free_port();
  if (::chown(c->dir.c_str(), 65534, 65534) != 0) {
    c->error = "chown " + c->dir;
    return c;
  }
  std::string out;
  std::string as_nobody;
  for (const auto& a : kAsNobody) as_nobody += a + " ";
  if (run(as_nobody + kPgBin + "initdb -D " + sh_quote(c->data) +
              " -A trust -U postgres --no-sync --no-instructions",
          &out) != 0) {
    c->error = "initdb: " + out;
    return c;
  }
  write_text(c->data + "/postgresql.conf", read_text(c->data + "/postgresql.conf") + postgresql_conf);
  write_text(c->data + "/postgresql.auto.conf", read_text(c->data + "/postgresql.auto.conf") + auto_conf);
  const std::vector<std::string> args = prepare ? prepare(*c) : std::vector<std::string>{};
  std::vector<std::string> argv = kAsNobody;
  argv.insert(argv.end(), {kPgBin + "postgres", "-D", c->data, "-k", c->dir, "-p", std::to_string(c->port), "-c",
                           "listen_addresses="});
  argv.insert(argv.end(), args.begin(), args.end());
  c->postmaster = spawn(argv, c->dir + "/postgres.log");
  if (!wait_until([&] { return !c->postmaster.running() || c->sql("select 1") == "1"; }, 30s, 200ms) ||
      !c->postmaster.running())
    c->error = "postgres did not start: " + read_text(c->dir + "/postgres.log");
  return c;
}

}  // namespace memlens::test
