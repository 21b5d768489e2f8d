// The runtime's one exception type inside the library; the C API turns it into a status and a message.
#pragma once
#include <stdexcept>
#include <string>

#include "glsnet/glsnet.h"

namespace glsnet {

struct Error : std::runtime_error {
  glsnet_status status;
  Error(glsnet_status s, const std::string& message) : std::runtime_error(message), status(s) {}
};

[[noreturn]] inline void fail(glsnet_status status, const std::string& message) { throw Error(status, message); }

}  // namespace glsnet
