"""``glsnet batch``: many scenes on a Ray cluster, one Segmenter per worker actor, resumable.

The driver expands the inputs, checks the bundle and options once, skips the scenes already done
(runtime.batch.resume), then hands scenes one at a time to idle workers, so a slow scene never
holds others back. Outputs go through Segmenter.segment_file (atomic). A scene that fails for its
own reason comes back as a failed result; a worker that dies takes no result with it: its
temporary files are removed and the scene goes back to the front of the queue for the next idle
worker (at most ``retries`` times), while Ray restarts the dead worker. Each result is appended to
``OUT/batch-report.jsonl`` as it arrives.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from runtime.atomic_file import remove_temporaries_of
from runtime.batch.cluster import ray_session
from runtime.batch.inputs import expand_inputs
from runtime.batch.report import FAILED, REPORT_NAME, SKIPPED, BatchSummary, ReportWriter, SceneResult, print_summary
from runtime.batch.resume import batch_provenance, is_done
from runtime.batch.worker import Scene, SceneWorker
from runtime.byte_sizes import format_bytes
from runtime.errors import ClusterError, InputError
from runtime.image_io.writers import OutputOptions, OutputPaths
from runtime.options import SegmenterOptions
from runtime.segmenter import Segmenter

MAX_WORKER_RESTARTS = 8  # per worker: Ray restarts a dead worker this many times, then the batch goes on without it
WAIT_TICK_S = 0.5  # how often the progress bar is refreshed while waiting for results


@dataclass(frozen=True)
class BatchOptions:
    """A whole batch: what to segment, with which bundle and options, on which workers."""

    inputs: tuple[str, ...]
    bundle: Path
    output: Path
    segmenter: SegmenterOptions = field(default_factory=SegmenterOptions)
    outputs: OutputOptions = field(default_factory=OutputOptions)
    address: str | None = None  # None: a local Ray instance for this run
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    memory_per_worker: int | None = None  # bytes of Ray memory reserved per worker (default: max_memory)
    retries: int = 2
    start_timeout_s: float = 300.0  # no worker ready by then: the cluster cannot run the workers asked for
    local_cpus: int | None = None  # CPUs of the local Ray instance (default: all)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError(f"--workers {self.workers}: at least one worker is needed")
        if self.cpus_per_worker <= 0:
            raise InputError(f"--cpus-per-worker {self.cpus_per_worker}: must be > 0")
        if self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker {self.gpus_per_worker}: must be >= 0")
        if self.retries < 0:
            raise InputError(f"--retries {self.retries}: must be >= 0")

    def worker_segmenter(self) -> SegmenterOptions:
        """The workers' Segmenter options: ONNX Runtime threads default to the CPUs each worker reserved."""
        if self.segmenter.threads is not None:
            return self.segmenter
        return dataclasses.replace(self.segmenter, threads=max(1, round(self.cpus_per_worker)))

    def worker_outputs(self) -> OutputOptions:
        """Batch always writes the stats JSON: it records the bundle and options that resume compares."""
        return dataclasses.replace(self.outputs, stats=True)

    def ray_resources(self) -> dict[str, Any]:
        memory = self.memory_per_worker or self.segmenter.max_memory
        resources: dict[str, Any] = {"num_cpus": self.cpus_per_worker, "num_gpus": self.gpus_per_worker}
        if memory:
            resources["memory"] = memory
        return resources


