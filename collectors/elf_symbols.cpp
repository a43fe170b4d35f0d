#include "collectors/elf_symbols.h"

#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fmt/format.h>

#include "daemon/procfs.h"

namespace memlens::elf {

namespace {

// Closes the fd and the Elf handle of one parse.
struct ElfHandle {
  int fd = -1;
  Elf* e = nullptr;
  ~ElfHandle() {
    if (e) elf_end(e);
    if (fd >= 0) close(fd);
  }
};

std::string hex(const uint8_t* p, std::size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  s.reserve(n * 2);
  for (std::size_t i = 0; i < n; ++i) {
    s.push_back(digits[p[i] >> 4]);
    s.push_back(digits[p[i] & 15]);
  }
  return s;
}

std::string_view base_name(std::string_view sym) {
  auto at = sym.find('@');
  return at == std::string_view::npos ? sym : sym.substr(0, at);
}

}  // namespace

std::optional<UsdtNote> parse_stapsdt(std::span<const uint8_t> desc) {
  // pc, base, semaphore (three 8-byte addresses), then three NUL-ended
  // strings: provider, name, argument spec.
  if (desc.size() < 3 * 8 + 3) return std::nullopt;
  UsdtNote n;
  std::memcpy(&n.pc, desc.data(), 8);
  std::memcpy(&n.base, desc.data() + 8, 8);
  std::memcpy(&n.semaphore, desc.data() + 16, 8);
  std::string_view rest(reinterpret_cast<const char*>(desc.data()) + 24, desc.size() - 24);
  std::string* fields[] = {&n.provider, &n.name, &n.args};
  for (std::string* out : fields) {
    const std::size_t end = rest.find('\0');
    if (end == std::string_view::npos) return std::nullopt;
    *out = std::string(rest.substr(0, end));
    rest.remove_prefix(end + 1);
  }
  if (n.provider.empty() || n.name.empty()) return std::nullopt;
  return n;
}

bool ElfFile::has_usdt(std::string_view provider, std::string_view name) const {
  for (const auto& n : usdt_)
    if (n.provider == provider && n.name == name) return true;
  return false;
}

Result<std::shared_ptr<const ElfFile>> ElfFile::open(const std::string& path, const std::vector<std::string_view>* only) {
  if (elf_version(EV_CURRENT) == EV_NONE) return make_error(Errc::unavailable, "libelf too old");
  ElfHandle h;
  h.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (h.fd < 0) {
    int err = errno;
    return make_error(errc_from_errno(err), path + ": " + std::strerror(err));
  }
  h.e = elf_begin(h.fd, ELF_C_READ_MMAP, nullptr);
  if (!h.e || elf_kind(h.e) != ELF_K_ELF)
    return make_error(Errc::malformed, path + ": not an ELF file");

  std::shared_ptr<ElfFile> f(new ElfFile());
  f->path_ = path;
  std::vector<Found> found;  // names point into libelf's copy, alive until elf_end

  std::size_t nphdr = 0;
  if (elf_getphdrnum(h.e, &nphdr) != 0) return make_error(Errc::malformed, path + ": no program headers");
  for (std::size_t i = 0; i < nphdr; ++i) {
    GElf_Phdr ph;
    if (!gelf_getphdr(h.e, static_cast<int>(i), &ph)) continue;
    if (ph.p_type == PT_LOAD)
      f->segments_.push_back({ph.p_vaddr, ph.p_memsz, ph.p_offset, ph.p_filesz, ph.p_flags});
  }

  std::size_t shstrndx = 0;
  elf_getshdrstrndx(h.e, &shstrndx);
  Elf_Scn* scn = nullptr;
  while ((scn = elf_nextscn(h.e, scn)) != nullptr) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh)) continue;
    if (sh.sh_type == SHT_NOTE) {
      Elf_Data* d = elf_getdata(scn, nullptr);
      if (!d) continue;
      std::size_t off = 0, name_off = 0, desc_off = 0;
      GElf_Nhdr nh;
      while ((off = gelf_getnote(d, off, &nh, &name_off, &desc_off)) > 0) {
        if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
            std::memcmp(static_cast<const char*>(d->d_buf) + name_off, "GNU", 4) == 0)
          f->build_id_ = hex(static_cast<const uint8_t*>(d->d_buf) + desc_off, nh.n_descsz);
        else if (nh.n_type == kNtStapsdt && nh.n_namesz == 8 &&
                 std::memcmp(static_cast<const char*>(d->d_buf) + name_off, "stapsdt", 8) == 0)
          if (auto n = parse_stapsdt({static_cast<const uint8_t*>(d->d_buf) + desc_off, nh.n_descsz}))
            f->usdt_.push_back(std::move(*n));
      }
    } else if (sh.sh_type == SHT_DYNAMIC) {
      Elf_Data* d = elf_getdata(scn, nullptr);
      if (!d) continue;
      std::size_t n = sh.sh_entsize ? sh.sh_size / sh.sh_entsize : 0;
      for (std::size_t i = 0; i < n; ++i) {
        GElf_Dyn dyn;
        if (!gelf_getdyn(d, static_cast<int>(i), &dyn)) break;
        if (dyn.d_tag == DT_NEEDED) {
          const char* s = elf_strptr(h.e, sh.sh_link, dyn.d_un.d_val);
          if (s) f->needed_.emplace_back(s);
        }
      }
    } else if (sh.sh_type == SHT_SYMTAB || sh.sh_type == SHT_DYNSYM) {
      Elf_Data* d = elf_getdata(scn, nullptr);
      if (!d || !sh.sh_entsize) continue;
      std::size_t n = sh.sh_size / sh.sh_entsize;
      for (std::size_t i = 0; i < n; ++i) {
        GElf_Sym s;
        if (!gelf_getsym(d, static_cast<int>(i), &s)) break;
        int type = GELF_ST_TYPE(s.st_info);
        if ((type != STT_FUNC && type != STT_GNU_IFUNC) || s.st_shndx == SHN_UNDEF || s.st_value == 0)
          continue;
        const char* name = elf_strptr(h.e, sh.sh_link, s.st_name);
        if (!name || !*name) continue;
        if (only && std::none_of(only->begin(), only->end(),
                                 [&](std::string_view p) { return std::string_view(name).starts_with(p); }))
          continue;
        found.push_back({name, s.st_value, s.st_size});
      }
    }
  }
  (void)shstrndx;
  f->index_symbols(std::move(found));
  return std::shared_ptr<const ElfFile>(std::move(f));
}

