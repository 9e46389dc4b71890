"""PHI: identifiers inside a DICOM never leave the loader, the page, the PDF, the audit log or a batch CSV.

One synthetic DICOM (a valid 64 x 64 MONOCHROME2 image; no real patient) carries known
identifiers in the usual places (patient, study, institution, staff, device, dates, UIDs,
a private tag) and is uploaded under an identifying file name. Every output is searched
for every identifier. Each search has a positive control (the identifier is present in
the input, or an opted-in reference does show up), so an empty search means "not leaked",
not "looked in the wrong place".
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboard" / "app.py"
UPLOAD_NAME = "DOE-JANE_PHI-123456.dcm"  # uploads are often named after the patient

# Element keyword -> value. Dates, UIDs and device serials identify too (HIPAA safe harbour).
IDENTIFYING_TAGS = {
    "PatientName": "Doe^Jane^PHI",
    "PatientID": "PHI-123456",
    "PatientBirthDate": "19700101",
    "OtherPatientIDs": ["PHI-OTHER-77", "PHI-OTHER-88"],
    "PatientAddress": "22 Phiroad Phicity",
    "PatientTelephoneNumbers": "555-0199-PHI",
    "PatientMotherBirthName": "PHI-MOTHER^Maiden",
    "PatientComments": "PHI-COMMENT about the patient",
    "AccessionNumber": "ACC-PHI-999",
    "InstitutionName": "PHI General Hospital",
    "InstitutionAddress": "1 Phimain Street Phitown",
    "InstitutionalDepartmentName": "PHI Radiology Dept",
    "ReferringPhysicianName": "Dr^PHIreferrer",
    "PerformingPhysicianName": "Dr^PHIperformer",
    "RequestingPhysician": "Dr^PHIrequester",
    "OperatorsName": "Op^PHIoperator",
    "StudyDescription": "PHI-STUDY knee films",
    "SeriesDescription": "PHI-SERIES lateral",
    "ImageComments": "PHI-IMAGE-COMMENT",
    "StudyID": "PHISTUDY42",
    "StationName": "PHI-STATION-1",
    "DeviceSerialNumber": "PHI-SN-4242",
    "StudyDate": "20230405",
    "AcquisitionDateTime": "20230405101112",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.4242424242",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.4242424243",
}
PRIVATE_VALUE = "PHI-PRIVATE-555"

# Strings searched for, case-insensitively (name parts, reformatted dates, the file name).
TOKENS = [
    "Doe^Jane",
    "Jane^PHI",
    "Jane Doe",
    "Doe Jane",
    "Doe, Jane",
    "DOE-JANE",
    "PHI-123456",
    "19700101",
    "1970-01-01",
    "01/01/1970",
    "PHI-OTHER-77",
    "PHI-OTHER-88",
    "Phiroad",
    "Phicity",
    "555-0199",
    "PHI-MOTHER",
    "PHI-COMMENT",
    "ACC-PHI-999",
    "PHI General Hospital",
    "Phimain",
    "Phitown",
    "PHI Radiology",
    "PHIreferrer",
    "PHIperformer",
    "PHIrequester",
    "PHIoperator",
    "PHI-STUDY",
    "PHI-SERIES",
    "PHI-IMAGE-COMMENT",
    "PHISTUDY42",
    "PHI-STATION",
    "PHI-SN-4242",
    "20230405",
    "2023-04-05",
    "4242424242",
    "4242424243",
    PRIVATE_VALUE,
    "PHI-NONCE",
]

# Non-identifying facts the product is allowed (and expected) to use.
SAFE_TAGS = {
    "Modality": "CR",
    "BodyPartExamined": "KNEE",
    "ViewPosition": "AP",
    "PatientAge": "045Y",
    "PatientSex": "F",
    "Manufacturer": "Acme Imaging",
    "WindowCenter": "2048",
    "WindowWidth": "4096",
}


def leaked(text: str) -> list[str]:
    low = text.lower()
    return [t for t in TOKENS if t.lower() in low]


def phi_dicom(nonce: str, seed: int) -> bytes:
    """The synthetic identified DICOM (Part 10, Explicit VR Little Endian).

    ``nonce`` (an extra patient ID) and the pixel noise from ``seed`` make this session's
    file unique, so a disk scan cannot confuse it with a copy written by another run.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    pixels = (xx * 40 + yy * 20 + rng.integers(0, 200, (64, 64))).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1")  # CR Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.4242424244")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for keyword, value in {**IDENTIFYING_TAGS, **SAFE_TAGS}.items():
        setattr(ds, keyword, value)
    ds.OtherPatientIDs = [*IDENTIFYING_TAGS["OtherPatientIDs"], nonce]
    block = ds.private_block(0x0011, "PHI TEST CREATOR", create=True)
    block.add_new(0x01, "LO", PRIVATE_VALUE)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


