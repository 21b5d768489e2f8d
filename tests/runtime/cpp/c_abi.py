"""ctypes mirrors of runtime/cpp/include/glsnet/glsnet.h, one per release of each struct.

The C API accepts a struct as large as the caller knows (``struct_size``), so tests that play an older
caller use a shorter layout: each layout below is a prefix of the current one, in the header's order.
"""

from __future__ import annotations

import ctypes

STATUS_INVALID_ARGUMENT = 1
STATUS_INPUT = 3
STATUS_RUNTIME = 6
STATUS_CANCELLED = 7

PIXEL_UINT8, PIXEL_UINT16, PIXEL_FLOAT32 = 0, 1, 2
LOG_VERBOSE, LOG_INFO, LOG_WARNING, LOG_ERROR = 0, 1, 2, 3

LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p)
ROW_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)

_OPTIONS = [
    ("struct_size", ctypes.c_uint32),
    ("precision", ctypes.c_char_p),
    ("device", ctypes.c_char_p),
    ("threads", ctypes.c_int32),
    ("batch_size", ctypes.c_int32),
    ("max_memory", ctypes.c_uint64),
    ("global_band_rows", ctypes.c_int32),
    ("global_halo", ctypes.c_int32),
    ("cpu_arena", ctypes.c_int32),
    ("max_pixels", ctypes.c_int64),
    ("release_heap", ctypes.c_int32),
    ("device_id", ctypes.c_int32),
    ("bands", ctypes.c_char_p),
    ("log_callback", LOG_CALLBACK),
    ("log_user_data", ctypes.c_void_p),
    ("log_level", ctypes.c_int32),
    ("min_overlap", ctypes.c_int32),
]

_IMAGE = [
    ("struct_size", ctypes.c_uint32),
    ("pixel_type", ctypes.c_int32),
    ("pixels", ctypes.c_void_p),
    ("pixels_size", ctypes.c_size_t),
    ("height", ctypes.c_int64),
    ("width", ctypes.c_int64),
    ("channels", ctypes.c_int32),
    ("row_pitch", ctypes.c_int64),
    ("input_range", ctypes.c_char_p),
    ("cancel", ctypes.c_void_p),
    ("timeout_ms", ctypes.c_int64),
]

_FILE_OPTIONS = [
    ("struct_size", ctypes.c_uint32),
    ("format", ctypes.c_char_p),
    ("color", ctypes.c_int32),
    ("input_range", ctypes.c_char_p),
    ("cancel", ctypes.c_void_p),
    ("timeout_ms", ctypes.c_int64),
    ("stats", ctypes.c_int32),
]


def _layout(name: str, fields: list[tuple[str, type]], doc: str) -> type[ctypes.Structure]:
    return type(name, (ctypes.Structure,), {"_fields_": fields, "__doc__": doc})


Options = _layout("Options", _OPTIONS[:10], "glsnet_options as ABI 1's first release laid it out: an older caller.")
OptionsWithBands = _layout("OptionsWithBands", _OPTIONS[:13], "glsnet_options with device_id and bands, before logging.")
OptionsWithLog = _layout("OptionsWithLog", _OPTIONS[:16], "glsnet_options with logging, before min_overlap.")
OptionsWithOverlap = _layout("OptionsWithOverlap", _OPTIONS, "glsnet_options of this release.")

TypedImage = _layout("TypedImage", _IMAGE[:9], "glsnet_image of the typed-input release, before cancel and deadlines.")
Image = _layout("Image", _IMAGE, "glsnet_image of this release.")

TypedFileOptions = _layout("TypedFileOptions", _FILE_OPTIONS[:4], "glsnet_file_options of the typed-input release.")
FileOptions = _layout("FileOptions", _FILE_OPTIONS, "glsnet_file_options of this release.")
