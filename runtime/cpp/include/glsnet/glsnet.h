/* glsnet: run a GLSNet bundle (glsnet-export) from C or C++, with no Python.
 *
 * A stable C ABI: an opaque handle, status codes (never exceptions), and for every failing call a
 * one-line message from glsnet_last_error() on the calling thread. Null pointers and buffers of the
 * wrong size are errors, not crashes. One handle may be used from several threads at once; only
 * glsnet_close must not race with other calls on the same handle.
 *
 * The algorithm (patch grid, normalisation, banding, batching, stitching, argmax) is the Python
 * runtime's, written down in docs/runtime-algorithm.md: masks are byte-identical to `glsnet run`.
 */
#ifndef GLSNET_H
#define GLSNET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(GLSNET_BUILDING)
#define GLSNET_API __attribute__((visibility("default")))
#else
#define GLSNET_API
#endif

#define GLSNET_ABI_VERSION 1

typedef enum glsnet_status {
  GLSNET_OK = 0,
  GLSNET_ERROR_INVALID_ARGUMENT = 1, /* null pointer, wrong buffer size, bad option value */
  GLSNET_ERROR_BUNDLE = 2,           /* missing, incomplete, tampered or other-schema bundle */
  GLSNET_ERROR_INPUT = 3,            /* unreadable or unusable image */
  GLSNET_ERROR_OUTPUT = 4,           /* an output file cannot be written (nothing partial is left) */
  GLSNET_ERROR_MEMORY = 5,           /* the memory budget is too small, or allocation failed */
  GLSNET_ERROR_RUNTIME = 6,          /* ONNX Runtime failed, or a provider is unavailable */
  GLSNET_ERROR_CANCELLED = 7         /* a row callback asked to stop, glsnet_cancel, or the call's deadline passed */
} glsnet_status;

typedef struct glsnet_handle glsnet_handle;

/* Versioned structs: struct_size is the caller's sizeof, set by the init functions. A library newer than the caller's header accepts the
 * older, smaller struct and gives the fields it lacks their defaults; a struct larger than the library knows
 * (a header newer than the library) is refused with GLSNET_ERROR_INVALID_ARGUMENT. */

/* Log messages: ONNX Runtime's (session creation, runs) and the runtime's own warnings (libtiff, libpng). Levels are
 * ONNX Runtime's severities. The callback may run on any thread (ONNX Runtime's included), never concurrently for
 * two messages, and not after glsnet_close of its handle returned; the message is valid during the call only. */
typedef enum glsnet_log_level {
  GLSNET_LOG_VERBOSE = 0,
  GLSNET_LOG_INFO = 1,
  GLSNET_LOG_WARNING = 2,
  GLSNET_LOG_ERROR = 3,
  GLSNET_LOG_FATAL = 4
} glsnet_log_level;
typedef void (*glsnet_log_callback)(void* user_data, int32_t level, const char* message);

/* Options of glsnet_open. Fill with glsnet_options_init_sized(&o, sizeof o), then change what you need. */
typedef struct glsnet_options {
  uint32_t struct_size;      /* sizeof(glsnet_options): lets later versions add fields */
  const char* precision;     /* "fp32" (NULL: fp32), "fp16" or "int8" */
  const char* device;        /* "cpu" (NULL: cpu), "cuda" or "tensorrt" (ONNX Runtime execution providers) */
  int32_t threads;           /* ONNX Runtime intra-op threads per graph; 0: one per core */
  int32_t batch_size;        /* patches per batch; 0: chosen by the memory plan */
  uint64_t max_memory;       /* memory budget in bytes of the handle, shared by its concurrent calls (a call waits while
                                the others hold too much); 0: none (default banding rule) */
  int32_t global_band_rows;  /* force the global branch into bands of this many rows (multiple of 32); 0: plan */
  int32_t global_halo;       /* rows of context above and below each global band (multiple of 32); -1: 256 */
  int32_t cpu_arena;         /* 1: ONNX Runtime's CPU memory arena on (default 0: off, lower peak memory) */
  int64_t max_pixels;        /* largest PNG/JPEG (decoded whole) accepted by glsnet_segment_file; 0: 500e6 */
  /* Fields below were added after ABI 1's first release; older callers' smaller structs get their defaults. */
  int32_t release_heap;      /* 1: hand freed heap back to the system (glibc malloc_trim) after loading, after the
                                global branch and after each batch, so RSS follows what is held (glsnet-cpp does);
                                default 0: the host's allocator is left alone */
  int32_t device_id;         /* the GPU the cuda/tensorrt providers run on (default 0); ignored on the cpu */
  const char* bands;         /* input bands the model reads instead of the bundle's, as `glsnet run --bands`: "3,2,1"
                                (one per model band, from 0); NULL or "": the bundle's */
  glsnet_log_callback log_callback; /* NULL (default): ONNX Runtime logs errors to stderr as it does by itself */
  void* log_user_data;       /* passed to log_callback */
  int32_t log_level;         /* least severe glsnet_log_level delivered to log_callback (default GLSNET_LOG_WARNING) */
  int32_t min_overlap;       /* minimum overlap of neighbouring patches in pixels, as `glsnet run --min-overlap`
                                (0 <= min_overlap < the bundle's patch size); -1 (default): the bundle's patch.min_overlap */
} glsnet_options;