// Stored compactly: a large executable (Debian's node: 75k functions, each
// in both .dynsym and .symtab, ~70-byte mangled names) took 41 MiB of
// memlensd's heap as a std::string per symbol plus a std::map keyed by
// another copy; one copy of each name in one buffer and two index vectors
// take ~8 MiB.
void ElfFile::index_symbols(std::vector<Found> found) {
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
    if (a.vaddr != b.vaddr) return a.vaddr < b.vaddr;
    if (a.size != b.size) return a.size > b.size;
    return a.name < b.name;
  });
  // The same function in .dynsym and .symtab once.
  found.erase(std::unique(found.begin(), found.end(),
                          [](const Found& a, const Found& b) {
                            return a.vaddr == b.vaddr && a.size == b.size && a.name == b.name;
                          }),
              found.end());
  std::size_t bytes = 0;
  for (const auto& x : found) bytes += x.name.size();
  names_.reserve(bytes);
  syms_.reserve(found.size());
  for (const auto& x : found) {
    if (names_.size() + x.name.size() > UINT32_MAX) break;  // a 4 GiB string table: keep what fits
    syms_.push_back({x.vaddr, x.size, vaddr_to_offset(x.vaddr).value_or(0), static_cast<uint32_t>(names_.size()),
                     static_cast<uint32_t>(x.name.size())});
    names_ += x.name;
  }
  by_name_.resize(syms_.size());
  for (uint32_t i = 0; i < by_name_.size(); ++i) by_name_[i] = i;
  // By name, then by position: the first (largest at its address) wins.
  std::sort(by_name_.begin(), by_name_.end(), [&](uint32_t a, uint32_t b) {
    const auto na = name_of(syms_[a]), nb = name_of(syms_[b]);
    return na != nb ? na < nb : a < b;
  });
  for (uint32_t i = 0; i < syms_.size(); ++i) {
    const auto n = name_of(syms_[i]);
    if (const auto b = base_name(n); b.size() != n.size()) by_base_.emplace_back(std::string(b), i);
  }
  std::sort(by_base_.begin(), by_base_.end());
}

std::string_view ElfFile::name_of(const Entry& e) const { return std::string_view(names_).substr(e.name_off, e.name_len); }

Symbol ElfFile::symbol(const Entry& e) const { return Symbol{std::string(name_of(e)), e.vaddr, e.size, e.file_offset}; }

Result<Symbol> ElfFile::find(std::string_view name) const {
  const Entry* e = nullptr;
  auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name,
                             [&](uint32_t i, std::string_view n) { return name_of(syms_[i]) < n; });
  if (it != by_name_.end() && name_of(syms_[*it]) == name) {
    e = &syms_[*it];
  } else {
    // A versioned name ("malloc@@GLIBC_2.2.5") answers to its base name.
    auto b = std::lower_bound(by_base_.begin(), by_base_.end(), name,
                              [](const auto& p, std::string_view n) { return p.first < n; });
    if (b != by_base_.end() && b->first == name) e = &syms_[b->second];
  }
  if (!e) return make_error(Errc::not_found, fmt::format("{}: no symbol {}", path_, name));
  if (e->file_offset == 0 && !vaddr_to_offset(e->vaddr))
    return make_error(Errc::malformed, fmt::format("{}: {} is outside every segment", path_, name));
  return symbol(*e);
}

