"""Read a radiograph (DICOM, PNG or JPEG) into a float image plus metadata.

One entry point, :func:`load_image`, turns a path, ``bytes`` or a binary file object into a
:class:`LoadedImage`: a float32 ``(H, W)`` grayscale array in ``[0, 1]`` where 1 is the
brightest display value (bone is bright, whatever the file's photometric convention), plus
an :class:`ImageMeta` with the few header facts the rest of the product needs (age, sex,
pixel spacing, the window applied, warnings) and a non-identifying tag summary for display.

Conventions chosen here (and why)
---------------------------------
* The format is detected from the content (``DICM`` at offset 128, the PNG signature, the
  JPEG SOI marker), never from the file name: uploads and PACS exports are often misnamed.
  A DICOM dataset without the 128-byte preamble is accepted only when it parses as a
  dataset with pixel data.
* DICOM greyscale pipeline (PS3.3 C.11): stored values -> Modality LUT (LUT sequence or
  rescale slope/intercept) -> VOI (VOI LUT sequence if present, else the first
  WindowCenter/WindowWidth pair, else min-max of the values) -> MONOCHROME1 inverted. The
  Presentation LUT Shape is not applied on top: in DX/CR it restates the photometric
  interpretation (INVERSE for MONOCHROME1), so applying both would invert twice.
* Colour (RGB, YBR_*, palette, CMYK) is converted to RGB explicitly, then to luminance with
  the ITU-R BT.601 weights (0.299, 0.587, 0.114) - the same weights as YCbCr's Y and
  Pillow's ``convert("L")`` - and a warning is added when the channels actually differ.
* Transparent pixels (RGBA, LA, palette with transparency) are composited on black: in a
  radiograph black is "no attenuation" (background), so padding never looks like bone.
* PNG/JPEG values are scaled by their dtype's full range (8-bit / 255, 16-bit / 65535),
  never stretched, so a dark PNG stays dark and pixel values keep their meaning.
* EXIF orientation is honoured (the returned pixels are upright); ``original_size`` is the
  stored (pre-rotation) size and a warning names the orientation applied.
* Size limits are checked on the declared header size before any pixel is decoded.

Every bad input raises :class:`~model_zoo.errors.InputError` with a one-line message that
starts with the file name when one is known.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypedDict

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from model_zoo.errors import InputError

if TYPE_CHECKING:  # pydicom is imported lazily: PNG-only users should not pay for it
    from pydicom.dataset import Dataset

__all__ = [
    "ImageMeta",
    "LoadedImage",
    "WindowPreset",
    "apply_window",
    "image_hash",
    "load_image",
    "parse_dicom_age",
    "to_uint8",
    "window_presets",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"

# BT.601 luma weights: identical to the Y of DICOM YBR_FULL and to Pillow's RGB->L.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)

# Tags shown to users. Deliberately an allow-list: nothing that identifies a patient,
# an accession or an institution can leak into the UI through this dict.
_DISPLAY_KEYWORDS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "Manufacturer",
    "Rows",
    "Columns",
    "PhotometricInterpretation",
    "BitsStored",
)


@dataclass(frozen=True)
class ImageMeta:
    """What the loader learnt about an image besides its pixels.

    Attributes
    ----------
    source_format : {"dicom", "png", "jpeg"}
    original_size : (width, height) of the stored image in pixels (before EXIF rotation).
    pixel_spacing : (row_mm, col_mm) from PixelSpacing, else ImagerPixelSpacing; None for
        PNG/JPEG (their DPI is not a detector spacing).
    photometric : DICOM PhotometricInterpretation or the Pillow mode of the stored image.
    bits_stored : DICOM BitsStored; 1, 8 or 16 for PNG/JPEG.
    age : years, from DICOM PatientAge ("045Y", "006M", "010W", "003D").
    age_raw : the PatientAge value as stored (for ``model_zoo.gate``, which refuses to
        pre-fill placeholders such as "000Y" and unreadable values); None for PNG/JPEG.
    sex : "M" or "F" from PatientSex, else None.
    body_part : DICOM BodyPartExamined.
    modality : DICOM Modality (CR, DX, CT, MR, ...); None for PNG/JPEG or when absent.
    window : (center, width) applied, if a header window was applied.
    transfer_syntax : DICOM transfer syntax name.
    warnings : human-readable notes about lossy or surprising conversions.
    display_tags : non-identifying key tags for display (see ``_DISPLAY_KEYWORDS``).
    """

    source_format: str
    original_size: tuple[int, int]
    pixel_spacing: tuple[float, float] | None = None
    photometric: str = ""
    bits_stored: int | None = None
    age: float | None = None
    sex: str | None = None
    body_part: str | None = None
    window: tuple[float, float] | None = None
    modality: str | None = None
    age_raw: str | None = None
    transfer_syntax: str | None = None
    warnings: tuple[str, ...] = ()
    display_tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image: float32 ``(H, W)`` pixels in ``[0, 1]`` (1 = brightest) + metadata."""

    pixels: np.ndarray
    meta: ImageMeta


