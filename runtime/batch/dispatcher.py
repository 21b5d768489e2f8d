"""``glsnet batch``: many scenes on a Ray cluster, one Segmenter per worker actor, resumable.

The driver expands the inputs (paths or object-store URIs), reads the bundle's manifest and
checks the options once, skips the scenes already done (runtime.batch.resume), takes the output
folder's lease, then hands scenes, largest first, one at a time to idle workers spread across the
nodes, so a slow scene never holds others back. Each worker reserves, by default, the memory plan
of the scene that needs the most, computed from the manifest without loading the graphs.

Faults: a scene that fails for its own reason comes back as a failed result. A scene past its
deadline (``--scene-timeout``, by default scaled by its pixels) has its worker killed; it is
recorded as failed and the worker restarts. A worker that dies takes no result with it: the
scene goes back to the front of the queue; the try counts against ``--retries`` unless the node
was lost or preempted. Ray restarts dead workers without limit; a breaker stops the batch when
workers die faster than DEATH_BREAKER allows. ``ActorUnavailableError`` (a worker Ray cannot
reach for now) is not a death: nothing of its scene is removed, the scene is queued again, and the
worker is asked again whether it is ready. Each result is appended to ``OUT/batch-report.jsonl``
as it arrives, with the node id, the attempt and Ray's cause of each death.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from runtime.atomic_file import remove_temporaries_of
from runtime.batch.bundle_fetch import BundleRef, check_bundle, graph_file_sizes
from runtime.batch.cluster import ray_session
from runtime.batch.inputs import expand_inputs
from runtime.batch.lease import Lease
from runtime.batch.report import (
    FAILED,
    REPORT_NAME,
    SKIPPED,
    BatchSummary,
    ReportWriter,
    SceneResult,
    print_summary,
)
from runtime.batch.resume import batch_provenance, done_scenes, output_names
from runtime.batch.scene_sizes import scene_shapes
from runtime.batch.storage import Location, parse_location
from runtime.batch.worker import Scene, SceneWorker, scratch_root
from runtime.bundle.manifest import Manifest
from runtime.byte_sizes import format_bytes
from runtime.engines.declared_plan import declared_plan
from runtime.errors import ClusterError, InputError
from runtime.image_io.writers import OutputOptions
from runtime.options import SegmenterOptions

WAIT_TICK_S = 0.5  # how often the progress bar, deadlines and the lease are looked at while waiting for results
DEATH_WINDOW_S = 600.0  # the breaker counts deaths within this window...
DEATH_BREAKER = 10  # ...and stops the batch beyond max(DEATH_BREAKER, 2 x workers) of them
TIMEOUT_FLOOR_S = 300.0  # the default deadline: at least this...
TIMEOUT_S_PER_MEGAPIXEL = 60.0  # ...or this per megapixel of the scene, whichever is longer
GPU_PROVIDERS = ("cuda", "tensorrt")
# What a worker holds besides its Segmenter's plan (whose estimate counts a plain interpreter): a Ray actor
# process with the same imports measured 115 MB RSS against a plain interpreter's 56 MB (Ray 2.60); rounded up.
RAY_WORKER_BYTES = 64_000_000


@dataclass(frozen=True)
class BatchOptions:
    """A whole batch: what to segment, with which bundle and options, on which workers."""

    inputs: tuple[str, ...]
    bundle: str | Path
    output: str | Path
    segmenter: SegmenterOptions = field(default_factory=SegmenterOptions)
    outputs: OutputOptions = field(default_factory=OutputOptions)
    address: str | None = None  # None: $RAY_ADDRESS when set (ray job submit), else a local Ray instance for this run
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    memory_per_worker: int | None = None  # bytes of Ray memory reserved per worker (default: the largest scene's plan, see planned_worker_memory)
    retries: int = 2
    scene_timeout_s: float | None = None  # None: scaled by pixels (see scene_deadline); 0: none
    start_timeout_s: float = 300.0  # no worker ready by then: the cluster cannot run the workers asked for
    local_cpus: int | None = None  # CPUs of the local Ray instance (default: all)
    cwd: str | None = None  # where relative paths are resolved (default: the driver's working directory)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError(f"--workers {self.workers}: at least one worker is needed")
        if self.cpus_per_worker <= 0:
            raise InputError(f"--cpus-per-worker {self.cpus_per_worker}: must be > 0")
        if self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker {self.gpus_per_worker}: must be >= 0")
        if self.retries < 0:
            raise InputError(f"--retries {self.retries}: must be >= 0")
        if self.scene_timeout_s is not None and self.scene_timeout_s < 0:
            raise InputError(f"--scene-timeout {self.scene_timeout_s}: must be >= 0 (0: no deadline)")
        gpu = self.segmenter.engine == "tensorrt" or self.segmenter.ort_provider in GPU_PROVIDERS
        if gpu and self.gpus_per_worker == 0:
            what = "--engine tensorrt" if self.segmenter.engine == "tensorrt" else f"--provider {self.segmenter.ort_provider}"
            raise InputError(f"{what} runs on a GPU but --gpus-per-worker is 0: give each worker a GPU (e.g. --gpus-per-worker 1)")

    def worker_segmenter(self) -> SegmenterOptions:
        """The workers' Segmenter options: ONNX Runtime threads default to the CPUs each worker reserved, and
        never spin (workers share a node's cores: a spinning pool burns what the next worker reserved)."""
        threads = self.segmenter.threads if self.segmenter.threads is not None else max(1, round(self.cpus_per_worker))
        return dataclasses.replace(self.segmenter, threads=threads, thread_spinning=False)

    def worker_outputs(self) -> OutputOptions:
        """Batch always writes the stats JSON: it records the bundle and options that resume compares."""
        return dataclasses.replace(self.outputs, stats=True)

    def ray_resources(self, planned_memory: int | None = None) -> dict[str, Any]:
        """Ray's reservation per worker; memory: --memory-per-worker, else ``planned_memory``, else --max-memory."""
        memory = self.memory_per_worker or planned_memory or self.segmenter.max_memory
        resources: dict[str, Any] = {"num_cpus": self.cpus_per_worker, "num_gpus": self.gpus_per_worker}
        if memory:
            resources["memory"] = memory
        return resources

    def scene_deadline(self, pixels: int) -> float | None:
        """Seconds a scene of ``pixels`` may take before its worker is killed (None: no deadline)."""
        if self.scene_timeout_s is not None:
            return self.scene_timeout_s or None
        return max(TIMEOUT_FLOOR_S, TIMEOUT_S_PER_MEGAPIXEL * pixels / 1e6)


def run_batch(options: BatchOptions, console=None, show_progress: bool = True) -> BatchSummary:
    """Segment every scene of ``options.inputs`` not already done; print a summary; return it."""
    from rich.console import Console

    console = console or Console(stderr=True)
    cwd = options.cwd or os.getcwd()
    out = parse_location(options.output, cwd, "output folder")
    if out.is_local and os.path.exists(out.local_path) and not os.path.isdir(out.local_path):
        raise InputError(f"{out}: exists and is not a folder; choose an output folder with -o")
    inputs = tuple(item if "://" in item else os.path.join(cwd, os.path.expanduser(item)) for item in map(str, options.inputs))
    scenes = expand_inputs(inputs, exclude=out)
    outputs = options.worker_outputs()
    bundle, manifest = check_bundle(parse_location(options.bundle, cwd, "bundle"), options.segmenter)
    provenance = batch_provenance(bundle.location.uri, options.segmenter, outputs, bundle.manifest_sha256)
    done = done_scenes(scenes, out, outputs, provenance)
    todo = [scene for scene in scenes if scene not in done]
    summary = BatchSummary()
    report_location = out.join(REPORT_NAME)
    start = time.perf_counter()
    with Lease(out) as lease, ReportWriter(report_location, os.path.join(scratch_root(), "driver")) as report:

        def record(result: SceneResult) -> None:
            summary.add(result)
            report.write(result)

        for scene in scenes:
            if scene in done:
                record(SceneResult(str(scene), [str(out.join(n)) for n in output_names(scene, outputs)], SKIPPED, attempts=0))
        if not todo:
            console.print(
                f"nothing to do: all {len(scenes)} scenes are already done in {out} with this bundle and these options "
                f"(report: {report_location})",
                highlight=False,
            )
            return summary
        skipped = len(scenes) - len(todo)
        if skipped:
            console.print(f"{skipped} of {len(scenes)} scenes already done with this bundle and options: skipped", highlight=False)
        shapes = scene_shapes(todo)
        pixels = {scene: height * width for scene, (height, width) in shapes.items()}
        todo.sort(key=lambda scene: -pixels[scene])  # largest first: the longest scenes never start last
        planned = None if options.memory_per_worker else planned_worker_memory(options, bundle, manifest, list(shapes.values()))
        address = options.address or ("auto" if os.environ.get("RAY_ADDRESS") else None)
        with ray_session(address, options.local_cpus) as ray, _ProgressBar(console, len(todo), show_progress) as progress:

            def on_result(result: SceneResult) -> None:
                record(result)
                progress(summary)

            resources = options.ray_resources(planned[0] if planned else None)
            if planned is not None:  # said once connected: a cluster that is not there stays a one-line error
                console.print(f"each worker reserves {format_bytes(planned[0])} of memory: {planned[1]} (--memory-per-worker overrides)", highlight=False)
            dispatcher = _Dispatcher(ray, options, resources, bundle, outputs, provenance, on_result, summary, console, lease.renew)
            dispatcher.run([Scene(s, out) for s in todo], {s: options.scene_deadline(pixels[s]) for s in todo})
    summary.wall_seconds = time.perf_counter() - start
    print_summary(summary, report_location, console)
    return summary


def planned_worker_memory(options: BatchOptions, bundle: BundleRef, manifest: Manifest, shapes: list[tuple[int, int]]) -> tuple[int, str] | None:
    """(bytes, why) each worker reserves by default: its Segmenter's memory plan for the largest scene, plus the Ray process.

    The plan comes from the manifest and the graph files' sizes (runtime.engines.declared_plan), no
    session built on the driver. Both the scene with the most pixels and the widest are planned (the
    global branch's bands span the width) and the larger estimate is kept. None where no such plan
    applies: GPU engines and providers (their memory is mostly the GPU's), no readable header, or a
    largest scene that fits no plan under --max-memory (its worker reports that as the scene's error).
    """
    segmenter = options.worker_segmenter()
    if segmenter.engine != "onnxruntime" or segmenter.ort_provider != "cpu":
        return None
    known = [(height, width) for height, width in shapes if height and width]
    if not known:
        return None
    candidates = {max(known, key=lambda s: (s[0] * s[1], s[1])), max(known, key=lambda s: (s[1], s[0]))}
    sizes = graph_file_sizes(bundle, manifest, segmenter.precision)
    try:
        plans = [(declared_plan(manifest, segmenter, sizes, height, width), (height, width)) for height, width in sorted(candidates)]
    except (InputError, ValueError):  # no plan fits the budget, or a manifest the workers' graph check will name
        return None
    plan, (height, width) = max(plans, key=lambda p: p[0].estimate_bytes)
    why = f"the plan of the scene that needs the most ({height} x {width}: {plan.describe()}) + {format_bytes(RAY_WORKER_BYTES)} for the Ray worker process"
    return plan.estimate_bytes + RAY_WORKER_BYTES, why


@dataclass
class _Flight:
    """A scene on a worker: who has it, since when, until when."""

    worker: str
    scene: Scene
    started: float
    deadline: float | None
    timed_out: bool = False


class _Dispatcher:
    """Workers, the queue of scenes and the results in flight; one scene per idle worker at a time."""

    def __init__(self, ray, options: BatchOptions, resources: dict[str, Any], bundle: BundleRef, outputs: OutputOptions, provenance: dict, on_result: Callable[[SceneResult], None], summary: BatchSummary, console, tick: Callable[[], None] = lambda: None) -> None:
        self.ray, self.options, self.outputs, self.on_result, self.summary, self.console, self.tick = ray, options, outputs, on_result, summary, console, tick
        self.errors = _ray_errors(ray)
        self.resources = resources
        worker_class = ray.remote(SceneWorker).options(max_restarts=-1, max_task_retries=0, scheduling_strategy="SPREAD", **resources)
        self.actors = {
            f"worker-{i}": worker_class.remote(f"worker-{i}", bundle, options.worker_segmenter(), outputs, provenance)
            for i in range(1, options.workers + 1)
        }
        self.info_of: dict[str, Any] = {}  # worker -> its WorkerInfo (pid, node) when last ready
        self.parked: dict[str, tuple[_Flight, str]] = {}  # worker -> its scene and why, until the worker is known alive or dead
        self.queue: deque[Scene] = deque()
        self.starting = {actor.ready.remote(): name for name, actor in self.actors.items()}
        self.idle: deque[str] = deque()
        self.in_flight: dict[Any, _Flight] = {}
        self.death_times: deque[float] = deque()
        self.deaths: dict[Location, list[str]] = {}
        self.start_errors: dict[str, str] = {}
        self.ever_ready = False
        self.first_dispatch: float | None = None
        self.breaker = max(DEATH_BREAKER, 2 * options.workers)
        self._warn_if_short_of_resources()

    def run(self, scenes: list[Scene], deadlines: dict[Location, float | None]) -> None:
        queue = self.queue = deque(scenes)
        started = time.monotonic()
        try:
            while queue or self.in_flight or self.parked:
                while self.idle and queue:
                    if self.first_dispatch is None:
                        self.first_dispatch = time.perf_counter()
                    name, scene = self.idle.popleft(), queue.popleft()
                    seconds = deadlines.get(scene.input)
                    now = time.monotonic()
                    self.in_flight[self.actors[name].segment.remote(scene)] = _Flight(name, scene, now, None if seconds is None else now + seconds)
                if not self.in_flight and not self.starting and not self.parked:
                    self._give_up(queue, "no worker is left")
                    return
                if len(self.death_times) > self.breaker:
                    self._give_up(queue, f"workers died {len(self.death_times)} times within {DEATH_WINDOW_S:.0f} s (the breaker's limit is {self.breaker})")
                    return
                self.tick()
                self._enforce_deadlines()
                self._settle_lost_nodes()
                done, _ = self.ray.wait(list(self.in_flight) + list(self.starting), num_returns=1, timeout=WAIT_TICK_S)
                if not done:
                    if not self.ever_ready and time.monotonic() - started > self.options.start_timeout_s:
                        raise ClusterError(self._no_worker_started())
                    continue
                ref = done[0]
                if ref in self.starting:
                    self._worker_started(ref)
                else:
                    self._scene_finished(ref)
        finally:
            self._stop()

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for flight in list(self.in_flight.values()) + [parked for parked, _ in self.parked.values()]:
            if flight.deadline is not None and now > flight.deadline and not flight.timed_out:
                flight.timed_out = True
                self.ray.kill(self.actors[flight.worker], no_restart=False)  # Ray restarts it; the scene's result becomes an error

    def _worker_started(self, ref) -> None:
        name = self.starting.pop(ref)
        try:
            info = self.ray.get(ref)
        except self.errors.actor_died as exc:
            if _died_in_constructor(exc):  # e.g. the bundle cannot be fetched on that node: Ray does not restart it
                self.start_errors[name] = _creation_error(exc)
                self.console.print(f"[red]{name} could not start:[/red] {self.start_errors[name]}", highlight=False)
                self._settle_parked(name, died=True, cause=_cause_of_death(exc))
                return
            self._count_death(name, killed_by_driver=self._settle_parked(name, died=True, cause=_cause_of_death(exc), exc=exc))
            return
        except self.errors.unavailable:  # still restarting: ask again
            time.sleep(WAIT_TICK_S)
            self.starting[self.actors[name].ready.remote()] = name
            return
        except self.errors.ray_error as exc:
            self._count_death(name, killed_by_driver=self._settle_parked(name, died=True, cause=_first_line(exc)))
            return
        previous = self.info_of.get(name)
        restarted = previous is not None and (previous.pid, previous.node_id) != (info.pid, info.node_id)
        if name in self.parked and restarted:  # it was unreachable because it had died: Ray restarted it
            killed = self._settle_parked(name, died=True, cause=f"{self.parked[name][1]}; Ray restarted it (pid {previous.pid} -> {info.pid})", previous=previous)
            self._count_death(name, ask_ready=False, killed_by_driver=killed)
        else:
            self._settle_parked(name, died=False, cause="")
        self.info_of[name] = info
        self.ever_ready = True
        self.idle.append(name)

    def _scene_finished(self, ref) -> None:
        flight = self.in_flight.pop(ref)
        name, scene = flight.worker, flight.scene
        try:
            result = self.ray.get(ref)
        except self.errors.task_error as exc:  # raised past SceneWorker.segment's own handling: still this scene's failure
            result = _failed(scene, name, f"{scene.input}: {_first_line(exc)}")
            self.idle.append(name)
        except self.errors.unavailable as exc:
            # Not a death (yet): the worker may still be writing, so nothing is removed. Its next ready()
            # says whether the same process is there (the scene is queued again) or a restarted one (a death).
            self.parked[name] = (flight, _first_line(exc))
            self.starting[self.actors[name].ready.remote()] = name
            return
        except self.errors.ray_error as exc:  # the worker process is dead (killed, out of memory, node lost)
            self.parked[name] = (flight, _cause_of_death(exc))
            self._count_death(name, killed_by_driver=self._settle_parked(name, died=True, cause=_cause_of_death(exc), exc=exc))
            return
        else:
            self.idle.append(name)
        self._record(dataclasses.replace(result, deaths=self.deaths.pop(scene.input, [])))

    def _settle_parked(self, name: str, died: bool, cause: str, exc: BaseException | None = None, previous=None) -> bool:
        """The scene of a worker that was unreachable or died: queued again, or recorded as failed.

        True when the driver itself ended that worker (its scene timed out): not a death for the breaker.
        """
        if name not in self.parked:
            return False
        flight, _ = self.parked.pop(name)
        scene = flight.scene
        previous = previous or self.info_of.get(name)
        node_id = previous.node_id if previous else None
        if not died:  # the same process answered: its segment() has ended; the scene runs again (outputs are idempotent)
            self.deaths.setdefault(scene.input, []).append(f"{name} on node {node_id}: unreachable for a while, not dead")
            self.queue.appendleft(dataclasses.replace(scene, attempt=scene.attempt + 1))
            return False
        self._sweep(scene)  # the writer is confirmed dead: its temporaries can go
        if flight.timed_out:
            seconds = time.monotonic() - flight.started
            self._record(_failed(scene, name, f"{scene.input}: timed out after {seconds:.0f} s (--scene-timeout); its worker was ended and restarted", node_id))
            return True
        lost = bool(getattr(exc, "preempted", False)) or not self._node_alive(node_id)
        self.deaths.setdefault(scene.input, []).append(f"{name} on node {node_id}: {'node lost: ' if lost else ''}{cause}")
        charged = scene.charged if lost else scene.charged + 1
        if charged <= self.options.retries + 1:
            self.queue.appendleft(dataclasses.replace(scene, attempt=scene.attempt + 1, charged=charged))
            return False
        result = _failed(scene, name, f"{scene.input}: the worker died on each of {scene.charged} attempts ({cause})", node_id)
        self._record(dataclasses.replace(result, deaths=self.deaths.pop(scene.input, [])))
        return False

    def _settle_lost_nodes(self) -> None:
        """An unreachable worker whose node is gone is dead: do not wait for Ray to place its restart."""
        for name in list(self.parked):
            info = self.info_of.get(name)
            if info is not None and not self._node_alive(info.node_id):
                killed = self._settle_parked(name, died=True, cause="its node left the cluster")
                self._count_death(name, ask_ready=False, killed_by_driver=killed)

    def _node_alive(self, node_id: str | None) -> bool:
        if node_id is None:
            return True
        return any(n["NodeID"] == node_id and n["Alive"] for n in self.ray.nodes())

    def _sweep(self, scene: Scene) -> None:
        """After a confirmed death: the dead writer's temporaries beside local outputs (object-store outputs leave none)."""
        if scene.output_dir.is_local:
            for name in output_names(scene.input, self.outputs):
                remove_temporaries_of(scene.output_dir.join(name).local_path)

    def _record(self, result: SceneResult) -> None:
        if self.first_dispatch is not None:
            self.summary.processing_seconds = time.perf_counter() - self.first_dispatch
        self.on_result(result)

    def _count_death(self, name: str, ask_ready: bool = True, killed_by_driver: bool = False) -> None:
        """A worker died: Ray restarts it; it rejoins once ready again. Deaths feed the breaker, except those
        the driver caused by ending a timed-out scene (slow scenes are not a failing cluster)."""
        if not killed_by_driver:
            self.summary.worker_deaths += 1
            now = time.monotonic()
            self.death_times.append(now)
            while self.death_times and now - self.death_times[0] > DEATH_WINDOW_S:
                self.death_times.popleft()
        if ask_ready:
            self.starting[self.actors[name].ready.remote()] = name

    def _give_up(self, queue: deque, reason: str) -> None:
        if not self.ever_ready and self.start_errors:
            details = "; ".join(f"{name}: {error}" for name, error in self.start_errors.items())
            raise ClusterError(f"no worker could start: {details}")
        self.console.print(f"[red]{reason}: the remaining scenes are recorded as failed[/red]", highlight=False)
        for flight in list(self.in_flight.values()) + [flight for flight, _ in self.parked.values()]:  # their workers are ended by _stop
            info = self.info_of.get(flight.worker)
            result = _failed(flight.scene, flight.worker, f"{flight.scene.input}: stopped unfinished: {reason}", info.node_id if info else None)
            self._record(dataclasses.replace(result, deaths=self.deaths.pop(flight.scene.input, [])))
        while queue:
            scene = queue.popleft()
            result = _failed(scene, None, f"{scene.input}: not segmented: {reason}")
            self._record(dataclasses.replace(result, deaths=self.deaths.pop(scene.input, [])))

    def _no_worker_started(self) -> str:
        asked = ", ".join(f"{k.removeprefix('num_')}={format_bytes(v) if k == 'memory' else v}" for k, v in self.resources.items())
        have = {k: v for k, v in self.ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
        return (
            f"no worker started within {self.options.start_timeout_s:.0f} s: each asks for {asked}, the cluster has {have}; "
            "lower --cpus-per-worker/--gpus-per-worker/--memory-per-worker or add nodes"
        )

    def _warn_if_short_of_resources(self) -> None:
        total = self.ray.cluster_resources()
        for key, ray_key in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            need = self.resources[key]
            if need and total.get(ray_key, 0) < need * self.options.workers:
                fit = int(total.get(ray_key, 0) // need)
                if ray_key == "GPU" and fit == 0:
                    raise ClusterError(f"--gpus-per-worker {need:g}: the cluster has no GPU; run GPU workers on GPU nodes, or use --provider cpu")
                self.console.print(
                    f"[yellow]the cluster has {total.get(ray_key, 0):g} {ray_key}s: {fit} of {self.options.workers} workers "
                    f"fit now ({need:g} {ray_key} each); the others wait for resources[/yellow]",
                    highlight=False,
                )

    def _stop(self) -> None:
        """End every worker: each removes its scratch folder first; scenes still in flight leave no temporary file."""
        idle = [self.actors[name] for name in self.idle]
        if idle:
            self.ray.wait([actor.shutdown.remote() for actor in idle], num_returns=len(idle), timeout=10)
        for actor in self.actors.values():
            self.ray.kill(actor, no_restart=True)
        if self.in_flight:
            self.ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=10)
            for flight in self.in_flight.values():
                self._sweep(flight.scene)


@dataclass(frozen=True)
class _RayErrors:
    actor_died: type
    unavailable: type
    task_error: type
    ray_error: type


def _ray_errors(ray) -> _RayErrors:
    exceptions = ray.exceptions
    return _RayErrors(exceptions.ActorDiedError, exceptions.ActorUnavailableError, exceptions.RayTaskError, exceptions.RayError)


def _died_in_constructor(exc: BaseException) -> bool:
    return bool(getattr(exc, "_actor_init_failed", False)) or "creation task" in str(exc)


def _creation_error(exc: BaseException) -> str:
    """The worker constructor's own error out of Ray's wrapping: its last line, without the class of a GlsnetError."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    match = re.match(r"runtime\.errors\.\w+: (.*)", lines[-1])
    return match.group(1) if match else lines[-1]


def _cause_of_death(exc: BaseException) -> str:
    """Ray's own words for why the actor died (the lines after its field list), in one line."""
    lines = [line.strip() for line in str(exc).splitlines()]
    said = [line for line in lines[1:] if line and not re.match(r"^(class_name|actor_id|pid|name|namespace|ip):", line)]
    return " ".join(said) or _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _failed(scene: Scene, worker: str | None, error: str, node_id: str | None = None) -> SceneResult:
    return SceneResult(str(scene.input), [], FAILED, error=error, worker=worker, node_id=node_id, attempts=scene.attempt)


class _ProgressBar:
    """The live bar: scenes done of those to do, scenes per minute, failures; a no-op when disabled."""

    def __init__(self, console, total: int, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("scenes"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} scenes/min"),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self.task = self.bar.add_task("scenes", total=total, rate=0.0, failed=0)

    def __enter__(self) -> Callable[[BatchSummary], None]:
        self.bar.__enter__()
        return self.update

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def update(self, summary: BatchSummary) -> None:
        self.bar.update(self.task, completed=summary.processed, rate=summary.scenes_per_minute, failed=len(summary.failed))
