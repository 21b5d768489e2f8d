// The C ABI: every entry point catches everything, returns a status and leaves a one-line message.
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>

#include <cstring>
#include <new>

#include "band_selection.hpp"
#include "class_statistics.hpp"
#include "errors.hpp"
#include "glsnet/glsnet.h"
#include "input_range.hpp"
#include "logging.hpp"
#include "onnxruntime_pipeline.hpp"

struct glsnet_cancel_token {
  glsnet::CancelToken token;
};

struct glsnet_handle {
  std::unique_ptr<glsnet::Pipeline> pipeline;
};

namespace {

thread_local std::string last_error;

glsnet_status fail_with(glsnet_status status, const std::string& message) {
  last_error = message;
  return status;
}

template <typename F>
glsnet_status guarded(F&& body) {
  try {
    last_error.clear();
    body();
    return GLSNET_OK;
  } catch (const glsnet::Error& e) {
    return fail_with(e.status, e.what());
  } catch (const Ort::Exception& e) {
    return fail_with(GLSNET_ERROR_RUNTIME, std::string("ONNX Runtime failed: ") + e.what());
  } catch (const std::bad_alloc&) {
    return fail_with(GLSNET_ERROR_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail_with(GLSNET_ERROR_RUNTIME, e.what());
  } catch (...) {
    return fail_with(GLSNET_ERROR_RUNTIME, "unknown error");
  }
}

void require(bool ok, const std::string& message) {
  if (!ok) glsnet::fail(GLSNET_ERROR_INVALID_ARGUMENT, message);
}

// glsnet_options as ABI 1's first release laid it out: what glsnet_options_init may write.
constexpr size_t kOptionsAbi1Size = offsetof(glsnet_options, release_heap);

// Writes the first `size` bytes of `full` (at most sizeof(T)) into `out`, with struct_size saying how many.
template <typename T>
void fill_prefix(T* out, T full, size_t size) {
  if (!out || size < sizeof(uint32_t)) return;
  full.struct_size = static_cast<uint32_t>(std::min(size, sizeof(T)));
  std::memcpy(static_cast<void*>(out), &full, full.struct_size);
}

// A caller's versioned struct read into this library's layout: an older, smaller one is a prefix (the fields it
// lacks keep `defaults`); one larger than this library knows comes from a newer header and is refused.
template <typename T>
T versioned(const T* given, T defaults, const char* name, const char* init) {
  if (!given) return defaults;
  const uint32_t size = given->struct_size;
  require(size >= sizeof(uint32_t) && size <= sizeof(T),
          std::string(name) + ".struct_size is " + std::to_string(size) + "; this library (ABI " + std::to_string(GLSNET_ABI_VERSION) +
              ") takes 4 to " + std::to_string(sizeof(T)) + " bytes: fill it with " + init + " from the glsnet.h it links");
  std::memcpy(static_cast<void*>(&defaults), given, size);
  defaults.struct_size = sizeof(T);
  return defaults;
}

uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& what) {
  uint64_t out = 0;
  if (__builtin_mul_overflow(a, b, &out)) glsnet::fail(GLSNET_ERROR_INVALID_ARGUMENT, what + " overflows 64 bits");
  return out;
}

uint64_t checked_add(uint64_t a, uint64_t b, const std::string& what) {
  uint64_t out = 0;
  if (__builtin_add_overflow(a, b, &out)) glsnet::fail(GLSNET_ERROR_INVALID_ARGUMENT, what + " overflows 64 bits");
  return out;
}

std::string dims(int64_t height, int64_t width, int64_t channels) {
  return std::to_string(height) + " x " + std::to_string(width) + " x " + std::to_string(channels);
}

const char* type_name(int32_t type) {
  return type == GLSNET_PIXEL_UINT16 ? "uint16" : type == GLSNET_PIXEL_FLOAT32 ? "float32" : "uint8";
}

// Checks an image against its buffer; returns it with row_pitch filled in.
glsnet_image check_image(glsnet_handle* handle, const glsnet_image* given) {
  require(handle != nullptr, "handle is NULL; open a bundle with glsnet_open first");
  require(given != nullptr, "image is NULL; pass a glsnet_image filled with glsnet_image_init");
  glsnet_image defaults;
  glsnet_image_init(&defaults, sizeof defaults);
  glsnet_image image = versioned(given, defaults, "image", "glsnet_image_init");
  require(image.pixels != nullptr, "image.pixels is NULL; pass the image's [height, width, channels] samples");
  const int64_t sample = glsnet::sample_bytes(image.pixel_type);
  require(sample > 0, "image.pixel_type " + std::to_string(image.pixel_type) + " is not one of GLSNET_PIXEL_UINT8, _UINT16, _FLOAT32");
  require(image.height > 0 && image.width > 0 && image.channels > 0,
          "image size must be positive, got " + dims(image.height, image.width, image.channels));
  require(image.height < (int64_t(1) << 31) && image.width < (int64_t(1) << 31) && image.channels <= 4096,
          "image size " + dims(image.height, image.width, image.channels) + " is implausibly large");
  const uint64_t packed = checked_mul(checked_mul(uint64_t(image.width), uint64_t(image.channels), "width x channels"), uint64_t(sample),
                                      "a row's bytes");
  require(image.row_pitch >= 0, "image.row_pitch must be >= 0 (0: packed rows), got " + std::to_string(image.row_pitch));
  if (image.row_pitch == 0) image.row_pitch = static_cast<int64_t>(packed);
  require(uint64_t(image.row_pitch) >= packed, "image.row_pitch " + std::to_string(image.row_pitch) + " is smaller than a row of " +
                                                   std::to_string(image.width) + " x " + std::to_string(image.channels) + " " +
                                                   type_name(image.pixel_type) + " samples (" + std::to_string(packed) + " bytes)");
  require(image.row_pitch % sample == 0 && reinterpret_cast<uintptr_t>(image.pixels) % uintptr_t(sample) == 0,
          "image.pixels and image.row_pitch must be aligned to the " + std::to_string(sample) + "-byte " + type_name(image.pixel_type) + " samples");
  const uint64_t needed = checked_add(checked_mul(uint64_t(image.height - 1), uint64_t(image.row_pitch), "height x row_pitch"), packed,
                                      "the image's bytes");
  if (image.row_pitch == static_cast<int64_t>(packed))
    require(image.pixels_size == needed, "pixels buffer has " + std::to_string(image.pixels_size) + " bytes; a " +
                                             dims(image.height, image.width, image.channels) + " " + type_name(image.pixel_type) +
                                             " image needs " + std::to_string(needed));
  else
    require(image.pixels_size >= needed, "pixels buffer has " + std::to_string(image.pixels_size) + " bytes; a " +
                                             dims(image.height, image.width, image.channels) + " " + type_name(image.pixel_type) +
                                             " image with rows " + std::to_string(image.row_pitch) + " bytes apart needs " +
                                             std::to_string(needed));
  return image;
}

glsnet::CallControl call_control(glsnet_cancel_token* cancel, int64_t timeout_ms) {
  require(timeout_ms >= 0, "timeout_ms must be >= 0 (0: none), got " + std::to_string(timeout_ms));
  glsnet::CallControl call;
  call.token = cancel ? &cancel->token : nullptr;
  call.timeout_ms = timeout_ms;
  return call;
}

void segment_image(glsnet_handle* handle, const glsnet_image& image, const glsnet::Stitcher::RowSink& sink) {
  const glsnet::CallControl call = call_control(image.cancel, image.timeout_ms);
  const glsnet::LogScope log(&handle->pipeline->log_target());
  auto source = glsnet::array_source(image.pixels, image.pixel_type, image.height, image.width, image.channels, image.row_pitch,
                                     "array of shape (" + std::to_string(image.height) + ", " + std::to_string(image.width) + ", " +
                                         std::to_string(image.channels) + ")");
  const auto range = glsnet::parse_input_range(image.input_range ? image.input_range : "");
  const auto& manifest = handle->pipeline->manifest();
  auto conformed = glsnet::conform_source(*source, manifest.input_pixels, manifest.normalization, range);
  handle->pipeline->run(conformed ? *conformed : *source, sink, &call);
}

glsnet_image packed_uint8(const uint8_t* pixels, size_t pixels_size, int64_t height, int64_t width, int32_t channels) {
  glsnet_image image;
  glsnet_image_init(&image, sizeof image);
  image.pixels = pixels;
  image.pixels_size = pixels_size;
  image.height = height;
  image.width = width;
  image.channels = channels;
  return image;
}

void check_mask_buffer(const uint8_t* out_mask, size_t out_mask_size, int64_t height, int64_t width) {
  require(out_mask != nullptr, "out_mask is NULL; pass a uint8 [height, width] buffer");
  const uint64_t expected = checked_mul(uint64_t(height), uint64_t(width), "height x width");
  require(out_mask_size == expected, "out_mask has " + std::to_string(out_mask_size) + " bytes; a " + std::to_string(height) + " x " +
                                         std::to_string(width) + " mask needs " + std::to_string(expected));
}

glsnet_status segment_into(glsnet_handle* handle, const glsnet_image* given, uint8_t* out_mask, size_t out_mask_size) {
  return guarded([&] {
    const glsnet_image image = check_image(handle, given);
    check_mask_buffer(out_mask, out_mask_size, image.height, image.width);
    segment_image(handle, image, [&](int64_t top, int64_t rows, const uint8_t* mask) {
      std::memcpy(out_mask + top * image.width, mask, static_cast<size_t>(rows * image.width));
    });
  });
}

glsnet_status segment_to_callback(glsnet_handle* handle, const glsnet_image* given, glsnet_row_callback callback, void* user_data) {
  return guarded([&] {
    const glsnet_image image = check_image(handle, given);
    require(callback != nullptr, "callback is NULL; pass a function that receives finished mask rows");
    segment_image(handle, image, [&](int64_t top, int64_t rows, const uint8_t* mask) {
      if (callback(user_data, top, rows, image.width, mask) != 0)
        glsnet::fail(GLSNET_ERROR_CANCELLED, "the row callback stopped segmentation at row " + std::to_string(top));
    });
  });
}

}  // namespace

