#include "daemon/pprof.h"

#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

namespace memlens::pprof {

namespace {

// ---- protobuf wire format: varints and length-delimited fields ----
void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void key(std::string& out, uint32_t field, uint32_t wire) { varint(out, (uint64_t{field} << 3) | wire); }
void field_varint(std::string& out, uint32_t field, uint64_t v) {
  if (v == 0) return;  // proto3: zero is the default, not written
  key(out, field, 0);
  varint(out, v);
}
void field_bytes(std::string& out, uint32_t field, std::string_view b) {
  key(out, field, 2);
  varint(out, b.size());
  out.append(b);
}
template <typename T>
void field_packed(std::string& out, uint32_t field, const std::vector<T>& v) {
  if (v.empty()) return;
  std::string p;
  for (T x : v) varint(p, static_cast<uint64_t>(x));  // int64 as two's complement, as protobuf does
  field_bytes(out, field, p);
}

bool rust_hash_suffix(std::string_view s) {
  // "::h" followed by 16 hex digits, Rust's legacy symbol hash.
  if (s.size() < 19) return false;
  std::string_view t = s.substr(s.size() - 19);
  if (t.substr(0, 3) != "::h") return false;
  for (char c : t.substr(3))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace

std::string demangle(std::string_view symbol) {
  if (symbol.size() < 3 || symbol.substr(0, 2) != "_Z") return std::string(symbol);
  std::string name(symbol);
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> d(abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status),
                                                 &std::free);
  if (status != 0 || !d) return name;
  std::string out(d.get());
  if (rust_hash_suffix(out)) out.resize(out.size() - 19);
  return out;
}

Builder::Builder(std::vector<std::pair<std::string, std::string>> sample_types, std::string default_type,
                 std::pair<std::string, std::string> period_type, int64_t period)
    : period_(period) {
  // One statement each: the string table's order is the order of the calls.
  for (auto& [t, u] : sample_types) {
    const int64_t type = str(t);
    types_.emplace_back(type, str(u));
  }
  default_type_ = str(default_type);
  const int64_t ptype = str(period_type.first);
  period_type_ = {ptype, str(period_type.second)};
}

int64_t Builder::str(const std::string& s) {
  if (s.empty()) return 0;
  if (auto it = string_ids_.find(s); it != string_ids_.end()) return it->second;
  strings_.push_back(s);
  const int64_t id = static_cast<int64_t>(strings_.size() - 1);
  string_ids_.emplace(s, id);
  return id;
}

uint64_t Builder::mapping(uint64_t start, uint64_t limit, uint64_t file_offset, const std::string& file,
                          const std::string& build_id) {
  auto k = std::make_pair(start, file);
  if (auto it = mapping_ids_.find(k); it != mapping_ids_.end()) return it->second;
  mappings_.push_back({start, limit, file_offset, str(file), str(build_id)});
  return mapping_ids_[k] = mappings_.size();
}

uint64_t Builder::location(uint64_t address, uint64_t mapping_id, const std::vector<Line>& lines) {
  auto k = std::make_pair(address, mapping_id);
  if (auto it = location_ids_.find(k); it != location_ids_.end()) return it->second;
  Location loc{address, mapping_id, {}};
  for (const Line& l : lines) {
    if (l.function.empty()) continue;
    const auto key = std::make_pair(str(l.function), l.line > 0 ? str(l.file) : int64_t{0});
    auto [it, added] = function_ids_.emplace(key, functions_.size() + 1);
    if (added) functions_.push_back(key);
    loc.lines.emplace_back(it->second, std::max<int64_t>(l.line, 0));
    if (l.line > 0 && mapping_id && mapping_id <= mappings_.size()) mappings_[mapping_id - 1].lines = true;
  }
  locations_.push_back(std::move(loc));
  return location_ids_[k] = locations_.size();
}

void Builder::sample(std::vector<uint64_t> locations, std::vector<int64_t> values) {
  samples_.push_back({std::move(locations), std::move(values)});
}

std::string Builder::encode() const {
  // Field numbers of profile.proto's Profile and its messages.
  std::string out, m;
  for (auto [t, u] : types_) {
    m.clear();
    field_varint(m, 1, static_cast<uint64_t>(t));
    field_varint(m, 2, static_cast<uint64_t>(u));
    field_bytes(out, 1, m);
  }
  for (const auto& s : samples_) {
    m.clear();
    field_packed(m, 1, s.locations);
    field_packed(m, 2, s.values);
    field_bytes(out, 2, m);
  }
  for (std::size_t i = 0; i < mappings_.size(); ++i) {
    const auto& mp = mappings_[i];
    m.clear();
    field_varint(m, 1, i + 1);
    field_varint(m, 2, mp.start);
    field_varint(m, 3, mp.limit);
    field_varint(m, 4, mp.offset);
    field_varint(m, 5, static_cast<uint64_t>(mp.file));
    field_varint(m, 6, static_cast<uint64_t>(mp.build_id));
    field_varint(m, 7, 1);  // has_functions
    if (mp.lines) {
      field_varint(m, 8, 1);  // has_filenames
      field_varint(m, 9, 1);  // has_line_numbers
    }
    field_bytes(out, 3, m);
  }
  for (std::size_t i = 0; i < locations_.size(); ++i) {
    const auto& l = locations_[i];
    m.clear();
    field_varint(m, 1, i + 1);
    field_varint(m, 2, l.mapping);
    field_varint(m, 3, l.address);
    for (const auto& [function, number] : l.lines) {
      std::string line;
      field_varint(line, 1, function);
      if (number > 0) field_varint(line, 2, static_cast<uint64_t>(number));
      field_bytes(m, 4, line);
    }
    field_bytes(out, 4, m);
  }
  for (std::size_t i = 0; i < functions_.size(); ++i) {
    m.clear();
    field_varint(m, 1, i + 1);
    field_varint(m, 2, static_cast<uint64_t>(functions_[i].first));
    field_varint(m, 3, static_cast<uint64_t>(functions_[i].first));
    if (functions_[i].second) field_varint(m, 4, static_cast<uint64_t>(functions_[i].second));
    field_bytes(out, 5, m);
  }
  for (const auto& s : strings_) field_bytes(out, 6, s);
  field_varint(out, 9, static_cast<uint64_t>(time_nanos_));
  m.clear();
  field_varint(m, 1, static_cast<uint64_t>(period_type_.first));
  field_varint(m, 2, static_cast<uint64_t>(period_type_.second));
  field_bytes(out, 11, m);
  field_varint(out, 12, static_cast<uint64_t>(period_));
  field_varint(out, 14, static_cast<uint64_t>(default_type_));
  return out;
}

}  // namespace memlens::pprof
