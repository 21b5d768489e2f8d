#include "onnxruntime_pipeline.hpp"

#include <dlfcn.h>
#include <onnxruntime_session_options_config_keys.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>

#include "activation_cache.hpp"
#include "band_selection.hpp"
#include "errors.hpp"
#include "heap_release.hpp"
#include "session_failure.hpp"

namespace glsnet {

// The library is built with ORT_API_MANUAL_INIT: the ONNX Runtime loaded at run time (which may be older than
// the headers) is asked for the headers' API version here, and a null answer becomes an error, not a crash.
// OrtGetApiBase is looked up with dlsym rather than linked: ONNX Runtime versions its symbols by release
// (OrtGetApiBase@VERS_1.x.y), so a linked reference would load against the build-time release only.
void init_onnxruntime_api() {
  static std::once_flag once;
  static std::string error;
  std::call_once(once, [] {
    // Already loaded as libglsnet's dependency: dlopen returns it (found through libglsnet's RUNPATH otherwise).
    void* library = dlopen("libonnxruntime.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!library) library = dlopen("libonnxruntime.so", RTLD_NOW | RTLD_LOCAL);
    using GetApiBase = const OrtApiBase* (*)();
    const auto get_base = library ? reinterpret_cast<GetApiBase>(dlsym(library, "OrtGetApiBase")) : nullptr;
    if (!get_base) {
      error = std::string("ONNX Runtime cannot be used: ") +
              (library ? "libonnxruntime.so.1 has no OrtGetApiBase" : "libonnxruntime.so.1 cannot be loaded (" + std::string(dlerror()) + ")");
      return;
    }
    const OrtApiBase* base = get_base();
    const OrtApi* api = base ? base->GetApi(ORT_API_VERSION) : nullptr;
    if (api) {
      Ort::InitApi(api);
      return;
    }
    const std::string loaded = base && base->GetVersionString() ? base->GetVersionString() : "unknown";
    error = "the ONNX Runtime loaded (libonnxruntime " + loaded + ") does not offer API version " +
            std::to_string(ORT_API_VERSION) + ", which glsnet was built against; it needs ONNX Runtime 1." +
            std::to_string(ORT_API_VERSION) + " or newer: put a newer libonnxruntime.so.1 first on the library path";
  });
  if (!error.empty()) fail(GLSNET_ERROR_RUNTIME, error);
}

namespace {

// Working memory of each graph as a multiple of its input + output bytes, and a loaded session's weights as a
// multiple of its file: the Python runtime's measured factors (runtime/engines/onnxruntime_pipeline.py ACTIVATION_FACTORS,
// runtime/backends/onnxruntime.py RESIDENT_WEIGHT_FACTOR), so that both runtimes choose the same plan.
const std::map<std::string, double> kActivationFactors{{"global", 8.5}, {"global stage", 3.0}, {"local", 6.0}, {"fusion", 8.5}};
constexpr double kResidentWeightFactor = 1.3;
constexpr int64_t kNormaliseChunkRows = 64;
// ONNX Runtime optimizers switched off in every session (runtime/backends/onnxruntime.py QDQ_BLOCKING_OPTIMIZERS).
constexpr const char* kQdqBlockingOptimizers = "CommonSubexpressionElimination";

// The key of global stage graph `index` in an ONNX Runtime engine's files (runtime/bundle/loader.py stage_engine_key).
std::string stage_engine_key(size_t index) { return "global_stage" + std::to_string(index); }

Ort::Env& ort_env() {
  init_onnxruntime_api();
  // ORT's environment is process-wide: its logging function routes each session's messages by log id (logging.hpp)
  static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "glsnet", ort_logging_function, nullptr);
  return env;
}

// The process's ActivationCache as ONNX Runtime's CPU allocator, registered in the environment on first use: every
// CPU session that sets session.use_env_allocators (arena off) allocates through it. It lives as long as the process.
struct CachedCpuAllocator : OrtAllocator {
  ActivationCache cache;
  Ort::MemoryInfo info = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault);

  CachedCpuAllocator() : OrtAllocator{} {
    version = ORT_API_VERSION;
    Alloc = [](OrtAllocator* self, size_t size) { return static_cast<CachedCpuAllocator*>(self)->cache.allocate(size); };
    Free = [](OrtAllocator* self, void* p) { static_cast<CachedCpuAllocator*>(self)->cache.release(p); };
    Info = [](const OrtAllocator* self) -> const OrtMemoryInfo* { return static_cast<const CachedCpuAllocator*>(self)->info; };
  }
};

// nullptr when the environment refuses it: a host that registered its own CPU allocator keeps it, and glsnet's
// sessions then allocate as ONNX Runtime does by default.
ActivationCache* registered_activation_cache() {
  static CachedCpuAllocator* allocator = [] {
    auto* a = new CachedCpuAllocator();  // never freed: sessions of other handles may outlive any owner
    if (OrtStatus* status = Ort::GetApi().RegisterAllocator(ort_env(), a)) {
      Ort::GetApi().ReleaseStatus(status);
      delete a;
      return static_cast<CachedCpuAllocator*>(nullptr);
    }
    return a;
  }();
  return allocator ? &allocator->cache : nullptr;
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

// The controls of the segment call this thread works for (set by Pipeline::run in each of its threads).
thread_local const CallControl* current_call = nullptr;

struct CallScope {
  explicit CallScope(const CallControl* call) { current_call = call; }
  ~CallScope() { current_call = nullptr; }
};

// One graph run: the call's controls checked first, its RunOptions registered with the cancel token meanwhile.
template <typename F>
auto ort_call(const std::string& what, F&& f) -> decltype(f(std::declval<Ort::RunOptions&>())) {
  const CallControl* call = current_call;
  if (call) call->check();
  Ort::RunOptions run;
  struct Registration {
    CancelToken* token;
    Ort::RunOptions* run;
    ~Registration() {
      if (token) token->remove(run);
    }
  } registration{call ? call->token : nullptr, &run};
  if (registration.token) registration.token->add(&run);
  try {
    return f(run);
  } catch (const Ort::Exception& e) {
    if (call) call->check();  // a run terminated by a cancel
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

int64_t weight_bytes(int64_t file_bytes) { return static_cast<int64_t>(static_cast<double>(file_bytes) * kResidentWeightFactor); }

// The graph slot: held while a graph runs when the graphs run one at a time, else never taken.
class GraphSlot {
 public:
  explicit GraphSlot(bool serialize) : serialize_(serialize) {}
  std::unique_lock<std::mutex> take() { return serialize_ ? std::unique_lock<std::mutex>(mutex_) : std::unique_lock<std::mutex>(); }

 private:
  bool serialize_;
  std::mutex mutex_;
};

// Runs `tasks` on up to `workers` threads (the caller's among them), each task once; when all have ended, the first
// failure in task order is rethrown.
void run_side_by_side(const std::vector<std::function<void()>>& tasks, unsigned workers) {
  std::vector<std::exception_ptr> failures(tasks.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < tasks.size(); i = next++) {
      try {
        tasks[i]();
      } catch (...) {
        failures[i] = std::current_exception();
      }
    }
  };
  std::vector<std::thread> helpers;
  try {
    for (size_t w = 1; w < std::min<size_t>(std::max(workers, 1u), tasks.size()); ++w) helpers.emplace_back(work);
  } catch (const std::system_error&) {  // no thread to spare: the threads started (at least the caller's) do all tasks
  }
  work();
  for (std::thread& helper : helpers) helper.join();
  for (const std::exception_ptr& failure : failures)
    if (failure) std::rethrow_exception(failure);
}

// Channels (axis 1) of a session's first input and first output.
std::pair<int64_t, int64_t> stage_channels(Ort::Session& session, const std::string& path) {
  const auto in = session.GetInputTypeInfo(0).GetTensorTypeAndShapeInfo().GetShape();
  const auto out = session.GetOutputTypeInfo(0).GetTensorTypeAndShapeInfo().GetShape();
  if (in.size() < 2 || out.size() < 2 || in[1] <= 0 || out[1] <= 0)
    fail(GLSNET_ERROR_BUNDLE, path + ": a global stage graph needs fixed input and output channels; re-export the bundle");
  return {in[1], out[1]};
}

}  // namespace

Pipeline::Pipeline(const std::string& bundle_dir, const RuntimeOptions& options)
    : bundle_dir_(bundle_dir),
      options_(options),
      log_(std::make_unique<LogRegistration>(options.log)),
      manifest_(read_manifest(bundle_dir)),
      normalizer_(manifest_.normalization.mean, manifest_.normalization.std, manifest_.normalization.scale) {
  if (options.bands) manifest_.normalization = normalization_for(manifest_.normalization, *options.bands);  // before any work
  if (options.min_overlap) {  // runtime/bundle/manifest.py with_min_overlap: the grid's geometry, same words
    if (*options.min_overlap < 0 || *options.min_overlap >= manifest_.patch_size)
      fail(GLSNET_ERROR_INVALID_ARGUMENT, min_overlap_error(std::to_string(*options.min_overlap), manifest_.patch_size));
    manifest_.min_overlap = static_cast<int>(*options.min_overlap);
  }
  init_onnxruntime_api();
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
  // Each file is named here as (bundle-relative path, sha256) and verified on the thread that loads it.
  using GraphFile = std::pair<std::string, std::string>;
  std::map<std::string, GraphFile> files;
  const EngineSpec* engine = nullptr;
  for (const auto& e : manifest_.engines)
    if (e.target == "onnxruntime" && e.precision == options.precision) {
      engine = &e;
      break;
    }
  // An engine file; its path is relative to the bundle or to the engine's directory (runtime/bundle/loader.py).
  auto engine_file = [&](const std::string& key) {
    const EngineFile& entry = engine->files.at(key);
    std::string relative = entry.file;
    if (relative.rfind(engine->directory + "/", 0) != 0) relative = engine->directory + "/" + relative;
    return GraphFile{relative, entry.sha256};
  };
  // The global stage graphs, as runtime/bundle/loader.py graph_files chooses them: the manifest's for this precision, from
  // the ONNX Runtime build (files global_stage0 .. N-1) when there is one and it holds all of them; a build without
  // them runs its single global graph.
  std::vector<GraphFile> stage_files;
  const std::vector<GlobalStageSpec> no_stages;
  const auto& stage_specs = manifest_.global_stages.count(options.precision) ? manifest_.global_stages.at(options.precision) : no_stages;
  if (!engine) {
    for (const auto& stage : stage_specs) stage_files.push_back({stage.graph.file, stage.graph.sha256});
  } else if (!stage_specs.empty()) {
    bool complete = true;
    for (size_t i = 0; i < stage_specs.size(); ++i) complete = complete && engine->files.count(stage_engine_key(i)) > 0;
    if (complete)
      for (size_t i = 0; i < stage_specs.size(); ++i) stage_files.push_back(engine_file(stage_engine_key(i)));
  }
  for (const std::string role : {"global", "local", "fusion"}) {
    if (engine) {
      if (!engine->files.count(role))
        fail(GLSNET_ERROR_BUNDLE, bundle_dir + ": the onnxruntime " + options.precision + " build in " + engine->directory + " lacks " + role);
      files[role] = engine_file(role);
    } else {
      const GraphSpec& spec = manifest_.graph(role, options.precision);
      files[role] = {spec.file, spec.sha256};
    }
  }

  Ort::SessionOptions so;
  so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  // As runtime/backends/onnxruntime.py QDQ_BLOCKING_OPTIMIZERS: common-subexpression elimination merges an int8 graph's
  // dedicated Q/DQ pairs (one Q feeding two DQs), which on x86 keeps ONNX Runtime from fusing them into integer kernels.
  so.AddConfigEntry(kOrtSessionOptionsDisableSpecifiedOptimizers, kQdqBlockingOptimizers);
  so.SetLogSeverityLevel(options.log.callback ? options.log.level : ORT_LOGGING_LEVEL_ERROR);
  so.SetLogId(log_->id().c_str());
  if (!options.cpu_arena) so.DisableCpuMemArena();
  if (options.device == "cpu" && !options.cpu_arena) {
    kept_blocks_.cache = registered_activation_cache();  // activation blocks kept between runs (activation_cache.hpp)
    if (kept_blocks_.cache) so.AddConfigEntry(kOrtSessionOptionsConfigUseEnvAllocators, "1");
  }
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
      const std::string device_id = std::to_string(options.device_id);
      const std::vector<const char*> keys{"device_id", "trt_fp16_enable", "trt_timing_cache_enable", "trt_engine_cache_enable",
                                          "trt_engine_cache_path", "trt_timing_cache_path"};
      const std::vector<const char*> values{device_id.c_str(), options.precision == "fp16" ? "1" : "0", "1", "1", cache.c_str(),
                                            cache.c_str()};
      Ort::ThrowOnError(api.UpdateTensorRTProviderOptions(trt, keys.data(), values.data(), keys.size()));
      so.AppendExecutionProvider_TensorRT_V2(*trt);
      api.ReleaseTensorRTProviderOptions(trt);
    }
    OrtCUDAProviderOptionsV2* cuda = nullptr;
    Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
    const std::string device_id = std::to_string(options.device_id);
    const std::vector<const char*> cuda_keys{"device_id", "cudnn_conv_algo_search"}, cuda_values{device_id.c_str(), "HEURISTIC"};
    Ort::ThrowOnError(api.UpdateCUDAProviderOptions(cuda, cuda_keys.data(), cuda_values.data(), cuda_keys.size()));
    so.AppendExecutionProvider_CUDA_V2(*cuda);
    api.ReleaseCUDAProviderOptions(cuda);
  }
  serialize_graphs_ = options.device == "cpu";  // GPU providers overlap the branches
  // Verifying and loading a graph is mostly one core's work (hashing, graph transforms, weight packing), so on the CPU
  // the graphs load side by side, one per core, largest first; GPU providers load one at a time (each may build
  // engines on the device). With stage graphs the single global graph is verified with the rest, but never loaded: it
  // never runs, and its session would hold a second copy of the stages' weights.
  std::vector<std::function<void()>> loads;
  auto load_verified = [&](Graph& into, const GraphSpec& spec, std::string what, GraphFile file) {
    loads.push_back([this, &into, &spec, &so, what, file] { into = load(spec, what, verify_file(bundle_dir_, file.first, file.second), so); });
  };
  load_verified(local_, manifest_.graph("local", options.precision), "local", files["local"]);
  stages_.resize(stage_files.size());
  for (size_t i = stage_files.size(); i-- > 0;)
    load_verified(stages_[i], stage_specs[i].graph, "global stage " + std::to_string(i), stage_files[i]);
  if (stage_files.empty())
    load_verified(global_, manifest_.graph("global", options.precision), "global", files["global"]);
  else
    loads.push_back([this, file = files["global"]] { verify_file(bundle_dir_, file.first, file.second); });
  load_verified(fusion_, manifest_.graph("fusion", options.precision), "fusion", files["fusion"]);
  run_side_by_side(loads, options.device == "cpu" ? std::thread::hardware_concurrency() : 1);
  for (size_t i = 0; i < stages_.size(); ++i) {
    const auto [c_in, c_out] = stage_channels(*stages_[i].session, bundle_dir + "/" + stage_files[i].first);
    stage_shapes_.push_back({stage_specs[i].stride, stage_specs[i].halo, c_in, c_out});
  }

