// Result<T>: expected failures (a vanished pid, a full map, a missing symbol)
// travel as values; only main() turns one into an exit code.
#pragma once

#include <array>
#include <string>
#include <utility>
#include <variant>

namespace memlens {

// Why an operation failed, coarse enough to be a metric label.
enum class Errc {
  not_found,     // the process or file is gone (ENOENT/ESRCH)
  permission,    // EACCES/EPERM
  malformed,     // the input did not parse
  unavailable,   // a kernel or binary feature is missing
  full,          // a bounded resource (map, table) is full
  io,            // any other system error
  invalid,       // bad argument or configuration
  disabled,      // switched off by the configuration
};

// Every code, in declaration order: the fixed set of `reason` label values.
inline constexpr std::array<Errc, 8> kAllErrc = {Errc::not_found, Errc::permission, Errc::malformed,
                                                 Errc::unavailable, Errc::full, Errc::io,
                                                 Errc::invalid, Errc::disabled};
const char* errc_name(Errc e);
Errc errc_from_errno(int err);

struct Error {
  Errc code = Errc::io;
  std::string message;
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Error err) : v_(std::move(err)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error err) : err_(std::move(err)), ok_(false) {}  // NOLINT
  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return err_; }

 private:
  Error err_;
  bool ok_ = true;
};

inline Error make_error(Errc code, std::string message) {
  return Error{code, std::move(message)};
}

}  // namespace memlens
