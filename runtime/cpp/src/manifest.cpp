// Strict reading of manifest.json. Each object's keys are a table (required / optional), so a new key
// in the schema is one line here, and an unknown key is an error as in runtime/bundle/manifest.py.
#include "manifest.hpp"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "errors.hpp"

namespace glsnet {
namespace {

using nlohmann::json;

struct Keys {
  const char* type;
  std::vector<const char*> required;
  std::vector<const char*> optional;
};

const Keys kManifestKeys{"Manifest",
                         {"schema_version", "classes", "palette", "normalization", "patch", "graphs"},
                         {"model", "engines", "calibration", "accuracy", "provenance", "input_pixels", "global_stages"}};
const Keys kInputPixelsKeys{"InputPixels", {"dtype", "low", "high"}, {}};
const Keys kGraphKeys{"GraphSpec", {"file", "precision", "sha256", "inputs", "outputs"}, {"opset"}};
const Keys kTensorKeys{"TensorSpec", {"name", "dtype", "shape"}, {}};
const Keys kEngineKeys{"EngineSpec",
                       {"target", "precision", "directory", "files"},
                       {"tensorrt_version", "gpu_name", "compute_capability", "dla_core", "profiles", "created"}};
const Keys kNormalizationKeys{"Normalization", {"mean", "std"}, {"scale", "bands"}};
const Keys kPatchKeys{"PatchSpec", {"size", "min_overlap"}, {"output_stride", "feature_stride"}};
const Keys kStageKeys{"GlobalStageSpec", {"graph", "stride", "halo"}, {}};
const char* const kStageInput = "stage_input";
const char* const kStageOutput = "stage_output";

const std::vector<std::string> kRoles{"global", "local", "fusion"};
const std::vector<std::string> kPrecisions{"fp32", "fp16", "int8"};
const std::set<std::string> kDtypes{"float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64", "bool"};

[[noreturn]] void bad(const std::string& where, const std::string& what) { fail(GLSNET_ERROR_BUNDLE, where + ": " + what); }

std::string list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", '" : "'") + items[i] + "'";
  return out + "]";
}

const json& check_keys(const json& data, const Keys& keys, const std::string& where) {
  if (!data.is_object()) bad(where, std::string("expected an object for ") + keys.type);
  std::set<std::string> known(keys.required.begin(), keys.required.end());
  known.insert(keys.optional.begin(), keys.optional.end());
  std::vector<std::string> unknown, missing;
  for (auto it = data.begin(); it != data.end(); ++it)
    if (!known.count(it.key())) unknown.push_back(it.key());
  for (const char* k : keys.required)
    if (!data.contains(k)) missing.push_back(k);
  if (!unknown.empty())
    bad(where, "unknown key(s) " + list(unknown) + " in " + keys.type + "; known: " +
                   list(std::vector<std::string>(known.begin(), known.end())));
  if (!missing.empty()) bad(where, "missing key(s) " + list(missing) + " in " + keys.type);
  return data;
}

std::string text(const json& v, const std::string& where, const char* key) {
  if (!v.is_string()) bad(where, std::string(key) + " must be a string");
  return v.get<std::string>();
}

int64_t integer(const json& v, const std::string& where, const char* key) {
  if (!v.is_number_integer()) bad(where, std::string(key) + " must be an integer, got " + v.dump());
  return v.get<int64_t>();
}

double number(const json& v, const std::string& where, const char* key) {
  if (!v.is_number()) bad(where, std::string(key) + " must be a number, got " + v.dump());
  return v.get<double>();
}

const json& array(const json& v, const std::string& where, const char* key) {
  if (!v.is_array()) bad(where, std::string(key) + " must be a list");
  return v;
}

// A bundle-relative POSIX path that cannot leave the bundle (runtime/bundle/manifest.py _relative_file).
std::string relative_file(const json& value, const std::string& where) {
  std::string path = text(value, where, "file");
  bool parent = false;
  std::stringstream parts(path);
  for (std::string part; std::getline(parts, part, '/');) parent = parent || part == "..";
  if (path.empty() || path[0] == '/' || path.find('\\') != std::string::npos || path.find(':') != std::string::npos || parent)
    bad(where, "file '" + path + "' must be a relative path inside the bundle (no '..', no drive, '/' separators)");
  return path;
}

