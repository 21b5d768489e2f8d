#include "algorithm.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "errors.hpp"

namespace glsnet {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::vector<int64_t> axis_starts(int64_t length, int patch, int min_overlap) {
  if (length <= patch) return {0};
  const int64_t step_max = patch - min_overlap;
  const int64_t count = ceil_div(length - patch, step_max) + 1;
  const int64_t stride = ceil_div(length - patch, count - 1);
  std::vector<int64_t> starts;
  for (int64_t i = 0; i < count; ++i) starts.push_back(std::min(i * stride, length - patch));
  return starts;
}

PatchGrid make_grid(int64_t height, int64_t width, int patch, int min_overlap) {
  if (height <= 0 || width <= 0)
    fail(GLSNET_ERROR_INVALID_ARGUMENT, "image size must be positive, got " + std::to_string(height) + " x " + std::to_string(width));
  PatchGrid g;
  g.height = height;
  g.width = width;
  g.patch = patch;
  g.ys = axis_starts(g.padded_height(), patch, min_overlap);
  g.xs = axis_starts(g.padded_width(), patch, min_overlap);
  return g;
}

std::string min_overlap_error(const std::string& min_overlap, int patch_size) {
  const std::string limit = patch_size > 0 ? "less than the bundle's patch size (" + std::to_string(patch_size) + " px)"
                                           : "less than the bundle's patch size";
  return "--min-overlap " + min_overlap + ": the minimum patch overlap must be a whole number of pixels, at least 0 and " + limit;
}

Normalizer::Normalizer(const std::vector<double>& m, const std::vector<double>& s, double scale) {
  const float fscale = static_cast<float>(scale);
  for (size_t i = 0; i < m.size(); ++i) {
    mean.push_back(static_cast<float>(m[i]) * fscale);
    const float denom = static_cast<float>(s[i]) * fscale;
    inv_std.push_back(1.0f / denom);
  }
}

std::vector<GlobalBand> plan_bands(int64_t padded_height, std::optional<int64_t> band_rows, int64_t halo) {
  if (!band_rows || *band_rows >= padded_height) return {{0, padded_height, 0, padded_height}};
  std::vector<GlobalBand> bands;
  for (int64_t top = 0; top < padded_height; top += *band_rows) {
    const int64_t bottom = std::min(padded_height, top + *band_rows);
    bands.push_back({top, bottom, std::max<int64_t>(0, top - halo), std::min(padded_height, bottom + halo)});
  }
  return bands;
}

std::vector<int64_t> stage_band_rows(const std::vector<StageShape>& stages, int64_t band_rows) {
  std::vector<int64_t> out;
  int64_t stride = 1;
  for (const StageShape& stage : stages) {
    const int64_t wide = std::min(kWideBandOverHalo * stage.halo, band_rows / 2);
    const int64_t rows = std::max({band_rows / stride, wide, kMinBandOverHalo * stage.halo, stage.stride});
    out.push_back(ceil_div(rows, stage.stride) * stage.stride);
    stride *= stage.stride;
  }
  return out;
}

int64_t staged_global_bytes(const std::vector<StageShape>& stages, int64_t padded_height, int64_t padded_width,
                            std::optional<int64_t> band_rows, double factor) {
  const std::vector<int64_t> bands = stage_band_rows(stages, band_rows.value_or(padded_height));
  int64_t height = padded_height, width = padded_width, working = 0, held = 0, c_out = 0;
  for (size_t k = 0; k < stages.size(); ++k) {
    const StageShape& stage = stages[k];
    const int64_t s = stage.stride, c_in = stage.in_channels;
    c_out = stage.out_channels;
    const int64_t out_height = ceil_div(height, s), out_width = ceil_div(width, s);
    const int64_t band_in = std::min(bands[k], out_height * s);
    const int64_t rows_in = std::min(height, band_in + 2 * stage.halo);
    const int64_t bytes = 4 * (c_in * rows_in * width) + 4 * (c_out * ceil_div(rows_in, s) * out_width);
    working = std::max(working, static_cast<int64_t>(static_cast<double>(bytes) * factor));
    // the last stage keeps one band while it is copied into the features; the others keep what the next stage reads
    const int64_t wanted = k + 1 == stages.size() ? band_in / s : bands[k + 1] + 2 * stages[k + 1].halo + band_in / s;
    held += 4 * c_out * out_width * std::min(out_height, wanted);
    height = out_height;
    width = out_width;
  }
  return working + held + 4 * c_out * height * width;
}

double staged_global_cost(const std::vector<StageShape>& stages, int64_t padded_height, std::optional<int64_t> band_rows,
                          double whole_work) {
  const std::vector<int64_t> bands = stage_band_rows(stages, band_rows.value_or(padded_height));
  int64_t height = padded_height;
  double sum = 0;  // left to right, as Python 3.11's sum()
  for (size_t k = 0; k < stages.size(); ++k) {
    int64_t computed = 0;
    for (int64_t top = 0; top < height; top += bands[k])
      computed += std::min(height, top + bands[k] + stages[k].halo) - std::max<int64_t>(0, top - stages[k].halo);
    sum += static_cast<double>(computed) / static_cast<double>(height);
    height = ceil_div(height, stages[k].stride);
  }
  return whole_work * sum / static_cast<double>(stages.size());
}

int64_t MemoryModel::band_input_rows(std::optional<int64_t> band_rows) const {
  return band_rows ? std::min(padded_height, *band_rows + 2 * halo) : padded_height;
}

double MemoryModel::time_estimate(int64_t batch, std::optional<int64_t> band_rows) const {
  const int64_t runs = ceil_div(patches, batch);
  double global_work;
  if (global_cost) {
    global_work = global_cost(band_rows);
  } else {
    const double whole = static_cast<double>(padded_height * padded_width) * kDefaultGlobalPatchesPerPixel;
    const int64_t bands = band_rows ? ceil_div(padded_height, *band_rows) : 1;
    const int64_t rows = std::min(bands * band_input_rows(band_rows), bands * padded_height);
    global_work = whole * static_cast<double>(rows) / static_cast<double>(padded_height);
  }
  return static_cast<double>(patches) + kRunOverheadPatches * 2 * static_cast<double>(runs) + global_work;
}

int64_t MemoryModel::total_bytes(int64_t batch, std::optional<int64_t> band_rows) const {
  const std::optional<int64_t> rows = staged ? band_rows : std::optional<int64_t>(band_input_rows(band_rows));
  return fixed_bytes + batch_bytes(batch) + global_bytes(rows);
}

namespace {

int64_t align_rows(int64_t rows) { return std::max<int64_t>(kGlobalRowAlign, rows / kGlobalRowAlign * kGlobalRowAlign); }

std::string format_bytes(int64_t count) {
  char buf[64];
  if (count >= 1000000000) std::snprintf(buf, sizeof buf, "%.2f GB", count / 1e9);
  else if (count >= 1000000) std::snprintf(buf, sizeof buf, "%.0f MB", count / 1e6);
  else std::snprintf(buf, sizeof buf, "%.0f kB", count / 1e3);
  return buf;
}

MemoryPlan make_plan(const MemoryModel& m, int64_t batch, std::optional<int64_t> rows, std::optional<int64_t> budget) {
  return {batch, rows, m.total_bytes(batch, rows), budget, m.staged, m.time_estimate(batch, rows)};
}

}  // namespace

MemoryPlan plan_memory(const MemoryModel& m, std::optional<int64_t> budget, std::optional<int64_t> batch_size) {
  const int64_t largest = std::max<int64_t>(1, std::min<int64_t>(kMaxBatchSize, m.patches));
  if (batch_size && *batch_size < 1) fail(GLSNET_ERROR_INVALID_ARGUMENT, "batch size must be >= 1, got " + std::to_string(*batch_size));
  const int64_t whole_rows = m.padded_height;
  if (!budget) {
    const int64_t batch = std::min(batch_size.value_or(kDefaultBatchSize), largest);
    std::optional<int64_t> rows;
    if (m.staged) {
      if (whole_rows > kDefaultStagedBandRows) rows = kDefaultStagedBandRows;
    } else if (m.padded_height * m.padded_width > kDefaultWholeImagePixels) {
      rows = align_rows(std::max<int64_t>(kMinGlobalBandRows, kDefaultWholeImagePixels / m.padded_width - 2 * m.halo));
      if (*rows >= whole_rows) rows.reset();
    }
    return make_plan(m, batch, rows, std::nullopt);
  }
  std::vector<int64_t> batches;
  if (batch_size) batches.push_back(std::min(*batch_size, largest));
  else
    for (int64_t b = largest; b > 0; --b) batches.push_back(b);
  std::vector<std::optional<int64_t>> band_choices{std::nullopt};
  for (int64_t r = align_rows(whole_rows) - kGlobalRowAlign; r > kMinGlobalBandRows - 1; r -= kGlobalRowAlign) band_choices.push_back(r);
  // least time; among equals the larger batch and band (fewer, bigger runs)
  std::optional<MemoryPlan> best;
  for (int64_t batch : batches)
    for (const auto& rows : band_choices) {
      const int64_t total = m.total_bytes(batch, rows);
      if (total > *budget) continue;
      const double time = m.time_estimate(batch, rows);
      const int64_t best_rows = best ? best->global_band_rows.value_or(whole_rows) : 0, this_rows = rows.value_or(whole_rows);
      if (!best || time < best->time_estimate ||
          (time == best->time_estimate && (batch > best->batch_size || (batch == best->batch_size && this_rows > best_rows))))
        best = MemoryPlan{batch, rows, total, budget, m.staged, time};
    }
  if (best) return *best;
  const int64_t smallest = m.total_bytes(batches.back(), kMinGlobalBandRows);
  fail(GLSNET_ERROR_MEMORY, "a memory budget of " + format_bytes(*budget) + " is too small for this bundle: even batch " +
                                std::to_string(batches.back()) + " with the global branch in " + std::to_string(kMinGlobalBandRows) +
                                "-row bands needs about " + format_bytes(smallest) + "; raise --max-memory or lower --batch-size");
}

UpsampleTaps upsample_taps(int64_t in_size, int64_t out_size) {
  UpsampleTaps t;
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  for (int64_t i = 0; i < out_size; ++i) {
    const double source = std::max((static_cast<double>(i) + 0.5) * scale - 0.5, 0.0);
    const int64_t lower = std::min(static_cast<int64_t>(std::floor(source)), in_size - 1);
    const int64_t upper = std::min(lower + 1, in_size - 1);
    const float frac = static_cast<float>(source - static_cast<double>(lower));
    t.lower.push_back(lower);
    t.upper.push_back(upper);
    t.w0.push_back(1.0f - frac);
    t.w1.push_back(frac);
  }
  return t;
}

void upsample_patch(const float* logits, int64_t classes, int64_t h, int64_t w, int64_t size, const UpsampleTaps& cols,
                    const UpsampleTaps& rows, std::vector<float>& scratch, float* out) {
  scratch.resize(static_cast<size_t>(h * size));
  for (int64_t k = 0; k < classes; ++k) {
    const float* in = logits + k * h * w;
    for (int64_t y = 0; y < h; ++y) {
      const float* src = in + y * w;
      float* dst = scratch.data() + y * size;
      for (int64_t x = 0; x < size; ++x) {
        const float a = cols.w0[x] * src[cols.lower[x]];
        const float b = cols.w1[x] * src[cols.upper[x]];
        dst[x] = a + b;
      }
    }
    float* plane = out + k * size * size;
    for (int64_t y = 0; y < size; ++y) {
      const float* lo = scratch.data() + rows.lower[y] * size;
      const float* up = scratch.data() + rows.upper[y] * size;
      const float w0 = rows.w0[y], w1 = rows.w1[y];
      float* dst = plane + y * size;
      for (int64_t x = 0; x < size; ++x) {
        const float a = w0 * lo[x];
        const float b = w1 * up[x];
        dst[x] = a + b;
      }
    }
  }
}

std::vector<float> patch_weights(int patch) {
  const double centre = (patch - 1) / 2.0;
  std::vector<double> ramp(patch);
  for (int i = 0; i < patch; ++i) {
    const double r = 1.0 - std::fabs(static_cast<double>(i) - centre) / (centre + 1.0);
    ramp[i] = std::min(std::max(r, kWeightFloor), 1.0);
  }
  std::vector<float> window(static_cast<size_t>(patch) * patch);
  for (int i = 0; i < patch; ++i)
    for (int j = 0; j < patch; ++j) window[static_cast<size_t>(i) * patch + j] = static_cast<float>(ramp[i] * ramp[j]);
  return window;
}

Stitcher::Stitcher(const PatchGrid& grid, int classes)
    : grid_(grid), classes_(classes), band_rows_(grid.patch), wp_(grid.padded_width()),
      total_(static_cast<size_t>(classes) * band_rows_ * wp_, 0.0f), weight_sum_(static_cast<size_t>(band_rows_ * wp_), 0.0f),
      weights_(patch_weights(grid.patch)), mask_(static_cast<size_t>(band_rows_ * wp_)) {}

void Stitcher::add(const float* logits, const RowSink& sink) {
  const int64_t p = grid_.patch;
  if (next_ >= grid_.size()) fail(GLSNET_ERROR_RUNTIME, "stitcher got more patches than the grid's " + std::to_string(grid_.size()));
  const int64_t index = next_;
  const auto [y, x] = grid_.origin(index);
  if (y + p - top_ > band_rows_) fail(GLSNET_ERROR_RUNTIME, "patch " + std::to_string(index) + " lies beyond the stitching band");
  const int64_t plane = band_rows_ * wp_;
  for (int64_t k = 0; k < classes_; ++k) {
    const float* src = logits + k * p * p;
    float* dst = total_.data() + k * plane + (y - top_) * wp_ + x;
    for (int64_t r = 0; r < p; ++r)
      for (int64_t c = 0; c < p; ++c) {
        const float product = src[r * p + c] * weights_[r * p + c];
        dst[r * wp_ + c] += product;
      }
  }
  for (int64_t r = 0; r < p; ++r) {
    float* dst = weight_sum_.data() + (y - top_ + r) * wp_ + x;
    for (int64_t c = 0; c < p; ++c) dst[c] += weights_[r * p + c];
  }
  ++next_;
  if (next_ % grid_.cols() == 0) finalize(grid_.final_row_after(index / grid_.cols()), sink);
}

void Stitcher::finalize(int64_t bottom, const RowSink& sink) {
  bottom = std::min(bottom, grid_.padded_height());
  const int64_t count = bottom - top_;
  if (count <= 0) return;
  const int64_t plane = band_rows_ * wp_;
  const int64_t image_rows = std::max<int64_t>(0, std::min(bottom, grid_.height) - top_);
  std::vector<float> blended(static_cast<size_t>(classes_));
  for (int64_t r = 0; r < image_rows; ++r)
    for (int64_t c = 0; c < grid_.width; ++c) {
      const int64_t at = r * wp_ + c;
      const float ws = weight_sum_[at];
      for (int64_t k = 0; k < classes_; ++k) blended[k] = total_[k * plane + at] / ws;
      mask_[r * grid_.width + c] = static_cast<uint8_t>(argmax_first(blended.data(), classes_, 1));
    }
  const int64_t keep = band_rows_ - count;
  for (int64_t k = 0; k < classes_; ++k) {
    float* base = total_.data() + k * plane;
    std::memmove(base, base + count * wp_, sizeof(float) * keep * wp_);
    std::fill(base + keep * wp_, base + plane, 0.0f);
  }
  std::memmove(weight_sum_.data(), weight_sum_.data() + count * wp_, sizeof(float) * keep * wp_);
  std::fill(weight_sum_.begin() + keep * wp_, weight_sum_.end(), 0.0f);
  const int64_t top = top_;
  top_ = bottom;
  if (image_rows > 0) sink(top, image_rows, mask_.data());
}

}  // namespace glsnet
