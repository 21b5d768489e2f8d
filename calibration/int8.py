"""INT8: activation ranges from calibration tiles, explicit Q/DQ graphs placed for TensorRT, and the
TensorRT 10 calibration cache from the same ranges.

Placement follows TensorRT's explicit-quantization rules: symmetric int8 everywhere (zero point 0),
per-channel weights, per-tensor activations, Q/DQ on the inputs of weighted ops and on both inputs
of residual Adds, float biases (TensorRT folds them itself), ReLUs kept in the graph. The fusion's
softmax, LayerNorm and crop arithmetic are not quantized: only its convolution head is.

Ranges are measured once per graph (ONNX Runtime's calibrators, fed in small chunks so memory stays
bounded) over every float tensor, so the same numbers give both the Q/DQ scales and the cache.
"""

from __future__ import annotations

import contextlib
import enum
import io
import inspect
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from calibration.calibration_cache import DEFAULT_TENSORRT_VERSION, CalibrationCache
from calibration.data_readers import Feed, FeedReader
from runtime.atomic_file import atomic_path
from runtime.errors import MissingDependencyError
from runtime.optional_import import available, require

log = logging.getLogger(__name__)


class CalibrationMethod(str, enum.Enum):
    """How an activation's range is chosen from what calibration saw."""

    PERCENTILE = "percentile"  # a high percentile of |x| (the default: robust to outliers, fast)
    ENTROPY = "entropy"  # KL-divergence threshold, like TensorRT's EntropyCalibration2 (ORT's is slow)
    MINMAX = "minmax"  # the largest |x| seen


@dataclass(frozen=True)
class QuantizationExtras:
    """The onnxruntime.quantization ``extra_options`` this toolkit sets, as typed fields (no string keys)."""

    activation_symmetric: bool = True  # ActivationSymmetric: zero point 0, as TensorRT requires
    weight_symmetric: bool = True  # WeightSymmetric
    keep_removable_activations: bool = True  # QDQKeepRemovableActivations: keep ReLU for TensorRT's fusions
    quantize_bias: bool = False  # QuantizeBias: TensorRT wants float biases
    dedicated_qdq_pair: bool = False  # DedicatedQDQPair
    force_quantize_no_input_check: bool = False  # ForceQuantizeNoInputCheck
    add_qdq_pair_to_weight: bool = False  # AddQDQPairToWeight
    no_output_quantization: tuple[str, ...] = ("Conv", "Add")  # OpTypesToExcludeOutputQuantization: TensorRT fuses what follows
    per_channel_axes: tuple[tuple[str, int], ...] = ()  # QDQOpTypePerChannelSupportToAxis

    def to_ort(self) -> dict:
        return {
            "ActivationSymmetric": self.activation_symmetric,
            "WeightSymmetric": self.weight_symmetric,
            "QDQKeepRemovableActivations": self.keep_removable_activations,
            "QuantizeBias": self.quantize_bias,
            "DedicatedQDQPair": self.dedicated_qdq_pair,
            "ForceQuantizeNoInputCheck": self.force_quantize_no_input_check,
            "AddQDQPairToWeight": self.add_qdq_pair_to_weight,
            "OpTypesToExcludeOutputQuantization": list(self.no_output_quantization),
            "QDQOpTypePerChannelSupportToAxis": dict(self.per_channel_axes),
        }


CNN_OPS = ("Conv", "Add")
FUSION_OPS = ("Conv",)


@dataclass(frozen=True)
class Int8Options:
    """INT8 conversion: calibration, placement, and the sensitivity check's budget."""

    method: CalibrationMethod = CalibrationMethod.PERCENTILE
    percentile: float = 99.99  # 99.99 beat 99.999, entropy and min/max on DeepGlobe tiles (tile agreement 99.0 vs 97.9, 96.8, 97.3 %)
    num_bins: int = 2048  # histogram bins (entropy, percentile)
    num_quantized_bins: int = 128  # entropy: bins of the int8 side
    per_channel: bool = True
    ops: tuple[tuple[str, tuple[str, ...]], ...] = (("global", CNN_OPS), ("local", CNN_OPS), ("fusion", FUSION_OPS))
    extras: QuantizationExtras = QuantizationExtras()
    max_excluded: int = 12  # sensitivity check: at most this many nodes left in float, over all graphs
    exclude_step: int = 2  # nodes excluded per round
    nodes_to_exclude: tuple[str, ...] = ()  # always left in float
    tensorrt_version: str = DEFAULT_TENSORRT_VERSION  # header of the calibration cache
    use_modelopt: bool = False  # NVIDIA ModelOpt for the CNN branches instead of ONNX Runtime (needs nvidia-modelopt)

    def __post_init__(self) -> None:
        if not isinstance(self.method, CalibrationMethod):
            object.__setattr__(self, "method", CalibrationMethod(self.method))

    def op_types(self, role: str) -> tuple[str, ...]:
        return dict(self.ops)[role]


