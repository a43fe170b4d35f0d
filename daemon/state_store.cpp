#include "daemon/state_store.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "daemon/config.h"
#include "daemon/procfs.h"

namespace memlens {

namespace {

constexpr char kMagic[8] = {'M', 'L', 'S', 'T', 'A', 'T', 'E', '1'};
constexpr uint32_t kVersion = 1;
constexpr std::size_t kPage = 4096;

struct FileHeader {
  char magic[8];
  uint32_t version, series, chunk_bytes, chunks_per_slot, slots, pad;
  char boot_id[40];
  uint32_t crc;
};

uint32_t crc_of(const void* p, std::size_t n) {
  return static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0), static_cast<const Bytef*>(p), static_cast<uInt>(n)));
}

std::string boot_id() {
  auto id = read_file("/proc/sys/kernel/random/boot_id", 64);
  std::string s = id ? *id : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::size_t round_page(std::size_t n) { return (n + kPage - 1) / kPage * kPage; }

}  // namespace

struct SlotHeader {
  uint32_t used;  // 1: a target's timeline
  int32_t pid;
  uint64_t start_time;
  uint64_t owner;  // the generation its chunks carry
  char name[96];
  uint32_t crc;
  uint32_t pad;
};
static_assert(sizeof(SlotHeader) == 128);

StateGeometry state_geometry(const Config& cfg) {
  StateGeometry g;
  g.slots = static_cast<uint32_t>(cfg.max_targets);
  const uint64_t bytes = static_cast<uint64_t>(cfg.timeline_points()) * kTimelineBytesPerPoint;
  // Whole pages per ring (8 chunks), so a ring is released page by page.
  constexpr uint64_t kPerPage = kPage / tlc::kChunkBytes;
  const uint64_t chunks = (bytes + tlc::kChunkBytes - 1) / tlc::kChunkBytes;
  g.chunks_per_slot = static_cast<uint32_t>(std::max<uint64_t>(kPerPage, (chunks + kPerPage - 1) / kPerPage * kPerPage));
  return g;
}

namespace {
std::size_t table_bytes(const StateGeometry& g) { return round_page(sizeof(SlotHeader) * g.slots); }
std::size_t ring_bytes(const StateGeometry& g) { return static_cast<std::size_t>(g.chunks_per_slot) * tlc::kChunkBytes; }
}  // namespace

uint64_t state_bytes(const StateGeometry& g) {
  return kPage + table_bytes(g) + static_cast<uint64_t>(g.slots) * ring_bytes(g);
}

SlotHeader* StateStore::slot_header(uint32_t i) const {
  return reinterpret_cast<SlotHeader*>(base_ + kPage) + i;
}

std::span<tlc::Chunk> StateStore::ring(uint32_t i) const {
  auto* first = reinterpret_cast<tlc::Chunk*>(base_ + kPage + table_bytes(g_) + i * ring_bytes(g_));
  return {first, g_.chunks_per_slot};
}

std::unique_ptr<StateStore> StateStore::open(const std::string& dir, const StateGeometry& g) {
  std::unique_ptr<StateStore> s(new StateStore(g));
  const std::size_t len = state_bytes(g);
  if (dir.empty()) {
    s->map_memory("");
    return s;
  }
  const std::string path = dir + "/timelines.state";
  auto fail = [&](const std::string& what) {
    const std::string why = path + ": " + what + ": " + std::strerror(errno);
    spdlog::error("state file unusable, timelines kept in memory only (a restart loses them): {}", why);
    if (s->fd_ >= 0) ::close(s->fd_);
    s->fd_ = -1;
    s->map_memory(why);
    return std::move(s);
  };
  s->fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (s->fd_ < 0) return fail("open");
  struct stat st {};
  if (fstat(s->fd_, &st) != 0) return fail("stat");
  bool fresh = static_cast<std::size_t>(st.st_size) != len;
  if (fresh && st.st_size != 0) {
    spdlog::info("state file {}: another size (config changed): starting afresh", path);
    ++s->stats_.dropped_files;
    if (ftruncate(s->fd_, 0) != 0) return fail("truncate");
  }
  // Every block allocated now: a full disk is found here, never as a
  // SIGBUS when a mapped page is first written.
  if (int err = posix_fallocate(s->fd_, 0, static_cast<off_t>(len)); err != 0) {
    errno = err;
    return fail("allocate " + std::to_string(len) + " bytes");
  }
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd_, 0);
  if (p == MAP_FAILED) return fail("mmap");
  s->base_ = static_cast<uint8_t*>(p);
  s->len_ = len;
  s->stats_.persistent = true;
  s->load();
  return s;
}

void StateStore::map_memory(const std::string& why_not) {
  len_ = state_bytes(g_);
  void* p = mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  base_ = p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
  if (!base_) {
    spdlog::critical("cannot map {} bytes for timelines: {}", len_, std::strerror(errno));
    len_ = 0;
  }
  stats_.persistent = false;
  stats_.why_not = why_not;
  free_.clear();
  for (uint32_t i = base_ ? g_.slots : 0; i-- > 0;) free_.push_back(i);
}

