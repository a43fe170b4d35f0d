#include "collectors/proc_parse.h"

#include <charconv>
#include <vector>

namespace memlens {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

Error malformed(std::string_view what, std::string_view line) {
  std::string l(line.substr(0, 120));
  return make_error(Errc::malformed, std::string(what) + ": malformed line '" + l + "'");
}

// Calls fn(key, value) for each "Key:   value" line.
template <class Fn>
Result<void> for_each_kv(std::string_view text, std::string_view what, Fn fn) {
  while (!text.empty()) {
    std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (trim(line).empty()) continue;
    std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) return malformed(what, line);
    if (auto r = fn(trim(line.substr(0, colon)), trim(line.substr(colon + 1)), line); !r) return r;
  }
  return {};
}

// "1234 kB" -> 1234 * 1024; a value without unit is taken as-is.
std::optional<uint64_t> kb_value(std::string_view v) {
  auto n = parse_u64(v);
  if (!n) return std::nullopt;
  std::size_t sp = v.find(' ');
  if (sp == std::string_view::npos) return *n;
  std::string_view unit = trim(v.substr(sp));
  if (unit == "kB") return *n * 1024;
  return std::nullopt;
}

}  // namespace

std::optional<uint64_t> parse_u64(std::string_view s) {
  s = trim(s);
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p == s.data()) return std::nullopt;
  return v;
}

Result<ProcStat> parse_stat(std::string_view text) {
  // comm may hold spaces and parentheses: it runs from the first '(' to the
  // last ')'.
  std::size_t open = text.find('(');
  std::size_t close = text.rfind(')');
  if (open == std::string_view::npos || close == std::string_view::npos || close < open)
    return malformed("stat", text);
  ProcStat st;
  auto pid = parse_u64(text.substr(0, open));
  if (!pid) return malformed("stat", text);
  st.pid = static_cast<pid_t>(*pid);
  st.comm = std::string(text.substr(open + 1, close - open - 1));
  std::vector<std::string_view> f;  // f[0] is field 3 (state)
  std::string_view rest = text.substr(close + 1);
  while (!rest.empty()) {
    while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\n')) rest.remove_prefix(1);
    if (rest.empty()) break;
    std::size_t sp = rest.find_first_of(" \n");
    f.push_back(rest.substr(0, sp));
    rest = sp == std::string_view::npos ? std::string_view{} : rest.substr(sp);
  }
  if (f.size() < 22) return malformed("stat", text);
  auto field = [&](int n) -> std::optional<uint64_t> { return parse_u64(f[static_cast<std::size_t>(n - 3)]); };
  if (f[0].size() != 1) return malformed("stat", text);
  st.state = f[0][0];
  auto ppid = field(4), minflt = field(10), majflt = field(12), utime = field(14), stime = field(15),
       threads = field(20), start = field(22), vsize = field(23), rss = field(24);
  if (!ppid || !minflt || !majflt || !utime || !stime || !threads || !start || !vsize || !rss)
    return malformed("stat", text);
  st.ppid = static_cast<pid_t>(*ppid);
  st.minflt = *minflt;
  st.majflt = *majflt;
  st.utime = *utime;
  st.stime = *stime;
  st.num_threads = *threads;
  st.starttime = *start;
  st.vsize = *vsize;
  st.rss_pages = *rss;
  return st;
}

Result<ProcStatus> parse_status(std::string_view text) {
  ProcStatus s;
  auto r = for_each_kv(text, "status", [&](std::string_view k, std::string_view v,
                                            std::string_view line) -> Result<void> {
    uint64_t* dst = nullptr;
    if (k == "VmRSS") dst = &s.vm_rss;
    else if (k == "VmHWM") dst = &s.vm_hwm;
    else if (k == "RssAnon") dst = &s.rss_anon;
    else if (k == "RssFile") dst = &s.rss_file;
    else if (k == "RssShmem") dst = &s.rss_shmem;
    else if (k == "VmSwap") dst = &s.vm_swap;
    else if (k == "VmSize") dst = &s.vm_size;
    else if (k == "VmData") dst = &s.vm_data;
    else if (k == "State") {
      if (v.empty()) return malformed("status", line);
      s.state = v[0];
      return {};
    } else if (k == "SigPnd" || k == "ShdPnd") {
      uint64_t mask = 0;
      auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), mask, 16);
      if (ec != std::errc() || p == v.data()) return malformed("status", line);
      s.sig_pending |= mask;
      return {};
    } else if (k == "Uid") {
      auto u = parse_u64(v);  // real uid is the first of four
      if (!u) return malformed("status", line);
      s.uid = static_cast<uid_t>(*u);
      return {};
    }
    if (!dst) return {};
    auto n = kb_value(v);
    if (!n) return malformed("status", line);
    *dst = *n;
    s.has_memory = true;
    return {};
  });
  if (!r) return r.error();
  return s;
}