  auto channels = [&](size_t output, int fallback) {
    const auto shape = local_.session->GetOutputTypeInfo(output).GetTensorTypeAndShapeInfo().GetShape();
    return shape.size() > 1 && shape[1] > 0 ? shape[1] : fallback;
  };
  width_ = channels(0, manifest_.model_width);
  skip_ = channels(1, manifest_.model_skip_width);
  // concurrent calls share one budget: each reserves its plan's estimate beyond what the handle holds once
  budget_ = std::make_unique<SharedBudget>(options_.max_memory ? std::max<int64_t>(1, *options_.max_memory - held_once_bytes()) : 0);
  if (kept_blocks_.cache) kept_blocks_.cache->unmap_kept();  // the blocks the sessions freed while loading
  if (options_.release_heap) release_free_heap();  // the parsed graphs and load-time copies
  const std::string source = engine ? "the onnxruntime " + options.precision + " build in " + engine->directory : "the " + options.precision + " graphs";
  log_to(&options_.log, GLSNET_LOG_INFO,
         stages_.empty() ? "global branch: the single global graph of " + source + " (" + bundle_dir + "/" + files["global"].first + ")"
                         : "global branch: " + std::to_string(stages_.size()) + " stage graphs of " + source + " (" + bundle_dir + "/" +
                               stage_files.front().first + (stages_.size() > 1 ? " .. " + bundle_dir + "/" + stage_files.back().first : "") + ")");
}

