"""``glsnet info`` verifies the checksums it prints and names the file that fails (issue 13, item 6)."""

from __future__ import annotations

import shutil

from tests.runtime.test_glsnet_cli import glsnet


def test_info_verifies_every_checksum(small_bundle):
    result = glsnet("info", str(small_bundle))
    assert result.returncode == 0, result.stderr
    assert "checksums: every file matches the manifest" in result.stdout
    assert "trained on uint8 pixels in [0, 255]" in result.stdout


def test_info_names_the_file_whose_checksum_fails(small_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(small_bundle, copy)
    local = next(copy.rglob("local.onnx"))
    with open(local, "r+b") as fh:  # flip one byte inside the graph
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    result = glsnet("info", str(copy))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "1 file(s) fail their checksum" in errors[0] and "local.onnx has sha256" in errors[0]
    assert "MISMATCH" in result.stdout  # the table still shows which row


def test_info_names_a_missing_graph(small_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(small_bundle, copy)
    next(copy.rglob("fusion.onnx")).unlink()
    result = glsnet("info", str(copy))
    assert result.returncode == 1 and "fusion.onnx is missing" in result.stderr