def run_batch(options: BatchOptions, console=None, show_progress: bool = True) -> BatchSummary:
    """Segment every scene of ``options.inputs`` not already done; print a summary; return it."""
    from rich.console import Console

    console = console or Console(stderr=True)
    out = options.output
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose an output folder with -o")
    scenes = expand_inputs(options.inputs, exclude=out)
    outputs = options.worker_outputs()
    Segmenter(options.bundle, options=options.segmenter)  # bundle, checksums, precision and bands checked here, once
    provenance = batch_provenance(options.bundle.resolve(), options.segmenter, outputs)
    paths = {scene: outputs.paths_for(scene, out) for scene in scenes}
    done = {scene for scene in scenes if is_done(paths[scene], provenance)}
    todo = [scene for scene in scenes if scene not in done]
    summary = BatchSummary()
    report_path = out / REPORT_NAME
    start = time.perf_counter()
    with ReportWriter(report_path) as report:

        def record(result: SceneResult) -> None:
            summary.add(result)
            report.write(result)

        for scene in scenes:
            if scene in done:
                record(SceneResult(str(scene), [str(p) for p in paths[scene].written()], SKIPPED, attempts=0))
        if not todo:
            console.print(
                f"nothing to do: all {len(scenes)} scenes are already done in {out} with this bundle and these options "
                f"(report: {report_path})",
                highlight=False,
            )
            return summary
        skipped = len(scenes) - len(todo)
        if skipped:
            console.print(f"{skipped} of {len(scenes)} scenes already done with this bundle and options: skipped", highlight=False)
        with ray_session(options.address, options.local_cpus) as ray, _ProgressBar(console, len(todo), show_progress) as progress:

            def on_result(result: SceneResult) -> None:
                record(result)
                progress(summary)

            _Dispatcher(ray, options, outputs, provenance, paths, on_result, summary, console).run([Scene(s, out) for s in todo])
    summary.wall_seconds = time.perf_counter() - start
    print_summary(summary, report_path, console)
    return summary


