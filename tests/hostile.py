"""A hostile-input corpus, generated in memory (never real patient data).

Three lists, each entry naming what it is, how to build it and what must happen:

* :data:`IMAGE_CORPUS` - files a user might upload or list in a case table: empty,
  truncated, zero-filled, other formats renamed ``.dcm``/``.png``, malformed DICOM
  headers, decompression bombs, and valid-but-odd images (16-bit, palette, CMYK, RGB/YBR
  DICOM, multi-frame) that must load. ``expect`` is a regex the one-line
  :class:`~model_zoo.errors.InputError` message must match, or :data:`LOADS`.
* :data:`ROW_CORPUS` - case-table rows whose image is fine but whose clinical values, ROI
  or image path are not; ``expect`` is a regex for the row's ``error`` (``LOADS``: the row
  must be predicted).
* :data:`TABLE_CORPUS` - whole case tables that cannot be used (UTF-16, missing columns,
  ...); ``expect`` is a regex for the one-line message.

Every builder is deterministic (fixed seeds) and fast (< 0.5 s); nothing here touches
the disk. The expectations say what a user needs to read (the cause, in one line); they
were not generated from the loader's output.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

LOADS: None = None  # ``expect`` value for inputs that must load / rows that must predict

# A message may start with the file name the loader was given ("name.ext: ...").
_NAME = r"^[^\n]*"


class Hostile(NamedTuple):
    """One corpus entry: ``(kind, build, expect, filename)``.

    ``build()`` returns the file's bytes; ``expect`` is a regex (searched) or ``LOADS``;
    ``filename`` is how the file is named on upload / on disk (its extension may lie).
    """

    kind: str
    build: Callable[[], bytes]
    expect: str | None
    filename: str


class HostileRow(NamedTuple):
    """A case-table row: ``image`` is ``"<good>"`` (a good synthetic image) or a literal."""

    kind: str
    row: dict[str, Any]
    expect: str | None


class HostileTable(NamedTuple):
    kind: str
    build: Callable[[], bytes]
    expect: str


# ----------------------------------------------------------------------------- helpers


def gray_pixels(h: int = 64, w: int = 64, seed: int = 0, hi: int = 4095) -> np.ndarray:
    """A noisy uint16 ramp: structured (so flips show) and never constant."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 37 + yy * 11) % (hi + 1)
    return np.clip(base + rng.integers(0, 16, (h, w)), 0, hi).astype(np.uint16)


