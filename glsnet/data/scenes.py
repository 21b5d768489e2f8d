"""A set of labelled scenes, whatever its source: the one interface training and evaluation read.

A scene is an (image uint8 [H, W, C], labels uint8 [H, W]) pair. Folders are listed and checked
when opened (pairs complete, sizes equal: headers only, cheap); the pixels and the mask colours
are read and checked when a scene is first read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from glsnet.data.palette import Palette, decode_mask
from runtime.errors import InputError


class Scenes(Protocol):
    """Anything with scene names and a reader: dataset folders (FolderScenes), synthetic scenes."""

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def validation_names(self) -> tuple[str, ...]:
        """Scenes the data itself holds out for validation (may be empty)."""
        ...

    def source(self, index: int) -> str:
        """Where scene ``index`` comes from (its image file), for messages."""
        ...

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class ScenePair:
    name: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class FolderScenes:
    """Image/label file pairs: pixels from ``read_pixels``, class indices from ``read_labels``.

    ``validation_names`` are scenes the data itself holds out (an mmsegmentation folder's val/).
    """

    pairs: tuple[ScenePair, ...]
    read_pixels: Callable[[Path], np.ndarray]
    read_labels: Callable[[Path], np.ndarray]
    validation_names: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pairs)

    def source(self, index: int) -> str:
        return str(self.pairs[index].image)

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[index]
        image = self.read_pixels(pair.image)
        if image.ndim == 2:
            image = image[:, :, None]
        labels = self.read_labels(pair.mask)
        if image.shape[:2] != labels.shape:
            raise InputError(
                f"{pair.image}: image is {image.shape[1]} x {image.shape[0]} px but its mask {pair.mask.name} is "
                f"{labels.shape[1]} x {labels.shape[0]} px; image and mask must have the same size"
            )
        return image, labels


def colour_coded_labels(read_pixels: Callable[[Path], np.ndarray], palette: Palette) -> Callable[[Path], np.ndarray]:
    """A label reader for RGB-coded masks (DeepGlobe, ISPRS): ``palette``'s colours to class indices."""
    return lambda path: decode_mask(read_pixels(path), palette, source=path)


def check_folder(folder: str | Path, what: str) -> Path:
    """``folder`` as a Path; InputError if it does not exist or is not a directory."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: {what} folder not found; check the path (--data)")
    if not folder.is_dir():
        raise InputError(f"{folder}: expected a {what} folder, found a file")
    return folder


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels (TIFF via tifffile, else Pillow)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagewidth), int(page.imagelength)
        except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
            raise InputError(f"{path}: not a readable TIFF file ({exc})") from exc
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except OSError as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from exc


def check_same_size(pair: ScenePair) -> None:
    """The image and its mask have the same size (read from their headers)."""
    image_size, mask_size = header_size(pair.image), header_size(pair.mask)
    if image_size != mask_size:
        raise InputError(
            f"{pair.image}: image is {image_size[0]} x {image_size[1]} px but its mask {pair.mask} is "
            f"{mask_size[0]} x {mask_size[1]} px; image and mask must have the same size"
        )
