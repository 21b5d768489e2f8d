"""The scenes of a batch: image files, folders, globs and .txt/.csv lists of paths or URIs, as one checked list.

Everything is expanded on the driver before any worker starts, so a typo fails at once with the
path it names, and two scenes that would write the same output names are refused. Local paths are
made absolute without following symlinks; object-store URIs (runtime.batch.storage) are listed
through fsspec.
"""

from __future__ import annotations

import csv
import glob
import os
import posixpath
from pathlib import Path

from runtime.batch.storage import Location, is_uri, parse_location
from runtime.errors import InputError
from runtime.image_io.readers import PILLOW_SUFFIXES, TIFF_SUFFIXES

IMAGE_SUFFIXES = PILLOW_SUFFIXES + TIFF_SUFFIXES
LIST_SUFFIXES = (".txt", ".csv")
CSV_PATH_COLUMNS = ("path", "input", "image", "file")  # a header naming one of these picks the column
GLOB_CHARACTERS = set("*?[")


def expand_inputs(inputs: list[str] | tuple[str, ...], exclude: Location | Path | None = None) -> list[Location]:
    """The images of ``inputs`` (paths or URIs), in the given order, each once.

    A folder contributes its images (not its subfolders; use a glob such as 'dir/**/*.tif' for
    those), a glob its matching images, a .txt list one path per line (blank lines and # comments
    skipped), a .csv list the column named path/input/image/file or else the first one. Relative
    paths in a list are relative to the list's folder. Files under ``exclude`` (the output folder)
    are left out of folders and globs, so a re-run never segments its own masks.
    """
    if isinstance(exclude, Path):
        exclude = parse_location(str(exclude))
    scenes: list[Location] = []
    for item in inputs:
        if is_uri(item) and not parse_location(item).is_local:
            scenes.extend(_expand_remote(parse_location(item), exclude))
        else:
            local = parse_location(item).local_path if is_uri(item) else item
            scenes.extend(parse_location(str(p)) for p in _expand(local, None if exclude is None else Path(exclude.uri)))
    unique = list(dict.fromkeys(scenes))
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


def _expand_remote(item: Location, exclude: Location | None) -> list[Location]:
    """Objects of a URI: a glob, a prefix (its images, not deeper), a .txt/.csv list, or one image."""
    fs, path = item.filesystem()
    fs.invalidate_cache()  # listings are cached per process; the store may have changed since
    root = item.uri[: len(item.uri) - len(path)] if item.uri.endswith(path) else f"{item.scheme}://"

    def located(found: str) -> Location:
        return Location(root + found.lstrip("/"))

    def kept(found: str) -> bool:
        return _is_image_name(found) and not (exclude is not None and located(found).uri.startswith(exclude.uri.rstrip("/") + "/"))

    if GLOB_CHARACTERS & set(path):
        images = [located(p) for p in sorted(fs.glob(path)) if kept(p)]
        if not images:
            raise InputError(f"{item}: the pattern matches no {'/'.join(IMAGE_SUFFIXES)} images")
        return images
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise InputError(f"{item}: no such object or prefix") from None
    except OSError as exc:
        raise InputError(f"{item}: cannot be listed ({type(exc).__name__}: {exc})") from exc
    if info.get("type") == "directory":
        images = [located(e["name"]) for e in sorted(fs.ls(path, detail=True), key=lambda e: e["name"]) if e.get("type") == "file" and kept(e["name"])]
        if not images:
            raise InputError(f"{item}: the prefix holds no {'/'.join(IMAGE_SUFFIXES)} images")
        return images
    suffix = posixpath.splitext(path)[1].lower()
    if suffix in LIST_SUFFIXES:
        with fs.open(path, "rb") as handle:
            try:
                text = handle.read().decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise InputError(f"{item}: cannot read this list of images ({exc})") from exc
        return _remote_list(item, text)
    if not _is_image_name(path):
        raise InputError(f"{item}: not an image ({', '.join(IMAGE_SUFFIXES)}) nor a .txt/.csv list of images")
    return [item]


def _remote_list(listed: Location, text: str) -> list[Location]:
    """A list stored in object storage: URIs as they are, relative entries under the list's prefix (checked by the workers)."""
    if listed.name.lower().endswith(".csv"):
        entries = _csv_paths(Path(listed.uri), text)
    else:
        entries = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]
    images = []
    for line, entry in entries:
        image = parse_location(entry) if is_uri(entry) else listed.parent.join(entry)
        if not _is_image_name(image.uri):
            raise InputError(f"{listed}:{line}: {entry}: not an image ({', '.join(IMAGE_SUFFIXES)})")
        images.append(image)
    if not images:
        raise InputError(f"{listed}: the list names no images")
    return images


def _is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_SUFFIXES


def scene_stem(scene: Location) -> str:
    """The stem its outputs are named after (``<stem>_mask.png``...)."""
    return os.path.splitext(scene.name)[0]


def _check_distinct_stems(paths: list[Location]) -> None:
    seen: dict[str, Location] = {}
    for path in paths:
        other = seen.setdefault(scene_stem(path), path)
        if other != path:
            raise InputError(
                f"{other} and {path} would write the same outputs ({scene_stem(path)}_mask...); "
                "rename one, or run them as separate batches into different output folders"
            )


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))
