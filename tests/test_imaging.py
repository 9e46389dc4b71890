"""Tests for model_zoo.imaging: DICOM/PNG/JPEG loading, windowing, refusals.

Expected values are computed independently of the loader: windows with the PS3.3 piecewise
formula written out case by case, luminance with hard-coded BT.601 weights, RG3 from
pydicom's own ``pixel_array``.
"""

from __future__ import annotations

import csv
import io
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from hostile import dicom_bytes, png_bytes
from hostile import jpeg_bytes as hostile_jpeg_bytes
from model_zoo.errors import InputError
from model_zoo.imaging import (
    ImageMeta,
    LoadedImage,
    apply_window,
    image_hash,
    load_image,
    parse_dicom_age,
    to_uint8,
    window_presets,
)

RG3_SIZE = 1760


# ----------------------------------------------------------------------------- helpers


def window_reference(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window, written case by case, output in [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    lower = c - 0.5 - (w - 1) / 2
    upper = c - 0.5 + (w - 1) / 2
    ramp = ((x - (c - 0.5)) / (w - 1) + 0.5) * (1.0 - 0.0) + 0.0
    return np.select([x <= lower, x > upper], [0.0, 1.0], default=ramp)


def luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def make_dicom(pixels: np.ndarray, *, bits_stored: int | None = None, **kwargs) -> bytes:
    """A Secondary Capture DICOM holding ``pixels`` (``hostile.dicom_bytes``), BitsStored =
    BitsAllocated unless given."""
    arr = np.asarray(pixels)
    return dicom_bytes(arr, bits_stored=bits_stored or (8 if arr.dtype == np.uint8 else 16), **kwargs)


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    return hostile_jpeg_bytes(img, **{"quality": 95, **kwargs})


def ramp(h: int = 48, w: int = 64, hi: int = 4095) -> np.ndarray:
    """A 2-D uint16 ramp with distinct rows (so flips and frame mix-ups show)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 37 + yy * 11) % (hi + 1)).astype(np.uint16)


# ----------------------------------------------------------------------------- RG3


@pytest.fixture(scope="module")
def rg3(rg3_paths) -> dict[str, LoadedImage]:
    """Each RG3 variant loaded once (decoding 1760^2 J2K is the slow part of this file)."""
    paths = dict(rg3_paths)
    # RG3_UNCI ships in pydicom-data too, but the shared fixture does not list it.
    unci = pydicom.data.get_testdata_file("RG3_UNCI.dcm")
    if unci is not None:
        paths.setdefault("RG3_UNCI.dcm", Path(unci))
    return {name: load_image(path) for name, path in paths.items()}


def test_rg3_all_variants_shape_range_and_meta(rg3):
    assert {"RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"} <= set(rg3)
    for name, img in rg3.items():
        assert img.pixels.shape == (RG3_SIZE, RG3_SIZE), name
        assert img.pixels.dtype == np.float32
        assert 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0
        m = img.meta
        assert m.source_format == "dicom"
        assert m.original_size == (RG3_SIZE, RG3_SIZE)
        assert m.photometric == "MONOCHROME1"
        assert m.bits_stored == 10
        assert m.window == (550.0, 1024.0)
        assert m.sex == "F"
        assert m.body_part == "EXTREMITY"
        assert m.display_tags["Modality"] == "CR"
        assert m.display_tags["Rows"] == str(RG3_SIZE)


def test_rg3_display_tags_never_identify_the_patient(rg3_paths):
    ds = pydicom.dcmread(rg3_paths["RG3_UNCR.dcm"])
    meta = load_image(rg3_paths["RG3_UNCR.dcm"]).meta
    identifying = [
        str(ds.get(k))
        for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName")
        if ds.get(k)
    ]
    assert identifying, "RG3 should carry some identifying tags for this test to bite"
    shown = " ".join(list(meta.display_tags) + list(meta.display_tags.values()))
    for value in identifying:
        assert value not in shown


def test_rg3_monochrome1_matches_manual_reference(rg3_paths, rg3):
    ds = pydicom.dcmread(rg3_paths["RG3_UNCR.dcm"])
    raw = ds.pixel_array.astype(np.float64)
    # Header window, then MONOCHROME1 inversion (low stored value = bright).
    expected = 1.0 - window_reference(raw, float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_allclose(rg3["RG3_UNCR.dcm"].pixels, expected, atol=1e-6)
    # The stored minimum is the brightest display value.
    assert rg3["RG3_UNCR.dcm"].pixels[raw == raw.min()].min() == pytest.approx(1.0)


def test_rg3_lossless_variants_equal_uncompressed(rg3):
    np.testing.assert_array_equal(rg3["RG3_J2KR.dcm"].pixels, rg3["RG3_UNCR.dcm"].pixels)
    # RG3_UNCI is the lossy J2KI image stored uncompressed: equal to J2KI, not to UNCR.
    if "RG3_UNCI.dcm" in rg3 and "RG3_J2KI.dcm" in rg3:
        np.testing.assert_array_equal(rg3["RG3_UNCI.dcm"].pixels, rg3["RG3_J2KI.dcm"].pixels)


def test_rg3_lossy_variant_close_to_uncompressed(rg3):
    if "RG3_J2KI.dcm" not in rg3:
        pytest.skip("RG3_J2KI.dcm is not installed")
    diff = np.abs(rg3["RG3_J2KI.dcm"].pixels - rg3["RG3_UNCR.dcm"].pixels)
    assert diff.mean() < 0.02
    assert np.corrcoef(rg3["RG3_J2KI.dcm"].pixels.ravel(), rg3["RG3_UNCR.dcm"].pixels.ravel())[0, 1] > 0.99


def test_bytes_and_file_object_equal_path_input(rg3_paths, rg3):
    path = rg3_paths["RG3_UNCR.dcm"]
    data = path.read_bytes()
    from_bytes = load_image(data)
    with open(path, "rb") as fh:
        from_file = load_image(fh)
    np.testing.assert_array_equal(from_bytes.pixels, rg3["RG3_UNCR.dcm"].pixels)
    np.testing.assert_array_equal(from_file.pixels, rg3["RG3_UNCR.dcm"].pixels)
    assert from_bytes.meta.window == rg3["RG3_UNCR.dcm"].meta.window
    assert image_hash(from_bytes.pixels) == image_hash(rg3["RG3_UNCR.dcm"].pixels)


# ----------------------------------------------------------------------------- DICOM


def _testdata(name: str) -> Path:
    path = pydicom.data.get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


@pytest.mark.parametrize(
    ("name", "reference", "max_abs"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm", 0.0),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", 0.0),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm", 0.0),
        ("SC_rgb_rle.dcm", "SC_rgb.dcm", 0.0),
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm", 0.0),  # JPEG lossless, RGB
        ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb.dcm", 0.02),  # JPEG baseline, YBR_FULL
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb.dcm", 0.04),  # JPEG baseline, YBR_FULL_422
    ],
)
def test_real_compressed_dicoms_match_uncompressed(name, reference, max_abs):
    got = load_image(_testdata(name)).pixels
    ref = load_image(_testdata(reference)).pixels
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= max_abs + 1e-7


def test_real_ybr_rct_and_palette_dicoms_against_pydicom_rgb():
    ds = pydicom.dcmread(_testdata("US1_J2KR.dcm"))  # JPEG 2000 lossless, YBR_RCT
    np.testing.assert_allclose(load_image(_testdata("US1_J2KR.dcm")).pixels, luma(ds.pixel_array) / 255.0, atol=1e-5)
    ds = pydicom.dcmread(_testdata("OBXXXX1A.dcm"))  # PALETTE COLOR, 16-bit LUT entries
    rgb = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    img = load_image(_testdata("OBXXXX1A.dcm"))
    np.testing.assert_allclose(img.pixels, luma(rgb) / 65535.0, atol=1e-5)
    assert img.meta.photometric == "PALETTE COLOR"


def test_monochrome1_is_inverse_of_monochrome2_with_minmax():
    arr = ramp()
    m2 = load_image(make_dicom(arr, bits_stored=12)).pixels
    m1 = load_image(make_dicom(arr, bits_stored=12, photometric="MONOCHROME1")).pixels
    expected = (arr - arr.min()) / (arr.max() - arr.min())  # no window in header: min-max
    np.testing.assert_allclose(m2, expected, atol=1e-6)
    np.testing.assert_allclose(m1, 1.0 - expected, atol=1e-6)


def test_header_window_applied_with_first_value_of_multivalued():
    arr = ramp()
    img = load_image(make_dicom(arr, bits_stored=12, WindowCenter=[2048, 100], WindowWidth=[1000, 50]))
    np.testing.assert_allclose(img.pixels, window_reference(arr, 2048, 1000), atol=1e-6)
    assert img.meta.window == (2048.0, 1000.0)
    assert img.meta.display_tags["WindowCenter"] == "2048"
    # Both clipped ends are reached, so a window that was silently skipped would show.
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0


def test_rescale_slope_intercept_applied_before_window():
    arr = ramp(hi=1023)
    img = load_image(
        make_dicom(
            arr,
            bits_stored=12,
            RescaleSlope=2,
            RescaleIntercept=-1024,
            WindowCenter=0,
            WindowWidth=800,
        )
    )
    hu = arr.astype(np.float64) * 2 - 1024
    np.testing.assert_allclose(img.pixels, window_reference(hu, 0, 800), atol=1e-6)
    # Sanity: without the rescale the result would differ substantially.
    assert np.abs(img.pixels - window_reference(arr, 0, 800)).mean() > 0.1


def test_voi_lut_sequence_applied():
    arr = ramp()
    table = np.round(np.sqrt(np.arange(4096) / 4095) * 4095).astype(int)
    ds_bytes = make_dicom(arr, bits_stored=12)
    ds = pydicom.dcmread(io.BytesIO(ds_bytes))
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new(0x00283006, "US", [int(v) for v in table])  # LUTData
    ds.VOILUTSequence = [item]
    out = io.BytesIO()
    ds.save_as(out)
    img = load_image(out.getvalue())
    np.testing.assert_allclose(img.pixels, table[arr] / 4095.0, atol=1e-6)
    assert img.meta.window is None


def test_multiframe_uses_first_frame_with_warning():
    frames = np.stack([ramp(), 4095 - ramp(), np.full((48, 64), 7, np.uint16)])
    img = load_image(make_dicom(frames, bits_stored=12, frames=3))
    assert img.pixels.shape == (48, 64)
    first = frames[0]
    np.testing.assert_allclose(img.pixels, (first - first.min()) / np.ptp(first), atol=1e-6)
    assert "multi-frame: first of 3 frames used" in img.meta.warnings


@pytest.mark.parametrize("planar", [0, 1])
def test_rgb_dicom_to_luminance(planar):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    data = rgb.transpose(2, 0, 1).tobytes() if planar else rgb.tobytes()
    img = load_image(make_dicom(rgb, photometric="RGB", pixel_data=data, PlanarConfiguration=planar))
    np.testing.assert_allclose(img.pixels, luma(rgb) / 255.0, atol=1e-5)
    assert "colour image converted to grayscale" in img.meta.warnings
    assert img.meta.photometric == "RGB"


def test_ybr_full_dicom_converted_to_rgb_first():
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[:, 24:, 1] = 150
    rgb[20:, :, 2] = 90
    ybr = pydicom.pixels.convert_color_space(rgb, "RGB", "YBR_FULL")
    img = load_image(make_dicom(ybr, photometric="YBR_FULL"))
    np.testing.assert_allclose(img.pixels, luma(rgb) / 255.0, atol=1.5 / 255)
    assert img.meta.photometric == "YBR_FULL"
    assert "colour image converted to grayscale" in img.meta.warnings


def test_ybr_full_422_jpeg_baseline_dicom():
    # A real encapsulated JPEG (Pillow writes YCbCr): the decoder hands back YBR, we convert.
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 220
    rgb[:, 32:, 1] = 180
    rgb[32:, :, 2] = 60
    frame = jpeg_bytes(Image.fromarray(rgb), subsampling=0)
    data = make_dicom(
        rgb,
        photometric="YBR_FULL_422",
        transfer_syntax=JPEGBaseline8Bit,
        pixel_data=encapsulate([frame]),
    )
    img = load_image(data)
    assert img.meta.transfer_syntax == "JPEG Baseline (Process 1)"
    assert np.abs(img.pixels - luma(rgb) / 255.0).mean() < 0.02
    # Reading the YBR samples as if they were RGB would be far off:
    ybr = pydicom.pixels.convert_color_space(rgb, "RGB", "YBR_FULL")
    assert np.abs(img.pixels - luma(ybr) / 255.0).mean() > 0.05


def test_dicom_without_pixel_data_refused():
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    expected = r"^report\.dcm: DICOM file has no pixel data.*Basic Text SR"
    with pytest.raises(InputError, match=expected):
        load_image(out.getvalue(), name="report.dcm")


def test_truncated_dicom_refused():
    data = make_dicom(ramp(), bits_stored=12)
    with pytest.raises(InputError, match="truncated"):
        load_image(data[: len(data) - 1000])
    # Cut inside the header, before the pixel data element.
    with pytest.raises(InputError, match="truncated|no pixel data"):
        load_image(data[:400])


@pytest.mark.parametrize(
    ("uid", "label"),
    [
        ("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100)"),
        ("1.2.3.4.5.6.7.8.9.0", "1.2.3.4.5.6.7.8.9.0 (unknown or private UID)"),
    ],
)
def test_unsupported_transfer_syntax_named(uid, label):
    if uid.startswith("1.2.840.10008."):  # a standard, encapsulated syntax
        data = make_dicom(ramp(), transfer_syntax=uid, pixel_data=encapsulate([b"\0" * 64]))
    else:
        # pydicom will not write an unknown syntax: patch a same-length UID into the meta.
        data = make_dicom(ramp()).replace(b"1.2.840.10008.1.2.1\0", uid.encode() + b"\0", 1)
    with pytest.raises(InputError) as err:
        load_image(data, name="odd.dcm")
    assert str(err.value) == f"odd.dcm: unsupported DICOM transfer syntax: {label}"


def test_dicom_without_preamble_and_without_file_meta():
    arr = ramp()
    ds = pydicom.dcmread(io.BytesIO(make_dicom(arr, bits_stored=12)))
    ds.preamble = None
    no_preamble = io.BytesIO()
    pydicom.dcmwrite(no_preamble, ds, enforce_file_format=False)
    assert no_preamble.getvalue()[128:132] != b"DICM"
    del ds.file_meta
    raw = io.BytesIO()
    pydicom.dcmwrite(raw, ds, implicit_vr=True, little_endian=True)
    expected = (arr - arr.min()) / np.ptp(arr)
    for data, ts in [(no_preamble.getvalue(), "Explicit VR Little Endian"), (raw.getvalue(), "Implicit VR Little Endian")]:
        img = load_image(data)
        assert img.meta.transfer_syntax == ts
        np.testing.assert_allclose(img.pixels, expected, atol=1e-6)


def test_dicom_size_limits_checked_before_decoding():
    # Header declares 10000 x 10000 but carries only a few bytes: refused as too large,
    # not as truncated, i.e. the decoder was never asked.
    data = make_dicom(ramp(), pixel_data=b"\0" * 128, Rows=10000, Columns=10000)
    with pytest.raises(InputError, match=r"too large: 10000x10000 = 100,000,000 pixels"):
        load_image(data)
    with pytest.raises(InputError, match=r"too small: 8x8 pixels"):
        load_image(make_dicom(np.zeros((8, 8), np.uint16)))


def test_dicom_age_sex_spacing_and_constant_warning():
    data = make_dicom(
        np.full((40, 40), 100, np.uint16),
        PatientAge="006M",
        PatientSex="M",
        ImagerPixelSpacing=[0.15, 0.2],
        BodyPartExamined="KNEE",
        PatientName="Doe^Jane",
        PatientID="ID-98765",
    )
    img = load_image(data)
    m = img.meta
    assert m.age == pytest.approx(0.5)
    assert m.sex == "M"
    assert m.pixel_spacing == (0.15, 0.2)
    assert m.body_part == "KNEE"
    assert any(w.startswith("constant image") for w in m.warnings)
    assert np.all(img.pixels == 0.0)
    shown = repr(m.display_tags)
    assert "Doe" not in shown and "98765" not in shown


def test_non_finite_after_rescale_refused():
    data = make_dicom(ramp(), bits_stored=12, RescaleSlope="1e308", RescaleIntercept=0)
    with pytest.raises(InputError, match="NaN or infinite"):
        load_image(data)


@pytest.mark.parametrize(
    ("text", "years"),
    [
        ("045Y", 45.0),
        ("006M", 0.5),
        ("010W", 70 / 365.25),
        ("003D", 3 / 365.25),
        ("45Y", 45.0),
        ("", None),
        ("abc", None),
        (None, None),
        ("045X", None),
    ],
)
def test_parse_dicom_age(text, years):
    if years is None:
        assert parse_dicom_age(text) is None
    else:
        assert parse_dicom_age(text) == pytest.approx(years)


# ----------------------------------------------------------------------------- windowing


def test_apply_window_matches_ps33_formula_and_boundaries():
    c, w = 40.0, 400.0
    x = np.linspace(-400, 400, 2001)
    np.testing.assert_allclose(apply_window(x, c, w), window_reference(x, c, w), atol=1e-6)
    lower, upper = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    assert apply_window(np.array([lower]), c, w)[0] == 0.0
    assert apply_window(np.array([upper]), c, w)[0] == pytest.approx(1.0)
    assert apply_window(np.array([c - 0.5]), c, w)[0] == pytest.approx(0.5)
    # width 1 is a threshold at c - 0.5
    np.testing.assert_array_equal(apply_window(np.array([39.0, 39.5, 40.0]), c, 1), [0, 0, 1])
    assert apply_window(x, c, w).dtype == np.float32
    with pytest.raises(InputError, match="width"):
        apply_window(x, c, 0.5)


def test_apply_window_other_functions():
    x = np.array([-100.0, 0.0, 25.0, 100.0])
    np.testing.assert_allclose(apply_window(x, 0, 100, function="LINEAR_EXACT"), [0.0, 0.5, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(apply_window(x, 0, 100, function="SIGMOID"), 1 / (1 + np.exp(-4 * x / 100)), atol=1e-6)


# ----------------------------------------------------------------------------- PNG / JPEG


def test_16bit_png_values_preserved():
    # Deliberately not spanning 0..65535, so min-max stretching would be caught.
    arr = ramp(hi=40000) + 100
    arr[0, :3] = [100, 101, 32768]
    img = load_image(png_bytes(Image.fromarray(arr)))
    assert img.meta.source_format == "png"
    assert img.meta.bits_stored == 16
    np.testing.assert_array_equal(np.rint(img.pixels.astype(np.float64) * 65535), arr)


def test_8bit_png_scaled_by_255_not_stretched():
    arr = np.full((40, 40), 50, np.uint8)
    arr[:20] = 100
    img = load_image(png_bytes(Image.fromarray(arr)))
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-7)
    assert img.meta.photometric == "L" and img.meta.warnings == ()


def test_palette_png():
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12)
    idx = (np.arange(48 * 64).reshape(48, 64) // 17 % 4).astype(np.uint8)
    pimg = Image.fromarray(idx, mode="P")
    pimg.putpalette(palette)
    img = load_image(png_bytes(pimg))
    colours = np.array(palette[:12]).reshape(4, 3)
    np.testing.assert_allclose(img.pixels, luma(colours[idx]) / 255.0, atol=1e-6)
    assert img.meta.photometric == "P"
    assert "colour image converted to grayscale" in img.meta.warnings


def test_rgba_png_composited_on_black():
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, size=(40, 40, 4), dtype=np.uint8)
    img = load_image(png_bytes(Image.fromarray(rgba, mode="RGBA")))
    expected = luma(rgba[..., :3]) * (rgba[..., 3] / 255.0) / 255.0
    np.testing.assert_allclose(img.pixels, expected, atol=1e-5)
    assert "transparent pixels composited on black" in img.meta.warnings


def test_la_png_composited_on_black():
    la = np.zeros((40, 40, 2), np.uint8)
    la[..., 0] = 200
    la[..., 1] = 255
    la[:, :20, 1] = 0  # left half fully transparent
    img = load_image(png_bytes(Image.fromarray(la, mode="LA")))
    np.testing.assert_allclose(img.pixels[:, :20], 0.0, atol=1e-6)
    np.testing.assert_allclose(img.pixels[:, 20:], 200 / 255, atol=1e-6)


def test_grey_rgb_png_has_no_colour_warning():
    grey = np.repeat(ramp(hi=255).astype(np.uint8)[..., None], 3, axis=2)
    img = load_image(png_bytes(Image.fromarray(grey)))
    np.testing.assert_allclose(img.pixels, grey[..., 0] / 255.0, atol=1e-5)
    assert img.meta.warnings == ()


def test_cmyk_jpeg():
    cmyk = np.zeros((48, 64, 4), np.uint8)
    cmyk[:, 32:, 3] = 255  # right half: full black ink
    img = load_image(jpeg_bytes(Image.fromarray(cmyk, mode="CMYK")))
    assert img.meta.source_format == "jpeg" and img.meta.photometric == "CMYK"
    assert img.pixels[:, :24].mean() > 0.95  # no ink = white
    assert img.pixels[:, 40:].mean() < 0.05  # black ink = black
    assert any("CMYK" in w for w in img.meta.warnings)


def test_exif_orientation_6_rotates_shape_and_content():
    stored = np.zeros((32, 64), np.uint8)  # H=32, W=64
    stored[:8, :] = 255  # bright band along the stored top edge
    stored[:, :8] = 128  # grey band along the stored left edge
    pil = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img = load_image(jpeg_bytes(pil, exif=exif.tobytes()))
    assert img.meta.original_size == (64, 32)
    assert img.pixels.shape == (64, 32)
    expected = np.rot90(stored, k=-1) / 255.0  # clockwise: stored top edge -> right edge
    assert np.abs(img.pixels - expected).mean() < 0.03
    assert img.pixels[20:, -4:].mean() > 0.9  # top band now on the right
    assert any("EXIF orientation 6" in w for w in img.meta.warnings)


# ----------------------------------------------------------------------------- refusals


def test_tiny_image_refused_with_name():
    with pytest.raises(InputError, match=r"^tiny\.png: image too small: 8x8 pixels"):
        load_image(png_bytes(Image.new("L", (8, 8))), name="tiny.png")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_pixel_budget_refused_from_png_header_before_decoding():
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)  # the header only, no pixels
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"too large: 100000x100000 = 10,000,000,000 pixels"):
        load_image(data, name="bomb.png")
    assert time.perf_counter() - start < 0.5


def test_pixel_budget_applies_to_jpeg_and_custom_limits():
    data = jpeg_bytes(Image.new("L", (64, 64), 128))
    with pytest.raises(InputError, match="too large: 64x64 = 4,096 pixels"):
        load_image(data, max_pixels=4000)
    with pytest.raises(InputError, match="too small"):
        load_image(data, min_side=65)
    assert load_image(data, max_pixels=4096, min_side=64).pixels.shape == (64, 64)


def test_empty_input_refused():
    with pytest.raises(InputError, match=r"^x\.png: empty file"):
        load_image(b"", name="x.png")
    with pytest.raises(InputError, match="empty file"):
        load_image(io.BytesIO(b""))


def test_missing_path_and_text_mode_refused(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="folder"):
        load_image(tmp_path)
    (tmp_path / "a.txt").write_text("hello")
    with open(tmp_path / "a.txt") as fh, pytest.raises(InputError, match="text mode"):
        load_image(fh)


def test_truncated_png_and_jpeg_refused():
    rng = np.random.default_rng(2)
    noise = Image.fromarray(rng.integers(0, 256, size=(64, 64), dtype=np.uint8))
    png = png_bytes(noise)
    with pytest.raises(InputError, match=r"^cut\.png: (truncated|corrupt)"):
        load_image(png[: len(png) // 2], name="cut.png")
    with pytest.raises(InputError, match="truncated or corrupt PNG"):
        load_image(png[:20])  # signature and part of IHDR
    jpg = jpeg_bytes(noise)
    with pytest.raises(InputError, match="(truncated|corrupt) JPEG"):
        load_image(jpg[: len(jpg) // 2])


def test_non_image_files_named():
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("a.txt", "x")
    cases = {
        b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n": "PDF document",
        zbuf.getvalue(): "ZIP archive",
        b"  <!DOCTYPE html><html><body>login</body></html>": "HTML page",
        b"GIF89a" + b"\0" * 40: "GIF image",
    }
    for data, what in cases.items():
        with pytest.raises(InputError) as err:
            load_image(data, name="upload.bin")
        msg = str(err.value)
        assert msg.startswith("upload.bin: not a DICOM, PNG or JPEG image"), msg
        assert what in msg and "\n" not in msg
    with pytest.raises(InputError, match="unrecognised content starting ff 00 ee"):
        load_image(b"\xff\x00\xee\x01" + bytes(range(200)))


def test_garbage_after_dicom_like_group_is_not_accepted():
    # Starts like a preamble-less dataset (group 0008) but has no pixel data.
    with pytest.raises(InputError, match="not a DICOM, PNG or JPEG image"):
        load_image(b"\x08\x00\x16\x00" + bytes(range(100)) * 3)


# ----------------------------------------------------------------------------- helpers API


def test_image_hash_and_to_uint8():
    a = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    assert image_hash(a) == image_hash(a.astype(np.float64))
    assert image_hash(a) == image_hash(np.asfortranarray(a))
    assert image_hash(a) != image_hash(a.reshape(64, 48))
    b = a.copy()
    b[3, 5] += 1e-6
    assert image_hash(a) != image_hash(b)
    np.testing.assert_array_equal(to_uint8(np.array([0.0, 0.5, 1.0, -1.0, 2.0])), [0, 128, 255, 0, 255])
    assert to_uint8(a).dtype == np.uint8
    with pytest.raises(InputError):
        to_uint8(np.array([np.nan]))


def test_meta_is_frozen():
    img = load_image(png_bytes(Image.new("L", (40, 40), 7)))
    assert isinstance(img.meta, ImageMeta)
    with pytest.raises(AttributeError):
        img.meta.age = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------- window presets


def _three_tissues(rng: np.random.Generator, n: int = 20_000) -> np.ndarray:
    """Values like a radiograph in 0-255 units: 10 % air (~20), 45 % soft tissue (~100), 45 % bone (~200)."""
    return np.concatenate([rng.normal(20, 3, n // 10), rng.normal(100, 10, n * 45 // 100), rng.normal(200, 10, n * 45 // 100)])


def test_window_presets_follow_the_image_values():
    v = _three_tissues(np.random.default_rng(0))
    presets = {p.name: p for p in window_presets(v)}
    assert list(presets) == ["Full range", "Bone", "Soft tissue"]
    full = presets["Full range"]
    assert full.center == pytest.approx((v.min() + v.max()) / 2) and full.width == pytest.approx(np.ptp(v))
    bone, soft = presets["Bone"], presets["Soft tissue"]
    # Bone: a window on the bright cluster, starting above the soft-tissue mean.
    assert 100 < bone.center - bone.width / 2 < 200 <= bone.center + bone.width / 2
    # Soft tissue: covers the soft-tissue cluster and stops below the bone mean.
    assert soft.center - soft.width / 2 < 100 < soft.center + soft.width / 2 < 200
    assert bone.width < full.width and soft.width < full.width


def test_window_presets_ignore_clipped_pixels():
    """A collimated CR clips ~half its pixels at one value (RG3: 44 %); the presets must not
    collapse onto it."""
    v = _three_tissues(np.random.default_rng(1))
    clipped = np.concatenate([v, np.full(v.size, 255.0)])
    plain = {p.name: p for p in window_presets(v)}
    with_clip = {p.name: p for p in window_presets(clipped)}
    for name in ("Bone", "Soft tissue"):
        assert with_clip[name].center == pytest.approx(plain[name].center, abs=2.0), name
        assert with_clip[name].width == pytest.approx(plain[name].width, abs=4.0), name
    assert with_clip["Full range"].center + with_clip["Full range"].width / 2 == pytest.approx(255.0)


def test_window_presets_mirror_when_high_values_display_dark():
    v = _three_tissues(np.random.default_rng(2))
    bright = window_presets(v)
    dark = window_presets(-v, bright_is_high=False)  # MONOCHROME1-style units: bone has the low values
    for a, b in zip(bright, dark, strict=True):
        assert a.name == b.name and b.center == pytest.approx(-a.center) and b.width == pytest.approx(a.width)


def test_window_presets_of_a_flat_or_empty_image():
    assert all(p.width == 1.0 and p.center == 7.0 for p in window_presets(np.full((5, 5), 7.0)))
    with pytest.raises(InputError, match="empty"):
        window_presets(np.array([]))


# ----------------------------------------------------------------------------- BTXRD


@pytest.mark.btxrd
def test_real_btxrd_images(btxrd_dir):
    with open(btxrd_dir / "metadata.csv", newline="") as fh:
        rows = [row for _, row in zip(range(3), csv.DictReader(fh))]
    assert len(rows) == 3
    for row in rows:
        path = btxrd_dir / row["image"]
        img = load_image(path)
        assert img.pixels.shape == (256, 256)
        assert img.pixels.dtype == np.float32
        assert 0.0 <= img.pixels.min() < img.pixels.max() <= 1.0
        assert img.meta.source_format == "png"
        # Independent reference: Pillow's own 8-bit grey, scaled by 255.
        ref = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0
        np.testing.assert_allclose(img.pixels, ref, atol=1e-6)