# ---------------------------------------------------------------- ranges


def _ort_method(method: CalibrationMethod):
    q = require("onnxruntime.quantization", "INT8 calibration")
    return {
        CalibrationMethod.ENTROPY: q.CalibrationMethod.Entropy,
        CalibrationMethod.PERCENTILE: q.CalibrationMethod.Percentile,
        CalibrationMethod.MINMAX: q.CalibrationMethod.MinMax,
    }[method]


def calibrate_ranges(model_path: str | Path, make_feeds: Callable[[], Iterator[Feed]], options: Int8Options, work_dir: Path):
    """onnxruntime TensorsData for every float tensor of the graph, collected one feed at a time.

    Each pass's activations are merged into per-tensor histograms (or running min/max) and dropped, so
    memory stays at one feed's activations however many tiles there are.
    """
    q = require("onnxruntime.quantization", "INT8 calibration")
    extra = {"symmetric": True, "num_bins": options.num_bins}
    if options.method == CalibrationMethod.ENTROPY:
        extra["num_quantized_bins"] = options.num_quantized_bins
    if options.method == CalibrationMethod.PERCENTILE:
        extra["percentile"] = options.percentile
    calibrator = q.create_calibrator(
        Path(model_path),
        None,  # every float tensor: the TensorRT cache needs them all
        augmented_model_path=str(work_dir / "augmented.onnx"),
        calibrate_method=_ort_method(options.method),
        extra_options=extra,
    )
    seen = 0
    with contextlib.redirect_stdout(io.StringIO()):  # ORT prints a line per collect
        for feed in make_feeds():  # one feed per pass: ORT stacks a pass's arrays, so shapes must agree
            calibrator.collect_data(FeedReader(lambda feed=feed: iter([feed])))
            seen += 1
        if seen == 0:
            raise ValueError("no calibration feeds")
        ranges = calibrator.compute_data()
    del calibrator
    return ranges


def amax_of(ranges) -> dict[str, float]:
    """tensor -> max(|lowest|, |highest|) from onnxruntime TensorsData."""
    amax = {}
    for name, data in ranges.items():
        low, high = data.range_value
        amax[name] = float(max(np.abs(np.asarray(low, dtype=np.float64)).max(), np.abs(np.asarray(high, dtype=np.float64)).max()))
    return amax


def calibration_cache(ranges, tensorrt_version: str = DEFAULT_TENSORRT_VERSION) -> CalibrationCache:
    return CalibrationCache.from_amax(amax_of(ranges), tensorrt_version)


# ---------------------------------------------------------------- Q/DQ graphs


def prepare_for_quantization(source: Path, target: Path) -> Path:
    """Shape inference only (no graph optimisation), so tensor names stay those of the fp32 graph."""
    q = require("onnxruntime.quantization", "INT8 quantization")
    q.quant_pre_process(str(source), str(target), skip_optimization=True, skip_onnx_shape=False, skip_symbolic_shape=True)
    return target


def quantize_graph(
    prepared: Path, target: Path, ranges, role: str, options: Int8Options, nodes_to_exclude: tuple[str, ...] = ()
) -> Path:
    """A Q/DQ graph from precomputed ranges (quantize_static with a range cache, so nothing recalibrates)."""
    q = require("onnxruntime.quantization", "INT8 quantization")
    if "calibration_cache_path" not in inspect.signature(q.quantize_static).parameters:
        raise MissingDependencyError(
            "onnxruntime.quantization.quantize_static lacks calibration_cache_path (needed to reuse ranges); "
            "upgrade: pip install -U onnxruntime"
        )
    with tempfile.TemporaryDirectory(prefix="glsnet-int8-") as tmp:
        cache = Path(tmp) / "ranges.json"
        q.save_tensors_data(ranges, cache)
        with atomic_path(target) as out:
            q.quantize_static(
                str(prepared),
                str(out),
                calibration_data_reader=None,
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=list(options.op_types(role)),
                per_channel=options.per_channel,
                reduce_range=False,
                activation_type=q.QuantType.QInt8,
                weight_type=q.QuantType.QInt8,
                nodes_to_exclude=sorted(set(nodes_to_exclude) | set(options.nodes_to_exclude)),
                calibrate_method=ranges.calibration_method,
                extra_options=options.extras.to_ort(),
                calibration_cache_path=str(cache),
            )
    return target


