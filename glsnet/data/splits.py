"""Split files: which scenes of a folder train, validate and test, by name (a small JSON file).

``{"train": [...], "val": [...], "test": [...], "note": "..."}``; a list may be empty, a name may be in
one list only. ``draw_split`` draws one from a folder listing with a seeded permutation, as the
paper's random DeepGlobe split (455 / 207 / 142) is redrawn: its lists are not known for sure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.atomic_file import write_text_atomic
from runtime.errors import InputError

SPLIT_NAMES = ("train", "val", "test")
DEEPGLOBE_PAPER_COUNTS = (455, 207, 142)  # GLNet's DeepGlobe split, which GLSNet reports on


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    note: str = ""

    def names(self, which: str) -> tuple[str, ...]:
        if which not in SPLIT_NAMES:
            raise InputError(f"unknown split {which!r}; a split file has {list(SPLIT_NAMES)}")
        return getattr(self, which)

    def indices(self, which: str, available: tuple[str, ...], source: str | Path) -> list[int]:
        """Positions in ``available`` of the ``which`` scenes; InputError naming ``source`` for a missing one."""
        wanted = self.names(which)
        missing = sorted(set(wanted) - set(available))
        if missing:
            raise InputError(
                f"{source}: {len(missing)} {which} scene(s) of the split file are not in the data, e.g. {missing[:5]}; "
                f"the data has {len(available)} scene(s), e.g. {list(available)[:5]}"
            )
        chosen = set(wanted)
        return [i for i, name in enumerate(available) if name in chosen]

    def to_json(self) -> str:
        return json.dumps({"note": self.note, **{k: list(getattr(self, k)) for k in SPLIT_NAMES}}, indent=2) + "\n"


def read_split_file(path: str | Path) -> Split:
    """The split file at ``path``; InputError naming it for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: split file not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a JSON split file ({exc})") from exc
    if not isinstance(data, dict) or not set(SPLIT_NAMES) & set(data):
        raise InputError(f"{path}: expected a JSON object with lists 'train', 'val' and/or 'test'")
    unknown = sorted(set(data) - set(SPLIT_NAMES) - {"note"})
    if unknown:
        raise InputError(f"{path}: unknown key(s) {unknown}; a split file has {list(SPLIT_NAMES)} and 'note'")
    lists = {}
    for key in SPLIT_NAMES:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(n, str) and n for n in value):
            raise InputError(f"{path}: '{key}' must be a list of scene names")
        if len(set(value)) != len(value):
            raise InputError(f"{path}: '{key}' names a scene twice")
        lists[key] = tuple(value)
    for i, first in enumerate(SPLIT_NAMES):
        for second in SPLIT_NAMES[i + 1 :]:
            both = sorted(set(lists[first]) & set(lists[second]))
            if both:
                raise InputError(f"{path}: scene(s) {both[:5]} are in both '{first}' and '{second}'")
    return Split(**lists, note=str(data.get("note", "")))


def write_split_file(path: str | Path, split: Split) -> None:
    write_text_atomic(path, split.to_json())


def scaled_counts(counts: tuple[int, int, int], total: int) -> tuple[int, int, int]:
    """``counts`` scaled to ``total`` scenes, rounded by largest remainder (ties: the later list), summing to ``total``."""
    exact = [c * total / sum(counts) for c in counts]
    floors = [int(e) for e in exact]
    order = sorted(range(3), key=lambda i: (exact[i] - floors[i], i), reverse=True)
    for i in order[: total - sum(floors)]:
        floors[i] += 1
    return tuple(floors)


def draw_split(names: tuple[str, ...], counts: tuple[int, int, int], seed: int, note: str = "") -> Split:
    """Sort ``names``, permute them with numpy's default_rng(seed), and cut train / val / test by ``counts``."""
    if len(counts) != 3 or min(counts) < 0:
        raise InputError(f"--counts {list(counts)}: give three counts >= 0, train,val,test")
    if sum(counts) != len(names):
        raise InputError(
            f"--counts {','.join(map(str, counts))} add up to {sum(counts)} but the folder has {len(names)} scene(s); "
            f"give counts that add up to {len(names)}, or --scale to scale them to the folder"
        )
    ordered = sorted(names)
    order = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[int(i)] for i in order]
    train_end, val_end = counts[0], counts[0] + counts[1]
    return Split(
        train=tuple(sorted(shuffled[:train_end])), val=tuple(sorted(shuffled[train_end:val_end])),
        test=tuple(sorted(shuffled[val_end:])), note=note,
    )
