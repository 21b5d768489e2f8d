#!/usr/bin/env bash
# The main job on an embedded default: train a small GLSNet briefly (or reuse it), export the
# bundle, build FP16, and segment one 2448 x 2448 image (real DeepGlobe when $GLSNET_DATA is set,
# otherwise a seeded synthetic scene). Everything lands in $1 (default demo-out/).
set -euo pipefail
out="${1:-demo-out}"
bin="$(dirname "$0")/../.venv/bin"
mkdir -p "$out"

if [ -n "${GLSNET_DATA:-}" ] && ls "$GLSNET_DATA"/*_sat.jpg >/dev/null 2>&1; then
  data=(--data "$GLSNET_DATA")
  calibration_images=("$GLSNET_DATA"/*_sat.jpg)
  image="${calibration_images[0]}"
  echo "demo: real DeepGlobe data from $GLSNET_DATA"
else
  "$bin/glsnet-train" synth --out "$out/synthetic-data" --count 4 --size 1024x1024 --seed 1
  data=(--data "$out/synthetic-data")
  calibration_images=("$out"/synthetic-data/*_sat.*)
  "$bin/glsnet-train" synth --out "$out/scene" --count 1 --size 2448x2448 --seed 7
  image="$(ls "$out"/scene/*_sat.* | head -n 1)"
  echo "demo: no \$GLSNET_DATA, using seeded synthetic scenes"
fi

if [ ! -f "$out/model.safetensors" ]; then
  "$bin/glsnet-train" train "${data[@]}" --preset small --crop-size 256 --steps "${DEMO_STEPS:-60}" --val-every 1000 --out "$out/model.safetensors"
else
  echo "demo: reusing $out/model.safetensors (delete it to train again)"
fi
"$bin/glsnet-train" evaluate "$out/model.safetensors" "${data[1]}" --limit 2
"$bin/glsnet-export" onnx "$out/model.safetensors" -o "$out/bundle" --force
"$bin/glsnet-export" verify "$out/bundle" "$image"
"$bin/glsnet-export" calibrate "$out/bundle" "${calibration_images[@]}"
# One conversion and one gate. --force keeps the FP16 graphs whatever the gate says, and the manifest
# records its verdict (accuracy.fp16.passed / forced); a refusal is explained on one demo: line.
"$bin/glsnet-export" build "$out/bundle" --fp16 --force
if ! "$bin/python" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["accuracy"]["fp16"]["passed"] else 1)' "$out/bundle/manifest.json"; then
  echo "demo: the gate refused FP16 for this briefly trained model (near-tie logits flip under FP16 rounding; a trained model passes, see tests/calibration/test_precision_trained.py); kept with --force, and the manifest records the gate as failed and forced."
fi
"$bin/glsnet" run "$image" --bundle "$out/bundle" --precision fp16 -o "$out/run" --overlay --stats
"$bin/glsnet" info "$out/bundle"
echo "demo: outputs in $out/run"
ls -l "$out/run"
