// classify_session_failure (src/session_failure.hpp): session-creation failures of the runtime (missing CUDA/cuDNN/
// TensorRT libraries, a failing provider, operators this ONNX Runtime lacks) are GLSNET_ERROR_RUNTIME, graphs ONNX
// Runtime cannot parse are GLSNET_ERROR_BUNDLE. The messages are ONNX Runtime's own wording. Registered with CTest.
#include <cstdio>

#include "session_failure.hpp"

static int failures = 0;

static void expect(const char* what, glsnet_status got, glsnet_status want) {
  std::printf("%s %s: %s\n", got == want ? "PASS" : "FAIL", what, glsnet_status_string(got));
  if (got != want) ++failures;
}

int main() {
  using glsnet::classify_session_failure;
  expect("missing cuDNN", classify_session_failure(ORT_FAIL, "libcudnn.so.9: cannot open shared object file: No such file or directory", "cuda"),
         GLSNET_ERROR_RUNTIME);
  expect("TensorRT provider failing", classify_session_failure(ORT_EP_FAIL, "TensorRT EP could not deserialize engine", "tensorrt"),
         GLSNET_ERROR_RUNTIME);
  expect("CUDA provider library missing",
         classify_session_failure(ORT_FAIL, "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.12", "cuda"),
         GLSNET_ERROR_RUNTIME);
  expect("operator this ORT lacks",
         classify_session_failure(ORT_NOT_IMPLEMENTED, "Could not find an implementation for Resize(19) node with name ''", "cpu"),
         GLSNET_ERROR_RUNTIME);
  expect("unparsable graph", classify_session_failure(ORT_INVALID_PROTOBUF, "Load model from g.onnx failed:Protobuf parsing failed.", "cpu"),
         GLSNET_ERROR_BUNDLE);
  expect("invalid graph", classify_session_failure(ORT_INVALID_GRAPH, "This is an invalid model. Type Error", "cpu"), GLSNET_ERROR_BUNDLE);
  expect("other failure on the CPU", classify_session_failure(ORT_FAIL, "Node () Op (Conv) [ShapeInferenceError]", "cpu"), GLSNET_ERROR_BUNDLE);
  std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
