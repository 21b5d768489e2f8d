// A small RAII C++ wrapper over the C ABI (glsnet.h): errors become glsnet::Exception, the handle closes itself.
#ifndef GLSNET_HPP
#define GLSNET_HPP

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "glsnet/glsnet.h"

namespace glsnet {

class Exception : public std::runtime_error {
 public:
  Exception(glsnet_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  glsnet_status status() const { return status_; }

 private:
  glsnet_status status_;
};

inline void check(glsnet_status status) {
  if (status != GLSNET_OK) throw Exception(status, glsnet_last_error());
}

// a x b x c as a size_t, or Exception(GLSNET_ERROR_INVALID_ARGUMENT) when a factor is negative or the product overflows.
inline size_t checked_size(int64_t a, int64_t b, int64_t c = 1) {
  size_t ab = 0, abc = 0;
  if (a < 0 || b < 0 || c < 0 || __builtin_mul_overflow(static_cast<size_t>(a), static_cast<size_t>(b), &ab) ||
      __builtin_mul_overflow(ab, static_cast<size_t>(c), &abc))
    throw Exception(GLSNET_ERROR_INVALID_ARGUMENT, "image size " + std::to_string(a) + " x " + std::to_string(b) + " x " +
                                                       std::to_string(c) + " is negative or overflows the address space");
  return abc;
}

struct Options {
  std::string precision = "fp32";
  std::string device = "cpu";
  int threads = 0;
  int batch_size = 0;        // 0: memory plan
  uint64_t max_memory = 0;   // bytes; 0: no budget
  bool cpu_arena = false;
  int device_id = 0;          // the GPU of the cuda / tensorrt providers
  bool release_heap = false;  // malloc_trim after large frees (glsnet_options.release_heap)
  std::string input_range;    // segment_file: how 16-bit / float pixels map onto the trained range ("" : none)
  std::string bands;          // input bands the model reads instead of the bundle's, e.g. "3,2,1" ("" : the bundle's)
  int min_overlap = -1;       // the patch grid's minimum overlap in pixels (-1: the bundle's patch.min_overlap)
};

// One opened bundle; segment() may be called from several threads at once.
class Segmenter {
 public:
  explicit Segmenter(const std::string& bundle_dir, const Options& options = Options()) {
    glsnet_options o;
    glsnet_options_init_sized(&o, sizeof o);
    o.precision = options.precision.c_str();
    o.device = options.device.c_str();
    o.threads = options.threads;
    o.batch_size = options.batch_size;
    o.max_memory = options.max_memory;
    o.cpu_arena = options.cpu_arena ? 1 : 0;
    o.release_heap = options.release_heap ? 1 : 0;
    o.device_id = options.device_id;
    o.bands = options.bands.empty() ? nullptr : options.bands.c_str();
    o.min_overlap = options.min_overlap;
    input_range_ = options.input_range;
    check(glsnet_open(bundle_dir.c_str(), &o, &handle_));
  }
  ~Segmenter() { glsnet_close(handle_); }
  Segmenter(const Segmenter&) = delete;
  Segmenter& operator=(const Segmenter&) = delete;
  Segmenter(Segmenter&& other) noexcept : handle_(other.handle_), input_range_(std::move(other.input_range_)) { other.handle_ = nullptr; }
  Segmenter& operator=(Segmenter&& other) noexcept {
    if (this != &other) {
      glsnet_close(handle_);
      handle_ = other.handle_;
      input_range_ = std::move(other.input_range_);
      other.handle_ = nullptr;
    }
    return *this;
  }

  // uint8 pixels [height, width, channels] -> class indices [height, width].
  std::vector<uint8_t> segment(const uint8_t* pixels, int64_t height, int64_t width, int32_t channels) const {
    const size_t pixels_size = checked_size(height, width, channels);
    std::vector<uint8_t> mask(checked_size(height, width));
    check(glsnet_segment(handle_, pixels, pixels_size, height, width, channels, mask.data(), mask.size()));
    return mask;
  }

  // Finished rows, top to bottom: on_rows(top, rows, width, mask_rows); return false to stop.
  using RowHandler = std::function<bool(int64_t top, int64_t rows, int64_t width, const uint8_t* mask_rows)>;
  void segment_rows(const uint8_t* pixels, int64_t height, int64_t width, int32_t channels, const RowHandler& on_rows) const {
    check(glsnet_segment_rows(handle_, pixels, checked_size(height, width, channels), height, width, channels, &trampoline,
                              const_cast<RowHandler*>(&on_rows)));
  }

  // stats: also <stem>_stats.json (per-class pixel counts and fractions, as glsnet run --stats).
  void segment_file(const std::string& image, const std::string& output_dir, const std::string& format = "png",
                    bool color = true, bool stats = false) const {
    glsnet_file_options o;
    glsnet_file_options_init(&o, sizeof o);
    o.format = format.c_str();
    o.color = color ? 1 : 0;
    o.stats = stats ? 1 : 0;
    o.input_range = input_range_.empty() ? nullptr : input_range_.c_str();
    check(glsnet_segment_file_with(handle_, image.c_str(), output_dir.c_str(), &o));
  }

  glsnet_plan_info plan(int64_t height, int64_t width) const {
    glsnet_plan_info info{};
    info.struct_size = sizeof info;
    check(glsnet_plan(handle_, height, width, &info));
    return info;
  }

  int num_classes() const {
    int32_t n = 0;
    check(glsnet_num_classes(handle_, &n));
    return n;
  }

  glsnet_handle* get() const { return handle_; }

 private:
  static int trampoline(void* user, int64_t top, int64_t rows, int64_t width, const uint8_t* mask) {
    try {
      return (*static_cast<RowHandler*>(user))(top, rows, width, mask) ? 0 : 1;
    } catch (...) {
      return 1;  // an exception must not cross the C ABI
    }
  }
  glsnet_handle* handle_ = nullptr;
  std::string input_range_;
};

}  // namespace glsnet

#endif  // GLSNET_HPP
