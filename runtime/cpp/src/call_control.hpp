// Per-call controls of a segment call: a cancel token (glsnet_cancel, from any thread) and a deadline. Every graph run
// checks them first and registers its ONNX Runtime RunOptions with the token, so a cancel terminates the run in
// flight (RunOptions::SetTerminate) in the global branch, the local batches and fusion alike: the call returns
// GLSNET_ERROR_CANCELLED within one patch batch, and its outputs are never committed.
#pragma once
#include <onnxruntime_cxx_api.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "errors.hpp"

namespace glsnet {

class CancelToken {
 public:
  void cancel() {
    std::lock_guard<std::mutex> lock(mutex_);
    cancelled_ = true;
    for (Ort::RunOptions* run : running_) run->SetTerminate();
  }
  bool cancelled() const { return cancelled_.load(); }
  void add(Ort::RunOptions* run) {
    std::lock_guard<std::mutex> lock(mutex_);
    running_.insert(run);
    if (cancelled_) run->SetTerminate();
  }
  void remove(Ort::RunOptions* run) {
    std::lock_guard<std::mutex> lock(mutex_);
    running_.erase(run);
  }

 private:
  std::mutex mutex_;
  std::atomic<bool> cancelled_{false};
  std::set<Ort::RunOptions*> running_;
};

struct CallControl {
  CancelToken* token = nullptr;
  int64_t timeout_ms = 0;  // 0: none
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

  bool stopped() const { return (token && token->cancelled()) || expired(); }
  bool expired() const { return timeout_ms > 0 && std::chrono::steady_clock::now() - started >= std::chrono::milliseconds(timeout_ms); }
  // Error(GLSNET_ERROR_CANCELLED) when cancelled or past the deadline.
  void check() const {
    if (token && token->cancelled()) fail(GLSNET_ERROR_CANCELLED, "segmentation was cancelled (glsnet_cancel); no output was written");
    if (expired())
      fail(GLSNET_ERROR_CANCELLED, "segmentation passed its deadline of " + std::to_string(timeout_ms) + " ms; no output was written");
  }
};

}  // namespace glsnet
