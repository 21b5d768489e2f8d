#include "input_range.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "errors.hpp"

namespace glsnet {
namespace {

const std::string kOption = "--input-range";
const std::string kExamples = kOption + " 0,4095 (12-bit data), " + kOption + " 0,65535/0,65535/0,65535 (one range per band) or " +
                              kOption + " p2,p98 (a percentile stretch)";

[[noreturn]] void input_error(const std::string& message) { fail(GLSNET_ERROR_INPUT, message); }

std::string strip(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      parts.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  return parts;
}

// Python's float(text): surrounding whitespace allowed, the rest must be one number. False if it is not.
bool parse_float(const std::string& text, double& out) {
  const std::string t = strip(text);
  if (t.empty()) return false;
  char* end = nullptr;
  out = std::strtod(t.c_str(), &end);
  return end == t.c_str() + t.size();
}

std::string repr(const std::string& text) { return "'" + text + "'"; }

// Values mapped linearly from per-band [low, high] onto the trained range, clipped there, NaN to its low end.
class RangedSource : public ImageSource {
 public:
  RangedSource(const ImageSource& source, const std::vector<double>& lows, const std::vector<double>& highs, const InputPixels& target)
      : source_(source), low_(static_cast<float>(target.low)), high_(static_cast<float>(target.high)) {
    name = source.name;
    height = source.height;
    width = source.width;
    bands = source.bands;
    dtype = "float32";
    resident_bytes = source.resident_bytes;
    const double span = target.high - target.low;
    for (size_t b = 0; b < lows.size(); ++b) {  // float64 arithmetic, then float32: as numpy's astype(np.float32)
      const double per = span / (highs[b] - lows[b]);
      gain_.push_back(static_cast<float>(per));
      offset_.push_back(static_cast<float>(target.low - lows[b] * per));
    }
  }
  void read_rows(int64_t top, int64_t bottom, float* out) const override {
    source_.read_rows(top, bottom, out);
    const size_t count = static_cast<size_t>((bottom - top) * width * bands), nb = static_cast<size_t>(bands);
    for (size_t i = 0; i < count; ++i) {
      const size_t b = i % nb;
      const float product = out[i] * gain_[b];
      const float mapped = product + offset_[b];
      out[i] = std::isnan(mapped) ? low_ : std::min(std::max(mapped, low_), high_);
    }
  }

