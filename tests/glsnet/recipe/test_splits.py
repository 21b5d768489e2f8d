"""Split files: read, drawn seeded, trained on and scored exactly; the ISPRS Vaihingen 16/17 file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glsnet.checkpoint import save_checkpoint
from glsnet.data.splits import (
    Split,
    draw_split,
    read_split_file,
    scaled_counts,
    write_split_file,
)
from glsnet.data.synthetic import write_synthetic_folder
from glsnet.evaluation import EvalOptions, evaluate
from glsnet.model import build_glsnet
from glsnet.training import split_scenes, train
from runtime.errors import InputError
from tests.glsnet.test_training import TINY, tiny_options

REPO = Path(__file__).resolve().parents[3]
NAMES = tuple(f"s{i:02d}" for i in range(10))


def test_a_split_file_round_trips(tmp_path: Path):
    split = Split(train=("a", "b"), val=("c",), test=("d",), note="by hand")
    write_split_file(tmp_path / "s.json", split)
    assert read_split_file(tmp_path / "s.json") == split


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a JSON split file"),
        ('{"train": ["a"], "test": ["a"]}', r"\['a'\] are in both 'train' and 'test'"),
        ('{"train": ["a"], "tset": ["b"]}', r"unknown key\(s\) \['tset'\]"),
        ('{"train": "a"}', "'train' must be a list of scene names"),
        ('{"train": ["a", "a"]}', "'train' names a scene twice"),
    ],
)
def test_a_bad_split_file_is_refused_naming_it(tmp_path: Path, content: str, message: str):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=rf"bad\.json: .*{message}"):
        read_split_file(path)
    with pytest.raises(InputError, match="missing.json: split file not found"):
        read_split_file(tmp_path / "missing.json")


def test_draw_is_seeded_disjoint_and_counted():
    first = draw_split(NAMES[::-1], (6, 2, 2), seed=3)
    assert first == draw_split(NAMES, (6, 2, 2), seed=3)  # the listing's order does not matter, only the names
    assert first != draw_split(NAMES, (6, 2, 2), seed=4)
    assert (len(first.train), len(first.val), len(first.test)) == (6, 2, 2)
    assert sorted(first.train + first.val + first.test) == list(NAMES)
    with pytest.raises(InputError, match="add up to 9 but the folder has 10 scene"):
        draw_split(NAMES, (5, 2, 2), seed=0)


def test_scaled_counts_keep_the_papers_proportions():
    assert scaled_counts((455, 207, 142), 804) == (455, 207, 142)
    assert scaled_counts((455, 207, 142), 803) == (454, 207, 142)  # DeepGlobe's 803 labelled images
    assert scaled_counts((455, 207, 142), 10) == (6, 2, 2)


def test_the_isprs_vaihingen_split_file_lists_16_and_17_tiles():
    split = read_split_file(REPO / "docs" / "splits" / "vaihingen-isprs-16-17.json")
    assert (len(split.train), len(split.val), len(split.test)) == (16, 0, 17)
    tiles = sorted(int(n.removeprefix("top_mosaic_09cm_area")) for n in split.train + split.test)
    assert tiles == sorted(set(range(1, 39)) - {9, 18, 19, 25, 36})


def test_training_uses_the_split_files_train_and_val_lists(tmp_path: Path):
    names = ("synthetic-s0-000", "synthetic-s0-001", "synthetic-s0-002")
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"train": [names[2], names[0]], "val": [names[1]], "test": []}))
    options = tiny_options(tmp_path / "m.safetensors", steps=1, split_file=path, val_crop=96)
    assert split_scenes(names, options) == ([0, 2], [1])
    result = train(options)
    assert result.train_names == (names[0], names[2]) and result.val_names == (names[1],)
    path.write_text(json.dumps({"train": ["elsewhere"]}))
    with pytest.raises(InputError, match=r"s\.json: 1 train scene\(s\) of the split file are not in the data"):
        split_scenes(names, options)


def test_evaluate_split_test_scores_exactly_the_test_scenes(tmp_path: Path, monkeypatch, capsys):
    from tests.glsnet.test_train_cli import run_cli

    data = tmp_path / "data"
    write_synthetic_folder(data, 5, 96, 96, seed=1)
    split_path = tmp_path / "split.json"
    code, out, err = run_cli(monkeypatch, capsys, "split", data, "-o", split_path, "--counts", "2,1,2", "--seed", "7")
    assert code == 0, err
    split = read_split_file(split_path)
    assert "default_rng(7)" in split.note and len(split.test) == 2
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", build_glsnet(TINY))
    result = evaluate(checkpoint, data, EvalOptions(split="test", split_file=split_path, progress=False))
    assert result.scenes == split.test
    assert result.pixels == 2 * 96 * 96
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", checkpoint, data, "--split", "test", "--device", "cpu")
    assert code == 2 and "--split test needs --split-file" in err
