// Where log messages go: ONNX Runtime's (through the process's ORT environment, created with a custom logging function)
// and the runtime's own warnings (libtiff, libpng) reach the callback of the handle they belong to (glsnet_options.
// log_callback); without one, ORT's messages keep going to stderr as ORT's own sink writes them, and the runtime's own
// warnings are dropped, as before.
#pragma once
#include <onnxruntime_cxx_api.h>

#include <string>

#include "glsnet/glsnet.h"

namespace glsnet {

struct LogTarget {
  glsnet_log_callback callback = nullptr;
  void* user_data = nullptr;
  int level = GLSNET_LOG_WARNING;  // the least severe level delivered
};

// A handle's place in the process-wide routing table: ONNX Runtime sessions created with SessionOptions::SetLogId(id())
// log to `target`. Unregistered on destruction, after any callback in progress has returned.
class LogRegistration {
 public:
  explicit LogRegistration(const LogTarget& target);
  ~LogRegistration();
  LogRegistration(const LogRegistration&) = delete;
  LogRegistration& operator=(const LogRegistration&) = delete;
  const std::string& id() const { return id_; }
  const LogTarget& target() const { return target_; }

 private:
  std::string id_;
  LogTarget target_;
};

// The logging function of the process's ONNX Runtime environment (Ort::Env with a custom logger).
void ort_logging_function(void* param, OrtLoggingLevel severity, const char* category, const char* logid, const char* code_location,
                          const char* message);

// The runtime's own messages during a call on this thread go to `target` (null: dropped); a scope per C API call.
class LogScope {
 public:
  explicit LogScope(const LogTarget* target);
  ~LogScope();

 private:
  const LogTarget* previous_;
};

// The target of the call this thread works for (null when none), for objects that log later from other threads.
const LogTarget* current_log_target();

// Delivers one message of the runtime's own to `target` when its level is enabled (null target: dropped).
void log_to(const LogTarget* target, int level, const std::string& message);

}  // namespace glsnet
