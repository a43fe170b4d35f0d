#include "collectors/alloc/holds.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <string_view>
#include <thread>

#include "collectors/proc_parse.h"

namespace memlens::alloc {

namespace {

// A regex that matches one fixed string (escaped dots allowed; a bare '.'
// is taken literally too: holding is an optimisation, a process it misses
// is still traced, only "since attach").
std::optional<std::string> literal(std::string_view re) {
  std::string out;
  for (std::size_t i = 0; i < re.size(); ++i) {
    char c = re[i];
    if (c == '\\' && i + 1 < re.size() && re[i + 1] == '.') {
      out.push_back('.');
      ++i;
      continue;
    }
    if (std::strchr("\\^$|?*+()[]{}", c)) return std::nullopt;
    out.push_back(c);
  }
  if (out.empty()) return std::nullopt;
  return out;
}

// The top-level alternatives of a regex ("api|worker", "(api|worker)",
// "(?:api|worker)" give two), or the regex itself.
std::vector<std::string_view> alternatives(std::string_view re) {
  if (re.size() >= 2 && re.front() == '(' && re.back() == ')') {
    std::string_view inner = re.substr(1, re.size() - 2);
    if (inner.rfind("?:", 0) == 0) inner.remove_prefix(2);
    // Only when the parentheses enclose everything ("(a)|(b)" does not).
    if (inner.find_first_of("()") == std::string_view::npos) re = inner;
  }
  std::vector<std::string_view> out;
  for (std::size_t i = 0;;) {
    std::size_t bar = re.find('|', i);
    out.push_back(re.substr(i, bar == std::string_view::npos ? std::string_view::npos : bar - i));
    if (bar == std::string_view::npos) return out;
    i = bar + 1;
  }
}

uint64_t mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

bool claim(hold_slot* slots, uint64_t pid) {
  __u64 expected = pid;
  return __atomic_compare_exchange_n(&slots[pid % ALLOC_HOLD_SLOTS].pid, &expected, __u64{0}, false,
                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

[[noreturn]] void watchdog_main(hold_slot* slots, int pipe_rd, pid_t parent, uint64_t bound_ns) {
  prctl(PR_SET_NAME, "memlens-hold", 0, 0, 0);
  for (;;) {
    pollfd p{pipe_rd, POLLIN, 0};
    const int r = poll(&p, 1, 20);
    const bool parent_gone = r > 0 || getppid() != parent;
    const uint64_t now = mono_ns();
    for (uint32_t i = 0; i < ALLOC_HOLD_SLOTS; ++i) {
      const uint64_t pid = __atomic_load_n(&slots[i].pid, __ATOMIC_SEQ_CST);
      if (pid == 0) continue;
      const uint64_t since = __atomic_load_n(&slots[i].since_ns, __ATOMIC_SEQ_CST);
      if ((parent_gone || now - since > bound_ns) && claim(slots, pid)) kill(static_cast<pid_t>(pid), SIGCONT);
    }
    if (parent_gone) _exit(0);
  }
}

}  // namespace

std::vector<std::string> hold_comms(const Selector& s) {
  std::vector<std::string> out;
  auto add_all = [&](const std::string& re, bool path) {
    for (auto alt : alternatives(re)) {
      std::string a(alt);
      if (path && a.rfind(".*/", 0) == 0) a = a.substr(2);
      auto lit = literal(a);
      if (!lit || (path && lit->find('/') == std::string::npos)) return false;
      out.push_back(path ? lit->substr(lit->rfind('/') + 1) : *lit);
    }
    return true;
  };
  if (!(s.comm && add_all(*s.comm, false))) {
    out.clear();
    if (!(s.exe && add_all(*s.exe, true))) out.clear();
  }
  for (auto& c : out)
    if (c.size() > ALLOC_COMM_LEN - 1) c.resize(ALLOC_COMM_LEN - 1);
  return out;
}

uint32_t EntryIds::id_of(const std::string& name) {
  auto [it, fresh] = ids_.try_emplace(name, next_);
  if (fresh) names_[next_++] = name;
  return it->second;
}

const std::string* EntryIds::name_of(uint32_t id) const {
  auto it = names_.find(id);
  return it == names_.end() ? nullptr : &it->second;
}

std::vector<HeldName> held_names(const Config& cfg, EntryIds& ids) {
  std::vector<HeldName> out;
  for (const auto& p : cfg.targets) {
    if (p.alloc_mode != AllocMode::full) continue;
    const uint32_t id = ids.id_of(p.name);
    for (auto& c : hold_comms(p.selector)) out.push_back({std::move(c), id});
  }
  return out;
}

std::size_t load_held_names(int fd, const std::vector<HeldName>& names) {
  char key[ALLOC_COMM_LEN] = {}, next[ALLOC_COMM_LEN] = {};
  std::vector<std::array<char, ALLOC_COMM_LEN>> old;
  for (const void* prev = nullptr; bpf_map_get_next_key(fd, prev, next) == 0; prev = key) {
    std::memcpy(key, next, sizeof key);
    std::array<char, ALLOC_COMM_LEN> k{};
    std::memcpy(k.data(), next, sizeof next);
    old.push_back(k);
  }
  for (auto& k : old) bpf_map_delete_elem(fd, k.data());
  std::size_t loaded = 0;
  for (const auto& n : names) {
    char k[ALLOC_COMM_LEN] = {};
    std::memcpy(k, n.comm.data(), std::min(n.comm.size(), sizeof k - 1));
    if (bpf_map_update_elem(fd, k, &n.entry, BPF_ANY) == 0) ++loaded;
  }
  return loaded;
}

Result<std::unique_ptr<HoldSlots>> HoldSlots::map(int map_fd) {
  const std::size_t len =
      std::max(sizeof(hold_slot) * ALLOC_HOLD_SLOTS, static_cast<std::size_t>(sysconf(_SC_PAGESIZE)));
  void* view = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0);
  if (view == MAP_FAILED)
    return make_error(errc_from_errno(errno), std::string("mmap of the hold slots: ") + std::strerror(errno));
  return std::unique_ptr<HoldSlots>(new HoldSlots(static_cast<hold_slot*>(view), len));
}

HoldSlots::~HoldSlots() { munmap(slots_, len_); }

bool HoldSlots::release(pid_t pid) {
  if (!claim(slots_, static_cast<uint64_t>(pid))) return false;
  kill(pid, SIGCONT);
  return true;
}

bool still_held(const ProcFs& fs, pid_t pid) {
  for (int i = 0; i < 100; ++i) {
    auto text = read_file(fs.path(pid, "status"));
    if (!text) return false;
    auto st = parse_status(*text);
    if (!st) return false;
    if (st->state == 'T' || st->state == 't') return true;
    if (!(st->sig_pending & (1ull << (SIGSTOP - 1)))) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

Result<std::unique_ptr<Watchdog>> Watchdog::start(hold_slot* slots, uint64_t bound_ns) {
  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC) != 0) return make_error(errc_from_errno(errno), std::string("pipe: ") + std::strerror(errno));
  const pid_t parent = getpid();
  const pid_t child = fork();
  if (child == 0) {
    // Keep only the pipe, as fd 3 (the slots are shared memory); every other
    // descriptor (sockets, logs, maps) goes, so nothing outlives memlensd
    // through us.
    if (pfd[0] != 3 && dup2(pfd[0], 3) < 0) _exit(1);
    close_range(4, ~0U, 0);
    watchdog_main(slots, 3, parent, bound_ns);
  }
  close(pfd[0]);
  if (child < 0) {
    const int err = errno;
    close(pfd[1]);
    return make_error(errc_from_errno(err), std::string("fork: ") + std::strerror(err));
  }
  return std::unique_ptr<Watchdog>(new Watchdog(child, pfd[1]));
}

Watchdog::~Watchdog() {
  close(pipe_wr_);
  waitpid(pid_, nullptr, 0);
}

}  // namespace memlens::alloc