Result<Symbol> ElfFile::find_prefix(std::string_view prefix) const {
  auto it = std::lower_bound(by_name_.begin(), by_name_.end(), prefix,
                             [&](uint32_t i, std::string_view n) { return name_of(syms_[i]) < n; });
  if (it == by_name_.end() || !name_of(syms_[*it]).starts_with(prefix))
    return make_error(Errc::not_found, fmt::format("{}: no symbol starting {}", path_, prefix));
  return symbol(syms_[*it]);
}

std::optional<std::pair<Symbol, uint64_t>> ElfFile::symbolize(uint64_t vaddr) const {
  auto it = std::upper_bound(syms_.begin(), syms_.end(), vaddr, [](uint64_t v, const Entry& s) { return v < s.vaddr; });
  if (it == syms_.begin()) return std::nullopt;
  --it;
  // Symbols without a size (hand-written asm) still name the code after them.
  if (it->size && vaddr >= it->vaddr + it->size) return std::nullopt;
  return std::make_pair(symbol(*it), vaddr - it->vaddr);
}

std::optional<uint64_t> ElfFile::vaddr_to_offset(uint64_t vaddr) const {
  for (const auto& s : segments_)
    if (vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz) return vaddr - s.vaddr + s.offset;
  return std::nullopt;
}

std::optional<uint64_t> ElfFile::offset_to_vaddr(uint64_t offset) const {
  for (const auto& s : segments_)
    if (offset >= s.offset && offset < s.offset + s.filesz) return offset - s.offset + s.vaddr;
  return std::nullopt;
}

const ElfFile::Segment* ElfFile::segment_of(uint64_t vaddr) const {
  for (const auto& s : segments_)
    if (vaddr >= s.vaddr && vaddr < s.vaddr + s.memsz) return &s;
  return nullptr;
}

std::optional<uint64_t> ElfFile::load_bias(const std::vector<Mapping>& maps) const {
  // The kernel maps each PT_LOAD from its page-aligned offset to its
  // page-aligned vaddr (plus the bias), so one mapping gives the bias.
  constexpr uint64_t kPageMask = ~uint64_t{4095};
  for (const auto& m : maps)
    for (const auto& s : segments_)
      if ((s.offset & kPageMask) == m.offset) return m.start - (s.vaddr & kPageMask);
  return std::nullopt;
}

Result<std::vector<uint8_t>> ElfFile::read_bytes(uint64_t file_offset, std::size_t n) const {
  int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error(errc_from_errno(errno), path_ + ": " + std::strerror(errno));
  std::vector<uint8_t> buf(n);
  ssize_t got = pread(fd, buf.data(), n, static_cast<off_t>(file_offset));
  int err = errno;
  close(fd);
  if (got < 0) return make_error(errc_from_errno(err), path_ + ": " + std::strerror(err));
  buf.resize(static_cast<std::size_t>(got));
  return buf;
}

Result<std::shared_ptr<const ElfFile>> open_cached(const std::string& path, Keep keep) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const ElfFile>> by_key;  // build-id or file identity
  static std::map<std::string, std::string> key_of_identity;            // identity -> key
  static std::map<std::string, std::shared_ptr<const ElfFile>> partial;  // identity#keep -> file
  static const std::vector<std::string_view> kNone, kAllocator = {"malloc", "free", "_rjem_mallocx", "_rjem_sdallocx"};
  struct stat st {};
  if (stat(path.c_str(), &st) != 0)
    return make_error(errc_from_errno(errno), path + ": " + std::strerror(errno));
  std::string identity = fmt::format("{}:{}:{}", st.st_dev, st.st_ino, st.st_mtim.tv_sec);
  const std::string partial_key = identity + (keep == Keep::none ? "#none" : "#allocator");
  {
    std::lock_guard lock(mu);
    if (auto it = key_of_identity.find(identity); it != key_of_identity.end()) return by_key.at(it->second);
    if (keep != Keep::all)
      if (auto it = partial.find(partial_key); it != partial.end()) return it->second;
  }
  auto f = ElfFile::open(path, keep == Keep::all ? nullptr : keep == Keep::none ? &kNone : &kAllocator);
  if (!f) return f.error();
  std::lock_guard lock(mu);
  if (keep != Keep::all) return partial.emplace(partial_key, *f).first->second;
  std::string key = (*f)->build_id().empty() ? identity : (*f)->build_id();
  auto [it, inserted] = by_key.emplace(key, *f);
  key_of_identity.emplace(identity, key);
  // Same build-id seen through another path: reuse the parsed copy but keep
  // this path for reading bytes (the files are identical).
  if (!inserted && it->second->path() != path) return *f;
  return it->second;
}