/* The batch size and global banding an image of a given size runs with. */
typedef struct glsnet_plan_info {
  uint32_t struct_size;      /* set to sizeof(glsnet_plan_info) before the call */
  int32_t batch_size;
  int32_t global_band_rows;  /* 0: the global graph sees the whole (padded) image at once */
  int32_t patches;
  int32_t grid_rows;
  int32_t grid_cols;
  uint64_t estimate_bytes;
  uint64_t budget_bytes;     /* 0: no budget */
} glsnet_plan_info;

/* Receives finished mask rows, top to bottom: `rows` rows of `width` class indices starting at image
 * row `top`. The memory is valid during the call only. Return 0 to go on, anything else to stop
 * (the segment call then returns GLSNET_ERROR_CANCELLED). */
typedef int (*glsnet_row_callback)(void* user_data, int64_t top, int64_t rows, int64_t width,
                                   const uint8_t* mask_rows);

/* Init functions write `size` bytes at most (pass sizeof *your* struct), so a binary built against an older
 * glsnet.h never has bytes written past its struct. glsnet_options_init, kept for binaries built against ABI 1's
 * first release, fills that release's fields only (struct_size = their size): new code calls
 * glsnet_options_init_sized(&options, sizeof options). */
GLSNET_API void glsnet_options_init(glsnet_options* options);
GLSNET_API void glsnet_options_init_sized(glsnet_options* options, size_t size);

/* Stopping a segment call: pass a token in glsnet_image.cancel or glsnet_file_options.cancel, then call
 * glsnet_cancel(token) from any thread. Every graph run (global branch, local batches, fusion) checks it first
 * and a run in flight is terminated (ONNX Runtime's terminate flag), so the call returns GLSNET_ERROR_CANCELLED
 * within one patch batch and writes no output. A timeout_ms deadline ends a call the same way, checked before
 * each graph run. A token stays cancelled; destroy it only after the calls using it have returned. */
typedef struct glsnet_cancel_token glsnet_cancel_token;
GLSNET_API glsnet_cancel_token* glsnet_cancel_token_create(void);
GLSNET_API void glsnet_cancel(glsnet_cancel_token* token);
GLSNET_API void glsnet_cancel_token_destroy(glsnet_cancel_token* token);

/* The sample type of an image buffer. */
typedef enum glsnet_pixel_type {
  GLSNET_PIXEL_UINT8 = 0,
  GLSNET_PIXEL_UINT16 = 1,
  GLSNET_PIXEL_FLOAT32 = 2
} glsnet_pixel_type;

/* A typed, strided image: height rows of width x channels interleaved samples, row r at
 * (const char*)pixels + r * row_pitch. Fill with glsnet_image_init(&image, sizeof image), then set the fields. */
typedef struct glsnet_image {
  uint32_t struct_size;     /* sizeof(glsnet_image) */
  int32_t pixel_type;       /* glsnet_pixel_type; default GLSNET_PIXEL_UINT8 */
  const void* pixels;       /* the first sample of row 0 (aligned for its type) */
  size_t pixels_size;       /* bytes readable from pixels: at least (height - 1) * row_pitch + width * channels * sample size */
  int64_t height;
  int64_t width;
  int32_t channels;
  int64_t row_pitch;        /* bytes from one row to the next; 0: packed (width * channels * sample size) */
  /* How the values map onto the range the model was trained on (the manifest's input_pixels), as `glsnet run
   * --input-range`: "MIN,MAX" for every band, "MIN,MAX/MIN,MAX/..." one per band, or "pLOW,pHIGH" (a percentile
   * stretch per band). NULL or "": none, and a pixel type other than the manifest's is refused. */
  const char* input_range;
  glsnet_cancel_token* cancel; /* NULL, or a token: glsnet_cancel(token) from any thread stops the call */
  int64_t timeout_ms;          /* 0: none; else the call stops once it has run this long */
} glsnet_image;

GLSNET_API void glsnet_image_init(glsnet_image* image, size_t size); /* size: sizeof(glsnet_image) */

