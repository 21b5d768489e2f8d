// --bands: which input bands the model reads instead of the bundle's own (runtime/cli_options.py parse_bands and
// runtime/algorithm/scheduler.py normalization_for, same rules and messages).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "manifest.hpp"

namespace glsnet {

// "0,1,2" -> {0, 1, 2}; std::nullopt for empty or blank text; Error(INVALID_ARGUMENT) with Python's message otherwise.
std::optional<std::vector<int>> parse_bands(const std::string& text);

// The bundle's normalisation reading `bands` of the input instead of its own; one band per model input band.
Normalization normalization_for(const Normalization& norm, const std::vector<int>& bands);

// Python's repr() of a str (the quotes and escapes its messages show).
std::string python_str_repr(const std::string& text);

}  // namespace glsnet
