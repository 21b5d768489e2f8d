// The global branch stage by stage in bands (docs/runtime-algorithm.md section 4, runtime/algorithm/global_features.py
// staged_global_features): each stage runs on bands of its input rows with its own halo, its output rows
// are pulled by the next stage band by band and dropped once no later band needs them.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "algorithm.hpp"

namespace glsnet {

// A float32 tensor [channels, rows, width] (the graphs' batch axis of 1 left implicit), row-major.
struct Rows {
  int64_t channels = 0, rows = 0, width = 0;
  std::vector<float> data;
};

// Rows [top, bottom) of a stage's input.
using RowReader = std::function<Rows(int64_t top, int64_t bottom)>;

struct StageRunner {
  StageShape shape;
  // the stage graph on [1, C_in, rows, w] -> [1, C_out, ceil(rows / stride), ceil(w / stride)]; gives output
  // rows [first, first + count) and fails when the graph gave fewer rows
  std::function<Rows(Rows&& input, int64_t first, int64_t count)> run;
};

// [d, ceil(Hp/32), ceil(Wp/32)] global features, exactly as the single global graph gives them; `band_rows`
// (image rows; empty: whole image) sets each stage's band (stage_band_rows).
Rows staged_global_features(const std::vector<StageRunner>& stages, const RowReader& read_rows, int64_t padded_height,
                            std::optional<int64_t> band_rows);

}  // namespace glsnet