NONCE = f"PHI-NONCE-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def phi_bytes() -> bytes:
    data = phi_dicom(NONCE, secrets.randbits(32))
    # Positive control: every identifier really is in the file the product receives.
    text = data.decode("latin-1")
    for keyword, value in IDENTIFYING_TAGS.items():
        for v in value if isinstance(value, list) else [value]:
            assert v in text, keyword
    assert PRIVATE_VALUE in text and NONCE in text
    return data


def pdf_text(pdf: bytes) -> str:
    """The PDF's raw bytes plus every zlib (FlateDecode) stream decompressed, as latin-1."""
    parts = [pdf.decode("latin-1")]
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        with contextlib.suppress(zlib.error):
            parts.append(zlib.decompress(m.group(1)).decode("latin-1"))
    return "\n".join(parts).replace("\\(", "(").replace("\\)", ")")


# ----------------------------------------------------------------------------- the loader


def test_loader_meta_holds_no_identifier(phi_bytes):
    from model_zoo.imaging import _DISPLAY_KEYWORDS, load_image

    img = load_image(phi_bytes, name=UPLOAD_NAME)
    meta = img.meta
    assert leaked(repr(meta)) == [], leaked(repr(meta))
    assert set(meta.display_tags) <= set(_DISPLAY_KEYWORDS) | {"TransferSyntax", "WindowCenter", "WindowWidth", "NumberOfFrames"}
    # The non-identifying facts do come through (so the search above looked at real content).
    assert meta.age == pytest.approx(45.0) and meta.sex == "F" and meta.body_part == "KNEE"
    assert meta.display_tags["Manufacturer"] == "Acme Imaging" and meta.display_tags["Modality"] == "CR"


def test_loader_errors_never_echo_identifiers(phi_bytes):
    """Truncated anywhere (inside the identifying elements too) or lying about its size,
    the refusal message carries no identifier, not even a fragment."""
    from model_zoo.errors import InputError
    from model_zoo.imaging import load_image

    fragments = re.compile(r"PHI|Phi|Doe\^|Jane|ACC-|4242|PHISTUDY|Dr\^|Op\^")
    variants = [phi_bytes[:cut] for cut in range(0, len(phi_bytes), 7)]
    rows_at = phi_bytes.index(b"\x28\x00\x10\x00US\x02\x00") + 8  # (0028,0010) Rows, US, length 2
    variants.append(phi_bytes[:rows_at] + (256).to_bytes(2, "little") + phi_bytes[rows_at + 2 :])  # lies: 256 rows
    seen = 0
    for data in variants:
        try:
            load_image(data, name="upload.dcm")
        except InputError as err:
            seen += 1
            assert not fragments.search(str(err)), str(err)
    assert seen == len(variants), "every cut and the lying header are refused"


# ----------------------------------------------------------------------------- the case page


def _scan_tree(roots: list[Path], since: float, markers: list[bytes], max_bytes: int = 64 << 20) -> list[str]:
    """Files under ``roots`` created/modified at or after ``since`` that contain a marker."""
    hits = []
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
            # The session's test PACS (tests/orthanc.py, pytest's 'orthanc*' temp folders) holds the
            # DICOMs that the PACS tests stored there on purpose and rewrites its index in the
            # background: not a copy this page left behind.
            dirnames[:] = [d for d in dirnames if d not in ("proc", "sys") and not d.startswith("orthanc")]
            for name in filenames:
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                    if not path.is_file() or path.is_symlink() or max(st.st_mtime, st.st_ctime) < since:
                        continue
                    if st.st_size > max_bytes:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                if any(m in data for m in markers):
                    hits.append(str(path))
    return hits


def _roots(tmp: Path) -> list[Path]:
    home = Path.home()
    roots = {Path(tempfile.gettempdir()), Path("/tmp"), REPO, home / ".cache", home / ".streamlit", home / ".config", tmp}
    return sorted(roots)


