// The per-class statistics JSON that `glsnet run --stats` writes (runtime/image_io/writers.py class_statistics), text
// for text: the same keys, Python's float repr of round(fraction, 6), json.dumps(indent=2) layout and escaping.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace glsnet {

// Pixel counts per mask value, fed with finished mask rows.
class ClassCounts {
 public:
  void add(const uint8_t* mask, int64_t pixels) {
    for (int64_t i = 0; i < pixels; ++i) ++counts_[mask[i]];
  }
  int64_t operator[](size_t value) const { return counts_[value]; }

 private:
  std::array<int64_t, 256> counts_{};
};

// The statistics of one mask as `<stem>_stats.json` holds it: image (the path as Python's str(Path(path)) writes it),
// height, width, pixels, and one {index, name, pixels, fraction} per class; ends with a newline. An empty image (no
// pixels to divide by) throws Error(GLSNET_ERROR_INPUT), as Python refuses one on reading.
std::string class_statistics_json(const std::string& image_path, const ClassCounts& counts, const std::vector<std::string>& classes,
                                  int64_t height, int64_t width);

// Python's repr() of a float (shortest round-trip digits; exponent form below 1e-4 and from 1e16; nan, inf, -inf).
std::string python_float_repr(double value);

// Python's round(value, 6) on a float: the correctly rounded decimal, read back as a float.
double python_round6(double value);

// A path as str(pathlib.PurePosixPath(path)): repeated and trailing slashes and "." parts dropped.
std::string python_path_text(const std::string& path);

// A JSON string literal as json.dumps writes it (ensure_ascii: \uXXXX for non-ASCII, undecodable bytes as Python's
// surrogate escapes).
std::string json_string(const std::string& text);

}  // namespace glsnet
