"""The scenes of a batch: image files, folders, globs and .txt/.csv lists of paths, as one checked list.

Everything is resolved and checked on the driver before any worker starts, so a typo fails at once
with the path it names, and two scenes that would write the same output names are refused.
"""

from __future__ import annotations

import csv
import glob
from pathlib import Path

from runtime.errors import InputError
from runtime.image_io.readers import PILLOW_SUFFIXES, TIFF_SUFFIXES

IMAGE_SUFFIXES = PILLOW_SUFFIXES + TIFF_SUFFIXES
LIST_SUFFIXES = (".txt", ".csv")
CSV_PATH_COLUMNS = ("path", "input", "image", "file")  # a header naming one of these picks the column
GLOB_CHARACTERS = set("*?[")


def expand_inputs(inputs: list[str] | tuple[str, ...], exclude: Path | None = None) -> list[Path]:
    """Image paths of ``inputs``, in the given order, each once.

    A folder contributes its images (not its subfolders; use a glob such as 'dir/**/*.tif' for
    those), a glob its matching images, a .txt list one path per line (blank lines and # comments
    skipped), a .csv list the column named path/input/image/file or else the first one. Relative
    paths in a list are relative to the list's folder. Files under ``exclude`` (the output folder)
    are left out of folders and globs, so a re-run never segments its own masks.
    """
    scenes: list[Path] = []
    for item in inputs:
        scenes.extend(_expand(item, exclude))
    unique = list(dict.fromkeys(path.resolve() for path in scenes))
    if not unique:
        raise InputError(f"no images found in {', '.join(inputs) or 'the inputs'}; expected {', '.join(IMAGE_SUFFIXES)} files")
    _check_distinct_stems(unique)
    return unique


def _expand(item: str, exclude: Path | None) -> list[Path]:
    path = Path(item)
    if GLOB_CHARACTERS & set(item) and not path.exists():
        matches = [Path(p) for p in sorted(glob.glob(item, recursive=True))]
        images = [p for p in matches if _is_image(p) and not _inside(p, exclude)]
        if not images:
            raise InputError(f"{item}: the pattern matches no {'/'.join(IMAGE_SUFFIXES)} images")
        return images
    if path.is_dir():
        images = [p for p in sorted(path.iterdir()) if _is_image(p) and not _inside(p, exclude)]
        if not images:
            raise InputError(f"{path}: the folder holds no {'/'.join(IMAGE_SUFFIXES)} images")
        return images
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.suffix.lower() in LIST_SUFFIXES:
        return _read_list(path)
    if not _is_image(path):
        raise InputError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}) nor a .txt/.csv list of images")
    return [path]


def _read_list(path: Path) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read this list of images ({exc})") from exc
    if path.suffix.lower() == ".csv":
        entries = _csv_paths(path, text)
    else:
        entries = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]
    images = []
    for line, entry in entries:
        image = Path(entry).expanduser()
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise InputError(f"{path}:{line}: {entry}: no such image file")
        if not _is_image(image):
            raise InputError(f"{path}:{line}: {entry}: not an image ({', '.join(IMAGE_SUFFIXES)})")
        images.append(image)
    if not images:
        raise InputError(f"{path}: the list names no images")
    return images


def _csv_paths(path: Path, text: str) -> list[tuple[int, str]]:
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in CSV_PATH_COLUMNS if name in header), None)
    start = 1 if column is not None else 0
    column = column or 0
    entries = []
    for number, row in enumerate(rows[start:], start + 1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if column >= len(row) or not row[column].strip():
            raise InputError(f"{path}:{number}: no path in column {column + 1}")
        entries.append((number, row[column].strip()))
    return entries


def _check_distinct_stems(paths: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in paths:
        other = seen.setdefault(path.stem, path)
        if other != path:
            raise InputError(
                f"{other} and {path} would write the same outputs ({path.stem}_mask...); "
                "rename one, or run them as separate batches into different output folders"
            )


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    return path.resolve().is_relative_to(folder.resolve())