@pytest.fixture(scope="module")
def page_run(tiny_release, tmp_path_factory, phi_bytes):
    """Upload the identified DICOM on the case page, confirm, predict (GradCAM + ScoreCAM);
    snapshot every file written meanwhile."""
    from streamlit.testing.v1 import AppTest

    tmp = tmp_path_factory.mktemp("phi_page")
    audit_log = tmp / "audit.jsonl"
    temp_calls: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEL_ZOO_DIR", str(tiny_release["release"]))
        mp.setenv("MODEL_ZOO_AUDIT_LOG", str(audit_log))
        for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory", "SpooledTemporaryFile"):
            original = getattr(tempfile, name)

            def spy(*a, _name=name, _orig=original, **k):
                temp_calls.append(_name)
                return _orig(*a, **k)

            mp.setattr(tempfile, name, spy)
        at = AppTest.from_file(str(APP), default_timeout=300).run()
        temp_calls.clear()  # only what the upload and the prediction do counts
        since = time.time() - 1.0
        at.file_uploader(key="case_upload").set_value((UPLOAD_NAME, phi_bytes, "application/dicom")).run()
        at.radio(key="case_roi_mode").set_value("Whole image").run()  # no probability until an ROI is chosen
        at.checkbox(key="case_confirm").check().run()
        if "case_scorecam_job" in at.session_state:  # ScoreCAM runs in the background (issue 17)
            assert at.session_state["case_scorecam_job"].join(300)
            at.run()
        page_temp_calls = list(temp_calls)
        time.sleep(0.05)
    # Unique to this session's upload: its random pixel noise and its nonce patient ID.
    markers = [phi_bytes[-512:], NONCE.encode()]
    hits = _scan_tree(_roots(tmp), since, markers)
    return {
        "at": at,
        "audit": audit_log,
        "hits": hits,
        "since": since,
        "markers": markers,
        "tmp": tmp,
        "temp_calls": page_temp_calls,
    }


def _rendered_text(at) -> str:
    """Every element's proto (text, captions, labels, chart specs, table bytes) + tables as CSV."""
    parts = []
    for block in (at.main, at.sidebar):
        for node in block:
            proto = getattr(node, "proto", None)
            if proto is not None:
                parts.append(str(proto))
            if getattr(node, "type", "") in ("arrow_data_frame", "dataframe", "table"):
                with contextlib.suppress(Exception):
                    parts.append(node.value.to_csv())
    return "\n".join(parts)


def test_page_predicts_and_renders_no_identifier(page_run):
    at = page_run["at"]
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    # The flow really ran to the end on this upload ...
    assert [m for m in at.markdown if m.value.startswith("#### Probability of")]
    captions = " ".join(c for i in at.image for c in i.captions)
    assert "GradCAM" in captions and "ScoreCAM" in captions
    # ... pre-filled from the non-identifying header tags ...
    assert at.number_input(key="case_age").value == pytest.approx(45.0)
    assert at.selectbox(key="case_sex").value == "F"
    text = _rendered_text(at)
    assert "Acme Imaging" in text and "KNEE" in text, "the header table is rendered and searched"
    # ... and nothing identifying anywhere on the page.
    assert leaked(text) == [], leaked(text)
    case = at.session_state["case"]
    # Every field of the record but the decoded image itself (its pixels and non-identifying tags).
    kept = {f.name: getattr(case, f.name) for f in __import__("dataclasses").fields(case) if f.name != "image"}
    assert leaked(repr(kept)) == [], "the session's case record keeps no identifier (nor the file name)"


def test_page_writes_no_upload_to_disk(page_run, tmp_path):
    assert page_run["hits"] == [], f"upload content found on disk: {page_run['hits']}"
    assert page_run["temp_calls"] == [], f"temporary files created during upload/predict: {page_run['temp_calls']}"
    # Positive control: the same scan finds a copy when one is written.
    copy = page_run["tmp"] / "leak-check.bin"
    copy.write_bytes(b"header" + page_run["markers"][0] + b"trailer")
    try:
        assert str(copy) in _scan_tree([page_run["tmp"]], page_run["since"], page_run["markers"])
    finally:
        copy.unlink()


def test_audit_log_holds_no_identifier(page_run, phi_bytes):
    raw = page_run["audit"].read_text(encoding="ascii")
    events = [__import__("json").loads(line) for line in raw.splitlines() if line.strip()]
    preds = [e for e in events if e.get("event") == "case_prediction"]
    assert len(preds) == 1 and preds[0]["image_sha256"] == hashlib.sha256(phi_bytes).hexdigest()
    assert preds[0]["inputs"] == {"age": 45.0, "sex": "F", "site": "appendicular"}
    assert leaked(raw) == [], leaked(raw)


def _case_pdf(page_run, tiny_release, *, reference: str, include: bool) -> bytes:
    from dashboard import case_logic as cl
    from model_zoo.ensemble import load_zoo

    at = page_run["at"]
    zoo = load_zoo(tiny_release["release"])
    case = at.session_state["case"]
    inputs = {"age": 45.0, "sex": "F", "site": "appendicular"}
    pred = zoo.predict(case.image.pixels, case.box, **inputs)
    return cl.case_pdf(
        zoo, case, case.box, "whole image", inputs, pred, None, [], reference=reference, include_identifiers=include
    )