/* Options of glsnet_segment_file_with. Fill with glsnet_file_options_init(&o, sizeof o). */
typedef struct glsnet_file_options {
  uint32_t struct_size;     /* sizeof(glsnet_file_options) */
  const char* format;       /* "png" (NULL: png) or "tif" */
  int32_t color;            /* non-zero: also write <stem>_color.<format> (default 1) */
  const char* input_range;  /* as glsnet_image.input_range; needed for 16-bit and float images of an 8-bit model */
  glsnet_cancel_token* cancel; /* as glsnet_image.cancel */
  int64_t timeout_ms;          /* as glsnet_image.timeout_ms */
  int32_t stats;               /* non-zero: also write <stem>_stats.json, per-class pixel counts and fractions as
                                  `glsnet run --stats` writes them (default 0) */
} glsnet_file_options;

GLSNET_API void glsnet_file_options_init(glsnet_file_options* options, size_t size); /* size: sizeof(glsnet_file_options) */

/* Open a bundle directory: validates manifest.json (schema, keys, paths), verifies the graphs'
 * sha256 and creates the three ONNX Runtime sessions. `options` may be NULL (defaults). */
GLSNET_API glsnet_status glsnet_open(const char* bundle_dir, const glsnet_options* options, glsnet_handle** out_handle);

/* Segment uint8 pixels [height, width, channels] (row-major, interleaved) into out_mask [height, width].
 * pixels_size and out_mask_size are the buffers' sizes in bytes, checked. */
GLSNET_API glsnet_status glsnet_segment(glsnet_handle* handle, const uint8_t* pixels, size_t pixels_size,
                                        int64_t height, int64_t width, int32_t channels,
                                        uint8_t* out_mask, size_t out_mask_size);

/* Like glsnet_segment, but hands finished rows to `callback` as soon as no later patch touches them. */
GLSNET_API glsnet_status glsnet_segment_rows(glsnet_handle* handle, const uint8_t* pixels, size_t pixels_size,
                                             int64_t height, int64_t width, int32_t channels,
                                             glsnet_row_callback callback, void* user_data);

/* Segment an image file (PNG, JPEG, TIFF) and write <stem>_mask.<format> (and <stem>_color.<format>
 * when `color` is non-zero) into output_dir (created if missing). format: "png" or "tif" (NULL: png). TIFF outputs
 * of a GeoTIFF input carry its georeferencing tags (ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory,
 * GeoDoubleParams, GeoAsciiParams), as `glsnet run` writes them.
 * Files are written under temporary names and renamed at the end: on error no output is left. */
GLSNET_API glsnet_status glsnet_segment_file(glsnet_handle* handle, const char* image_path, const char* output_dir,
                                             const char* format, int color);

/* Segment a typed, strided image into out_mask [height, width] (out_mask_size bytes, checked). */
GLSNET_API glsnet_status glsnet_segment_image(glsnet_handle* handle, const glsnet_image* image, uint8_t* out_mask,
                                              size_t out_mask_size);

/* Like glsnet_segment_image, but hands finished rows to `callback` (as glsnet_segment_rows). */
GLSNET_API glsnet_status glsnet_segment_image_rows(glsnet_handle* handle, const glsnet_image* image,
                                                   glsnet_row_callback callback, void* user_data);

/* glsnet_segment_file with options (NULL: defaults). A 16-bit or float image of a model trained on 8-bit
 * pixels is refused (GLSNET_ERROR_INPUT) unless options->input_range says how to map it. */
GLSNET_API glsnet_status glsnet_segment_file_with(glsnet_handle* handle, const char* image_path, const char* output_dir,
                                                  const glsnet_file_options* options);

/* The plan (batch size, banding, estimate) for an image of height x width. */
GLSNET_API glsnet_status glsnet_plan(glsnet_handle* handle, int64_t height, int64_t width, glsnet_plan_info* out_plan);

/* Number of classes (mask values are 0 .. n-1) and the input bands the model reads. */
GLSNET_API glsnet_status glsnet_num_classes(glsnet_handle* handle, int32_t* out_classes);
GLSNET_API glsnet_status glsnet_input_bands(glsnet_handle* handle, int32_t* out_bands);

/* Release the handle (NULL is accepted). No other call may use it concurrently or afterwards. */
GLSNET_API void glsnet_close(glsnet_handle* handle);

/* The message of the last failing call made on this thread ("" if none); valid until the next call. */
GLSNET_API const char* glsnet_last_error(void);
GLSNET_API const char* glsnet_status_string(glsnet_status status);
GLSNET_API int glsnet_abi_version(void);

#ifdef __cplusplus
}
#endif
#endif /* GLSNET_H */
