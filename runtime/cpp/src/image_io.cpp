#include "image_io.hpp"

#include <errno.h>
#include <fcntl.h>
#include <jpeglib.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <tiffio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <random>

#include "errors.hpp"
#include "logging.hpp"

namespace glsnet {
namespace {

[[noreturn]] void input_error(const std::string& message) { fail(GLSNET_ERROR_INPUT, message); }

// --------------------------------------------------------------------------- decoded images

// A whole decoded image of 8- or 16-bit samples [height, width, bands].
class DecodedSource : public ImageSource {
 public:
  std::vector<uint8_t> bytes;
  std::vector<uint16_t> words;  // 16-bit samples (16-bit grey PNG)
  void read_rows(int64_t top, int64_t bottom, float* out) const override {
    const size_t begin = static_cast<size_t>(top * width * bands), count = static_cast<size_t>((bottom - top) * width * bands);
    if (!words.empty())
      for (size_t i = 0; i < count; ++i) out[i] = static_cast<float>(words[begin + i]);
    else
      for (size_t i = 0; i < count; ++i) out[i] = static_cast<float>(bytes[begin + i]);
  }
};

// A caller's buffer, typed and strided (glsnet_image).
template <typename Sample>
class BorrowedSource : public ImageSource {
 public:
  const unsigned char* pixels = nullptr;
  int64_t row_pitch = 0;
  void read_rows(int64_t top, int64_t bottom, float* out) const override {
    const size_t samples = static_cast<size_t>(width * bands);
    for (int64_t y = top; y < bottom; ++y) {
      const unsigned char* row = pixels + y * row_pitch;
      float* dst = out + static_cast<size_t>(y - top) * samples;
      for (size_t i = 0; i < samples; ++i) {
        Sample v;
        std::memcpy(&v, row + i * sizeof(Sample), sizeof(Sample));
        dst[i] = static_cast<float>(v);
      }
    }
  }
};

template <typename Sample>
std::unique_ptr<ImageSource> borrowed(const void* pixels, int64_t height, int64_t width, int64_t bands, int64_t row_pitch,
                                      std::string name, const char* dtype) {
  auto source = std::make_unique<BorrowedSource<Sample>>();
  source->pixels = static_cast<const unsigned char*>(pixels);
  source->row_pitch = row_pitch;
  source->height = height;
  source->width = width;
  source->bands = bands;
  source->dtype = dtype;
  source->name = std::move(name);
  source->resident_bytes = height * width * bands * static_cast<int64_t>(sizeof(Sample));
  return source;
}

void check_pixels(const std::string& path, int64_t height, int64_t width, int64_t max_pixels) {
  if (height <= 0 || width <= 0)
    input_error(path + ": the image is empty (" + std::to_string(height) + " x " + std::to_string(width) + " pixels); expected at least 1 x 1");
  if (max_pixels > 0 && width * height > max_pixels)
    input_error(path + ": " + std::to_string(width) + " x " + std::to_string(height) + " = " + std::to_string(width * height) +
                " pixels is above the limit of " + std::to_string(max_pixels) +
                " for PNG/JPEG (decoded whole); raise it with --max-pixels or convert the image to a tiled TIFF");
}

struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_fail(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

void jpeg_warn(j_common_ptr cinfo, int level) {
  if (level < 0) jpeg_fail(cinfo);  // corrupt or truncated data: refuse, as Pillow does
}

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

// libjpeg's decompressor, destroyed on every way out (errors longjmp back into decode_jpeg, which then throws).
struct JpegReader {
  jpeg_decompress_struct cinfo{};
  JpegError err{};
  volatile bool created = false;
  ~JpegReader() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

std::unique_ptr<ImageSource> decode_jpeg(const std::string& path, File file, int64_t max_pixels) {
  auto source = std::make_unique<DecodedSource>();
  JpegReader reader;
  jpeg_decompress_struct& cinfo = reader.cinfo;
  cinfo.err = jpeg_std_error(&reader.err.mgr);
  reader.err.mgr.error_exit = jpeg_fail;
  reader.err.mgr.emit_message = jpeg_warn;
  if (setjmp(reader.err.jump))
    input_error(path + ": the image data is corrupt or truncated (" + reader.err.message + "); re-export or re-download it");
  jpeg_create_decompress(&cinfo);
  reader.created = true;
  jpeg_stdio_src(&cinfo, file.get());
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK)
    input_error(path + ": CMYK JPEGs are not supported; convert the image to RGB");
  cinfo.out_color_space = cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  check_pixels(path, cinfo.image_height, cinfo.image_width, max_pixels);
  jpeg_start_decompress(&cinfo);
  source->height = cinfo.output_height;
  source->width = cinfo.output_width;
  source->bands = cinfo.output_components;
  source->bytes.resize(static_cast<size_t>(source->height * source->width * source->bands));
  const size_t stride = static_cast<size_t>(source->width * source->bands);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = source->bytes.data() + cinfo.output_scanline * stride;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  return source;
}

struct PngError {
  jmp_buf jump;
  char message[256];
};

void png_fail(png_structp png, png_const_charp message) {
  auto* err = static_cast<PngError*>(png_get_error_ptr(png));
  std::snprintf(err->message, sizeof err->message, "%s", message);
  longjmp(err->jump, 1);
}

// libpng's warnings go to the log of the call decoding or writing (on this thread), if it has one.
void png_warn(png_structp, png_const_charp message) {
  log_to(current_log_target(), GLSNET_LOG_WARNING, std::string("libpng: ") + (message ? message : ""));
}

// libpng's read structs, destroyed on every way out.
struct PngReader {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~PngReader() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

std::unique_ptr<ImageSource> decode_png(const std::string& path, File file, int64_t max_pixels) {
  auto source = std::make_unique<DecodedSource>();
  PngError err{};
  PngReader reader;
  reader.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_fail, png_warn);
  reader.info = reader.png ? png_create_info_struct(reader.png) : nullptr;
  if (!reader.info) fail(GLSNET_ERROR_MEMORY, path + ": out of memory while reading the PNG");
  png_structp png = reader.png;
  png_infop info = reader.info;
  std::vector<png_bytep> rows;
  if (setjmp(err.jump))
    input_error(path + ": the image data is corrupt or truncated (" + err.message + "); re-export or re-download it");
  png_init_io(png, file.get());
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_read_info(png, info);
  const png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
  const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  check_pixels(path, height, width, max_pixels);
  // Pillow's modes: palette -> RGB; grey below 8 bits -> 8; 16-bit grey stays 16-bit; 16-bit colour -> 8 (high byte).
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  const bool wide = depth == 16 && color == PNG_COLOR_TYPE_GRAY;
  if (depth == 16 && !wide) png_set_strip_16(png);
  if (wide) png_set_swap(png);  // host order
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  source->height = height;
  source->width = width;
  source->bands = png_get_channels(png, info);
  const size_t stride = png_get_rowbytes(png, info);
  rows.resize(height);
  if (wide) {
    source->words.resize(static_cast<size_t>(height) * width);
    for (png_uint_32 y = 0; y < height; ++y) rows[y] = reinterpret_cast<png_bytep>(source->words.data() + y * static_cast<size_t>(width));
  } else {
    source->bytes.resize(stride * height);
    for (png_uint_32 y = 0; y < height; ++y) rows[y] = source->bytes.data() + y * stride;
  }
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  return source;
}

// --------------------------------------------------------------------------- TIFF

// libtiff's errors for one TIFF handle. With libtiff >= 4.5 they go to the handle's own handler (TIFFOpenExt), so
// a host's process-wide handlers (GDAL's, say) are neither replaced nor called for glsnet's files; older libtiff
// has only process-wide handlers, installed once, which write a per-thread message.
#if TIFFLIB_VERSION >= 20221213
#define GLSNET_TIFF_HANDLE_ERRORS 1
#else
#define GLSNET_TIFF_HANDLE_ERRORS 0
#endif

std::string format_tiff_message(const char* module, const char* fmt, va_list args) {
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fmt, args);
  return std::string(module ? module : "libtiff") + ": " + buf;
}

// A libtiff warning to the log of the call that opened the TIFF: tags libtiff has no definition for (GeoTIFF's,
// GDAL's) at INFO, the rest at WARNING.
void log_tiff_warning(const LogTarget* target, const char* module, const char* fmt, va_list args) {
  if (!target || !target->callback) return;
  const std::string message = format_tiff_message(module, fmt, args);
  log_to(target, message.find("Unknown field with tag") != std::string::npos ? GLSNET_LOG_INFO : GLSNET_LOG_WARNING, message);
}

#if GLSNET_TIFF_HANDLE_ERRORS
int tiff_error_ext(TIFF*, void* user_data, const char* module, const char* fmt, va_list args) {
  *static_cast<std::string*>(user_data) = format_tiff_message(module, fmt, args);
  return 1;  // handled: the process-wide handler is not called
}

int tiff_warning_ext(TIFF*, void* user_data, const char* module, const char* fmt, va_list args) {
  log_tiff_warning(static_cast<const LogTarget*>(user_data), module, fmt, args);
  return 1;
}
#else
thread_local std::string tiff_message;

void tiff_error(const char* module, const char* fmt, va_list args) { tiff_message = format_tiff_message(module, fmt, args); }

void tiff_warning(const char* module, const char* fmt, va_list args) { log_tiff_warning(current_log_target(), module, fmt, args); }
#endif

class TiffErrors {
 public:
  TiffErrors() : log_(current_log_target()) {}
  void clear() {
    message_.clear();
#if !GLSNET_TIFF_HANDLE_ERRORS
    tiff_message.clear();
#endif
  }
  std::string text() const {
#if GLSNET_TIFF_HANDLE_ERRORS
    return message_;
#else
    return tiff_message;
#endif
  }
  // TIFFOpen with this object receiving the handle's errors; it must outlive the handle.
  TIFF* open(const std::string& path, const char* mode) {
    clear();
#if GLSNET_TIFF_HANDLE_ERRORS
    std::unique_ptr<TIFFOpenOptions, void (*)(TIFFOpenOptions*)> options(TIFFOpenOptionsAlloc(), TIFFOpenOptionsFree);
    if (!options) fail(GLSNET_ERROR_MEMORY, path + ": out of memory while opening the TIFF");
    TIFFOpenOptionsSetErrorHandlerExtR(options.get(), tiff_error_ext, &message_);
    TIFFOpenOptionsSetWarningHandlerExtR(options.get(), tiff_warning_ext, const_cast<LogTarget*>(log_));
    return TIFFOpenExt(path.c_str(), mode, options.get());
#else
    static std::once_flag once;
    std::call_once(once, [] {
      TIFFSetErrorHandler(tiff_error);
      TIFFSetWarningHandler(tiff_warning);
    });
    return TIFFOpen(path.c_str(), mode);
#endif
  }