Result<std::map<std::string, Symbol, std::less<>>> find_objects(const std::string& path,
                                                                const std::vector<std::string>& names) {
  if (elf_version(EV_CURRENT) == EV_NONE) return make_error(Errc::unavailable, "libelf too old");
  ElfHandle h;
  h.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (h.fd < 0) {
    int err = errno;
    return make_error(errc_from_errno(err), path + ": " + std::strerror(err));
  }
  h.e = elf_begin(h.fd, ELF_C_READ_MMAP, nullptr);
  if (!h.e || elf_kind(h.e) != ELF_K_ELF) return make_error(Errc::malformed, path + ": not an ELF file");
  std::map<std::string, Symbol, std::less<>> out;
  Elf_Scn* scn = nullptr;
  while ((scn = elf_nextscn(h.e, scn)) != nullptr) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh) || (sh.sh_type != SHT_SYMTAB && sh.sh_type != SHT_DYNSYM) || !sh.sh_entsize)
      continue;
    Elf_Data* d = elf_getdata(scn, nullptr);
    if (!d) continue;
    const std::size_t n = sh.sh_size / sh.sh_entsize;
    for (std::size_t i = 0; i < n; ++i) {
      GElf_Sym sym;
      if (!gelf_getsym(d, static_cast<int>(i), &sym)) break;
      if (GELF_ST_TYPE(sym.st_info) != STT_OBJECT || sym.st_shndx == SHN_UNDEF) continue;
      const char* name = elf_strptr(h.e, sh.sh_link, sym.st_name);
      if (!name || std::find(names.begin(), names.end(), std::string_view(name)) == names.end()) continue;
      out.emplace(name, Symbol{name, sym.st_value, sym.st_size, 0});
    }
  }
  return out;
}

std::optional<std::string> debug_file_for(const std::string& debug_dir, const std::string& build_id) {
  if (debug_dir.empty() || build_id.size() < 3) return std::nullopt;
  std::string p = debug_dir + "/.build-id/" + build_id.substr(0, 2) + "/" + build_id.substr(2) + ".debug";
  if (access(p.c_str(), R_OK) != 0) return std::nullopt;
  // The name is only a convention: trust the note inside.
  auto f = ElfFile::open(p);
  if (!f || (*f)->build_id() != build_id) return std::nullopt;
  return p;
}

// ---- prologue decoding -------------------------------------------------

namespace {

bool is_push(std::span<const uint8_t> c, std::size_t i, std::size_t* len) {
  if (i < c.size() && c[i] >= 0x50 && c[i] <= 0x57) { *len = 1; return true; }
  if (i + 1 < c.size() && c[i] == 0x41 && c[i + 1] >= 0x50 && c[i + 1] <= 0x57) { *len = 2; return true; }
  return false;
}

bool is_jcc_or_jmp(std::span<const uint8_t> c, std::size_t i) {
  if (i >= c.size()) return false;
  if ((c[i] >= 0x70 && c[i] <= 0x7f) || c[i] == 0xeb || c[i] == 0xe9 || c[i] == 0xe8) return true;
  return i + 1 < c.size() && c[i] == 0x0f && c[i + 1] >= 0x80 && c[i + 1] <= 0x8f;
}

bool is_nop5(std::span<const uint8_t> c, std::size_t i) {
  static const uint8_t nop5[] = {0x0f, 0x1f, 0x44, 0x00, 0x00};
  return i + 5 <= c.size() && std::equal(nop5, nop5 + 5, c.begin() + static_cast<long>(i));
}

// test r64,r64 with the same register (REX.W 85 /r, mod=11, reg==rm): reads
// only, so every argument register survives it.
bool is_self_test(std::span<const uint8_t> c, std::size_t i) {
  if (i + 3 > c.size()) return false;
  if (c[i] != 0x48 && c[i] != 0x4d) return false;  // REX.W, or REX.WRB for r8-r15
  if (c[i + 1] != 0x85) return false;
  uint8_t m = c[i + 2];
  return (m >> 6) == 3 && ((m >> 3) & 7) == (m & 7);
}

bool is_endbr64(std::span<const uint8_t> c, std::size_t i) {
  static const uint8_t e[] = {0xf3, 0x0f, 0x1e, 0xfa};
  return i + 4 <= c.size() && std::equal(e, e + 4, c.begin() + static_cast<long>(i));
}

}  // namespace

ProbeSite choose_probe_site(std::span<const uint8_t> code) {
  std::size_t i = 0;
  std::string note;
  if (is_endbr64(code, i)) {
    i += 4;
    note = "endbr64; ";
  }
  std::size_t len = 0;
  if (is_push(code, i, &len)) return {i, true, note + "push"};
  if (is_nop5(code, i)) return {i, true, note + "nop5"};
  if (is_jcc_or_jmp(code, i)) return {i, true, note + "branch"};
  if (is_self_test(code, i) && is_jcc_or_jmp(code, i + 3))
    return {i + 3, true, note + "test reg,reg; probe at the branch after it"};
  return {0, false, note + (code.empty() ? "no bytes" : fmt::format("first byte {:#04x}: single-stepped", code[0]))};
}

Result<ProbeSite> probe_site(const ElfFile& f, const Symbol& s) {
  auto bytes = f.read_bytes(s.file_offset, 16);
  if (!bytes) return bytes.error();
  std::size_t n = s.size ? std::min<std::size_t>(bytes->size(), s.size) : bytes->size();
  return choose_probe_site(std::span<const uint8_t>(bytes->data(), n));
}

