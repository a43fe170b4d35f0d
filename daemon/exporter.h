// HTTP: prometheus-cpp's Exposer serves the metrics path from the current
// snapshot; /healthz, /api/v1/targets[/<name>/leaks] and a status page at /
// are answered in civetweb's begin_request hook, from the same snapshot.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "daemon/result.h"
#include "daemon/snapshot.h"

namespace prometheus {
class Exposer;
}

namespace memlens {

class SnapshotCollectable;

class Exporter {
 public:
  ~Exporter();
  // listen: "host:port", "[v6]:port" or ":port" (all interfaces).
  static Result<std::unique_ptr<Exporter>> start(const std::string& listen, const std::string& metrics_path);
  void publish(std::shared_ptr<const Snapshot> s);
  std::shared_ptr<const Snapshot> current() const;
  const std::string& metrics_path() const { return metrics_path_; }
  int port() const { return port_; }

  // Response for a non-metrics path; false when the path is not ours.
  struct Response {
    int status = 200;
    std::string content_type, body;
  };
  bool handle(const std::string& method, const std::string& path, Response& out) const;

 private:
  Exporter() = default;
  mutable std::mutex mu_;
  std::shared_ptr<const Snapshot> snap_;
  std::shared_ptr<SnapshotCollectable> collectable_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string metrics_path_;
  std::string wake_host_;
  int port_ = 0;
};

// "127.0.0.1:19723" -> civetweb's listening_ports syntax.
Result<std::string> civet_listen_spec(const std::string& listen);

}  // namespace memlens