def dicom_bytes(
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    frames: int = 1,
    bits_stored: int | None = None,
    pixel_data: bytes | None = None,
    omit_pixel_data: bool = False,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    preamble: bool = True,
    **tags: Any,
) -> bytes:
    """A DICOM file (Part 10 unless ``preamble=False``) with native or given pixel data.

    ``tags`` override any attribute after the defaults are set, so a test can declare
    values that contradict the pixel data (that is the point of most corpus entries).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID

    arr = np.asarray(gray_pixels() if pixels is None else pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.1")
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    spatial = arr.shape[1:] if frames > 1 else arr.shape
    ds.Rows, ds.Columns = int(spatial[0]), int(spatial[1])
    colour = len(spatial) == 3
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    allocated = 8 if arr.dtype == np.uint8 else 16
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or (12 if allocated == 16 else 8)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    if not omit_pixel_data:
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes() if pixel_data is None else pixel_data
    out = io.BytesIO()
    if preamble:
        ds.save_as(out, enforce_file_format=True)
    else:
        ds.preamble = None
        ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def png_bytes(img: Image.Image, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", **kwargs)
    return out.getvalue()


def jpeg_bytes(img: Image.Image, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", **{"quality": 90, **kwargs})
    return out.getvalue()


def noise_image(mode: str = "L", size: tuple[int, int] = (64, 64), seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "CMYK": 4, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_raw(width: int, height: int, rows: bytes, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A PNG from raw filtered scanlines (lets us build sizes Pillow would refuse to hold)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def _png_bomb() -> bytes:
    """8000 x 8000 8-bit grey zeros: 64 M pixels (over the 60 M budget) in ~60 KB."""
    w = h = 8000
    comp = zlib.compressobj(9)
    line = b"\x00" * (w + 1)  # filter byte + pixels
    parts = [comp.compress(line) for _ in range(h)]
    parts.append(comp.flush())
    return _png_raw(w, h, b"".join(parts))


def _png_wide() -> bytes:
    """100000 x 10: a real, tiny file of an absurd shape (a side under the 32 px minimum)."""
    return _png_raw(100_000, 10, zlib.compress((b"\x00" + b"\x80" * 100_000) * 10, 9))


def _png_header_only() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0))


def _png_bad_crc() -> bytes:
    data = bytearray(png_bytes(noise_image()))
    idat = data.find(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    crc_at = idat + 4 + length
    data[crc_at] ^= 0xFF  # the IDAT chunk's CRC no longer matches
    return bytes(data)


def _png_flipped_bits() -> bytes:
    """Corruption in the last 40 % of the deflate stream of a compressible 128 x 128 image,
    CRCs fixed up: only the decompressor can notice (the first rows still decode)."""
    yy, xx = np.mgrid[0:128, 0:128]
    raw = png_bytes(Image.fromarray(((xx * 3 + yy * 2) % 256).astype(np.uint8)))
    idat = raw.find(b"IDAT")
    length = struct.unpack(">I", raw[idat - 4 : idat])[0]
    body = bytearray(raw[idat + 4 : idat + 4 + length])
    for i in range(int(len(body) * 0.6), len(body) - 4, 5):
        body[i] ^= 0x5A
    return raw[: idat - 4] + png_chunk(b"IDAT", bytes(body)) + raw[idat + 8 + length :]


def _png_16bit() -> bytes:
    return png_bytes(Image.fromarray(gray_pixels(hi=4095) * 16))  # uint16 -> mode "I;16"


def _png_palette() -> bytes:
    return png_bytes(noise_image("RGB", seed=4).quantize(colors=16))


def _jpeg_cmyk() -> bytes:
    return jpeg_bytes(noise_image("CMYK", seed=5))


def _jpeg_garbage() -> bytes:
    return b"\xff\xd8\xff\xe0" + bytes(np.random.default_rng(6).integers(0, 256, 2000, dtype=np.uint8))


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("scan.dcm", b"\0" * 500)
    return buf.getvalue()


def _gif_bytes() -> bytes:
    out = io.BytesIO()
    noise_image("RGB", seed=7).save(out, format="GIF")
    return out.getvalue()


def _truncated(build: Callable[[], bytes], keep: float) -> Callable[[], bytes]:
    def cut() -> bytes:
        data = build()
        return data[: int(len(data) * keep)]

    return cut


def _ybr_422_jpeg_dicom() -> bytes:
    from pydicom.encaps import encapsulate

    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 210
    rgb[:, 32:, 1] = 170
    rgb[32:, :, 2] = 70
    frame = jpeg_bytes(Image.fromarray(rgb))  # Pillow writes YCbCr 4:2:0 by default
    return dicom_bytes(rgb, photometric="YBR_FULL_422", transfer_syntax="1.2.840.10008.1.2.4.50", pixel_data=encapsulate([frame]))


def _rgb_dicom() -> bytes:
    rng = np.random.default_rng(8)
    return dicom_bytes(rng.integers(0, 256, (48, 56, 3), dtype=np.uint8), photometric="RGB")


def _multiframe_dicom() -> bytes:
    frames = np.stack([gray_pixels(seed=s) for s in range(3)])
    return dicom_bytes(frames, frames=3)


def _mpeg2_dicom() -> bytes:
    from pydicom.encaps import encapsulate

    return dicom_bytes(transfer_syntax="1.2.840.10008.1.2.4.100", pixel_data=encapsulate([b"\0" * 64]))


def _private_ts_dicom() -> bytes:
    # pydicom refuses to write an unknown syntax: patch a same-length UID into the meta.
    return dicom_bytes().replace(b"1.2.840.10008.1.2.1\0", b"1.2.3.4.5.6.7.8.9.0\0", 1)


def _sr_dicom() -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.2")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _float_dicom() -> bytes:
    data = dicom_bytes(omit_pixel_data=True)
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data))
    ds.FloatPixelData = np.zeros((64, 64), np.float32).tobytes()
    ds.BitsAllocated = 32
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _nested_sequence_bomb(depth: int = 3000) -> bytes:
    """A VOI LUT Sequence nested ``depth`` levels deep (defined lengths, so pydicom parses
    it lazily, when the loader reads the VOI stage): a recursion-depth attack."""

    def tag(group: int, element: int) -> bytes:
        return struct.pack("<HH", group, element)

    inner = b""
    for _ in range(depth):
        item = tag(0xFFFE, 0xE000) + struct.pack("<I", len(inner)) + inner
        inner = tag(0x0028, 0x3010) + b"SQ\0\0" + struct.pack("<I", len(item)) + item
    data = dicom_bytes()
    at = data.find(tag(0x7FE0, 0x0010))  # (0028,3010) sorts just before Pixel Data
    return data[:at] + inner + data[at:]


def _png_text_bomb() -> bytes:
    """A zTXt chunk inflating to 20 MB inside an otherwise fine 64 x 64 PNG."""
    base = png_bytes(noise_image())
    at = base.find(b"IDAT") - 4
    body = b"Comment\0\0" + zlib.compress(b"\0" * (20 << 20), 9)
    return base[:at] + png_chunk(b"zTXt", body) + base[at:]


def _jpeg_declared(width: int, height: int) -> bytes:
    data = bytearray(jpeg_bytes(noise_image()))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _dicm_then_garbage() -> bytes:
    rng = np.random.default_rng(9)
    return b"\0" * 128 + b"DICM" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8))


def _trailing_zeros(build: Callable[[], bytes], n: int = 4096) -> Callable[[], bytes]:
    return lambda: build() + b"\0" * n


# ----------------------------------------------------------------------------- image corpus

_E = _NAME  # readability below: every message is one line, optionally prefixed by a name
_NOT_IMAGE = r"not a DICOM, PNG or JPEG image"
# A DICOM-specific refusal, not the generic "not a DICOM, PNG or JPEG image" (which also
# contains "DICOM"): the loader must have recognised the file as DICOM.
_DICOM_SPECIFIC = r"(DICOM file|malformed DICOM)"

IMAGE_CORPUS: list[Hostile] = [
    # --- empty, truncated, zero-filled
    Hostile("empty_file", lambda: b"", _E + r"empty file \(0 bytes\)", "empty.dcm"),
    # A zero-filled file (interrupted copy, unwritten sparse file) must not be called text.
    Hostile("all_zero_bytes", lambda: b"\0" * 4096, _E + _NOT_IMAGE + r"(?!.*text file)", "zeros.dcm"),
    Hostile(
        "random_bytes",
        lambda: bytes(np.random.default_rng(10).integers(0, 256, 4096, dtype=np.uint8)),
        _E + _NOT_IMAGE,
        "noise.png",
    ),
    Hostile("dicom_preamble_only", lambda: b"\0" * 128 + b"DICM", _E + _DICOM_SPECIFIC, "header.dcm"),
    Hostile("dicom_magic_then_garbage", _dicm_then_garbage, _E + _DICOM_SPECIFIC, "garbage.dcm"),
    Hostile("dicom_truncated_in_pixels", _truncated(dicom_bytes, 0.6), _E + r"truncated", "cut.dcm"),
    Hostile("dicom_truncated_in_header", lambda: dicom_bytes()[:300], _E + r"truncated|no pixel data|corrupt", "cut_header.dcm"),
    Hostile("png_truncated_half", _truncated(lambda: png_bytes(noise_image()), 0.5), _E + r"(truncated|corrupt).*PNG", "cut.png"),
    Hostile("png_header_only", _png_header_only, _E + r"(truncated|corrupt).*PNG", "ihdr_only.png"),
    Hostile("png_signature_only", lambda: b"\x89PNG\r\n\x1a\n", _E + r"(truncated|corrupt).*PNG", "sig.png"),
    Hostile(
        "jpeg_truncated_half", _truncated(lambda: jpeg_bytes(noise_image()), 0.5), _E + r"(truncated|corrupt).*JPEG", "cut.jpg"
    ),
    Hostile("jpeg_soi_then_garbage", _jpeg_garbage, _E + r"(truncated|corrupt).*JPEG", "garbage.jpg"),
    Hostile("png_bad_crc", _png_bad_crc, _E + r"corrupt.*PNG", "crc.png"),
    Hostile("png_corrupt_zlib_stream", _png_flipped_bits, _E + r"(truncated|corrupt).*PNG", "bits.png"),
    # --- zero padding after a valid file (disk/transfer artefact): still the same image
    Hostile("png_trailing_zero_padding", _trailing_zeros(lambda: png_bytes(noise_image())), LOADS, "padded.png"),
    Hostile("jpeg_trailing_zero_padding", _trailing_zeros(lambda: jpeg_bytes(noise_image())), LOADS, "padded.jpg"),
    # --- other formats under an image name
    Hostile(
        "pdf_named_dcm",
        lambda: b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n",
        _E + _NOT_IMAGE + r".*PDF document",
        "scan.dcm",
    ),
    Hostile("zip_named_png", _zip_bytes, _E + _NOT_IMAGE + r".*ZIP archive", "scan.png"),
    Hostile(
        "html_named_dcm",
        lambda: b"<!DOCTYPE html>\n<html><body><form>PACS login</form></body></html>\n",
        _E + _NOT_IMAGE + r".*HTML page",
        "study.dcm",
    ),
    Hostile("gif_named_png", _gif_bytes, _E + _NOT_IMAGE + r".*GIF", "scan.png"),
    Hostile(
        "jpeg2000_named_jpg",
        lambda: b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\0" * 200,
        _E + _NOT_IMAGE + r".*JPEG 2000",
        "scan.jpg",
    ),
    Hostile("csv_named_png", lambda: b"image,age\nscan.png,40\n", _E + _NOT_IMAGE + r".*text", "table.png"),
    Hostile("gzip_named_dcm", lambda: b"\x1f\x8b\x08\x00" + b"\0" * 100, _E + _NOT_IMAGE + r".*gzip", "scan.dcm"),
    # --- DICOM without usable pixel data / with lying headers
    Hostile("dicom_sr_no_pixel_data", _sr_dicom, _E + r"no pixel data.*Basic Text SR", "report.dcm"),
    Hostile(
        "dicom_image_without_pixel_data",
        lambda: dicom_bytes(omit_pixel_data=True),
        _E + r"declares an image.*no pixel data",
        "nopix.dcm",
    ),
    Hostile("dicom_float_pixel_data", _float_dicom, _E + r"float pixel data.*not supported", "float.dcm"),
    Hostile(
        "dicom_bits_stored_gt_allocated",
        lambda: dicom_bytes(gray_pixels(hi=255).astype(np.uint8), BitsStored=12, HighBit=11),
        _E + r"DICOM.*(bits|Bits)",
        "bits.dcm",
    ),
    Hostile("dicom_bits_stored_zero", lambda: dicom_bytes(BitsStored=0, HighBit=0), _E + r"DICOM.*(bits|Bits)", "bits0.dcm"),
    Hostile(
        "dicom_pixel_data_short", lambda: dicom_bytes(Rows=128, Columns=128), _E + r"truncated DICOM pixel data", "short.dcm"
    ),
    Hostile("dicom_pixel_data_long", lambda: dicom_bytes(Rows=32, Columns=64), LOADS, "long.dcm"),
    Hostile("dicom_frames_declared_not_present", lambda: dicom_bytes(NumberOfFrames=1000), _E + r"truncated", "frames.dcm"),
    Hostile("dicom_zero_rows", lambda: dicom_bytes(Rows=0), _E + r"empty size|0x|no Rows", "rows0.dcm"),
    Hostile(
        "dicom_huge_dimensions",
        lambda: dicom_bytes(Rows=60000, Columns=60000),
        _E + r"too large: 60000x60000 = 3,600,000,000 pixels",
        "huge.dcm",
    ),
    Hostile("dicom_mpeg2_transfer_syntax", _mpeg2_dicom, _E + r"unsupported DICOM transfer syntax: MPEG2", "video.dcm"),
    Hostile(
        "dicom_private_transfer_syntax",
        _private_ts_dicom,
        _E + r"unsupported DICOM transfer syntax: 1\.2\.3\.4\.5\.6\.7\.8\.9\.0",
        "private.dcm",
    ),
    Hostile("dicom_unknown_photometric", lambda: dicom_bytes(photometric="HSV"), _E + r"unsupported DICOM", "hsv.dcm"),
    Hostile(
        "dicom_palette_without_lut",
        lambda: dicom_bytes(gray_pixels(hi=255).astype(np.uint8), photometric="PALETTE COLOR"),
        _E + _DICOM_SPECIFIC,
        "palette.dcm",
    ),
    Hostile("dicom_nested_sequence_bomb", _nested_sequence_bomb, _E + _DICOM_SPECIFIC, "nested.dcm"),
    Hostile(
        "dicom_rescale_overflow",
        lambda: dicom_bytes(RescaleSlope="1e308", RescaleIntercept="1e308"),
        _E + r"NaN or infinite",
        "slope.dcm",
    ),
    # --- valid but odd DICOM: must load
    Hostile("dicom_rgb", _rgb_dicom, LOADS, "rgb.dcm"),
    Hostile("dicom_ybr_full_422_jpeg", _ybr_422_jpeg_dicom, LOADS, "ybr.dcm"),
    Hostile("dicom_multiframe", _multiframe_dicom, LOADS, "cine.dcm"),
    Hostile(
        "dicom_signed_16bit", lambda: dicom_bytes((gray_pixels().astype(np.int32) - 2048).astype(np.int16)), LOADS, "signed.dcm"
    ),
    Hostile("dicom_no_preamble", lambda: dicom_bytes(preamble=False), LOADS, "raw.dcm"),
    Hostile("dicom_deflated", lambda: dicom_bytes(transfer_syntax="1.2.840.10008.1.2.1.99"), LOADS, "deflate.dcm"),
    Hostile("dicom_bad_window_width", lambda: dicom_bytes(WindowCenter="100", WindowWidth="-5"), LOADS, "window.dcm"),
    # --- PNG / JPEG: odd but valid, and size attacks
    Hostile("png_16bit", _png_16bit, LOADS, "deep.png"),
    Hostile("png_palette", _png_palette, LOADS, "palette.png"),
    Hostile("png_rgba", lambda: png_bytes(noise_image("RGBA", seed=11)), LOADS, "alpha.png"),
    Hostile("jpeg_cmyk", _jpeg_cmyk, LOADS, "cmyk.jpg"),
    Hostile("png_1x1", lambda: png_bytes(Image.new("L", (1, 1), 128)), _E + r"too small: 1x1", "dot.png"),
    Hostile("png_100000x10", _png_wide, _E + r"too small: 100000x10", "strip.png"),
    Hostile("png_decompression_bomb", _png_bomb, _E + r"too large: 8000x8000 = 64,000,000 pixels", "bomb.png"),
    Hostile("jpeg_decompression_bomb", lambda: _jpeg_declared(65000, 65000), _E + r"too large", "bomb.jpg"),
    Hostile(
        "jpeg_declared_9000x9000", lambda: _jpeg_declared(9000, 9000), _E + r"too large: 9000x9000 = 81,000,000 pixels", "big.jpg"
    ),
    Hostile("png_text_chunk_bomb", _png_text_bomb, _E + r"(corrupt|truncated).*PNG file", "text.png"),
    Hostile(
        "png_declared_zero_width",
        lambda: _png_raw(0, 64, zlib.compress(b"\0" * 64)),
        _E + r"empty size|too small|corrupt",
        "zero.png",
    ),
]

# ----------------------------------------------------------------------------- rows

GOOD = "<good>"  # placeholder: a good synthetic image written by the test

ROW_CORPUS: list[HostileRow] = [
    HostileRow("age_nan_is_missing", {"image": GOOD, "age": "NaN"}, LOADS),  # pandas' NA marker: imputed
    HostileRow("age_negative", {"image": GOOD, "age": "-3"}, r"age '-3' is outside 0-120 years"),
    HostileRow("age_200", {"image": GOOD, "age": "200"}, r"age '200' is outside 0-120 years"),
    HostileRow("age_infinite", {"image": GOOD, "age": "inf"}, r"age 'inf' is outside 0-120 years"),
    HostileRow("age_text", {"image": GOOD, "age": "forty"}, r"age 'forty' is not a number"),
    HostileRow("sex_unknown", {"image": GOOD, "sex": "X"}, r"sex 'X' is not M or F"),
    HostileRow("sex_unknown_word", {"image": GOOD, "sex": "unknown"}, r"sex 'unknown' is not M or F"),
    HostileRow("site_unknown", {"image": GOOD, "site": "skull"}, r"site 'skull' is not appendicular or axial"),
    HostileRow(
        "roi_outside_image",
        {"image": GOOD, "roi_x0": 500, "roi_y0": 500, "roi_x1": 600, "roi_y1": 600},
        r"lies entirely outside the 96x96 image",
    ),
    HostileRow(
        "roi_zero_area", {"image": GOOD, "roi_x0": 10, "roi_y0": 10, "roi_x1": 10, "roi_y1": 40}, r"zero or negative area"
    ),
    HostileRow("roi_inverted", {"image": GOOD, "roi_x0": 60, "roi_y0": 60, "roi_x1": 20, "roi_y1": 20}, r"zero or negative area"),
    HostileRow("roi_incomplete", {"image": GOOD, "roi_x0": 10, "roi_y0": 10}, r"ROI is incomplete"),
    HostileRow(
        "roi_not_a_number",
        {"image": GOOD, "roi_x0": "left", "roi_y0": 1, "roi_x1": 30, "roi_y1": 30},
        r"roi_x0 'left' is not a number",
    ),
    HostileRow(
        "roi_infinite",
        {"image": GOOD, "roi_x0": 0, "roi_y0": 0, "roi_x1": "inf", "roi_y1": 30},
        r"roi_x1 'inf' is not a finite number",
    ),
    HostileRow("path_traversal_relative", {"image": "../../etc/passwd"}, r"not found|not a DICOM, PNG or JPEG"),
    HostileRow("path_traversal_to_etc_passwd", {"image": "../" * 40 + "etc/passwd"}, r"passwd: not a DICOM, PNG or JPEG image"),
    HostileRow("path_absolute_device", {"image": "/dev/zero"}, r"not a regular file"),
    HostileRow("path_is_a_folder", {"image": "."}, r"not a regular file"),
    HostileRow("path_missing_file", {"image": "images/nope.png"}, r"image file not found"),
    HostileRow("path_empty", {"image": ""}, r"image path is empty"),
    HostileRow(
        "several_problems_at_once",
        {"image": GOOD, "age": "200", "sex": "X", "site": "skull"},
        r"age '200'.*; sex 'X'.*; site 'skull'",
    ),
]

# ----------------------------------------------------------------------------- whole tables


def _good_csv() -> str:
    return "image,age,sex,site\nimages/a.png,40,F,axial\n"


TABLE_CORPUS: list[HostileTable] = [
    HostileTable("csv_utf16", lambda: _good_csv().encode("utf-16"), r"not a UTF-8 or Latin-1 text CSV"),
    HostileTable("csv_empty", lambda: b"", r"is empty"),
    HostileTable(
        "csv_missing_image_column", lambda: b"path_to_file,age\nimages/a.png,40\n", r"missing required column\(s\): image"
    ),
    HostileTable(
        "csv_partial_roi_columns",
        lambda: b"image,roi_x0,roi_y0\nimages/a.png,1,2\n",
        r"has ROI column\(s\) roi_x0, roi_y0 but not roi_x1, roi_y1",
    ),
    HostileTable("csv_binary_garbage", lambda: png_bytes(noise_image()), r"not a UTF-8 or Latin-1 text CSV"),
    HostileTable(
        "csv_ragged_rows",
        lambda: b'image,age\n"images/a.png,40\nimages/b.png,1,2,3\n',
        r"cannot parse case table|missing required|not found",
    ),
]

if __name__ == "__main__":  # quick look: python tests/hostile.py
    for entry in IMAGE_CORPUS:
        print(f"{entry.kind:<40} {len(entry.build()):>8} bytes")
