// Where timelines live. One mapping holds a header, a table of slot headers
// and one ring of chunks per slot (daemon/timeline_codec.h), all sized from
// the config up front. With --state.path it is the file
// <dir>/timelines.state, memory-mapped: a restart or upgrade finds the
// timelines of targets still running (same pid, start time and entry) and
// resumes them, their leak slopes and peaks, at once. Everything in it is
// checksummed: a torn or corrupt chunk or slot header is dropped alone (and
// counted), a bad file header or another boot starts afresh. Without a path,
// or when the file cannot be had (a full disk, a read-only directory), the
// same layout lives in anonymous memory and the reason is reported.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "daemon/target.h"
#include "daemon/timeline.h"

namespace memlens {

struct Config;

struct StateGeometry {
  uint32_t slots = 0;            // targets that can have a timeline at once
  uint32_t chunks_per_slot = 0;  // each tlc::kChunkBytes
  bool operator==(const StateGeometry&) const = default;
};
StateGeometry state_geometry(const Config& cfg);
// Bytes a geometry maps (header, slot table, rings).
uint64_t state_bytes(const StateGeometry& g);

class StateStore {
 public:
  struct Stats {
    bool persistent = false;   // backed by the state file
    std::string why_not;       // when it is not (and a path was given)
    uint64_t resumed = 0;      // timelines picked up from the file
    uint64_t dropped_chunks = 0, dropped_slots = 0, dropped_files = 0;
  };
  // `dir` empty: memory only. Never fails: the worst case is memory only.
  static std::unique_ptr<StateStore> open(const std::string& dir, const StateGeometry& g);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  // The timeline of target `id` (entry `name`): its saved one when the file
  // holds it, else a new one. Null when every slot is in use.
  std::unique_ptr<Timeline> claim(const TargetId& id, const std::string& name);
  void release(const TargetId& id);
  // Frees saved timelines that no running target claimed (after a scan).
  void release_unclaimed();
  const Stats& stats() const { return stats_; }
  const StateGeometry& geometry() const { return g_; }
  // How far back timelines claimed from now on must reach, and how many
  // newest points they keep decoded (see Timeline).
  void set_window(double seconds, std::size_t tail_points) {
    window_seconds_ = seconds;
    tail_points_ = tail_points;
  }

 private:
  struct Slot {
    uint32_t index;
    uint64_t owner;
  };
  StateStore(StateGeometry g) : g_(g) {}
  void map_memory(const std::string& why_not);
  void load();
  void free_slot(uint32_t index);
  struct SlotHeader* slot_header(uint32_t i) const;
  std::span<tlc::Chunk> ring(uint32_t i) const;

  StateGeometry g_;
  double window_seconds_ = 0;
  std::size_t tail_points_ = 0;
  uint8_t* base_ = nullptr;
  std::size_t len_ = 0;
  int fd_ = -1;
  uint64_t next_owner_ = 1;
  std::map<TargetId, Slot> used_;                           // claimed this run
  std::map<TargetId, std::pair<std::string, Slot>> saved_;  // from the file, not yet claimed
  std::vector<uint32_t> free_;
  Stats stats_;
};

}  // namespace memlens
