#include "collectors/files_collector.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <nlohmann/json.hpp>
#include <set>

#include "daemon/clock.h"
#include "daemon/fd.h"

namespace memlens {

namespace {

struct FilesMetrics {
  MetricDesc file_bytes = metric("file_size", "bytes", MetricKind::gauge,
                                 "Size of a file a files target matched (its glob patterns), by path.");
  MetricDesc file_gzip = metric("file_gzip_size", "bytes", MetricKind::gauge,
                                "Size of a matched file gzipped (zlib deflate, level 9, a gzip member without a "
                                "name), computed again only when the file changes; absent while pending.");
  MetricDesc bundle = metric("bundle", "bytes", MetricKind::gauge,
                             "Sum of the sizes of a files target's entry files (the initial bundle; every matched "
                             "file when no entry is set), by encoding: identity (as on disk, the figure the bundle "
                             "budget is held against) or gzip (once every entry file's gzip size is known). Absent "
                             "when no file is in the bundle.");
  MetricDesc bundle_files = metric("bundle_files", "", MetricKind::gauge,
                                   "Files in a files target's initial bundle (the entry files matched).");
  MetricDesc matched = metric("files_matched", "", MetricKind::gauge,
                              "Files a files target watches: its patterns' matches at the last expansion that are "
                              "still there.");
  MetricDesc dropped = metric("files_dropped", "", MetricKind::gauge,
                              "Matches of a files target's patterns left out at the last expansion: over "
                              "files.max_files.");
  MetricDesc pending = metric("files_gzip_pending", "", MetricKind::gauge,
                              "Matched files whose gzip size is not yet known (new or changed, waiting for the "
                              "bytes a tick may read).");
  MetricDesc errors = metric("files_errors", "", MetricKind::counter,
                             "Paths of a files target not measured, by reason: permission, loop (a symlink loop), "
                             "vanished (gone between listing and reading), other, truncated (a pattern's walk cut "
                             "at its bound), not_utf8 (a path no label value can carry), too_large (no gzip size "
                             "for a file over 8 MiB), changed (rewritten while being read).");
  MetricDesc read = metric("files_read", "bytes", MetricKind::counter,
                           "Bytes read from a files target's files to compute gzip sizes.");
};

const FilesMetrics& fm() {
  static const FilesMetrics m;
  return m;
}

int64_t mtime_ns(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

void add_error(std::array<uint64_t, static_cast<std::size_t>(FileError::count_)>& errors, FileError e,
               uint64_t n = 1) {
  errors[static_cast<std::size_t>(e)] += n;
}

FileError error_of(int err) {
  if (err == EACCES || err == EPERM) return FileError::permission;
  if (err == ELOOP) return FileError::loop;
  if (err == ENOENT) return FileError::vanished;
  return FileError::other;
}

}  // namespace

// ---- gzip sizes ---------------------------------------------------------

GzipSizer::GzipSizer() {
  // windowBits 15 + 16: a gzip member; memLevel 8 and the default strategy
  // are zlib's (and gzip's) defaults.
  ok_ = deflateInit2(&z_, kGzipLevel, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK;
}

GzipSizer::~GzipSizer() {
  if (ok_) deflateEnd(&z_);
}

uint64_t GzipSizer::feed(const unsigned char* p, std::size_t n, bool finish) {
  unsigned char out[64 << 10];
  uint64_t produced = 0;
  z_.next_in = const_cast<unsigned char*>(p);
  z_.avail_in = static_cast<uInt>(n);
  int rc = Z_OK;
  do {
    z_.next_out = out;
    z_.avail_out = sizeof out;
    rc = deflate(&z_, finish ? Z_FINISH : Z_NO_FLUSH);
    produced += sizeof out - z_.avail_out;
  } while (z_.avail_out == 0 || (finish && rc == Z_OK));
  return produced;
}

uint64_t GzipSizer::size_of(std::string_view bytes) {
  if (!ok_) return 0;
  deflateReset(&z_);
  uint64_t total = 0;
  constexpr std::size_t kChunk = 1 << 20;  // avail_in is 32 bits
  std::size_t off = 0;
  do {
    const std::size_t n = std::min(kChunk, bytes.size() - off);
    total += feed(reinterpret_cast<const unsigned char*>(bytes.data()) + off, n, off + n == bytes.size());
    off += n;
  } while (off < bytes.size());
  return total;
}

Result<uint64_t> GzipSizer::size_of(int fd, uint64_t expect, uint64_t& read) {
  if (!ok_) return make_error(Errc::unavailable, "zlib: deflateInit2 failed");
  deflateReset(&z_);
  unsigned char buf[64 << 10];
  uint64_t total = 0, got = 0;
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(errc_from_errno(errno), "read");
    read += static_cast<uint64_t>(n);
    got += static_cast<uint64_t>(n);
    // Grown past what stat said: it is being rewritten.
    if (got > expect) return make_error(Errc::malformed, "file grew while read");
    total += feed(buf, static_cast<std::size_t>(n), n == 0);
    if (n == 0) break;
  }
  if (got != expect) return make_error(Errc::malformed, "file shrank while read");
  return total;
}

// ---- the collector -------------------------------------------------------

Result<void> FilesCollector::start(const ConfigPtr& cfg) {
  cfg_ = cfg;
  std::set<std::string> names;
  for (const auto& p : cfg_->targets)
    if (p.files) names.insert(p.name);
  for (auto it = watches_.begin(); it != watches_.end();)
    it = names.count(it->first) ? std::next(it) : watches_.erase(it);
  // Patterns may have changed: expand at the next tick. Known gzip sizes
  // stay (a file that did not change is not read again).
  for (auto& [name, w] : watches_) w.next_glob = 0;
  return {};
}

void FilesCollector::collect_global(GlobalSample& out) {
  if (!cfg_) return;
  const double now = mono_now();
  const double rescan = std::chrono::duration<double>(cfg_->rescan_interval).count();
  uint64_t budget = kGzipBytesPerTick;
  for (const auto& pol : cfg_->targets) {
    if (!pol.files) continue;
    Watch& w = watches_[pol.name];
    if (now >= w.next_glob) {
      expand(pol, w);
      w.next_glob = now + rescan;
    }
    refresh(w);
    compress(w, budget);
    publish(pol, w, out);
  }
}

// The patterns' matches now: entry patterns first, so the bundle's files
// are the last a max_files cap leaves out.
void FilesCollector::expand(const TargetPolicy& pol, Watch& w) {
  const FilesSpec& spec = *pol.files;
  const auto max = static_cast<std::size_t>(spec.max_files);
  GlobStats gs;
  std::set<std::string> entry;
  for (const auto& p : spec.entry) glob_files(p, max, entry, gs);
  std::set<std::string> all = entry;
  for (const auto& p : spec.paths) glob_files(p, max, all, gs);
  std::map<std::string, FileState> next;
  for (const auto& path : all) {
    auto it = w.files.find(path);
    FileState fs = it == w.files.end() ? FileState{} : it->second;
    fs.entry = spec.entry.empty() || entry.count(path) > 0;
    next.emplace(path, fs);
  }
  w.files = std::move(next);
  w.dropped = gs.dropped;
  add_error(w.errors, FileError::permission, gs.permission);
  add_error(w.errors, FileError::loop, gs.loop);
  add_error(w.errors, FileError::vanished, gs.vanished);
  add_error(w.errors, FileError::other, gs.other);
  add_error(w.errors, FileError::truncated, gs.truncated);
  add_error(w.errors, FileError::not_utf8, gs.not_utf8);
}

// One stat per file: a file deleted since goes (its series with it); a
// changed one needs its gzip size again.
void FilesCollector::refresh(Watch& w) {
  for (auto it = w.files.begin(); it != w.files.end();) {
    struct stat st {};
    const bool found = ::stat(it->first.c_str(), &st) == 0;
    if (!found || !S_ISREG(st.st_mode)) {
      // Deleted or replaced (a build cleaning its output) is no error.
      if (!found && errno != ENOENT && errno != ENOTDIR) add_error(w.errors, error_of(errno));
      it = w.files.erase(it);
      continue;
    }
    FileState& fs = it->second;
    const auto size = static_cast<uint64_t>(st.st_size);
    if (fs.dev != st.st_dev || fs.ino != st.st_ino || fs.size != size || fs.mtime_ns != mtime_ns(st)) {
      fs.dev = st.st_dev;
      fs.ino = st.st_ino;
      fs.size = size;
      fs.mtime_ns = mtime_ns(st);
      fs.gzip.reset();
      fs.gave_up = false;
    }
    ++it;
  }
}

// Gzip sizes of new and changed files, while the tick's budget lasts.
void FilesCollector::compress(Watch& w, uint64_t& budget) {
  for (auto& [path, fs] : w.files) {
    if (fs.gzip || fs.gave_up) continue;
    if (fs.size > kMaxGzipFileBytes) {
      fs.gave_up = true;
      add_error(w.errors, FileError::too_large);
      continue;
    }
    if (budget == 0) return;
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (!fd.valid()) {
      const int err = errno;
      add_error(w.errors, error_of(err));
      fs.gave_up = err != ENOENT;  // gone: the next stat drops it; refused: not again until it changes
      continue;
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_ino != fs.ino || st.st_dev != fs.dev ||
        static_cast<uint64_t>(st.st_size) != fs.size || mtime_ns(st) != fs.mtime_ns) {
      add_error(w.errors, FileError::changed);  // replaced since this tick's stat: next tick
      continue;
    }
    uint64_t read = 0;
    auto gz = gzip_.size_of(fd.get(), fs.size, read);
    w.read_bytes += read;
    budget -= std::min(budget, std::max<uint64_t>(read, 1));
    struct stat after {};
    if (gz && ::fstat(fd.get(), &after) == 0 && mtime_ns(after) == fs.mtime_ns &&
        static_cast<uint64_t>(after.st_size) == fs.size) {
      fs.gzip = *gz;
    } else if (!gz && gz.error().code != Errc::malformed) {
      add_error(w.errors, FileError::other);
      fs.gave_up = true;
    } else {
      add_error(w.errors, FileError::changed);
    }
  }
}

void FilesCollector::publish(const TargetPolicy& pol, const Watch& w, GlobalSample& out) const {
  const auto& m = fm();
  const Labels target{{"target", pol.name}};
  uint64_t bundle = 0, bundle_gzip = 0, bundle_files = 0, pending = 0;
  bool gzip_known = true;
  nlohmann::json files = nlohmann::json::array();
  for (const auto& [path, fs] : w.files) {
    out.gauge(m.file_bytes, static_cast<double>(fs.size), {{"target", pol.name}, {"file", path}});
    if (fs.gzip) out.gauge(m.file_gzip, static_cast<double>(*fs.gzip), {{"target", pol.name}, {"file", path}});
    else if (!fs.gave_up) ++pending;
    files.push_back({{"path", path}, {"bytes", fs.size}, {"entry", fs.entry}});
    if (fs.gzip) files.back()["gzip_bytes"] = *fs.gzip;
    if (!fs.entry) continue;
    ++bundle_files;
    bundle += fs.size;
    if (fs.gzip) bundle_gzip += *fs.gzip;
    else gzip_known = false;
  }
  nlohmann::json doc = {{"target", pol.name}, {"files", std::move(files)}, {"dropped", w.dropped},
                        {"bundle", {{"files", bundle_files}}}};
  if (bundle_files > 0) {
    out.gauge(m.bundle, static_cast<double>(bundle), {{"target", pol.name}, {"encoding", "identity"}});
    doc["bundle"]["bytes"] = bundle;
    if (gzip_known) {
      out.gauge(m.bundle, static_cast<double>(bundle_gzip), {{"target", pol.name}, {"encoding", "gzip"}});
      doc["bundle"]["gzip_bytes"] = bundle_gzip;
    }
  }
  out.gauge(m.bundle_files, static_cast<double>(bundle_files), target);
  out.gauge(m.matched, static_cast<double>(w.files.size()), target);
  out.gauge(m.dropped, static_cast<double>(w.dropped), target);
  out.gauge(m.pending, static_cast<double>(pending), target);
  for (std::size_t i = 0; i < kFileErrorNames.size(); ++i)
    out.counter(m.errors, static_cast<double>(w.errors[i]), {{"target", pol.name}, {"reason", kFileErrorNames[i]}});
  out.counter(m.read, static_cast<double>(w.read_bytes), target);
  out.document("/api/v1/targets/" + pol.name + "/files",
               doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

}  // namespace memlens