int64_t Pipeline::held_once_bytes() const {
  int64_t weights = weight_bytes(local_.file_bytes) + weight_bytes(fusion_.file_bytes);
  if (stages_.empty()) weights += weight_bytes(global_.file_bytes);
  for (const Graph& stage : stages_) weights += weight_bytes(stage.file_bytes);
  return kProcessBaseBytes + weights;
}

Pipeline::Graph Pipeline::load(const GraphSpec& spec, const std::string& what, const std::string& path, Ort::SessionOptions& so) const {
  Graph g;
  try {
    g.session = std::make_unique<Ort::Session>(ort_env(), path.c_str(), so);
  } catch (const Ort::Exception& e) {
    if (classify_session_failure(e.GetOrtErrorCode(), e.what(), options_.device) == GLSNET_ERROR_RUNTIME)
      fail(GLSNET_ERROR_RUNTIME, path + ": ONNX Runtime could not create a " + options_.device + " session for this graph (" + e.what() +
                                     "); the runtime, not the bundle: check that the provider's libraries (CUDA, cuDNN, TensorRT) "
                                     "and an ONNX Runtime new enough for the graph are installed, or use --device cpu");
    fail(GLSNET_ERROR_BUNDLE, path + ": ONNX Runtime could not load this graph (" + e.what() + "); re-export the bundle with glsnet-export");
  }
  for (const auto& t : spec.inputs) g.inputs.push_back(t.name);
  for (const auto& t : spec.outputs) g.outputs.push_back(t.name);
  Ort::AllocatorWithDefaultOptions alloc;
  for (size_t i = 0; i < g.session->GetInputCount(); ++i) {
    const std::string name = g.session->GetInputNameAllocated(i, alloc).get();
    if (std::find(g.inputs.begin(), g.inputs.end(), name) == g.inputs.end())
      fail(GLSNET_ERROR_BUNDLE, path + ": the graph's input '" + name + "' is not in the manifest's " + what + " inputs; re-export the bundle");
  }
  g.file_bytes = file_size(path);
  return g;
}