class _Dispatcher:
    """Workers, the queue of scenes and the results in flight; one scene per idle worker at a time."""

    def __init__(self, ray, options: BatchOptions, outputs: OutputOptions, provenance: dict, paths: dict[Path, OutputPaths], on_result: Callable[[SceneResult], None], summary: BatchSummary, console) -> None:
        self.ray, self.options, self.paths, self.on_result, self.summary, self.console = ray, options, paths, on_result, summary, console
        self.errors = _ray_errors(ray)
        worker_class = ray.remote(SceneWorker).options(max_restarts=MAX_WORKER_RESTARTS, max_task_retries=0, **options.ray_resources())
        self.actors = {
            f"worker-{i}": worker_class.remote(f"worker-{i}", str(options.bundle.resolve()), options.worker_segmenter(), outputs, provenance)
            for i in range(1, options.workers + 1)
        }
        self.starting = {actor.ready.remote(): name for name, actor in self.actors.items()}
        self.idle: deque[str] = deque()
        self.in_flight: dict[Any, tuple[str, Scene]] = {}
        self.deaths: Counter = Counter()
        self.start_errors: dict[str, str] = {}
        self.ever_ready = False
        self.first_dispatch: float | None = None
        self._warn_if_short_of_resources()

    def run(self, scenes: list[Scene]) -> None:
        queue = deque(scenes)
        started = time.monotonic()
        try:
            while queue or self.in_flight:
                while self.idle and queue:
                    if self.first_dispatch is None:
                        self.first_dispatch = time.perf_counter()
                    name, scene = self.idle.popleft(), queue.popleft()
                    self.in_flight[self.actors[name].segment.remote(scene)] = (name, scene)
                if not self.in_flight and not self.starting:
                    self._give_up(queue)
                    return
                done, _ = self.ray.wait(list(self.in_flight) + list(self.starting), num_returns=1, timeout=WAIT_TICK_S)
                if not done:
                    if not self.ever_ready and time.monotonic() - started > self.options.start_timeout_s:
                        raise ClusterError(self._no_worker_started())
                    continue
                ref = done[0]
                if ref in self.starting:
                    self._worker_started(ref)
                else:
                    self._scene_finished(ref, queue)
        finally:
            self._stop()

    def _worker_started(self, ref) -> None:
        name = self.starting.pop(ref)
        try:
            self.ray.get(ref)
        except self.errors.actor_died as exc:
            if _died_in_constructor(exc):  # e.g. the bundle is not at this path on that node: Ray does not restart it
                self.start_errors[name] = _creation_error(exc)
                self.console.print(f"[red]{name} could not start:[/red] {self.start_errors[name]}", highlight=False)
                return
            self._count_death(name)
            return
        except self.errors.unavailable:  # still restarting: ask again
            time.sleep(WAIT_TICK_S)
            self.starting[self.actors[name].ready.remote()] = name
            return
        except self.errors.ray_error:
            self._count_death(name)
            return
        self.ever_ready = True
        self.idle.append(name)

    def _scene_finished(self, ref, queue: deque) -> None:
        name, scene = self.in_flight.pop(ref)
        try:
            result = self.ray.get(ref)
        except self.errors.task_error as exc:  # raised past SceneWorker.segment's own handling: still this scene's failure
            result = _failed(scene, name, f"{scene.input}: {_first_line(exc)}")
            self.idle.append(name)
        except self.errors.ray_error as exc:  # the worker process died (killed, out of memory, node lost)
            for path in self.paths[scene.input].written():
                remove_temporaries_of(path)
            self._count_death(name)
            if scene.attempt <= self.options.retries:
                queue.appendleft(dataclasses.replace(scene, attempt=scene.attempt + 1))
                return
            result = _failed(scene, name, f"{scene.input}: the worker died on each of {scene.attempt} attempts ({_first_line(exc)})")
        else:
            self.idle.append(name)
        self._record(result)

    def _record(self, result: SceneResult) -> None:
        if self.first_dispatch is not None:
            self.summary.processing_seconds = time.perf_counter() - self.first_dispatch
        self.on_result(result)

    def _count_death(self, name: str) -> None:
        """A worker died: Ray restarts it (up to MAX_WORKER_RESTARTS); it rejoins once ready again."""
        self.summary.worker_deaths += 1
        self.deaths[name] += 1
        if self.deaths[name] > MAX_WORKER_RESTARTS:
            self.console.print(f"[red]{name} died {self.deaths[name]} times: the batch goes on without it[/red]", highlight=False)
            return
        self.starting[self.actors[name].ready.remote()] = name

    def _give_up(self, queue: deque) -> None:
        if not self.ever_ready and self.start_errors:
            details = "; ".join(f"{name}: {error}" for name, error in self.start_errors.items())
            raise ClusterError(f"no worker could start: {details}")
        reason = "no worker is left (each died more than the restarts allowed)"
        while queue:
            scene = queue.popleft()
            self._record(_failed(scene, None, f"{scene.input}: not segmented: {reason}"))

    def _no_worker_started(self) -> str:
        asked = ", ".join(f"{k.removeprefix('num_')}={format_bytes(v) if k == 'memory' else v}" for k, v in self.options.ray_resources().items())
        have = {k: v for k, v in self.ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
        return (
            f"no worker started within {self.options.start_timeout_s:.0f} s: each asks for {asked}, the cluster has {have}; "
            "lower --cpus-per-worker/--gpus-per-worker/--memory-per-worker or add nodes"
        )

    def _warn_if_short_of_resources(self) -> None:
        total = self.ray.cluster_resources()
        for key, ray_key in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            need = self.options.ray_resources()[key]
            if need and total.get(ray_key, 0) < need * self.options.workers:
                fit = int(total.get(ray_key, 0) // need)
                self.console.print(
                    f"[yellow]the cluster has {total.get(ray_key, 0):g} {ray_key}s: {fit} of {self.options.workers} workers "
                    f"fit now ({need:g} {ray_key} each); the others wait for resources[/yellow]",
                    highlight=False,
                )

    def _stop(self) -> None:
        """End every worker; scenes still in flight (an interrupted run) leave no temporary file."""
        for actor in self.actors.values():
            self.ray.kill(actor, no_restart=True)
        if self.in_flight:
            self.ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=10)
            for _, scene in self.in_flight.values():
                for path in self.paths[scene.input].written():
                    remove_temporaries_of(path)


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _failed(scene: Scene, worker: str | None, error: str) -> SceneResult:
    return SceneResult(str(scene.input), [], FAILED, error=error, worker=worker, attempts=scene.attempt)


class _ProgressBar:
    """The live bar: scenes done of those to do, scenes per minute, failures; a no-op when disabled."""

    def __init__(self, console, total: int, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
