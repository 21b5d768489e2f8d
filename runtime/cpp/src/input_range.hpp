// Bringing an image's pixel values to the type and range the bundle was trained on, or refusing it
// (runtime/image_io/input_range.py, same rules and messages): an image whose pixel type differs from the
// manifest's input_pixels needs an input range (--input-range MIN,MAX, MIN,MAX/MIN,MAX/..., or pLOW,pHIGH).
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "image_io.hpp"
#include "manifest.hpp"

namespace glsnet {

constexpr int64_t kPercentileSampleRows = 64;

struct InputRange {
  std::vector<std::pair<double, double>> bounds;  // one pair for every band, or one per band
  std::optional<std::pair<double, double>> percentiles;
  std::string describe() const;
};

// "0,4095" / "0,4095/0,4095/0,2047" / "p2,p98" -> InputRange; std::nullopt for empty text. Error(INPUT) otherwise.
std::optional<InputRange> parse_input_range(const std::string& text);

// `source` as the model reads it: its bands present, its values in the trained type's range. Returns nullptr when
// `source` can be used unchanged; a source that maps `source`'s values (and borrows it) otherwise.
std::unique_ptr<ImageSource> conform_source(const ImageSource& source, const InputPixels& target, const Normalization& norm,
                                            const std::optional<InputRange>& range);

// Per-band (low, high) percentiles of rows sampled evenly through the image (NaN ignored), as numpy's nanpercentile.
std::pair<std::vector<double>, std::vector<double>> percentile_bounds(const ImageSource& source, std::pair<double, double> percentiles);

}  // namespace glsnet
