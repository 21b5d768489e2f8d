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

struct Options {
  std::string precision = "fp32";
  std::string device = "cpu";
  int threads = 0;
  int batch_size = 0;        // 0: memory plan
  uint64_t max_memory = 0;   // bytes; 0: no budget
  bool cpu_arena = false;
};

// One opened bundle; segment() may be called from several threads at once.
class Segmenter {
 public:
  explicit Segmenter(const std::string& bundle_dir, const Options& options = Options()) {
    glsnet_options o;
    glsnet_options_init(&o);
    o.precision = options.precision.c_str();
    o.device = options.device.c_str();
    o.threads = options.threads;
    o.batch_size = options.batch_size;
    o.max_memory = options.max_memory;
    o.cpu_arena = options.cpu_arena ? 1 : 0;
    check(glsnet_open(bundle_dir.c_str(), &o, &handle_));
  }
  ~Segmenter() { glsnet_close(handle_); }
  Segmenter(const Segmenter&) = delete;
  Segmenter& operator=(const Segmenter&) = delete;
  Segmenter(Segmenter&& other) noexcept : handle_(other.handle_) { other.handle_ = nullptr; }
  Segmenter& operator=(Segmenter&& other) noexcept {
    if (this != &other) {
      glsnet_close(handle_);
      handle_ = other.handle_;
      other.handle_ = nullptr;
    }
    return *this;
  }

  // uint8 pixels [height, width, channels] -> class indices [height, width].
  std::vector<uint8_t> segment(const uint8_t* pixels, int64_t height, int64_t width, int32_t channels) const {
    std::vector<uint8_t> mask(static_cast<size_t>(height * width));
    check(glsnet_segment(handle_, pixels, static_cast<size_t>(height * width * channels), height, width, channels, mask.data(),
                         mask.size()));
    return mask;
  }

  // Finished rows, top to bottom: on_rows(top, rows, width, mask_rows); return false to stop.
  using RowHandler = std::function<bool(int64_t top, int64_t rows, int64_t width, const uint8_t* mask_rows)>;
  void segment_rows(const uint8_t* pixels, int64_t height, int64_t width, int32_t channels, const RowHandler& on_rows) const {
    check(glsnet_segment_rows(handle_, pixels, static_cast<size_t>(height * width * channels), height, width, channels, &trampoline,
                              const_cast<RowHandler*>(&on_rows)));
  }

  void segment_file(const std::string& image, const std::string& output_dir, const std::string& format = "png",
                    bool color = true) const {
    check(glsnet_segment_file(handle_, image.c_str(), output_dir.c_str(), format.c_str(), color ? 1 : 0));
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
};

}  // namespace glsnet

#endif  // GLSNET_HPP