PatchGrid Pipeline::grid_for(int64_t height, int64_t width) const {
  return make_grid(height, width, manifest_.patch_size, manifest_.min_overlap);
}

MemoryModel Pipeline::memory_model(const PatchGrid& grid, int64_t source_bytes) const {
  const int64_t p = grid.patch, wp = grid.padded_width(), hp = grid.padded_height(), c = static_cast<int64_t>(manifest_.normalization.bands.size());
  const int64_t k = static_cast<int64_t>(manifest_.classes.size()), width = width_, skip = skip_;
  const int64_t tokens = ceil_div(p, kFeatureStride), fine = ceil_div(p, kOutputStride);
  const int64_t hg = ceil_div(hp, kFeatureStride), wg = ceil_div(wp, kFeatureStride);
  const int64_t depth = kDefaultQueueDepth;
  const bool serialize = serialize_graphs_;
  MemoryModel m;
  m.batch_bytes = [=](int64_t b) {
    const int64_t local_out = prod({b, width, tokens, tokens}) + prod({b, skip, fine, fine});
    const int64_t local = estimate("local", prod({b, c, p, p}) + local_out);
    // the fusion graph reads the global map in place (counted once); its working set scales with the batch
    const int64_t fusion = estimate("fusion", local_out + prod({b, 4}) + prod({b, k, fine, fine})) + 4 * width * hg * wg;
    const int64_t queued = (depth + 2) * b * 4 * (width * tokens * tokens + skip * fine * fine);
    const int64_t upsampled = 2 * b * k * p * p * 4;
    return (serialize ? std::max(local, fusion) : local + fusion) + queued + upsampled;
  };
  m.staged = !stages_.empty();
  int64_t weights = weight_bytes(local_.file_bytes) + weight_bytes(fusion_.file_bytes);
  if (m.staged) {
    for (const Graph& stage : stages_) weights += weight_bytes(stage.file_bytes);
    const std::vector<StageShape> stages = stage_shapes_;
    const double factor = kActivationFactors.at("global stage");
    m.global_bytes = [=](std::optional<int64_t> rows) { return staged_global_bytes(stages, hp, wp, rows, factor); };
    double patches_per_pixel = kDefaultGlobalPatchesPerPixel;
    if (manifest_.flops) {
      const Flops& f = *manifest_.flops;
      const double pixels = f.height * f.width, per_patch_den = f.batch;
      if (pixels != 0 && per_patch_den != 0) {
        const double per_pixel = f.global / pixels, per_patch = (f.local + f.fusion) / per_patch_den;
        if (per_patch != 0) patches_per_pixel = per_pixel / per_patch;
      }
    }
    const double whole_work = static_cast<double>(hp * wp) * patches_per_pixel;
    m.global_cost = [=](std::optional<int64_t> rows) { return staged_global_cost(stages, hp, rows, whole_work); };
  } else {
    weights += weight_bytes(global_.file_bytes);
    m.global_bytes = [=](std::optional<int64_t> rows) {
      return estimate("global", prod({1, c, *rows, wp}) + prod({1, width, ceil_div(*rows, kFeatureStride), wg})) + 2 * 4 * width * hg * wg;
    };
  }
  const int64_t band_buffers = (k + 1) * p * wp * 4 + 2 * c * p * wp * 4;
  m.fixed_bytes = kProcessBaseBytes + weights + band_buffers + source_bytes;
  m.padded_height = hp;
  m.padded_width = wp;
  m.patches = grid.size();
  m.halo = options_.global_halo;
  return m;
}

