// Why ONNX Runtime could not create a session from a verified graph: the bundle (a graph ONNX Runtime cannot parse
// or check) or the runtime (a provider or its CUDA/cuDNN/TensorRT libraries missing, an ONNX Runtime too old for
// the graph's operators). A service retries or reconfigures on the second, and rebuilds the bundle on the first.
#pragma once
#include <onnxruntime_c_api.h>

#include <algorithm>
#include <cctype>
#include <string>

#include "glsnet/glsnet.h"

namespace glsnet {

inline glsnet_status classify_session_failure(OrtErrorCode code, const std::string& message, const std::string& device) {
  std::string text = message;
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* library : {"cannot open shared object", "libcudnn", "libcublas", "libcudart", "libnvinfer", "libcufft", "libcurand",
                              "cuda driver", "cuda error", "cudnn", "tensorrt", "providers_shared", "execution provider"})
    if (text.find(library) != std::string::npos) return GLSNET_ERROR_RUNTIME;
  switch (code) {
    case ORT_INVALID_PROTOBUF:
    case ORT_INVALID_GRAPH:
    case ORT_NO_MODEL:
    case ORT_NO_SUCHFILE:
      return GLSNET_ERROR_BUNDLE;
    case ORT_EP_FAIL:
    case ORT_NOT_IMPLEMENTED:  // an operator or opset this ONNX Runtime build lacks
    case ORT_ENGINE_ERROR:
      return GLSNET_ERROR_RUNTIME;
    default:
      return device == "cpu" ? GLSNET_ERROR_BUNDLE : GLSNET_ERROR_RUNTIME;
  }
}

}  // namespace glsnet