TensorSpec tensor(const json& data, const std::string& where) {
  check_keys(data, kTensorKeys, where);
  TensorSpec t;
  t.name = text(data["name"], where, "name");
  t.dtype = text(data["dtype"], where, "dtype");
  for (const json& d : array(data["shape"], where, "shape")) {
    if (d.is_number_integer() && d.get<int64_t>() > 0) t.shape.push_back(std::to_string(d.get<int64_t>()));
    else if (d.is_string() && !d.get<std::string>().empty()) t.shape.push_back(d.get<std::string>());
    else bad(where, "tensor '" + t.name + "' has shape " + data["shape"].dump() + "; each dim must be a positive int or a dim name");
  }
  if (!kDtypes.count(t.dtype)) bad(where, "tensor '" + t.name + "' has dtype '" + t.dtype + "'");
  return t;
}

GraphSpec graph(const json& data, const std::string& where) {
  check_keys(data, kGraphKeys, where);
  GraphSpec g;
  g.precision = text(data["precision"], where, "precision");
  if (std::find(kPrecisions.begin(), kPrecisions.end(), g.precision) == kPrecisions.end())
    bad(where, "precision '" + g.precision + "' is not one of " + list(kPrecisions));
  g.sha256 = text(data["sha256"], where, "sha256");
  if (g.sha256.size() != 64 || g.sha256.find_first_not_of("0123456789abcdef") != std::string::npos)
    bad(where, "sha256 '" + g.sha256 + "' is not 64 lowercase hex digits");
  if (data.contains("opset")) {
    int64_t opset = data["opset"].is_number_integer() ? data["opset"].get<int64_t>() : -1;
    if (opset < 7 || opset > 30) bad(where, "opset " + data["opset"].dump() + " is not an ONNX opset number");
  }
  g.file = relative_file(data["file"], where);
  for (const json& t : array(data["inputs"], where, "inputs")) g.inputs.push_back(tensor(t, where));
  for (const json& t : array(data["outputs"], where, "outputs")) g.outputs.push_back(tensor(t, where));
  return g;
}

std::vector<std::string> names(const std::vector<TensorSpec>& specs) {
  std::vector<std::string> out;
  for (const auto& s : specs) out.push_back(s.name);
  return out;
}

// The graphs' tensors, from the manifest alone: global 1 -> 1, local 1 -> 2, fusion takes the local outputs,
// the global output and the boxes (in that order) -> 1; every input and output float32.
void check_graph_set(const std::map<std::string, GraphSpec>& set, const std::string& where) {
  const std::map<std::string, std::pair<size_t, size_t>> counts{{"global", {1, 1}}, {"local", {1, 2}}, {"fusion", {4, 1}}};
  for (const auto& [role, spec] : set) {
    auto [ins, outs] = counts.at(role);
    if (spec.inputs.size() != ins || spec.outputs.size() != outs)
      bad(where + "." + role, "the " + role + " graph has inputs " + list(names(spec.inputs)) + " and outputs " +
                                  list(names(spec.outputs)) + "; a " + role + " graph has " + std::to_string(ins) +
                                  " input(s) and " + std::to_string(outs) + " output(s)");
    for (const auto* group : {&spec.inputs, &spec.outputs})
      for (const auto& t : *group)
        if (t.dtype != "float32")
          bad(where + "." + role, "tensor '" + t.name + "' is " + t.dtype + "; this runtime feeds and reads float32 tensors");
  }
  const auto &local = set.at("local"), &global = set.at("global"), &fusion = set.at("fusion");
  if (fusion.inputs[0].name != local.outputs[0].name || fusion.inputs[1].name != local.outputs[1].name ||
      fusion.inputs[2].name != global.outputs[0].name)
    bad(where + ".fusion", "inputs " + list(names(fusion.inputs)) + " must begin with the local outputs " +
                               list(names(local.outputs)) + " and the global output '" + global.outputs[0].name + "'");
}