// Reads what a previous run left: the header must be ours, of this boot and
// this geometry; then every slot header is checked alone.
void StateStore::load() {
  auto* h = reinterpret_cast<FileHeader*>(base_);
  const std::string boot = boot_id();
  FileHeader want{};
  std::memcpy(want.magic, kMagic, sizeof kMagic);
  want.version = kVersion;
  want.series = kSeriesCount;
  want.chunk_bytes = tlc::kChunkBytes;
  want.chunks_per_slot = g_.chunks_per_slot;
  want.slots = g_.slots;
  std::strncpy(want.boot_id, boot.c_str(), sizeof want.boot_id - 1);
  want.crc = crc_of(&want, offsetof(FileHeader, crc));
  const bool ours = std::memcmp(h, &want, sizeof want) == 0;
  if (!ours) {
    const bool empty = std::all_of(base_, base_ + sizeof(FileHeader), [](uint8_t b) { return b == 0; });
    if (!empty) {
      ++stats_.dropped_files;
      spdlog::info("state file: {}: starting afresh",
                   std::memcmp(h->magic, kMagic, sizeof kMagic) != 0 || h->crc != crc_of(h, offsetof(FileHeader, crc))
                       ? "damaged or foreign header"
                       : "written in another boot or for another layout");
    }
    std::memset(base_, 0, kPage + table_bytes(g_));
    std::memcpy(h, &want, sizeof want);
  }
  free_.clear();
  for (uint32_t i = g_.slots; i-- > 0;) {
    SlotHeader* sh = slot_header(i);
    if (!ours || !sh->used) {
      if (ours && sh->used == 0 && sh->crc != 0 && sh->crc != crc_of(sh, offsetof(SlotHeader, crc))) ++stats_.dropped_slots;
      free_.push_back(i);
      continue;
    }
    if (sh->crc != crc_of(sh, offsetof(SlotHeader, crc)) || sh->name[sizeof sh->name - 1] != '\0') {
      ++stats_.dropped_slots;
      std::memset(sh, 0, sizeof *sh);
      free_.push_back(i);
      continue;
    }
    next_owner_ = std::max(next_owner_, sh->owner + 1);
    saved_[TargetId{sh->pid, sh->start_time}] = {std::string(sh->name), Slot{i, sh->owner}};
  }
  if (ours) spdlog::info("state file: {} saved timeline(s), {} damaged slot header(s) dropped", saved_.size(),
                         stats_.dropped_slots);
}

StateStore::~StateStore() {
  if (base_) munmap(base_, len_);
  if (fd_ >= 0) ::close(fd_);
}

std::unique_ptr<Timeline> StateStore::claim(const TargetId& id, const std::string& name) {
  if (!base_) return nullptr;
  if (auto it = saved_.find(id); it != saved_.end()) {
    const auto [saved_name, slot] = it->second;
    saved_.erase(it);
    if (saved_name == name) {
      auto t = std::make_unique<Timeline>(ring(slot.index), slot.owner, true, window_seconds_, tail_points_);
      ++stats_.resumed;
      stats_.dropped_chunks += t->dropped_chunks();
      used_[id] = slot;
      return t;
    }
    free_slot(slot.index);  // the same process, now under another entry
  }
  if (free_.empty() && !saved_.empty()) {
    // Saved timelines of processes not seen again give way to live ones.
    auto victim = saved_.begin();
    free_slot(victim->second.second.index);
    saved_.erase(victim);
  }
  if (free_.empty()) return nullptr;
  const uint32_t i = free_.back();
  free_.pop_back();
  SlotHeader* sh = slot_header(i);
  std::memset(sh, 0, sizeof *sh);
  sh->used = 1;
  sh->pid = id.pid;
  sh->start_time = id.start_time;
  sh->owner = next_owner_++;
  std::strncpy(sh->name, name.c_str(), sizeof sh->name - 1);
  sh->crc = crc_of(sh, offsetof(SlotHeader, crc));
  used_[id] = Slot{i, sh->owner};
  return std::make_unique<Timeline>(ring(i), sh->owner, false, window_seconds_, tail_points_);
}

void StateStore::free_slot(uint32_t i) {
  std::memset(slot_header(i), 0, sizeof(SlotHeader));
  // The ring's pages leave our resident set (anonymous ones are zeroed;
  // the file keeps its bytes, which no later owner reads: chunks carry
  // their writer's generation).
  auto r = ring(i);
  madvise(r.data(), r.size_bytes(), MADV_DONTNEED);
  free_.push_back(i);
}

void StateStore::release(const TargetId& id) {
  auto it = used_.find(id);
  if (it == used_.end()) return;
  free_slot(it->second.index);
  used_.erase(it);
}

void StateStore::release_unclaimed() {
  for (const auto& [id, v] : saved_) free_slot(v.second.index);
  saved_.clear();
}

}  // namespace memlens
