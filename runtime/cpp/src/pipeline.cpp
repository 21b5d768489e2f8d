#include "pipeline.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "errors.hpp"

namespace glsnet {
namespace {

// Working memory of each graph as a multiple of its input + output bytes, and a loaded session's weights as a
// multiple of its file: the Python runtime's measured factors (runtime/segmenter.py, backends/onnxruntime.py).
const std::map<std::string, double> kActivationFactors{{"global", 8.5}, {"local", 6.0}, {"fusion", 10.0}};
constexpr double kResidentWeightFactor = 3.0;
constexpr int64_t kNormaliseChunkRows = 64;

Ort::Env& ort_env() {
  static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "glsnet");
  return env;
}

const Ort::MemoryInfo& cpu_memory() {
  static Ort::MemoryInfo info = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  return info;
}

int64_t prod(std::initializer_list<int64_t> dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// activation_factor x (input bytes + output bytes), truncated like Python's int().
int64_t estimate(const std::string& role, int64_t elements) {
  return static_cast<int64_t>(static_cast<double>(elements * 4) * kActivationFactors.at(role));
}

std::vector<const char*> c_names(const std::vector<std::string>& names) {
  std::vector<const char*> out;
  for (const auto& n : names) out.push_back(n.c_str());
  return out;
}

template <typename F>
auto ort_call(const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Ort::Exception& e) {
    fail(GLSNET_ERROR_RUNTIME, what + ": ONNX Runtime failed (" + e.what() + ")");
  }
}

// Local outputs of one batch, waiting for fusion.
struct LocalBatch {
  int64_t start = 0, count = 0;
  std::vector<Ort::Value> values;
};

// A bounded queue between the local producer and the fusion consumer; stop() wakes and ends both sides.
class BatchQueue {
 public:
  explicit BatchQueue(size_t depth) : depth_(depth) {}
  bool push(LocalBatch&& item) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return stopped_ || items_.size() < depth_; });
    if (stopped_) return false;
    items_.push_back(std::move(item));
    cv_.notify_all();
    return true;
  }
  void finish(std::exception_ptr error) {
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
    error_ = error;
    cv_.notify_all();
  }
  // false when the producer finished and nothing is left; rethrows the producer's failure.
  bool pop(LocalBatch& item) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return !items_.empty() || finished_; });
    if (!items_.empty()) {
      item = std::move(items_.front());
      items_.pop_front();
      cv_.notify_all();
      return true;
    }
    if (error_) std::rethrow_exception(error_);
    return false;
  }
  void stop() {
    std::lock_guard<std::mutex> lock(mutex_);
    stopped_ = true;
    items_.clear();
    cv_.notify_all();
  }
  bool stopped() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stopped_;
  }

 private:
  size_t depth_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<LocalBatch> items_;
  bool finished_ = false, stopped_ = false;
  std::exception_ptr error_;
};

// Normalised rows of the zero-padded image [C, rows, padded width].
class PaddedReader {
 public:
  PaddedReader(const ImageSource& source, const Normalizer& norm, const std::vector<int>& bands, const PatchGrid& grid)
      : source_(source), norm_(norm), bands_(bands), grid_(grid) {}

  std::vector<float> rows(int64_t top, int64_t bottom) const {
    const int64_t wp = grid_.padded_width(), count = bottom - top, c = static_cast<int64_t>(bands_.size());
    std::vector<float> out(static_cast<size_t>(c * count * wp), 0.0f);
    const int64_t real = std::min(bottom, source_.height), w = source_.width, nb = source_.bands;
    std::vector<float> raw;
    for (int64_t start = top; start < real; start += kNormaliseChunkRows) {
      const int64_t stop = std::min(real, start + kNormaliseChunkRows);
      raw.resize(static_cast<size_t>((stop - start) * w * nb));
      source_.read_rows(start, stop, raw.data());
      for (int64_t ch = 0; ch < c; ++ch) {
        const int band = bands_[ch];
        const float mean = norm_.mean[ch], inv = norm_.inv_std[ch];
        for (int64_t r = start; r < stop; ++r) {
          float* dst = out.data() + (ch * count + (r - top)) * wp;
          const float* src = raw.data() + (r - start) * w * nb + band;
          for (int64_t x = 0; x < w; ++x) {
            const float centred = src[x * nb] - mean;
            dst[x] = centred * inv;
          }
        }
      }
    }
    return out;
  }