// ---- x86-64 instruction decoding -----------------------------------------

namespace {

// Operand shape of an opcode: ModRM present, immediate size, relative branch.
enum : uint8_t {
  kModRM = 1 << 0,
  kImm8 = 1 << 1,
  kImm16 = 1 << 2,
  kImmZ = 1 << 3,   // 32 bits (16 with a 66 prefix)
  kImmV = 1 << 4,   // 64 bits with REX.W, else as kImmZ (mov r, imm)
  kRel8 = 1 << 5,
  kRel32 = 1 << 6,
  kBad = 1 << 7,    // invalid in 64-bit mode or not handled here
};

constexpr std::array<uint8_t, 256> one_byte_map() {
  std::array<uint8_t, 256> t{};
  for (int i = 0; i < 0x40; ++i) {  // ALU rows: r/m forms, AL/eAX immediates
    const int lo = i & 7;
    t[i] = lo < 4 ? kModRM : lo == 4 ? kImm8 : lo == 5 ? kImmZ : kBad;
  }
  for (int i = 0x60; i <= 0x62; ++i) t[i] = kBad;  // 62: EVEX
  t[0x63] = kModRM;                                // movsxd
  t[0x68] = kImmZ;
  t[0x69] = kModRM | kImmZ;
  t[0x6a] = kImm8;
  t[0x6b] = kModRM | kImm8;
  for (int i = 0x70; i <= 0x7f; ++i) t[i] = kRel8;
  t[0x80] = kModRM | kImm8;
  t[0x81] = kModRM | kImmZ;
  t[0x82] = kBad;
  t[0x83] = kModRM | kImm8;
  for (int i = 0x84; i <= 0x8f; ++i) t[i] = kModRM;
  t[0x9a] = kBad;
  for (int i = 0xa0; i <= 0xa3; ++i) t[i] = kBad;  // moffs64 forms: never in compiled C here
  t[0xa8] = kImm8;
  t[0xa9] = kImmZ;
  for (int i = 0xb0; i <= 0xb7; ++i) t[i] = kImm8;
  for (int i = 0xb8; i <= 0xbf; ++i) t[i] = kImmV;
  t[0xc0] = t[0xc1] = kModRM | kImm8;
  t[0xc2] = kImm16;
  t[0xc6] = kModRM | kImm8;
  t[0xc7] = kModRM | kImmZ;
  t[0xc8] = kImm16 | kImm8;
  t[0xca] = kImm16;
  t[0xcd] = kImm8;
  t[0xce] = kBad;
  for (int i = 0xd0; i <= 0xd3; ++i) t[i] = kModRM;
  t[0xd4] = t[0xd5] = t[0xd6] = kBad;
  for (int i = 0xd8; i <= 0xdf; ++i) t[i] = kModRM;  // x87
  for (int i = 0xe0; i <= 0xe3; ++i) t[i] = kRel8;
  for (int i = 0xe4; i <= 0xe7; ++i) t[i] = kImm8;
  t[0xe8] = t[0xe9] = kRel32;
  t[0xea] = kBad;
  t[0xeb] = kRel8;
  t[0xf6] = t[0xf7] = kModRM;  // immediate only for /0 and /1 (test), added below
  t[0xfe] = t[0xff] = kModRM;
  return t;
}

constexpr std::array<uint8_t, 256> two_byte_map() {
  std::array<uint8_t, 256> t{};
  for (auto& v : t) v = kModRM;
  for (int i : {0x05, 0x06, 0x07, 0x08, 0x09, 0x0b, 0x0e, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x37, 0x77, 0xa0,
                0xa1, 0xa2, 0xa8, 0xa9, 0xaa})
    t[i] = 0;
  for (int i : {0x04, 0x0a, 0x0c, 0x0f, 0x36, 0x39, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f}) t[i] = kBad;
  for (int i = 0x80; i <= 0x8f; ++i) t[i] = kRel32;
  for (int i = 0xc8; i <= 0xcf; ++i) t[i] = 0;  // bswap
  for (int i : {0x70, 0x71, 0x72, 0x73, 0xa4, 0xac, 0xba, 0xc2, 0xc4, 0xc5, 0xc6}) t[i] = kModRM | kImm8;
  return t;
}

constexpr auto kOneByte = one_byte_map();
constexpr auto kTwoByte = two_byte_map();

}  // namespace

