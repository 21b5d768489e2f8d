"""Property-based fuzzing of the manifest reader (issue 13).

Mutations of a real exported manifest (values replaced by arbitrary JSON, keys deleted or added,
numbers nudged, list items dropped or repeated) must never make the reader raise anything but
the project's own BundleError; and every manifest it accepts must open against its graphs (and
segment a small image) or be refused at open with one of the project's errors.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.bundle.manifest import Manifest, manifest_from_dict
from runtime.errors import BundleError, GlsnetError

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
STRUCTURAL = ("replace", "delete", "add", "drop item", "repeat item", "nudge")
NUMERIC = ("nudge", "nudge", "nudge", "drop item", "repeat item")


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, prefix + (index,))
    return found


def _parent(data: Any, path: tuple) -> Any:
    for key in path[:-1]:
        data = data[key]
    return data


@st.composite
def mutated_manifests(draw, base: dict, kinds: tuple[str, ...]) -> dict:
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)))
        kind = draw(st.sampled_from(kinds))
        if not path:  # the root itself
            if kind == "replace":
                data = draw(JSON_VALUES)
            continue
        parent, key = _parent(data, path), path[-1]
        value = parent[key]
        if kind == "replace":
            parent[key] = draw(JSON_VALUES)
        elif kind == "delete":
            del parent[key]
        elif kind == "add" and isinstance(value, dict):
            value[draw(st.text(min_size=1, max_size=8))] = draw(JSON_VALUES)
        elif kind == "drop item" and isinstance(value, list) and value:
            value.pop(draw(st.integers(0, len(value) - 1)))
        elif kind == "repeat item" and isinstance(value, list) and value:
            value.append(copy.deepcopy(value[draw(st.integers(0, len(value) - 1))]))
        elif kind == "nudge" and isinstance(value, (int, float)) and not isinstance(value, bool):
            change = draw(st.sampled_from(("plus one", "minus one", "negate", "zero", "double", "half", "nan", "inf", "bool")))
            parent[key] = {
                "plus one": value + 1, "minus one": value - 1, "negate": -value, "zero": 0, "double": value * 2,
                "half": value / 2, "nan": math.nan, "inf": math.inf, "bool": bool(value),
            }[change]
        if not isinstance(data, dict):
            break
    return data


@pytest.fixture(scope="module")
def base(small_bundle) -> dict:
    return json.loads((small_bundle / "manifest.json").read_text())


def test_mutated_manifests_raise_only_bundle_errors(base):
    seen = {"accepted": 0, "refused": 0}

    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated_manifests(base, STRUCTURAL))
    def reader_never_crashes(data):
        try:
            result = manifest_from_dict(json.loads(json.dumps(data)))
        except BundleError as exc:
            assert str(exc) and "\n" not in str(exc)
            seen["refused"] += 1
        else:
            assert isinstance(result, Manifest)
            seen["accepted"] += 1

    reader_never_crashes()
    print(f"manifest fuzz: {seen['refused']} refused, {seen['accepted']} accepted")
    assert seen["refused"] > 0 and seen["accepted"] > 0


def _bundle_with(small_bundle: Path, data: dict, directory: Path) -> Path:
    for graph in small_bundle.glob("*.onnx"):
        (directory / graph.name).symlink_to(graph)
    (directory / "manifest.json").write_text(json.dumps(data))
    return directory


@pytest.mark.slow
def test_every_accepted_manifest_opens_against_its_graphs_or_is_refused_at_open(small_bundle, base):
    from runtime.segmenter import Segmenter

    seen = {"opened": 0, "refused at open": 0, "refused on read": 0}

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(mutated_manifests(base, NUMERIC))
    def accepted_manifests_open_or_refuse(data):
        text = json.dumps(data)
        try:
            manifest_from_dict(json.loads(text))
        except BundleError:
            seen["refused on read"] += 1
            return
        with tempfile.TemporaryDirectory() as folder:
            bundle = _bundle_with(small_bundle, json.loads(text), Path(folder))
            try:
                with Segmenter(bundle) as segmenter:
                    mask = segmenter.segment(np.full((24, 40, 3), 100, np.uint8))
            except GlsnetError as exc:
                assert str(exc) and "\n" not in str(exc)
                seen["refused at open"] += 1
                return
            assert mask.shape == (24, 40) and int(mask.max()) < len(data["classes"])
            seen["opened"] += 1

    accepted_manifests_open_or_refuse()
    print(f"open fuzz: {seen}")
    assert seen["opened"] > 0