extern "C" {

void glsnet_options_init(glsnet_options* options) { glsnet_options_init_sized(options, kOptionsAbi1Size); }

void glsnet_options_init_sized(glsnet_options* options, size_t size) {
  glsnet_options full;
  std::memset(static_cast<void*>(&full), 0, sizeof full);
  full.global_halo = -1;
  full.log_level = GLSNET_LOG_WARNING;
  full.min_overlap = -1;
  fill_prefix(options, full, size);
}

glsnet_status glsnet_open(const char* bundle_dir, const glsnet_options* options, glsnet_handle** out_handle) {
  return guarded([&] {
    require(out_handle != nullptr, "out_handle is NULL; pass the address of a glsnet_handle* to receive the handle");
    *out_handle = nullptr;
    require(bundle_dir != nullptr, "bundle_dir is NULL; pass the path of a bundle written by glsnet-export");
    glsnet::RuntimeOptions o;
    glsnet_options defaults;
    glsnet_options_init_sized(&defaults, sizeof defaults);
    const glsnet_options given = versioned(options, defaults, "options", "glsnet_options_init");
    options = &given;
    {
      if (options->precision) o.precision = options->precision;
      if (options->device) o.device = options->device;
      o.threads = options->threads;
      if (options->batch_size < 0) glsnet::fail(GLSNET_ERROR_INVALID_ARGUMENT, "batch size must be >= 1, got " + std::to_string(options->batch_size));
      if (options->batch_size > 0) o.batch_size = options->batch_size;
      if (options->max_memory > 0) o.max_memory = static_cast<int64_t>(options->max_memory);
      if (options->global_band_rows != 0) o.global_band_rows = options->global_band_rows;
      if (options->global_halo != -1) o.global_halo = options->global_halo;
      o.cpu_arena = options->cpu_arena != 0;
      if (options->max_pixels < 0) glsnet::fail(GLSNET_ERROR_INVALID_ARGUMENT, "max_pixels must be >= 0");
      if (options->max_pixels > 0) o.max_pixels = options->max_pixels;
      o.release_heap = options->release_heap != 0;
      if (options->device_id < 0) glsnet::fail(GLSNET_ERROR_INVALID_ARGUMENT, "device_id must be >= 0, got " + std::to_string(options->device_id));
      o.device_id = options->device_id;
      o.bands = glsnet::parse_bands(options->bands ? options->bands : "");
      if (options->log_level < GLSNET_LOG_VERBOSE || options->log_level > GLSNET_LOG_FATAL)
        glsnet::fail(GLSNET_ERROR_INVALID_ARGUMENT, "log_level must be a glsnet_log_level (0 verbose .. 4 fatal), got " + std::to_string(options->log_level));
      o.log = {options->log_callback, options->log_user_data, options->log_level};
      if (options->min_overlap != -1) o.min_overlap = options->min_overlap;  // checked against the bundle's patch size by the Pipeline
    }
    auto handle = std::make_unique<glsnet_handle>();
    handle->pipeline = std::make_unique<glsnet::Pipeline>(bundle_dir, o);
    *out_handle = handle.release();
  });
}

void glsnet_image_init(glsnet_image* image, size_t size) {
  glsnet_image full;
  std::memset(static_cast<void*>(&full), 0, sizeof full);
  full.pixel_type = GLSNET_PIXEL_UINT8;
  fill_prefix(image, full, size);
}

void glsnet_file_options_init(glsnet_file_options* options, size_t size) {
  glsnet_file_options full;
  std::memset(static_cast<void*>(&full), 0, sizeof full);
  full.color = 1;
  fill_prefix(options, full, size);
}

glsnet_status glsnet_segment(glsnet_handle* handle, const uint8_t* pixels, size_t pixels_size, int64_t height, int64_t width,
                             int32_t channels, uint8_t* out_mask, size_t out_mask_size) {
  if (!pixels) return fail_with(GLSNET_ERROR_INVALID_ARGUMENT, "pixels is NULL; pass the image's uint8 [height, width, channels] buffer");
  const glsnet_image image = packed_uint8(pixels, pixels_size, height, width, channels);
  return segment_into(handle, &image, out_mask, out_mask_size);
}

glsnet_status glsnet_segment_rows(glsnet_handle* handle, const uint8_t* pixels, size_t pixels_size, int64_t height, int64_t width,
                                  int32_t channels, glsnet_row_callback callback, void* user_data) {
  if (!pixels) return fail_with(GLSNET_ERROR_INVALID_ARGUMENT, "pixels is NULL; pass the image's uint8 [height, width, channels] buffer");
  const glsnet_image image = packed_uint8(pixels, pixels_size, height, width, channels);
  return segment_to_callback(handle, &image, callback, user_data);
}

glsnet_status glsnet_segment_image(glsnet_handle* handle, const glsnet_image* image, uint8_t* out_mask, size_t out_mask_size) {
  return segment_into(handle, image, out_mask, out_mask_size);
}

glsnet_status glsnet_segment_image_rows(glsnet_handle* handle, const glsnet_image* image, glsnet_row_callback callback, void* user_data) {
  return segment_to_callback(handle, image, callback, user_data);
}

glsnet_status glsnet_segment_file(glsnet_handle* handle, const char* image_path, const char* output_dir, const char* format, int color) {
  glsnet_file_options options;
  glsnet_file_options_init(&options, sizeof options);
  options.format = format;
  options.color = color;
  return glsnet_segment_file_with(handle, image_path, output_dir, &options);
}

glsnet_status glsnet_segment_file_with(glsnet_handle* handle, const char* image_path, const char* output_dir,
                                       const glsnet_file_options* file_options) {
  return guarded([&] {
    require(handle != nullptr, "handle is NULL; open a bundle with glsnet_open first");
    require(image_path != nullptr, "image_path is NULL");
    require(output_dir != nullptr, "output_dir is NULL; pass an output folder");
    glsnet_file_options defaults;
    glsnet_file_options_init(&defaults, sizeof defaults);
    const glsnet_file_options options = versioned(file_options, defaults, "options", "glsnet_file_options_init");
    const std::string fmt = options.format ? options.format : "png";
    require(fmt == "png" || fmt == "tif", "output format '" + fmt + "' is not one of png, tif");
    const auto range = glsnet::parse_input_range(options.input_range ? options.input_range : "");
    const glsnet::CallControl call = call_control(options.cancel, options.timeout_ms);
    const glsnet::LogScope log(&handle->pipeline->log_target());
    const auto& manifest = handle->pipeline->manifest();
    auto source = glsnet::open_image(image_path, handle->pipeline->options().max_pixels);
    auto conformed = glsnet::conform_source(*source, manifest.input_pixels, manifest.normalization, range);
    const glsnet::ImageSource& input = conformed ? *conformed : *source;
    const std::string dir = output_dir, stem = glsnet::file_stem(image_path);
    glsnet::make_dirs(dir);
    const std::string stats_path = dir + "/" + stem + "_stats.json";
    for (const std::string& target : {dir + "/" + stem + "_mask." + fmt, dir + "/" + stem + "_color." + fmt, stats_path}) {
      // refuse before writing anything, so no output is half-done
      struct stat st {};
      if (stat(target.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
        glsnet::fail(GLSNET_ERROR_OUTPUT, target + ": cannot write an output here (a folder has this name); choose another output folder with -o");
    }
    const auto& palette = manifest.palette;
    const auto& tags = source->geotags;  // of the file itself: a range-mapped view borrows it
    auto mask_writer = glsnet::open_writer(dir + "/" + stem + "_mask." + fmt, fmt, input.height, input.width, 1, tags);
    std::unique_ptr<glsnet::MaskWriter> color_writer;
    if (options.color) color_writer = glsnet::open_writer(dir + "/" + stem + "_color." + fmt, fmt, input.height, input.width, 3, tags);
    std::vector<uint8_t> rgb;
    glsnet::ClassCounts counts;
    handle->pipeline->run(
        input,
        [&](int64_t, int64_t rows, const uint8_t* mask) {
      mask_writer->write_rows(mask, rows);
      if (options.stats) counts.add(mask, rows * input.width);
      if (color_writer) {
        rgb.resize(static_cast<size_t>(rows * input.width * 3));
        for (int64_t i = 0; i < rows * input.width; ++i) {
          const auto& c = palette[std::min<size_t>(mask[i], palette.size() - 1)];
          std::memcpy(rgb.data() + 3 * i, c.data(), 3);
        }
        color_writer->write_rows(rgb.data(), rows);
      }
        },
        &call);
    call.check();  // a cancel or deadline that came after the last graph run still writes nothing
    std::vector<glsnet::MaskWriter*> writers{mask_writer.get()};
    if (color_writer) writers.push_back(color_writer.get());
    for (auto* w : writers) w->finish();
    std::unique_ptr<glsnet::MaskWriter> stats_output;
    if (options.stats) {
      stats_output = glsnet::open_text_output(
          stats_path, glsnet::class_statistics_json(image_path, counts, manifest.classes, input.height, input.width));
      writers.push_back(stats_output.get());
    }
    glsnet::commit_all(writers);
  });
}

glsnet_status glsnet_plan(glsnet_handle* handle, int64_t height, int64_t width, glsnet_plan_info* out_plan) {
  return guarded([&] {
    require(handle != nullptr, "handle is NULL; open a bundle with glsnet_open first");
    require(out_plan != nullptr, "out_plan is NULL; pass a glsnet_plan_info to fill");
    const uint32_t size = out_plan->struct_size;
    require(size >= sizeof(uint32_t) && size <= sizeof(glsnet_plan_info),
            "out_plan.struct_size is " + std::to_string(size) + "; this library (ABI " + std::to_string(GLSNET_ABI_VERSION) + ") takes 4 to " +
                std::to_string(sizeof(glsnet_plan_info)) + " bytes: set it to sizeof(glsnet_plan_info) from the glsnet.h it links");
    require(height > 0 && width > 0, "image size must be positive, got " + std::to_string(height) + " x " + std::to_string(width));
    require(height < (int64_t(1) << 31) && width < (int64_t(1) << 31), "image size " + std::to_string(height) + " x " + std::to_string(width) + " is implausibly large");
    const auto grid = handle->pipeline->grid_for(height, width);
    const auto plan = handle->pipeline->plan(grid, 0);
    glsnet_plan_info full{};
    full.struct_size = size;
    glsnet_plan_info* info = &full;
    info->batch_size = static_cast<int32_t>(plan.batch_size);
    info->global_band_rows = static_cast<int32_t>(plan.global_band_rows.value_or(0));
    info->patches = static_cast<int32_t>(grid.size());
    info->grid_rows = static_cast<int32_t>(grid.rows());
    info->grid_cols = static_cast<int32_t>(grid.cols());
    info->estimate_bytes = static_cast<uint64_t>(plan.estimate_bytes);
    info->budget_bytes = static_cast<uint64_t>(plan.budget_bytes.value_or(0));
    std::memcpy(static_cast<void*>(out_plan), info, size);  // an older caller's struct gets the fields it knows
  });
}

glsnet_status glsnet_num_classes(glsnet_handle* handle, int32_t* out_classes) {
  return guarded([&] {
    require(handle != nullptr && out_classes != nullptr, "handle and out_classes must not be NULL");
    *out_classes = static_cast<int32_t>(handle->pipeline->manifest().classes.size());
  });
}

glsnet_status glsnet_input_bands(glsnet_handle* handle, int32_t* out_bands) {
  return guarded([&] {
    require(handle != nullptr && out_bands != nullptr, "handle and out_bands must not be NULL");
    const auto& bands = handle->pipeline->manifest().normalization.bands;
    *out_bands = *std::max_element(bands.begin(), bands.end()) + 1;
  });
}

void glsnet_close(glsnet_handle* handle) { delete handle; }

glsnet_cancel_token* glsnet_cancel_token_create(void) { return new (std::nothrow) glsnet_cancel_token(); }

void glsnet_cancel(glsnet_cancel_token* token) {
  if (token) token->token.cancel();
}

void glsnet_cancel_token_destroy(glsnet_cancel_token* token) { delete token; }

const char* glsnet_last_error(void) { return last_error.c_str(); }

const char* glsnet_status_string(glsnet_status status) {
  switch (status) {
    case GLSNET_OK: return "ok";
    case GLSNET_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case GLSNET_ERROR_BUNDLE: return "bundle error";
    case GLSNET_ERROR_INPUT: return "input error";
    case GLSNET_ERROR_OUTPUT: return "output error";
    case GLSNET_ERROR_MEMORY: return "memory error";
    case GLSNET_ERROR_RUNTIME: return "runtime error";
    case GLSNET_ERROR_CANCELLED: return "cancelled";
  }
  return "unknown status";
}

int glsnet_abi_version(void) { return GLSNET_ABI_VERSION; }

}  // extern "C"