std::optional<Insn> decode_insn(std::span<const uint8_t> code, std::size_t at, uint64_t vaddr) {
  Insn in;
  in.vaddr = vaddr;
  std::size_t i = at;
  auto byte = [&](std::size_t k) -> std::optional<uint8_t> {
    if (k >= code.size()) return std::nullopt;
    return code[k];
  };
  bool opsize16 = false;
  // Legacy prefixes, at most 14 bytes in all.
  for (;;) {
    auto b = byte(i);
    if (!b || i - at > 14) return std::nullopt;
    if (*b == 0x66) {
      opsize16 = true;
      in.mandatory = 0x66;
    } else if (*b == 0xf2 || *b == 0xf3) {
      in.mandatory = *b;
    } else if (*b != 0xf0 && *b != 0x2e && *b != 0x36 && *b != 0x3e && *b != 0x26 && *b != 0x64 && *b != 0x65 &&
               *b != 0x67) {
      break;
    }
    ++i;
  }
  uint8_t rex = 0;
  if (auto b = byte(i); b && (*b & 0xf0) == 0x40) {
    rex = *b;
    ++i;
  }
  auto b0 = byte(i);
  if (!b0) return std::nullopt;
  uint8_t flags = 0;
  if (*b0 == 0xc4 || *b0 == 0xc5) {
    // VEX: the map and W come from the prefix; ModRM always follows.
    in.vex = true;
    auto p1 = byte(i + 1);
    if (!p1) return std::nullopt;
    uint8_t rxb = 0;
    if (*b0 == 0xc5) {
      in.map = 2;
      rxb = (*p1 & 0x80) ? 0 : 4;
      i += 2;
    } else {
      auto p2 = byte(i + 2);
      if (!p2) return std::nullopt;
      const uint8_t m = *p1 & 0x1f;
      if (m < 1 || m > 3) return std::nullopt;
      in.map = static_cast<uint8_t>(m + 1);
      rxb = static_cast<uint8_t>((~*p1 >> 5) & 7);
      in.rex_w = (*p2 & 0x80) != 0;
      i += 3;
    }
    rex = static_cast<uint8_t>(0x40 | rxb | (in.rex_w ? 8 : 0));
    auto op = byte(i);
    if (!op) return std::nullopt;
    in.opcode = *op;
    ++i;
    flags = in.map == 2 ? kTwoByte[in.opcode] : in.map == 4 ? kModRM | kImm8 : kModRM;
    if (in.map == 2 && (flags & (kRel32 | kBad))) return std::nullopt;
  } else if (*b0 == 0x0f) {
    auto b1 = byte(i + 1);
    if (!b1) return std::nullopt;
    if (*b1 == 0x38 || *b1 == 0x3a) {
      auto b2 = byte(i + 2);
      if (!b2) return std::nullopt;
      in.map = *b1 == 0x38 ? 3 : 4;
      in.opcode = *b2;
      flags = *b1 == 0x38 ? kModRM : kModRM | kImm8;
      i += 3;
    } else {
      in.map = 2;
      in.opcode = *b1;
      flags = kTwoByte[*b1];
      i += 2;
    }
  } else {
    in.map = 1;
    in.opcode = *b0;
    flags = kOneByte[*b0];
    ++i;
  }
  if (flags & kBad) return std::nullopt;
  in.rex_w = in.rex_w || (rex & 8) != 0;

  if (flags & kModRM) {
    auto m = byte(i++);
    if (!m) return std::nullopt;
    in.has_modrm = true;
    in.mod = static_cast<uint8_t>(*m >> 6);
    in.reg = static_cast<uint8_t>(((*m >> 3) & 7) | ((rex & 4) ? 8 : 0));
    in.rm = static_cast<uint8_t>((*m & 7) | ((rex & 1) ? 8 : 0));
    std::size_t disp_len = 0;
    if (in.mod != 3) {
      in.mem = true;
      if ((*m & 7) == 4) {  // SIB
        auto sib = byte(i++);
        if (!sib) return std::nullopt;
        if (in.mod == 0 && (*sib & 7) == 5) disp_len = 4;
      } else if (in.mod == 0 && (*m & 7) == 5) {
        in.rip_relative = true;
        disp_len = 4;
      }
      if (in.mod == 1) disp_len = 1;
      if (in.mod == 2) disp_len = 4;
    }
    if (i + disp_len > code.size()) return std::nullopt;
    if (disp_len == 1) {
      in.disp = static_cast<int8_t>(code[i]);
    } else if (disp_len == 4) {
      int32_t d;
      std::memcpy(&d, &code[i], 4);
      in.disp = d;
    }
    i += disp_len;
    // Group 3 (F6/F7): only test (/0, /1) takes an immediate.
    if (in.map == 1 && (in.opcode == 0xf6 || in.opcode == 0xf7) && ((in.reg & 7) < 2))
      flags |= in.opcode == 0xf6 ? kImm8 : kImmZ;
  }
  std::size_t imm = 0;
  if (flags & kImm8) imm += 1;
  if (flags & kImm16) imm += 2;
  if (flags & kImmZ) imm += opsize16 && !in.rex_w ? 2 : 4;
  if (flags & kImmV) imm += in.rex_w ? 8 : opsize16 ? 2 : 4;
  int64_t rel = 0;
  if (flags & (kRel8 | kRel32)) {
    const std::size_t n = (flags & kRel8) ? 1 : 4;
    if (i + n > code.size()) return std::nullopt;
    if (n == 1) {
      rel = static_cast<int8_t>(code[i]);
    } else {
      int32_t r;
      std::memcpy(&r, &code[i], 4);
      rel = r;
    }
    i += n;
    in.branch = true;
    in.call = in.map == 1 && in.opcode == 0xe8;
  }
  if (i + imm > code.size()) return std::nullopt;
  i += imm;
  in.len = static_cast<uint8_t>(i - at);
  const uint64_t next = vaddr + in.len;
  if (in.rip_relative) in.target = next + static_cast<uint64_t>(in.disp);
  if (in.branch) in.target = next + static_cast<uint64_t>(rel);
  in.ret = in.map == 1 && (in.opcode == 0xc3 || in.opcode == 0xc2);
  return in;
}