MODELOPT_ROLES = ("global", "local")  # single-input graphs; the fusion graph stays with ONNX Runtime
MODELOPT_MAX_SAMPLES = 64


def modelopt_samples(feeds: Iterator[Feed]) -> dict[str, np.ndarray]:
    """Calibration feeds of one input stacked along the batch (only those of the first feed's shape)."""
    stacked: dict[str, list[np.ndarray]] = {}
    shape = None
    for feed in feeds:
        (name, value), = feed.items()
        shape = shape or value.shape[1:]
        if value.shape[1:] == shape and sum(len(v) for v in stacked.get(name, [])) < MODELOPT_MAX_SAMPLES:
            stacked.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in stacked.items()}


def quantize_with_modelopt(source: Path, target: Path, samples: dict[str, np.ndarray], options: Int8Options, nodes_to_exclude: tuple[str, ...]) -> Path:
    """NVIDIA ModelOpt's ONNX PTQ (NVIDIA's implementation of TensorRT's Q/DQ rules), when it is installed.

    Used for the single-input CNN branches (MODELOPT_ROLES) when Int8Options.use_modelopt is set; the
    rest of the graph stays fp32 (high_precision_dtype) so the CPU gate judges int8 alone.
    """
    if not available("modelopt.onnx.quantization"):
        raise MissingDependencyError("NVIDIA ModelOpt is not installed: pip install nvidia-modelopt, or leave use_modelopt off")
    modelopt = require("modelopt.onnx.quantization", "INT8 with NVIDIA ModelOpt")
    with atomic_path(target) as out:
        modelopt.quantize(
            onnx_path=str(source),
            quantize_mode="int8",
            calibration_data=samples,
            calibration_method="entropy" if options.method == CalibrationMethod.ENTROPY else "max",
            calibration_eps=["cpu"],
            nodes_to_exclude=list(nodes_to_exclude),
            high_precision_dtype="fp32",
            output_path=str(out),
        )
    return target


# ---------------------------------------------------------------- sensitivity


def _sqnr_db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def quantized_node_inputs(qdq_model) -> dict[str, list[tuple[str, str]]]:
    """node -> [(float tensor, its dequantized twin)] for every activation input that went through Q/DQ."""
    producers = {out: node for node in qdq_model.graph.node for out in node.output}
    initializers = {init.name for init in qdq_model.graph.initializer}
    found: dict[str, list[tuple[str, str]]] = {}
    for node in qdq_model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for name in node.input:
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            quant = producers.get(dq.input[0])
            if quant is None or quant.op_type != "QuantizeLinear" or quant.input[0] in initializers:
                continue
            found.setdefault(node.name, []).append((quant.input[0], name))
    return found


def weight_sqnr(fp32_model, node_names: set[str]) -> dict[str, float]:
    """Per-channel symmetric int8 SQNR (dB) of the weights of the named Conv/MatMul/Gemm nodes."""
    numpy_helper = require("onnx.numpy_helper", "INT8 sensitivity")
    weights = {init.name: init for init in fp32_model.graph.initializer}
    result = {}
    for node in fp32_model.graph.node:
        if node.name not in node_names or node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        if node.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float64)
        flat = w.reshape(w.shape[0], -1) if node.op_type == "Conv" else w.reshape(-1, w.shape[-1]).T
        scale = np.maximum(np.abs(flat).max(axis=1, keepdims=True), 1e-12) / 127.0
        noise = float(((np.clip(np.round(flat / scale), -127, 127) * scale - flat) ** 2).sum())
        result[node.name] = _sqnr_db(float((flat**2).sum()), noise)
    return result


