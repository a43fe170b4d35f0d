#include "collectors/alloc/leak_sites.h"

#include <bpf/bpf.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "bpf/alloc.h"
#include "collectors/elf_symbols.h"
#include "collectors/profile_stacks.h"
#include "daemon/http_util.h"
#include "daemon/pprof.h"

namespace memlens::alloc {

namespace {
constexpr auto kReplace = nlohmann::json::error_handler_t::replace;
}

LeakCapture scan_leak_sites(int addrs_fd, int stacks_fd, const ProcFs& fs, const LeakScan& what) {
  struct Site {
    uint64_t bytes = 0, blocks = 0;
  };
  std::map<int64_t, Site> by_stack;
  uint64_t total = 0, blocks = 0;
  alloc_addr_key k{}, next{};
  const void* prev = nullptr;
  while (bpf_map_get_next_key(addrs_fd, prev, &next) == 0) {
    k = next;
    prev = &k;
    if (next.pid != static_cast<__u32>(what.pid)) continue;
    alloc_addr_val v{};
    if (bpf_map_lookup_elem(addrs_fd, &next, &v) != 0) continue;
    auto& site = by_stack[v.stack_id];
    site.bytes += v.size;
    site.blocks += 1;
    total += v.size;
    blocks += 1;
  }
  // Every site as a profile; the JSON keeps the top 20.
  pprof::Builder prof({{"inuse_objects", "count"}, {"inuse_space", "bytes"}}, "inuse_space", {"space", "bytes"}, 0);
  prof.time_nanos(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count());
  const StackResolver resolver = StackResolver::for_pid(fs.root(), what.pid);
  for (const auto& [id, site] : by_stack)
    prof.sample(stack_locations(prof, resolver, read_stack(stacks_fd, id, 127)),
                {static_cast<int64_t>(site.blocks), static_cast<int64_t>(site.bytes)});
  std::vector<std::pair<int64_t, Site>> sorted(by_stack.begin(), by_stack.end());
  std::sort(sorted.begin(), sorted.end(), [](auto& a, auto& b) { return a.second.bytes > b.second.bytes; });
  if (sorted.size() > 20) sorted.resize(20);
  nlohmann::json sites = nlohmann::json::array();
  for (auto& [id, site] : sorted) {
    nlohmann::json stack = nlohmann::json::array();
    for (uint64_t ip : read_stack(stacks_fd, id, 127))
      stack.push_back(resolver.sym ? resolver.sym->symbolize(ip) : fmt::format("{:#x}", ip));
    sites.push_back({{"bytes", site.bytes}, {"blocks", site.blocks}, {"stack", stack}});
  }
  spdlog::debug("alloc: leak sites of pid {}: {} B outstanding in {} blocks, top {}", what.pid, total, blocks,
                sites.empty() ? std::string("-") : sites.front().dump(-1, ' ', false, kReplace));
  nlohmann::json process = {{"pid", what.pid},
          {"captured_at_unix",
           std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
               .count()},
          {"tracking", what.tracking},
          {"since_start", what.since_start},
          {"outstanding_bytes", total},
          {"outstanding_blocks", blocks},
          {"sites", sites}};
  return {std::move(process), std::make_shared<const std::string>(gzip(prof.encode()))};
}

void LeakSiteBook::put(const std::string& target, LeakCapture capture) {
  nlohmann::json& process = capture.process;
  const pid_t pid = process["pid"].get<pid_t>();
  auto& j = docs_[target];
  if (!j.is_object() || !j.contains("processes"))
    j = {{"target", target}, {"available", true}, {"processes", nlohmann::json::array()}};
  remove(target, pid);  // the previous capture of this process, document and profile
  j["processes"].push_back(std::move(process));
  profiles_[target][pid] = std::move(capture.profile);
}

void LeakSiteBook::remove(const std::string& target, pid_t pid) {
  if (auto p = profiles_.find(target); p != profiles_.end()) {
    p->second.erase(pid);
    if (p->second.empty()) profiles_.erase(p);
  }
  auto it = docs_.find(target);
  if (it == docs_.end() || !it->second.contains("processes")) return;
  auto& procs = it->second["processes"];
  for (auto p = procs.begin(); p != procs.end(); ++p)
    if ((*p)["pid"] == pid) {
      procs.erase(p);
      return;
    }
}

std::vector<std::pair<std::string, std::string>> LeakSiteBook::documents() const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [name, doc] : docs_)
    out.emplace_back("/api/v1/targets/" + name + "/leaks", doc.dump(2, ' ', false, kReplace) + "\n");
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<const std::string>>> LeakSiteBook::profiles() const {
  std::vector<std::pair<std::string, std::shared_ptr<const std::string>>> out;
  for (const auto& [name, by_pid] : profiles_) {
    for (const auto& [pid, gz] : by_pid) out.emplace_back(name + "/" + std::to_string(pid), gz);
    if (by_pid.size() == 1) out.emplace_back(name, by_pid.begin()->second);
  }
  return out;
}

}  // namespace memlens::alloc
