"""One-case PDF report (fpdf2): images, ROI, heatmaps, probabilities, inputs, zoo facts.

Library-side (no Streamlit): the dashboard gathers a :class:`CaseReport` from what it has
already computed and calls :func:`build_case_report`; a batch tool could do the same.

Privacy: the report never contains patient identifiers unless the caller passes them in
``identifiers`` AND sets ``include_identifiers=True`` (an explicit user opt-in). File names
are not printed either (uploads are often named after the patient); the image is
identified by the sha256 of its file.

Fonts: the PDF core fonts (Helvetica, Courier) cover Latin-1 only, so every string goes
through :func:`pdf_text`, which spells out common symbols (>=, ->) and replaces anything
else outside Latin-1 with '?', instead of failing on a user's free text.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_zoo.framing import Call, JitterSummary

__all__ = [
    "DISCLAIMER",
    "CaseReport",
    "HeatmapFigure",
    "build_case_report",
    "pdf_text",
]

DISCLAIMER = (
    "Research and teaching only; not a medical device. Not for diagnosis or treatment "
    "decisions. The probabilities come from models trained on a public research dataset and "
    "must be read by a qualified clinician together with all other information."
)

_REPLACEMENTS = {
    "\u2265": ">=",
    "\u2264": "<=",
    "\u2192": "->",
    "\u2190": "<-",
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "\u2026": "...",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u00a0": " ",
    "\u2248": "~",
    "\u2022": "-",
}

# Longest image side embedded in the PDF: enough for print, keeps the file small.
_MAX_SIDE = 1000


def pdf_text(text: Any) -> str:
    """``str(text)`` made printable with the Latin-1 core fonts."""
    s = str(text)
    for k, v in _REPLACEMENTS.items():
        s = s.replace(k, v)
    return s.encode("latin-1", errors="replace").decode("latin-1")


@dataclass
class HeatmapFigure:
    """A ready-made overlay (``(H, W, 3)`` uint8 RGB) and its caption."""

    title: str
    image: np.ndarray


@dataclass
class CaseReport:
    """Everything printed in a case report. Probabilities are of the positive class.

    ``call`` is the framed call (``Zoo.call``: the release's scale, band and the jitter result
    when it was run); the headline, the raw stacker output and the operating threshold are all
    read from it, so the report cannot say anything the other outputs do not.
    ``radiograph`` is the displayed image (``(H, W)`` float in [0, 1] or uint8, at any
    resolution); ``roi_box`` is in stored-image pixels of an image of size
    ``image_size_wh``, so it is rescaled onto ``radiograph`` for drawing.
    """

    zoo_name: str
    zoo_version: str
    call: Call
    p_members: Mapping[str, float]
    radiograph: np.ndarray
    image_size_wh: tuple[int, int]
    roi_box: Sequence[float]
    image_sha256: str
    roi_source: str = ""
    threshold_rule: str = ""
    p_clinic: float | None = None
    disagreement: float | None = None
    age: float | None = None
    sex: str | None = None
    site: str | None = None
    crops: Mapping[str, np.ndarray] = field(default_factory=dict)
    heatmaps: Sequence[HeatmapFigure] = ()
    jitter: JitterSummary | None = None
    warnings: Sequence[str] = ()
    calibration_note: str = ""
    zoo_files: Mapping[str, str] = field(default_factory=dict)
    manifest_sha256: str | None = None
    intended_use: str = ""
    image_tags: Mapping[str, str] = field(default_factory=dict)
    created: _dt.datetime | None = None
    identifiers: Mapping[str, str] | None = None
    external_validation: str = ""  # one line: how the release did at a hospital it never saw


# ----------------------------------------------------------------------------- images


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.rint(np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0) * 255.0).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {a.shape}")
    return np.ascontiguousarray(a[:, :, :3])


def _pil(image: np.ndarray, max_side: int = _MAX_SIDE) -> Any:
    from PIL import Image

    img = Image.fromarray(_to_rgb_uint8(image))
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def _radiograph_with_roi(report: CaseReport) -> Any:
    from PIL import ImageDraw

    img = _pil(report.radiograph)
    w, h = report.image_size_wh
    sx, sy = img.size[0] / float(w), img.size[1] / float(h)
    x0, y0, x1, y1 = (float(v) for v in report.roi_box)
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 300))
    draw.rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=(255, 40, 40), width=width)
    return img


# ----------------------------------------------------------------------------- layout


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "not given"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


class _Doc:
    """Thin helper over FPDF keeping the cursor logic in one place."""

    def __init__(self, title: str, created: _dt.datetime) -> None:
        from fpdf import FPDF

        pdf = FPDF(orientation="P", unit="mm", format="A4")
        pdf.set_auto_page_break(auto=True, margin=14)
        pdf.set_margins(14, 14, 14)
        pdf.set_title(pdf_text(title))
        pdf.set_creator("model_zoo.report_pdf")
        pdf.set_creation_date(created)
        self.pdf = pdf
        self.footer_text = pdf_text("Research and teaching only - not a medical device.")
        pdf.add_page()

    @property
    def width(self) -> float:
        return self.pdf.w - self.pdf.l_margin - self.pdf.r_margin

    def heading(self, text: str, size: int = 12) -> None:
        pdf = self.pdf
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", size)
        pdf.cell(0, 7, pdf_text(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 9)

    def para(self, text: str, size: int = 9, style: str = "") -> None:
        pdf = self.pdf
        pdf.set_font("Helvetica", style, size)
        pdf.multi_cell(0, size * 0.5, pdf_text(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 9)

    def rows(self, rows: Sequence[tuple[str, str]], key_width: float = 48, mono: bool = False, size: int = 9) -> None:
        pdf = self.pdf
        for key, value in rows:
            pdf.set_font("Helvetica", "B", size)
            pdf.cell(key_width, size * 0.5, pdf_text(key))
            pdf.set_font("Courier" if mono else "Helvetica", "", size)
            pdf.multi_cell(self.width - key_width, size * 0.5, pdf_text(value), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 9)

    def images(self, items: Sequence[tuple[str, Any]], per_row: int, max_height: float) -> None:
        """Place (caption, PIL image) pairs in a grid, starting a new page when needed."""
        pdf = self.pdf
        gap = 4.0
        cell_w = (self.width - gap * (per_row - 1)) / per_row
        for start in range(0, len(items), per_row):
            chunk = items[start : start + per_row]
            heights = [min(max_height, cell_w * img.size[1] / img.size[0]) for _, img in chunk]
            row_h = max(heights) + 9
            if pdf.get_y() + row_h > pdf.h - pdf.b_margin:
                pdf.add_page()
            y = pdf.get_y()
            for i, ((caption, img), hgt) in enumerate(zip(chunk, heights, strict=True)):
                wid = hgt * img.size[0] / img.size[1]
                x = pdf.l_margin + i * (cell_w + gap)
                pdf.image(img, x=x + (cell_w - wid) / 2, y=y, w=wid, h=hgt)
                pdf.set_xy(x, y + hgt + 1)
                pdf.set_font("Helvetica", "", 7)
                pdf.multi_cell(cell_w, 3.2, pdf_text(caption), align="C")
            pdf.set_xy(pdf.l_margin, y + row_h)
        pdf.set_font("Helvetica", "", 9)

    def footer_all(self) -> None:
        pdf = self.pdf
        n = pdf.page_no()
        pdf.set_auto_page_break(False)
        for page in range(1, n + 1):
            pdf.page = page
            pdf.set_xy(pdf.l_margin, pdf.h - 10)
            pdf.set_font("Helvetica", "I", 7)
            pdf.cell(self.width, 4, f"{self.footer_text}  Page {page}/{n}", align="C")
        pdf.page = n


def build_case_report(report: CaseReport, *, include_identifiers: bool = False) -> bytes:
    """Render the report; returns the PDF file's bytes.

    Parameters
    ----------
    report : the case's inputs and results.
    include_identifiers : print ``report.identifiers`` (the user's explicit opt-in). When
        False they are ignored entirely.
    """
    created = report.created or _dt.datetime.now(_dt.timezone.utc)
    if created.tzinfo is None:
        created = created.replace(tzinfo=_dt.timezone.utc)
    title = f"Case report - {report.zoo_name} {report.zoo_version}"
    doc = _Doc(title, created)
    pdf = doc.pdf

    pdf.set_font("Helvetica", "B", 15)
    pdf.cell(0, 9, pdf_text(title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    pdf.cell(0, 5, pdf_text(f"Generated {created.strftime('%Y-%m-%d %H:%M %Z')}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_fill_color(255, 236, 214)
    pdf.set_font("Helvetica", "B", 9)
    pdf.multi_cell(0, 4.5, pdf_text(DISCLAIMER), border=1, fill=True, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)

    if include_identifiers and report.identifiers:
        doc.heading("Identifiers (included at the user's request)")
        doc.rows([(k, str(v)) for k, v in report.identifiers.items()])

    doc.heading("Result")
    call = report.call
    doc.para(call.sentence + (" (calibrated)" if call.calibrated else ""), size=11, style="B")
    if call.indeterminate:
        doc.para(
            f"Indeterminate: read the result as neither {call.negative_class} nor {call.positive_class}. "
            f"The call {' and '.join(call.reasons)} (band +/- {call.band:.2f} around the threshold on the "
            f"{call.scale} scale; any ROI-jitter box that changes the call).",
            size=9,
        )
    if report.external_validation:
        doc.para(report.external_validation, size=9)
    rows = []
    if call.calibrated:
        rows.append(("Raw stacker output", f"{call.p_raw:.3f} (threshold {call.threshold_raw:.3f}; uncalibrated, same side)"))
    rows += [(f"Member {mid}", f"{p:.3f}") for mid, p in report.p_members.items()]
    if report.disagreement is not None:
        rows.append(("Member disagreement", f"{report.disagreement:.3f} (max - min of member probabilities)"))
    if report.p_clinic is not None:
        rows.append(("Clinic-only model", f"{report.p_clinic:.3f} (age, sex, site only)"))
    rows.append(
        ("Operating threshold", f"{call.threshold_raw:.3f}" + (f" ({report.threshold_rule})" if report.threshold_rule else ""))
    )
    if report.jitter is not None and report.jitter.n:
        j = report.jitter
        rows.append(
            (
                "ROI-jitter check",
                (
                    f"{j.n} jittered boxes: p from {_fmt(j.p_min)} to {_fmt(j.p_max)} "
                    f"(SD {_fmt(j.p_sd)}); same class call in {j.same_call} of {j.n}"
                ),
            )
        )
    doc.rows(rows)
    if report.calibration_note:
        doc.para(report.calibration_note, size=8, style="I")

    doc.heading("Inputs")
    x0, y0, x1, y1 = (float(v) for v in report.roi_box)
    doc.rows(
        [
            ("Age", "not given" if report.age is None else f"{report.age:g} years"),
            ("Sex", report.sex or "not given"),
            ("Site", report.site or "not given"),
            (
                "ROI (stored pixels)",
                f"x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f} ({x1 - x0:.0f} x {y1 - y0:.0f} px)"
                + (f"; {report.roi_source}" if report.roi_source else ""),
            ),
            ("Image size", f"{report.image_size_wh[0]} x {report.image_size_wh[1]} px"),
            ("Image sha256", report.image_sha256),
        ]
        + [(k, str(v)) for k, v in report.image_tags.items()]
    )
    if report.warnings:
        doc.heading("Input quality warnings")
        for w in report.warnings:
            doc.para(f"- {w}")

    doc.heading("Radiograph, ROI and what the models see")
    items = [("Radiograph with the ROI (red)", _radiograph_with_roi(report))]
    items += [(f"{mid} input crop", _pil(c)) for mid, c in report.crops.items()]
    doc.images(items[:1], per_row=1, max_height=95)
    if len(items) > 1:
        doc.images(items[1:], per_row=4, max_height=40)

    if report.heatmaps:
        doc.heading("Heatmaps (where each network's evidence for the positive class lies)")
        doc.images([(h.title, _pil(h.image, 700)) for h in report.heatmaps], per_row=3, max_height=60)

    doc.heading("Model zoo release")
    rows = [("Release", f"{report.zoo_name} {report.zoo_version}")]
    if report.manifest_sha256:
        rows.append(("manifest.json sha256", report.manifest_sha256))
    doc.rows(rows, mono=False)
    if report.zoo_files:
        doc.rows([(path, digest) for path, digest in sorted(report.zoo_files.items())], key_width=62, mono=True, size=6)
    if report.intended_use:
        doc.heading("Intended use", size=10)
        doc.para(report.intended_use, size=8)
    doc.footer_all()
    return bytes(pdf.output())
