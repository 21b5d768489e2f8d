"""Resume: which scenes a batch has already done with this bundle and these options.

Every scene of a batch writes its stats JSON with a "provenance" entry: the sha256 of the bundle's
manifest (which holds the sha256 of every graph, so it names the bundle exactly) and the options
that shape the outputs. A scene is done when all its outputs exist and its stats name the same
bundle and options. Left out: ONNX Runtime's thread count and spinning (speed, not the mask) and the pixel limit
(which inputs are accepted, not what is written for them).

The stats JSON is uploaded last (runtime.batch.worker), so it is the commit marker: in an object
store a scene is done when its stats object is there, names this bundle and these options, and its
other outputs are listed beside it. The output folder is listed once for the whole batch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from runtime.batch.inputs import scene_stem
from runtime.batch.storage import Location, listing, read_bytes
from runtime.bundle.manifest import MANIFEST_NAME, sha256_file
from runtime.image_io.writers import OutputOptions, OutputPaths
from runtime.options import SegmenterOptions

EXECUTION_ONLY = ("threads", "thread_spinning", "keep_activations", "max_pixels")  # SegmenterOptions fields that do not change the outputs


def batch_provenance(bundle: Path | str, options: SegmenterOptions, outputs: OutputOptions, manifest_sha256: str | None = None) -> dict[str, Any]:
    """What the stats JSON of each scene records, and what a re-run compares (the manifest's sha256 read here unless given)."""
    segmenter = {k: v for k, v in dataclasses.asdict(options).items() if k not in EXECUTION_ONLY}
    return {
        "producer": "glsnet batch",
        "bundle": str(bundle),
        "bundle_manifest_sha256": manifest_sha256 or sha256_file(Path(bundle) / MANIFEST_NAME),
        "options": _as_json({"segmenter": segmenter, "outputs": dataclasses.asdict(outputs)}),
    }


def is_done(paths: OutputPaths, provenance: dict[str, Any]) -> bool:
    """True when every output exists and the stats JSON names the same bundle and options."""
    if paths.stats is None or not all(path.is_file() for path in paths.written()):
        return False
    try:
        recorded = json.loads(paths.stats.read_text(encoding="utf-8")).get("provenance") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return _same(recorded, provenance)


def output_names(scene: Location, outputs: OutputOptions) -> list[str]:
    """The file names a scene writes, the stats JSON (the commit marker) last."""
    paths = outputs.paths_for(Path(scene_stem(scene) + ".png"), Path(os.sep))
    return [p.name for p in paths.written()]


def done_scenes(scenes: list[Location], out: Location, outputs: OutputOptions, provenance: dict[str, Any]) -> set[Location]:
    """The scenes whose outputs are all in ``out`` with a stats JSON naming the same bundle and options."""
    present = listing(out)
    done = set()
    for scene in scenes:
        names = output_names(scene, outputs)
        if not all(name in present for name in names):
            continue
        try:
            recorded = json.loads(read_bytes(out.join(names[-1]))).get("provenance") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if _same(recorded, provenance):
            done.add(scene)
    return done


def _same(recorded: dict[str, Any], provenance: dict[str, Any]) -> bool:
    return recorded.get("bundle_manifest_sha256") == provenance["bundle_manifest_sha256"] and recorded.get("options") == provenance["options"]


def _as_json(value: Any) -> Any:
    """Tuples as lists, as they come back from a JSON file, so recorded and current options compare equal."""
    return json.loads(json.dumps(value))
