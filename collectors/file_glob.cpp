#include "collectors/file_glob.h"

#include <dirent.h>
#include <fnmatch.h>
#include <sys/stat.h>

#include <cerrno>
#include <memory>
#include <vector>

#include "daemon/http_util.h"

namespace memlens {

bool glob_component_match(std::string_view pattern, std::string_view name) {
  const std::string p(pattern), n(name);
  return ::fnmatch(p.c_str(), n.c_str(), FNM_PERIOD) == 0;
}

namespace {

bool has_magic(std::string_view c) { return c.find_first_of("*?[") != std::string_view::npos; }

class Walker {
 public:
  Walker(const std::string& pattern, std::size_t max, std::set<std::string>& out, GlobStats& stats)
      : max_(max), out_(out), stats_(stats) {
    std::size_t i = 1;
    while (i <= pattern.size()) {
      std::size_t j = pattern.find('/', i);
      if (j == std::string::npos) j = pattern.size();
      if (j > i) comps_.emplace_back(pattern, i, j - i);
      i = j + 1;
    }
  }

  void run() {
    if (!comps_.empty()) walk("", 0, 0);
  }

 private:
  void count(int err) {
    if (err == ENOENT || err == ENOTDIR) return;  // no such path: no match, not an error
    if (err == EACCES || err == EPERM) ++stats_.permission;
    else if (err == ELOOP) ++stats_.loop;
    else ++stats_.other;
  }

  // A candidate for the last component: a regular file, through symlinks.
  void candidate(const std::string& path, bool from_readdir) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      // Listed a moment ago but gone (or a dangling link): it vanished.
      if (from_readdir && errno == ENOENT) ++stats_.vanished;
      else count(errno);
      return;
    }
    if (!S_ISREG(st.st_mode)) return;
    if (!valid_utf8(path)) {
      ++stats_.not_utf8;
      return;
    }
    if (out_.count(path)) return;
    if (out_.size() >= max_) {
      ++stats_.dropped;
      return;
    }
    out_.insert(path);
  }

  // Reads a directory's entries (names only), within the walk's bound.
  bool list(const std::string& dir, std::vector<std::pair<std::string, unsigned char>>& names) {
    std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.empty() ? "/" : dir.c_str()), ::closedir);
    if (!d) {
      count(errno);
      return false;
    }
    while (dirent* e = ::readdir(d.get())) {
      const std::string_view n = e->d_name;
      if (n == "." || n == "..") continue;
      if (++entries_ > kMaxGlobEntries) {
        ++stats_.truncated;
        return false;
      }
      names.emplace_back(std::string(n), e->d_type);
    }
    return true;
  }

  // `dir` (without its trailing slash; "" is the root) against comps_[i..].
  void walk(const std::string& dir, std::size_t i, int depth) {
    if (entries_ > kMaxGlobEntries) return;
    const std::string& c = comps_[i];
    const bool last = i + 1 == comps_.size();
    if (c == "**") {
      if (last) return;  // names directories, not files (the config refuses it)
      // Zero directories, then every real subdirectory (no symlinks).
      walk(dir, i + 1, depth);
      if (depth >= kMaxGlobDepth) {
        ++stats_.truncated;
        return;
      }
      std::vector<std::pair<std::string, unsigned char>> names;
      if (!list(dir, names)) return;
      for (const auto& [n, type] : names) {
        if (n.front() == '.') continue;  // as `*`: hidden directories are not descended
        const std::string sub = dir + "/" + n;
        bool is_dir = type == DT_DIR;
        if (type == DT_UNKNOWN) {
          struct stat st {};
          is_dir = ::lstat(sub.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
        }
        if (is_dir) walk(sub, i, depth + 1);  // one more level of the `**`
      }
      return;
    }
    if (!has_magic(c)) {
      const std::string path = dir + "/" + c;
      if (last) candidate(path, false);
      else walk(path, i + 1, depth);
      return;
    }
    std::vector<std::pair<std::string, unsigned char>> names;
    if (!list(dir, names)) return;
    for (const auto& [n, type] : names) {
      if (!glob_component_match(c, n)) continue;
      const std::string path = dir + "/" + n;
      if (last) candidate(path, true);
      else walk(path, i + 1, depth);
    }
  }

  std::vector<std::string> comps_;
  std::size_t max_;
  std::set<std::string>& out_;
  GlobStats& stats_;
  uint64_t entries_ = 0;
};

}  // namespace

void glob_files(const std::string& pattern, std::size_t max, std::set<std::string>& out, GlobStats& stats) {
  if (pattern.empty() || pattern.front() != '/') return;
  Walker(pattern, max, out, stats).run();
}

}  // namespace memlens
