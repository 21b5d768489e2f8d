// Large blocks kept mapped between graph runs, so that the kernel does not zero fresh pages for every run.
//
// With ONNX Runtime's arena off (bounded memory), every graph run mapped its activations afresh and the kernel zeroed
// each new page: glsnet-cpp mapped 6.9 GB per paper-size 2448 x 2448 image, and perf put 8.6% of all its samples in
// clear_page_erms. This cache hands a freed block of 1 MiB or more to the next request: the smallest kept block that
// holds it, or else the largest kept block, grown in place of its mapping (mremap moves its pages, it does not copy
// or zero them), so only the pages past what the block held are new. A block serving a smaller request keeps its
// tail resident while the bound allows: the next, larger run of the same graph needs those pages again.
// The bound: resident bytes (live, their unused tails, kept blocks) never pass the most bytes ever live at once plus
// kAllowance. Before pages are added it unmaps kept blocks, the largest first, then gives back the tails of live
// blocks (MADV_DONTNEED), so the peak stays that of the same requests without keeping anything, within the allowance.
// Smaller requests go to malloc. The ONNX Runtime side (an OrtAllocator registered in the environment) is in
// onnxruntime_pipeline.cpp.
#pragma once
#include <cstddef>
#include <map>
#include <mutex>
#include <unordered_map>

namespace glsnet {

class ActivationCache {
 public:
  static constexpr size_t kMinBlock = size_t{1} << 20;  // smaller requests: malloc
  // How far resident bytes may pass the live high-water mark. Replaying the requests of one paper-size image, this
  // allowance took the new pages from 1.3 to 0.7 GiB and the resident peak up by 2 MiB; 256 MiB gained little more
  // (0.56 GiB) for +198 MiB (docs/cpu-speed.md).
  static constexpr size_t kAllowance = size_t{32} << 20;

  ActivationCache() = default;
  ~ActivationCache();
  ActivationCache(const ActivationCache&) = delete;
  ActivationCache& operator=(const ActivationCache&) = delete;

  // nullptr when the system has no memory left (ONNX Runtime reports that as a failed allocation)
  void* allocate(size_t size);
  void release(void* p);
  // Unmaps every kept block and gives back the unused tails of live ones: called after each image, so that an idle
  // process holds only what is live.
  void unmap_kept();

  struct Counts {
    size_t live_bytes;        // bytes handed out (requests rounded to whole pages)
    size_t resident_bytes;    // pages of every block: live, their unused tails, kept
    size_t kept_bytes;        // resident bytes of the blocks kept for reuse
    size_t high_water_bytes;  // the most live bytes so far: resident never passes it plus kAllowance
    size_t fresh_bytes;       // bytes of new pages so far (each zeroed by the kernel when first touched)
    size_t reused_blocks;     // requests served by a kept block
  };
  Counts counts() const;

 private:
  struct Block {
    size_t mapped;    // length of the mapping
    size_t resident;  // the prefix whose pages are resident; the rest was given back or never touched
    size_t used;      // the request it serves, 0 while kept
  };
  using Kept = std::multimap<size_t, void*>;
  // A kept block for the request (grown if it is smaller; the request already counted as live), or nullptr: none is
  // kept, or the kernel cannot grow one.
  void* reuse(size_t length);
  // Unmaps kept blocks, then gives back live blocks' tails (not `serving`'s), until `wanted` more pages fit the bound.
  void make_room(size_t wanted, const void* serving);
  void give_back_tail(void* p, Block& block);
  void unmap(Kept::iterator kept);
  // nullptr when the kernel cannot grow the mapping
  void* grow(void* p, size_t length);

  mutable std::mutex mutex_;
  std::unordered_map<void*, Block> blocks_;  // every block mapped, handed out or kept
  Kept kept_;                                // freed blocks, by mapped length
  size_t live_bytes_ = 0, resident_bytes_ = 0, high_water_ = 0, fresh_ = 0, reused_ = 0;
};

}  // namespace glsnet
