/* Every error path of the C API, run under AddressSanitizer and UndefinedBehaviorSanitizer by
 * tests/runtime/cpp/test_cpp_runtime.py: each failing call returns its status and a message naming the problem,
 * and no partial output file remains.
 * Usage: glsnet-c-api-test GOOD_BUNDLE TAMPERED_BUNDLE SCHEMA_BUNDLE ESCAPE_BUNDLE WORKDIR */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <png.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <tiffio.h>

#include "glsnet/glsnet.h"

static int failures = 0;

/* Interposed on libglsnet's calls (the executable's definitions come first), to count calls and inject failures. */
static int fail_color_rename = 0, fail_stats_rename = 0, fail_png_header = 0, trim_calls = 0, strip_reads = 0, host_tiff_errors = 0;

int rename(const char* from, const char* to) {
  static int (*real)(const char*, const char*) = NULL;
  if (!real) real = (int (*)(const char*, const char*))dlsym(RTLD_NEXT, "rename");
  if (fail_color_rename && strstr(to, "_color.") != NULL) return -1; /* errno as left: the message is not checked */
  if (fail_stats_rename && strstr(to, "_stats.json") != NULL) return -1;
  return real(from, to);
}

void png_write_info(png_structrp png, png_const_inforp info) {
  static void (*real)(png_structrp, png_const_inforp) = NULL;
  if (!real) real = (void (*)(png_structrp, png_const_inforp))dlsym(RTLD_NEXT, "png_write_info");
  if (fail_png_header) png_error(png, "injected failure writing the header");
  real(png, info);
}

int malloc_trim(size_t pad) {
  static int (*real)(size_t) = NULL;
  if (!real) real = (int (*)(size_t))dlsym(RTLD_NEXT, "malloc_trim");
  ++trim_calls;
  return real ? real(pad) : 0;
}

tmsize_t TIFFReadEncodedStrip(TIFF* tif, uint32_t strip, void* buf, tmsize_t size) {
  static tmsize_t (*real)(TIFF*, uint32_t, void*, tmsize_t) = NULL;
  if (!real) real = (tmsize_t(*)(TIFF*, uint32_t, void*, tmsize_t))dlsym(RTLD_NEXT, "TIFFReadEncodedStrip");
  ++strip_reads;
  return real(tif, strip, buf, size);
}

static void host_tiff_error_handler(const char* module, const char* fmt, va_list args) {
  (void)module, (void)fmt, (void)args;
  ++host_tiff_errors;
}

static void expect(const char* what, glsnet_status got, glsnet_status want, const char* needle) {
  const char* message = glsnet_last_error();
  int ok = got == want && (want == GLSNET_OK || (message[0] && strstr(message, needle) != NULL));
  printf("%s %s: status %d (%s), message: %s\n", ok ? "PASS" : "FAIL", what, (int)got, glsnet_status_string(got), message);
  if (!ok) ++failures;
}

