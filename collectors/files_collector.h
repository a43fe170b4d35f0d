// Build artefacts (a front-end bundle): the files of each `files:` entry,
// their sizes and gzip sizes, and the initial bundle (the entry files'
// sum). A files entry is no process: discovery skips it and this collector
// does its work once per tick in collect_global. Every tick it stats the
// files it knows (cheap); it re-expands the patterns every
// global.rescan_interval, and compresses a file again only when its
// (device, inode, size, mtime) changed, at most kGzipBytesPerTick a tick.
// See docs/files.md.
#pragma once

#include <sys/types.h>
#include <zlib.h>

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "collectors/collector.h"
#include "collectors/file_glob.h"
#include "daemon/config.h"

namespace memlens {

// The gzip size of a file: a gzip member (10-byte header with no name, 8-byte
// trailer) of zlib's deflate at level 9, the default level of build tools'
// precompression and the most a server's gzip_comp_level takes.
constexpr int kGzipLevel = 9;
// Bytes read for gzip sizes per tick, over all files targets: a tick starts
// no new file past it (one file is always started, so a large one is not
// starved). A file larger than kMaxGzipFileBytes gets no gzip size.
constexpr uint64_t kGzipBytesPerTick = 2 << 20;
constexpr uint64_t kMaxGzipFileBytes = 8 << 20;

// Why a file has no (current) figure; the `reason` label of
// memlens_files_errors_total. The first six come from the glob's walk.
enum class FileError { permission, loop, vanished, other, truncated, not_utf8, too_large, changed, count_ };
inline constexpr std::array<const char*, static_cast<std::size_t>(FileError::count_)> kFileErrorNames = {
    "permission", "loop", "vanished", "other", "truncated", "not_utf8", "too_large", "changed"};

// Compresses a file's bytes to learn their gzip size, reusing one deflate
// stream. `read` is what it read, whatever the outcome.
class GzipSizer {
 public:
  GzipSizer();
  ~GzipSizer();
  GzipSizer(const GzipSizer&) = delete;
  GzipSizer& operator=(const GzipSizer&) = delete;
  // The gzip size of what `fd` holds from its current offset to its end,
  // which must be exactly `expect` bytes (else the file changed mid-read:
  // Errc::malformed). Errc::io on a read error.
  Result<uint64_t> size_of(int fd, uint64_t expect, uint64_t& read);
  // The gzip size of bytes in memory (the same stream settings).
  uint64_t size_of(std::string_view bytes);

 private:
  uint64_t feed(const unsigned char* p, std::size_t n, bool finish);
  z_stream z_{};
  bool ok_ = false;
};

class FilesCollector : public Collector {
 public:
  std::string_view name() const override { return "files"; }
  Result<void> start(const ConfigPtr& cfg) override;
  // Process targets are not its business.
  Result<void> collect(const Target&, Sample&) override { return {}; }
  void collect_global(GlobalSample& out) override;

 private:
  struct FileState {
    dev_t dev = 0;
    ino_t ino = 0;
    uint64_t size = 0;
    int64_t mtime_ns = 0;
    bool entry = false;                // part of the initial bundle
    std::optional<uint64_t> gzip;      // of the current (dev, ino, size, mtime)
    bool gave_up = false;              // too large or unreadable: not tried again until it changes
  };
  struct Watch {
    std::map<std::string, FileState> files;  // by path
    uint64_t dropped = 0;                    // matches over max_files at the last expansion
    std::array<uint64_t, static_cast<std::size_t>(FileError::count_)> errors{};
    uint64_t read_bytes = 0;                 // read to compute gzip sizes, ever
    double next_glob = 0;                    // monotonic seconds
  };
  void expand(const TargetPolicy& pol, Watch& w);
  void refresh(Watch& w);
  void compress(Watch& w, uint64_t& budget);
  void publish(const TargetPolicy& pol, const Watch& w, GlobalSample& out) const;

  ConfigPtr cfg_;
  std::map<std::string, Watch> watches_;  // by entry name
  GzipSizer gzip_;
};

}  // namespace memlens
