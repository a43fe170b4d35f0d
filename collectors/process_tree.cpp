#include "collectors/process_tree.h"

#include <string>
#include <string_view>

#include "collectors/proc_parse.h"

namespace memlens {

namespace {
void append_pids(std::string_view s, std::vector<pid_t>& out) {
  while (!s.empty()) {
    const auto sp = s.find_first_of(" \n");
    if (auto v = parse_u64(s.substr(0, sp))) out.push_back(static_cast<pid_t>(*v));
    s = sp == std::string_view::npos ? std::string_view{} : s.substr(sp + 1);
  }
}
}  // namespace

std::vector<pid_t> children_of(const ProcFs& proc, pid_t pid, bool every_thread) {
  std::vector<pid_t> kids;
  const std::string main_list = proc.path(pid, "task/" + std::to_string(pid) + "/children");
  auto text = read_file(main_list);
  if (text) {
    append_pids(*text, kids);
    if (!every_thread) return kids;
    if (auto tids = list_dir(proc.path(pid, "task")))
      for (const auto& tid : *tids)
        if (tid != std::to_string(pid))
          if (auto t = read_file(proc.path(pid, "task/" + tid + "/children"))) append_pids(*t, kids);
    return kids;
  }
  if (text.error().code == Errc::not_found && read_file(proc.path(pid, "stat"))) {
    // The process is there, its children lists are not: scan every parent.
    if (auto pids = proc.pids())
      for (pid_t p : *pids) {
        auto st_text = read_file(proc.path(p, "stat"));
        if (!st_text) continue;
        if (auto st = parse_stat(*st_text); st && st->ppid == pid) kids.push_back(p);
      }
  }
  return kids;
}

Result<uint64_t> private_memory(const ProcFs& proc, pid_t pid) {
  auto text = read_file(proc.path(pid, "smaps_rollup"));
  if (!text) return make_error(Errc::not_found, text.error().message);
  auto r = parse_smaps_rollup(*text);
  if (!r) return r.error();
  return r->has_pss_anon ? r->pss_anon : r->uss();
}

}  // namespace memlens
