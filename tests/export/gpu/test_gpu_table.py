"""gpu-check's one table, end to end on the CPU: the harness on a real stream schedule over the recording device,
and the real candidate list here, where every GPU row is 'not run' with its one-line reason."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from export.gpu.gpu_table import FAILED, NOT_RUN, RAN, Candidate, Image, print_table, run_table, write_chart, write_report
from runtime.algorithm.scheduler import ScheduleOptions
from runtime.algorithm.stream_scheduler import StreamScheduleOptions, StreamScheduler
from runtime.cuda.recording import HostAsyncBackend, RecordingDevice
from runtime.image_io.readers import ArraySource
from tests.tensorrt_support import NumpyGLSNet, cpu_scheduler, make_manifest

pytest.importorskip("array_api_compat")


class RecordingRunner:
    """The stream scheduler on the recording device: a Runner whose 'GPU' is the fake."""

    def __init__(self, manifest, net):
        self.manifest = manifest
        self.device = RecordingDevice(priority=("copy", "local", "fusion"))
        engines = {role: HostAsyncBackend(self.device, fn, role) for role, fn in net.functions.items()}
        self.scheduler = StreamScheduler(self.device, engines, manifest, "fp32", StreamScheduleOptions(batch_size=3))
        self.segmented = 0
        self.lock = threading.Lock()  # two images in flight: the runner takes them in turn, as the real ones do

    def segment(self, pixels):
        with self.lock:
            self.segmented += 1
            return self.scheduler.segment_pixels(pixels, self.manifest.normalization)

    def synchronize(self):
        self.device.synchronize_all()

    def reset_peak(self):
        self.device.peak_allocated_bytes = self.device.allocated_bytes

    def peak_allocator_bytes(self):
        return self.device.peak_allocated_bytes

    def close(self):
        self.scheduler.close()


class Sampler:
    def __init__(self):
        self.started = 0

    def start(self):
        self.started += 1

    def stop(self):
        return 3 << 20


def test_the_harness_measures_what_runs_skips_what_is_missing_and_survives_a_failure(tmp_path):
    manifest = make_manifest()
    net = NumpyGLSNet(manifest, seed=1)
    pixels = np.random.default_rng(0).integers(0, 256, size=(150, 170, 3), dtype=np.uint8)
    reference = cpu_scheduler(manifest, net).segment(ArraySource(pixels), ScheduleOptions(batch_size=3))
    decoded = []
    image = Image("scene", pixels, lambda: decoded.append(1) or pixels.copy())
    runners = []

    def open_recording():
        runners.append(RecordingRunner(manifest, net))
        return runners[-1]

    def broken():
        raise RuntimeError("CUDA error: out of memory\nwith a long trace")

    candidates = [
        Candidate("TensorRT", "fp16", lambda: "tensorrt is not installed", open_recording),
        Candidate("stream scheduler (recording device)", "fp32", lambda: None, open_recording),
        Candidate("PyTorch eager", "fp16", lambda: None, broken),
        Candidate("stream scheduler (recording device)", "fp32 again", lambda: None, open_recording),
    ]
    said = []
    rows = run_table(candidates, image, reference, repeats=5, sampler=Sampler(), in_flight_images=4, say=said.append)
    assert [r.status for r in rows] == [NOT_RUN, RAN, FAILED, RAN]  # the failure did not stop the last row
    assert said == ["gpu-check: TensorRT fp16: not run: tensorrt is not installed", "gpu-check: PyTorch eager fp16: failed: RuntimeError: CUDA error: out of memory"]
    ran = rows[1]
    assert ran.agreement == 1.0  # the device-side stitching's mask is the CPU scheduler's
    assert len(ran.runs_ms) == 5 and ran.latency_ms is not None and ran.latency_with_decode_ms is not None
    assert ran.images_per_s > 0 and ran.peak_allocator_mb > 0 and ran.peak_process_mb == 3.0
    assert runners[0].segmented == 1 + 5 + 5 + 4  # warm-up, timed, timed with decode, two in flight
    assert len(decoded) == 2 * (5 + 4)  # decoded in every decode-included run, by both rows that ran

    text = print_table(rows, "test table")
    assert "not run: tensorrt is not installed" in text and "1.00000" in text
    report = json.loads(write_report(rows, tmp_path, {"image": "scene"}).read_text())
    assert [r["status"] for r in report["rows"]] == [NOT_RUN, RAN, FAILED, RAN] and report["image"] == "scene"
    pytest.importorskip("matplotlib")
    chart = write_chart(rows, tmp_path, say=said.append)
    assert chart is not None and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_make_gpu_check_runs_on_the_cpu_and_marks_every_gpu_row_not_run(small_bundle, tmp_path, capsys):
    """The prepared run, here: the CPU reference runs, each GPU row says in one line why it did not."""
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from export.gpu.gpu_check import app

    out = tmp_path / "gpu-check"
    result = CliRunner().invoke(app, ["--level", "table", "--bundle", str(small_bundle), "--out", str(out), "--repeats", "1"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    report = json.loads((out / "gpu_table.json").read_text())
    rows = report["rows"]
    assert [(r["engine"], r["precision"]) for r in rows] == [
        ("PyTorch (stream scheduler)", "fp32 (TF32)"),
        ("PyTorch eager", "fp32 (TF32)"),
        ("PyTorch (stream scheduler)", "fp16"),
        ("PyTorch eager", "fp16"),
        ("ONNX Runtime CUDA", "fp32"),
        ("ONNX Runtime CUDA", "fp16"),
        ("TensorRT", "fp16"),
        ("TensorRT", "int8"),
        ("glsnet-cpp --device cuda", "fp32"),
        ("glsnet-cpp --device cuda", "fp16"),
    ]
    assert all(r["status"] == NOT_RUN and r["reason"] and "\n" not in r["reason"] for r in rows)
    assert any("CUDA" in r["reason"] for r in rows[:4]) and "CPU wheel" in rows[4]["reason"]
    assert "not run" in report["table"] and result.output.count("gpu-check: ") >= len(rows)
    assert "glsnet-deploy[gpu]" in report["table"]  # reasons are printed as written, not read as markup
    print(report["table"])
