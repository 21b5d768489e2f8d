"""INT8: activation ranges from calibration tiles, explicit Q/DQ graphs placed for TensorRT, the
TensorRT 10 calibration cache from the same ranges, and a sensitivity check.

Placement serves both consumers of the one Q/DQ graph: TensorRT's explicit quantization (symmetric int8
everywhere, zero point 0, per-channel weights, per-tensor activations, float biases, a dedicated pair per
consumer) and ONNX Runtime's CPU provider, whose QDQ transformers fuse DQ -> Conv -> Q into QLinearConv
and DQ -> Add -> Q into QLinearAdd only where the output of the op is quantized too. So convolutions and
the branches' residual Adds are quantized on their inputs and outputs (CNN_OPS); a ReLU after a
convolution reads the dequantized output and its own output is quantized again for the next
convolution (activation after ReLU), which costs almost nothing since both ranges are the same.
calibration/integer_kernels.py saves the engine so the fusion survives and counts what stayed in float.
The fusion's softmax, LayerNorm, attention matmuls and crop arithmetic are not quantized: only its
convolution head is.

Ranges are measured once per graph with ONNX Runtime's calibrators (default: the 99.99th percentile
of |x|), one feed at a time so memory stays bounded, so the same numbers give the Q/DQ scales and the
cache: over every float tensor of the local branch (whose cache TensorRT reads on DLA), over the
tensors the Q/DQ graph quantizes for the others. The sensitivity check measures, by leaving each node group in
float in turn, which one costs the most agreement, and keeps the worst in float until the gate passes.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import io
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.calibration_cache import DEFAULT_TENSORRT_VERSION, CalibrationCache
from calibration.data_readers import Feed, FeedReader
from calibration.percentile_collector import PercentileCollector
from calibration.stage_graphs import (
    Correspondence,
    correspondence,
    load_graph,
    stage_exclusions,
    stage_ranges,
)
from runtime.atomic_file import atomic_path
from runtime.backends.tensorrt.engine_check import DLA_ROLE
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
    dedicated_qdq_pair: bool = True  # DedicatedQDQPair: a node left in float then reads the float tensor
    force_quantize_no_input_check: bool = False  # ForceQuantizeNoInputCheck
    add_qdq_pair_to_weight: bool = False  # AddQDQPairToWeight
    no_output_quantization: tuple[str, ...] = ()  # OpTypesToExcludeOutputQuantization: none, so ORT can fuse integer kernels
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


# Convolutions and residual Adds, inputs and outputs. With Conv alone, a convolution whose output
# feeds a residual Add has no Q after it and ONNX Runtime leaves it in float (12 of the small local
# branch's 55 convolutions, and the int8 graph ran slower than fp32). An earlier placement with Q/DQ on
# convolution inputs only measured 97.9 % local-branch tile agreement on DeepGlobe against 96.1 % with
# Adds quantized; the sensitivity check keeps in float the blocks that cost the most.
CNN_OPS = ("Conv", "Add")
FUSION_OPS = ("Conv",)
# The branch whose calibration cache TensorRT reads for implicit INT8 (the local branch on DLA) gets
# every float tensor calibrated. The others calibrate only what their Q/DQ graph quantizes: the
# fusion's attention held most of its 84 tensors and of its calibration time.
EVERY_TENSOR_ROLES = (DLA_ROLE,)


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
    max_excluded_groups: int = 6  # sensitivity check: at most this many node groups left in float, over all graphs
    scan_batches: int | None = 8  # held-back tile batches per measurement while scanning groups (None: all)
    nodes_to_exclude: tuple[str, ...] = ()  # always left in float
    # The CNN branches' first convolution (7 x 7, 3 input channels, on the image) stays in float: as an integer
    # kernel it took 160 ms per 512-row band of the paper-size global branch, plus 115 ms of float
    # dequantize and ReLU on its 64-channel output, against about 45 ms for the float convolution.
    float_stem: bool = True
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


def calibrate_ranges(
    model_path: str | Path,
    make_feeds: Callable[[], Iterator[Feed]],
    options: Int8Options,
    work_dir: Path,
    op_types: tuple[str, ...] | None = None,
    observe: Callable[[int, dict[str, np.ndarray]], None] | None = None,
):
    """onnxruntime TensorsData for the inputs and outputs of ``op_types`` nodes (None: every float tensor),
    collected one feed at a time. ``observe(feed index, tensors)`` sees each feed's calibrated tensors
    (percentile method only).

    Each pass's activations are merged into per-tensor histograms (or running min/max) and dropped, so
    memory stays at one feed's activations however many tiles there are. Percentile histograms come
    from calibration/percentile_collector.py (ONNX Runtime's own collector sorted every value).
    """
    q = require("onnxruntime.quantization", "INT8 calibration")
    extra = {"symmetric": True, "num_bins": options.num_bins}
    if options.method == CalibrationMethod.ENTROPY:
        extra["num_quantized_bins"] = options.num_quantized_bins
    if options.method == CalibrationMethod.PERCENTILE:
        extra["percentile"] = options.percentile
    calibrator = q.create_calibrator(
        Path(model_path),
        None if op_types is None else list(op_types),
        augmented_model_path=str(work_dir / "augmented.onnx"),
        calibrate_method=_ort_method(options.method),
        extra_options=extra,
    )
    if options.method == CalibrationMethod.PERCENTILE:
        calibrator.collector = PercentileCollector(options.percentile, options.num_bins, observe)
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


# Ops that a module of their own computes (their name carries that module: ``.../conv1/Conv``); others,
# such as a residual block's Add, are written in the block's forward (``.../layer3.2/Add``).
MODULE_OPS = frozenset({"Conv", "MatMul", "Gemm"})


def node_groups(model, op_types: tuple[str, ...]) -> dict[str, list[str]]:
    """Quantizable nodes grouped by the module that owns them (a residual block, the stem, a head).

    The group is the node's block: its name's path without the op (and without the layer module for
    Conv: ``/backbone/layer3/layer3.2/conv1/Conv`` -> ``/backbone/layer3/layer3.2``), a shortcut's
    ``downsample`` joining its block (``.../layer3.0/downsample/downsample.0/Conv`` -> ``.../layer3.0``),
    because a block's Add left in float leaves the convolutions that feed it in float too. Names
    without such a path form groups of one.
    """
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        module = node.name.split("/")[:-1]
        if node.op_type in MODULE_OPS:
            module = module[:-1]
        if module and module[-1] == "downsample":
            module = module[:-1]
        key = "/".join(module) if len(module) > 1 and module[0] == "" else node.name
        groups.setdefault(key, []).append(node.name)
    return groups


@dataclass
class Int8GraphState:
    """One graph during the sensitivity check: its ranges, its current Q/DQ file and what was excluded."""

    role: str
    fp32: Path
    prepared: Path
    output: Path
    ranges: object
    excluded: list[str] = field(default_factory=list)
    float_nodes: tuple[str, ...] = ()  # left in float by design (the stem), not by the sensitivity check
    gains: dict[str, float] | None = None  # group -> agreement gained by leaving it in float (the last scan)
    seconds: float = 0.0
    modelopt_samples: dict[str, np.ndarray] | None = None  # set when ModelOpt quantizes this graph
    stages: list[StageTarget] = field(default_factory=list)  # global: its stage graphs, quantized alongside


@dataclass(frozen=True)
class StageTarget:
    """One global stage graph to quantize with the global graph's ranges and exclusions."""

    prepared: Path
    output: Path
    match: Correspondence


def quantize_state(state: Int8GraphState, options: Int8Options, target: Path | None = None, extra: tuple[str, ...] = ()) -> Path:
    """Quantize the graph with its exclusions (plus ``extra``) into ``target`` (default: its output)."""
    start = time.perf_counter()
    target = target or state.output
    excluded = tuple(state.float_nodes) + tuple(state.excluded) + extra
    if state.modelopt_samples is not None:
        quantize_with_modelopt(state.prepared, target, state.modelopt_samples, options, excluded + tuple(options.nodes_to_exclude))
    else:
        quantize_graph(state.prepared, target, state.ranges, state.role, options, excluded)
        if target == state.output:
            for stage in state.stages:
                kept = stage_exclusions(excluded + tuple(options.nodes_to_exclude), stage.match)
                quantize_graph(stage.prepared, stage.output, stage_ranges(state.ranges, stage.match), state.role, options, kept)
    state.seconds += time.perf_counter() - start
    return target


def scan_groups(state: Int8GraphState, options: Int8Options, agreement: Callable[[Path], float], work: Path) -> dict[str, float]:
    """Leave each node group of one graph in float in turn; group -> tile agreement gained (this graph alone int8)."""
    groups = node_groups(_load(state.fp32), options.op_types(state.role))
    base = agreement(state.output)
    gains = {}
    for key, nodes in groups.items():
        todo = tuple(n for n in nodes if n not in state.excluded)
        if not todo:
            continue
        gains[key] = agreement(quantize_state(state, options, work / f"{state.role}.scan.onnx", todo)) - base
    return gains


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
    stages: list[Path] = field(default_factory=list)  # the global stage graphs, in order (none: not asked, or ModelOpt)
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
    ops = ", ".join(f"{role}: {'/'.join(types)}" for role, types in options.ops)
    return (
        f"onnxruntime.quantization {options.method.value} calibrator ({how}), symmetric, per-tensor activations; "
        f"{'per-channel' if options.per_channel else 'per-tensor'} symmetric int8 weights; QDQ on the inputs and outputs of {ops}"
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
    judge: Callable[[dict[str, Path]], object] | None = None,
    global_stages: tuple[Path, ...] = (),
) -> Int8Build:
    """Calibrate each graph, write its Q/DQ graph and TensorRT cache under ``out_dir``, then run the
    sensitivity check while ``judge`` (default: the candidate chain on held-back tiles) misses the
    thresholds: find the graph whose int8 version alone costs the most agreement, measure for each of
    its node groups (residual blocks, heads) how much agreement leaving that group in float wins back,
    and leave the best one in float; repeat, up to ``max_excluded_groups`` groups in all.

    ``global_stages``: the fp32 global stage graphs; each is quantized into ``out_dir`` under its own
    file name whenever the global graph is, with the global graph's ranges and exclusions."""
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
            tensors = None if role in EVERY_TENSOR_ROLES else options.op_types(role)
            ranges = calibrate_ranges(
                prepared,
                lambda role=role: calibration_feeds.feeds(role),
                options,
                work,
                tensors,
                lambda index, outputs, role=role: calibration_feeds.remember(role, index, outputs),
            )
            caches[role] = calibration_cache(ranges, options.tensorrt_version).write(out_dir / f"{role}.calib.cache")
            state = Int8GraphState(role, Path(fp32), prepared, out_dir / f"{role}.onnx", ranges)
            if options.float_stem:  # the fusion has no convolution on an input
                state.float_nodes = stem_convolutions(_load(fp32))
            if options.use_modelopt and role in MODELOPT_ROLES:
                state.modelopt_samples = modelopt_samples(calibration_feeds.feeds(role))
            elif role == "global" and global_stages:
                whole = load_graph(fp32)
                for stage in global_stages:
                    prepared_stage = prepare_for_quantization(stage, work / f"{Path(stage).stem}.prepared.onnx")
                    match = correspondence(whole, load_graph(prepared_stage))
                    state.stages.append(StageTarget(prepared_stage, out_dir / Path(stage).name, match))
            quantize_state(state, options)
            states[role] = state
            report(f"int8 {role}: calibrated {len(ranges.keys())} tensors and quantized in {time.perf_counter() - t0:.1f} s")

        def alone(role: str, path: Path, batches: int | None = None) -> float:
            """Tile agreement with only ``role`` in int8 (``path``), the other graphs fp32."""
            sessions = {**holdout_feeds.reference, role: cpu_session(path)}
            return chain_scores(holdout_feeds, sessions, max_batches=batches).agreement

        if judge is None:  # graphs not being converted stay fp32 in the chain
            def judge(paths: dict[str, Path]):
                return chain_scores(holdout_feeds, {**holdout_feeds.reference, **{r: cpu_session(p) for r, p in paths.items()}})

        paths = {role: state.output for role, state in states.items()}
        t0 = time.perf_counter()
        scores = judge(paths)
        rounds = [{"round": 0, "agreement": scores.agreement, "miou_drop": scores.miou_drop, "excluded": []}]
        report(f"int8: agreement {100 * scores.agreement:.3f}% with every graph quantized (judged in {time.perf_counter() - t0:.1f} s)")
        damage: dict[str, float] = {}
        exhausted: set[str] = set()
        while not _meets(scores, thresholds) and len(rounds) - 1 < options.max_excluded_groups:
            for role in states:
                if role not in damage:
                    damage[role] = 1.0 - alone(role, states[role].output)
            candidates = [r for r in states if r not in exhausted and damage[r] > 0.0]
            if not candidates:
                break
            role = max(candidates, key=lambda r: damage[r])
            state = states[role]
            if state.gains is None:
                t0 = time.perf_counter()
                state.gains = scan_groups(state, options, lambda path: alone(role, path, options.scan_batches), work)
                report(f"int8 sensitivity: scanned {len(state.gains)} node groups of {role} in {time.perf_counter() - t0:.1f} s")
            best = max(state.gains.items(), key=lambda kv: kv[1], default=None)
            if best is None or best[1] <= 0.0:
                exhausted.add(role)
                continue
            group, gain = best
            del state.gains[group]
            nodes = [n for n in node_groups(_load(state.fp32), options.op_types(role))[group] if n not in state.excluded]
            state.excluded.extend(nodes)
            quantize_state(state, options)
            damage.pop(role, None)
            scores = judge(paths)
            rounds.append(
                {
                    "round": len(rounds),
                    "graph": role,
                    "group": group,
                    "excluded": nodes,
                    "scan_gain": gain,
                    "agreement": scores.agreement,
                    "miou_drop": scores.miou_drop,
                }
            )
            report(f"int8 sensitivity: {role} keeps {group} ({len(nodes)} nodes) in float -> agreement {100 * scores.agreement:.3f}%")
    return Int8Build(
        graphs={role: s.output for role, s in states.items()},
        caches=caches,
        excluded={role: list(s.float_nodes) + list(s.excluded) + list(options.nodes_to_exclude) for role, s in states.items()},
        rounds=rounds,
        method=describe_method(options),
        seconds=time.perf_counter() - start,
        stages=[stage.output for state in states.values() for stage in state.stages],
        quantizer=("NVIDIA ModelOpt (global, local) + " if options.use_modelopt else "") + "onnxruntime.quantization.quantize_static",
    )


def stem_convolutions(model) -> tuple[str, ...]:
    """The convolutions that read the graph's image input (Int8Options.float_stem)."""
    inputs = {value.name for value in model.graph.input}
    return tuple(node.name for node in model.graph.node if node.op_type == "Conv" and node.input and node.input[0] in inputs)


def _load(path: Path):
    onnx = require("onnx", "INT8 sensitivity")
    return onnx.load(str(path), load_external_data=False)
