// The C++ wrapper (glsnet.hpp) without a bundle: size arithmetic that would overflow is an Exception, not a
// wrapped buffer size; a failing open is an Exception carrying the C API's status. Registered with CTest.
#include <cstdio>
#include <cstdint>
#include <string>

#include "glsnet/glsnet.hpp"

static int failures = 0;

static void check(const char* what, bool ok) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what);
  if (!ok) ++failures;
}

int main() {
  check("small sizes multiply", glsnet::checked_size(3, 4, 5) == 60);
  try {
    glsnet::checked_size(int64_t(1) << 40, int64_t(1) << 40, 16);
    check("overflowing size throws", false);
  } catch (const glsnet::Exception& e) {
    check("overflowing size throws", e.status() == GLSNET_ERROR_INVALID_ARGUMENT);
  }
  try {
    glsnet::checked_size(-1, 5);
    check("negative size throws", false);
  } catch (const glsnet::Exception& e) {
    check("negative size throws", e.status() == GLSNET_ERROR_INVALID_ARGUMENT);
  }
  try {
    glsnet::Segmenter segmenter("/nonexistent/bundle");
    check("missing bundle throws", false);
  } catch (const glsnet::Exception& e) {
    check("missing bundle throws", e.status() == GLSNET_ERROR_BUNDLE);
  }
  try {
    glsnet::Options options;
    options.bands = "0,x";  // reaches glsnet_options.bands: refused before the bundle is looked at
    glsnet::Segmenter segmenter("/nonexistent/bundle", options);
    check("bad --bands throws", false);
  } catch (const glsnet::Exception& e) {
    check("bad --bands throws", e.status() == GLSNET_ERROR_INVALID_ARGUMENT &&
                                    std::string(e.what()) == "--bands '0,x': expected comma-separated band indices such as 0,1,2");
  }
  std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
