// One bundle's ONNX Runtime sessions (local, fusion, and the global stage graphs or the single global
// graph) and the scheduler that chains them over an image: global branch in one thread, local batches in
// another (bounded queue, not waiting for the global branch), fusion + upsampling + stitching in the
// caller's thread, rows handed out as they finish. On the CPU one graph runs at a time.
#pragma once
#include <onnxruntime_cxx_api.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "algorithm.hpp"
#include "call_control.hpp"
#include "global_features.hpp"
#include "image_io.hpp"
#include "logging.hpp"
#include "manifest.hpp"
#include "shared_budget.hpp"

namespace glsnet {

class ActivationCache;

// Asks the loaded ONNX Runtime for the API version of the headers (once); Error(GLSNET_ERROR_RUNTIME) when it is older.
void init_onnxruntime_api();

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
  int device_id = 0;          // the GPU of the cuda / tensorrt providers
  bool release_heap = false;  // malloc_trim after large frees (heap_release.hpp): the host's choice
  std::optional<std::vector<int>> bands;  // input bands read instead of the manifest's (--bands)
  std::optional<int64_t> min_overlap;     // the patch grid's minimum overlap instead of the manifest's (--min-overlap)
  LogTarget log;  // where this handle's ONNX Runtime messages and own warnings go (no callback: ORT's stderr sink)
};

class Pipeline {
 public:
  Pipeline(const std::string& bundle_dir, const RuntimeOptions& options);

  PatchGrid grid_for(int64_t height, int64_t width) const;
  MemoryPlan plan(const PatchGrid& grid, int64_t source_bytes) const;
  // Segments `source`; `sink(top, rows, mask)` gets finished rows [rows, width] top to bottom.
  // `call` (may be null): cancel token and deadline, checked before every graph run (call_control.hpp).
  void run(const ImageSource& source, const Stitcher::RowSink& sink, const CallControl* call = nullptr) const;

  const Manifest& manifest() const { return manifest_; }
  const RuntimeOptions& options() const { return options_; }
  const LogTarget& log_target() const { return log_->target(); }

 private:
  struct Graph {
    std::unique_ptr<Ort::Session> session;
    std::vector<std::string> inputs, outputs;
    int64_t file_bytes = 0;
  };
  Graph load(const GraphSpec& spec, const std::string& what, const std::string& path, Ort::SessionOptions& so) const;
  MemoryModel memory_model(const PatchGrid& grid, int64_t source_bytes) const;
  std::vector<float> global_features(const ImageSource& source, const PatchGrid& grid, const MemoryPlan& plan,
                                     std::vector<int64_t>& shape) const;
  Rows run_stage(size_t index, Rows&& input, int64_t first, int64_t count) const;
  int64_t held_once_bytes() const;  // what the handle holds for all its calls: the process base and the loaded weights

  // Unmaps the process's kept activation blocks when it goes (a handle's sessions, an image's runs); no cache: nothing.
  struct KeptBlocks {
    ActivationCache* cache = nullptr;
    ~KeptBlocks();
  };

  std::string bundle_dir_;
  RuntimeOptions options_;
  KeptBlocks kept_blocks_;  // CPU, arena off: the process's ActivationCache; before the sessions, so it outlives them
  std::unique_ptr<LogRegistration> log_;  // before the sessions: they log until destroyed
  Manifest manifest_;
  Normalizer normalizer_;
  Graph global_, local_, fusion_;
  std::vector<Graph> stages_;  // the global branch's stage graphs; empty: the single global graph runs
  std::vector<StageShape> stage_shapes_;
  int64_t width_ = 0, skip_ = 0;  // channels of the local graph's two outputs
  bool serialize_graphs_ = true;  // one graph at a time (the CPU: each graph already uses every core)
  std::unique_ptr<SharedBudget> budget_;  // --max-memory beyond held_once_bytes(), reserved by the calls in flight
};

}  // namespace glsnet