 private:
  std::string message_;
  const LogTarget* log_;  // the log of the call that opened the TIFF (null: warnings dropped)
};

// --------------------------------------------------------------------------- GeoTIFF tags

struct GeoTagName {
  uint32_t code;
  const char* name;  // a literal: libtiff keeps the pointer for the handle's lifetime
};
constexpr GeoTagName kGeoTags[] = {{33550, "ModelPixelScaleTag"}, {33922, "ModelTiepointTag"},  {34264, "ModelTransformationTag"},
                                   {34735, "GeoKeyDirectoryTag"}, {34736, "GeoDoubleParamsTag"}, {34737, "GeoAsciiParamsTag"}};

template <typename T>
void append_as_double(GeoTag& tag, const void* data, uint32_t count) {
  tag.data.resize(size_t(count) * sizeof(double));
  for (uint32_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, static_cast<const uint8_t*>(data) + size_t(i) * sizeof(T), sizeof(T));
    const double d = static_cast<double>(v);
    std::memcpy(tag.data.data() + size_t(i) * sizeof(double), &d, sizeof(double));
  }
  tag.type = TIFF_DOUBLE;
}

// One tag's values as tifffile reads them and runtime/image_io/readers.py _tag_tuple hands them to the writer: ASCII
// without its trailing NULs and surrounding blanks (a NUL is appended again when written); SHORT, LONG, FLOAT, DOUBLE
// and LONG8 kept; other integer types as DOUBLE. Rationals and UNDEFINED bytes are not copied (never GeoTIFF types).
std::optional<GeoTag> geotag_value(uint32_t code, int type, const void* data, uint32_t count) {
  GeoTag tag;
  tag.code = code;
  tag.type = type;
  tag.count = count;
  const uint8_t* bytes = static_cast<const uint8_t*>(data);
  switch (type) {
    case TIFF_ASCII: {
      std::string text(reinterpret_cast<const char*>(bytes), count);
      while (!text.empty() && text.back() == '\0') text.pop_back();
      const char* blanks = " \t\n\r\f\v";
      const size_t first = text.find_first_not_of(blanks);
      text = first == std::string::npos ? "" : text.substr(first, text.find_last_not_of(blanks) - first + 1);
      tag.data.assign(text.begin(), text.end());
      tag.data.push_back(0);
      tag.count = static_cast<uint32_t>(tag.data.size());
      return tag;
    }
    case TIFF_SHORT: case TIFF_LONG: case TIFF_FLOAT: case TIFF_DOUBLE: case TIFF_LONG8:
      tag.data.assign(bytes, bytes + size_t(count) * TIFFDataWidth(static_cast<TIFFDataType>(type)));
      return tag;
    case TIFF_BYTE: append_as_double<uint8_t>(tag, data, count); return tag;
    case TIFF_SBYTE: append_as_double<int8_t>(tag, data, count); return tag;
    case TIFF_SSHORT: append_as_double<int16_t>(tag, data, count); return tag;
    case TIFF_SLONG: append_as_double<int32_t>(tag, data, count); return tag;
    case TIFF_SLONG8: append_as_double<int64_t>(tag, data, count); return tag;
    default: return std::nullopt;
  }
}

// The GeoTIFF tags of the current directory. libtiff reads tags it has no definition for as anonymous fields (counted
// with a uint32); a host that registered the GeoTIFF tags (libgeotiff, GDAL) may have defined them otherwise.
std::vector<GeoTag> read_geotags(TIFF* tif) {
  std::vector<GeoTag> tags;
  for (const auto& known : kGeoTags) {
    const TIFFField* field = TIFFFindField(tif, known.code, TIFF_ANY);
    if (!field) continue;
    const int type = TIFFFieldDataType(field);
    void* data = nullptr;
    uint32_t count = 0;
    uint64_t single = 0;
    if (TIFFFieldPassCount(field)) {
      if (TIFFFieldReadCount(field) == TIFF_VARIABLE2) {
        if (!TIFFGetField(tif, known.code, &count, &data)) continue;
      } else {
        uint16_t short_count = 0;
        if (!TIFFGetField(tif, known.code, &short_count, &data)) continue;
        count = short_count;
      }
    } else if (type == TIFF_ASCII) {
      char* text = nullptr;
      if (!TIFFGetField(tif, known.code, &text) || !text) continue;
      data = text;
      count = static_cast<uint32_t>(std::strlen(text) + 1);
    } else if (TIFFFieldReadCount(field) == 1) {
      if (!TIFFGetField(tif, known.code, &single)) continue;
      data = &single;
      count = 1;
    } else {
      if (!TIFFGetField(tif, known.code, &data)) continue;
      count = static_cast<uint32_t>(std::max(0, TIFFFieldReadCount(field)));
    }
    if (!data || count == 0) continue;
    if (auto tag = geotag_value(known.code, type, data, count)) tags.push_back(std::move(*tag));
  }
  return tags;
}

const char* geotag_name(uint32_t code) {
  for (const auto& known : kGeoTags)
    if (known.code == code) return known.name;
  return "GeoTag";
}

// Sets `tags` on a TIFF being written, defining them on this handle only (no process-wide tag extender).
bool write_geotags(TIFF* tif, const std::vector<GeoTag>& tags) {
  for (const GeoTag& tag : tags) {
    if (!TIFFFindField(tif, tag.code, TIFF_ANY)) {
      TIFFFieldInfo info{tag.code, TIFF_VARIABLE2, TIFF_VARIABLE2, static_cast<TIFFDataType>(tag.type), FIELD_CUSTOM, 1, 1,
                         const_cast<char*>(geotag_name(tag.code))};
      if (TIFFMergeFieldInfo(tif, &info, 1) != 0) return false;
    }
    const TIFFField* field = TIFFFindField(tif, tag.code, TIFF_ANY);
    if (!field || TIFFFieldDataType(field) != tag.type) continue;  // a host defined it with another type: not copied
    int ok = 0;
    if (TIFFFieldPassCount(field)) ok = TIFFSetField(tif, tag.code, tag.count, tag.data.data());
    else if (tag.type == TIFF_ASCII) ok = TIFFSetField(tif, tag.code, reinterpret_cast<const char*>(tag.data.data()));
    else continue;
    if (!ok) return false;
  }
  return true;
}

// A TIFF read window by window: a row range decodes only the strips or tiles that cross it.
class TiffSource : public ImageSource {
 public:
  TiffSource(const std::string& path) {
    name = path;
    // "m": read tiles with read(2), not through a memory map, whose touched pages would count in the
    // process's resident memory and grow it with the file (66 MB for a 9792 x 2448 scene)
    tif_ = errors_.open(path, "rm");
    if (!tif_) input_error(path + ": not a readable TIFF (" + errors_.text() + ")");
    uint32_t w = 0, h = 0;
    uint16_t spp = 1, bits = 8, format = SAMPLEFORMAT_UINT, planar = PLANARCONFIG_CONTIG;
    TIFFGetField(tif_, TIFFTAG_IMAGEWIDTH, &w);
    TIFFGetField(tif_, TIFFTAG_IMAGELENGTH, &h);
    TIFFGetFieldDefaulted(tif_, TIFFTAG_SAMPLESPERPIXEL, &spp);
    TIFFGetFieldDefaulted(tif_, TIFFTAG_BITSPERSAMPLE, &bits);
    TIFFGetFieldDefaulted(tif_, TIFFTAG_SAMPLEFORMAT, &format);
    TIFFGetFieldDefaulted(tif_, TIFFTAG_PLANARCONFIG, &planar);
    height = h;
    width = w;
    bands = spp;
    separate_ = planar == PLANARCONFIG_SEPARATE && spp > 1;
    bits_ = bits;
    format_ = format;
    dtype = (format == SAMPLEFORMAT_IEEEFP ? "float" : format == SAMPLEFORMAT_INT ? "int" : "uint") + std::to_string(bits);
    if (height <= 0 || width <= 0 || bands <= 0) close_and_fail(path + ": the image is empty; expected at least 1 x 1");
    const bool known = (format == SAMPLEFORMAT_UINT || format == SAMPLEFORMAT_INT) ? (bits == 8 || bits == 16 || bits == 32)
                       : format == SAMPLEFORMAT_IEEEFP                            ? (bits == 32 || bits == 64)
                                                                                   : false;
    if (!known)
      close_and_fail(path + ": TIFF pixel type (" + std::to_string(bits) + "-bit, sample format " + std::to_string(format) +
                     ") is not supported; expected 8/16/32-bit integer or 32/64-bit float samples");
    tiled_ = TIFFIsTiled(tif_);
    if (tiled_) {
      uint32_t tw = 0, th = 0;
      TIFFGetField(tif_, TIFFTAG_TILEWIDTH, &tw);
      TIFFGetField(tif_, TIFFTAG_TILELENGTH, &th);
      seg_w_ = tw;
      seg_h_ = th;
    } else {
      uint32_t rps = 0;
      TIFFGetFieldDefaulted(tif_, TIFFTAG_ROWSPERSTRIP, &rps);
      seg_w_ = width;
      seg_h_ = std::min<int64_t>(rps ? rps : height, height);
    }
    if (seg_w_ <= 0 || seg_h_ <= 0) close_and_fail(path + ": the TIFF's strip or tile size is invalid");
    geotags = read_geotags(tif_);
  }
  ~TiffSource() override {
    if (tif_) TIFFClose(tif_);
  }

