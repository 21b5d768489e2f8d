#include "logging.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>

namespace glsnet {
namespace {

// Recursive: a callback may call into glsnet (and log again) on the same thread.
std::recursive_mutex& registry_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

std::map<std::string, const LogTarget*>& registry() {
  static std::map<std::string, const LogTarget*> targets;
  return targets;
}

thread_local const LogTarget* thread_target = nullptr;

// ORT's default sink line (onnxruntime/core/common/logging/sinks/ostream_sink.cc):
// "<date time> [<severity letter>:<category>:<logger id>, <location>] <message>".
void write_like_ort(OrtLoggingLevel severity, const char* category, const char* logid, const char* code_location, const char* message) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const auto nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count() % 1000000000;
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char stamp[64];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &utc);
  const char letters[] = "VIWEF";
  const char letter = severity >= ORT_LOGGING_LEVEL_VERBOSE && severity <= ORT_LOGGING_LEVEL_FATAL ? letters[severity] : '?';
  std::fprintf(stderr, "%s.%09lld [%c:%s:%s, %s] %s\n", stamp, static_cast<long long>(nanos), letter, category ? category : "",
               logid ? logid : "", code_location ? code_location : "", message ? message : "");
}

}  // namespace

LogRegistration::LogRegistration(const LogTarget& target) : target_(target) {
  static std::atomic<unsigned long long> next{0};
  id_ = "glsnet-handle-" + std::to_string(++next);
  std::lock_guard<std::recursive_mutex> lock(registry_mutex());
  registry()[id_] = &target_;
}

LogRegistration::~LogRegistration() {
  std::lock_guard<std::recursive_mutex> lock(registry_mutex());
  registry().erase(id_);
}

void ort_logging_function(void*, OrtLoggingLevel severity, const char* category, const char* logid, const char* code_location,
                          const char* message) {
  {
    std::lock_guard<std::recursive_mutex> lock(registry_mutex());
    const auto it = logid ? registry().find(logid) : registry().end();
    if (it != registry().end() && it->second->callback) {
      if (severity >= it->second->level) it->second->callback(it->second->user_data, severity, message ? message : "");
      return;
    }
  }
  write_like_ort(severity, category, logid, code_location, message);
}

LogScope::LogScope(const LogTarget* target) : previous_(thread_target) { thread_target = target; }

LogScope::~LogScope() { thread_target = previous_; }

const LogTarget* current_log_target() { return thread_target; }

void log_to(const LogTarget* target, int level, const std::string& message) {
  if (!target || !target->callback || level < target->level) return;
  std::lock_guard<std::recursive_mutex> lock(registry_mutex());  // callbacks never run concurrently with a handle's close
  target->callback(target->user_data, level, message.c_str());
}

}  // namespace glsnet
