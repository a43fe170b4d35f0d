// A PostgreSQL 15 cluster of a test's own, started from outside (initdb in a
// temporary directory, run as nobody, a unix socket in that directory on a
// free port, no TCP): never the system cluster. Shared by the postgres
// integration test and the dashboard's end-to-end test.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tests/support/support.h"

namespace memlens::test {

// Debian's PostgreSQL 15 binaries.
inline const std::string kPgBin = "/usr/lib/postgresql/15/bin/";
// nobody: PostgreSQL refuses to run as root.
inline const std::vector<std::string> kAsNobody = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                                                   "--clear-groups"};

bool executable(const std::string& path);
std::string sh_quote(const std::string& s);
// Empty when initdb, postgres, psql and pgbench are there; else what is missing.
std::string postgres_missing();

// Its destructor stops the postmaster (fast shutdown, then SIGKILL: its
// children leave when it is gone) and removes the directory.
struct Cluster {
  std::string dir, data;
  int port = 0;
  Child postmaster;
  std::string error;  // why it did not start

  Cluster() = default;
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;
  ~Cluster();

  std::string client_args() const;
  // One value from psql (-At): the first line of its output.
  std::string sql(const std::string& query) const;
};

// `prepare` runs after initdb and returns options for the postmaster, given
// after ours. postgresql_conf and auto_conf are appended to those files
// (later lines win, as they would for an administrator's edit).
using Prepare = std::function<std::vector<std::string>(Cluster&)>;
std::unique_ptr<Cluster> start_cluster(const std::string& postgresql_conf, const std::string& auto_conf,
                                       const Prepare& prepare = {});

}  // namespace memlens::test
