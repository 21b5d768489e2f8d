#include "activation_cache.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <iterator>
#include <new>

namespace glsnet {

namespace {

size_t round_up(size_t n, size_t unit) { return (n + unit - 1) / unit * unit; }

// Blocks are mapped in whole pages of the system's size (4 KiB on x86, up to 64 KiB on ARM), so that their tails can be
// given back page by page. Whole 2 MiB huge pages were tried: peak RSS rose by the rounding.
size_t page_size() {
  static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

}  // namespace

ActivationCache::~ActivationCache() {
  for (const auto& [p, block] : blocks_) munmap(p, block.mapped);
}

ActivationCache::Counts ActivationCache::counts() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {live_bytes_, kept_bytes_, high_water_, fresh_, reused_};
}

void* ActivationCache::allocate(size_t size) {
  if (size < kMinBlock) return std::aligned_alloc(64, round_up(size == 0 ? 1 : size, 64));
  const size_t length = round_up(size, page_size());
  std::lock_guard<std::mutex> lock(mutex_);
  try {
    auto kept = kept_.lower_bound(length);
    if (kept != kept_.end() && kept->first <= 2 * length) {  // its resident pages need no faulting and zeroing
      void* p = kept->second;
      Block& block = blocks_.at(p);
      kept_.erase(kept);
      kept_bytes_ -= block.resident;
      if (length < block.resident) {  // a smaller request: the tail's pages go back to the system
        madvise(static_cast<char*>(p) + length, block.resident - length, MADV_DONTNEED);
        block.resident = length;
      }
      unmap_kept_until_fits(length);
      if (length > block.resident) {
        fresh_ += length - block.resident;
        block.resident = length;
      }
      ++reused_;
      return hand_out(p, block);
    }
    unmap_kept_until_fits(length);
    void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    madvise(p, length, MADV_HUGEPAGE);  // fewer faults; without transparent huge pages it changes nothing
    try {
      Block& block = blocks_.emplace(p, Block{length, length}).first->second;
      fresh_ += length;
      return hand_out(p, block);
    } catch (const std::bad_alloc&) {
      munmap(p, length);
      return nullptr;
    }
  } catch (const std::bad_alloc&) {  // no memory for the bookkeeping: a failed allocation, as ONNX Runtime expects
    return nullptr;
  }
}

void* ActivationCache::hand_out(void* p, const Block& block) {
  live_bytes_ += block.resident;
  if (live_bytes_ > high_water_) high_water_ = live_bytes_;
  return p;
}

void ActivationCache::unmap(Kept::iterator kept) {
  void* p = kept->second;
  const Block& block = blocks_.at(p);
  munmap(p, block.mapped);
  kept_bytes_ -= block.resident;
  blocks_.erase(p);
  kept_.erase(kept);
}

void ActivationCache::unmap_kept_until_fits(size_t wanted) {
  while (!kept_.empty() && live_bytes_ + kept_bytes_ + wanted > high_water_) unmap(std::prev(kept_.end()));  // the largest first
}

void ActivationCache::release(void* p) {
  if (!p) return;
  std::unique_lock<std::mutex> lock(mutex_);
  auto found = blocks_.find(p);
  if (found == blocks_.end()) {
    lock.unlock();
    std::free(p);
    return;
  }
  const Block& block = found->second;
  live_bytes_ -= block.resident;
  try {
    kept_.emplace(block.mapped, p);
    kept_bytes_ += block.resident;
  } catch (const std::bad_alloc&) {  // no memory to keep it: give it back
    munmap(p, block.mapped);
    blocks_.erase(found);
  }
}

void ActivationCache::unmap_kept() {
  std::lock_guard<std::mutex> lock(mutex_);
  while (!kept_.empty()) unmap(kept_.begin());
}

}  // namespace glsnet
