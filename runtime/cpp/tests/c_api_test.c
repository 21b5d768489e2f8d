/* Every error path of the C API, run under AddressSanitizer and UndefinedBehaviorSanitizer by
 * tests/runtime/cpp/test_cpp_runtime.py: each failing call returns its status and a message naming the problem,
 * and no partial output file remains.
 * Usage: glsnet-c-api-test GOOD_BUNDLE TAMPERED_BUNDLE SCHEMA_BUNDLE ESCAPE_BUNDLE WORKDIR */
#include <dirent.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "glsnet/glsnet.h"

static int failures = 0;

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
  glsnet_close(h);
  glsnet_close(NULL);
  printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
