#include "collectors/bpf_support.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/capability.h>
#include <spdlog/spdlog.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <vector>

#ifndef TRACEFS_MAGIC
#define TRACEFS_MAGIC 0x74726163
#endif

namespace memlens::bpf {

namespace {

int libbpf_print(enum libbpf_print_level level, const char* fmt, va_list args) {
  char buf[1024];
  int n = std::vsnprintf(buf, sizeof buf, fmt, args);
  if (n <= 0) return 0;
  std::string_view msg(buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
  while (!msg.empty() && msg.back() == '\n') msg.remove_suffix(1);
  switch (level) {
    case LIBBPF_WARN: spdlog::warn("libbpf: {}", msg); break;
    case LIBBPF_INFO: spdlog::debug("libbpf: {}", msg); break;
    default: spdlog::trace("libbpf: {}", msg); break;
  }
  return n;
}

bool has_cap(const __user_cap_data_struct* d, int cap) {
  return (d[cap / 32].effective & (1u << (cap % 32))) != 0;
}

}  // namespace

void init_libbpf_logging() {
  static std::once_flag once;
  std::call_once(once, [] { libbpf_set_print(libbpf_print); });
}

Result<void> ensure_tracefs() {
  struct statfs st {};
  if (statfs("/sys/kernel/tracing", &st) == 0 &&
      static_cast<unsigned long>(st.f_type) == TRACEFS_MAGIC)
    return {};
  // Older setups only have it under debugfs.
  if (statfs("/sys/kernel/debug/tracing", &st) == 0 &&
      static_cast<unsigned long>(st.f_type) == TRACEFS_MAGIC)
    return {};
  if (mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, nullptr) != 0) {
    int err = errno;
    return make_error(errc_from_errno(err),
                      std::string("cannot mount tracefs at /sys/kernel/tracing: ") +
                          std::strerror(err));
  }
  spdlog::info("mounted tracefs at /sys/kernel/tracing");
  return {};
}

void bump_memlock_rlimit() {
  rlimit r{RLIM_INFINITY, RLIM_INFINITY};
  if (setrlimit(RLIMIT_MEMLOCK, &r) != 0 && errno != EPERM)
    spdlog::debug("setrlimit(RLIMIT_MEMLOCK): {}", std::strerror(errno));
}

Result<void> check_capabilities() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capget, &hdr, data) != 0)
    return make_error(Errc::io, std::string("capget: ") + std::strerror(errno));
  if (has_cap(data, CAP_SYS_ADMIN)) return {};
  bool bpf = has_cap(data, CAP_BPF), perfmon = has_cap(data, CAP_PERFMON);
  if (bpf && perfmon) return {};
  std::string missing = !bpf && !perfmon ? "CAP_BPF and CAP_PERFMON"
                        : !bpf           ? "CAP_BPF"
                                         : "CAP_PERFMON";
  return make_error(Errc::permission, "missing " + missing + " (or CAP_SYS_ADMIN)");
}

Result<void> prepare() {
  static std::once_flag once;
  static Result<void> result;
  std::call_once(once, [] {
    init_libbpf_logging();
    if (auto c = check_capabilities(); !c) {
      result = c;
      return;
    }
    bump_memlock_rlimit();
    if (auto t = ensure_tracefs(); !t)
      spdlog::warn("{}; tracepoint programs will be unavailable", t.error().message);
  });
  return result;
}

Link& Link::operator=(Link&& o) noexcept {
  if (this != &o) {
    reset();
    l_ = o.l_;
    fd_ = o.fd_;
    o.l_ = nullptr;
    o.fd_ = -1;
  }
  return *this;
}

Link::~Link() { reset(); }

void Link::reset() {
  if (l_) bpf_link__destroy(l_);
  if (fd_ >= 0) close(fd_);
  l_ = nullptr;
  fd_ = -1;
}

