// Images in (PNG, JPEG decoded whole; TIFF read window by window) and masks out (PNG and TIFF written row by
// row under temporary names, renamed only when every output is complete).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace glsnet {

constexpr int64_t kDefaultMaxPixels = 500000000;

// A GeoTIFF georeferencing tag of an input TIFF, copied onto the TIFF masks written for it (runtime/image_io/readers.py
// GEO_TAGS and _tag_tuple): ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory, GeoDoubleParams and
// GeoAsciiParams. GDAL_NODATA and GDAL_METADATA are not copied: they describe the input's values, not a class mask.
struct GeoTag {
  uint32_t code = 0;
  int type = 0;        // libtiff's TIFFDataType: TIFF_ASCII, TIFF_SHORT, TIFF_LONG, TIFF_FLOAT, TIFF_DOUBLE or TIFF_LONG8
  uint32_t count = 0;  // values (for TIFF_ASCII: bytes with the closing NUL)
  std::vector<uint8_t> data;  // count values of `type`, native byte order
};

// What the pipeline reads: a size, a band count, and rows on demand as float [rows, width, bands] (thread-safe).
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  virtual void read_rows(int64_t top, int64_t bottom, float* out) const = 0;
  std::string name;
  std::string dtype = "uint8";  // the pixel type as numpy names it (uint8, uint16, float32, ...)
  int64_t height = 0, width = 0, bands = 0;
  int64_t resident_bytes = 0;  // bytes of the decoded image held in memory (0: read from the file on demand)
  std::vector<GeoTag> geotags;  // a TIFF's GeoTIFF tags, in code order (empty for other images)
};

// Borrowed pixels: `height` rows of [width, bands] samples of `pixel_type` (glsnet_pixel_type), `row_pitch` bytes apart.
std::unique_ptr<ImageSource> array_source(const void* pixels, int pixel_type, int64_t height, int64_t width, int64_t bands,
                                          int64_t row_pitch, std::string name);

// Bytes of one sample of a glsnet_pixel_type (0 for an unknown type).
int64_t sample_bytes(int pixel_type);

// A PNG, JPEG or TIFF file; Error(GLSNET_ERROR_INPUT) naming the file for anything unreadable.
std::unique_ptr<ImageSource> open_image(const std::string& path, int64_t max_pixels);

// One output image written row by row under a temporary name; commit_all renames it onto its path. A writer not
// committed removes its temporary when destroyed, finished or not, so an error anywhere leaves no file behind.
class MaskWriter {
 public:
  virtual ~MaskWriter() = default;
  virtual void write_rows(const uint8_t* rows, int64_t count) = 0;  // [count, width, channels]
  virtual void finish() = 0;                                         // flush and close the temporary file
  const std::string& path() const { return path_; }
  const std::string& temporary() const { return temporary_; }
  void mark_committed() { committed_ = true; }  // commit_all renamed it: the destructor leaves the file alone

 protected:
  std::string path_, temporary_;
  bool committed_ = false;
};

// format "png" or "tif"; channels 1 (class indices) or 3 (colour). Creates the temporary file now. A TIFF carries
// `geotags` (ignored for PNG, as the Python runtime does).
std::unique_ptr<MaskWriter> open_writer(const std::string& path, const std::string& format, int64_t height, int64_t width,
                                        int channels, const std::vector<GeoTag>& geotags = {});

// A text output (the statistics JSON) written now under a temporary name, renamed by commit_all with the masks;
// write_rows is not used.
std::unique_ptr<MaskWriter> open_text_output(const std::string& path, const std::string& text);

// Renames every finished writer's temporary onto its path, all or none (runtime/atomic_file.py replace_all): when a
// rename fails midway, the outputs already replaced are put back as they were (restored from a hard-link backup,
// or removed when there was none) and Error(GLSNET_ERROR_OUTPUT) is thrown.
void commit_all(const std::vector<MaskWriter*>& writers);

// Refuses an image that lacks a band the model reads (runtime/image_io/preprocess.py check_bands, same messages).
void check_bands(int64_t band_count, const std::vector<int>& model_bands, const std::string& name);

// mkdir -p
void make_dirs(const std::string& path);

// The file name's stem: "a/b/c.tif" -> "c".
std::string file_stem(const std::string& path);

}  // namespace glsnet
