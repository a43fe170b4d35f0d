#include "collectors/runtime_detect.h"

#include <re2/re2.h>

#include "collectors/elf_symbols.h"

namespace memlens {

const char* runtime_name(Runtime r) {
  switch (r) {
    case Runtime::jvm: return "jvm";
    case Runtime::node: return "node";
    case Runtime::python: return "python";
    case Runtime::none: break;
  }
  return "none";
}

namespace {

// The files mapped into a process (/proc/PID/maps paths), deduplicated.
std::vector<std::string> mapped_files(std::string_view maps) {
  std::vector<std::string> out;
  for (const auto& m : parse_maps(maps)) {
    if (m.path.empty() || m.path[0] != '/') continue;
    std::string_view p = strip_deleted(m.path);
    if (out.empty() || out.back() != p) out.emplace_back(p);
  }
  return out;
}

}  // namespace

std::string_view basename_of(std::string_view p) {
  auto slash = p.rfind('/');
  return slash == std::string_view::npos ? p : p.substr(slash + 1);
}

// A deleted or replaced binary shows up as "/path (deleted)".
std::string_view strip_deleted(std::string_view p) {
  constexpr std::string_view kDeleted = " (deleted)";
  if (p.size() > kDeleted.size() && p.substr(p.size() - kDeleted.size()) == kDeleted)
    p.remove_suffix(kDeleted.size());
  return p;
}

RuntimeInfo detect_runtime(std::string_view exe, std::string_view maps) {
  static const RE2 kLibJvm(R"(libjvm\.so)");
  static const RE2 kLibNode(R"(libnode\.so(\.[0-9]+)*)");
  static const RE2 kLibPython(R"(libpython[23](\.[0-9]+)?d?m?u?\.so(\.[0-9.]+)*)");
  static const RE2 kNodeExe(R"(node(js)?[0-9]*)");
  static const RE2 kPythonExe(R"(python[23]?(\.[0-9]+)?d?m?u?)");

  exe = strip_deleted(exe);
  RuntimeInfo info;
  std::string lib_python;
  for (const std::string& f : mapped_files(maps)) {
    std::string base(basename_of(f));
    if (RE2::FullMatch(base, kLibJvm)) {
      info.runtime = Runtime::jvm;
      info.binaries = {std::string(f)};
      return info;
    }
    if (RE2::FullMatch(base, kLibNode)) {
      info.runtime = Runtime::node;
      info.binaries = {std::string(f)};
      if (!exe.empty()) info.binaries.emplace_back(exe);
      return info;
    }
    if (lib_python.empty() && RE2::FullMatch(base, kLibPython)) lib_python = f;
  }
  std::string exe_base(basename_of(exe));
  if (!lib_python.empty() || RE2::FullMatch(exe_base, kPythonExe)) {
    info.runtime = Runtime::python;
    if (!lib_python.empty()) info.binaries.push_back(lib_python);
    if (!exe.empty()) info.binaries.emplace_back(exe);
    return info;
  }
  if (RE2::FullMatch(exe_base, kNodeExe)) {
    info.runtime = Runtime::node;
    info.binaries = {std::string(exe)};
  }
  return info;
}

Result<RuntimeInfo> detect_runtime(const ProcFs& proc, pid_t pid) {
  auto maps = read_file(proc.path(pid, "maps"), 1 << 24);
  if (!maps) return maps.error();
  auto exe = read_link(proc.path(pid, "exe"));
  // A kernel thread or a zombie has no exe; maps alone still decide.
  return detect_runtime(exe ? std::string_view(*exe) : std::string_view{}, *maps);
}

std::string host_path(const ProcFs& proc, pid_t pid, std::string_view path) {
  std::string p = proc.path(pid, "root");
  p += path;
  return p;
}

}  // namespace memlens