namespace {
// From the kernel's uapi (6.6+); Debian 12's headers predate them.
constexpr uint32_t kTraceUprobeMulti = 48;      // BPF_TRACE_UPROBE_MULTI
constexpr uint32_t kUprobeMultiReturn = 1;      // BPF_F_UPROBE_MULTI_RETURN
}  // namespace

void set_uprobe_multi(bpf_program* prog) {
  bpf_program__set_expected_attach_type(prog, static_cast<bpf_attach_type>(kTraceUprobeMulti));
}

Result<Link> attach_uprobe_multi(bpf_program* prog, pid_t pid, const std::string& binary,
                                 const std::vector<uint64_t>& offsets,
                                 const std::vector<uint64_t>& cookies, bool retprobe) {
  if (pid <= 0) return make_error(Errc::invalid, "uprobes are attached per pid");
  if (offsets.empty() || cookies.size() != offsets.size())
    return make_error(Errc::invalid, "uprobe_multi: offsets and cookies differ");
  // bpf_attr.link_create with its uprobe_multi member, laid out by hand:
  // prog_fd, target_fd, attach_type, flags, then path, offsets,
  // ref_ctr_offsets, cookies (u64 each), cnt, flags, pid.
  struct {
    uint32_t prog_fd, target_fd, attach_type, flags;
    uint64_t path, offsets, ref_ctr_offsets, cookies;
    uint32_t cnt, um_flags, pid, pad;
  } a{};
  static_assert(sizeof(a) == 64);
  unsigned char attr[sizeof(union bpf_attr) > sizeof(a) ? sizeof(union bpf_attr) : sizeof(a)] = {};
  a.prog_fd = static_cast<uint32_t>(bpf_program__fd(prog));
  a.attach_type = kTraceUprobeMulti;
  a.path = reinterpret_cast<uint64_t>(binary.c_str());
  a.offsets = reinterpret_cast<uint64_t>(offsets.data());
  a.cookies = reinterpret_cast<uint64_t>(cookies.data());
  a.cnt = static_cast<uint32_t>(offsets.size());
  a.um_flags = retprobe ? kUprobeMultiReturn : 0;
  a.pid = static_cast<uint32_t>(pid);
  std::memcpy(attr, &a, sizeof a);
  int fd = static_cast<int>(syscall(SYS_bpf, BPF_LINK_CREATE, attr, sizeof attr));
  if (fd < 0) {
    int err = errno;
    return make_error(err == EINVAL || err == EOPNOTSUPP ? Errc::unavailable : errc_from_errno(err),
                      fmt::format("uprobe_multi {} ({} probes) pid {}: {}", binary, offsets.size(), pid,
                                  std::strerror(err)));
  }
  return Link(fd);
}

Result<Link> attach_uprobe(bpf_program* prog, pid_t pid, const std::string& binary,
                           uint64_t file_offset, bool retprobe) {
  return attach_uprobe(prog, pid, binary, file_offset, retprobe, 0);
}

Result<Link> attach_uprobe(bpf_program* prog, pid_t pid, const std::string& binary,
                           uint64_t file_offset, bool retprobe, uint64_t cookie) {
  if (pid <= 0 && pid != kEveryProcess) return make_error(Errc::invalid, "uprobes are attached per pid");
  LIBBPF_OPTS(bpf_uprobe_opts, opts, .bpf_cookie = cookie, .retprobe = retprobe);
  bpf_link* l = bpf_program__attach_uprobe_opts(prog, pid, binary.c_str(),
                                                static_cast<size_t>(file_offset), &opts);
  if (!l) {
    int err = errno;
    return make_error(errc_from_errno(err),
                      fmt::format("{} {}+{:#x} pid {}: {}", retprobe ? "uretprobe" : "uprobe",
                                  binary, file_offset, pid, std::strerror(err)));
  }
  return Link(l);
}