  // The last decoded strip or tile is kept: a TIFF in one big strip (or strips taller than the rows asked for) is
  // decoded once, not once per call.
  void read_rows(int64_t top, int64_t bottom, float* out) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    const int64_t spp_in_segment = separate_ ? 1 : bands;
    const int64_t sample_bytes = bits_ / 8;
    std::fill(out, out + (bottom - top) * width * bands, 0.0f);
    const int64_t planes = separate_ ? bands : 1;
    for (int64_t plane = 0; plane < planes; ++plane)
      for (int64_t sy = top / seg_h_ * seg_h_; sy < bottom; sy += seg_h_)
        for (int64_t sx = 0; sx < width; sx += seg_w_) {
          const uint32_t index = tiled_ ? TIFFComputeTile(tif_, static_cast<uint32_t>(sx), static_cast<uint32_t>(sy), 0, static_cast<uint16_t>(plane))
                                        : TIFFComputeStrip(tif_, static_cast<uint32_t>(sy), static_cast<uint16_t>(plane));
          if (!cached_ || *cached_ != index) {
            cached_.reset();
            segment_.resize(static_cast<size_t>(seg_w_ * seg_h_ * spp_in_segment * sample_bytes));
            errors_.clear();
            const tmsize_t got = tiled_ ? TIFFReadEncodedTile(tif_, index, segment_.data(), static_cast<tmsize_t>(segment_.size()))
                                        : TIFFReadEncodedStrip(tif_, index, segment_.data(), static_cast<tmsize_t>(segment_.size()));
            if (got < 0)
              input_error(name + ": a " + (tiled_ ? "tile" : "strip") + " at row " + std::to_string(sy) +
                          " cannot be decoded (" + errors_.text() + "); the file is corrupt or uses an unsupported compression");
            cached_ = index;
          }
          paste(segment_.data(), sy, sx, plane, top, bottom, out);
        }
  }