  // [B, C, P, P] patches of a batch; keeps the strips of the grid rows it needs.
  void patches(int64_t start, int64_t count, std::vector<float>& out) {
    const int64_t p = grid_.patch, c = static_cast<int64_t>(bands_.size()), wp = grid_.padded_width();
    std::map<int64_t, std::vector<float>> kept;
    for (int64_t i = start; i < start + count; ++i) {
      const int64_t r = i / grid_.cols();
      if (kept.count(r)) continue;
      auto it = strips_.find(r);
      kept[r] = it != strips_.end() ? std::move(it->second) : rows(grid_.ys[r], grid_.ys[r] + p);
    }
    strips_ = std::move(kept);
    out.resize(static_cast<size_t>(count * c * p * p));
    for (int64_t b = 0; b < count; ++b) {
      const auto [y, x] = grid_.origin(start + b);
      (void)y;
      const std::vector<float>& strip = strips_.at((start + b) / grid_.cols());
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t r = 0; r < p; ++r)
          std::copy_n(strip.data() + (ch * p + r) * wp + x, p, out.data() + ((b * c + ch) * p + r) * p);
    }
  }

 private:
  const ImageSource& source_;
  const Normalizer& norm_;
  const std::vector<int>& bands_;
  const PatchGrid& grid_;
  std::map<int64_t, std::vector<float>> strips_;
};

int64_t file_size(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : 0;
}

}  // namespace

Pipeline::Pipeline(const std::string& bundle_dir, const RuntimeOptions& options)
    : bundle_dir_(bundle_dir),
      options_(options),
      manifest_(read_manifest(bundle_dir)),
      normalizer_(manifest_.normalization.mean, manifest_.normalization.std, manifest_.normalization.scale) {
  const std::vector<std::string> precisions{"fp32", "fp16", "int8"}, devices{"cpu", "cuda", "tensorrt"};
  if (std::find(precisions.begin(), precisions.end(), options.precision) == precisions.end())
    fail(GLSNET_ERROR_INVALID_ARGUMENT, "precision '" + options.precision + "' is not one of fp32, fp16, int8");
  if (std::find(devices.begin(), devices.end(), options.device) == devices.end())
    fail(GLSNET_ERROR_INVALID_ARGUMENT, "device '" + options.device + "' is not one of cpu, cuda, tensorrt");
  if (options.threads < 0) fail(GLSNET_ERROR_INVALID_ARGUMENT, "threads must be >= 1, got " + std::to_string(options.threads));
  if (options.batch_size && *options.batch_size < 1)
    fail(GLSNET_ERROR_INVALID_ARGUMENT, "batch size must be >= 1, got " + std::to_string(*options.batch_size));
  if (options.global_band_rows && (*options.global_band_rows <= 0 || *options.global_band_rows % kFeatureStride))
    fail(GLSNET_ERROR_INVALID_ARGUMENT, "global band rows must be a positive multiple of 32, got " + std::to_string(*options.global_band_rows));
  if (options.global_halo < 0 || options.global_halo % kFeatureStride)
    fail(GLSNET_ERROR_INVALID_ARGUMENT, "global halo must be a non-negative multiple of 32, got " + std::to_string(options.global_halo));

  // The graph set: an ONNX Runtime build of this precision (glsnet-export build) when there is one, else the graphs.
  std::map<std::string, std::string> paths;
  const EngineSpec* engine = nullptr;
  for (const auto& e : manifest_.engines)
    if (e.target == "onnxruntime" && e.precision == options.precision) {
      engine = &e;
      break;
    }
  for (const std::string role : {"global", "local", "fusion"}) {
    if (engine) {
      auto it = engine->files.find(role);
      if (it == engine->files.end())
        fail(GLSNET_ERROR_BUNDLE, bundle_dir + ": the onnxruntime " + options.precision + " build in " + engine->directory + " lacks " + role);
      std::string relative = it->second.file;
      if (relative.rfind(engine->directory + "/", 0) != 0) relative = engine->directory + "/" + relative;
      paths[role] = verify_file(bundle_dir, relative, it->second.sha256);
    } else {
      const GraphSpec& spec = manifest_.graph(role, options.precision);
      paths[role] = verify_file(bundle_dir, spec.file, spec.sha256);
    }
  }

  Ort::SessionOptions so;
  so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  so.SetLogSeverityLevel(3);
  if (!options.cpu_arena) so.DisableCpuMemArena();
  if (options.threads > 0) {
    so.SetIntraOpNumThreads(options.threads);
    so.SetInterOpNumThreads(1);
  }
  if (options.device != "cpu") {
    const std::string wanted = options.device == "cuda" ? "CUDAExecutionProvider" : "TensorrtExecutionProvider";
    const auto available = Ort::GetAvailableProviders();
    if (std::find(available.begin(), available.end(), wanted) == available.end()) {
      std::string have;
      for (const auto& a : available) have += (have.empty() ? "" : ", ") + a;
      fail(GLSNET_ERROR_RUNTIME, "--device " + options.device + " needs ONNX Runtime's " + wanted +
                                     ", but this libonnxruntime offers only " + have +
                                     "; link an onnxruntime-gpu build with matching CUDA/TensorRT libraries, or use --device cpu");
    }
    const OrtApi& api = Ort::GetApi();
    if (options.device == "tensorrt") {
      const std::string cache = bundle_dir + "/engines/ort-tensorrt-cache/" + options.precision;
      make_dirs(cache);
      OrtTensorRTProviderOptionsV2* trt = nullptr;
      Ort::ThrowOnError(api.CreateTensorRTProviderOptions(&trt));
      const std::vector<const char*> keys{"trt_fp16_enable", "trt_timing_cache_enable", "trt_engine_cache_enable",
                                          "trt_engine_cache_path", "trt_timing_cache_path"};
      const std::vector<const char*> values{options.precision == "fp16" ? "1" : "0", "1", "1", cache.c_str(), cache.c_str()};
      Ort::ThrowOnError(api.UpdateTensorRTProviderOptions(trt, keys.data(), values.data(), keys.size()));
      so.AppendExecutionProvider_TensorRT_V2(*trt);
      api.ReleaseTensorRTProviderOptions(trt);
    }
    OrtCUDAProviderOptionsV2* cuda = nullptr;
    Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
    const char* key = "cudnn_conv_algo_search";
    const char* value = "HEURISTIC";
    Ort::ThrowOnError(api.UpdateCUDAProviderOptions(cuda, &key, &value, 1));
    so.AppendExecutionProvider_CUDA_V2(*cuda);
    api.ReleaseCUDAProviderOptions(cuda);
  }
  global_ = load("global", paths["global"], so);
  local_ = load("local", paths["local"], so);
  fusion_ = load("fusion", paths["fusion"], so);

  auto channels = [&](size_t output, int fallback) {
    const auto shape = local_.session->GetOutputTypeInfo(output).GetTensorTypeAndShapeInfo().GetShape();
    return shape.size() > 1 && shape[1] > 0 ? shape[1] : fallback;
  };
  width_ = channels(0, manifest_.model_width);
  skip_ = channels(1, manifest_.model_skip_width);
}

