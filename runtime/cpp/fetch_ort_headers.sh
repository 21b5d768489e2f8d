#!/usr/bin/env bash
# ONNX Runtime's C/C++ headers from Debian trixie's libonnxruntime-dev, unpacked into a build folder.
#
# A private sources list, lists folder and cache are used, so the machine's apt configuration
# (/etc/apt) is neither read for sources nor changed. The package version is pinned; the headers'
# ORT_API_VERSION is checked against the library the runtime links (the venv's onnxruntime wheel):
# headers newer than the library would call functions the library lacks.
# Usage: fetch_ort_headers.sh BUILD_DIR [LIBONNXRUNTIME_SO]
set -euo pipefail
ORT_DEB_VERSION="${ORT_DEB_VERSION:-1.21.0+dfsg-1}"
ORT_HEADERS_API_VERSION=21
build="${1:?usage: fetch_ort_headers.sh BUILD_DIR [LIBONNXRUNTIME_SO]}"
library="${2:-}"
dest="$build/ort"
stamp="$dest/.version"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$ORT_DEB_VERSION" ]; then
  exit 0
fi
work="$build/ort-apt"
rm -rf "$work" "$dest"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/parts" "$dest"
echo "deb http://deb.debian.org/debian trixie main" > "$work/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=$work/parts"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "APT::Sandbox::User=root"
          -o "Debug::NoLocking=1")
apt-get "${apt_opts[@]}" -qq update
(cd "$work" && apt-get "${apt_opts[@]}" -qq download "libonnxruntime-dev=$ORT_DEB_VERSION")
dpkg-deb -x "$work"/libonnxruntime-dev_*.deb "$work/root"
mkdir -p "$dest/include"
cp -r "$work/root/usr/include/onnxruntime/." "$dest/include/"
rm -rf "$work"
header="$dest/include/onnxruntime_c_api.h"
api=$(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$header")
if [ "$api" != "$ORT_HEADERS_API_VERSION" ]; then
  echo "fetch_ort_headers: $header has ORT_API_VERSION $api, expected the pinned $ORT_HEADERS_API_VERSION" >&2
  exit 1
fi
if [ -n "$library" ]; then
  lib_minor=$(basename "$(readlink -f "$library")" | sed -n 's/^libonnxruntime\.so\.1\.\([0-9]*\)\..*/\1/p')
  if [ -z "$lib_minor" ] || [ "$api" -gt "$lib_minor" ]; then
    echo "fetch_ort_headers: headers have ORT_API_VERSION $api but $library offers API ${lib_minor:-unknown}; use an onnxruntime wheel >= 1.$api" >&2
    exit 1
  fi
fi
echo "$ORT_DEB_VERSION" > "$stamp"
echo "ONNX Runtime headers $ORT_DEB_VERSION (ORT_API_VERSION $api) in $dest/include"