// Stage graphs per precision, checked to chain from the image to the global features at the feature
// stride (runtime/bundle/manifest.py _global_stages).
std::map<std::string, std::vector<GlobalStageSpec>> global_stages(const json& data, const Manifest& m, const std::string& where) {
  if (!data.is_object()) bad(where, "global_stages must map a precision to a list of stages");
  std::map<std::string, std::vector<GlobalStageSpec>> out;
  for (auto it = data.begin(); it != data.end(); ++it) {
    const std::string precision = it.key(), at = where + " global_stages." + precision;
    if (!m.graphs.count(precision)) bad(at, "the bundle has no " + precision + " graphs for these stages to belong to");
    if (!it.value().is_array() || it.value().empty()) bad(at, "expected a non-empty list of stages");
    std::vector<GlobalStageSpec> specs;
    for (size_t i = 0; i < it.value().size(); ++i) {
      const std::string sw = at + "[" + std::to_string(i) + "]";
      const json& stage = check_keys(it.value()[i], kStageKeys, sw);
      GlobalStageSpec spec;
      spec.graph = graph(stage["graph"], sw);
      const json &stride = stage["stride"], &halo = stage["halo"];
      if (!stride.is_number_integer() || !halo.is_number_integer() || stride.get<int64_t>() < 1 || stride.get<int64_t>() > 1024 ||
          halo.get<int64_t>() < 0 || halo.get<int64_t>() > 65536 || halo.get<int64_t>() % stride.get<int64_t>())
        bad(sw, "stride " + stride.dump() + " must be >= 1 and halo " + halo.dump() + " a non-negative multiple of it");
      spec.stride = static_cast<int>(stride.get<int64_t>());
      spec.halo = static_cast<int>(halo.get<int64_t>());
      const auto& g = spec.graph;
      if (g.inputs.size() != 1 || g.outputs.size() != 1 || g.inputs[0].name != kStageInput || g.outputs[0].name != kStageOutput)
        bad(sw, std::string("a stage graph must have input '") + kStageInput + "' and output '" + kStageOutput + "'");
      if (g.precision != precision) bad(sw, "precision field says '" + g.precision + "'");
      if (g.inputs[0].shape.size() != 4 || g.outputs[0].shape.size() != 4)
        bad(sw, "a stage graph's input and output must be [1, channels, rows, width]");
      if (g.inputs[0].dtype != "float32" || g.outputs[0].dtype != "float32")
        bad(sw, "a stage graph's tensors must be float32; this runtime feeds and reads float32 tensors");
      specs.push_back(spec);
    }
    const GraphSpec& whole = m.graphs.at(precision).at("global");
    if (whole.inputs[0].shape.size() < 2 || whole.outputs[0].shape.size() < 2)
      bad(at, "the global graph's input and output need a channel dimension");
    std::string channels = whole.inputs[0].shape[1];
    int64_t stride = 1;
    for (size_t i = 0; i < specs.size(); ++i) {
      const std::string& takes = specs[i].graph.inputs[0].shape[1];
      if (takes != channels) bad(at + "[" + std::to_string(i) + "]", "takes " + takes + " channels but receives " + channels);
      channels = specs[i].graph.outputs[0].shape[1];
      stride *= specs[i].stride;
    }
    if (channels != whole.outputs[0].shape[1])
      bad(at, "the last stage gives " + channels + " channels, the global features have " + whole.outputs[0].shape[1]);
    if (stride != kFeatureStride)
      bad(at, "the stage strides multiply to " + std::to_string(stride) + ", not the feature stride " + std::to_string(kFeatureStride));
    out[precision] = specs;
  }
  return out;
}

// provenance.flops as six numbers, or nothing (the time model then uses its default global work).
std::optional<Flops> flops(const json& provenance) {
  if (!provenance.is_object() || !provenance.contains("flops") || !provenance["flops"].is_object()) return std::nullopt;
  const json& f = provenance["flops"];
  Flops out;
  const std::pair<const char*, double*> fields[] = {{"global", &out.global}, {"local", &out.local},   {"fusion", &out.fusion},
                                                    {"height", &out.height}, {"width", &out.width}, {"batch", &out.batch}};
  for (const auto& [key, value] : fields) {
    if (!f.contains(key) || !f[key].is_number()) return std::nullopt;
    *value = f[key].get<double>();
  }
  return out;
}

}  // namespace

const GraphSpec& Manifest::graph(const std::string& role, const std::string& precision) const {
  auto it = graphs.find(precision);
  if (it == graphs.end()) {
    std::string have;
    for (const auto& [p, _] : graphs) have += (have.empty() ? "" : ", ") + p;
    fail(GLSNET_ERROR_BUNDLE, "the bundle has no " + precision + " graphs (it has: " + have +
                                  "); build them with: glsnet-export build BUNDLE --" + precision);
  }
  return it->second.at(role);
}