Pipeline::Graph Pipeline::load(const std::string& role, const std::string& path, Ort::SessionOptions& so) const {
  Graph g;
  try {
    g.session = std::make_unique<Ort::Session>(ort_env(), path.c_str(), so);
  } catch (const Ort::Exception& e) {
    fail(GLSNET_ERROR_BUNDLE, path + ": ONNX Runtime could not load this graph (" + e.what() + "); re-export the bundle with glsnet-export");
  }
  const GraphSpec& spec = manifest_.graph(role, options_.precision);
  for (const auto& t : spec.inputs) g.inputs.push_back(t.name);
  for (const auto& t : spec.outputs) g.outputs.push_back(t.name);
  Ort::AllocatorWithDefaultOptions alloc;
  for (size_t i = 0; i < g.session->GetInputCount(); ++i) {
    const std::string name = g.session->GetInputNameAllocated(i, alloc).get();
    if (std::find(g.inputs.begin(), g.inputs.end(), name) == g.inputs.end())
      fail(GLSNET_ERROR_BUNDLE, path + ": the graph's input '" + name + "' is not in the manifest's " + role + " inputs; re-export the bundle");
  }
  g.file_bytes = file_size(path);
  return g;
}

PatchGrid Pipeline::grid_for(int64_t height, int64_t width) const {
  return make_grid(height, width, manifest_.patch_size, manifest_.min_overlap);
}