Result<SmapsRollup> parse_smaps_rollup(std::string_view text) {
  SmapsRollup s;
  bool header = true;
  auto r = for_each_kv(text, "smaps_rollup", [&](std::string_view k, std::string_view v,
                                                  std::string_view line) -> Result<void> {
    (void)line;
    if (header) {
      // The first line is the address range "00400000-7fff... ---p 0 00:00 0 [rollup]"
      // whose "key" holds no letters we know; skip it.
      header = false;
      if (k.find('-') != std::string_view::npos || k.find(' ') != std::string_view::npos) return {};
    }
    uint64_t* dst = nullptr;
    if (k == "Rss") dst = &s.rss;
    else if (k == "Pss") dst = &s.pss;
    else if (k == "Shared_Clean") dst = &s.shared_clean;
    else if (k == "Shared_Dirty") dst = &s.shared_dirty;
    else if (k == "Private_Clean") dst = &s.private_clean;
    else if (k == "Private_Dirty") dst = &s.private_dirty;
    else if (k == "Anonymous") dst = &s.anonymous;
    else if (k == "Swap") dst = &s.swap;
    else if (k == "SwapPss") dst = &s.swap_pss;
    else if (k == "Pss_Anon") {
      dst = &s.pss_anon;
      s.has_pss_anon = true;
    }
    if (!dst) return {};
    auto n = kb_value(v);
    if (!n) return malformed("smaps_rollup", line);
    *dst = *n;
    s.empty = false;
    return {};
  });
  if (!r) return r.error();
  return s;
}

Result<std::optional<HeapMapping>> parse_maps_heap(std::string_view text) {
  while (!text.empty()) {
    std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (line.size() < 6 || line.substr(line.size() - 6) != "[heap]") continue;
    std::size_t dash = line.find('-');
    std::size_t sp = line.find(' ');
    if (dash == std::string_view::npos || sp == std::string_view::npos || dash > sp)
      return malformed("maps", line);
    uint64_t a = 0, b = 0;
    auto r1 = std::from_chars(line.data(), line.data() + dash, a, 16);
    auto r2 = std::from_chars(line.data() + dash + 1, line.data() + sp, b, 16);
    if (r1.ec != std::errc() || r2.ec != std::errc() || b < a) return malformed("maps", line);
    return std::optional<HeapMapping>(HeapMapping{a, b});
  }
  return std::optional<HeapMapping>{};
}

std::vector<Mapping> parse_maps(std::string_view text) {
  std::vector<Mapping> out;
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    // start-end perms offset dev inode path
    Mapping m;
    const char* p = line.data();
    const char* end = p + line.size();
    auto r = std::from_chars(p, end, m.start, 16);
    if (r.ec != std::errc{} || r.ptr == end || *r.ptr != '-') continue;
    r = std::from_chars(r.ptr + 1, end, m.end, 16);
    if (r.ec != std::errc{}) continue;
    p = r.ptr;
    auto skip_ws = [&] { while (p < end && *p == ' ') ++p; };
    auto word = [&] {
      skip_ws();
      const char* b = p;
      while (p < end && *p != ' ') ++p;
      return std::string_view(b, static_cast<std::size_t>(p - b));
    };
    m.perms = std::string(word());
    auto off = word();
    std::from_chars(off.data(), off.data() + off.size(), m.offset, 16);
    word();  // dev
    auto ino = word();
    std::from_chars(ino.data(), ino.data() + ino.size(), m.inode, 10);
    skip_ws();
    m.path = std::string(p, end);
    out.push_back(std::move(m));
  }
  return out;
}

uint64_t parse_smaps_heap_resident(std::string_view t) {
  constexpr uint64_t kHeapMax = 64ull << 20;
  uint64_t total = 0;
  bool in_heap = false;
  while (!t.empty()) {
    auto nl = t.find('\n');
    std::string_view line = t.substr(0, nl);
    t = nl == std::string_view::npos ? std::string_view{} : t.substr(nl + 1);
    if (line.rfind("Rss:", 0) == 0) {
      if (in_heap) total += parse_u64(line.substr(4)).value_or(0) * 1024;
      continue;
    }
    // Mapping headers start with a lower-case hex address, fields with a key.
    const bool header = !line.empty() && ((line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f'));
    if (!header) continue;
    auto maps = parse_maps(line);
    if (maps.size() == 1) {
      const auto& mp = maps[0];
      const bool arena = mp.path.empty() && mp.perms.rfind("rw", 0) == 0 && mp.start % kHeapMax == 0;
      in_heap = mp.path == "[heap]" || arena;
    }
  }
  return total;
}

std::optional<double> parse_btime(std::string_view text) {
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (line.rfind("btime ", 0) == 0) {
      auto v = parse_u64(line.substr(6));
      if (v) return static_cast<double>(*v);
    }
  }
  return std::nullopt;
}

}  // namespace memlens