std::vector<Insn> decode_code(std::span<const uint8_t> code, uint64_t vaddr) {
  std::vector<Insn> out;
  std::size_t at = 0;
  while (at < code.size()) {
    auto in = decode_insn(code, at, vaddr + at);
    if (!in) break;
    at += in->len;
    out.push_back(*in);
  }
  return out;
}

// ---- allocators --------------------------------------------------------

const char* allocator_name(AllocatorKind k) {
  switch (k) {
    case AllocatorKind::glibc: return "glibc";
    case AllocatorKind::jemalloc: return "jemalloc";
    case AllocatorKind::tcmalloc: return "tcmalloc";
    case AllocatorKind::mimalloc: return "mimalloc";
    default: return "other";
  }
}

namespace {

AllocatorKind classify(const std::string& path, const ElfFile& f) {
  auto has = [&](const char* s) { return path.find(s) != std::string::npos; };
  if (has("jemalloc") || f.defines("mallctl") || f.defines("je_mallctl") || f.defines("_rjem_mallctl") ||
      f.defines("_rjem_mallocx"))
    return AllocatorKind::jemalloc;
  if (has("tcmalloc") || f.defines("tc_malloc")) return AllocatorKind::tcmalloc;
  if (has("mimalloc") || f.defines("mi_malloc")) return AllocatorKind::mimalloc;
  if (has("/libc.so") || has("/libc-")) return AllocatorKind::glibc;
  return AllocatorKind::other;
}

// An allocator location for the file at `open_path` if it defines one:
// asked of its allocator entry points alone, so that only an allocator's
// every function is read and kept.
std::optional<AllocatorLocation> location_of(const std::string& path, const std::string& open_path) {
  auto probe = open_cached(open_path, Keep::allocator);
  if (!probe) return std::nullopt;
  auto prefix = allocator_prefix(**probe);
  if (!prefix) return std::nullopt;
  auto f = open_cached(open_path);
  if (!f) return std::nullopt;
  return AllocatorLocation{classify(path, **f), path, open_path, *f, *prefix};
}

}  // namespace

std::optional<std::string> allocator_prefix(const ElfFile& f) {
  if (f.defines("malloc") && f.defines("free")) return std::string();
  if (f.defines("_rjem_mallocx") && f.defines("_rjem_sdallocx")) return std::string("_rjem_");
  return std::nullopt;
}

Result<AllocatorLocation> find_allocator(const std::string& procfs, pid_t pid) {
  ProcFs fs(procfs);
  auto text = read_file(fs.path(pid, "maps"));
  if (!text) return text.error();
  auto exe = read_link(fs.path(pid, "exe"));
  std::vector<std::string> files;  // executable file mappings, exe first
  for (const auto& m : parse_maps(*text)) {
    if (m.path.empty() || m.path[0] != '/' || m.perms.size() < 3 || m.perms[2] != 'x') continue;
    if (std::find(files.begin(), files.end(), m.path) == files.end()) files.push_back(m.path);
  }
  if (exe) {
    auto it = std::find(files.begin(), files.end(), *exe);
    if (it != files.end()) std::rotate(files.begin(), it, it + 1);
  }
  std::optional<AllocatorLocation> libc;
  for (std::size_t i = 0; i < files.size(); ++i) {
    std::string open_path = fs.path(pid, "root") + files[i];
    auto found = location_of(files[i], open_path);
    if (!found) continue;
    AllocatorLocation& loc = *found;
    // The executable interposes on every library; among libraries a
    // dedicated allocator wins over libc (it is usually preloaded/needed).
    if (i == 0 && exe && files[0] == *exe) return loc;
    if (loc.kind == AllocatorKind::glibc) {
      if (!libc) libc = loc;
      continue;
    }
    if (loc.kind != AllocatorKind::other) return loc;
  }
  if (libc) return *libc;
  return make_error(Errc::not_found, fmt::format("pid {}: no mapped file defines malloc", pid));
}

namespace {
const char* const kLibDirs[] = {"/lib/x86_64-linux-gnu/", "/usr/lib/x86_64-linux-gnu/", "/lib64/",
                                "/usr/lib64/", "/lib/", "/usr/lib/", "/usr/local/lib/"};
}  // namespace