def node_sensitivity(fp32_path: Path, qdq_path: Path, feeds: Iterator[Feed], session_factory) -> dict[str, float]:
    """node -> SQNR (dB) of the quantisation noise it adds (its inputs' and its weights'), lowest = worst.

    Measured on held-back feeds, one feed at a time (signal and noise energies are summed, so memory
    does not grow with the number of tiles).
    """
    onnx = require("onnx", "INT8 sensitivity")
    qdq_model = onnx.load(str(qdq_path))
    inputs = quantized_node_inputs(qdq_model)
    tensors = sorted({t for pairs in inputs.values() for pair in pairs for t in pair})
    existing = {o.name for o in qdq_model.graph.output}
    for name in tensors:
        if name not in existing:
            qdq_model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    with tempfile.TemporaryDirectory(prefix="glsnet-sens-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(qdq_model, str(path))
        session = session_factory(path)
        signal = dict.fromkeys(tensors, 0.0)
        noise = dict.fromkeys(tensors, 0.0)
        for feed in feeds:
            values = dict(zip(tensors, session.run(tensors, feed)))
            for pairs in inputs.values():
                for x, dq in pairs:
                    a = values[x].astype(np.float64)
                    signal[x] += float((a**2).sum())
                    noise[x] += float(((values[dq] - a) ** 2).sum())
        del session
    act = {node: [(_sqnr_db(signal[x], noise[x])) for x, _ in pairs] for node, pairs in inputs.items()}
    w = weight_sqnr(onnx.load(str(fp32_path)), set(inputs))
    result = {}
    for node in inputs:
        ratios = [10 ** (-db / 10) for db in act[node] if math.isfinite(db)]
        if node in w and math.isfinite(w[node]):
            ratios.append(10 ** (-w[node] / 10))
        result[node] = _sqnr_db(1.0, sum(ratios)) if ratios else math.inf
    return result


@dataclass
class Int8GraphState:
    """One graph during the sensitivity check: its ranges, its current Q/DQ file and what was excluded."""

    role: str
    fp32: Path
    prepared: Path
    output: Path
    ranges: object
    excluded: list[str] = field(default_factory=list)
    sensitivity: dict[str, float] | None = None
    seconds: float = 0.0
    modelopt_samples: dict[str, np.ndarray] | None = None  # set when ModelOpt quantizes this graph


def quantize_state(state: Int8GraphState, options: Int8Options) -> Path:
    start = time.perf_counter()
    excluded = tuple(state.excluded) + tuple(options.nodes_to_exclude)
    if state.modelopt_samples is not None:
        quantize_with_modelopt(state.prepared, state.output, state.modelopt_samples, options, excluded)
    else:
        quantize_graph(state.prepared, state.output, state.ranges, state.role, options, tuple(state.excluded))
    state.seconds += time.perf_counter() - start
    state.sensitivity = None
    return state.output


# ---------------------------------------------------------------- the whole INT8 conversion


@dataclass
class Int8Build:
    """What build_int8_graphs wrote and decided."""

    graphs: dict[str, Path]
    caches: dict[str, Path]
    excluded: dict[str, list[str]]
    rounds: list[dict]  # the sensitivity check, round by round
    method: str
    seconds: float
    quantizer: str = "onnxruntime.quantization.quantize_static"

    def summary(self) -> dict:
        return {
            "method": self.method,
            "quantizer": self.quantizer,
            "excluded_nodes": {role: list(nodes) for role, nodes in self.excluded.items()},
            "sensitivity_rounds": self.rounds,
            "seconds": round(self.seconds, 1),
        }


def describe_method(options: Int8Options) -> str:
    if options.method == CalibrationMethod.PERCENTILE:
        how = f"percentile {options.percentile} of |x| over {options.num_bins} histogram bins"
    elif options.method == CalibrationMethod.ENTROPY:
        how = f"entropy (KL) threshold, {options.num_bins} bins -> {options.num_quantized_bins}"
    else:
        how = "min/max of x"
    return (
        f"onnxruntime.quantization {options.method.value} calibrator ({how}), symmetric, per-tensor activations; "
        f"{'per-channel' if options.per_channel else 'per-tensor'} symmetric int8 weights; QDQ format"
    )


def _meets(scores, thresholds) -> bool:
    if not scores.agreement >= thresholds.min_agreement:
        return False
    drop = scores.miou_drop
    return thresholds.max_miou_drop is None or drop is None or drop <= thresholds.max_miou_drop


def build_int8_graphs(
    fp32_paths: dict[str, Path],
    out_dir: Path,
    calibration_feeds,
    holdout_feeds,
    options: Int8Options,
    thresholds,
    report: Callable[[str], None] = log.info,
) -> Int8Build:
    """Calibrate each graph, write its Q/DQ graph and TensorRT cache under ``out_dir``, then run the
    sensitivity check: while the held-back tile chain misses the gate, find the graph whose int8
    version alone hurts agreement most and leave its noisiest quantized nodes (lowest SQNR) in float,
    ``exclude_step`` at a time, up to ``max_excluded`` nodes in all."""
    from calibration.accuracy_gate import chain_scores
    from calibration.data_readers import cpu_session

    start = time.perf_counter()
    if options.use_modelopt and not available("modelopt.onnx.quantization"):
        raise MissingDependencyError("use_modelopt needs NVIDIA ModelOpt: pip install nvidia-modelopt (or leave it off)")
    out_dir.mkdir(parents=True, exist_ok=True)
    states: dict[str, Int8GraphState] = {}
    caches: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix=".int8-work-", dir=out_dir) as tmp:
        work = Path(tmp)
        for role, fp32 in fp32_paths.items():
            t0 = time.perf_counter()
            prepared = prepare_for_quantization(fp32, work / f"{role}.prepared.onnx")
            ranges = calibrate_ranges(prepared, lambda role=role: calibration_feeds.feeds(role), options, work)
            caches[role] = calibration_cache(ranges, options.tensorrt_version).write(out_dir / f"{role}.calib.cache")
            state = Int8GraphState(role, Path(fp32), prepared, out_dir / f"{role}.onnx", ranges)
            if options.use_modelopt and role in MODELOPT_ROLES:
                state.modelopt_samples = modelopt_samples(calibration_feeds.feeds(role))
            quantize_state(state, options)
            states[role] = state
            report(f"int8 {role}: calibrated {len(ranges.keys())} tensors and quantized in {time.perf_counter() - t0:.1f} s")

        sessions = {role: cpu_session(state.output) for role, state in states.items()}
        scores = chain_scores(holdout_feeds, sessions)
        rounds = [{"round": 0, "tile_agreement": scores.agreement, "miou_drop": scores.miou_drop, "excluded": []}]
        report(f"int8 tiles: agreement {100 * scores.agreement:.3f}% with nothing excluded")
        damage: dict[str, float] = {}
        exhausted: set[str] = set()
        total = 0
        while not _meets(scores, thresholds) and total < options.max_excluded:
            for role in states:
                if role not in damage:
                    mixed = {r: sessions[r] if r == role else holdout_feeds.reference[r] for r in states}
                    damage[role] = 1.0 - chain_scores(holdout_feeds, mixed).agreement
            candidates = [r for r in states if r not in exhausted and damage[r] > 0.0]
            if not candidates:
                break
            role = max(candidates, key=lambda r: damage[r])
            state = states[role]
            if state.sensitivity is None:
                state.sensitivity = node_sensitivity(state.fp32, state.output, holdout_feeds.feeds(role), cpu_session)
            allowed = set(options.op_types(role))
            ops = {n.name: n.op_type for n in _load(state.fp32).graph.node}
            ranked = sorted(
                (db, node) for node, db in state.sensitivity.items() if ops.get(node) in allowed and node not in state.excluded
            )
            picks = [node for _, node in ranked[: min(options.exclude_step, options.max_excluded - total)]]
            if not picks:
                exhausted.add(role)
                continue
            state.excluded.extend(picks)
            total += len(picks)
            quantize_state(state, options)
            sessions[role] = cpu_session(state.output)
            damage.pop(role, None)
            scores = chain_scores(holdout_feeds, sessions)
            rounds.append(
                {
                    "round": len(rounds),
                    "graph": role,
                    "excluded": picks,
                    "sqnr_db": {node: round(db, 2) for db, node in ranked[: len(picks)]},
                    "tile_agreement": scores.agreement,
                    "miou_drop": scores.miou_drop,
                }
            )
            report(f"int8 sensitivity: {role} keeps {', '.join(picks)} in float -> tile agreement {100 * scores.agreement:.3f}%")
        del sessions
    return Int8Build(
        graphs={role: s.output for role, s in states.items()},
        caches=caches,
        excluded={role: list(s.excluded) + list(options.nodes_to_exclude) for role, s in states.items()},
        rounds=rounds,
        method=describe_method(options),
        seconds=time.perf_counter() - start,
        quantizer=("NVIDIA ModelOpt (global, local) + " if options.use_modelopt else "") + "onnxruntime.quantization.quantize_static",
    )


def _load(path: Path):
    onnx = require("onnx", "INT8 sensitivity")
    return onnx.load(str(path), load_external_data=False)