def test_pdf_report_default_has_no_identifier(page_run, tiny_release):
    pdf = _case_pdf(page_run, tiny_release, reference="REF-OPTIN-31337", include=False)
    text = pdf_text(pdf)
    assert "Probability of" in text and "Image sha256" in text, "text streams were decompressed and searched"
    assert leaked(text) == [], leaked(text)
    assert "REF-OPTIN-31337" not in text, "a typed reference stays out unless the box is ticked"


def test_pdf_report_opt_in_adds_only_the_typed_reference(page_run, tiny_release):
    """The opt-in prints what the user typed as the case reference - never the DICOM's
    own identifiers (nothing copies PatientName/PatientID into the report)."""
    text = pdf_text(_case_pdf(page_run, tiny_release, reference="REF-OPTIN-31337", include=True))
    assert "REF-OPTIN-31337" in text and "Identifiers (included at the user's request)" in text
    assert leaked(text) == [], leaked(text)


def test_report_builder_prints_identifiers_only_on_opt_in():
    from model_zoo.framing import frame_call
    from model_zoo.report_pdf import CaseReport, build_case_report

    rep = CaseReport(
        zoo_name="z",
        zoo_version="1.0.0",
        call=frame_call(0.7, 0.5, "malignant", "benign"),
        p_members={"a": 0.7},
        radiograph=np.zeros((40, 40), np.float32),
        image_size_wh=(40, 40),
        roi_box=(0, 0, 40, 40),
        image_sha256="0" * 64,
        identifiers={"Patient": "Doe^Jane^PHI", "MRN": "PHI-123456"},
    )
    assert leaked(pdf_text(build_case_report(rep))) == []
    shown = leaked(pdf_text(build_case_report(rep, include_identifiers=True)))
    assert {"Doe^Jane", "Jane^PHI", "PHI-123456"} <= set(shown), shown


# ----------------------------------------------------------------------------- batch mode


def test_batch_output_has_no_identifier_from_inside_the_dicom(tiny_release, tmp_path, phi_bytes):
    """The input CSV's own columns pass through by contract, so the CSV here has none that
    identify; whatever is inside the DICOM must not reach the output (or the messages)."""
    from model_zoo.__main__ import main

    scans = tmp_path / "scans"
    scans.mkdir()
    try:
        (scans / "img001.dcm").write_bytes(phi_bytes)
        (scans / "img002.dcm").write_bytes(phi_bytes[:-3000])  # truncated: an error row
        (scans / "img003.dcm").write_bytes(phi_bytes[:600])  # cut inside the identifiers
        cases = tmp_path / "cases.csv"
        cases.write_text(
            "image,age,sex,site\nscans/img001.dcm,45,F,appendicular\nscans/img002.dcm,,,\nscans/img003.dcm,,,\n", encoding="utf-8"
        )
        out = tmp_path / "out.csv"
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["predict", "--cases", str(cases), "--out", str(out), "--zoo", str(tiny_release["release"])])
    finally:
        shutil.rmtree(scans)  # no identified file outlives the test (other tests scan the disk for it)
    assert code == 1
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert frame.loc[0, "error"] == "" and 0.0 <= float(frame.loc[0, "p_ensemble"]) <= 1.0
    assert frame.loc[1, "error"].startswith("img002.dcm: ") and frame.loc[2, "error"].startswith("img003.dcm: ")
    text = out.read_text(encoding="utf-8")
    assert leaked(text) == [], leaked(text)
    assert leaked(err.getvalue()) == [], leaked(err.getvalue())


def test_batch_page_table_and_pdf_pack_have_no_identifier_and_leave_no_file(tiny_release, tmp_path, phi_bytes):
    """The dashboard's batch path (CSV + zip upload -> predictions + a zip of PDF reports):
    no identifier from inside the DICOM in the table or any PDF, and the unpacked upload is
    gone from disk when the batch returns."""
    import zipfile

    from dashboard.batch_logic import run_batch
    from model_zoo.ensemble import load_zoo

    since = time.time() - 1.0
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("scans/img001.dcm", phi_bytes)
    csv_bytes = b"image,age,sex,site\nscans/img001.dcm,45,F,appendicular\n"
    result = run_batch(load_zoo(tiny_release["release"]), csv_bytes, buf.getvalue(), with_reports=True)
    assert result.n_rows == 1 and result.n_failed == 0, result.frame["error"].tolist()
    assert leaked(result.csv_bytes().decode("utf-8")) == []
    with zipfile.ZipFile(io.BytesIO(result.pdf_zip)) as zf:
        names = zf.namelist()
        texts = [pdf_text(zf.read(n)) for n in names]
    assert len(names) == 1 and all("Probability of" in t for t in texts), names
    assert [leaked(t) for t in texts] == [[]]
    assert _scan_tree(_roots(tmp_path), since, [NONCE.encode(), phi_bytes[-512:]]) == [], "upload left on disk"