Result<Link> attach_usdt(bpf_program* prog, pid_t pid, const std::string& binary,
                         const std::string& provider, const std::string& name,
                         uint64_t cookie) {
  if (pid <= 0 && pid != kEveryProcess) return make_error(Errc::invalid, "USDT probes are attached per pid");
  LIBBPF_OPTS(bpf_usdt_opts, opts, .usdt_cookie = cookie);
  bpf_link* l = bpf_program__attach_usdt(prog, pid, binary.c_str(), provider.c_str(),
                                         name.c_str(), &opts);
  if (!l) {
    int err = errno;
    return make_error(errc_from_errno(err), fmt::format("usdt {}:{} in {} pid {}: {}", provider,
                                                        name, binary, pid, std::strerror(err)));
  }
  return Link(l);
}

int possible_cpus() {
  static int n = [] {
    int c = libbpf_num_possible_cpus();
    return c > 0 ? c : 1;
  }();
  return n;
}

Result<std::vector<uint64_t>> sum_percpu_fields(int map_fd, const void* key,
                                                std::size_t value_size) {
  if (value_size % 8 != 0) return make_error(Errc::invalid, "per-CPU value size not a multiple of 8");
  // Per-CPU values are rounded up to 8 bytes each by the kernel.
  const std::size_t fields = value_size / 8;
  const int ncpu = possible_cpus();
  std::vector<uint64_t> raw(fields * static_cast<std::size_t>(ncpu));
  std::vector<uint64_t> sum(fields, 0);
  if (bpf_map_lookup_elem(map_fd, key, raw.data()) != 0) {
    if (errno == ENOENT) return sum;
    return make_error(errc_from_errno(errno), std::string("map lookup: ") + std::strerror(errno));
  }
  for (int c = 0; c < ncpu; ++c)
    for (std::size_t f = 0; f < fields; ++f) sum[f] += raw[static_cast<std::size_t>(c) * fields + f];
  return sum;
}

Result<uint64_t> sum_percpu_u64(int map_fd, const void* key) {
  auto r = sum_percpu_fields(map_fd, key, 8);
  if (!r) return r.error();
  return (*r)[0];
}

uint64_t count_u32_keys(int map_fd) {
  uint64_t n = 0;
  uint32_t k = 0, next = 0;
  for (const void* prev = nullptr; bpf_map_get_next_key(map_fd, prev, &next) == 0; prev = &k) {
    ++n;
    k = next;
  }
  return n;
}

Result<void> U32MapView::read(int map_fd) {
  if (value_size_ == 0 || value_size_ % 8 != 0) return make_error(Errc::invalid, "map value size not a multiple of 8");
  const std::size_t copies = percpu_ ? static_cast<std::size_t>(possible_cpus()) : 1;
  const std::size_t stride = fields_ * copies;  // u64s per entry in a batch
  index_.clear();
  values_.clear();
  // Enough for a hash bucket's entries in one call (the kernel answers
  // ENOSPC otherwise, and the chunk doubles).
  std::size_t chunk = std::max<std::size_t>(keys_buf_.size(), 256);
  uint32_t in_token = 0, out_token = 0;
  bool first = true;
  for (;;) {
    keys_buf_.resize(chunk);
    raw_buf_.resize(chunk * stride);
    __u32 count = static_cast<__u32>(chunk);
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    const int r = bpf_map_lookup_batch(map_fd, first ? nullptr : &in_token, &out_token, keys_buf_.data(),
                                       raw_buf_.data(), &count, &opts);
    const int err = r == 0 ? 0 : errno;
    if (err == ENOSPC && count == 0) {
      if (chunk >= (1u << 20)) return make_error(Errc::full, "map batch: a bucket larger than 1M entries");
      chunk *= 2;
      continue;
    }
    if (err != 0 && err != ENOENT) {
      return make_error(errc_from_errno(err), std::string("map batch lookup: ") + std::strerror(err));
    }
    for (__u32 i = 0; i < count; ++i) {
      const uint64_t* raw = raw_buf_.data() + static_cast<std::size_t>(i) * stride;
      const std::size_t at = values_.size();
      values_.insert(values_.end(), raw, raw + fields_);
      for (std::size_t c = 1; c < copies; ++c)
        for (std::size_t f = 0; f < fields_; ++f) values_[at + f] += raw[c * fields_ + f];
      index_[keys_buf_[i]] = at;
    }
    if (err == ENOENT) return {};  // the whole map was read
    in_token = out_token;
    first = false;
  }
}

