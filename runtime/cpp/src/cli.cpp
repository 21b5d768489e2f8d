// glsnet-cpp: `glsnet-cpp run IMAGE... --bundle DIR -o OUT/`, the C++ twin of `glsnet run` (same output files).
#include <gnu/libc-version.h>
#include <malloc.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <regex>
#include <string>
#include <vector>

#include "glsnet/glsnet.hpp"

namespace {

const char* kUsage =
    "Usage: glsnet-cpp run IMAGE... --bundle DIR -o OUT [options]\n"
    "\n"
    "Segment PNG, JPEG or TIFF images with a GLSNet bundle on ONNX Runtime (no Python) and write\n"
    "OUT/<stem>_mask.<format>, OUT/<stem>_color.<format> (and OUT/<stem>_stats.json with --stats), as\n"
    "`glsnet run` does; TIFF masks of a GeoTIFF carry its georeferencing tags.\n"
    "\n"
    "Options:\n"
    "  -b, --bundle DIR       bundle directory written by glsnet-export (required)\n"
    "  -o, --output DIR       output folder, created if missing (required)\n"
    "  --precision P          graph set: fp32 (default), fp16 or int8\n"
    "  --device D             ONNX Runtime execution provider: cpu (default), cuda or tensorrt\n"
    "  --device-id N          the GPU of the cuda / tensorrt providers (default 0)\n"
    "  --threads N            ONNX Runtime intra-op threads per graph (default: one per core)\n"
    "  --max-memory SIZE      memory budget, e.g. 2GB, 1.5GiB; picks batch size and global banding\n"
    "  --batch-size N         patches per batch (default: chosen by the memory plan)\n"
    "  --format F             png (default) or tif\n"
    "  --no-color             do not write the colour mask\n"
    "  --stats                also write per-class pixel statistics as JSON (as glsnet run --stats)\n"
    "  --bands B              input bands to feed the model, e.g. 0,1,2 (default: the bundle's; as glsnet run --bands)\n"
    "  --input-range R        how 16-bit or float pixels map onto the model's trained range: MIN,MAX for\n"
    "                         every band (0,65535; 0,1 for float), MIN,MAX/MIN,MAX/... one per band, or\n"
    "                         pLOW,pHIGH a percentile stretch per band (p2,p98); needed when the image's\n"
    "                         pixel type differs from the bundle's (as glsnet run --input-range)\n"
    "  --max-pixels N         largest PNG/JPEG (decoded whole) accepted, in pixels (default 500000000)\n"
    "  --min-overlap PX       minimum overlap of neighbouring patches in pixels, 0 <= PX < patch size\n"
    "                         (default: the bundle's patch.min_overlap; as glsnet run --min-overlap)\n"
    "  -h, --help             show this help\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// '2GB', '1.5GiB', '512MB' or a byte count -> bytes (decimal units unless 'iB'), as runtime.algorithm.memory_budget.
uint64_t parse_memory(const std::string& text) {
  static const std::regex pattern(R"(\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*)");
  std::smatch m;
  if (!std::regex_match(text, m, pattern)) throw UsageError("--max-memory '" + text + "' is not understood; write it like 2GB, 1.5GiB or 800MB");
  std::string unit = m[2];
  for (auto& ch : unit) ch = static_cast<char>(std::tolower(ch));
  const std::vector<std::pair<std::string, double>> units{{"", 1},        {"b", 1},        {"k", 1e3},        {"kb", 1e3},
                                                          {"m", 1e6},      {"mb", 1e6},     {"g", 1e9},        {"gb", 1e9},
                                                          {"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0}};
  for (const auto& [name, factor] : units)
    if (unit == name) {
      const double value = std::floor(std::stod(m[1]) * factor);
      if (value <= 0) throw UsageError("--max-memory '" + text + "' must be positive");
      return static_cast<uint64_t>(value);
    }
  throw UsageError("--max-memory '" + text + "' is not understood; write it like 2GB, 1.5GiB or 800MB");
}

int parse_int(const std::string& flag, const std::string& text, int minimum) {
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end || value < minimum || value > 1 << 30)
    throw UsageError(flag + " '" + text + "': expected an integer >= " + std::to_string(minimum));
  return static_cast<int>(value);
}

// --min-overlap: a whole number >= 0 (the library checks it against the bundle's patch size); the words of
// runtime/bundle/manifest.py min_overlap_error, so both CLIs refuse a negative overlap alike.
int32_t parse_min_overlap(const std::string& text) {
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end || value < 0 || value > 1 << 30)
    throw UsageError("--min-overlap " + text +
                     ": the minimum patch overlap must be a whole number of pixels, at least 0 and less than the bundle's patch size");
  return static_cast<int32_t>(value);
}

int exit_code(glsnet_status status) {
  return status == GLSNET_ERROR_INPUT || status == GLSNET_ERROR_INVALID_ARGUMENT || status == GLSNET_ERROR_OUTPUT ? 2 : 1;
}

}  // namespace

// glibc keeps freed blocks in per-thread arenas and raises its mmap threshold after large frees, so
// ONNX Runtime's big activations (arena off) stay resident: measured at 9792 x 2448 (default config),
// peak RSS 1546 MB with glibc's defaults, 978 MB with two arenas and a fixed 1 MiB mmap threshold.
static void bound_malloc_retention() {
  mallopt(M_ARENA_MAX, 2);
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
}

