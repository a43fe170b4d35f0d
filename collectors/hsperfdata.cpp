#include "collectors/hsperfdata.h"

#include <dirent.h>
#include <sys/stat.h>

#include <bit>
#include <charconv>
#include <cstring>
#include <memory>

#include "collectors/elf_symbols.h"

namespace memlens {

std::optional<int64_t> PerfData::get(std::string_view name) const {
  auto it = longs.find(name);
  if (it == longs.end()) return std::nullopt;
  return it->second;
}

namespace {

// Layout of HotSpot's PerfDataPrologue and PerfDataEntry (perfMemory.hpp).
constexpr std::size_t kPrologueSize = 32;
constexpr std::size_t kEntryHeaderSize = 20;
constexpr uint32_t kMagic = 0xcafec0c0;  // stored big-endian whatever the order

class Reader {
 public:
  Reader(std::string_view d, bool little) : d_(d), little_(little) {}
  bool has(std::size_t off, std::size_t n) const { return off <= d_.size() && n <= d_.size() - off; }
  uint32_t u32(std::size_t off) const {
    uint32_t v;
    std::memcpy(&v, d_.data() + off, 4);
    return swap_if(v);
  }
  int64_t i64(std::size_t off) const {
    uint64_t v;
    std::memcpy(&v, d_.data() + off, 8);
    return static_cast<int64_t>(swap_if(v));
  }
  uint8_t u8(std::size_t off) const { return static_cast<uint8_t>(d_[off]); }
  std::string_view bytes(std::size_t off, std::size_t n) const { return d_.substr(off, n); }

