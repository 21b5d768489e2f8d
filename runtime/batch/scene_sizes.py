"""Each scene's height and width, read from its header on the driver: largest scenes go first, deadlines
scale with their pixels, and the largest one's memory plan sets what each worker reserves.

Only headers are read (a TIFF's first IFD, a PNG/JPEG's header through Pillow's lazy open), by
small ranged reads for object storage, a few in parallel; a scene that is not there fails here, on
the driver, before any worker starts.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from runtime.batch.storage import Location
from runtime.errors import InputError
from runtime.image_io.readers import TIFF_SUFFIXES

HEADER_BLOCK_BYTES = 64 * 1024
PARALLEL_READS = 16


def scene_shapes(scenes: list[Location]) -> dict[Location, tuple[int, int]]:
    """scene -> (height, width), from the headers; (0, 0) for a header this cannot read."""
    with ThreadPoolExecutor(max_workers=min(PARALLEL_READS, max(1, len(scenes)))) as pool:
        return dict(zip(scenes, pool.map(_shape, scenes)))


def _shape(scene: Location) -> tuple[int, int]:
    fs, path = scene.filesystem()
    try:
        with fs.open(path, "rb", block_size=HEADER_BLOCK_BYTES) as handle:
            if os.path.splitext(scene.name)[1].lower() in TIFF_SUFFIXES:
                import tifffile

                with tifffile.TiffFile(handle) as tif:
                    shape = tif.pages.first.shaped
                    return int(shape[2]), int(shape[3])
            from PIL import Image

            with Image.open(handle) as image:
                return int(image.height), int(image.width)
    except FileNotFoundError:
        raise InputError(f"{scene}: no such file or object") from None
    except IsADirectoryError:
        raise InputError(f"{scene}: a folder, not an image") from None
    except Exception as exc:  # noqa: BLE001  an unreadable header: the worker reports the scene's own error
        if isinstance(exc, InputError):
            raise
        return 0, 0
