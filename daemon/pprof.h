// pprof heap profiles (the profile.proto format that `go tool pprof`,
// Pyroscope and Parca read), encoded by hand: a handful of messages, a few
// dozen lines of varints, no code generator in the build.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace memlens::pprof {

// A name as a human reads it: Itanium C++ (and Rust's legacy mangling, its
// trailing ::h<hash> dropped) demangled; anything else unchanged.
std::string demangle(std::string_view symbol);

class Builder {
 public:
  // sample types as (type, unit), e.g. {"inuse_space", "bytes"}; the last
  // one named `default_type` is what pprof shows first.
  Builder(std::vector<std::pair<std::string, std::string>> sample_types, std::string default_type,
          std::pair<std::string, std::string> period_type, int64_t period);

  // A mapped file; ids start at 1. Same (start, file) gives the same id.
  uint64_t mapping(uint64_t start, uint64_t limit, uint64_t file_offset, const std::string& file,
                   const std::string& build_id);
  // One function at a location: its name, and its source file and line
  // when known (line 0: none).
  struct Line {
    std::string function, file;
    int64_t line = 0;
  };
  // An address in a mapping (0: none) with the functions there, innermost
  // first: those inlined at the address, then the one the code is in (a
  // Line without a function is left out).
  uint64_t location(uint64_t address, uint64_t mapping_id, const std::vector<Line>& lines);
  uint64_t location(uint64_t address, uint64_t mapping_id, const std::string& function,
                    const std::string& file = {}, int64_t line = 0) {
    return location(address, mapping_id, std::vector<Line>{{function, file, line}});
  }
  // Locations leaf first, one value per sample type.
  void sample(std::vector<uint64_t> locations, std::vector<int64_t> values);
  void time_nanos(int64_t t) { time_nanos_ = t; }

  std::string encode() const;  // the serialized Profile (not gzipped)

 private:
  int64_t str(const std::string& s);
  std::vector<std::pair<int64_t, int64_t>> types_;
  int64_t default_type_ = 0;
  std::pair<int64_t, int64_t> period_type_{0, 0};
  int64_t period_ = 0, time_nanos_ = 0;
  std::vector<std::string> strings_{""};
  std::map<std::string, int64_t, std::less<>> string_ids_;
  struct Mapping { uint64_t start, limit, offset; int64_t file, build_id; bool lines = false; };
  std::vector<Mapping> mappings_;
  std::map<std::pair<uint64_t, std::string>, uint64_t> mapping_ids_;
  struct Location { uint64_t address, mapping; std::vector<std::pair<uint64_t, int64_t>> lines; /* function, line */ };
  std::vector<Location> locations_;
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> location_ids_;
  std::vector<std::pair<int64_t, int64_t>> functions_;  // (name, file) string ids; id = index + 1
  std::map<std::pair<int64_t, int64_t>, uint64_t> function_ids_;
  struct Sample { std::vector<uint64_t> locations; std::vector<int64_t> values; };
  std::vector<Sample> samples_;
};

}  // namespace memlens::pprof