 private:
  void close_and_fail(const std::string& message) {
    TIFFClose(tif_);
    tif_ = nullptr;
    input_error(message);
  }

  float sample(const uint8_t* p) const {
    switch (format_ * 100 + bits_) {
      case SAMPLEFORMAT_UINT * 100 + 8: return static_cast<float>(*p);
      case SAMPLEFORMAT_UINT * 100 + 16: { uint16_t v; std::memcpy(&v, p, 2); return static_cast<float>(v); }
      case SAMPLEFORMAT_UINT * 100 + 32: { uint32_t v; std::memcpy(&v, p, 4); return static_cast<float>(v); }
      case SAMPLEFORMAT_INT * 100 + 8: return static_cast<float>(static_cast<int8_t>(*p));
      case SAMPLEFORMAT_INT * 100 + 16: { int16_t v; std::memcpy(&v, p, 2); return static_cast<float>(v); }
      case SAMPLEFORMAT_INT * 100 + 32: { int32_t v; std::memcpy(&v, p, 4); return static_cast<float>(v); }
      case SAMPLEFORMAT_IEEEFP * 100 + 32: { float v; std::memcpy(&v, p, 4); return v; }
      default: { double v; std::memcpy(&v, p, 8); return static_cast<float>(v); }
    }
  }