Manifest read_manifest(const std::string& bundle_dir) {
  struct stat st {};
  if (stat(bundle_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    fail(GLSNET_ERROR_BUNDLE, bundle_dir + ": not a directory; pass a bundle written by glsnet-export onnx");
  const std::string where = bundle_dir + "/manifest.json";
  std::ifstream in(where, std::ios::binary);
  if (!in)
    fail(GLSNET_ERROR_BUNDLE, bundle_dir + ": no manifest.json; this is not a GLSNet bundle (write one with glsnet-export onnx)");
  json d;
  try {
    d = json::parse(in);
  } catch (const json::exception& e) {
    fail(GLSNET_ERROR_BUNDLE, where + ": not valid JSON (" + e.what() + ")");
  }
  try {
    check_keys(d, kManifestKeys, where);
    Manifest m;
    if (!d["schema_version"].is_number_integer() || d["schema_version"].get<int64_t>() != kSchemaVersion)
      bad(where, "schema_version " + d["schema_version"].dump() + " is not supported by this runtime (it reads schema " +
                     std::to_string(kSchemaVersion) + "); re-export the bundle with this toolkit's glsnet-export");
    for (const json& c : array(d["classes"], where, "classes")) m.classes.push_back(c.is_string() ? c.get<std::string>() : c.dump());
    if (m.classes.empty()) bad(where, "classes is empty; a bundle segments into at least one class");
    for (const json& rgb : array(d["palette"], where, "palette")) {
      if (!rgb.is_array() || rgb.size() != 3) bad(where, "palette needs one RGB triple (0..255) per class");
      std::array<uint8_t, 3> c{};
      for (int i = 0; i < 3; ++i) {
        int64_t v = integer(rgb[i], where, "palette");
        if (v < 0 || v > 255) bad(where, "palette needs one RGB triple (0..255) per class");
        c[i] = static_cast<uint8_t>(v);
      }
      m.palette.push_back(c);
    }
    if (m.palette.size() != m.classes.size())
      bad(where, "palette needs one RGB triple (0..255) per class (" + std::to_string(m.classes.size()) + " classes)");

    if (!d["graphs"].is_object()) bad(where, "graphs must be an object");
    for (auto it = d["graphs"].begin(); it != d["graphs"].end(); ++it) {
      const std::string precision = it.key();
      if (std::find(kPrecisions.begin(), kPrecisions.end(), precision) == kPrecisions.end())
        bad(where, "graphs has unknown precision '" + precision + "'; known: " + list(kPrecisions));
      const json& roles = it.value();
      bool exact = roles.is_object() && roles.size() == kRoles.size();
      for (const auto& r : kRoles) exact = exact && roles.contains(r);
      if (!exact) bad(where, precision + " graphs must be exactly ('global', 'local', 'fusion')");
      const std::string at = where + " graphs." + precision;
      for (const auto& role : kRoles) {
        GraphSpec g = graph(roles[role], at + "." + role);
        if (g.precision != precision) bad(at + "." + role, "precision field says '" + g.precision + "'");
        m.graphs[precision][role] = g;
      }
      check_graph_set(m.graphs[precision], at);
    }
    if (!m.graphs.count("fp32")) bad(where, "the fp32 graphs are missing");

    const std::string nw = where + " normalization";
    const json& norm = check_keys(d["normalization"], kNormalizationKeys, nw);
    for (const json& v : array(norm["mean"], nw, "mean")) m.normalization.mean.push_back(number(v, nw, "mean"));
    for (const json& v : array(norm["std"], nw, "std")) m.normalization.std.push_back(number(v, nw, "std"));
    if (norm.contains("scale")) m.normalization.scale = number(norm["scale"], nw, "scale");
    if (norm.contains("bands")) {
      m.normalization.bands.clear();
      for (const json& v : array(norm["bands"], nw, "bands")) {
        int64_t b = integer(v, nw, "bands");
        if (b < 0 || b > 4096) bad(nw, "band index " + std::to_string(b) + " is out of range");
        m.normalization.bands.push_back(static_cast<int>(b));
      }
    }
    bool positive = true;
    for (double s : m.normalization.std) positive = positive && s > 0;
    if (m.normalization.mean.size() != m.normalization.std.size() || m.normalization.std.size() != m.normalization.bands.size() ||
        !positive || m.normalization.bands.empty())
      bad(nw, "mean, std and bands need one entry per band, and std > 0");

    // The pixels the model was trained on (runtime/bundle/manifest.py _input_pixels); other images need an input range.
    if (d.contains("input_pixels")) {
      const std::string iw = where + " input_pixels";
      const json& px = check_keys(d["input_pixels"], kInputPixelsKeys, iw);
      if (px.contains("dtype")) m.input_pixels.dtype = text(px["dtype"], iw, "dtype");
      const std::vector<std::string> known{"uint8", "int8", "uint16", "int16", "uint32", "int32", "float16", "float32", "float64"};
      if (std::find(known.begin(), known.end(), m.input_pixels.dtype) == known.end())
        bad(iw, "dtype '" + m.input_pixels.dtype + "' is not a pixel type; known: uint8, int8, uint16, int16, uint32, int32, float16, float32, float64");
      if (px.contains("low")) m.input_pixels.low = number(px["low"], iw, "low");
      if (px.contains("high")) m.input_pixels.high = number(px["high"], iw, "high");
      if (!std::isfinite(m.input_pixels.low) || !std::isfinite(m.input_pixels.high))
        bad(iw, "low and high must be finite numbers");
      if (!(m.input_pixels.low < m.input_pixels.high))
        bad(iw, "the value range [" + format_g(m.input_pixels.low) + ", " + format_g(m.input_pixels.high) + "] is empty; need low < high");
    }
    const std::string pw = where + " patch";
    const json& patch = check_keys(d["patch"], kPatchKeys, pw);
    int64_t out_stride = patch.contains("output_stride") ? integer(patch["output_stride"], pw, "output_stride") : kOutputStride;
    int64_t feat_stride = patch.contains("feature_stride") ? integer(patch["feature_stride"], pw, "feature_stride") : kFeatureStride;
    if (out_stride != kOutputStride || feat_stride != kFeatureStride)
      bad(pw, "output_stride " + std::to_string(out_stride) + " / feature_stride " + std::to_string(feat_stride) +
                  " differ from the 4 / 32 this runtime's graphs and stitching are built for");
    int64_t size = integer(patch["size"], pw, "size"), overlap = integer(patch["min_overlap"], pw, "min_overlap");
    if (size <= 0 || size > 65536 || overlap < 0 || overlap >= size || size % kOutputStride)
      bad(pw, "size " + std::to_string(size) + " and min_overlap " + std::to_string(overlap) +
                  " are not a valid geometry (need 0 <= min_overlap < size, size a multiple of 4)");
    m.patch_size = static_cast<int>(size);
    m.min_overlap = static_cast<int>(overlap);

    if (d.contains("engines")) {
      int i = 0;
      for (const json& e : array(d["engines"], where, "engines")) {
        const std::string ew = where + " engines[" + std::to_string(i++) + "]";
        check_keys(e, kEngineKeys, ew);
        EngineSpec spec;
        spec.target = text(e["target"], ew, "target");
        spec.precision = text(e["precision"], ew, "precision");
        spec.directory = relative_file(e["directory"], ew);
        if (!e["files"].is_object()) bad(ew, "files must be an object of role -> {file, sha256}");
        for (auto f = e["files"].begin(); f != e["files"].end(); ++f) {
          if (!f.value().is_object() || !f.value().contains("file") || !f.value().contains("sha256"))
            bad(ew, "files entry for " + f.key() + " must be {'file', 'sha256'}");
          spec.files[f.key()] = EngineFile{relative_file(f.value()["file"], ew), text(f.value()["sha256"], ew, "sha256")};
        }
        m.engines.push_back(spec);
      }
    }
    if (d.contains("model") && d["model"].is_object()) {
      const json& model = d["model"];
      if (model.contains("width") && model["width"].is_number_integer()) m.model_width = model["width"].get<int>();
      if (model.contains("skip_width") && model["skip_width"].is_number_integer()) m.model_skip_width = model["skip_width"].get<int>();
    }
    if (d.contains("global_stages")) m.global_stages = global_stages(d["global_stages"], m, where);
    if (d.contains("provenance")) m.flops = flops(d["provenance"]);
    return m;
  } catch (const json::exception& e) {
    fail(GLSNET_ERROR_BUNDLE, where + ": malformed manifest (" + e.what() + "); re-export the bundle");
  }
}

std::string format_g(double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", value);
  return buf;
}

std::string sha256_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(GLSNET_ERROR_BUNDLE, path + ": cannot be read");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<unsigned char> block(1 << 20);
  size_t n;
  while ((n = std::fread(block.data(), 1, block.size(), f)) > 0) EVP_DigestUpdate(ctx.get(), block.data(), n);
  bool error = std::ferror(f);
  std::fclose(f);
  if (error) fail(GLSNET_ERROR_BUNDLE, path + ": read error while checking its sha256");
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

std::string verify_file(const std::string& bundle_dir, const std::string& relative, const std::string& sha256) {
  const std::string path = bundle_dir + "/" + relative;
  struct stat st {};
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    fail(GLSNET_ERROR_BUNDLE, path + ": named in the manifest but missing; the bundle is incomplete");
  const std::string actual = sha256_file(path);
  if (actual != sha256)
    fail(GLSNET_ERROR_BUNDLE, path + ": sha256 " + actual.substr(0, 16) + "... does not match the manifest's " +
                                  sha256.substr(0, 16) + "...; the file was changed or corrupted after export; re-export or rebuild the bundle");
  return path;
}

}  // namespace glsnet
