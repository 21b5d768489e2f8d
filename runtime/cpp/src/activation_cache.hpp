// Large blocks kept mapped between graph runs, so that the kernel does not zero fresh pages for every run.
//
// With ONNX Runtime's arena off (bounded memory), every graph run mapped its activations afresh and the kernel zeroed
// each new page: glsnet-cpp mapped 6.9 GB per paper-size 2448 x 2448 image, and perf put 8.6% of all its samples in
// clear_page_erms. This cache hands a freed block of 1 MiB or more to the next request it can serve (a block from
// the request's size to twice it). Only the pages a request covers stay resident: a block serving a smaller request
// gives its tail back (MADV_DONTNEED), and one serving a larger request than it last held faults in only the
// difference. Resident live plus kept bytes never pass the most ever live at once: before pages are added it unmaps
// kept blocks until the total fits, so the peak stays that of the same requests without keeping anything. Smaller
// requests go to malloc. The ONNX Runtime side (an OrtAllocator registered in the environment) is in
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

  ActivationCache() = default;
  ~ActivationCache();
  ActivationCache(const ActivationCache&) = delete;
  ActivationCache& operator=(const ActivationCache&) = delete;

  // nullptr when the system has no memory left (ONNX Runtime reports that as a failed allocation)
  void* allocate(size_t size);
  void release(void* p);
  // Unmaps every kept block: called after each image, so that an idle process holds only what is live.
  void unmap_kept();

  struct Counts {
    size_t live_bytes;        // resident bytes of the blocks handed out
    size_t kept_bytes;        // resident bytes of the blocks kept for reuse
    size_t high_water_bytes;  // the most live bytes so far: live + kept never pass it
    size_t fresh_bytes;       // bytes of new pages so far (each zeroed by the kernel when first touched)
    size_t reused_blocks;     // requests served by a kept block
  };
  Counts counts() const;

 private:
  struct Block {
    size_t mapped;    // length of the mapping
    size_t resident;  // the prefix the last request covered; the rest was given back
  };
  using Kept = std::multimap<size_t, void*>;
  void unmap_kept_until_fits(size_t wanted);
  void unmap(Kept::iterator kept);
  void* hand_out(void* p, const Block& block);

  mutable std::mutex mutex_;
  std::unordered_map<void*, Block> blocks_;  // every block mapped, handed out or kept
  Kept kept_;                                // freed blocks, by mapped length
  size_t live_bytes_ = 0, kept_bytes_ = 0, high_water_ = 0, fresh_ = 0, reused_ = 0;
};

}  // namespace glsnet
