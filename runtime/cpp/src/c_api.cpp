// The C ABI: every entry point catches everything, returns a status and leaves a one-line message.
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <cstring>
#include <new>

#include "errors.hpp"
#include "glsnet/glsnet.h"
#include "onnxruntime_pipeline.hpp"

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

void check_image_args(glsnet_handle* handle, const uint8_t* pixels, size_t pixels_size, int64_t height, int64_t width,
                      int32_t channels) {
  require(handle != nullptr, "handle is NULL; open a bundle with glsnet_open first");
  require(pixels != nullptr, "pixels is NULL; pass the image's uint8 [height, width, channels] buffer");
  require(height > 0 && width > 0 && channels > 0,
          "image size must be positive, got " + std::to_string(height) + " x " + std::to_string(width) + " x " + std::to_string(channels));
  require(height < (int64_t(1) << 31) && width < (int64_t(1) << 31) && channels <= 4096, "image size is implausibly large");
  const uint64_t expected = uint64_t(height) * uint64_t(width) * uint64_t(channels);
  require(pixels_size == expected, "pixels buffer has " + std::to_string(pixels_size) + " bytes; a " + std::to_string(height) + " x " +
                                       std::to_string(width) + " x " + std::to_string(channels) + " uint8 image needs " +
                                       std::to_string(expected));
}

void segment_rows(glsnet_handle* handle, const uint8_t* pixels, int64_t height, int64_t width, int32_t channels,
                  const glsnet::Stitcher::RowSink& sink) {
  auto source = glsnet::array_source(pixels, height, width, channels,
                                     "array of shape (" + std::to_string(height) + ", " + std::to_string(width) + ", " +
                                         std::to_string(channels) + ")");
  handle->pipeline->run(*source, sink);
}

}  // namespace