MemoryPlan Pipeline::plan(const PatchGrid& grid, int64_t source_bytes) const {
  const int64_t p = grid.patch, wp = grid.padded_width(), c = static_cast<int64_t>(manifest_.normalization.bands.size());
  const int64_t k = static_cast<int64_t>(manifest_.classes.size()), width = width_, skip = skip_;
  const int64_t tokens = ceil_div(p, kFeatureStride), fine = ceil_div(p, kOutputStride);
  const int64_t hg = ceil_div(grid.padded_height(), kFeatureStride), wg = ceil_div(wp, kFeatureStride);
  const int64_t depth = kDefaultQueueDepth;
  MemoryModel m;
  m.batch_bytes = [=](int64_t b) {
    const int64_t local_out = prod({b, width, tokens, tokens}) + prod({b, skip, fine, fine});
    const int64_t local = estimate("local", prod({b, c, p, p}) + local_out);
    const int64_t fusion = estimate("fusion", local_out + prod({1, width, hg, wg}) + prod({b, 4}) + prod({b, k, fine, fine}));
    const int64_t queued = (depth + 2) * b * 4 * (width * tokens * tokens + skip * fine * fine);
    const int64_t upsampled = 2 * b * k * p * p * 4;
    return local + fusion + queued + upsampled;
  };
  m.global_bytes = [=](int64_t rows) {
    return estimate("global", prod({1, c, rows, wp}) + prod({1, width, ceil_div(rows, kFeatureStride), wg})) + 2 * 4 * width * hg * wg;
  };
  const int64_t weights = static_cast<int64_t>(static_cast<double>(global_.file_bytes) * kResidentWeightFactor) +
                          static_cast<int64_t>(static_cast<double>(local_.file_bytes) * kResidentWeightFactor) +
                          static_cast<int64_t>(static_cast<double>(fusion_.file_bytes) * kResidentWeightFactor);
  const int64_t band_buffers = (k + 1) * p * wp * 4 + 2 * c * p * wp * 4;
  m.fixed_bytes = weights + band_buffers + source_bytes;
  m.padded_height = grid.padded_height();
  m.padded_width = wp;
  m.patches = grid.size();
  m.halo = options_.global_halo;
  MemoryPlan plan = plan_memory(m, options_.max_memory, options_.batch_size);
  if (options_.global_band_rows) {
    plan.global_band_rows = *options_.global_band_rows >= grid.padded_height() ? std::nullopt : options_.global_band_rows;
  }
  return plan;
}

std::vector<float> Pipeline::global_features(const ImageSource& source, const PatchGrid& grid, const MemoryPlan& plan,
                                             std::vector<int64_t>& shape) const {
  PaddedReader reader(source, normalizer_, manifest_.normalization.bands, grid);
  const int64_t c = static_cast<int64_t>(manifest_.normalization.bands.size()), wp = grid.padded_width();
  const int64_t hg = ceil_div(grid.padded_height(), kFeatureStride);
  std::vector<float> features;
  int64_t filled = 0, d = 0, wg = 0;
  const auto in_names = c_names(global_.inputs), out_names = c_names(global_.outputs);
  for (const GlobalBand& band : plan_bands(grid.padded_height(), plan.global_band_rows, options_.global_halo)) {
    std::vector<float> image = reader.rows(band.read_top, band.read_bottom);
    const std::vector<int64_t> dims{1, c, band.read_bottom - band.read_top, wp};
    Ort::Value input = Ort::Value::CreateTensor<float>(cpu_memory(), image.data(), image.size(), dims.data(), dims.size());
    auto out = ort_call("global graph", [&] {
      return global_.session->Run(Ort::RunOptions{nullptr}, in_names.data(), &input, 1, out_names.data(), 1);
    });
    const auto fshape = out[0].GetTensorTypeAndShapeInfo().GetShape();
    if (fshape.size() != 4) fail(GLSNET_ERROR_RUNTIME, "global graph: output has rank " + std::to_string(fshape.size()) + ", expected 4");
    d = fshape[1];
    wg = fshape[3];
    if (features.empty()) features.assign(static_cast<size_t>(d * hg * wg), 0.0f);
    const int64_t first = (band.top - band.read_top) / kFeatureStride;
    const int64_t count = ceil_div(band.bottom, kFeatureStride) - band.top / kFeatureStride;
    if (first + count > fshape[2] || filled + count > hg)
      fail(GLSNET_ERROR_RUNTIME, "global graph: output rows do not cover the band");
    const float* data = out[0].GetTensorData<float>();
    for (int64_t ch = 0; ch < d; ++ch)
      std::copy_n(data + (ch * fshape[2] + first) * wg, count * wg, features.data() + (ch * hg + filled) * wg);
    filled += count;
  }
  shape = {1, d, hg, wg};
  return features;
}