  void paste(const uint8_t* seg, int64_t sy, int64_t sx, int64_t plane, int64_t top, int64_t bottom, float* out) const {
    const int64_t spp = separate_ ? 1 : bands, sample_bytes = bits_ / 8;
    const int64_t y0 = std::max(top, sy), y1 = std::min({bottom, sy + seg_h_, height});
    const int64_t cols = std::min(seg_w_, width - sx);
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = 0; x < cols; ++x)
        for (int64_t s = 0; s < spp; ++s) {
          const uint8_t* p = seg + (((y - sy) * seg_w_ + x) * spp + s) * sample_bytes;
          const int64_t band = separate_ ? plane : s;
          out[((y - top) * width + sx + x) * bands + band] = sample(p);
        }
  }

  mutable TiffErrors errors_;  // declared before tif_: it receives the handle's errors until TIFFClose
  TIFF* tif_ = nullptr;
  mutable std::mutex mutex_;
  mutable std::vector<uint8_t> segment_;
  mutable std::optional<uint32_t> cached_;
  bool separate_ = false, tiled_ = false;
  int bits_ = 8, format_ = SAMPLEFORMAT_UINT;
  int64_t seg_w_ = 0, seg_h_ = 0;
};

// --------------------------------------------------------------------------- writers

[[noreturn]] void output_error(const std::string& path, const std::string& why) {
  fail(GLSNET_ERROR_OUTPUT, path + ": cannot write an output here (" + why + "); choose a writable folder with -o");
}

