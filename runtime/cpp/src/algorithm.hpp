// The runtime's arithmetic, as docs/runtime-algorithm.md writes it: patch grid, normalisation, global bands,
// memory plan (byte estimates and time model), bilinear upsampling, pyramid-weighted stitching and the argmax. Float operations follow
// numpy's float32 order exactly (compiled with -ffp-contract=off), so masks match the Python runtime's bytes.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace glsnet {

constexpr int kDefaultHalo = 256;
constexpr int kDefaultBatchSize = 6;
constexpr int kMaxBatchSize = 16;
constexpr int kGlobalRowAlign = 32;
constexpr int kMinGlobalBandRows = 128;
constexpr int64_t kDefaultWholeImagePixels = 6000000;
constexpr int64_t kDefaultStagedBandRows = 512;  // a bundle with stage graphs bands its global branch by default
constexpr int64_t kMinBandOverHalo = 8;          // a stage's band is at least this many times its halo
constexpr int64_t kWideBandOverHalo = 32;         // ... and this many, within half the image band's rows (global_features.py)
constexpr double kRunOverheadPatches = 0.1;      // time model: a graph run costs this many patches besides its own
constexpr double kDefaultGlobalPatchesPerPixel = 1.0 / 600000;
constexpr int64_t kProcessBaseBytes = 60000000;  // the memory model's process base (the Python runtime's measured one)
constexpr int kDefaultQueueDepth = 2;
constexpr double kWeightFloor = 1e-3;  // as a float64, like numpy's clip bound

struct PatchGrid {
  int64_t height = 0, width = 0;
  int patch = 0;
  std::vector<int64_t> ys, xs;
  int64_t padded_height() const { return height > patch ? height : patch; }
  int64_t padded_width() const { return width > patch ? width : patch; }
  int64_t rows() const { return static_cast<int64_t>(ys.size()); }
  int64_t cols() const { return static_cast<int64_t>(xs.size()); }
  int64_t size() const { return rows() * cols(); }
  std::pair<int64_t, int64_t> origin(int64_t index) const { return {ys[index / cols()], xs[index % cols()]}; }
  int64_t final_row_after(int64_t grid_row) const { return grid_row + 1 < rows() ? ys[grid_row + 1] : padded_height(); }
};

std::vector<int64_t> axis_starts(int64_t length, int patch, int min_overlap);
PatchGrid make_grid(int64_t height, int64_t width, int patch, int min_overlap);
// The refusal of a bad --min-overlap, as runtime/bundle/manifest.py min_overlap_error words it (patch_size 0: unknown yet).
std::string min_overlap_error(const std::string& min_overlap, int patch_size);

// (pixel - mean*scale) * (1 / (std*scale)), all in float32, per band.
struct Normalizer {
  std::vector<float> mean, inv_std;
  Normalizer(const std::vector<double>& mean, const std::vector<double>& std, double scale);
};

struct GlobalBand {
  int64_t top, bottom, read_top, read_bottom;
};
std::vector<GlobalBand> plan_bands(int64_t padded_height, std::optional<int64_t> band_rows, int64_t halo);

// One stage graph of the global branch as the plan sees it: stride, halo (input rows) and channels.
struct StageShape {
  int64_t stride = 1, halo = 0, in_channels = 0, out_channels = 0;
};

// Each stage's band height in its own input rows, for bands of about `band_rows` image rows.
std::vector<int64_t> stage_band_rows(const std::vector<StageShape>& stages, int64_t band_rows);

// Bytes of the stage-wise global branch on bands of `band_rows` (empty: whole image): the largest stage
// band's working memory (int(factor x its input + output bytes)) plus every stage's held rows.
int64_t staged_global_bytes(const std::vector<StageShape>& stages, int64_t padded_height, int64_t padded_width,
                            std::optional<int64_t> band_rows, double factor);

// Work of the stage-wise global branch in patch units: `whole_work` times the mean over stages of the
// rows each computes (halos included) over its input rows.
double staged_global_cost(const std::vector<StageShape>& stages, int64_t padded_height, std::optional<int64_t> band_rows,
                          double whole_work);

struct MemoryModel {
  int64_t fixed_bytes = 0;
  std::function<int64_t(int64_t)> batch_bytes;
  // staged: takes the band rows (empty: whole image); else the single global graph's input rows (halo included)
  std::function<int64_t(std::optional<int64_t>)> global_bytes;
  int64_t padded_height = 0, padded_width = 0, patches = 0, halo = kDefaultHalo;
  bool staged = false;
  // relative work of the global branch for a band height, in patch units (empty: the single graph's default)
  std::function<double(std::optional<int64_t>)> global_cost;

  int64_t band_input_rows(std::optional<int64_t> band_rows) const;
  double time_estimate(int64_t batch, std::optional<int64_t> band_rows) const;
  int64_t total_bytes(int64_t batch, std::optional<int64_t> band_rows) const;
};

struct MemoryPlan {
  int64_t batch_size = 1;
  std::optional<int64_t> global_band_rows;  // empty: whole image
  int64_t estimate_bytes = 0;
  std::optional<int64_t> budget_bytes;
  bool staged = false;  // the global branch runs stage by stage
  double time_estimate = 0;
};

MemoryPlan plan_memory(const MemoryModel& model, std::optional<int64_t> budget, std::optional<int64_t> batch_size);

// Two-tap bilinear resampling (align_corners=False): out[i] = w0[i]*in[lower[i]] + w1[i]*in[upper[i]].
struct UpsampleTaps {
  std::vector<int64_t> lower, upper;
  std::vector<float> w0, w1;
};
UpsampleTaps upsample_taps(int64_t in_size, int64_t out_size);

// [K, h, w] logits -> [K, P, P]: first along the width, then along the height.
void upsample_patch(const float* logits, int64_t classes, int64_t h, int64_t w, int64_t size, const UpsampleTaps& cols,
                    const UpsampleTaps& rows, std::vector<float>& scratch, float* out);

// float32 [P, P] pyramid window: outer(ramp, ramp) in float64, then rounded to float32.
std::vector<float> patch_weights(int patch);

// Blends patch logits in row-major order into a band of one patch height; hands out finished mask rows.
class Stitcher {
 public:
  using RowSink = std::function<void(int64_t top, int64_t rows, const uint8_t* mask)>;
  Stitcher(const PatchGrid& grid, int classes);
  // logits of the next patch [K, P, P]; calls `sink` for rows that are finished.
  void add(const float* logits, const RowSink& sink);
  bool done() const { return next_ == grid_.size(); }
  int64_t next_index() const { return next_; }

 private:
  void finalize(int64_t bottom, const RowSink& sink);
  const PatchGrid& grid_;
  int classes_;
  int64_t band_rows_, wp_;
  std::vector<float> total_, weight_sum_, weights_;
  std::vector<uint8_t> mask_;
  int64_t top_ = 0, next_ = 0;
};

// Index of the first maximum of values[0..n) (stride apart); a NaN counts as the maximum (numpy's argmax).
inline int64_t argmax_first(const float* values, int64_t n, int64_t stride) {
  int64_t best = 0;
  float top = values[0];
  if (top != top) return 0;
  for (int64_t k = 1; k < n; ++k) {
    float v = values[k * stride];
    if (v != v) return k;
    if (v > top) {
      top = v;
      best = k;
    }
  }
  return best;
}

int64_t ceil_div(int64_t a, int64_t b);

}  // namespace glsnet