static int entries(const char* dir) { /* files in dir, or -1 when it does not exist */
  DIR* d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent* e;
  while ((e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) ++n;
  closedir(d);
  return n;
}

static void write_file(const char* path, const char* data) {
  FILE* f = fopen(path, "wb");
  if (f) {
    fputs(data, f);
    fclose(f);
  }
}

static int stop_at_first_rows(void* user, int64_t top, int64_t rows, int64_t width, const uint8_t* mask) {
  (void)top, (void)rows, (void)width, (void)mask;
  ++*(int*)user;
  return 1;
}

static void check(const char* what, int ok) {
  printf("%s %s\n", ok ? "PASS" : "FAIL", what);
  if (!ok) ++failures;
}

static long file_size(const char* path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* The defects of issue 22, each of which this program caught before its fix. */
static void defects(glsnet_handle* h, const char* good, const char* work) {
  char image[4096], out[4096], path[8192];
  snprintf(image, sizeof image, "%s/image.png", work);

  /* Dimensions whose byte count overflows 64 bits (2^30 x 2^30 x 16 = 2^64 wraps to 0) are refused, not read. */
  static uint8_t one[1], mask1[1];
  expect("overflowing dimensions", glsnet_segment(h, one, 0, (int64_t)1 << 30, (int64_t)1 << 30, 16, mask1, (size_t)1 << 60),
         GLSNET_ERROR_INVALID_ARGUMENT, "overflows");
  glsnet_image big;
  glsnet_image_init(&big, sizeof big);
  big.pixels = one;
  big.height = (int64_t)1 << 30;
  big.width = (int64_t)1 << 30;
  big.channels = 16;
  expect("overflowing typed dimensions", glsnet_segment_image(h, &big, mask1, (size_t)1 << 60), GLSNET_ERROR_INVALID_ARGUMENT, "overflows");

  /* A decoder refusing an oversized image releases its FILE and decoder (the leak sanitizer checks at exit). */
  glsnet_options small;
  glsnet_options_init_sized(&small, sizeof small);
  small.max_pixels = 100;
  glsnet_handle* limited = NULL;
  expect("open with a small max_pixels", glsnet_open(good, &small, &limited), GLSNET_OK, "");
  snprintf(out, sizeof out, "%s/out-oversized", work);
  expect("oversized PNG", glsnet_segment_file(limited, image, out, "png", 1), GLSNET_ERROR_INPUT, "above the limit");
  snprintf(path, sizeof path, "%s/image.jpg", work);
  expect("oversized JPEG", glsnet_segment_file(limited, path, out, "png", 1), GLSNET_ERROR_INPUT, "above the limit");
  glsnet_close(limited);

  /* A PNG writer failing in its constructor leaves neither its temporary file nor libpng's structs. */
  snprintf(out, sizeof out, "%s/out-header", work);
  fail_png_header = 1;
  expect("PNG writer failing at its header", glsnet_segment_file(h, image, out, "png", 1), GLSNET_ERROR_OUTPUT, "injected failure");
  fail_png_header = 0;
  check("nothing left by the failing PNG writer", entries(out) <= 0);

  /* The second rename failing: the first output is rolled back (an earlier file restored), no temporary is left. */
  snprintf(out, sizeof out, "%s/out-rename", work);
  mkdir(out, 0777);
  snprintf(path, sizeof path, "%s/image_mask.png", out);
  write_file(path, "earlier mask");
  fail_color_rename = 1;
  expect("second rename failing", glsnet_segment_file(h, image, out, "png", 1), GLSNET_ERROR_OUTPUT, "image_color.png");
  fail_color_rename = 0;
  check("the earlier mask restored and nothing else left", entries(out) == 1 && file_size(path) == (long)strlen("earlier mask"));
  snprintf(out, sizeof out, "%s/out-rename-fresh", work);
  fail_color_rename = 1;
  expect("second rename failing, no earlier files", glsnet_segment_file(h, image, out, "png", 1), GLSNET_ERROR_OUTPUT, "image_color.png");
  fail_color_rename = 0;
  check("no output left after a failed second rename", entries(out) == 0);

  /* The umask in force when the file is written applies (not one read when the library was loaded). */
  const mode_t saved = umask(077);
  snprintf(out, sizeof out, "%s/out-umask", work);
  expect("segment under umask 077", glsnet_segment_file(h, image, out, "png", 0), GLSNET_OK, "");
  umask(saved);
  struct stat st;
  snprintf(path, sizeof path, "%s/image_mask.png", out);
  check("mask written with mode 0600 under umask 077", stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);

  /* A host's own libtiff error handler stays installed and is not called for glsnet's files. */
  TIFFSetErrorHandler(host_tiff_error_handler);
  snprintf(path, sizeof path, "%s/garbage.tif", work);
  snprintf(out, sizeof out, "%s/out-garbage-tiff", work);
  expect("unreadable TIFF", glsnet_segment_file(h, path, out, "png", 1), GLSNET_ERROR_INPUT, "garbage.tif");
  check("the host's libtiff error handler is still installed", TIFFSetErrorHandler(NULL) == host_tiff_error_handler);
  check("the host's libtiff error handler was not called", host_tiff_errors == 0);

  /* A TIFF in one strip is decoded once, not once per band of rows read. */
  snprintf(path, sizeof path, "%s/onestrip.tif", work);
  snprintf(out, sizeof out, "%s/out-onestrip", work);
  strip_reads = 0;
  expect("one-strip TIFF", glsnet_segment_file(h, path, out, "png", 0), GLSNET_OK, "");
  printf("one-strip TIFF: %d strip decode(s)\n", strip_reads);
  check("one-strip TIFF decoded once", strip_reads == 1);

  /* malloc_trim only when the host asks for it. */
  enum { H = 40, W = 50, C = 3 };
  static uint8_t pixels[H * W * C], mask[H * W];
  trim_calls = 0;
  expect("segment, default options", glsnet_segment(h, pixels, sizeof pixels, H, W, C, mask, sizeof mask), GLSNET_OK, "");
  check("no malloc_trim by default", trim_calls == 0);
  glsnet_options trim;
  glsnet_options_init_sized(&trim, sizeof trim);
  trim.release_heap = 1;
  glsnet_handle* trimming = NULL;
  expect("open with release_heap", glsnet_open(good, &trim, &trimming), GLSNET_OK, "");
  expect("segment with release_heap", glsnet_segment(trimming, pixels, sizeof pixels, H, W, C, mask, sizeof mask), GLSNET_OK, "");
  check("malloc_trim called with release_heap", trim_calls > 0);
  glsnet_close(trimming);
}

struct cancel_state {
  glsnet_cancel_token* token;
  int calls, calls_after_cancel, cancelled;
};

static int cancel_on_first_rows(void* user, int64_t top, int64_t rows, int64_t width, const uint8_t* mask) {
  (void)top, (void)rows, (void)width, (void)mask;
  struct cancel_state* state = (struct cancel_state*)user;
  ++state->calls;
  if (state->cancelled) ++state->calls_after_cancel;
  glsnet_cancel(state->token);
  state->cancelled = 1;
  return 0; /* go on: the cancel alone must stop the call */
}

/* glsnet_cancel and deadlines: GLSNET_ERROR_CANCELLED within one patch batch, and no output. */
static void cancellation(const char* good, const char* work) {
  glsnet_options o;
  glsnet_options_init_sized(&o, sizeof o);
  o.batch_size = 1; /* one patch per batch: many batches, so "within one batch" means something */
  glsnet_handle* h = NULL;
  expect("open with batch size 1", glsnet_open(good, &o, &h), GLSNET_OK, "");
  if (!h) return;
  enum { H = 300, W = 415, C = 3 };
  static uint8_t pixels[H * W * C];
  for (int i = 0; i < H * W * C; ++i) pixels[i] = (uint8_t)((i * 31) ^ (i >> 7));
  glsnet_image image;
  glsnet_image_init(&image, sizeof image);
  image.pixels = pixels;
  image.pixels_size = sizeof pixels;
  image.height = H;
  image.width = W;
  image.channels = C;
  glsnet_plan_info plan;
  memset(&plan, 0, sizeof plan);
  plan.struct_size = sizeof plan;
  glsnet_plan(h, H, W, &plan);
  printf("cancellation image: %d patches in batches of %d\n", plan.patches, plan.batch_size);
  check("the cancellation image needs several batches", plan.patches >= 4 && plan.batch_size == 1);

  struct cancel_state state = {glsnet_cancel_token_create(), 0, 0, 0};
  image.cancel = state.token;
  expect("cancel from the row callback", glsnet_segment_image_rows(h, &image, cancel_on_first_rows, &state), GLSNET_ERROR_CANCELLED,
         "cancelled");
  printf("row callbacks: %d, after the cancel: %d\n", state.calls, state.calls_after_cancel);
  check("no rows delivered after the cancel", state.calls == 1 && state.calls_after_cancel == 0);
  check("cancelled is its own status", strcmp(glsnet_status_string(GLSNET_ERROR_CANCELLED), "cancelled") == 0);
  static uint8_t mask[H * W];
  expect("a cancelled token stops the next call at once", glsnet_segment_image(h, &image, mask, sizeof mask), GLSNET_ERROR_CANCELLED,
         "cancelled");

  char out[4096], path[4096];
  snprintf(path, sizeof path, "%s/image.png", work);
  snprintf(out, sizeof out, "%s/out-cancelled", work);
  glsnet_file_options fo;
  glsnet_file_options_init(&fo, sizeof fo);
  fo.cancel = state.token;
  expect("cancelled file call", glsnet_segment_file_with(h, path, out, &fo), GLSNET_ERROR_CANCELLED, "no output");
  check("no output after a cancelled file call", entries(out) <= 0);
  glsnet_cancel_token_destroy(state.token);

  fo.cancel = NULL;
  fo.timeout_ms = 1;
  snprintf(out, sizeof out, "%s/out-deadline", work);
  image.cancel = NULL;
  image.timeout_ms = 1;
  expect("deadline on a buffer", glsnet_segment_image(h, &image, mask, sizeof mask), GLSNET_ERROR_CANCELLED, "deadline of 1 ms");
  expect("deadline on a file", glsnet_segment_file_with(h, path, out, &fo), GLSNET_ERROR_CANCELLED, "deadline of 1 ms");
  check("no output after a deadline", entries(out) <= 0);
  fo.timeout_ms = -1;
  expect("negative timeout", glsnet_segment_file_with(h, path, out, &fo), GLSNET_ERROR_INVALID_ARGUMENT, "timeout_ms");
  glsnet_close(h);
  glsnet_cancel_token_destroy(NULL);
}

/* A GeoTIFF (WORKDIR/geo.tif) to TIFF masks with the statistics JSON: its tags read and written on libtiff handles of
 * our own, the three outputs renamed together; a failing statistics rename leaves none of them. */
static void geotiff_and_statistics(glsnet_handle* h, const char* work) {
  char image[4096], out[4096], path[8192];
  snprintf(image, sizeof image, "%s/geo.tif", work);
  glsnet_file_options fo;
  glsnet_file_options_init(&fo, sizeof fo);
  fo.format = "tif";
  fo.stats = 1;
  snprintf(out, sizeof out, "%s/out-geo", work);
  expect("GeoTIFF with statistics", glsnet_segment_file_with(h, image, out, &fo), GLSNET_OK, "");
  check("mask, colour mask and statistics written", entries(out) == 3);
  snprintf(path, sizeof path, "%s/geo_mask.tif", out);
  TIFF* tif = TIFFOpen(path, "r");
  uint32_t count = 0;
  double* scale = NULL;
  /* the tag is unknown to this libtiff: read as an anonymous field, counted with a uint32 */
  check("the mask carries ModelPixelScale", tif && TIFFGetField(tif, 33550, &count, &scale) && count == 3 && scale[0] == 0.25);
  if (tif) TIFFClose(tif);
  fail_stats_rename = 1;
  snprintf(out, sizeof out, "%s/out-geo-failed", work);
  expect("statistics rename fails", glsnet_segment_file_with(h, image, out, &fo), GLSNET_ERROR_OUTPUT, "geo_stats.json");
  fail_stats_rename = 0;
  check("no output when the statistics cannot be renamed", entries(out) == 0);
}

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s GOOD TAMPERED SCHEMA ESCAPE WORKDIR\n", argv[0]);
    return 2;
  }
  const char *good = argv[1], *tampered = argv[2], *schema = argv[3], *escape = argv[4], *work = argv[5];
  char path[8192], missing[4096];
  glsnet_handle* h = NULL;

  snprintf(missing, sizeof missing, "%s/no-such-bundle", work);
  expect("missing bundle", glsnet_open(missing, NULL, &h), GLSNET_ERROR_BUNDLE, "not a directory");
  expect("null bundle dir", glsnet_open(NULL, NULL, &h), GLSNET_ERROR_INVALID_ARGUMENT, "bundle_dir is NULL");
  expect("null out handle", glsnet_open(good, NULL, NULL), GLSNET_ERROR_INVALID_ARGUMENT, "out_handle is NULL");
  expect("tampered graph", glsnet_open(tampered, NULL, &h), GLSNET_ERROR_BUNDLE, "does not match the manifest");
  expect("other schema version", glsnet_open(schema, NULL, &h), GLSNET_ERROR_BUNDLE, "schema_version");
  expect("path leaving the bundle", glsnet_open(escape, NULL, &h), GLSNET_ERROR_BUNDLE, "inside the bundle");
  if (h != NULL) {
    printf("FAIL a failed open left a handle\n");
    ++failures;
  }

  /* glsnet_options_init (ABI 1's first release) writes nothing past that release's struct, and the sized init
     nothing past the size it is given: an older binary's smaller struct is never overrun. */
  _Alignas(8) unsigned char canary[sizeof(glsnet_options) + 16];
  memset(canary, 0xCD, sizeof canary);
  glsnet_options_init((glsnet_options*)canary);
  size_t untouched = 0;
  for (size_t i = offsetof(glsnet_options, release_heap); i < sizeof canary; ++i) untouched += canary[i] == 0xCD;
  check("glsnet_options_init stays inside ABI 1's struct", untouched == sizeof canary - offsetof(glsnet_options, release_heap) &&
                                                            ((glsnet_options*)canary)->struct_size == offsetof(glsnet_options, release_heap));
  memset(canary, 0xCD, sizeof canary);
  glsnet_options_init_sized((glsnet_options*)canary, 24);
  untouched = 0;
  for (size_t i = 24; i < sizeof canary; ++i) untouched += canary[i] == 0xCD;
  check("glsnet_options_init_sized stays inside the size given", untouched == sizeof canary - 24);

  glsnet_options bad;
  glsnet_options_init(&bad);
  bad.precision = "fp64";
  expect("unknown precision", glsnet_open(good, &bad, &h), GLSNET_ERROR_INVALID_ARGUMENT, "fp64");
  glsnet_options_init(&bad);
  bad.struct_size = sizeof bad + 8; /* from a newer glsnet.h than this library */
  expect("options larger than the library knows", glsnet_open(good, &bad, &h), GLSNET_ERROR_INVALID_ARGUMENT, "struct_size");
  glsnet_options_init(&bad);
  bad.struct_size = 0;
  expect("options without struct_size", glsnet_open(good, &bad, &h), GLSNET_ERROR_INVALID_ARGUMENT, "struct_size");
  /* An older caller's struct ends before max_pixels: what lies beyond it is not read (defaults apply). */
  glsnet_options_init(&bad);
  bad.struct_size = (uint32_t)offsetof(glsnet_options, max_pixels);
  bad.max_pixels = -5;
  expect("older, smaller options accepted", glsnet_open(good, &bad, &h), GLSNET_OK, "");
  glsnet_close(h);
  h = NULL;
  glsnet_options_init(&bad);
  bad.global_band_rows = 100;
  expect("band rows off the stride", glsnet_open(good, &bad, &h), GLSNET_ERROR_INVALID_ARGUMENT, "multiple of 32");
  glsnet_options_init_sized(&bad, sizeof bad);
  bad.device_id = -1;
  expect("negative device id", glsnet_open(good, &bad, &h), GLSNET_ERROR_INVALID_ARGUMENT, "device_id");
  glsnet_options_init(&bad);
  bad.device = "cuda";
  expect("absent CUDA provider", glsnet_open(good, &bad, &h), GLSNET_ERROR_RUNTIME, "CUDAExecutionProvider");

  expect("open", glsnet_open(good, NULL, &h), GLSNET_OK, "");
  if (h == NULL) {
    printf("FAIL no handle, stopping\n");
    return 1;
  }
  enum { H = 40, W = 50, C = 3 };
  static uint8_t pixels[H * W * C], mask[H * W];
  for (int i = 0; i < H * W * C; ++i) pixels[i] = (uint8_t)(i * 7);
  expect("null handle", glsnet_segment(NULL, pixels, sizeof pixels, H, W, C, mask, sizeof mask), GLSNET_ERROR_INVALID_ARGUMENT, "handle is NULL");
  expect("null pixels", glsnet_segment(h, NULL, sizeof pixels, H, W, C, mask, sizeof mask), GLSNET_ERROR_INVALID_ARGUMENT, "pixels is NULL");
  expect("null mask", glsnet_segment(h, pixels, sizeof pixels, H, W, C, NULL, sizeof mask), GLSNET_ERROR_INVALID_ARGUMENT, "out_mask is NULL");
  expect("pixels of the wrong size", glsnet_segment(h, pixels, sizeof pixels - 1, H, W, C, mask, sizeof mask), GLSNET_ERROR_INVALID_ARGUMENT, "pixels buffer has");
  expect("mask of the wrong size", glsnet_segment(h, pixels, sizeof pixels, H, W, C, mask, sizeof mask + 1), GLSNET_ERROR_INVALID_ARGUMENT, "out_mask has");
  expect("zero height", glsnet_segment(h, pixels, 0, 0, W, C, mask, 0), GLSNET_ERROR_INVALID_ARGUMENT, "must be positive");
  expect("negative width", glsnet_segment(h, pixels, sizeof pixels, H, -W, C, mask, sizeof mask), GLSNET_ERROR_INVALID_ARGUMENT, "must be positive");
  expect("too few bands", glsnet_segment(h, pixels, H * W, H, W, 1, mask, sizeof mask), GLSNET_ERROR_INPUT, "band(s)");
  expect("null callback", glsnet_segment_rows(h, pixels, sizeof pixels, H, W, C, NULL, NULL), GLSNET_ERROR_INVALID_ARGUMENT, "callback is NULL");
  int calls = 0;
  expect("callback stops", glsnet_segment_rows(h, pixels, sizeof pixels, H, W, C, stop_at_first_rows, &calls), GLSNET_ERROR_CANCELLED, "stopped");
  expect("plan null output", glsnet_plan(h, H, W, NULL), GLSNET_ERROR_INVALID_ARGUMENT, "out_plan is NULL");
  glsnet_plan_info plan;
  memset(&plan, 0, sizeof plan);
  expect("plan without struct_size", glsnet_plan(h, H, W, &plan), GLSNET_ERROR_INVALID_ARGUMENT, "struct_size");
  /* An older caller's plan struct ends before estimate_bytes: the fields it has are filled, nothing beyond. */
  memset(&plan, 0xAB, sizeof plan);
  plan.struct_size = (uint32_t)offsetof(glsnet_plan_info, estimate_bytes);
  expect("older, smaller plan struct accepted", glsnet_plan(h, H, W, &plan), GLSNET_OK, "");
  if (plan.batch_size < 1 || plan.patches < 1 || plan.estimate_bytes != 0xABABABABABABABABull) {
    printf("FAIL older plan struct: batch %d, patches %d, bytes beyond its size %s\n", plan.batch_size, plan.patches,
           plan.estimate_bytes != 0xABABABABABABABABull ? "written" : "untouched");
    ++failures;
  }
  expect("null classes", glsnet_num_classes(h, NULL), GLSNET_ERROR_INVALID_ARGUMENT, "must not be NULL");
  expect("segment", glsnet_segment(h, pixels, sizeof pixels, H, W, C, mask, sizeof mask), GLSNET_OK, "");

  /* Files: unreadable image, unwritable output, a target that is a folder; nothing left behind. */
  char image[4096], out[4096], blocker[4096];
  snprintf(image, sizeof image, "%s/garbage.png", work);
  write_file(image, "this is not an image");
  snprintf(out, sizeof out, "%s/out-unreadable", work);
  expect("unreadable image", glsnet_segment_file(h, image, out, "png", 1), GLSNET_ERROR_INPUT, "garbage.png");
  if (entries(out) > 0) {
    printf("FAIL outputs left after an unreadable image\n");
    ++failures;
  }
  snprintf(path, sizeof path, "%s/no-such-image.png", work);
  expect("missing image", glsnet_segment_file(h, path, out, "png", 1), GLSNET_ERROR_INPUT, "no such file");
  snprintf(blocker, sizeof blocker, "%s/a-file", work);
  write_file(blocker, "x");
  snprintf(out, sizeof out, "%s/a-file/sub", work);
  snprintf(image, sizeof image, "%s/image.png", work);
  expect("unwritable output", glsnet_segment_file(h, image, out, "png", 1), GLSNET_ERROR_OUTPUT, "a-file");
  snprintf(out, sizeof out, "%s/out-blocked", work);
  mkdir(out, 0777);
  snprintf(path, sizeof path, "%s/image_color.png", out);
  mkdir(path, 0777);
  expect("output name taken by a folder", glsnet_segment_file(h, image, out, "png", 1), GLSNET_ERROR_OUTPUT, "image_color.png");
  if (entries(out) != 1) {
    printf("FAIL %d entries in %s after a refused output (want only the blocking folder)\n", entries(out), out);
    ++failures;
  }
  expect("unknown output format", glsnet_segment_file(h, image, out, "bmp", 1), GLSNET_ERROR_INVALID_ARGUMENT, "bmp");
  snprintf(out, sizeof out, "%s/out-good", work);
  expect("segment file", glsnet_segment_file(h, image, out, "tif", 1), GLSNET_OK, "");
  if (entries(out) != 2) {
    printf("FAIL %d entries in %s, want the mask and the colour mask\n", entries(out), out);
    ++failures;
  }
  defects(h, good, work);
  geotiff_and_statistics(h, work);
  cancellation(good, work);
  glsnet_close(h);
  glsnet_close(NULL);
  printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