std::string parent_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

std::string base_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// A temporary file beside `path`: DIR/.NAME.<random>.tmp.EXT (the extension kept for format-by-name tools). Created
// with mode 0666, so the kernel applies the umask in force at that moment: the umask is never read or changed here.
std::string temporary_beside(const std::string& path, const std::string& ext) {
  make_dirs(parent_of(path));
  thread_local std::mt19937_64 random(std::random_device{}());
  for (int attempt = 0; attempt < 100; ++attempt) {
    char tag[17];
    std::snprintf(tag, sizeof tag, "%016llx", static_cast<unsigned long long>(random()));
    const std::string name = parent_of(path) + "/." + base_of(path) + "." + tag + ".tmp." + ext;
    const int fd = open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      close(fd);
      return name;
    }
    if (errno != EEXIST) output_error(path, std::strerror(errno));
  }
  output_error(path, "no free temporary name");
}

class PngWriter : public MaskWriter {
 public:
  PngWriter(const std::string& path, int64_t height, int64_t width, int channels) : height_(height) {
    path_ = path;
    temporary_ = temporary_beside(path, "png");
    try {
      start(width, channels);
    } catch (...) {  // no destructor runs for a constructor that throws: release here
      release();
      throw;
    }
  }
  ~PngWriter() override { release(); }
  void write_rows(const uint8_t* rows, int64_t count) override {
    if (setjmp(err_.jump)) fail(GLSNET_ERROR_OUTPUT, path_ + ": writing the PNG failed (" + err_.message + ")");
    for (int64_t r = 0; r < count; ++r) png_write_row(png_, const_cast<png_bytep>(rows + r * stride_));
    written_ += count;
  }
  void finish() override {
    if (written_ != height_) fail(GLSNET_ERROR_RUNTIME, path_ + ": " + std::to_string(written_) + " of " + std::to_string(height_) + " rows were produced");
    if (setjmp(err_.jump)) fail(GLSNET_ERROR_OUTPUT, path_ + ": writing the PNG failed (" + err_.message + ")");
    png_write_end(png_, nullptr);
    png_destroy_write_struct(&png_, &info_);
    png_ = nullptr;
    const int flushed = std::fflush(file_), closed = std::fclose(file_);
    file_ = nullptr;
    if (flushed || closed) output_error(path_, std::strerror(errno));
  }

 private:
  void release() {
    if (png_) png_destroy_write_struct(&png_, &info_);
    png_ = nullptr;
    if (file_) std::fclose(file_);
    file_ = nullptr;
    if (!committed_) unlink(temporary_.c_str());
  }
  void start(int64_t width, int channels) {
    file_ = std::fopen(temporary_.c_str(), "wb");
    if (!file_) output_error(path_, std::strerror(errno));
    const std::string& path = path_;
    png_ = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err_, png_fail, png_warn);
    info_ = png_ ? png_create_info_struct(png_) : nullptr;
    if (!info_) fail(GLSNET_ERROR_MEMORY, path + ": out of memory while writing the PNG");
    if (setjmp(err_.jump)) fail(GLSNET_ERROR_OUTPUT, path + ": writing the PNG failed (" + err_.message + ")");
    png_init_io(png_, file_);
    png_set_user_limits(png_, 0x7fffffff, 0x7fffffff);  // masks as wide as the images read (libpng's default: 1e6)
    png_set_IHDR(png_, info_, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height_), 8,
                 channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png_, info_);
    stride_ = static_cast<size_t>(width) * channels;
  }

  std::FILE* file_ = nullptr;
  png_structp png_ = nullptr;
  png_infop info_ = nullptr;
  PngError err_{};
  size_t stride_ = 0;
  int64_t height_, written_ = 0;
};

constexpr int64_t kRowsPerStrip = 64;

