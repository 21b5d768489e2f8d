#include "class_statistics.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <system_error>

#include "errors.hpp"

namespace glsnet {

std::string python_float_repr(double value) {
  if (std::isnan(value)) return "nan";  // to_chars writes these without an exponent
  if (std::isinf(value)) return value < 0 ? "-inf" : "inf";
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific);  // shortest round trip
  const std::string text(buf, result.ptr);
  const size_t e = text.find('e');
  std::string mantissa = text.substr(0, e), sign;
  if (!mantissa.empty() && mantissa[0] == '-') {
    sign = "-";
    mantissa.erase(0, 1);
  }
  std::string digits;
  for (char c : mantissa)
    if (c != '.') digits += c;
  const int exponent = e == std::string::npos ? 0 : std::atoi(text.c_str() + e + 1);
  const int point = exponent + 1;  // digits before the decimal point (Python's decpt)
  if (point <= -4 || point > 16) {
    std::string out = sign + digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp[16];
    std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return out + exp;
  }
  if (point <= 0) return sign + "0." + std::string(static_cast<size_t>(-point), '0') + digits;
  if (static_cast<size_t>(point) >= digits.size()) return sign + digits + std::string(point - digits.size(), '0') + ".0";
  return sign + digits.substr(0, point) + "." + digits.substr(point);
}

double python_round6(double value) {
  char buf[400];
  std::snprintf(buf, sizeof buf, "%.6f", value);  // glibc: the exact binary value rounded half to even, as Python's dtoa
  return std::strtod(buf, nullptr);
}

std::string python_path_text(const std::string& path) {
  std::string root;
  size_t i = 0;
  if (path.rfind("//", 0) == 0 && path.rfind("///", 0) != 0) root = "//";
  else if (!path.empty() && path[0] == '/') root = "/";
  std::string out;
  while (i <= path.size()) {
    const size_t slash = path.find('/', i);
    const std::string part = path.substr(i, slash == std::string::npos ? std::string::npos : slash - i);
    if (!part.empty() && part != ".") out += (out.empty() ? "" : "/") + part;
    if (slash == std::string::npos) break;
    i = slash + 1;
  }
  out = root + out;
  return out.empty() ? "." : out;
}

namespace {

void escape_unit(std::string& out, unsigned unit) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "\\u%04x", unit);
  out += buf;
}

// The code point of the UTF-8 sequence at text[i] (advancing i), or -1 for a byte that does not start a valid one.
long decode_utf8(const std::string& text, size_t& i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char b = byte(i);
  const int length = b >= 0xF0 && b <= 0xF4 ? 4 : b >= 0xE0 ? 3 : b >= 0xC2 && b < 0xE0 ? 2 : 0;
  if (b >= 0xF5 || length == 0 || i + length > text.size()) return -1;
  long code = b & (0x7F >> length);
  for (int k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return -1;
    code = (code << 6) | (byte(i + k) & 0x3F);
  }
  const long smallest[] = {0, 0, 0x80, 0x800, 0x10000};
  if (code < smallest[length] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return -1;
  i += length;
  return code;
}

}  // namespace

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        default:
          if (c < 0x20) escape_unit(out, c);
          else out += static_cast<char>(c);
      }
      continue;
    }
    const long code = decode_utf8(text, i);
    if (code < 0) {  // os.fsdecode's surrogateescape: byte b becomes U+DC00 + b
      escape_unit(out, 0xDC00 + c);
      ++i;
    } else if (code > 0xFFFF) {
      escape_unit(out, static_cast<unsigned>(0xD800 + ((code - 0x10000) >> 10)));
      escape_unit(out, static_cast<unsigned>(0xDC00 + ((code - 0x10000) & 0x3FF)));
    } else {
      escape_unit(out, static_cast<unsigned>(code));
    }
  }
  return out + "\"";
}

std::string class_statistics_json(const std::string& image_path, const ClassCounts& counts, const std::vector<std::string>& classes,
                                  int64_t height, int64_t width) {
  if (height <= 0 || width <= 0)  // as Python, which refuses empty images on reading, before any fraction divides by zero
    fail(GLSNET_ERROR_INPUT, image_path + ": the image is empty (" + std::to_string(height) + " x " + std::to_string(width) +
                                 " pixels); expected at least 1 x 1");
  const int64_t total = height * width;
  std::string out = "{\n";
  out += "  \"image\": " + json_string(python_path_text(image_path)) + ",\n";
  out += "  \"height\": " + std::to_string(height) + ",\n";
  out += "  \"width\": " + std::to_string(width) + ",\n";
  out += "  \"pixels\": " + std::to_string(total) + ",\n";
  out += "  \"classes\": [";
  for (size_t i = 0; i < classes.size(); ++i) {
    const double fraction = python_round6(static_cast<double>(counts[i]) / static_cast<double>(total));
    out += std::string(i ? "," : "") + "\n    {\n";
    out += "      \"index\": " + std::to_string(i) + ",\n";
    out += "      \"name\": " + json_string(classes[i]) + ",\n";
    out += "      \"pixels\": " + std::to_string(counts[i]) + ",\n";
    out += "      \"fraction\": " + python_float_repr(fraction) + "\n    }";
  }
  out += classes.empty() ? "]\n" : "\n  ]\n";
  return out + "}\n";
}

}  // namespace glsnet
