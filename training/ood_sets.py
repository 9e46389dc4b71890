"""Images that are NOT bone radiographs, assembled at run time from what is installed: the set
on which ``python -m training add-ood`` measures how often the OOD score catches them.

Nothing is downloaded and nothing is stored in the repository:

* DICOMs of other modalities and regions from pydicom-data (CT, MR, ultrasound, nuclear
  medicine, a chest CR, a segmentation, a face photo, a colour test pattern), found with
  ``pydicom.data.get_testdata_file``;
* photographs and sample pictures shipped in installed packages (scikit-learn's
  ``china.jpg`` / ``flower.jpg``, matplotlib's ``grace_hopper.jpg`` and sample images, elevation
  maps, an MR slice);
* documents rendered with ``cv2.putText`` and charts drawn with matplotlib (screenshots and
  scanned pages are a common wrong upload);
* synthetic images: noise, gradients, blank frames, patterns, shapes.

Every item is encoded as the file a user would upload (DICOM as is, PNG for generated images)
so it goes through ``imaging.load_image`` exactly as an upload does; identical pixel arrays are
counted once. Each image is then scored with two ROIs (the whole image and a centre box) by
the caller, through the same crop path the product uses.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# (pydicom-data file, what it is). Compressed/endian variants of the same pixels are left out.
DICOM_FILES: tuple[tuple[str, str], ...] = (
    ("CT_small.dcm", "CT"),
    ("693_UNCR.dcm", "CT"),
    ("J2K_pixelrep_mismatch.dcm", "CT (head)"),
    ("explicit_VR-UN.dcm", "CT (pancreas)"),
    ("bad_sequence.dcm", "CT (neck)"),
    ("eCT_Supplemental.dcm", "CT"),
    ("mlut_18.dcm", "secondary capture"),
    ("vlut_04.dcm", "secondary capture"),
    ("image_dfl.dcm", "secondary capture"),
    ("MR_small.dcm", "MR"),
    ("MR2_UNCR.dcm", "MR"),
    ("emri_small.dcm", "MR (head)"),
    ("examples_overlay.dcm", "MR (abdomen)"),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR (abdomen)"),
    ("RG1_UNCR.dcm", "chest radiograph (CR)"),
    ("US1_UNCR.dcm", "ultrasound"),
    ("examples_palette.dcm", "ultrasound"),
    ("OBXXXX1A.dcm", "ultrasound"),
    ("gdcm-US-ALOKA-16.dcm", "ultrasound"),
    ("examples_rgb_color.dcm", "ultrasound"),
    ("examples_jpeg2k.dcm", "ultrasound"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "ultrasound"),
    ("color-pl.dcm", "ultrasound"),
    ("JPEG2000_UNC.dcm", "nuclear medicine"),
    ("liver_1frame.dcm", "segmentation mask"),
    ("OT-PAL-8-face.dcm", "photo"),
    ("SC_rgb.dcm", "test pattern"),
)

_DOC_TEXT = (
    "Radiology department - request form",
    "Patient history: pain in the left knee for three weeks.",
    "Please compare with the previous examination.",
    "Findings: see attached report. Impression pending.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "Signed: ________________  Date: __/__/____",
    "Section 2. Instructions for use of this form.",
    "Keep this sheet with the patient's records.",
)


@dataclass(frozen=True)
class NonBoneImage:
    """One file of the set: ``data`` is what would be uploaded; ``kind`` groups the results."""

    name: str
    kind: str
    source: str
    data: bytes


def _png(pixels: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(pixels))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 array
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _u8(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = np.nan_to_num(x, nan=float(np.nanmin(x)) if np.isfinite(x).any() else 0.0)
    lo, hi = float(x.min()), float(x.max())
    return np.zeros(x.shape, np.uint8) if hi <= lo else np.round((x - lo) / (hi - lo) * 255).astype(np.uint8)


def dicom_images() -> Iterator[NonBoneImage]:
    try:
        from pydicom.data import get_testdata_file
    except ImportError:  # pragma: no cover - pydicom is a runtime dependency
        return
    for name, kind in DICOM_FILES:
        try:
            path = get_testdata_file(name)
        except Exception:  # noqa: BLE001 - pydicom-data may try (and fail) to download what it lacks
            path = None
        if path:
            yield NonBoneImage(name, kind, "pydicom-data", Path(path).read_bytes())


def package_pictures() -> Iterator[NonBoneImage]:
    """Photos and pictures shipped inside installed packages (whatever of them is installed)."""
    import importlib.util

    def package_dir(module: str) -> Path | None:
        spec = importlib.util.find_spec(module)
        return Path(spec.origin).parent if spec and spec.origin else None

    sk = package_dir("sklearn")
    if sk:
        for name in ("china.jpg", "flower.jpg"):
            if (sk / "datasets" / "images" / name).is_file():
                yield NonBoneImage(name, "photo", "scikit-learn sample images", (sk / "datasets" / "images" / name).read_bytes())
    mpl = package_dir("matplotlib")
    if mpl:
        sample = mpl / "mpl-data" / "sample_data"
        for name, kind in (("grace_hopper.jpg", "photo"), ("Minduka_Present_Blue_Pack.png", "picture"), ("logo2.png", "logo")):
            if (sample / name).is_file():
                yield NonBoneImage(name, kind, "matplotlib sample data", (sample / name).read_bytes())
        for name in ("jacksboro_fault_dem.npz", "topobathy.npz"):
            if (sample / name).is_file():
                with np.load(sample / name) as npz:
                    key = "elevation" if "elevation" in npz.files else npz.files[0]
                    yield NonBoneImage(
                        name.replace(".npz", ".png"), "elevation map", "matplotlib sample data", _png(_u8(npz[key]))
                    )
        if (sample / "s1045.ima.gz").is_file():
            raw = np.frombuffer(gzip.decompress((sample / "s1045.ima.gz").read_bytes()), dtype=np.uint16)
            if raw.size == 256 * 256:
                yield NonBoneImage("s1045.png", "MR (head)", "matplotlib sample data", _png(_u8(raw.reshape(256, 256))))
    nx = package_dir("networkx")
    if nx:
        baseline = nx / "drawing" / "tests" / "baseline"
        for name in ("test_display_complex.png", "test_house_with_colors.png"):
            if (baseline / name).is_file():
                yield NonBoneImage(name, "chart", "networkx test images", (baseline / name).read_bytes())


def documents() -> Iterator[NonBoneImage]:
    """Pages of text rendered with cv2.putText: forms, reports, a terminal, handwriting-like."""
    import cv2

    rng = np.random.default_rng(17)
    fonts = (
        cv2.FONT_HERSHEY_SIMPLEX,
        cv2.FONT_HERSHEY_PLAIN,
        cv2.FONT_HERSHEY_DUPLEX,
        cv2.FONT_HERSHEY_COMPLEX,
        cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
        cv2.FONT_HERSHEY_TRIPLEX,
    )
    styles = (
        ("letter", 255, 0, 0.55),
        ("terminal", 0, 230, 1.1),
        ("report", 250, 20, 0.5),
        ("form", 245, 10, 0.6),
        ("handwritten note", 235, 40, 0.9),
        ("scanned page", 200, 30, 0.5),
    )
    for i, ((what, paper, ink, scale), font) in enumerate(zip(styles, fonts, strict=True)):
        h, w = (800, 620) if i % 2 == 0 else (600, 800)
        page = np.full((h, w), paper, np.uint8)
        if what == "report":
            page[:70] = 60
            cv2.putText(page, "CASE REPORT", (30, 48), font, 1.2, 255, 2, cv2.LINE_AA)
        y = 110 if what == "report" else 50
        step = int(32 * max(scale, 0.6) + 8)
        while y < h - 30:
            line = _DOC_TEXT[int(rng.integers(len(_DOC_TEXT)))]
            cv2.putText(page, line, (30, y), font, scale, ink, 1, cv2.LINE_AA)
            y += step
        if what == "form":
            for x in range(30, w - 30, 190):
                cv2.line(page, (x, 40), (x, h - 40), 90, 1)
            for yy in range(40, h - 30, 2 * step):
                cv2.line(page, (30, yy), (w - 30, yy), 90, 1)
        if what == "scanned page":
            page = np.clip(page.astype(np.float64) + rng.normal(0, 12, page.shape), 0, 255).astype(np.uint8)
        yield NonBoneImage(f"document-{i + 1}-{what.replace(' ', '-')}.png", "document", "rendered (cv2.putText)", _png(page))


def charts() -> Iterator[NonBoneImage]:
    """A line chart, a bar chart and a scatter plot drawn with matplotlib (screenshot-like)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    rng = np.random.default_rng(5)
    for what in ("line", "bar", "scatter"):
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
        if what == "line":
            t = np.linspace(0, 10, 200)
            ax.plot(t, np.sin(t), t, np.cos(t) * 0.5)
        elif what == "bar":
            ax.bar(list("ABCDEFG"), rng.integers(2, 20, 7))
        else:
            ax.scatter(rng.normal(size=150), rng.normal(size=150), s=12)
        ax.set_title(f"{what} chart")
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        yield NonBoneImage(f"chart-{what}.png", "chart", "drawn (matplotlib)", buf.getvalue())


