"""The batch dispatcher's fault handling against a scripted stand-in for Ray (no Ray started).

Each worker runs its scenes by a script: "hang" (never returns: only the driver's deadline ends it)
or "die" (the process dies mid-scene). A killed or dead worker is restarted with a new pid, as Ray does.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rich.console import Console

from runtime.batch import dispatcher as dispatcher_module
from runtime.batch.dispatcher import BatchOptions, _Dispatcher
from runtime.batch.report import FAILED, BatchSummary, SceneResult
from runtime.batch.storage import Location
from runtime.batch.worker import Scene, WorkerInfo
from runtime.image_io.writers import OutputOptions


class _RayError(Exception):
    pass


class _ActorDied(_RayError):
    pass


class _Unavailable(_RayError):
    pass


class _TaskError(_RayError):
    pass


class _Ref:
    """An object ref: done with a value or an error, or pending until its worker is killed."""

    def __init__(self, worker: _Actor, value: Any = None, error: BaseException | None = None, pending: bool = False) -> None:
        self.worker, self.value, self.error, self.pending = worker, value, error, pending


class _Actor:
    def __init__(self, ray: FakeRay, name: str) -> None:
        self.ray, self.name, self.pid = ray, name, 100
        self.ready = SimpleNamespace(remote=lambda: _Ref(self, WorkerInfo(name, "host", "node-1", self.pid)))
        self.shutdown = SimpleNamespace(remote=lambda: _Ref(self))
        self.segment = SimpleNamespace(remote=self._segment)

    def _segment(self, scene: Scene) -> _Ref:
        self.ray.dispatched.append(scene)
        if self.ray.behaviour == "die":
            self.pid += 1  # Ray restarts the dead process
            return _Ref(self, error=_ActorDied("The actor died unexpectedly before finishing this task.\nthe OOM killer ended it"))
        return self.ray.hang(self)


class FakeRay:
    """The parts of the ray module the dispatcher uses; every worker follows ``behaviour``."""

    exceptions = SimpleNamespace(ActorDiedError=_ActorDied, ActorUnavailableError=_Unavailable, RayTaskError=_TaskError, RayError=_RayError)

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.dispatched: list[Scene] = []
        self.pending: list[_Ref] = []

    def hang(self, actor: _Actor) -> _Ref:
        ref = _Ref(actor, pending=True)
        self.pending.append(ref)
        return ref

    def remote(self, cls: type) -> Any:
        ray = self
        return SimpleNamespace(options=lambda **_: SimpleNamespace(remote=lambda name, *args: _Actor(ray, name)))

    def wait(self, refs: list[_Ref], num_returns: int = 1, timeout: float | None = None) -> tuple[list[_Ref], list[_Ref]]:
        done = [ref for ref in refs if not ref.pending]
        return done[:num_returns], [ref for ref in refs if ref not in done[:num_returns]]

    def get(self, ref: _Ref) -> Any:
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, actor: _Actor, no_restart: bool = True) -> None:
        """The scene on the killed worker fails with its death; Ray restarts the process unless told not to."""
        if not no_restart:
            actor.pid += 1
        for ref in self.pending:
            if ref.worker is actor and ref.pending:
                ref.pending, ref.error = False, _ActorDied("The actor died because it was killed by ray.kill.")

    def nodes(self) -> list[dict]:
        return [{"NodeID": "node-1", "Alive": True}]

    def cluster_resources(self) -> dict:
        return {"CPU": 64.0}


def _run(tmp_path: Path, behaviour: str, count: int, workers: int = 1, retries: int = 2, deadline: float | None = None):
    ray = FakeRay(behaviour)
    results: list[SceneResult] = []
    summary = BatchSummary()
    options = BatchOptions(inputs=(), bundle=tmp_path, output=tmp_path, workers=workers, retries=retries)
    dispatcher = _Dispatcher(ray, options, options.ray_resources(), None, OutputOptions(), {}, results.append, summary, Console(quiet=True))
    out = Location(str(tmp_path / "out"))
    scenes = [Scene(Location(str(tmp_path / f"scene-{i}.tif")), out) for i in range(count)]
    dispatcher.run(scenes, {scene.input: deadline for scene in scenes})
    return results, summary, ray


def test_timed_out_scenes_are_failures_not_worker_deaths_and_never_trip_the_breaker(tmp_path):
    count = dispatcher_module.DEATH_BREAKER + 3  # more timeouts than the breaker allows deaths
    results, summary, ray = _run(tmp_path, "hang", count, deadline=-1.0)  # every scene is past its deadline at once
    assert len(results) == count
    assert all(r.status == FAILED and "timed out" in r.error for r in results), [r.error for r in results]
    assert summary.worker_deaths == 0
    assert len(ray.dispatched) == count  # every scene ran: the batch went on


def test_a_scene_whose_worker_dies_on_every_try_names_the_tries(tmp_path):
    results, summary, _ = _run(tmp_path, "die", 1, retries=2)
    (result,) = results
    assert result.status == FAILED and result.attempts == 3
    assert "died on each of 3 attempts" in result.error, result.error
    assert len(result.deaths) == 3
    assert summary.worker_deaths == 3


def test_when_the_breaker_trips_scenes_in_flight_are_recorded_as_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(dispatcher_module, "DEATH_BREAKER", 2)
    workers = 3  # breaker: max(2, 2 x 3) = 6 deaths
    ray = FakeRay("die")
    results: list[SceneResult] = []
    summary = BatchSummary()
    options = BatchOptions(inputs=(), bundle=tmp_path, output=tmp_path, workers=workers, retries=100)
    dispatcher = _Dispatcher(ray, options, options.ray_resources(), None, OutputOptions(), {}, results.append, summary, Console(quiet=True))
    out = Location(str(tmp_path / "out"))
    scenes = [Scene(Location(str(tmp_path / f"scene-{i}.tif")), out) for i in range(5)]
    def segment_of(actor: _Actor):
        def segment(scene: Scene) -> _Ref:  # worker-1 hangs on its scene; the others die on every one
            ray.dispatched.append(scene)
            if actor.name == "worker-1":
                return ray.hang(actor)
            actor.pid += 1
            return _Ref(actor, error=_ActorDied("died\nthe OOM killer ended it"))

        return segment

    for actor in dispatcher.actors.values():
        actor.segment = SimpleNamespace(remote=segment_of(actor))
    dispatcher.run(scenes, {scene.input: None for scene in scenes})
    assert sorted(r.input for r in results) == sorted(str(s.input) for s in scenes)  # every scene reported once
    assert all(r.status == FAILED and "workers died" in r.error for r in results), [r.error for r in results]
    assert [r.worker for r in results if "stopped unfinished" in r.error] == ["worker-1"]  # the scene it was on when the batch stopped
