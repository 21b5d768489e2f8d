/* A program outside the glsnet source tree, built against an installed glsnet (find_package or pkg-config):
 * segments one image file into OUTPUT_DIR. Usage: consumer BUNDLE IMAGE OUTPUT_DIR
 * Exit 0 on success; otherwise the status code, with glsnet_last_error() on stderr. */
#include <stdio.h>

#include <glsnet/glsnet.h>

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s BUNDLE IMAGE OUTPUT_DIR\n", argv[0]);
    return 64;
  }
  if (glsnet_abi_version() != GLSNET_ABI_VERSION) {
    fprintf(stderr, "built for ABI %d, loaded ABI %d\n", GLSNET_ABI_VERSION, glsnet_abi_version());
    return 65;
  }
  glsnet_handle* handle = NULL;
  glsnet_status status = glsnet_open(argv[1], NULL, &handle);
  if (status == GLSNET_OK) status = glsnet_segment_file(handle, argv[2], argv[3], "png", 1);
  if (status != GLSNET_OK) fprintf(stderr, "%s: %s\n", glsnet_status_string(status), glsnet_last_error());
  glsnet_close(handle);
  return (int)status;
}