 private:
  template <class T>
  T swap_if(T v) const {
    bool host_little = std::endian::native == std::endian::little;
    if (little_ == host_little) return v;
    if constexpr (sizeof(T) == 4) return __builtin_bswap32(v);
    else return __builtin_bswap64(v);
  }
  std::string_view d_;
  bool little_;
};

}  // namespace

Result<PerfData> parse_hsperfdata(std::string_view data) {
  if (data.size() < kPrologueSize) return make_error(Errc::malformed, "hsperfdata: shorter than its header");
  uint32_t magic = (uint32_t{static_cast<uint8_t>(data[0])} << 24) |
                   (uint32_t{static_cast<uint8_t>(data[1])} << 16) |
                   (uint32_t{static_cast<uint8_t>(data[2])} << 8) | static_cast<uint8_t>(data[3]);
  if (magic != kMagic) return make_error(Errc::malformed, "hsperfdata: bad magic");
  Reader r(data, data[4] != 0);
  uint8_t major = r.u8(5);
  if (major != 2) return make_error(Errc::malformed, "hsperfdata: unsupported version " + std::to_string(major));
  if (r.u8(7) == 0) return make_error(Errc::unavailable, "hsperfdata: not yet accessible");
  uint32_t entry_offset = r.u32(24);
  uint32_t num_entries = r.u32(28);

  PerfData out;
  std::size_t off = entry_offset;
  for (uint32_t i = 0; i < num_entries; ++i) {
    if (!r.has(off, kEntryHeaderSize)) return make_error(Errc::malformed, "hsperfdata: entry past the end");
    uint32_t len = r.u32(off);
    uint32_t name_off = r.u32(off + 4);
    uint32_t vec_len = r.u32(off + 8);
    char type = static_cast<char>(r.u8(off + 12));
    uint32_t data_off = r.u32(off + 16);
    if (len < kEntryHeaderSize || !r.has(off, len) || name_off >= len || data_off > len)
      return make_error(Errc::malformed, "hsperfdata: entry " + std::to_string(i) + " is inconsistent");
    std::string_view name = r.bytes(off + name_off, len - name_off);
    name = name.substr(0, name.find('\0'));
    if (type == 'J' && vec_len == 0) {
      if (!r.has(off + data_off, 8) || data_off + 8 > len)
        return make_error(Errc::malformed, "hsperfdata: long past its entry");
      out.longs.emplace(std::string(name), r.i64(off + data_off));
    } else if (type == 'B' && vec_len > 0) {
      if (data_off + std::size_t{vec_len} > len)
        return make_error(Errc::malformed, "hsperfdata: string past its entry");
      std::string_view s = r.bytes(off + data_off, vec_len);
      out.strings.emplace(std::string(name), std::string(s.substr(0, s.find('\0'))));
    }
    off += len;
  }
  return out;
}

uint64_t JvmMemory::heap_used() const {
  uint64_t sum = 0;
  for (const auto& s : heap) sum += s.used;
  return sum;
}

namespace {

uint64_t non_negative(std::optional<int64_t> v) { return v && *v > 0 ? static_cast<uint64_t>(*v) : 0; }

}  // namespace

JvmMemory jvm_memory(const PerfData& p) {
  JvmMemory m;
  // Generations and their spaces are numbered densely from 0; the counts are
  // counters too, but walking until a space is missing needs no trust in them.
  for (int g = 0; g < 4; ++g) {
    std::string gen = "sun.gc.generation." + std::to_string(g) + ".";
    if (!p.get(gen + "capacity") && !p.get(gen + "space.0.used")) break;
    for (int s = 0; s < 8; ++s) {
      std::string sp = gen + "space." + std::to_string(s) + ".";
      auto used = p.get(sp + "used");
      if (!used) break;
      JvmSpace space;
      auto name = p.strings.find(sp + "name");
      space.name = name != p.strings.end() && !name->second.empty() ? name->second
                                                                      : "gen" + std::to_string(g) + "_" + std::to_string(s);
      // G1 calls its one old-generation space just "space": use the
      // generation's name ("old") then.
      if (space.name == "space") {
        auto gname = p.strings.find(gen + "name");
        if (gname != p.strings.end() && !gname->second.empty()) space.name = gname->second;
      }
      space.used = non_negative(used);
      space.committed = non_negative(p.get(sp + "capacity"));
      m.heap.push_back(std::move(space));
    }
  }
  if (auto used = p.get("sun.gc.metaspace.used"))
    m.metaspace = JvmSpace{"metaspace", non_negative(used), non_negative(p.get("sun.gc.metaspace.capacity"))};
  if (auto used = p.get("sun.gc.compressedclassspace.used"))
    m.class_space = JvmSpace{"compressed_class", non_negative(used),
                             non_negative(p.get("sun.gc.compressedclassspace.capacity"))};
  return m;
}

namespace {

// Innermost pid from the NSpid line of /proc/PID/status ("NSpid:\t123\t7").
pid_t ns_pid(const ProcFs& proc, pid_t pid) {
  auto status = read_file(proc.path(pid, "status"));
  if (!status) return pid;
  std::string_view s = *status;
  auto at = s.find("\nNSpid:");
  if (at == std::string_view::npos) return pid;
  s = s.substr(at + 7);
  s = s.substr(0, s.find('\n'));
  auto last = s.find_last_of(" \t");
  if (last != std::string_view::npos) s = s.substr(last + 1);
  pid_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc{} && v > 0 ? v : pid;
}

}  // namespace

std::optional<std::string> hsperfdata_path_from_maps(std::string_view maps) {
  for (const auto& m : parse_maps(maps)) {
    const std::string& path = m.path;
    auto dir = path.rfind("/hsperfdata_");
    // The JVM's own file: .../hsperfdata_<user>/<pid>, a shared mapping, not deleted.
    if (path.empty() || path[0] != '/' || dir == std::string::npos || path.find('/', dir + 1) == std::string::npos)
      continue;
    if (path.ends_with(" (deleted)")) continue;
    return path;
  }
  return std::nullopt;
}

Result<std::string> find_hsperfdata(const ProcFs& proc, pid_t pid) {
  // The JVM maps its file: that names it exactly (user, pid in its own
  // namespace), and a stale file of an earlier JVM with the same pid is
  // never picked up.
  if (auto maps = read_file(proc.path(pid, "maps"), 1 << 24)) {
    if (auto p = hsperfdata_path_from_maps(*maps)) return proc.path(pid, "root") + *p;
  }
  // Not mapped (maps unreadable, or an unusual JVM): look for the file.
  std::string tmp = proc.path(pid, "root") + "/tmp";
  struct DirCloser {
    void operator()(DIR* d) const { closedir(d); }
  };
  std::unique_ptr<DIR, DirCloser> d(opendir(tmp.c_str()));
  if (!d) return make_error(errc_from_errno(errno), tmp + ": " + std::strerror(errno));
  std::string file = std::to_string(ns_pid(proc, pid));
  while (dirent* e = readdir(d.get())) {
    if (std::strncmp(e->d_name, "hsperfdata_", 11) != 0) continue;
    std::string p = tmp + "/" + e->d_name + "/" + file;
    struct stat st;
    if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return p;
  }
  return make_error(Errc::not_found, "no hsperfdata file for pid " + std::to_string(pid));
}

}  // namespace memlens