MemoryPlan Pipeline::plan(const PatchGrid& grid, int64_t source_bytes) const {
  MemoryPlan plan = plan_memory(memory_model(grid, source_bytes), options_.max_memory, options_.batch_size);
  if (options_.global_band_rows) {
    plan.global_band_rows = *options_.global_band_rows >= grid.padded_height() ? std::nullopt : options_.global_band_rows;
  }
  return plan;
}

Rows Pipeline::run_stage(size_t index, Rows&& input, int64_t first, int64_t count) const {
  const Graph& g = stages_[index];
  const std::string what = "global stage " + std::to_string(index);
  const auto in_names = c_names(g.inputs), out_names = c_names(g.outputs);
  const std::vector<int64_t> dims{1, input.channels, input.rows, input.width};
  Ort::Value value = Ort::Value::CreateTensor<float>(cpu_memory(), input.data.data(), input.data.size(), dims.data(), dims.size());
  auto out = ort_call(what, [&](Ort::RunOptions& run) { return g.session->Run(run, in_names.data(), &value, 1, out_names.data(), 1); });
  const auto shape = out[0].GetTensorTypeAndShapeInfo().GetShape();
  if (shape.size() != 4 || shape[0] != 1) fail(GLSNET_ERROR_RUNTIME, what + ": output is not [1, channels, rows, width]");
  if (shape[2] < first + count)
    fail(GLSNET_ERROR_RUNTIME, what + " gave " + std::to_string(shape[2]) + " rows for " + std::to_string(input.rows) +
                                   " input rows; expected ceil(rows / " + std::to_string(stage_shapes_[index].stride) + ")");
  Rows rows{shape[1], count, shape[3], {}};
  rows.data.resize(static_cast<size_t>(rows.channels * count * rows.width));
  const float* data = out[0].GetTensorData<float>();
  for (int64_t c = 0; c < rows.channels; ++c)
    std::copy_n(data + (c * shape[2] + first) * rows.width, count * rows.width, rows.data.data() + c * count * rows.width);
  return rows;
}

