#include "activation_cache.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
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
  size_t kept_bytes = 0;
  for (const auto& [mapped, p] : kept_) kept_bytes += blocks_.at(p).resident;
  return {live_bytes_, resident_bytes_, kept_bytes, high_water_, fresh_, reused_};
}

void* ActivationCache::allocate(size_t size) {
  if (size < kMinBlock) return std::aligned_alloc(64, round_up(size == 0 ? 1 : size, 64));
  const size_t length = round_up(size, page_size());
  std::lock_guard<std::mutex> lock(mutex_);
  try {
    const size_t high_water = high_water_;  // restored if the request fails: one that never lived does not move the bound
    live_bytes_ += length;
    high_water_ = std::max(high_water_, live_bytes_);
    if (void* p = reuse(length)) return p;
    make_room(length, nullptr);
    void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      madvise(p, length, MADV_HUGEPAGE);  // fewer faults; without transparent huge pages it changes nothing
      try {
        blocks_.emplace(p, Block{length, length, length});
        fresh_ += length;
        resident_bytes_ += length;
        return p;
      } catch (const std::bad_alloc&) {
        munmap(p, length);
      }
    }
    live_bytes_ -= length;
    high_water_ = high_water;
    return nullptr;
  } catch (const std::bad_alloc&) {  // no memory for the bookkeeping: a failed allocation, as ONNX Runtime expects
    return nullptr;
  }
}

void* ActivationCache::reuse(size_t length) {
  if (kept_.empty()) return nullptr;
  auto kept = kept_.lower_bound(length);  // the smallest block that holds the request, else the largest, grown
  if (kept == kept_.end()) kept = std::prev(kept_.end());
  void* p = kept->second;
  if (kept->first < length) {
    p = grow(p, length);
    if (!p) return nullptr;  // a new block instead, once kept ones are unmapped to make room
  }
  Block& block = blocks_.at(p);
  kept_.erase(kept);
  block.used = length;
  if (length > block.resident) {  // only the pages past what the block held are new
    make_room(length - block.resident, p);
    fresh_ += length - block.resident;
    resident_bytes_ += length - block.resident;
    block.resident = length;
  }
  ++reused_;
  return p;
}

void* ActivationCache::grow(void* p, size_t length) {
  const size_t mapped = blocks_.at(p).mapped;
  void* q = mremap(p, mapped, length, MREMAP_MAYMOVE);
  if (q == MAP_FAILED) return nullptr;
  auto node = blocks_.extract(p);  // re-keyed in place: the node is reused, nothing is allocated
  node.key() = q;
  node.mapped().mapped = length;
  blocks_.insert(std::move(node));
  return q;
}

void ActivationCache::unmap(Kept::iterator kept) {
  void* p = kept->second;
  const Block& block = blocks_.at(p);
  munmap(p, block.mapped);
  resident_bytes_ -= block.resident;
  blocks_.erase(p);
  kept_.erase(kept);
}

void ActivationCache::make_room(size_t wanted, const void* serving) {
  const auto fits = [&] { return resident_bytes_ + wanted <= high_water_ + kAllowance; };
  while (!fits() && !kept_.empty()) unmap(std::prev(kept_.end()));  // the largest first
  for (auto it = blocks_.begin(); !fits() && it != blocks_.end(); ++it)
    if (it->first != serving) give_back_tail(it->first, it->second);
}

void ActivationCache::give_back_tail(void* p, Block& block) {
  if (block.used == 0 || block.resident <= block.used) return;  // kept, or no unused tail
  madvise(static_cast<char*>(p) + block.used, block.resident - block.used, MADV_DONTNEED);
  resident_bytes_ -= block.resident - block.used;
  block.resident = block.used;
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
  Block& block = found->second;
  live_bytes_ -= block.used;
  try {
    kept_.emplace(block.mapped, p);
    block.used = 0;
  } catch (const std::bad_alloc&) {  // no memory to keep it: give it back
    resident_bytes_ -= block.resident;
    munmap(p, block.mapped);
    blocks_.erase(found);
  }
}

void ActivationCache::unmap_kept() {
  std::lock_guard<std::mutex> lock(mutex_);
  while (!kept_.empty()) unmap(kept_.begin());
  for (auto& [p, block] : blocks_) give_back_tail(p, block);  // a block still live (a weight, say) keeps only its request
}

}  // namespace glsnet