extern "C" {

void glsnet_options_init(glsnet_options* options) {
  if (!options) return;
  std::memset(options, 0, sizeof *options);
  options->struct_size = sizeof *options;
  options->global_halo = -1;
}

glsnet_status glsnet_open(const char* bundle_dir, const glsnet_options* options, glsnet_handle** out_handle) {
  return guarded([&] {
    require(out_handle != nullptr, "out_handle is NULL; pass the address of a glsnet_handle* to receive the handle");
    *out_handle = nullptr;
    require(bundle_dir != nullptr, "bundle_dir is NULL; pass the path of a bundle written by glsnet-export");
    glsnet::RuntimeOptions o;
    if (options) {
      require(options->struct_size >= sizeof(glsnet_options),
              "options.struct_size is " + std::to_string(options->struct_size) + "; fill options with glsnet_options_init");
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
    }
    auto handle = std::make_unique<glsnet_handle>();
    handle->pipeline = std::make_unique<glsnet::Pipeline>(bundle_dir, o);
    *out_handle = handle.release();
  });
}

glsnet_status glsnet_segment(glsnet_handle* handle, const uint8_t* pixels, size_t pixels_size, int64_t height, int64_t width,
                             int32_t channels, uint8_t* out_mask, size_t out_mask_size) {
  return guarded([&] {
    check_image_args(handle, pixels, pixels_size, height, width, channels);
    require(out_mask != nullptr, "out_mask is NULL; pass a uint8 [height, width] buffer");
    const uint64_t expected = uint64_t(height) * uint64_t(width);
    require(out_mask_size == expected, "out_mask has " + std::to_string(out_mask_size) + " bytes; a " + std::to_string(height) + " x " +
                                           std::to_string(width) + " mask needs " + std::to_string(expected));
    segment_rows(handle, pixels, height, width, channels, [&](int64_t top, int64_t rows, const uint8_t* mask) {
      std::memcpy(out_mask + top * width, mask, static_cast<size_t>(rows * width));
    });
  });
}

glsnet_status glsnet_segment_rows(glsnet_handle* handle, const uint8_t* pixels, size_t pixels_size, int64_t height, int64_t width,
                                  int32_t channels, glsnet_row_callback callback, void* user_data) {
  return guarded([&] {
    check_image_args(handle, pixels, pixels_size, height, width, channels);
    require(callback != nullptr, "callback is NULL; pass a function that receives finished mask rows");
    segment_rows(handle, pixels, height, width, channels, [&](int64_t top, int64_t rows, const uint8_t* mask) {
      if (callback(user_data, top, rows, width, mask) != 0)
        glsnet::fail(GLSNET_ERROR_CANCELLED, "the row callback stopped segmentation at row " + std::to_string(top));
    });
  });
}

glsnet_status glsnet_segment_file(glsnet_handle* handle, const char* image_path, const char* output_dir, const char* format, int color) {
  return guarded([&] {
    require(handle != nullptr, "handle is NULL; open a bundle with glsnet_open first");
    require(image_path != nullptr, "image_path is NULL");
    require(output_dir != nullptr, "output_dir is NULL; pass an output folder");
    const std::string fmt = format ? format : "png";
    require(fmt == "png" || fmt == "tif", "output format '" + fmt + "' is not one of png, tif");
    auto source = glsnet::open_image(image_path, handle->pipeline->options().max_pixels);
    const std::string dir = output_dir, stem = glsnet::file_stem(image_path);
    glsnet::make_dirs(dir);
    for (const char* kind : {"_mask.", "_color."}) {  // refuse before writing anything, so no output is half-done
      const std::string target = dir + "/" + stem + kind + fmt;
      struct stat st {};
      if (stat(target.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
        glsnet::fail(GLSNET_ERROR_OUTPUT, target + ": cannot write an output here (a folder has this name); choose another output folder with -o");
    }
    const auto& palette = handle->pipeline->manifest().palette;
    auto mask_writer = glsnet::open_writer(dir + "/" + stem + "_mask." + fmt, fmt, source->height, source->width, 1);
    std::unique_ptr<glsnet::MaskWriter> color_writer;
    if (color) color_writer = glsnet::open_writer(dir + "/" + stem + "_color." + fmt, fmt, source->height, source->width, 3);
    std::vector<uint8_t> rgb;
    handle->pipeline->run(*source, [&](int64_t, int64_t rows, const uint8_t* mask) {
      mask_writer->write_rows(mask, rows);
      if (color_writer) {
        rgb.resize(static_cast<size_t>(rows * source->width * 3));
        for (int64_t i = 0; i < rows * source->width; ++i) {
          const auto& c = palette[std::min<size_t>(mask[i], palette.size() - 1)];
          std::memcpy(rgb.data() + 3 * i, c.data(), 3);
        }
        color_writer->write_rows(rgb.data(), rows);
      }
    });
    mask_writer->finish();
    if (color_writer) color_writer->finish();
    for (auto* w : {mask_writer.get(), color_writer.get()})
      if (w && std::rename(w->temporary().c_str(), w->path().c_str()) != 0)
        glsnet::fail(GLSNET_ERROR_OUTPUT, w->path() + ": cannot write an output here (" + std::strerror(errno) + ")");
  });
}

glsnet_status glsnet_plan(glsnet_handle* handle, int64_t height, int64_t width, glsnet_plan_info* out_plan) {
  return guarded([&] {
    require(handle != nullptr, "handle is NULL; open a bundle with glsnet_open first");
    require(out_plan != nullptr, "out_plan is NULL; pass a glsnet_plan_info to fill");
    require(out_plan->struct_size >= sizeof(glsnet_plan_info), "out_plan.struct_size must be sizeof(glsnet_plan_info)");
    require(height > 0 && width > 0, "image size must be positive, got " + std::to_string(height) + " x " + std::to_string(width));
    const auto grid = handle->pipeline->grid_for(height, width);
    const auto plan = handle->pipeline->plan(grid, 0);
    out_plan->batch_size = static_cast<int32_t>(plan.batch_size);
    out_plan->global_band_rows = static_cast<int32_t>(plan.global_band_rows.value_or(0));
    out_plan->patches = static_cast<int32_t>(grid.size());
    out_plan->grid_rows = static_cast<int32_t>(grid.rows());
    out_plan->grid_cols = static_cast<int32_t>(grid.cols());
    out_plan->estimate_bytes = static_cast<uint64_t>(plan.estimate_bytes);
    out_plan->budget_bytes = static_cast<uint64_t>(plan.budget_bytes.value_or(0));
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