# --------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------


def apply_window(pixels_raw: np.ndarray, center: float, width: float, *, function: str = "LINEAR") -> np.ndarray:
    """Apply a DICOM VOI window and return float32 values in ``[0, 1]``.

    Implements PS3.3 C.11.2.1.2 with output range ``y_min = 0``, ``y_max = 1``:

    * ``LINEAR`` (default; width >= 1)::

        x <= c - 0.5 - (w - 1) / 2  -> 0
        x >  c - 0.5 + (w - 1) / 2  -> 1
        else                        -> (x - (c - 0.5)) / (w - 1) + 0.5

    * ``LINEAR_EXACT`` (width > 0): ``(x - c) / w + 0.5`` clipped to ``[0, 1]``.
    * ``SIGMOID`` (width > 0): ``1 / (1 + exp(-4 (x - c) / w))``.

    Parameters
    ----------
    pixels_raw : array of Modality-LUT output values (any real dtype, any shape).
    center, width : the window centre and width, in the same units.
    function : the VOIFunction (0028,1056) value.

    Raises
    ------
    InputError
        If the width is not valid for the function, or the function is unknown.
    """
    x = np.asarray(pixels_raw, dtype=np.float64)
    c = float(center)
    w = float(width)
    fn = (function or "LINEAR").strip().upper()
    if fn == "LINEAR":
        if not w >= 1:
            raise InputError(f"invalid DICOM window width {w:g} (LINEAR needs width >= 1)")
        if w == 1:
            # The ramp is empty: a pure threshold at c - 0.5.
            y = (x > c - 0.5).astype(np.float64)
        else:
            # The piecewise formula is continuous, so clipping the ramp reproduces it exactly.
            y = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    elif fn == "LINEAR_EXACT":
        if not w > 0:
            raise InputError(f"invalid DICOM window width {w:g} (LINEAR_EXACT needs width > 0)")
        y = np.clip((x - c) / w + 0.5, 0.0, 1.0)
    elif fn == "SIGMOID":
        if not w > 0:
            raise InputError(f"invalid DICOM window width {w:g} (SIGMOID needs width > 0)")
        with np.errstate(over="ignore"):
            y = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    else:
        raise InputError(f"unsupported DICOM VOI LUT function {function!r}")
    return y.astype(np.float32)


@dataclass(frozen=True)
class WindowPreset:
    """A display window (``center``, ``width`` in the caller's units) with a name and a note."""

    name: str
    center: float
    width: float
    note: str


# Percentiles of the image's unsaturated values (brightest = 100) that bound each preset.
# Bone is the brightest anatomy, so its window covers the bright half; soft tissue sits
# below it. Chosen on pydicom-data's RG3 (a CR of a
# tibia, 44 % of its pixels clipped by the header window) and BTXRD PNGs.
PRESET_PERCENTILES: dict[str, tuple[float, float, str]] = {
    "Bone": (50.0, 99.5, "narrow window on the brightest half of the image"),
    "Soft tissue": (10.0, 70.0, "window on the darker anatomy below bone"),
}