class TiffWriter : public MaskWriter {
 public:
  TiffWriter(const std::string& path, int64_t height, int64_t width, int channels, const std::vector<GeoTag>& geotags)
      : height_(height), rows_per_strip_(std::min(kRowsPerStrip, height)), stride_(static_cast<size_t>(width) * channels) {
    path_ = path;
    temporary_ = temporary_beside(path, "tif");
    const bool big = static_cast<double>(height) * width * channels > 3.9e9;
    tif_ = errors_.open(temporary_, big ? "w8" : "w");
    if (!tif_) {
      unlink(temporary_.c_str());
      output_error(path, errors_.text());
    }
    TIFFSetField(tif_, TIFFTAG_IMAGEWIDTH, static_cast<uint32_t>(width));
    TIFFSetField(tif_, TIFFTAG_IMAGELENGTH, static_cast<uint32_t>(height));
    TIFFSetField(tif_, TIFFTAG_SAMPLESPERPIXEL, static_cast<uint16_t>(channels));
    TIFFSetField(tif_, TIFFTAG_BITSPERSAMPLE, static_cast<uint16_t>(8));
    TIFFSetField(tif_, TIFFTAG_SAMPLEFORMAT, static_cast<uint16_t>(SAMPLEFORMAT_UINT));
    TIFFSetField(tif_, TIFFTAG_PLANARCONFIG, static_cast<uint16_t>(PLANARCONFIG_CONTIG));
    TIFFSetField(tif_, TIFFTAG_PHOTOMETRIC, static_cast<uint16_t>(channels == 3 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK));
    TIFFSetField(tif_, TIFFTAG_COMPRESSION, static_cast<uint16_t>(COMPRESSION_ADOBE_DEFLATE));
    TIFFSetField(tif_, TIFFTAG_ROWSPERSTRIP, static_cast<uint32_t>(rows_per_strip_));
    errors_.clear();
    if (!write_geotags(tif_, geotags)) {
      const std::string why = "its GeoTIFF tags: " + errors_.text();
      TIFFClose(tif_);
      tif_ = nullptr;
      unlink(temporary_.c_str());
      output_error(path, why);
    }
  }
  ~TiffWriter() override {
    if (tif_) TIFFClose(tif_);
    if (!committed_) unlink(temporary_.c_str());
  }
  void write_rows(const uint8_t* rows, int64_t count) override {
    pending_.insert(pending_.end(), rows, rows + count * stride_);
    while (static_cast<int64_t>(pending_.size() / stride_) >= rows_per_strip_) flush(rows_per_strip_);
  }
  void finish() override {
    if (!pending_.empty()) flush(static_cast<int64_t>(pending_.size() / stride_));
    if (written_ != height_) fail(GLSNET_ERROR_RUNTIME, path_ + ": " + std::to_string(written_) + " of " + std::to_string(height_) + " rows were produced");
    errors_.clear();
    const int ok = TIFFFlush(tif_);
    TIFFClose(tif_);
    tif_ = nullptr;
    if (!ok) output_error(path_, errors_.text());
  }

 private:
  void flush(int64_t rows) {
    errors_.clear();
    const tmsize_t bytes = static_cast<tmsize_t>(rows * stride_);
    if (TIFFWriteEncodedStrip(tif_, strip_++, pending_.data(), bytes) < 0) output_error(path_, errors_.text());
    pending_.erase(pending_.begin(), pending_.begin() + bytes);
    written_ += rows;
  }
  TiffErrors errors_;  // declared before tif_: it receives the handle's errors until TIFFClose
  TIFF* tif_ = nullptr;
  int64_t height_, rows_per_strip_;
  size_t stride_;
  std::vector<uint8_t> pending_;
  uint32_t strip_ = 0;
  int64_t written_ = 0;
};

// A finished text file under a temporary name (the statistics JSON), renamed by commit_all with the masks.
class TextOutput : public MaskWriter {
 public:
  TextOutput(const std::string& path, const std::string& text) {
    path_ = path;
    const size_t dot = base_of(path).rfind('.');
    temporary_ = temporary_beside(path, dot == std::string::npos ? "txt" : base_of(path).substr(dot + 1));
    File file(std::fopen(temporary_.c_str(), "wb"));
    const bool written = file && std::fwrite(text.data(), 1, text.size(), file.get()) == text.size();
    const int error = errno;
    const bool closed = file && std::fclose(file.release()) == 0;
    if (!written || !closed) {
      unlink(temporary_.c_str());
      fail(GLSNET_ERROR_OUTPUT, path + ": writing the statistics failed (" + std::strerror(error ? error : errno) + ")");
    }
  }
  ~TextOutput() override {
    if (!committed_) unlink(temporary_.c_str());
  }
  void write_rows(const uint8_t*, int64_t) override { fail(GLSNET_ERROR_RUNTIME, path_ + ": a text output takes no mask rows"); }
  void finish() override {}
};

}  // namespace

int64_t sample_bytes(int pixel_type) {
  switch (pixel_type) {
    case GLSNET_PIXEL_UINT8: return 1;
    case GLSNET_PIXEL_UINT16: return 2;
    case GLSNET_PIXEL_FLOAT32: return 4;
    default: return 0;
  }
}

std::unique_ptr<ImageSource> array_source(const void* pixels, int pixel_type, int64_t height, int64_t width, int64_t bands,
                                          int64_t row_pitch, std::string name) {
  switch (pixel_type) {
    case GLSNET_PIXEL_UINT8: return borrowed<uint8_t>(pixels, height, width, bands, row_pitch, std::move(name), "uint8");
    case GLSNET_PIXEL_UINT16: return borrowed<uint16_t>(pixels, height, width, bands, row_pitch, std::move(name), "uint16");
    case GLSNET_PIXEL_FLOAT32: return borrowed<float>(pixels, height, width, bands, row_pitch, std::move(name), "float32");
    default: fail(GLSNET_ERROR_INVALID_ARGUMENT, "pixel type " + std::to_string(pixel_type) + " is not one of GLSNET_PIXEL_UINT8, _UINT16, _FLOAT32");
  }
}

