// manifest.json, read strictly: the same checks as runtime/bundle/manifest.py (schema, unknown keys, paths, sha256).
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace glsnet {

constexpr int kSchemaVersion = 1;
constexpr int kOutputStride = 4;    // logits at stride 4 of the patch
constexpr int kFeatureStride = 32;  // global / local token features at stride 32

struct TensorSpec {
  std::string name;
  std::string dtype;
  std::vector<std::string> shape;  // each dim as text: a number or a symbolic name
};

struct GraphSpec {
  std::string file;  // relative to the bundle
  std::string precision;
  std::string sha256;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
};

struct EngineFile {
  std::string file;
  std::string sha256;
};

struct EngineSpec {
  std::string target;
  std::string precision;
  std::string directory;
  std::map<std::string, EngineFile> files;  // role -> file
};

// One stage graph of the global branch (runtime/bundle/manifest.py GlobalStageSpec): `stride` input rows per output
// row, `halo` input rows of context above and below a band that make its kept rows the whole-image ones.
struct GlobalStageSpec {
  GraphSpec graph;
  int stride = 1;
  int halo = 0;
};

// provenance.flops: the FLOPs of each graph on one example input, which set the time model's global work.
struct Flops {
  double global = 0, local = 0, fusion = 0, height = 0, width = 0, batch = 0;
};

struct Normalization {
  std::vector<double> mean, std;
  double scale = 255.0;
  std::vector<int> bands{0, 1, 2};
};

// The pixels the model was trained on (runtime/bundle/manifest.py InputPixels): type and value span.
struct InputPixels {
  std::string dtype = "uint8";
  double low = 0.0, high = 255.0;
};

// A number as Python's f"{x:g}" writes it.
std::string format_g(double value);

struct Manifest {
  InputPixels input_pixels;
  std::vector<std::string> classes;
  std::vector<std::array<uint8_t, 3>> palette;
  Normalization normalization;
  int patch_size = 0;
  int min_overlap = 0;
  std::map<std::string, std::map<std::string, GraphSpec>> graphs;  // precision -> role -> graph
  std::vector<EngineSpec> engines;
  int model_width = 256;       // model.width, used when the local graph's output width is symbolic
  int model_skip_width = 48;   // model.skip_width
  // precision -> the global branch's stage graphs in order (absent: the single global graph only)
  std::map<std::string, std::vector<GlobalStageSpec>> global_stages;
  std::optional<Flops> flops;  // provenance.flops when it holds all six numbers

  const GraphSpec& graph(const std::string& role, const std::string& precision) const;
};

// Reads and validates BUNDLE/manifest.json; throws Error(GLSNET_ERROR_BUNDLE) naming the file and key.
Manifest read_manifest(const std::string& bundle_dir);

// Hex sha256 of a file.
std::string sha256_file(const std::string& path);

// BUNDLE/relative after checking that it exists and matches `sha256`.
std::string verify_file(const std::string& bundle_dir, const std::string& relative, const std::string& sha256);

}  // namespace glsnet