def window_presets(values: np.ndarray, *, bright_is_high: bool = True, min_width: float = 1.0) -> tuple[WindowPreset, ...]:
    """Display window presets from an image's own value distribution.

    ``values`` are the pixels in the units the window is set in (e.g. DICOM header units, or
    0-255 display grey levels); ``bright_is_high`` is False where a higher value displays
    darker (MONOCHROME1 header units). Returns "Full range" (min to max) and the
    :data:`PRESET_PERCENTILES` windows, widths at least ``min_width`` (LINEAR windows need
    >= 1). The percentiles skip pixels sitting exactly at the minimum or maximum: those are
    clipped by an earlier window or are background, and in a collimated radiograph they can
    be half the image, which would drag every percentile onto the clipped value.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise InputError("cannot compute window presets of an empty image")
    b = v if bright_is_high else -v  # brightness order: higher = brighter
    lo, hi = float(b.min()), float(b.max())
    inside = b[(b > lo) & (b < hi)]
    stats = inside if inside.size >= max(16, b.size // 100) else b

    def preset(name: str, b_lo: float, b_hi: float, note: str) -> WindowPreset:
        u_lo, u_hi = (b_lo, b_hi) if bright_is_high else (-b_hi, -b_lo)
        return WindowPreset(name, (u_lo + u_hi) / 2.0, max(u_hi - u_lo, float(min_width)), note)

    out = [preset("Full range", lo, hi, "every value from the darkest to the brightest pixel")]
    for name, (q_lo, q_hi, note) in PRESET_PERCENTILES.items():
        b_lo, b_hi = np.percentile(stats, [q_lo, q_hi])
        out.append(preset(name, float(b_lo), float(b_hi), note))
    return tuple(out)


def parse_dicom_age(value: Any) -> float | None:
    """Parse a DICOM Age String (``nnnD|W|M|Y``) into years; None if absent or malformed."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", str(value).upper())
    if match is None:
        return None
    n = int(match.group(1))
    per_year = {"Y": 1.0, "M": 12.0, "W": 365.25 / 7.0, "D": 365.25}[match.group(2)]
    return n / per_year


def image_hash(pixels: np.ndarray) -> str:
    """SHA-256 hex digest of a float32 image's shape and bytes (a cache key).

    Two images hash equal iff they have the same shape and the same float32 values.
    """
    arr = np.ascontiguousarray(pixels, dtype=np.float32)
    h = hashlib.sha256()
    h.update(f"float32{arr.shape}".encode())
    h.update(arr.data.cast("B"))  # arr.data is memoryview(arr)
    return h.hexdigest()


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map a ``[0, 1]`` float image to uint8 (round to nearest; values outside are clipped)."""
    arr = np.asarray(pixels, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise InputError("image contains NaN or infinite values; cannot convert to 8-bit")
    return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an ``(H, W, 3)`` array, in the input's units, as float64."""
    return rgb[..., :3].astype(np.float64) @ _LUMA


def _is_colour(rgb: np.ndarray) -> bool:
    """True when an RGB array is not merely grey stored in three channels."""
    return bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 1] != rgb[..., 2]))


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float64)
    return (x.astype(np.float64) - lo) / (hi - lo)


