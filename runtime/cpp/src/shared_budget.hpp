// One handle's memory budget, shared by the segment calls running on it at the same time: each call reserves what its
// plan needs beyond what the handle holds once (the process base and the loaded weights) and waits while concurrent
// calls hold the rest, so N concurrent calls stay within one --max-memory instead of N. A waiting call still honours its
// cancel token and deadline.
#pragma once
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "call_control.hpp"

namespace glsnet {

class SharedBudget {
 public:
  // `capacity`: bytes the calls may hold together (0: no budget, reservations never wait).
  explicit SharedBudget(int64_t capacity = 0) : capacity_(capacity) {}

  // Holds `bytes` of the budget until destroyed.
  class Reservation {
   public:
    Reservation() = default;
    Reservation(SharedBudget* budget, int64_t bytes) : budget_(budget), bytes_(bytes) {}
    Reservation(Reservation&& other) noexcept : budget_(other.budget_), bytes_(other.bytes_) { other.budget_ = nullptr; }
    Reservation& operator=(Reservation&&) = delete;
    ~Reservation() {
      if (budget_) budget_->release(bytes_);
    }

   private:
    SharedBudget* budget_ = nullptr;
    int64_t bytes_ = 0;
  };

  // Waits until `bytes` fit beside what the other calls hold (at most the whole capacity: a plan never needs more),
  // checking `call`'s cancel token and deadline while it waits (Error(GLSNET_ERROR_CANCELLED)).
  Reservation reserve(int64_t bytes, const CallControl* call) {
    if (capacity_ <= 0) return {};
    bytes = std::min(std::max<int64_t>(bytes, 0), capacity_);
    std::unique_lock<std::mutex> lock(mutex_);
    while (held_ + bytes > capacity_) {
      if (call) {
        lock.unlock();
        call->check();
        lock.lock();
      }
      released_.wait_for(lock, std::chrono::milliseconds(20));
    }
    held_ += bytes;
    return Reservation(this, bytes);
  }

  int64_t capacity() const { return capacity_; }
  int64_t held() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return held_;
  }

 private:
  void release(int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      held_ -= bytes;
    }
    released_.notify_all();
  }

  int64_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable released_;
  int64_t held_ = 0;
};

}  // namespace glsnet