std::unique_ptr<ImageSource> open_image(const std::string& path, int64_t max_pixels) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) input_error(path + ": no such file");
  if (!S_ISREG(st.st_mode)) input_error(path + ": not a file");
  if (st.st_size == 0) input_error(path + ": the file is empty (0 bytes); expected a PNG, JPEG or TIFF image");
  File file(std::fopen(path.c_str(), "rb"));
  if (!file) input_error(path + ": cannot be read (" + std::strerror(errno) + ")");
  unsigned char magic[8] = {0};
  const size_t got = std::fread(magic, 1, sizeof magic, file.get());
  std::rewind(file.get());
  std::unique_ptr<ImageSource> source;
  if (got >= 4 && ((magic[0] == 'I' && magic[1] == 'I') || (magic[0] == 'M' && magic[1] == 'M'))) {
    file.reset();
    return std::make_unique<TiffSource>(path);
  }
  if (got >= 8 && png_sig_cmp(magic, 0, 8) == 0) source = decode_png(path, std::move(file), max_pixels);
  else if (got >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF) source = decode_jpeg(path, std::move(file), max_pixels);
  else input_error(path + ": not a readable PNG/JPEG/TIFF image; expected a PNG, JPEG or TIFF file");
  source->name = path;
  const bool wide = !static_cast<DecodedSource*>(source.get())->words.empty();
  source->dtype = wide ? "uint16" : "uint8";
  source->resident_bytes = source->height * source->width * source->bands * (wide ? 2 : 1);
  return source;
}

namespace {

// A second name for an existing `target`, so a rollback can restore it ("" when there is nothing to keep or no
// hard links on this file system).
std::string hard_link_backup(const std::string& target) {
  struct stat st {};
  if (stat(target.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return "";
  const std::string backup = temporary_beside(target, "old");
  unlink(backup.c_str());
  if (link(target.c_str(), backup.c_str()) != 0) return "";
  return backup;
}

}  // namespace

void commit_all(const std::vector<MaskWriter*>& writers) {
  std::vector<std::pair<std::string, std::string>> done;  // (target, backup or "")
  for (size_t i = 0; i < writers.size(); ++i) {
    MaskWriter* w = writers[i];
    const std::string backup = hard_link_backup(w->path());
    if (std::rename(w->temporary().c_str(), w->path().c_str()) == 0) {
      done.emplace_back(w->path(), backup);
      continue;
    }
    const std::string why = std::strerror(errno);
    if (!backup.empty()) unlink(backup.c_str());
    for (size_t j = i; j < writers.size(); ++j) unlink(writers[j]->temporary().c_str());  // finished, never renamed
    for (auto it = done.rbegin(); it != done.rend(); ++it) {
      if (it->second.empty()) unlink(it->first.c_str());
      else std::rename(it->second.c_str(), it->first.c_str());
    }
    output_error(w->path(), why);
  }
  for (const auto& [target, backup] : done)
    if (!backup.empty()) unlink(backup.c_str());
  for (MaskWriter* w : writers) w->mark_committed();
}

void check_bands(int64_t band_count, const std::vector<int>& model_bands, const std::string& name) {
  const int highest = *std::max_element(model_bands.begin(), model_bands.end());
  if (highest < band_count) return;
  const size_t needed = model_bands.size();
  std::string list, example;
  for (size_t i = 0; i < needed; ++i) {
    list += (i ? ", " : "") + std::to_string(model_bands[i]);
    example += (i ? "," : "") + std::to_string(i);
  }
  if (band_count < static_cast<int64_t>(needed))
    input_error(name + ": the image has " + std::to_string(band_count) + " band(s) but the model reads " + std::to_string(needed) + " ([" +
                list + "]); it needs an image with at least " + std::to_string(needed) + " bands");
  input_error(name + ": the image has " + std::to_string(band_count) + " band(s) but the model reads bands [" + list + "]; choose " +
              std::to_string(needed) + " bands that exist, e.g. --bands " + example);
}

std::unique_ptr<MaskWriter> open_writer(const std::string& path, const std::string& format, int64_t height, int64_t width, int channels,
                                        const std::vector<GeoTag>& geotags) {
  if (format == "png") return std::make_unique<PngWriter>(path, height, width, channels);
  if (format == "tif") return std::make_unique<TiffWriter>(path, height, width, channels, geotags);
  fail(GLSNET_ERROR_INVALID_ARGUMENT, "output format '" + format + "' is not one of png, tif");
}

std::unique_ptr<MaskWriter> open_text_output(const std::string& path, const std::string& text) {
  return std::make_unique<TextOutput>(path, text);
}

void make_dirs(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) fail(GLSNET_ERROR_OUTPUT, path + ": exists and is not a folder; choose an output folder with -o");
    return;
  }
  const std::string parent = parent_of(path);
  if (parent != path && parent != "." && parent != "/") make_dirs(parent);
  if (mkdir(path.c_str(), 0777) != 0 && errno != EEXIST) output_error(path, std::strerror(errno));
}

std::string file_stem(const std::string& path) {
  const std::string base = base_of(path);
  const size_t dot = base.rfind('.');
  return dot == std::string::npos || dot == 0 ? base : base.substr(0, dot);
}

}  // namespace glsnet