std::vector<float> Pipeline::global_features(const ImageSource& source, const PatchGrid& grid, const MemoryPlan& plan,
                                             std::vector<int64_t>& shape) const {
  PaddedReader reader(source, normalizer_, manifest_.normalization.bands, grid);
  const int64_t c = static_cast<int64_t>(manifest_.normalization.bands.size()), wp = grid.padded_width();
  const int64_t hg = ceil_div(grid.padded_height(), kFeatureStride);
  if (!stages_.empty()) {
    std::vector<StageRunner> runners;
    for (size_t i = 0; i < stages_.size(); ++i)
      runners.push_back({stage_shapes_[i], [this, i](Rows&& input, int64_t first, int64_t count) {
                           return run_stage(i, std::move(input), first, count);
                         }});
    const RowReader read = [&](int64_t top, int64_t bottom) { return Rows{c, bottom - top, wp, reader.rows(top, bottom)}; };
    Rows features = staged_global_features(runners, read, grid.padded_height(), plan.global_band_rows);
    if (features.rows != hg) fail(GLSNET_ERROR_RUNTIME, "global stages gave " + std::to_string(features.rows) + " feature rows, expected " + std::to_string(hg));
    shape = {1, features.channels, features.rows, features.width};
    return std::move(features.data);
  }
  std::vector<float> features;
  int64_t filled = 0, d = 0, wg = 0;
  const auto in_names = c_names(global_.inputs), out_names = c_names(global_.outputs);
  for (const GlobalBand& band : plan_bands(grid.padded_height(), plan.global_band_rows, options_.global_halo)) {
    std::vector<float> image = reader.rows(band.read_top, band.read_bottom);
    const std::vector<int64_t> dims{1, c, band.read_bottom - band.read_top, wp};
    Ort::Value input = Ort::Value::CreateTensor<float>(cpu_memory(), image.data(), image.size(), dims.data(), dims.size());
    auto out = ort_call("global graph", [&](Ort::RunOptions& run) {
      return global_.session->Run(run, in_names.data(), &input, 1, out_names.data(), 1);
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

Pipeline::KeptBlocks::~KeptBlocks() {
  if (cache) cache->unmap_kept();
}

void Pipeline::run(const ImageSource& source, const Stitcher::RowSink& sink, const CallControl* call) const {
  const CallScope caller_scope(call);
  // the activation blocks kept between this image's graph runs go back when it ends, however it ends: an idle
  // process holds only its weights (declared before the threads below, so released after they have joined)
  const KeptBlocks image_blocks{kept_blocks_.cache};
  const ActivationCache::Counts blocks_before = kept_blocks_.cache ? kept_blocks_.cache->counts() : ActivationCache::Counts{};
  if (call) call->check();
  const auto& bands = manifest_.normalization.bands;
  check_bands(source.bands, bands, source.name);
  const PatchGrid grid = grid_for(source.height, source.width);
  const MemoryPlan plan = this->plan(grid, source.resident_bytes);
  const SharedBudget::Reservation reserved = budget_->reserve(plan.estimate_bytes - held_once_bytes(), call);  // may wait
  const int64_t p = grid.patch, k = static_cast<int64_t>(manifest_.classes.size());
  Stitcher stitcher(grid, static_cast<int>(k));
  BatchQueue queue(kDefaultQueueDepth);
  GraphSlot slot(serialize_graphs_);

  std::promise<std::vector<float>> global_promise;
  std::future<std::vector<float>> global_future = global_promise.get_future();
  std::vector<int64_t> global_shape;
  std::thread global_thread([&] {
    const CallScope scope(call);
    try {
      auto held = slot.take();  // fusion needs all of the global branch before any batch: it keeps the slot throughout
      std::vector<float> features = global_features(source, grid, plan, global_shape);
      if (options_.release_heap) release_free_heap();
      held = {};
      global_promise.set_value(std::move(features));
    } catch (...) {
      global_promise.set_exception(std::current_exception());
    }
  });
  // The local outputs wait for the fusion where it reads them: in device memory with --device cuda (they never
  // come back to the host), in host memory otherwise.
  const Ort::MemoryInfo handoff = options_.device == "cuda"
                                      ? Ort::MemoryInfo("Cuda", OrtDeviceAllocator, options_.device_id, OrtMemTypeDefault)
                                      : Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::thread local_thread([&] {
    const CallScope scope(call);
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
        {
          auto held = slot.take();  // cutting the patches is CPU work too: it waits its turn like a graph
          reader.patches(start, batch.count, patches);
          const std::vector<int64_t> dims{batch.count, c, p, p};
          Ort::Value input = Ort::Value::CreateTensor<float>(cpu_memory(), patches.data(), patches.size(), dims.data(), dims.size());
          Ort::IoBinding binding(*local_.session);
          binding.BindInput(in_names[0], input);
          for (const char* name : out_names) binding.BindOutput(name, handoff);  // where the fusion reads them
          batch.values = ort_call("local graph", [&](Ort::RunOptions& run) {
            local_.session->Run(run, binding);
            return binding.GetOutputValues();
          });
        }
        std::vector<float>().swap(patches);
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

  // The fusion runs through one IoBinding per image: the global features are bound once, when they arrive,
  // and ONNX Runtime copies a bound input to the device of the provider that consumes it at bind time
  // (IOBinding::BindInput), so with --device cuda they go up once per image and stay on the device for every
  // fusion batch, instead of being copied by each Run. On the CPU binding copies nothing.
  std::vector<float> features;
  bool have_features = false;
  const auto out_names = c_names(fusion_.outputs);
  Ort::IoBinding binding(*fusion_.session);
  const std::string &local0 = fusion_.inputs.at(0), &local1 = fusion_.inputs.at(1), &global = fusion_.inputs.at(2), &box = fusion_.inputs.at(3);
  float no_data = 0.0f;  // the (never read) data pointer of the empty tensors that release a batch's local outputs
  std::vector<float> boxes, upsampled(static_cast<size_t>(k * p * p)), scratch;
  std::optional<UpsampleTaps> row_taps, col_taps;
  LocalBatch batch;
  while (queue.pop(batch)) {
    if (!have_features) {
      features = global_future.get();  // the global branch's failure surfaces here
      have_features = true;
      Ort::Value value = Ort::Value::CreateTensor<float>(cpu_memory(), features.data(), features.size(), global_shape.data(), global_shape.size());
      binding.BindInput(global.c_str(), value);  // copied to the fusion's device here, once
    }
    boxes.clear();
    for (int64_t i = batch.start; i < batch.start + batch.count; ++i) {
      const auto [y, x] = grid.origin(i);
      for (int64_t v : {x, y, x + p, y + p}) boxes.push_back(static_cast<float>(v));
    }
    const std::vector<int64_t> box_dims{batch.count, 4};
    Ort::Value box_value = Ort::Value::CreateTensor<float>(cpu_memory(), boxes.data(), boxes.size(), box_dims.data(), box_dims.size());
    binding.BindInput(local0.c_str(), batch.values[0]);
    binding.BindInput(local1.c_str(), batch.values[1]);
    binding.BindInput(box.c_str(), box_value);
    binding.BindOutput(out_names[0], cpu_memory());  // the logits come back to the host, where stitching runs
    // the slot is held through the stitching too: upsampling and blending on a core the next local batch shares
    // slowed that batch's graph by more than their own time
    auto held = slot.take();
    std::vector<Ort::Value> out = ort_call("fusion graph", [&](Ort::RunOptions& run) {
      fusion_.session->Run(run, binding);
      return binding.GetOutputValues();
    });
    // the batch's local outputs: free their queue slot and memory now (the binding would hold them until the next
    // batch), by binding empty tensors of the same rank in their place; the features stay bound
    for (const std::string* name : {&local0, &local1}) {
      auto dims = batch.values[name == &local0 ? 0 : 1].GetTensorTypeAndShapeInfo().GetShape();
      dims[0] = 0;
      binding.BindInput(name->c_str(), Ort::Value::CreateTensor<float>(cpu_memory(), &no_data, 0, dims.data(), dims.size()));
    }
    batch.values.clear();
    binding.ClearBoundOutputs();  // `out` keeps the logits alive while they are stitched
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
    out.clear();
    held = {};
    if (options_.release_heap) release_free_heap();  // the batch's activations are freed: give them back before the next
  }
  if (!stitcher.done())
    fail(GLSNET_ERROR_RUNTIME, "scheduler stitched " + std::to_string(stitcher.next_index()) + " of " + std::to_string(grid.size()) + " patches");
  if (kept_blocks_.cache) {  // in the process while this image ran (other images' runs count too)
    const ActivationCache::Counts after = kept_blocks_.cache->counts();
    log_to(&options_.log, GLSNET_LOG_VERBOSE,
           source.name + ": activation blocks of 1 MiB or more: " + std::to_string((after.fresh_bytes - blocks_before.fresh_bytes) >> 20) +
               " MiB of new pages, " + std::to_string(after.reused_blocks - blocks_before.reused_blocks) + " kept blocks reused");
  }
}

}  // namespace glsnet