def synthetic() -> Iterator[NonBoneImage]:
    """Noise, gradients, blank frames, patterns and shapes (uint8 PNG, 384 x 384 or 320 x 480)."""
    import cv2

    rng = np.random.default_rng(11)
    h, w = 384, 384
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot(xx - w / 2, yy - h / 2)
    smooth = cv2.GaussianBlur(rng.normal(0, 1, (h, w)), (0, 0), 12)
    shapes = np.full((h, w), 40, np.uint8)
    for _ in range(12):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            cv2.circle(shapes, c, int(rng.integers(10, 60)), int(rng.integers(60, 255)), -1)
        else:
            cv2.rectangle(
                shapes, c, (c[0] + int(rng.integers(20, 90)), c[1] + int(rng.integers(20, 90))), int(rng.integers(60, 255)), -1
            )
    items: dict[str, Callable[[], np.ndarray]] = {
        "gaussian-noise": lambda: rng.normal(0.5, 0.15, (h, w)),
        "uniform-noise": lambda: rng.random((h, w)),
        "salt-and-pepper": lambda: (rng.random((h, w)) < 0.5).astype(np.float64),
        "smooth-noise": lambda: smooth,
        "horizontal-gradient": lambda: xx,
        "vertical-gradient": lambda: yy,
        "radial-gradient": lambda: -r,
        "blank-black": lambda: np.zeros((h, w)),
        "blank-white": lambda: np.full((h, w), 255.0),
        "blank-grey": lambda: np.full((h, w), 128.0),
        "checkerboard": lambda: (xx // 32 + yy // 32) % 2,
        "sine-grating": lambda: np.sin(xx / 6.0),
        "rings": lambda: np.sin(r / 5.0),
        "shapes": lambda: shapes.astype(np.float64),
    }
    for name, make in items.items():
        pixels = make()
        if name.startswith("blank"):
            u8 = pixels.astype(np.uint8)
        else:
            u8 = _u8(pixels)
        if name in ("horizontal-gradient", "sine-grating"):
            u8 = cv2.resize(u8, (480, 320), interpolation=cv2.INTER_AREA)  # another aspect ratio
        yield NonBoneImage(f"{name}.png", "synthetic", "generated", _png(u8))


def non_bone_images(log: Callable[[str], Any] | None = None) -> tuple[list[tuple[NonBoneImage, Any]], list[str]]:
    """Every item that loads (``imaging.load_image``), with its loaded image; identical pixels
    are kept once. Returns (items, skipped: ``"name: reason"``)."""
    from model_zoo import imaging
    from model_zoo.errors import InputError

    loaded, skipped, seen = [], [], set()
    for source in (dicom_images, package_pictures, documents, charts, synthetic):
        for item in source():
            try:
                image = imaging.load_image(item.data, name=item.name)
            except InputError as err:
                skipped.append(f"{item.name}: {err}")
                continue
            key = imaging.image_hash(image.pixels)
            if key in seen:
                skipped.append(f"{item.name}: same pixels as an earlier item")
                continue
            seen.add(key)
            loaded.append((item, image))
    if log:
        log(f"      non-bone set: {len(loaded)} images ({len(skipped)} skipped)")
    return loaded, skipped


def centre_box(width: int, height: int, fraction: float = 0.5) -> tuple[float, float, float, float]:
    """The central ``fraction`` of the image on each axis (x0, y0, x1, y1)."""
    mx, my = width * (1 - fraction) / 2, height * (1 - fraction) / 2
    return (float(round(mx)), float(round(my)), float(round(width - mx)), float(round(height - my)))
