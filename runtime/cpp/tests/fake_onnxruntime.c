/* A stand-in libonnxruntime.so.1 that offers no API version at all, as an ONNX Runtime older than glsnet's
 * headers answers: glsnet_open must return GLSNET_ERROR_RUNTIME with a message, not crash.
 * Built by tests/runtime/cpp/test_cpp_install.py: cc -shared -fPIC -Wl,-soname,libonnxruntime.so.1 */
#include <stddef.h>
#include <stdint.h>

typedef struct OrtApi OrtApi;
typedef struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)(void);
} OrtApiBase;

static const OrtApi* get_api(uint32_t version) {
  (void)version;
  return NULL;
}
static const char* version_string(void) { return "1.0.0-test"; }
static const OrtApiBase base = {get_api, version_string};

const OrtApiBase* OrtGetApiBase(void) { return &base; }
