"""The Case page's state (issue 15 item 3): one typed CaseState made by ``load_case``, and one
rule for widget values (defaults written once, every key written back each run)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from dashboard import case_logic as cl


def _png(w: int = 80, h: int = 60) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(w * h).reshape(h, w) % 251).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_load_case_makes_one_typed_record():
    data = _png()
    case = cl.load_case(data, "x.png")
    assert isinstance(case, cl.CaseState) and case.label == "uploaded image" and case.description == ""
    assert case.size == (80, 60) and case.box == (0.0, 0.0, 80.0, 60.0) and case.initial_box is None
    assert case.start_mode == "Draw on the image" and case.drawn_box is None and case.auto_accepted is None
    assert case.sha256 == __import__("hashlib").sha256(data).hexdigest()
    assert case.prefill.age is None and case.prefill.notes == ("PNG files carry no clinical tags",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        case.box = (1.0, 1.0, 2.0, 2.0)  # type: ignore[misc]
    moved = dataclasses.replace(case, box=(1.0, 2.0, 30.0, 40.0))
    assert moved.box == (1.0, 2.0, 30.0, 40.0) and moved.image is case.image
    assert cl.load_case(data, "x.png", label="image from the PACS").label == "image from the PACS"
    # Nothing screen-sized is part of the record: display copies are derived per run.
    assert not {"display", "display_pixels", "display_view", "crops", "cams"} & {f.name for f in dataclasses.fields(case)}


def test_sample_case_record_and_widget_defaults():
    from model_zoo.sample import sample_case

    s = sample_case()
    case = cl.load_case(s["path"].read_bytes(), s["path"].name, sample=s)
    assert case.label == cl.SAMPLE_LABEL and case.initial_box == case.box == tuple(float(v) for v in s["roi_box"])
    assert case.prefill.notes[-1].startswith("sample case")
    d = cl.case_widget_defaults(case)
    assert d["case_roi_mode"] == "Enter coordinates" and d["case_sex"] == "F" and d["case_age"] is None
    assert (d["case_x0"], d["case_y0"], d["case_x1"], d["case_y1"]) == tuple(float(round(v)) for v in case.box)
    assert d["case_wc"] == d["case_wc_num"] and d["case_ww"] == d["case_ww_num"]


def test_keep_widgets_sets_defaults_once_and_keeps_user_values():
    state: dict = {"case_age": 42.0}
    cl.keep_widgets(state, {"case_age": None, "case_sex": "not given"})
    assert state == {"case_age": 42.0, "case_sex": "not given"}
    state["case_sex"] = "F"
    cl.keep_widgets(state, {"case_age": None, "case_sex": "not given"})
    assert state == {"case_age": 42.0, "case_sex": "F"}