def _describe_non_image(data: bytes) -> str | None:
    """Name what a non-image file looks like, from its first bytes (None if unknown)."""
    head = data[:64]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    signatures: list[tuple[bool, str]] = [
        (head.startswith(b"%PDF"), "a PDF document"),
        (head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"), "a ZIP archive"),
        (head.startswith(b"\x1f\x8b"), "a gzip archive"),
        (head.startswith(b"7z\xbc\xaf\x27\x1c"), "a 7-Zip archive"),
        (head.startswith(b"Rar!"), "a RAR archive"),
        (head.startswith((b"GIF87a", b"GIF89a")), "a GIF image (unsupported format)"),
        (head.startswith((b"II*\x00", b"MM\x00*")), "a TIFF image (unsupported format)"),
        (head.startswith(b"BM"), "a BMP image (unsupported format)"),
        (head[:4] == b"RIFF" and head[8:12] == b"WEBP", "a WebP image (unsupported format)"),
        (head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1"), "a HEIC image (unsupported)"),
        (head.startswith(b"\x00\x00\x00\x0cjP  \r\n"), "a JPEG 2000 file (unsupported format)"),
        (text.startswith((b"<!doctype html", b"<html")), "an HTML page"),
        (text.startswith(b"<?xml") or text.startswith(b"<svg"), "an XML/SVG document"),
        (text.startswith((b"{", b"[")), "a JSON/text file"),
        (head.startswith(b"\xd0\xcf\x11\xe0"), "an old Microsoft Office document"),
    ]
    for matched, what in signatures:
        if matched:
            return what
    if data and not data.strip(b"\x00"):
        return "all zero bytes (an empty or wiped file)"
    if b"\x00" in data[:4096]:
        return None  # binary, unknown
    try:
        data[:4096].decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return None


def _sniff(data: bytes) -> str | None:
    """Return "dicom", "dicom-raw" (no preamble), "png", "jpeg" or None from content."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SOI):
        return "jpeg"
    # A preamble-less dataset starts with its lowest group: file meta (0002) or, without
    # meta, group 0008 (SOP Class UID is type 1). Either byte order.
    if len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        return "dicom-raw"
    return None


# --------------------------------------------------------------------------------------
# I/O edge
# --------------------------------------------------------------------------------------


def _read_source(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO,
    name: str | None,
) -> tuple[bytes, str | None]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label: str | None = name if name is not None else path.name
        if not path.exists():
            raise InputError(f"{label}: file not found: {path}")
        if path.is_dir():
            raise InputError(f"{label}: is a folder, not an image file")
        try:
            return path.read_bytes(), label
        except OSError as err:
            raise InputError(f"{label}: cannot read file ({err.strerror or err})") from None
    if hasattr(source, "read"):
        label = name
        if label is None and isinstance(getattr(source, "name", None), str):
            label = Path(source.name).name
        try:
            data = source.read()
        except OSError as err:
            raise InputError(f"{label or 'image'}: cannot read file ({err})") from None
        if isinstance(data, str):
            raise InputError(f"{label or 'image'}: file object is in text mode; open it with 'rb'")
        return bytes(data), label
    raise TypeError(f"load_image: unsupported source type {type(source).__name__}")


def _fail(name: str | None, message: str) -> InputError:
    # One line, always: strip newlines that library messages sometimes contain.
    message = " ".join(message.split())
    return InputError(f"{name}: {message}" if name else message)


def _check_size(width: int, height: int, *, min_side: int, max_pixels: int, name: str | None):
    if width <= 0 or height <= 0:
        raise _fail(name, f"image declares an empty size ({width}x{height} pixels)")
    if min(width, height) < min_side:
        raise _fail(
            name,
            f"image too small: {width}x{height} pixels (each side must be at least {min_side} px)",
        )
    if width * height > max_pixels:
        raise _fail(
            name,
            f"image too large: {width}x{height} = {width * height:,} pixels declared "
            f"(limit {max_pixels:,}); refused before decoding",
        )


def _finish(values: np.ndarray, meta_kwargs: dict[str, Any], warn: list[str], name: str | None) -> LoadedImage:
    """Shared tail: finite check, constant-image warning, float32 in [0, 1]."""
    if not np.all(np.isfinite(values)):
        raise _fail(name, "decoded image contains NaN or infinite values")
    pixels = np.clip(values, 0.0, 1.0).astype(np.float32)
    if pixels.size and float(pixels.min()) == float(pixels.max()):
        warn.append(f"constant image: every pixel is {float(pixels.flat[0]):.3g} after scaling")
    meta_kwargs["warnings"] = tuple(dict.fromkeys(warn))  # de-duplicate, keep order
    return LoadedImage(pixels=np.ascontiguousarray(pixels), meta=ImageMeta(**meta_kwargs))


class _Limits(TypedDict):
    """The keyword arguments ``load_image`` passes on to each format's loader."""

    max_pixels: int
    min_side: int
    name: str | None


def load_image(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    name: str | None = None,
    max_pixels: int = 60_000_000,
    min_side: int = 32,
) -> LoadedImage:
    """Load a DICOM, PNG or JPEG radiograph as a float32 grayscale image in ``[0, 1]``.

    Parameters
    ----------
    source : a path, the file's bytes, or a binary file object (read to its end).
    name : shown at the start of error messages; defaults to the file name when known.
    max_pixels : refuse images whose declared width x height exceeds this (checked on the
        header, before decoding). Pillow's own decompression-bomb limit (about 179 M
        pixels) also applies to PNG/JPEG.
    min_side : refuse images with a side shorter than this many pixels.

    Returns
    -------
    LoadedImage
        ``pixels`` is C-contiguous float32 ``(H, W)``, 1 = brightest; ``meta`` see
        :class:`ImageMeta`.

    Raises
    ------
    InputError
        Empty, truncated, corrupt, non-image, too small/large, no pixel data, unsupported
        transfer syntax, or non-finite values; the message is one line.
    """
    if max_pixels < 1 or min_side < 1:
        raise ValueError("max_pixels and min_side must be positive")
    data, name = _read_source(source, name)
    if len(data) == 0:
        raise _fail(name, "empty file (0 bytes)")
    kind = _sniff(data)
    limits: _Limits = {"max_pixels": max_pixels, "min_side": min_side, "name": name}
    if kind == "dicom":
        return _guard_dicom(data, None, **limits)
    if kind in ("png", "jpeg"):
        return _load_pillow(data, kind, **limits)
    if kind == "dicom-raw":
        parsed = _try_raw_dicom(data)
        if parsed is not None:
            return _guard_dicom(data, parsed, **limits)
    what = _describe_non_image(data)
    if what is not None:
        raise _fail(name, f"not a DICOM, PNG or JPEG image: the file looks like {what}")
    raise _fail(
        name,
        f"not a DICOM, PNG or JPEG image (unrecognised content starting {data[:8].hex(' ')})",
    )


# --------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------


def _guard_dicom(data: bytes, parsed: Dataset | None, *, max_pixels: int, min_side: int, name: str | None) -> LoadedImage:
    """Run the DICOM loader, turning pydicom's late errors on malformed headers into one line.

    pydicom converts element values lazily, so a malformed value (a text in an integer
    element, a short LUT) surfaces wherever it is first read, not in ``dcmread``.
    """
    try:
        with warnings.catch_warnings():
            # Header-validity chatter (odd UIDs, VR lengths) is not the user's problem;
            # decoder warnings are recorded into the metadata inside _load_dicom.
            warnings.simplefilter("ignore")
            return _load_dicom(data, max_pixels=max_pixels, min_side=min_side, name=name, parsed=parsed)
    except InputError:
        raise
    except (
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
        OverflowError,
        NotImplementedError,
        EOFError,
        OSError,
        struct.error,
    ) as err:
        msg = " ".join(str(err).split())[:300]
        raise _fail(name, f"malformed DICOM file ({type(err).__name__}: {msg})") from None


def _try_raw_dicom(data: bytes) -> Dataset | None:
    """Parse preamble-less bytes as DICOM; return the dataset only if it has pixel data."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:  # noqa: BLE001 - any parse failure means "not DICOM"
        return None
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        return None
    return ds


def _first(value: Any) -> Any:
    """First item of a multi-valued DICOM element (or the value itself)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col):
            return (row, col)
    return None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _ybr_full_to_rgb(arr: np.ndarray, bits: int) -> np.ndarray:
    """PS3.3 C.7.6.3.1.2 YBR_FULL -> RGB for any bit depth (pydicom 3.0 handles 8-bit only)."""
    import pydicom.pixels

    if arr.dtype == np.uint8:
        return pydicom.pixels.convert_color_space(arr, "YBR_FULL", "RGB")
    half = 2.0 ** (bits - 1)
    y = arr[..., 0].astype(np.float64)
    cb = arr[..., 1].astype(np.float64) - half
    cr = arr[..., 2].astype(np.float64) - half
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(rgb, 0, 2.0**bits - 1)


def _load_dicom(
    data: bytes,
    *,
    max_pixels: int,
    min_side: int,
    name: str | None,
    parsed: Dataset | None = None,
) -> LoadedImage:
    import pydicom
    import pydicom.pixels
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    warn: list[str] = []
    try:
        ds = parsed if parsed is not None else pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on corrupt input
        msg = " ".join(str(err).split())[:300]
        raise _fail(name, f"corrupt or truncated DICOM file ({type(err).__name__}: {msg})") from None

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "Rows" in ds and "Columns" in ds:
            raise _fail(
                name,
                "DICOM file declares an image (Rows/Columns) but has no pixel data: it is truncated or incomplete",
            )
        sop = ds.get("SOPClassUID")
        what = f" (SOP class: {UID(str(sop)).name})" if sop else ""
        raise _fail(name, f"DICOM file has no pixel data{what}")
    if "PixelData" not in ds:
        raise _fail(name, "DICOM float pixel data (parametric maps) is not supported")

    # Preamble-less datasets may lack file meta: the byte order we parsed with tells us.
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if implicit and little:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif little:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.2")  # Explicit VR BE
    tsyntax = UID(str(ds.file_meta.TransferSyntaxUID))
    ts_label = f"{tsyntax.name} ({tsyntax})" if tsyntax.name != str(tsyntax) else f"{tsyntax} (unknown or private UID)"

    try:
        decoder = pydicom.pixels.get_decoder(tsyntax)
    except NotImplementedError:
        raise _fail(name, f"unsupported DICOM transfer syntax: {ts_label}") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin installed"
        raise _fail(name, f"unsupported DICOM transfer syntax: {ts_label} ({missing})")

    rows, cols = ds.get("Rows"), ds.get("Columns")
    if rows is None or cols is None:
        raise _fail(name, "DICOM file has no Rows/Columns: cannot size the image")
    _check_size(int(cols), int(rows), max_pixels=max_pixels, min_side=min_side, name=name)

    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        warn.append(f"multi-frame: first of {n_frames} frames used")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    bits_stored = ds.get("BitsStored")
    bits = int(bits_stored or ds.get("BitsAllocated", 8))

    # raw=True: we do the colour conversion ourselves, so we know exactly what happened.
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            arr, changes = decoder.as_array(ds, index=0, raw=True)
    except Exception as err:  # noqa: BLE001 - decoders raise ValueError/RuntimeError/...
        msg = " ".join(str(err).split())[:300]
        if "less than expected" in msg or "truncat" in msg.lower():
            raise _fail(name, f"truncated DICOM pixel data ({msg})") from None
        raise _fail(name, f"cannot decode DICOM pixel data ({tsyntax.name}): {msg}") from None
    warn.extend(f"decoder: {str(w.message)[:200]}" for w in caught)
    decoded_pi = str(changes.get("photometric_interpretation", photometric)).upper()

    window: tuple[float, float] | None = None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if decoded_pi in ("YBR_FULL", "YBR_FULL_422"):
            arr = _ybr_full_to_rgb(arr, bits)
        elif decoded_pi not in ("RGB", "YBR_ICT", "YBR_RCT"):
            # J2K decoders undo ICT/RCT themselves; anything else is unknown to us.
            raise _fail(name, f"unsupported DICOM colour space {decoded_pi}")
        if _is_colour(arr):
            warn.append("colour image converted to grayscale")
        values = _luminance(arr) / (2.0**bits - 1.0)
    elif decoded_pi == "PALETTE COLOR":
        rgb = pydicom.pixels.apply_color_lut(arr, ds)
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        warn.append("palette colour image converted to grayscale")
        values = _luminance(rgb) / (2.0 ** (16 if lut_bits > 8 else 8) - 1.0)
    elif arr.ndim == 2 and decoded_pi in ("MONOCHROME1", "MONOCHROME2"):
        with np.errstate(over="ignore", invalid="ignore"):  # absurd slopes -> caught below
            modality = pydicom.pixels.apply_modality_lut(arr, ds).astype(np.float64)
        if not np.all(np.isfinite(modality)):
            raise _fail(name, "rescale slope/intercept give NaN or infinite values")
        values, window = _voi(modality, ds, warn)
        if decoded_pi == "MONOCHROME1":
            values = 1.0 - values  # MONOCHROME1: low values are bright
    else:
        raise _fail(
            name,
            f"unsupported DICOM pixel layout: {decoded_pi or 'no PhotometricInterpretation'}, shape {arr.shape}",
        )

    display = {k: str(ds.get(k)).strip() for k in _DISPLAY_KEYWORDS if ds.get(k) is not None}
    display["TransferSyntax"] = tsyntax.name
    for keyword in ("WindowCenter", "WindowWidth"):
        value = _first(ds.get(keyword))
        if value is not None:
            try:
                display[keyword] = f"{float(value):g}"
            except (TypeError, ValueError):
                display[keyword] = str(value)
    if n_frames > 1:
        display["NumberOfFrames"] = str(n_frames)

    sex = (_text(ds, "PatientSex") or "").upper()
    meta = {
        "source_format": "dicom",
        "original_size": (int(cols), int(rows)),
        "pixel_spacing": _spacing(ds),
        "photometric": photometric,
        "bits_stored": int(bits_stored) if bits_stored is not None else None,
        "age": parse_dicom_age(ds.get("PatientAge")),
        "sex": sex if sex in ("M", "F") else None,
        "body_part": _text(ds, "BodyPartExamined"),
        "modality": (_text(ds, "Modality") or "").upper() or None,
        "age_raw": _text(ds, "PatientAge"),
        "window": window,
        "transfer_syntax": tsyntax.name,
        "display_tags": display,
    }
    return _finish(values, meta, warn, name)


def _voi(modality: np.ndarray, ds: Dataset, warn: list[str]) -> tuple[np.ndarray, tuple[float, float] | None]:
    """VOI stage: LUT sequence, else first header window, else min-max. Output in [0, 1]."""
    import pydicom.pixels

    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        descriptor = [int(v) for v in voi_seq[0].LUTDescriptor]
        n_entries, first_map = descriptor[0] or 2**16, descriptor[1]
        # The LUT indexes integers; modality output is integral unless rescale made it not.
        lut_out = pydicom.pixels.apply_voi(np.rint(modality).astype(np.int64), ds, index=0)
        # Normalise by the LUT's own output range (read back through pydicom's parser):
        # descriptors often overstate the bit depth, which would leave the image dark.
        table = pydicom.pixels.apply_voi(np.arange(first_map, first_map + n_entries, dtype=np.int64), ds, index=0)
        lo, hi = float(np.min(table)), float(np.max(table))
        if hi > lo:
            return (np.asarray(lut_out, dtype=np.float64) - lo) / (hi - lo), None
        warn.append("VOI LUT is constant; min-max scaling used instead")
        return _minmax(modality), None

    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        try:
            return apply_window(modality, float(center), float(width), function=function), (
                float(center),
                float(width),
            )
        except (InputError, ValueError) as err:
            warn.append(f"header window ignored ({err}); min-max scaling used")
    return _minmax(modality), None


# --------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------


def _png_declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the PNG IHDR chunk, read without Pillow; None if malformed."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _load_pillow(data: bytes, kind: str, *, max_pixels: int, min_side: int, name: str | None) -> LoadedImage:
    label = kind.upper()
    if kind == "png":
        declared = _png_declared_size(data)
        if declared is None:
            raise _fail(name, "truncated or corrupt PNG: no valid IHDR header")
        # Checked before Pillow sees the file, so a bomb never reaches a decoder.
        _check_size(*declared, max_pixels=max_pixels, min_side=min_side, name=name)

    warn: list[str] = []
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces Pillow's warning; its hard error
            # (DecompressionBombError, > ~179 M pixels) still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            _check_size(*img.size, max_pixels=max_pixels, min_side=min_side, name=name)
            stored_size = img.size
            stored_mode = img.mode
            pil_format = img.format or ""
            if pil_format not in ("PNG", "JPEG", "MPO"):
                raise _fail(name, f"content looks like {label} but decodes as {pil_format}")
            if pil_format == "PNG":
                # Pillow does not check IDAT CRCs while decoding; verify() checks every chunk.
                Image.open(io.BytesIO(data)).verify()
            # Decode BEFORE reading EXIF: for PNG getexif() decodes the image, and its
            # (deliberately tolerant) error handling would hide a broken data stream.
            img.load()
            orientation = _exif_orientation(img)
            if orientation not in (None, 1):
                img = ImageOps.exif_transpose(img)
                warn.append(f"EXIF orientation {orientation} applied (image rotated/flipped)")
    except InputError:
        raise
    except Image.DecompressionBombError as err:
        raise _fail(name, f"image too large for Pillow ({err})") from None
    except UnidentifiedImageError:
        # Pillow's message names a BytesIO object's address: useless to a user.
        raise _fail(name, f"corrupt {label} file: the header cannot be read") from None
    except SyntaxError as err:
        raise _fail(name, f"corrupt {label} file ({err})") from None
    except (OSError, EOFError, ValueError, zlib.error, struct.error) as err:
        msg = str(err)
        if "truncat" in msg.lower() or isinstance(err, EOFError):
            raise _fail(name, f"truncated {label} file ({msg})") from None
        raise _fail(name, f"corrupt or truncated {label} file ({msg})") from None

    n_frames = getattr(img, "n_frames", 1)
    if n_frames > 1:
        warn.append(f"multi-frame: first of {n_frames} frames used")
    values, bits = _pil_to_gray(img, warn)
    meta = {
        "source_format": kind,
        "original_size": (int(stored_size[0]), int(stored_size[1])),
        "photometric": stored_mode,
        "bits_stored": bits,
        "display_tags": {
            "Format": label,
            "Mode": stored_mode,
            "Columns": str(stored_size[0]),
            "Rows": str(stored_size[1]),
            "BitsStored": str(bits),
        },
    }
    return _finish(values, meta, warn, name)


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - malformed EXIF must not block reading the pixels
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _pil_to_gray(img: Image.Image, warn: list[str]) -> tuple[np.ndarray, int]:
    """Pillow image -> ([0, 1] float64 grayscale, bits), per the module's conventions."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.float64), 1
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(img).astype(np.float64) / 65535.0, 16
    if mode == "I":  # Pillow's 32-bit container for 16-bit PNGs
        arr = np.asarray(img).astype(np.float64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            warn.append("32-bit integer image outside 0..65535: min-max scaled")
            return _minmax(arr), 32
        return arr / 65535.0, 16
    if mode == "F":
        warn.append("floating-point image: min-max scaled")
        return _minmax(np.asarray(img, dtype=np.float64)), 32
    if mode == "L":
        return np.asarray(img).astype(np.float64) / 255.0, 8

    # Everything else goes through RGB(A). Palette images with a transparency entry and
    # LA/PA keep their alpha so it can be composited on black like RGBA.
    has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in img.info)
    if mode == "CMYK":
        warn.append("CMYK image converted to RGB (no colour profile applied)")
    rgba = np.asarray(img.convert("RGBA" if has_alpha else "RGB")).astype(np.float64)
    rgb = rgba[..., :3]
    if has_alpha:
        alpha = rgba[..., 3:4] / 255.0
        if np.any(alpha < 1.0):
            warn.append("transparent pixels composited on black")
        rgb = rgb * alpha
    if _is_colour(rgb):
        warn.append("colour image converted to grayscale")
    return _luminance(rgb) / 255.0, 8
