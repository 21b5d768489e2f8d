// Images in (PNG, JPEG decoded whole; TIFF read window by window) and masks out (PNG and TIFF written row by
// row under temporary names, renamed only when every output is complete).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace glsnet {

constexpr int64_t kDefaultMaxPixels = 500000000;

// What the pipeline reads: a size, a band count, and rows on demand as float [rows, width, bands] (thread-safe).
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  virtual void read_rows(int64_t top, int64_t bottom, float* out) const = 0;
  std::string name;
  int64_t height = 0, width = 0, bands = 0;
  int64_t resident_bytes = 0;  // bytes of the decoded image held in memory (0: read from the file on demand)
};

// Borrowed uint8 pixels [height, width, bands].
std::unique_ptr<ImageSource> array_source(const uint8_t* pixels, int64_t height, int64_t width, int64_t bands, std::string name);

// A PNG, JPEG or TIFF file; Error(GLSNET_ERROR_INPUT) naming the file for anything unreadable.
std::unique_ptr<ImageSource> open_image(const std::string& path, int64_t max_pixels);

// One output image written row by row under a temporary name; commit() renames it onto its path.
class MaskWriter {
 public:
  virtual ~MaskWriter() = default;
  virtual void write_rows(const uint8_t* rows, int64_t count) = 0;  // [count, width, channels]
  virtual void finish() = 0;                                         // flush and close the temporary file
  const std::string& path() const { return path_; }
  const std::string& temporary() const { return temporary_; }

 protected:
  std::string path_, temporary_;
};

// format "png" or "tif"; channels 1 (class indices) or 3 (colour). Creates the temporary file now.
std::unique_ptr<MaskWriter> open_writer(const std::string& path, const std::string& format, int64_t height, int64_t width,
                                        int channels);

// mkdir -p
void make_dirs(const std::string& path);

// The file name's stem: "a/b/c.tif" -> "c".
std::string file_stem(const std::string& path);

}  // namespace glsnet