void Pipeline::run(const ImageSource& source, const Stitcher::RowSink& sink) const {
  const auto& bands = manifest_.normalization.bands;
  const int max_band = *std::max_element(bands.begin(), bands.end());
  if (max_band >= source.bands) {
    std::string list;
    for (int b : bands) list += (list.empty() ? "" : ", ") + std::to_string(b);
    fail(GLSNET_ERROR_INPUT, source.name + ": the image has " + std::to_string(source.bands) + " band(s) but the model reads bands [" +
                                 list + "]; pass an image with these bands");
  }
  const PatchGrid grid = grid_for(source.height, source.width);
  const MemoryPlan plan = this->plan(grid, source.resident_bytes);
  const int64_t p = grid.patch, k = static_cast<int64_t>(manifest_.classes.size());
  Stitcher stitcher(grid, static_cast<int>(k));
  BatchQueue queue(kDefaultQueueDepth);

  std::promise<std::vector<float>> global_promise;
  std::future<std::vector<float>> global_future = global_promise.get_future();
  std::vector<int64_t> global_shape;
  std::thread global_thread([&] {
    try {
      global_promise.set_value(global_features(source, grid, plan, global_shape));
    } catch (...) {
      global_promise.set_exception(std::current_exception());
    }
  });
  std::thread local_thread([&] {
    try {
      PaddedReader reader(source, normalizer_, bands, grid);
      const auto in_names = c_names(local_.inputs), out_names = c_names(local_.outputs);
      std::vector<float> patches;
      const int64_t c = static_cast<int64_t>(bands.size());
      for (int64_t start = 0; start < grid.size(); start += plan.batch_size) {
        if (queue.stopped()) return;
        LocalBatch batch;
        batch.start = start;
        batch.count = std::min(plan.batch_size, grid.size() - start);
        reader.patches(start, batch.count, patches);
        const std::vector<int64_t> dims{batch.count, c, p, p};
        Ort::Value input = Ort::Value::CreateTensor<float>(cpu_memory(), patches.data(), patches.size(), dims.data(), dims.size());
        batch.values = ort_call("local graph", [&] {
          return local_.session->Run(Ort::RunOptions{nullptr}, in_names.data(), &input, 1, out_names.data(), out_names.size());
        });
        if (!queue.push(std::move(batch))) return;
      }
      queue.finish(nullptr);
    } catch (...) {
      queue.finish(std::current_exception());
    }
  });
  struct Joiner {
    BatchQueue& queue;
    std::thread &a, &b;
    ~Joiner() {
      queue.stop();
      if (a.joinable()) a.join();
      if (b.joinable()) b.join();
    }
  } joiner{queue, global_thread, local_thread};

  std::vector<float> features;
  bool have_features = false;
  const auto in_names = c_names(fusion_.inputs), out_names = c_names(fusion_.outputs);
  std::vector<float> boxes, upsampled(static_cast<size_t>(k * p * p)), scratch;
  std::optional<UpsampleTaps> row_taps, col_taps;
  LocalBatch batch;
  while (queue.pop(batch)) {
    if (!have_features) {
      features = global_future.get();  // the global branch's failure surfaces here
      have_features = true;
    }
    boxes.clear();
    for (int64_t i = batch.start; i < batch.start + batch.count; ++i) {
      const auto [y, x] = grid.origin(i);
      for (int64_t v : {x, y, x + p, y + p}) boxes.push_back(static_cast<float>(v));
    }
    const std::vector<int64_t> box_dims{batch.count, 4};
    std::vector<Ort::Value> inputs;
    inputs.push_back(std::move(batch.values[0]));
    inputs.push_back(std::move(batch.values[1]));
    inputs.push_back(Ort::Value::CreateTensor<float>(cpu_memory(), features.data(), features.size(), global_shape.data(), global_shape.size()));
    inputs.push_back(Ort::Value::CreateTensor<float>(cpu_memory(), boxes.data(), boxes.size(), box_dims.data(), box_dims.size()));
    auto out = ort_call("fusion graph", [&] {
      return fusion_.session->Run(Ort::RunOptions{nullptr}, in_names.data(), inputs.data(), inputs.size(), out_names.data(), 1);
    });
    const auto shape = out[0].GetTensorTypeAndShapeInfo().GetShape();
    if (shape.size() != 4 || shape[0] != batch.count || shape[1] != k)
      fail(GLSNET_ERROR_RUNTIME, "fusion graph: logits have an unexpected shape; re-export the bundle");
    const int64_t h = shape[2], w = shape[3];
    if (!row_taps) {
      row_taps = upsample_taps(h, p);
      col_taps = upsample_taps(w, p);
    }
    const float* logits = out[0].GetTensorData<float>();
    for (int64_t b = 0; b < batch.count; ++b) {
      upsample_patch(logits + b * k * h * w, k, h, w, p, *col_taps, *row_taps, scratch, upsampled.data());
      stitcher.add(upsampled.data(), sink);
    }
  }
  if (!stitcher.done())
    fail(GLSNET_ERROR_RUNTIME, "scheduler stitched " + std::to_string(stitcher.next_index()) + " of " + std::to_string(grid.size()) + " patches");
}

}  // namespace glsnet
