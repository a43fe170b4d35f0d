#include "daemon/result.h"

#include <cerrno>

namespace memlens {

const char* errc_name(Errc e) {
  switch (e) {
    case Errc::not_found: return "not_found";
    case Errc::permission: return "permission";
    case Errc::malformed: return "malformed";
    case Errc::unavailable: return "unavailable";
    case Errc::full: return "full";
    case Errc::io: return "io";
    case Errc::invalid: return "invalid";
    case Errc::disabled: return "disabled";
  }
  return "io";
}

Errc errc_from_errno(int err) {
  switch (err) {
    case ENOENT:
    case ESRCH: return Errc::not_found;
    case EACCES:
    case EPERM: return Errc::permission;
    case ENOSPC:
    case E2BIG: return Errc::full;
    case EOPNOTSUPP:
    case ENOSYS: return Errc::unavailable;
    default: return Errc::io;
  }
}

}  // namespace memlens
