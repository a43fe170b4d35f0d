#include "daemon/discovery.h"

#include <re2/re2.h>

#include <algorithm>
#include <optional>
#include <unordered_map>

#include "collectors/proc_parse.h"
#include "daemon/kubernetes.h"

namespace memlens {

namespace {
// What a selector looks at in one process; the expensive fields are read
// on demand.
struct ProcFacts {
  ProcStat stat;
  TargetId id;
  std::optional<std::string> exe, cmdline, cgroup;
};
bool match_facts(const ProcFs& proc_, pid_t self_pid_, const Selector& s, ProcFacts& p);

// The process's cgroup path, read once ("" when unreadable).
const std::string& cgroup_of(const ProcFs& proc, ProcFacts& p) {
  if (!p.cgroup) {
    auto c = read_file(proc.path(p.id.pid, "cgroup"));
    p.cgroup = c ? parse_cgroup_path(*c) : std::string();
  }
  return *p.cgroup;
}
}  // namespace

// One process seen during a scan.
struct Discovery::Proc : ProcFacts {
  uint64_t match_known = 0, match_yes = 0;  // as in Known
  bool claimed = false;
  bool watched = false;  // a target already (looked up once, not at each comparison)
};

Discovery::Discovery(ConfigPtr cfg, pid_t self_pid)
    : cfg_(std::move(cfg)), proc_(cfg_->procfs), same_pid_ns_(proc_.shows_own_pids()), self_pid_(self_pid),
      pods_(cfg_->run) {}

void Discovery::reconfigure(ConfigPtr cfg) {
  // Kept targets take the new setting's labels at the next scan.
  relabel_ = relabel_ || cfg->kubernetes_labels != cfg_->kubernetes_labels ||
             (cfg->kubernetes_labels && cfg->run != pods_.run_root());
  if (cfg->procfs != cfg_->procfs) known_.clear();  // another procfs: read everything again
  ++config_gen_;  // other selectors: every process is matched again
  cfg_ = std::move(cfg);
  proc_ = ProcFs(cfg_->procfs);
  same_pid_ns_ = proc_.shows_own_pids();
  pods_.set_run_root(cfg_->run);
  // Re-point the kept targets at the new config's entries by name (letting
  // go of the old config); targets whose entry vanished are dropped at the
  // next scan.
  for (auto& [id, t] : targets_) {
    t.policy.reset();
    for (const auto& p : cfg_->targets)
      if (p.name == t.name) t.policy = std::shared_ptr<const TargetPolicy>(cfg_, &p);
  }
}

bool Discovery::matches(const Selector& s, Proc& p) { return match_facts(proc_, self_pid_, s, p); }

bool process_matches(const ProcFs& fs, const Selector& s, pid_t pid, pid_t self_pid) {
  auto text = read_file(fs.path(pid, "stat"));
  if (!text) return false;
  auto st = parse_stat(*text);
  if (!st) return false;
  ProcFacts p;
  p.id = TargetId{pid, st->starttime};
  p.stat = std::move(*st);
  return match_facts(fs, self_pid, s, p);
}

namespace {
bool match_facts(const ProcFs& proc_, pid_t self_pid_, const Selector& s, ProcFacts& p) {
  if (s.self && p.id.pid != self_pid_) return false;
  if (s.pid && p.id.pid != *s.pid) return false;
  if (s.comm_re && !RE2::FullMatch(p.stat.comm, *s.comm_re)) return false;
  if (s.exe_re) {
    if (!p.exe) {
      auto e = read_link(proc_.path(p.id.pid, "exe"));
      p.exe = e ? *e : std::string();
    }
    if (p.exe->empty() || !RE2::FullMatch(*p.exe, *s.exe_re)) return false;
  }
  if (s.cmdline_re) {
    if (!p.cmdline) {
      auto c = read_file(proc_.path(p.id.pid, "cmdline"), kCmdlineMatchBytes);
      std::string v = c ? *c : std::string();
      std::replace(v.begin(), v.end(), '\0', ' ');
      while (!v.empty() && v.back() == ' ') v.pop_back();
      p.cmdline = v;
    }
    if (!RE2::PartialMatch(*p.cmdline, *s.cmdline_re)) return false;
  }
  if (s.cgroup || s.systemd_unit) {
    cgroup_of(proc_, p);
    if (s.cgroup && !p.cgroup->starts_with(*s.cgroup)) return false;
    if (s.systemd_unit) {
      const std::string needle = "/" + *s.systemd_unit;
      const std::string& cg = *p.cgroup;
      std::size_t at = cg.find(needle);
      bool ok = false;
      while (at != std::string::npos) {
        std::size_t end = at + needle.size();
        if (end == cg.size() || cg[end] == '/') {
          ok = true;
          break;
        }
        at = cg.find(needle, at + 1);
      }
      if (!ok) return false;
    }
  }
  return true;
}
}  // namespace

DiscoveryResult Discovery::scan() {
  DiscoveryResult res;
  std::vector<Proc> procs;
  auto pids = proc_.pids();
  ++scans_;
  if (pids) {
    procs.reserve(pids->size());
    // Incremental: a process's stat file (and what selectors read beyond
    // it: exe, cmdline, cgroup) is read when its pid is new, once every
    // kRefreshEvery scans (a slice of the pids each scan), and at every scan
    // for targets and young processes whose CPU clock has moved since the
    // last reading; in between that reading stands. On a host of 5000
    // processes reading every one took 87 ms a rescan, 4 % of a core at the
    // default 2 s (bench/discovery.sh). A clock that stood still means the
    // process did not run: no exec, no exit, no argv rewritten. What waits:
    // a process that is not a target and execs without forking (a wrapper
    // script's `exec java`), rewrites its argv later in life, or whose pid is
    // reused is seen as what it became up to kRefreshEvery rescans later;
    // the RSS ranking of top_rss is as old. A target is not in the slices
    // (its clock tells all of that, a reused pid's clock being another's),
    // unless its entry ranks by RSS, which moves without the process running.
    // (Without clocks every target is read at every scan anyway.)
    std::unordered_map<pid_t, bool> ranked_by_rss;  // each target's pid
    for (const auto& [id, t] : targets_) ranked_by_rss.emplace(id.pid, t.policy && t.policy->selector.top_rss);
    // A young process (seen for fewer than kYoungScans scans) is looked at
    // every scan: a fork is seen before its exec often enough (a rescan
    // between them, or a process the exec hold stopped), and it must be
    // matched by what it became at once.
    std::unordered_map<pid_t, Known> known;
    known.reserve(pids->size());
    for (pid_t pid : *pids) {
      auto it = known_.find(pid);
      const bool is_new = it == known_.end();
      const uint64_t first_seen = is_new ? scans_ : it->second.first_seen;
      const auto w = is_new ? ranked_by_rss.end() : ranked_by_rss.find(pid);
      const bool target = w != ranked_by_rss.end();
      const bool every_scan = target || (!is_new && scans_ - first_seen < kYoungScans);
      bool due = is_new || ((!target || w->second) &&
                            static_cast<uint64_t>(pid) % kRefreshEvery == scans_ % kRefreshEvery);
      // Read before stat: a process that runs after it shows a moved clock.
      std::optional<uint64_t> cpu_ns;
      if (same_pid_ns_ && (due || every_scan)) cpu_ns = process_cpu_ns(pid);
      if (!due && every_scan) {
        due = !cpu_ns || it->second.cpu_ns != cpu_ns;
        if (!due) ++res.clock_unmoved;
      }
      ProcStat st;
      if (due) {
        auto text = read_file(proc_.path(pid, "stat"));
        if (!text) continue;  // exited since readdir: not an error
        auto parsed = parse_stat(*text);
        if (!parsed) {
          ++res.scan_errors;
          continue;
        }
        st = std::move(*parsed);
        ++res.stat_reads;
      } else {
        st = std::move(it->second.stat);
      }
      // Kernel threads (kthreadd and its children) have no user memory.
      const bool user = pid != 2 && st.ppid != 2 && st.state != 'Z';
      if (user) {
        Proc p;
        p.id = TargetId{pid, st.starttime};
        p.stat = st;
        if (!due) {  // the facts read with the reading that stands
          p.exe = std::move(it->second.exe);
          p.cmdline = std::move(it->second.cmdline);
          p.cgroup = std::move(it->second.cgroup);
          if (it->second.match_gen == config_gen_) {
            p.match_known = it->second.match_known;
            p.match_yes = it->second.match_yes;
          }
        }
        procs.push_back(std::move(p));
      }
      if (due && !is_new && it->second.stat.starttime != st.starttime) {
        known.emplace(pid, Known{std::move(st), scans_, cpu_ns, {}, {}, {}});  // a reused pid: young again
        continue;
      }
      known.emplace(pid, Known{std::move(st), first_seen, due ? cpu_ns : it->second.cpu_ns, {}, {}, {}});
    }
    known_ = std::move(known);  // pids gone from /proc are forgotten
  } else {
    ++res.scan_errors;
  }
  res.processes = procs.size();

  std::map<TargetId, Target> next;
  std::set<TargetId> capped;
  int total = 0;
  grouped_.clear();
  for (std::size_t k = 0; k < cfg_->targets.size(); ++k) {
    const TargetPolicy& pol = cfg_->targets[k];
    if (pol.files) continue;  // build artefacts (the files collector), no process
    std::vector<Proc*> hits;
    const uint64_t bit = k < 64 ? uint64_t{1} << k : 0;
    for (auto& p : procs) {
      if (p.claimed) continue;
      bool yes;
      if (p.match_known & bit) {
        yes = p.match_yes & bit;
      } else {
        yes = matches(pol.selector, p);
        p.match_known |= bit;
        if (yes) p.match_yes |= bit;
      }
      if (yes) hits.push_back(&p);
    }
    if (!pol.children && !hits.empty()) {
      // Forked workers go with their parent: it matched this entry too and
      // has their comm. They are claimed (no later entry takes them) and
      // never count against a cap.
      std::unordered_map<pid_t, const std::string*> comm_of;
      for (const Proc* p : hits) comm_of.emplace(p->id.pid, &p->stat.comm);
      std::size_t n = 0;
      std::erase_if(hits, [&](Proc* p) {
        auto parent = comm_of.find(p->stat.ppid);
        if (parent == comm_of.end() || *parent->second != p->stat.comm) return false;
        p->claimed = true;
        ++n;
        return true;
      });
      if (n) grouped_[pol.name] += n;
    }
    // Keep targets already watched first, so caps do not churn series; then
    // the largest by RSS (which is the whole point of top_rss).
    for (Proc* p : hits) p->watched = targets_.count(p->id) > 0;
    std::stable_sort(hits.begin(), hits.end(), [&](const Proc* a, const Proc* b) {
      if (!pol.selector.top_rss && a->watched != b->watched) return a->watched;
      if (a->stat.rss_pages != b->stat.rss_pages) return a->stat.rss_pages > b->stat.rss_pages;
      return a->id.pid < b->id.pid;
    });
    int limit = pol.selector.top_rss ? *pol.selector.top_rss : static_cast<int>(hits.size());
    const std::string selector = hits.empty() ? std::string() : pol.selector.describe();
    if (pol.max_targets > 0) limit = std::min(limit, pol.max_targets);
    int taken = 0;
    for (Proc* p : hits) {
      p->claimed = true;  // a process belongs to the first entry it matches
      if (pol.selector.top_rss && taken >= limit) {
        p->claimed = false;  // not in the top N: free for later entries
        continue;
      }
      if (taken >= limit || total >= cfg_->max_targets) {
        capped.insert(p->id);
        continue;
      }
      ++taken;
      ++total;
      Target t;
      auto old = targets_.find(p->id);
      if (old != targets_.end() && old->second.name == pol.name) {
        t = old->second;
        if (relabel_) t.labels = cfg_->kubernetes_labels ? pods_.labels(cgroup_of(proc_, *p)) : Labels{};
      } else {
        t.id = p->id;
        t.name = pol.name;
        t.comm = p->stat.comm;
        if (!p->exe) {
          auto e = read_link(proc_.path(p->id.pid, "exe"));
          p->exe = e ? *e : std::string();
        }
        t.exe = *p->exe;
        // Once per target: its cgroup never changes while the kubelet runs it.
        if (cfg_->kubernetes_labels) t.labels = pods_.labels(cgroup_of(proc_, *p));
      }
      t.selector = selector;
      t.policy = std::shared_ptr<const TargetPolicy>(cfg_, &pol);
      next.emplace(t.id, std::move(t));
    }
  }

  std::set<TargetId> alive;
  for (const auto& p : procs) alive.insert(p.id);
  for (const auto& [id, t] : targets_) {
    auto it = next.find(id);
    if (it == next.end() || it->second.name != t.name) {
      res.removed.push_back(t);
      if (!alive.count(id)) ++res.exited;
    }
  }
  for (const auto& [id, t] : next) {
    auto it = targets_.find(id);
    if (it == targets_.end() || it->second.name != t.name) res.added.push_back(t);
  }
  for (const auto& id : capped)
    if (capped_seen_.insert(id).second) ++res.capped_new;
  for (auto it = capped_seen_.begin(); it != capped_seen_.end();)
    it = alive.count(*it) ? std::next(it) : capped_seen_.erase(it);
  capped_now_ = capped.size();
  relabel_ = false;
  // Keep what the selectors read for the scans this reading stands.
  for (auto& p : procs) {
    auto k = known_.find(p.id.pid);
    if (k == known_.end() || k->second.stat.starttime != p.id.start_time) continue;
    k->second.exe = std::move(p.exe);
    k->second.cmdline = std::move(p.cmdline);
    k->second.cgroup = std::move(p.cgroup);
    k->second.match_gen = config_gen_;
    k->second.match_known = p.match_known;
    k->second.match_yes = p.match_yes;
  }
  targets_ = std::move(next);
  return res;
}

}  // namespace memlens
