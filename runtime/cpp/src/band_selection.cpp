#include "band_selection.hpp"

#include <cctype>
#include <climits>
#include <cstdio>

#include "errors.hpp"

namespace glsnet {

std::string python_str_repr(const std::string& text) {
  const char quote = text.find('\'') != std::string::npos && text.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (const char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (ch == quote || ch == '\\') out += std::string("\\") + ch;
    else if (ch == '\n') out += "\\n";
    else if (ch == '\r') out += "\\r";
    else if (ch == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else out += ch;  // UTF-8 passes through, as Python prints printable non-ASCII text
  }
  return out + quote;
}

namespace {

// int(part) as Python parses it: surrounding blanks, an optional sign, digits with single underscores between them.
std::optional<long long> python_int(const std::string& part) {
  const char* blanks = " \t\n\r\f\v";
  const size_t first = part.find_first_not_of(blanks);
  if (first == std::string::npos) return std::nullopt;
  const std::string s = part.substr(first, part.find_last_not_of(blanks) - first + 1);
  size_t i = 0;
  bool negative = false;
  if (s[i] == '+' || s[i] == '-') negative = s[i++] == '-';
  if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return std::nullopt;
  long long value = 0;
  for (; i < s.size(); ++i) {
    if (s[i] == '_' && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1])) && std::isdigit(static_cast<unsigned char>(s[i - 1])))
      continue;
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return std::nullopt;
    value = value > (LLONG_MAX - 9) / 10 ? LLONG_MAX : value * 10 + (s[i] - '0');
  }
  return negative ? -value : value;
}

std::string list_text(const std::vector<int>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + "]";
}

}  // namespace

std::optional<std::vector<int>> parse_bands(const std::string& text) {
  if (text.find_first_not_of(" \t\n\r\f\v") == std::string::npos) return std::nullopt;
  std::vector<long long> parsed;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const auto value = python_int(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (!value) fail(GLSNET_ERROR_INVALID_ARGUMENT, "--bands " + python_str_repr(text) + ": expected comma-separated band indices such as 0,1,2");
    parsed.push_back(*value);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  std::vector<int> bands;
  for (const long long b : parsed) {
    if (b < 0) fail(GLSNET_ERROR_INVALID_ARGUMENT, "--bands " + python_str_repr(text) + ": band indices start at 0");
    if (b > INT_MAX - 1) fail(GLSNET_ERROR_INVALID_ARGUMENT, "--bands " + python_str_repr(text) + ": band index " + std::to_string(b) + " is implausibly large");
    bands.push_back(static_cast<int>(b));
  }
  return bands;
}

Normalization normalization_for(const Normalization& norm, const std::vector<int>& bands) {
  const size_t n = norm.bands.size();
  if (bands.size() != n) {
    std::string example;
    for (size_t i = 0; i < n; ++i) example += (i ? "," : "") + std::to_string(i);
    fail(GLSNET_ERROR_INVALID_ARGUMENT, "--bands selects " + std::to_string(bands.size()) + " band(s) " + list_text(bands) +
                                            " but the model reads " + std::to_string(n) + "; name exactly " + std::to_string(n) +
                                            " (e.g. --bands " + example + ")");
  }
  for (const int b : bands)
    if (b < 0) fail(GLSNET_ERROR_INVALID_ARGUMENT, "--bands " + list_text(bands) + ": band indices start at 0");
  Normalization out = norm;
  out.bands = bands;
  return out;
}

}  // namespace glsnet
