#!/usr/bin/env bash
# Build the C++ runtime. ONNX Runtime is found as runtime/cpp/cmake/onnxruntime.cmake says; with
# GLSNET_ONNXRUNTIME_ROOT set (a release or install folder) that folder is used and nothing is fetched,
# otherwise Debian's ORT headers (fetch_ort_headers.sh) and the venv's onnxruntime wheel are the fallback.
# Usage: build.sh [--sanitize] BUILD_DIR PYTHON     (PYTHON: the venv's interpreter, to find onnxruntime)
# GLSNET_BUILD_TARGET=NAME builds one target only (the sanitizer build needs only glsnet-c-api-test).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
sanitize=OFF
if [ "${1:-}" = "--sanitize" ]; then sanitize=ON; shift; fi
build="${1:?usage: build.sh [--sanitize] BUILD_DIR PYTHON}"
python="${2:?usage: build.sh [--sanitize] BUILD_DIR PYTHON}"
jobs="${GLSNET_BUILD_JOBS:-2}"
mkdir -p "$build"
build="$(cd "$build" && pwd)"
ort_args=()
if [ -n "${GLSNET_ONNXRUNTIME_ROOT:-}" ]; then
  ort_args=(-DONNXRUNTIME_ROOT="$GLSNET_ONNXRUNTIME_ROOT")
else
  library=$("$python" -c 'import glob, os, onnxruntime; d = os.path.join(os.path.dirname(onnxruntime.__file__), "capi"); print(sorted(glob.glob(os.path.join(d, "libonnxruntime.so.1.*")))[-1])')
  headers="${GLSNET_ORT_HEADERS_DIR:-$build}"
  "$here/fetch_ort_headers.sh" "$headers" "$library"
  ort_args=(-DORT_INCLUDE_DIR="$headers/ort/include" -DORT_LIBRARY="$library")
fi
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGLSNET_SANITIZE="$sanitize" "${ort_args[@]}" > "$build/configure.log" \
  || { cat "$build/configure.log" >&2; exit 1; }
cmake --build "$build" -j "$jobs" ${GLSNET_BUILD_TARGET:+--target "$GLSNET_BUILD_TARGET"}
