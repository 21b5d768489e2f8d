#include "global_features.hpp"

#include <algorithm>
#include <deque>
#include <memory>

#include "errors.hpp"

namespace glsnet {
namespace {

// Output rows of one stage, computed band by band on demand; rows before the last request's top are released.
class StageRows {
 public:
  StageRows(const StageRunner& stage, RowReader read_input, int64_t in_height, int64_t band_in)
      : stage_(stage), read_input_(std::move(read_input)), in_height_(in_height),
        height_(ceil_div(in_height, stage.shape.stride)), band_out_(band_in / stage.shape.stride) {}

  int64_t height() const { return height_; }

  // Every output row, each band copied into the result as soon as it is computed and then released, so the
  // whole output is never held twice (the final stage's output is the largest thing the global branch keeps).
  Rows all_rows() {
    Rows out;
    while (computed_ < height_) {
      const int64_t start = computed_;
      compute_next();
      const Rows chunk = std::move(chunks_.back().second);
      chunks_.pop_back();
      if (out.data.empty()) {
        out = Rows{chunk.channels, height_, chunk.width, {}};
        out.data.resize(static_cast<size_t>(out.channels * out.rows * out.width));
      }
      for (int64_t c = 0; c < out.channels; ++c)
        std::copy_n(chunk.data.data() + c * chunk.rows * chunk.width, chunk.rows * chunk.width,
                    out.data.data() + (c * out.rows + start) * out.width);
    }
    return out;
  }

  Rows rows(int64_t top, int64_t bottom) {
    while (computed_ < bottom) compute_next();
    while (!chunks_.empty() && chunks_.front().first + chunks_.front().second.rows <= top) chunks_.pop_front();
    const Rows& first = chunks_.front().second;
    Rows out{first.channels, bottom - top, first.width, {}};
    out.data.resize(static_cast<size_t>(out.channels * out.rows * out.width));
    for (const auto& [start, chunk] : chunks_) {
      const int64_t from = std::max(top, start), to = std::min(bottom, start + chunk.rows);
      if (from >= to) continue;
      for (int64_t c = 0; c < out.channels; ++c)
        std::copy_n(chunk.data.data() + (c * chunk.rows + (from - start)) * chunk.width, (to - from) * chunk.width,
                    out.data.data() + (c * out.rows + (from - top)) * out.width);
    }
    return out;
  }

 private:
  void compute_next() {
    const int64_t s = stage_.shape.stride, halo = stage_.shape.halo;
    const int64_t first_out = computed_, last_out = std::min(height_, first_out + band_out_);
    const int64_t top = first_out * s, bottom = std::min(in_height_, last_out * s);
    const int64_t read_top = std::max<int64_t>(0, top - halo), read_bottom = std::min(in_height_, bottom + halo);
    chunks_.emplace_back(first_out, stage_.run(read_input_(read_top, read_bottom), (top - read_top) / s, last_out - first_out));
    computed_ = last_out;
  }

  const StageRunner& stage_;
  RowReader read_input_;
  int64_t in_height_, height_, band_out_, computed_ = 0;
  std::deque<std::pair<int64_t, Rows>> chunks_;  // (first row, rows) in row order
};

}  // namespace

Rows staged_global_features(const std::vector<StageRunner>& stages, const RowReader& read_rows, int64_t padded_height,
                            std::optional<int64_t> band_rows) {
  if (stages.empty()) fail(GLSNET_ERROR_RUNTIME, "a staged global branch has at least one stage");
  std::vector<StageShape> shapes;
  for (const auto& stage : stages) shapes.push_back(stage.shape);
  const std::vector<int64_t> bands = stage_band_rows(shapes, band_rows.value_or(padded_height));
  std::vector<std::unique_ptr<StageRows>> streams;
  RowReader reader = read_rows;
  int64_t height = padded_height;
  for (size_t k = 0; k < stages.size(); ++k) {
    const int64_t s = stages[k].shape.stride;
    streams.push_back(std::make_unique<StageRows>(stages[k], reader, height, std::min(bands[k], ceil_div(height, s) * s)));
    StageRows* stream = streams.back().get();
    reader = [stream](int64_t top, int64_t bottom) { return stream->rows(top, bottom); };
    height = stream->height();
  }
  return streams.back()->all_rows();
}

}  // namespace glsnet