 private:
  const ImageSource& source_;
  std::vector<float> gain_, offset_;
  float low_, high_;
};

// numpy's linear percentile of sorted values (numpy/lib/_function_base_impl.py: virtual index and _lerp).
double linear_percentile(const std::vector<double>& sorted, double percent) {
  const double n = static_cast<double>(sorted.size()), q = percent / 100.0;
  double index = n * q + (1.0 - q) - 1.0;
  index = std::min(std::max(index, 0.0), n - 1.0);
  const double below = std::floor(index);
  const double gamma = index - below;
  const size_t lo = static_cast<size_t>(below), hi = std::min(lo + 1, sorted.size() - 1);
  const double a = sorted[lo], b = sorted[hi], diff = b - a;
  return gamma >= 0.5 ? b - diff * (1.0 - gamma) : a + diff * gamma;
}

}  // namespace

std::string InputRange::describe() const {
  if (percentiles) return "p" + format_g(percentiles->first) + ",p" + format_g(percentiles->second);
  std::string out;
  for (const auto& [low, high] : bounds) out += (out.empty() ? "" : "/") + format_g(low) + "," + format_g(high);
  return out;
}

std::optional<InputRange> parse_input_range(const std::string& raw) {
  const std::string text = strip(raw);
  if (text.empty()) return std::nullopt;
  const std::string malformed = kOption + " " + repr(text) + ": expected MIN,MAX, MIN,MAX/MIN,MAX/... or pLOW,pHIGH; e.g. " + kExamples;
  InputRange range;
  if (text[0] == 'p' || text[0] == 'P') {
    const auto parts = split(text, ',');
    if (parts.size() != 2) input_error(malformed);
    double values[2];
    for (int i = 0; i < 2; ++i) {
      std::string part = strip(parts[i]);
      if (!part.empty() && (part[0] == 'p' || part[0] == 'P')) part = part.substr(1);
      if (!parse_float(part, values[i])) input_error(malformed);
    }
    range.percentiles = std::make_pair(values[0], values[1]);
  } else {
    for (const std::string& group : split(text, '/')) {
      const auto parts = split(group, ',');
      double low = 0, high = 0;
      if (parts.size() != 2 || !parse_float(parts[0], low) || !parse_float(parts[1], high)) input_error(malformed);
      range.bounds.emplace_back(low, high);
    }
  }
  for (const auto& [low, high] : range.bounds)
    if (!(std::isfinite(low) && std::isfinite(high) && low < high))
      input_error(kOption + ": range " + format_g(low) + "," + format_g(high) + " needs finite MIN < MAX");
  if (range.percentiles) {
    const auto [low, high] = *range.percentiles;
    if (!(0.0 <= low && low < high && high <= 100.0))
      input_error(kOption + ": percentiles p" + format_g(low) + ",p" + format_g(high) + " need 0 <= low < high <= 100");
  }
  return range;
}

std::unique_ptr<ImageSource> conform_source(const ImageSource& source, const InputPixels& target, const Normalization& norm,
                                            const std::optional<InputRange>& range) {
  check_bands(source.bands, norm.bands, source.name);
  if (!range) {
    if (source.dtype == target.dtype) return nullptr;
    input_error(source.name + ": pixel type " + source.dtype + " but the bundle's model was trained on " + target.dtype +
                " pixels in [" + format_g(target.low) + ", " + format_g(target.high) + "]; say how this image's values map onto that range with " +
                kExamples);
  }
  std::vector<double> lows, highs;
  if (range->percentiles) {
    std::tie(lows, highs) = percentile_bounds(source, *range->percentiles);
  } else {
    auto bounds = range->bounds;
    if (bounds.size() == 1) bounds.assign(static_cast<size_t>(source.bands), bounds[0]);
    if (static_cast<int64_t>(bounds.size()) != source.bands)
      input_error(source.name + ": " + kOption + " " + range->describe() + " gives " + std::to_string(range->bounds.size()) +
                  " ranges but the image has " + std::to_string(source.bands) + " band(s); give one MIN,MAX for all bands or one per band");
    for (const auto& [low, high] : bounds) {
      lows.push_back(low);
      highs.push_back(high);
    }
  }
  return std::make_unique<RangedSource>(source, lows, highs, target);
}

std::pair<std::vector<double>, std::vector<double>> percentile_bounds(const ImageSource& source, std::pair<double, double> percentiles) {
  // np.unique(np.linspace(0, height - 1, min(height, 64)).astype(int))
  const int64_t num = std::min(source.height, kPercentileSampleRows);
  std::vector<int64_t> rows;
  const double stop = static_cast<double>(source.height - 1), step = num > 1 ? stop / static_cast<double>(num - 1) : 0.0;
  for (int64_t i = 0; i < num; ++i) rows.push_back(i == num - 1 ? static_cast<int64_t>(stop) : static_cast<int64_t>(static_cast<double>(i) * step));
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  const size_t nb = static_cast<size_t>(source.bands), w = static_cast<size_t>(source.width);
  std::vector<std::vector<double>> samples(nb);
  std::vector<float> row(w * nb);
  for (int64_t r : rows) {
    source.read_rows(r, r + 1, row.data());
    for (size_t i = 0; i < row.size(); ++i)
      if (std::isfinite(row[i])) samples[i % nb].push_back(row[i]);
  }
  std::vector<double> lows, highs;
  for (auto& band : samples) {
    if (band.empty())
      input_error(source.name + ": a band holds no finite value in the sampled rows; " + kOption + " p.. cannot stretch it");
    std::sort(band.begin(), band.end());
    const double low = linear_percentile(band, percentiles.first), high = linear_percentile(band, percentiles.second);
    lows.push_back(low);
    highs.push_back(high > low ? high : low + 1.0);  // a constant band maps onto the low end
  }
  return {lows, highs};
}

}  // namespace glsnet
