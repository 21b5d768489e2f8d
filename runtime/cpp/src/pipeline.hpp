// One bundle's three ONNX Runtime sessions and the scheduler that chains them over an image:
// global branch in one thread, local batches in another (bounded queue, not waiting for the global
// branch), fusion + upsampling + stitching in the caller's thread, rows handed out as they finish.
#pragma once
#include <onnxruntime_cxx_api.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "algorithm.hpp"
#include "image_io.hpp"
#include "manifest.hpp"

namespace glsnet {

struct RuntimeOptions {
  std::string precision = "fp32";
  std::string device = "cpu";
  int threads = 0;
  std::optional<int64_t> batch_size;
  std::optional<int64_t> max_memory;
  std::optional<int64_t> global_band_rows;
  int64_t global_halo = kDefaultHalo;
  bool cpu_arena = false;
  int64_t max_pixels = kDefaultMaxPixels;
};

class Pipeline {
 public:
  Pipeline(const std::string& bundle_dir, const RuntimeOptions& options);

  PatchGrid grid_for(int64_t height, int64_t width) const;
  MemoryPlan plan(const PatchGrid& grid, int64_t source_bytes) const;
  // Segments `source`; `sink(top, rows, mask)` gets finished rows [rows, width] top to bottom.
  void run(const ImageSource& source, const Stitcher::RowSink& sink) const;

  const Manifest& manifest() const { return manifest_; }
  const RuntimeOptions& options() const { return options_; }

 private:
  struct Graph {
    std::unique_ptr<Ort::Session> session;
    std::vector<std::string> inputs, outputs;
    int64_t file_bytes = 0;
  };
  Graph load(const std::string& role, const std::string& path, Ort::SessionOptions& so) const;
  std::vector<float> global_features(const ImageSource& source, const PatchGrid& grid, const MemoryPlan& plan,
                                     std::vector<int64_t>& shape) const;

  std::string bundle_dir_;
  RuntimeOptions options_;
  Manifest manifest_;
  Normalizer normalizer_;
  Graph global_, local_, fusion_;
  int64_t width_ = 0, skip_ = 0;  // channels of the local graph's two outputs
};

}  // namespace glsnet
