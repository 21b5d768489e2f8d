// The statistics JSON's formatting against Python's own output (the expected strings are what CPython 3 prints for
// repr(x), repr(round(a / b, 6)), json.dumps(s) and str(PurePosixPath(p))).
#include <cstdio>
#include <limits>
#include <string>

#include "class_statistics.hpp"
#include "errors.hpp"

namespace {

int failures = 0;

void expect(const std::string& got, const std::string& want, const std::string& what) {
  if (got == want) return;
  ++failures;
  std::printf("FAIL %s: got %s, want %s\n", what.c_str(), got.c_str(), want.c_str());
}

}  // namespace

int main() {
  using namespace glsnet;
  const std::pair<double, const char*> reprs[] = {
      {0.0, "0.0"},       {1.0, "1.0"},           {0.5, "0.5"},           {1e-05, "1e-05"},  {1.5e-05, "1.5e-05"},
      {0.0001, "0.0001"}, {0.123457, "0.123457"}, {2.0 / 3, "0.6666666666666666"}, {1e16, "1e+16"},
      {1.2345e16, "1.2345e+16"}, {123456789012345680.0, "1.2345678901234568e+17"}, {0.1 + 0.2, "0.30000000000000004"},
      {100.0, "100.0"},   {5e-324, "5e-324"}};
  for (const auto& [value, want] : reprs) expect(python_float_repr(value), want, "repr");
  const double inf = std::numeric_limits<double>::infinity();
  const std::pair<double, const char*> non_finite[] = {
      {std::numeric_limits<double>::quiet_NaN(), "nan"}, {-std::numeric_limits<double>::quiet_NaN(), "nan"}, {inf, "inf"}, {-inf, "-inf"}};
  for (const auto& [value, want] : non_finite) expect(python_float_repr(value), want, "repr (no exponent)");
  // Python refuses an empty image (readers.py: "the image is empty") before any fraction could divide by zero.
  ClassCounts none;
  for (const auto& [height, width] : {std::pair<int64_t, int64_t>{0, 5}, {5, 0}}) {
    try {
      const std::string json = class_statistics_json("empty.png", none, {"a", "b"}, height, width);
      expect(json, "an error", "statistics of an empty image");
    } catch (const Error& e) {
      expect(std::to_string(e.status) + " " + e.what(),
             std::to_string(GLSNET_ERROR_INPUT) + " empty.png: the image is empty (" + std::to_string(height) + " x " +
                 std::to_string(width) + " pixels); expected at least 1 x 1",
             "statistics of an empty image");
    }
  }
  const struct {
    double a, b;
    const char* want;
  } rounded[] = {{1, 3, "0.333333"}, {2, 3, "0.666667"}, {1, 7, "0.142857"}, {5, 8000000, "1e-06"},
                 {1, 2000000, "0.0"}, {3, 2000000, "2e-06"}, {5, 2000000, "3e-06"}};
  for (const auto& r : rounded) expect(python_float_repr(python_round6(r.a / r.b)), r.want, "round");
  expect(json_string("a\"b\\c\n\t\x01\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"),
         "\"a\\\"b\\\\c\\n\\t\\u0001\\u00e9\\u20ac\\ud83d\\ude00\"", "json string");
  expect(json_string("x\xffy"), "\"x\\udcffy\"", "undecodable byte");
  const std::pair<const char*, const char*> paths[] = {{"a//b/./c/", "a/b/c"}, {"./x.tif", "x.tif"}, {"/abs/./p.png", "/abs/p.png"},
                                                       {"//net/p", "//net/p"}, {"///r/p", "/r/p"},  {".", "."},  {"", "."}};
  for (const auto& [path, want] : paths) expect(python_path_text(path), want, std::string("path ") + path);
  std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