// glibc.malloc.hugetlb=1 puts glibc's mmapped blocks, ONNX Runtime's activations among them, on transparent huge
// pages: 0.2 instead of 1.8 million page faults per paper-size 2448 x 2448 image, same peak RSS, 0.4 s faster
// (runtime/process_memory/huge_pages.py). glibc reads tunables at start, so the CLI runs itself once more with it
// added to GLIBC_TUNABLES, unless that names it already (glibc.malloc.hugetlb=0 turns it off), glibc is older than
// 2.35 or transparent huge pages are off; when the exec fails it goes on as it is.
static void restart_with_huge_pages(char** argv) {
  const char* tunable = "glibc.malloc.hugetlb";
  const char* current = std::getenv("GLIBC_TUNABLES");
  const std::string tunables = current ? current : "";
  std::stringstream entries(tunables);
  for (std::string entry; std::getline(entries, entry, ':');)
    if (entry.substr(0, entry.find('=')) == tunable) return;
  int major = 0, minor = 0;
  if (std::sscanf(gnu_get_libc_version(), "%d.%d", &major, &minor) != 2 || major < 2 || (major == 2 && minor < 35)) return;
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string setting;
  if (!std::getline(thp, setting) || setting.find("[never]") != std::string::npos) return;
  const std::string wanted = tunables + (tunables.empty() ? "" : ":") + tunable + "=1";
  if (setenv("GLIBC_TUNABLES", wanted.c_str(), 1) != 0) return;
  execv("/proc/self/exe", argv);
  if (current) setenv("GLIBC_TUNABLES", current, 1);
  else unsetenv("GLIBC_TUNABLES");
}

int main(int argc, char** argv) {
  restart_with_huge_pages(argv);
  bound_malloc_retention();
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  try {
    if (args[0] != "run") throw UsageError("unknown command '" + args[0] + "'; the command is: glsnet-cpp run IMAGE... --bundle DIR -o OUT");
    std::vector<std::string> images;
    std::string bundle, output, format = "png", input_range, bands;
    glsnet_options o;
    glsnet_options_init_sized(&o, sizeof o);
    o.release_heap = 1;  // this process is ours: keep RSS near what the runtime holds (see bound_malloc_retention)
    std::string precision = "fp32", device = "cpu";
    bool color = true, stats = false;
    for (size_t i = 1; i < args.size(); ++i) {
      const std::string& a = args[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= args.size()) throw UsageError(a + " needs a value");
        return args[++i];
      };
      if (a == "-h" || a == "--help") {
        std::fputs(kUsage, stdout);
        return 0;
      } else if (a == "-b" || a == "--bundle") bundle = value();
      else if (a == "-o" || a == "--output") output = value();
      else if (a == "--precision") precision = value();
      else if (a == "--device") device = value();
      else if (a == "--threads") o.threads = parse_int(a, value(), 1);
      else if (a == "--device-id") o.device_id = parse_int(a, value(), 0);
      else if (a == "--batch-size") o.batch_size = parse_int(a, value(), 1);
      else if (a == "--max-memory") o.max_memory = parse_memory(value());
      else if (a == "--max-pixels") o.max_pixels = parse_int(a, value(), 1);
      else if (a == "--min-overlap") o.min_overlap = parse_min_overlap(value());
      else if (a == "--format") format = value();
      else if (a == "--no-color") color = false;
      else if (a == "--stats") stats = true;
      else if (a == "--input-range") input_range = value();
      else if (a == "--bands") bands = value();
      else if (a == "--color") color = true;
      else if (!a.empty() && a[0] == '-') throw UsageError("unknown option '" + a + "' (see glsnet-cpp run --help)");
      else images.push_back(a);
    }
    if (images.empty()) throw UsageError("no input images given");
    if (bundle.empty()) throw UsageError("--bundle DIR is required");
    if (output.empty()) throw UsageError("-o/--output DIR is required");
    if (format != "png" && format != "tif") throw UsageError("--format '" + format + "' is not one of png, tif");
    o.precision = precision.c_str();
    o.device = device.c_str();
    o.bands = bands.c_str();
    glsnet_handle* handle = nullptr;
    glsnet_status status = glsnet_open(bundle.c_str(), &o, &handle);
    if (status != GLSNET_OK) {
      std::fprintf(stderr, "error: %s\n", glsnet_last_error());
      return exit_code(status);
    }
    for (const auto& image : images) {
      glsnet_file_options file_options;
      glsnet_file_options_init(&file_options, sizeof file_options);
      file_options.format = format.c_str();
      file_options.color = color ? 1 : 0;
      file_options.stats = stats ? 1 : 0;
      file_options.input_range = input_range.empty() ? nullptr : input_range.c_str();
      status = glsnet_segment_file_with(handle, image.c_str(), output.c_str(), &file_options);
      if (status != GLSNET_OK) {
        std::fprintf(stderr, "error: %s\n", glsnet_last_error());
        glsnet_close(handle);
        return exit_code(status);
      }
      const std::string stem = [&] {
        std::string base = image.substr(image.rfind('/') == std::string::npos ? 0 : image.rfind('/') + 1);
        const size_t dot = base.rfind('.');
        return dot == std::string::npos || dot == 0 ? base : base.substr(0, dot);
      }();
      std::string written = output + "/" + stem + "_mask." + format;
      if (color) written += ", " + output + "/" + stem + "_color." + format;
      if (stats) written += ", " + output + "/" + stem + "_stats.json";
      std::fprintf(stderr, "%s -> %s\n", image.c_str(), written.c_str());
    }
    glsnet_close(handle);
    return 0;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