const uint64_t* U32MapView::find(uint32_t key) const {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : values_.data() + it->second;
}

Result<const uint64_t*> U32MapView::find_this_tick(int map_fd, uint32_t key) {
  if (!fresh_) {
    if (auto r = read(map_fd); !r) return r.error();
    fresh_ = true;
  }
  if (const uint64_t* f = find(key)) return f;
  // Added after this tick's read: looked up alone, per-CPU copies summed.
  const std::size_t copies = percpu_ ? static_cast<std::size_t>(possible_cpus()) : 1;
  raw_buf_.resize(std::max(raw_buf_.size(), fields_ * copies));
  if (bpf_map_lookup_elem(map_fd, &key, raw_buf_.data()) != 0) {
    if (errno == ENOENT) return nullptr;
    return make_error(errc_from_errno(errno), std::string("map lookup: ") + std::strerror(errno));
  }
  single_.assign(raw_buf_.begin(), raw_buf_.begin() + static_cast<std::ptrdiff_t>(fields_));
  for (std::size_t c = 1; c < copies; ++c)
    for (std::size_t f = 0; f < fields_; ++f) single_[f] += raw_buf_[c * fields_ + f];
  return single_.data();
}

uint64_t U32MapView::end_tick(int map_fd) {
  const uint64_t n = fresh_ ? size() : count_u32_keys(map_fd);
  fresh_ = false;
  return n;
}

const SelfMetrics& self_metrics() {
  static const SelfMetrics m{
      metric("bpf_events_dropped", "", MetricKind::counter,
             "Events the eBPF programs could not record, by collector and reason."),
      metric("bpf_map_memory", "bytes", MetricKind::gauge, "Kernel memory charged to the eBPF maps of a collector."),
      metric("bpf_map_entries", "", MetricKind::gauge,
             "Entries in a per-target eBPF map (bounded by config.bpf limits)."),
      metric("bpf_program_missed_runs", "", MetricKind::counter,
             "Runs of a collector's eBPF programs the kernel skipped because another eBPF program was running on "
             "that CPU: each is an event not counted."),
  };
  return m;
}

uint64_t map_memory_bytes(int map_fd) {
  if (map_fd < 0) return 0;
  std::ifstream in("/proc/self/fdinfo/" + std::to_string(map_fd));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("memlock:", 0) == 0) return std::strtoull(line.c_str() + 8, nullptr, 10);
  }
  return 0;
}

uint64_t MapMemoryReading::bytes(const bpf_object* obj) {
  if (!obj) return 0;
  const auto now = std::chrono::steady_clock::now();
  if (obj == obj_ && now - at_ < std::chrono::seconds(10)) return total_;
  uint64_t total = 0;
  bpf_map* m = nullptr;
  bpf_object__for_each_map(m, obj) total += map_memory_bytes(bpf_map__fd(m));
  obj_ = obj;
  at_ = now;
  total_ = total;
  return total;
}

uint64_t object_missed_runs(const bpf_object* obj) {
  if (!obj) return 0;
  uint64_t total = 0;
  bpf_program* p = nullptr;
  bpf_object__for_each_program(p, obj) {
    const int fd = bpf_program__fd(p);
    if (fd < 0) continue;  // not loaded (autoload off)
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) total += info.recursion_misses;
  }
  return total;
}

}  // namespace memlens::bpf