std::vector<std::string> preload_libraries(std::string_view environ, std::string_view ld_so_preload,
                                           const std::string& root) {
  std::vector<std::string> words;
  auto split = [&](std::string_view v) {
    std::size_t i = 0;
    while (i < v.size()) {
      while (i < v.size() && (v[i] == ' ' || v[i] == ':' || v[i] == '\t' || v[i] == '\n')) ++i;
      std::size_t j = i;
      while (j < v.size() && v[j] != ' ' && v[j] != ':' && v[j] != '\t' && v[j] != '\n') ++j;
      if (j > i) words.emplace_back(v.substr(i, j - i));
      i = j;
    }
  };
  for (std::size_t i = 0; i < environ.size();) {
    std::size_t end = environ.find('\0', i);
    if (end == std::string_view::npos) end = environ.size();
    std::string_view var = environ.substr(i, end - i);
    if (var.rfind("LD_PRELOAD=", 0) == 0) split(var.substr(11));
    i = end + 1;
  }
  split(ld_so_preload);
  std::vector<std::string> out;
  for (const auto& w : words) {
    if (w.find('/') != std::string::npos) {
      std::string p = root + w;
      if (access(p.c_str(), R_OK) == 0) out.push_back(p);
      continue;
    }
    for (const char* d : kLibDirs) {
      std::string p = root + d + w;
      if (access(p.c_str(), R_OK) == 0) {
        out.push_back(p);
        break;
      }
    }
  }
  return out;
}

Result<AllocatorLocation> find_allocator_for_exe(const std::string& exe_path,
                                                 const std::vector<std::string>& preload) {
  // The loader binds malloc to the first object in its search order that
  // defines it: the executable, then the preloads, then the needed libraries.
  if (auto loc = location_of(exe_path, exe_path)) return *loc;
  for (const auto& p : preload)
    if (auto loc = location_of(p, p)) return *loc;
  return find_allocator_for_exe(exe_path);
}

Result<AllocatorLocation> find_allocator_for_exe(const std::string& exe_path) {
  auto exe = open_cached(exe_path, Keep::allocator);
  if (!exe) return exe.error();
  if (auto loc = location_of(exe_path, exe_path)) return *loc;
  std::optional<AllocatorLocation> libc;
  for (const auto& lib : (*exe)->needed()) {
    for (const char* d : kLibDirs) {
      std::string p = std::string(d) + lib;
      if (access(p.c_str(), R_OK) != 0) continue;
      auto found = location_of(p, p);
      if (!found) break;
      AllocatorLocation& loc = *found;
      if (loc.kind == AllocatorKind::glibc) {
        if (!libc) libc = loc;
      } else {
        return loc;
      }
      break;
    }
  }
  if (libc) return *libc;
  return make_error(Errc::not_found, exe_path + ": no allocator found (static or unusual layout)");
}

// ---- symbolisation -----------------------------------------------------

Result<Symbolizer> Symbolizer::for_pid(const std::string& procfs, pid_t pid) {
  ProcFs fs(procfs);
  auto text = read_file(fs.path(pid, "maps"));
  if (!text) return text.error();
  Symbolizer s;
  s.procfs_ = procfs;
  s.pid_ = pid;
  s.maps_ = parse_maps(*text);
  return s;
}

std::string Symbolizer::symbolize(uint64_t addr) const {
  for (const auto& m : maps_) {
    if (addr < m.start || addr >= m.end) continue;
    if (m.path.empty() || m.path[0] != '/') return fmt::format("{:#x} ({})", addr, m.path.empty() ? "anon" : m.path);
    std::string base = m.path.substr(m.path.rfind('/') + 1);
    auto f = open_cached(ProcFs(procfs_).path(pid_, "root") + m.path);
    if (!f) return fmt::format("{:#x} ({})", addr, base);
    auto vaddr = (*f)->offset_to_vaddr(addr - m.start + m.offset);
    if (!vaddr) return fmt::format("{:#x} ({})", addr, base);
    auto sym = (*f)->symbolize(*vaddr);
    if (!sym) return fmt::format("{:#x} ({})", *vaddr, base);
    return fmt::format("{}+{:#x} ({})", sym->first.name, sym->second, base);
  }
  return fmt::format("{:#x}", addr);
}

Symbolizer::Frame Symbolizer::resolve(uint64_t addr) const {
  Frame fr;
  for (const auto& m : maps_) {
    if (addr < m.start || addr >= m.end) continue;
    fr.map = &m;
    if (m.path.empty() || m.path[0] != '/') return fr;
    fr.open_path = ProcFs(procfs_).path(pid_, "root") + m.path;
    auto f = open_cached(fr.open_path);
    if (!f) return fr;
    fr.build_id = (*f)->build_id();
    auto vaddr = (*f)->offset_to_vaddr(addr - m.start + m.offset);
    if (!vaddr) return fr;
    fr.vaddr = *vaddr;
    if (auto sym = (*f)->symbolize(*vaddr)) fr.function = std::move(sym->first.name);
    return fr;
  }
  return fr;
}

}  // namespace memlens::elf
