#include "collectors/alloc/leak_sites.h"

#include <bpf/bpf.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "bpf/alloc.h"
#include "collectors/elf_symbols.h"

namespace memlens::alloc {

namespace {
constexpr auto kReplace = nlohmann::json::error_handler_t::replace;
}

nlohmann::json scan_leak_sites(int addrs_fd, int stacks_fd, const ProcFs& fs, const LeakScan& what) {
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
  std::vector<std::pair<int64_t, Site>> sorted(by_stack.begin(), by_stack.end());
  std::sort(sorted.begin(), sorted.end(), [](auto& a, auto& b) { return a.second.bytes > b.second.bytes; });
  if (sorted.size() > 20) sorted.resize(20);
  auto sym = elf::Symbolizer::for_pid(fs.root(), what.pid);
  nlohmann::json sites = nlohmann::json::array();
  for (auto& [id, site] : sorted) {
    nlohmann::json stack = nlohmann::json::array();
    if (id >= 0) {
      uint64_t ips[127] = {};
      __u32 sid = static_cast<__u32>(id);
      if (bpf_map_lookup_elem(stacks_fd, &sid, ips) == 0) {
        for (uint64_t ip : ips) {
          if (!ip) break;
          stack.push_back(sym ? sym->symbolize(ip) : fmt::format("{:#x}", ip));
        }
      }
    }
    sites.push_back({{"bytes", site.bytes}, {"blocks", site.blocks}, {"stack", stack}});
  }
  spdlog::debug("alloc: leak sites of pid {}: {} B outstanding in {} blocks, top {}", what.pid, total, blocks,
                sites.empty() ? std::string("-") : sites.front().dump(-1, ' ', false, kReplace));
  return {{"pid", what.pid},
          {"captured_at_unix",
           std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
               .count()},
          {"tracking", what.tracking},
          {"since_start", what.since_start},
          {"outstanding_bytes", total},
          {"outstanding_blocks", blocks},
          {"sites", sites}};
}

void LeakSiteBook::put(const std::string& target, nlohmann::json process) {
  auto& j = docs_[target];
  if (!j.is_object() || !j.contains("processes"))
    j = {{"target", target}, {"available", true}, {"processes", nlohmann::json::array()}};
  remove(target, process["pid"].get<pid_t>());
  j["processes"].push_back(std::move(process));
}

void LeakSiteBook::remove(const std::string& target, pid_t pid) {
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

}  // namespace memlens::alloc
