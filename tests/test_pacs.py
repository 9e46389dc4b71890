"""PACS in and out against a real Orthanc (DICOMweb): search, open, predict, write back, fail well.

The server is Debian's ``orthanc`` + ``orthanc-dicomweb``, started here on loopback with a
temporary configuration (``tests/orthanc.py``); the tests skip with a printed reason where it
is not installed (CI installs it). Test studies: pydicom-data's RG3 computed radiograph,
CT_small and MR_small, plus copies of RG3 made undecodable / write-protected, and the PHI
test's synthetic identified radiograph.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import orthanc as orthanc_helper
import test_phi

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboard" / "app.py"


def _testdata(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom-data's {name} is not installed")
    return Path(path)


def _copy_of_rg3(patient_id: str, *, break_pixels: bool = False, **tags: str) -> bytes:
    """RG3 under new UIDs and another patient ID (optionally with truncated pixel data, and
    header values replaced by ``tags``, e.g. ``BodyPartExamined="CHEST"``)."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(_testdata("RG3_UNCR.dcm"))
    ds.PatientID = patient_id
    ds.AccessionNumber = patient_id[:16]
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    if break_pixels:
        ds.PixelData = ds.PixelData[:4096]  # 1760 x 1760 x 2 bytes declared, 4 kB present
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    reason = orthanc_helper.missing_reason()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    import pydicom

    server = orthanc_helper.Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    try:
        studies = {}
        for key, name in (("rg3", "RG3_UNCR.dcm"), ("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")):
            path = _testdata(name)
            server.upload(path.read_bytes())
            studies[key] = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        for key, data in (
            ("refuse", _copy_of_rg3(orthanc_helper.REFUSE_PATIENT_ID)),
            ("broken", _copy_of_rg3("BROKEN-PIXELS", break_pixels=True)),
            ("dashboard", _copy_of_rg3("DASHBOARD-CASE")),
        ):
            server.upload(data)
            studies[key] = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)
        server.studies = studies
        yield server
    finally:
        server.stop()


def _settings(url: str, *, password: str = orthanc_helper.PASSWORD, timeout: float = 10.0):
    from model_zoo.pacs import PacsSettings

    return PacsSettings(url=url, username=orthanc_helper.USER, password=password, timeout=timeout)


@pytest.fixture(scope="session")
def client(orthanc):
    from model_zoo.pacs import PacsClient

    return PacsClient(_settings(orthanc.dicomweb_url))


@pytest.fixture(scope="session")
def tiny_zoo(tiny_release):
    from model_zoo.ensemble import load_zoo

    return load_zoo(tiny_release["release"])


@pytest.fixture
def pacs_env(monkeypatch, orthanc, tiny_release, tmp_path):
    """The CLI/dashboard configuration by environment, with the audit log in tmp_path."""
    monkeypatch.setenv("MODEL_ZOO_PACS_URL", orthanc.dicomweb_url)
    monkeypatch.setenv("MODEL_ZOO_PACS_USERNAME", orthanc_helper.USER)
    monkeypatch.setenv("MODEL_ZOO_PACS_PASSWORD", orthanc_helper.PASSWORD)
    monkeypatch.setenv("MODEL_ZOO_PACS_TIMEOUT", "10")
    monkeypatch.setenv("MODEL_ZOO_DIR", str(tiny_release["release"]))
    monkeypatch.setenv("MODEL_ZOO_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.chdir(tmp_path)  # no project secrets.toml is read
    return tmp_path


@contextlib.contextmanager
def hung_server():
    """A loopback socket that accepts connections (kernel backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _predict_and_prepare(client, zoo, study_uid, box=None, inputs=None):
    from model_zoo.pacs import first_radiograph, open_instance, prepare_writeback, simple_case_pdf

    instance, _ = first_radiograph(client, study_uid)
    opened = open_instance(client, instance)
    h, w = opened.image.pixels.shape
    box = box or (w * 0.3, h * 0.5, w * 0.6, h * 0.8)
    inputs = inputs or {"age": 33.0, "sex": "F", "site": "appendicular"}
    pred = zoo.predict(opened.image.pixels, box, **inputs)
    call = zoo.call(pred.p_ensemble)
    pdf = simple_case_pdf(zoo, opened.image, box, "entered coordinates", inputs, pred, opened.sha256, call)
    objects, key = prepare_writeback(
        opened.header, zoo, pred, box=box, roi_source="entered coordinates", inputs=inputs, pdf=pdf, call=call
    )
    return opened, pred, box, pdf, objects, key


def _sr_texts(ds) -> list[str]:
    """Every TEXT value in an SR content tree."""
    out = []
    for item in getattr(ds, "ContentSequence", []):
        if "TextValue" in item:
            out.append(str(item.TextValue))
        out += _sr_texts(item)
    return out


def dciodvfy(data: bytes, tmp_path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of dicom3tools' dciodvfy on one object."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    path = tmp_path / f"obj-{time.monotonic_ns()}.dcm"
    path.write_bytes(data)
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


# ----------------------------------------------------------------------------- settings (no server)


def test_settings_from_secrets_and_env_never_show_credentials():
    from model_zoo.pacs import PacsConfigError, load_settings

    assert load_settings({}, {}) is None, "no URL = not configured"
    s = load_settings(
        {"pacs": {"url": "https://pacs.example.org/dicom-web/", "username": "u", "password": "pw-SECRET-1"}},
        {"MODEL_ZOO_PACS_TIMEOUT": "7", "MODEL_ZOO_PACS_VERIFY": "false"},
    )
    assert (s.timeout, s.verify, s.auth_kind, s.display_url) == (7.0, False, "basic", "https://pacs.example.org/dicom-web")
    assert "pw-SECRET-1" not in repr(s) and "pw-SECRET-1" not in str(s)
    t = load_settings({}, {"MODEL_ZOO_PACS_URL": "http://10.1.2.3:8042/dicom-web", "MODEL_ZOO_PACS_TOKEN": "tok-SECRET-2"})
    assert t.auth_kind == "token" and "tok-SECRET-2" not in repr(t)
    assert t.transport_warning and "https" in t.transport_warning, "credentials over plain http to another host"
    assert (
        load_settings(
            {}, {"MODEL_ZOO_PACS_URL": "http://127.0.0.1:8042/dicom-web", "MODEL_ZOO_PACS_TOKEN": "x"}
        ).transport_warning
        is None
    )
    bad = [
        ({"pacs": {"url": "https://u:pw-SECRET-3@pacs.example.org/dicom-web"}}, "user name or password"),
        ({"pacs": {"url": "ftp://pacs.example.org"}}, "https://"),
        ({"pacs": {"url": "https://p.example.org", "password": "pw-SECRET-4"}}, "no username"),
        ({"pacs": {"url": "https://p.example.org", "passwd": "pw-SECRET-5"}}, "unknown keys: passwd"),
        ({"pacs": {"url": "https://p.example.org", "timeout": "soon"}}, "timeout"),
        ({"pacs": {"username": "u", "password": "pw-SECRET-6"}}, "no [pacs] url"),
    ]
    for secrets, expected in bad:
        with pytest.raises(PacsConfigError) as info:
            load_settings(secrets, {})
        assert expected in str(info.value), str(info.value)
        assert "SECRET" not in str(info.value), "a credential was echoed"


def test_query_params_follow_qido_and_orthanc_matching():
    import datetime as dt

    from model_zoo.errors import InputError
    from model_zoo.pacs import StudyQuery
    from model_zoo.pacs.client import _query_string

    q = StudyQuery(
        patient_id="11RG3",
        patient_name=" doe ^jane ",
        accession="A1",
        date_from=dt.date(2004, 1, 1),
        date_to=dt.date(2004, 12, 31),
    )
    assert q.params() == {
        "PatientID": "11RG3",
        "PatientName": "doe*jane*",
        "AccessionNumber": "A1",
        "StudyDate": "20040101-20041231",
        "ModalitiesInStudy": "CR,DX,DR,RF",
    }
    assert "PatientName=doe*jane*" in _query_string(q.params()), "wildcards are sent literally"
    assert "ModalitiesInStudy=CR,DX,DR,RF" in _query_string(q.params())
    assert StudyQuery(modality="any").params() == {}
    assert StudyQuery(date_to=dt.date(2004, 2, 1), modality="ct").params() == {
        "StudyDate": "-20040201",
        "ModalitiesInStudy": "CT",
    }
    for bad in (
        StudyQuery(patient_id="a\\b"),
        StudyQuery(patient_name="x&PatientID=*"),
        StudyQuery(date_from=dt.date(2005, 1, 1), date_to=dt.date(2004, 1, 1)),
    ):
        with pytest.raises(InputError):
            bad.params()
    assert "11RG3" not in repr(q) and "doe" not in repr(q)


# ----------------------------------------------------------------------------- search and open


def test_search_filters_match_on_the_real_server(client, orthanc):
    import datetime as dt

    from model_zoo.pacs import StudyQuery

    def uids(**kw):
        return {s.study_uid for s in client.search_studies(StudyQuery(**kw))}

    rg3 = orthanc.studies["rg3"]
    assert uids(patient_id="11RG3") == {rg3}
    assert rg3 in uids(patient_name="compressedsamples rg3"), "name parts, case-insensitive, wildcards literal"
    assert uids(patient_name="compressedsamples ct1", modality="any") == {orthanc.studies["ct"]}
    assert uids(patient_name="nobody of that name", modality="any") == set()
    assert uids(accession="FUJI95706") == {rg3}
    assert rg3 in uids(date_from=dt.date(2004, 8, 26), date_to=dt.date(2004, 8, 26))
    assert orthanc.studies["ct"] not in uids(date_from=dt.date(2004, 8, 1))
    radiographs = uids()
    assert rg3 in radiographs and not {orthanc.studies["ct"], orthanc.studies["mr"]} & radiographs
    assert {orthanc.studies["ct"], orthanc.studies["mr"]} <= uids(modality="any")
    assert uids(modality="CT") == {orthanc.studies["ct"]}
    (study,) = client.search_studies(StudyQuery(patient_id="11RG3"))
    assert study.modalities == ("CR",) and study.has_radiograph and study.patient_name == "CompressedSamples RG3"
    assert "11RG3" not in repr(study) and rg3 not in repr(study)


def test_non_radiograph_series_are_listed_with_a_reason(client, orthanc):
    (ct,) = client.list_series(orthanc.studies["ct"])
    assert ct.modality == "CT" and "not a radiograph" in ct.reason_not_readable
    assert "cross-sectional" in ct.reason_not_readable
    (cr,) = client.list_series(orthanc.studies["rg3"])
    assert cr.modality == "CR" and cr.reason_not_readable is None


def test_opened_instance_is_the_stored_radiograph(client, orthanc):
    from model_zoo.imaging import load_image
    from model_zoo.pacs import first_radiograph, open_instance

    instance, series = first_radiograph(client, orthanc.studies["rg3"])
    opened = open_instance(client, instance)
    local = load_image(_testdata("RG3_UNCR.dcm"))
    np.testing.assert_array_equal(opened.image.pixels, local.pixels)
    assert opened.image.meta.modality == "CR" and opened.header.SOPInstanceUID == instance.sop_uid
    assert "PixelData" not in opened.header
    assert client.thumbnail(instance)[:2] == b"\xff\xd8", "WADO-RS rendered JPEG"


# ----------------------------------------------------------------------------- write-back


def test_write_back_sr_and_pdf_land_in_the_same_study_and_validate(client, orthanc, tiny_zoo, tmp_path):
    import highdicom as hd
    import pydicom

    from model_zoo.pacs import write_back
    from model_zoo.pacs.writeback import DISCLAIMER, manifest_sha256

    study = orthanc.studies["rg3"]
    opened, pred, box, pdf, objects, key = _predict_and_prepare(client, tiny_zoo, study)
    assert pred.p_calibrated is not None, "the tiny release is calibrated: the SR must carry both"
    result = write_back(client, objects, key=key)
    assert result.written == ("SR", "PDF") and result.already_present == ()

    # Read both back through QIDO + WADO, as a viewer would.
    found = {i.modality: i for i in client.list_instances(study) if i.modality in ("SR", "DOC")}
    sr_inst, pdf_inst = found["SR"], found["DOC"]
    source_series = opened.header.SeriesInstanceUID
    assert len({sr_inst.series_uid, pdf_inst.series_uid, source_series}) == 3, "each in a new series"
    sr_bytes = client.retrieve_instance(sr_inst)
    pdf_bytes = client.retrieve_instance(pdf_inst)
    sr = hd.sr.srread(io.BytesIO(sr_bytes))
    assert sr.StudyInstanceUID == study and sr.PatientID == "11RG3", "same study, same patient"
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    (group,) = sr.content.get_planar_roi_measurement_groups()
    region = group.roi
    assert region.GraphicType == "POLYLINE"
    ref = region.ContentSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == opened.header.SOPInstanceUID
    x0, y0, x1, y1 = box
    np.testing.assert_allclose(region.value, [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], atol=1e-3)
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    pos = tiny_zoo.positive_class
    assert values[f"Ensemble probability of {pos}"] == pytest.approx(pred.p_ensemble, abs=1e-6)
    assert values[f"Calibrated ensemble probability of {pos}"] == pytest.approx(pred.p_calibrated, abs=1e-6)
    assert values[f"Clinic-only model probability of {pos}"] == pytest.approx(pred.p_clinic, abs=1e-6)
    assert values["Operating threshold (ensemble probability)"] == pytest.approx(pred.threshold, abs=1e-6)
    assert values["Operating threshold (calibrated probability)"] == pytest.approx(tiny_zoo.threshold_calibrated, abs=1e-6)
    for mid, p in pred.p_members.items():
        assert values[f"Member {mid} probability of {pos}"] == pytest.approx(p, abs=1e-6)
    (call,) = group.get_qualitative_evaluations()
    assert call.value.meaning == pred.label
    text = "\n".join(_sr_texts(sr))
    assert tiny_zoo.manifest.name in text and tiny_zoo.manifest.version in text
    assert manifest_sha256(tiny_zoo) in text and DISCLAIMER in text
    doc = pydicom.dcmread(io.BytesIO(pdf_bytes))
    assert doc.StudyInstanceUID == study and doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert doc.EncapsulatedDocument[: doc.EncapsulatedDocumentLength] == pdf
    assert doc.SourceInstanceSequence[0].ReferencedSOPInstanceUID == opened.header.SOPInstanceUID

    report = {}
    for name, data in (("SR", sr_bytes), ("PDF", pdf_bytes)):
        errors, warnings = dciodvfy(data, tmp_path)
        assert errors == [], f"dciodvfy errors on the {name}: {errors}"
        report[name] = sorted(set(warnings))
    print("dciodvfy warnings:", json.dumps(report, indent=1))
    # The only warning accepted: our private coding scheme is not in dciodvfy's defined terms.
    assert all("99BONEZOO" in w for w in report["SR"]) and report["PDF"] == [], report


@pytest.mark.parametrize("fallback", ["calibrated", "no calibrator", "calibration disagrees"])
def test_sr_carries_calibrated_numbers_only_on_the_calibrated_scale(tiny_zoo, tmp_path, fallback):
    """When the call falls back to the raw probability (no calibrator, or a calibration that would
    flip the zoo's own call), the SR carries no calibrated probability or threshold - the same
    numbers the PDF and the Case page show - and still passes dciodvfy."""
    import copy
    import dataclasses

    import highdicom as hd
    from pydicom import dcmwrite
    from test_framing import _rg3_header

    from model_zoo.framing import frame_call
    from model_zoo.pacs.study import prepare_writeback

    header = _rg3_header()
    pixels = np.random.default_rng(5).random((96, 96)).astype(np.float32)
    box, inputs = (10.0, 10.0, 60.0, 60.0), {"age": 40.0, "sex": "M", "site": "appendicular"}
    zoo = copy.copy(tiny_zoo)
    pred = zoo.predict(pixels, box, **inputs)
    assert pred.p_calibrated is not None, "the tiny release is calibrated"
    if fallback == "no calibrator":
        zoo.calibration = None  # a release without one: no calibrated number anywhere
        pred = dataclasses.replace(pred, p_calibrated=None)
        call = zoo.call(pred.p_ensemble)
    elif fallback == "calibration disagrees":  # a calibrated value on the other side of its threshold
        other = zoo.threshold_calibrated - 0.2 if pred.p_ensemble >= zoo.threshold else zoo.threshold_calibrated + 0.2
        call = frame_call(
            pred.p_ensemble,
            zoo.threshold,
            zoo.positive_class,
            zoo.negative_class,
            p_calibrated=other,
            threshold_calibrated=zoo.threshold_calibrated,
            band=0.0,
        )
    else:
        call = zoo.call(pred.p_ensemble)
    assert call.calibrated == (fallback == "calibrated")
    objects, _ = prepare_writeback(header, zoo, pred, box=box, roi_source="entered", inputs=inputs, pdf=None, call=call)
    buf = io.BytesIO()
    dcmwrite(buf, objects["SR"], enforce_file_format=False)
    sr = hd.sr.srread(io.BytesIO(buf.getvalue()))
    (group,) = sr.content.get_planar_roi_measurement_groups()
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    pos = zoo.positive_class
    calibrated = {f"Calibrated ensemble probability of {pos}", "Operating threshold (calibrated probability)"}
    if call.calibrated:
        assert values[f"Calibrated ensemble probability of {pos}"] == pytest.approx(call.p, abs=1e-6)
        assert values["Operating threshold (calibrated probability)"] == pytest.approx(call.threshold, abs=1e-6)
    else:
        assert not calibrated & set(values), f"raw call, calibrated numbers in the SR: {values}"
    assert values[f"Indeterminate band half-width ({call.scale} probability)"] == pytest.approx(call.band)
    assert values[f"Ensemble probability of {pos}"] == pytest.approx(pred.p_ensemble, abs=1e-6)
    errors, warnings = dciodvfy(buf.getvalue(), tmp_path)
    assert errors == [], f"dciodvfy errors on the SR: {errors}"
    assert all("99BONEZOO" in w for w in set(warnings)), warnings


def test_same_result_written_twice_is_not_duplicated(client, orthanc, tiny_zoo):
    from model_zoo.pacs import write_back

    study = orthanc.studies["rg3"]
    *_, objects, key = _predict_and_prepare(client, tiny_zoo, study, inputs={"age": 61.0, "sex": "M", "site": "axial"})
    first = write_back(client, objects, key=key)
    n_sr = orthanc.count(study, "SR")
    again = write_back(client, objects, key=key)
    assert first.written == ("SR", "PDF") and again.written == () and again.already_present == ("SR", "PDF")
    assert "not written again" in again.message
    assert orthanc.count(study, "SR") == n_sr and orthanc.count(study, "DOC") == n_sr


def test_refused_write_is_never_reported_as_saved(client, orthanc, tiny_zoo):
    from model_zoo.pacs import PacsRefused, write_back

    study = orthanc.studies["refuse"]
    *_, objects, key = _predict_and_prepare(client, tiny_zoo, study)
    # Orthanc answers this STOW-RS with success (no Failed SOP) and drops the objects.
    outcome = client.store(list(objects.values()), study)
    assert outcome.failed == 0, "the server claims success: only the re-query can tell"
    with pytest.raises(PacsRefused) as info:
        write_back(client, objects, key=key)
    assert "nothing was saved" in str(info.value) and "re-query" in str(info.value)
    assert orthanc.count(study, "SR") == 0 and orthanc.count(study, "DOC") == 0


# ----------------------------------------------------------------------------- failures


def test_stopped_orthanc_gives_a_clear_message(tmp_path, pacs_env, monkeypatch, capsys):
    from model_zoo.__main__ import main
    from model_zoo.pacs import PacsClient, PacsUnavailable, StudyQuery

    server = orthanc_helper.Orthanc(tmp_path / "stopped").start()
    client = PacsClient(_settings(server.dicomweb_url))
    assert client.search_studies(StudyQuery(modality="any")) == []
    server.stop()
    start = time.monotonic()
    with pytest.raises(PacsUnavailable) as info:
        client.search_studies(StudyQuery(patient_id="11RG3"))
    assert time.monotonic() - start < 5, "no retry loop on a stopped server"
    assert "is not reachable" in str(info.value) and server.dicomweb_url in str(info.value)
    assert "11RG3" not in str(info.value) and orthanc_helper.PASSWORD not in str(info.value)
    monkeypatch.setenv("MODEL_ZOO_PACS_URL", server.dicomweb_url)
    assert main(["pacs", "check"]) == 2
    assert "is not reachable" in capsys.readouterr().err


def test_wrong_password_is_refused_credentials(orthanc, pacs_env, monkeypatch, capsys):
    from model_zoo.__main__ import main
    from model_zoo.pacs import PacsAuthError, PacsClient, StudyQuery

    with pytest.raises(PacsAuthError) as info:
        PacsClient(_settings(orthanc.dicomweb_url, password="wrong-PASSWORD-77")).search_studies(StudyQuery())
    assert str(info.value).startswith("PACS refused the credentials (HTTP 401)")
    assert "wrong-PASSWORD-77" not in str(info.value)
    monkeypatch.setenv("MODEL_ZOO_PACS_PASSWORD", "wrong-PASSWORD-77")
    assert main(["pacs", "check"]) == 2
    out = capsys.readouterr()
    assert "PACS refused the credentials" in out.err and "wrong-PASSWORD-77" not in out.out + out.err


def test_hung_server_times_out(pacs_env):
    from model_zoo.pacs import PacsClient, PacsTimeout, StudyQuery

    with hung_server() as port:
        client = PacsClient(_settings(f"http://127.0.0.1:{port}/dicom-web", timeout=1.0))
        start = time.monotonic()
        with pytest.raises(PacsTimeout) as info:
            client.search_studies(StudyQuery(patient_id="11RG3"))
        took = time.monotonic() - start
    assert took < 4, f"one 1 s timeout, no retries (took {took:.1f} s)"
    assert "did not answer within 1 s" in str(info.value) and "11RG3" not in str(info.value)


def test_study_without_radiograph_and_undecodable_image(client, orthanc, pacs_env, capsys):
    from model_zoo.__main__ import main
    from model_zoo.errors import InputError
    from model_zoo.pacs import NoRadiograph, first_radiograph, open_instance

    with pytest.raises(NoRadiograph) as info:
        first_radiograph(client, orthanc.studies["ct"])
    assert "no radiograph" in str(info.value) and "CT" in str(info.value)
    instance, _ = first_radiograph(client, orthanc.studies["broken"])
    with pytest.raises(InputError) as info:
        open_instance(client, instance)
    assert str(info.value).startswith("PACS image")
    assert (
        main(
            [
                "pacs",
                "predict",
                "--study",
                orthanc.studies["ct"],
                "--study",
                orthanc.studies["broken"],
                "--study",
                orthanc.studies["mr"],
                "--study",
                "not-a-uid",
                "--study",
                "1.2.3.999",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "study 4/5: error: a Study Instance UID is digits and dots" in err and "not-a-uid" not in err
    assert "study 5/5: error: the PACS has no study with this Study Instance UID" in err and "1.2.3.999" not in err
    assert "study 1/5: error: this study has no radiograph" in err
    assert "study 2/5: error: PACS image" in err
    assert "study 3/5: error: this study has no radiograph to read (series found: MR)" in err
    assert "0/5 studies done; 5 failed" in err
    assert all(uid not in err for uid in orthanc.studies.values())


def test_cli_predict_writes_once_and_prints_no_identifier(orthanc, pacs_env, capsys):
    from model_zoo import audit
    from model_zoo.__main__ import main

    study = orthanc.studies["dashboard"]
    before = orthanc.count(study, "SR")
    assert main(["pacs", "predict", "--study", study, "--write", "--roi", "full"]) == 0
    first = capsys.readouterr()
    assert "study 1/1: CR 1760 x 1760 px" in first.out and "saved SR + PDF" in first.out
    assert main(["pacs", "predict", "--study", study, "--write", "--roi", "full"]) == 0
    second = capsys.readouterr()
    assert "already in the study" in second.out
    assert orthanc.count(study, "SR") == before + 1
    text = first.out + first.err + second.out + second.err
    assert study not in text and "DASHBOARD-CASE" not in text and "CompressedSamples" not in text
    events = [e for e in audit.read_events(pacs_env / "audit.jsonl") if e.get("source") == "pacs-cli"]
    assert [e["pacs"]["written"] for e in events] == [["SR", "PDF"], []]
    assert main(["pacs", "check"]) == 0
    assert "PACS OK" in capsys.readouterr().out


# ----------------------------------------------------------------------------- gate, OOD and framing (CLI)


def _upload_rg3(orthanc, patient_id: str, **tags: str) -> str:
    """A copy of RG3 in a new study on the server; its Study Instance UID."""
    import pydicom

    data = _copy_of_rg3(patient_id, **tags)
    orthanc.upload(data)
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


def _cli_events(pacs_env) -> list[dict]:
    from model_zoo import audit

    path = pacs_env / "audit.jsonl"
    return [e for e in audit.read_events(path) if e.get("source") == "pacs-cli"] if path.exists() else []


def test_cli_gate_refuses_a_modality_the_pacs_lets_through(orthanc, pacs_env, monkeypatch, capsys):
    """The PACS listing's modality filter is not the gate: a server (or a filter) that lists MR
    as readable still gets no prediction, the same refusal as the Case page, and an audit line."""
    from model_zoo.__main__ import main
    from model_zoo.pacs import client as client_mod

    monkeypatch.setattr(client_mod, "RADIOGRAPH_MODALITIES", (*client_mod.RADIOGRAPH_MODALITIES, "MR"))
    study = orthanc.studies["mr"]
    assert main(["pacs", "predict", "--study", study, "--write"]) == 1
    err = capsys.readouterr().err
    assert "study 1/1: error: DICOM Modality MR (magnetic resonance) is not a projection radiograph" in err
    assert "0/1 studies done; 1 failed" in err
    assert orthanc.count(study, "SR") == 0 and orthanc.count(study, "DOC") == 0
    events = _cli_events(pacs_env)
    assert [e["event"] for e in events] == ["gate_refusal"]
    assert "Modality MR" in events[0]["reason"] and len(events[0]["image_sha256"]) == 64


def test_cli_prefills_age_and_site_only_where_the_header_is_plausible(orthanc, pacs_env, capsys):
    from model_zoo.__main__ import main

    chest = _upload_rg3(orthanc, "GATE-CHEST", BodyPartExamined="CHEST", PatientAge="000Y")
    knee = _upload_rg3(orthanc, "GATE-KNEE", BodyPartExamined="KNEE", PatientAge="045Y")
    assert main(["pacs", "predict", "--study", chest, "--study", knee, "--roi", "full", "--jitter", "0"]) == 0
    out = capsys.readouterr()
    assert "study 1/2: warning: BodyPartExamined is CHEST" in out.err
    assert "study 1/2: CR 1760 x 1760 px, ROI full, site not given;" in out.out
    assert "study 2/2: CR 1760 x 1760 px, ROI full, site appendicular;" in out.out
    assert "study 2/2: warning" not in out.err
    inputs = [e["inputs"] for e in _cli_events(pacs_env)]
    assert inputs == [{"age": None, "sex": "F", "site": None}, {"age": 45.0, "sex": "F", "site": "appendicular"}]
    # An explicit --site still wins over the header.
    assert main(["pacs", "predict", "--study", knee, "--roi", "full", "--jitter", "0", "--site", "axial"]) == 0
    assert "site axial;" in capsys.readouterr().out


class _FlagEverything:
    """Stands in for a release's OOD model: every crop scores above the threshold."""

    threshold = 1.0

    def score(self, features):
        return np.full(len(next(iter(features.values()))), 5.0)

    def is_ood(self, score):
        return np.asarray(score) > self.threshold


def test_cli_withholds_the_call_of_an_ood_image_unless_allowed(orthanc, tiny_zoo, pacs_env, monkeypatch, capsys):
    import copy

    from model_zoo import ensemble
    from model_zoo.__main__ import main

    flagged = copy.copy(tiny_zoo)
    flagged.ood = _FlagEverything()
    monkeypatch.setattr(ensemble, "load_zoo", lambda path=None: flagged)
    study = _upload_rg3(orthanc, "OOD-CASE")
    args = ["pacs", "predict", "--study", study, "--write", "--roi", "full", "--jitter", "0"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "out of distribution: this image does not look like the radiographs" in out.out
    assert "no call, not written back" in out.out and "->" not in out.out
    assert "1 out of distribution: no call, not written back (--allow-ood to override)" in out.err
    assert orthanc.count(study, "SR") == 0 and orthanc.count(study, "DOC") == 0
    (event,) = _cli_events(pacs_env)
    assert event["event"] == "case_prediction" and event["outputs"]["label"] == "" and event["call"] is None
    assert event["ood"] == {"score": 5.0, "threshold": 1.0, "flagged": True} and event["pacs"]["write"] is False

    assert main([*args, "--allow-ood"]) == 0
    out = capsys.readouterr()
    assert "called anyway (--allow-ood)" in out.err and "saved SR + PDF" in out.out and "->" in out.out
    assert orthanc.count(study, "SR") == 1
    events = _cli_events(pacs_env)[1:]
    assert [e["event"] for e in events] == ["ood_override", "case_prediction"]
    assert events[1]["ood"]["flagged"] is True and events[1]["call"]["word"]


INDETERMINATE_WORD = "indeterminate"


def test_cli_pdf_and_sr_say_indeterminate_where_the_case_page_does(orthanc, client, tiny_release, pacs_env, tmp_path, capsys):
    """A release whose band holds this case: the CLI prints the Case page's sentence, and the SR
    and PDF read back from the PACS say indeterminate (coded IND), never a class word."""
    import highdicom as hd
    from test_dashboard_apptest import _pdf_strings
    from test_framing import release_with_band

    from model_zoo import framing, roi
    from model_zoo.__main__ import main
    from model_zoo.ensemble import load_zoo
    from model_zoo.pacs import first_radiograph, open_instance

    wide = release_with_band(tiny_release["release"], tmp_path / "zoo", 0.49, "0.0.2")
    zoo = load_zoo(wide)
    study = _upload_rg3(orthanc, "BAND-CASE")
    opened = open_instance(client, first_radiograph(client, study)[0])
    pixels = opened.image.pixels
    box = roi.full_image_box((pixels.shape[1], pixels.shape[0]))
    inputs = {"age": None, "sex": "F", "site": "appendicular"}  # RG3: no PatientAge, EXTREMITY
    pred = zoo.predict(pixels, box, **inputs)
    jitter = framing.jitter_summary(pred.p_ensemble, zoo.jitter_probs(pixels, box, **inputs), pred.threshold)
    expected = zoo.call(pred.p_ensemble, jitter)
    assert expected.indeterminate, f"the wide band must hold this case: {expected}"

    assert main(["pacs", "predict", "--study", study, "--zoo", str(wide), "--write", "--roi", "full"]) == 0
    out = capsys.readouterr().out
    assert f"; {expected.sentence}" in out and "-> indeterminate - the call" in out
    assert framing.jitter_sentence(jitter) in out, "the ROI-jitter result, as the Case page shows it"
    (event,) = [e for e in _cli_events(pacs_env) if e["event"] == "case_prediction"]
    record = event["call"]
    assert record["word"] == INDETERMINATE_WORD and record["scale"] == expected.scale
    assert record["jitter"] == {
        "boxes": jitter.n,
        "flips": jitter.n_flips,
        "same_call": jitter.same_call,
        "p_min": pytest.approx(jitter.p_min),
        "p_max": pytest.approx(jitter.p_max),
        "p_sd": pytest.approx(jitter.p_sd),
    }
    found = {i.modality: i for i in client.list_instances(study) if i.modality in ("SR", "DOC")}
    sr = hd.sr.srread(io.BytesIO(client.retrieve_instance(found["SR"])))
    (group,) = sr.content.get_planar_roi_measurement_groups()
    (call,) = group.get_qualitative_evaluations()
    assert (call.value.value, call.value.meaning) == ("IND", "indeterminate")
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    assert values[f"Indeterminate band half-width ({expected.scale} probability)"] == pytest.approx(0.49)
    import pydicom

    doc = pydicom.dcmread(io.BytesIO(client.retrieve_instance(found["DOC"])))
    text = _pdf_strings(doc.EncapsulatedDocument[: doc.EncapsulatedDocumentLength])
    assert "-> indeterminate - the call" in text and "-> above" not in text and "-> below" not in text


# ----------------------------------------------------------------------------- PHI


def test_pacs_paths_carry_no_identifier(orthanc, client, tiny_zoo, pacs_env, caplog, capsys, monkeypatch):
    """The identified DICOM goes through search, open, predict, write-back (CLI and library)
    and every failure path; the audit log, all log records (DEBUG and up), CLI output and
    error messages stay free of its identifiers. The written SR does carry them: same study."""
    import pydicom

    from model_zoo import audit
    from model_zoo.__main__ import main
    from model_zoo.pacs import PacsClient, PacsError, StudyQuery, write_back

    phi = test_phi.phi_dicom(test_phi.NONCE, 1234)
    orthanc.upload(phi)
    study = test_phi.IDENTIFYING_TAGS["StudyInstanceUID"]
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []

    found = client.search_studies(StudyQuery(patient_id="PHI-123456", patient_name="doe jane"))
    assert [s.study_uid for s in found] == [study], "positive control: the search really ran"
    messages.append(repr(found))
    *_, objects, key = _predict_and_prepare(client, tiny_zoo, study, box=(8, 8, 56, 56))
    result = write_back(client, objects, key=key)
    messages += [result.message, repr(result)]
    sr = pydicom.dcmread(
        io.BytesIO(client.retrieve_instance(next(i for i in client.list_instances(study) if i.modality == "SR")))
    )
    assert str(sr.PatientName) == "Doe^Jane^PHI", "positive control: the SR belongs to the patient's study"

    assert main(["pacs", "predict", "--study", study, "--write"]) == 0
    cli = capsys.readouterr()
    assert "study 1/1: CR 64 x 64 px" in cli.out, "positive control: the CLI ran on the PHI study"
    # Failure paths with identifying inputs.
    bad_clients = [PacsClient(_settings(orthanc.dicomweb_url, password="nope"))]
    with hung_server() as port:
        bad_clients.append(PacsClient(_settings(f"http://127.0.0.1:{port}/dicom-web", timeout=0.5)))
        bad_clients.append(PacsClient(_settings(f"http://127.0.0.1:{orthanc_helper.free_port()}/dicom-web")))
        for bad in bad_clients:
            for call in (
                lambda c: c.search_studies(StudyQuery(patient_id="PHI-123456", accession="ACC-PHI-999")),
                lambda c: c.list_series(study),
                lambda c: c.list_instances(study),
            ):
                with pytest.raises(PacsError) as info:
                    call(bad)
                messages.append(str(info.value))
    monkeypatch.setenv("MODEL_ZOO_PACS_PASSWORD", "nope")
    assert main(["pacs", "predict", "--study", study]) == 2
    refused = capsys.readouterr()
    assert "PACS refused the credentials" in refused.err
    cli_text = cli.out + cli.err + refused.out + refused.err
    logs = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "dicom-web" in logs or "127.0.0.1" in logs, "positive control: request logs were captured"
    audit_text = (pacs_env / "audit.jsonl").read_text(encoding="ascii")
    assert audit.read_events(pacs_env / "audit.jsonl"), "positive control: the audit log was written"
    for where, text in (("CLI output", cli_text), ("messages", "\n".join(messages)), ("logs", logs), ("audit log", audit_text)):
        assert test_phi.leaked(text) == [], f"{where}: {test_phi.leaked(text)}"


# ----------------------------------------------------------------------------- dashboard


def _texts(at) -> str:
    return "\n".join(str(getattr(n, "proto", "")) for block in (at.main, at.sidebar) for n in block)


def test_dashboard_opens_from_pacs_predicts_and_writes_back(orthanc, pacs_env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    study = orthanc.studies["dashboard"]
    at = AppTest.from_file(str(APP), default_timeout=300).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e for e in at.expander if e.label == "Open from PACS"]
    at.text_input(key="pacs_q_pid").input("DASHBOARD-CASE")
    next(b for b in at.button if b.label == "Search the PACS").click().run()
    assert not at.error, [e.value for e in at.error]
    assert "1 study found" in _texts(at)
    at.button(key="pacs_series_0").click().run()
    at.button(key="pacs_open").click().run()
    assert not at.error, [e.value for e in at.error]
    case = at.session_state["case"]
    assert case.label == "image from the PACS" and case.size == (1760, 1760)
    assert at.selectbox(key="case_sex").value == "F", "DICOM tags pre-fill as for an upload"
    at.radio(key="case_roi_mode").set_value("Enter coordinates").run()
    for k, v in zip(("case_x0", "case_y0", "case_x1", "case_y1"), (500, 900, 1100, 1500), strict=True):
        at.number_input(key=k).set_value(float(v))
    at.checkbox(key="case_confirm").check().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [m for m in at.markdown if m.value.startswith("#### ")], "the prediction is shown"
    before = orthanc.count(study, "SR")
    at.button(key="pacs_write").click().run()
    assert not at.error, [e.value for e in at.error]
    assert any("saved SR + PDF" in s.value for s in at.success), [s.value for s in at.success]
    assert orthanc.count(study, "SR") == before + 1 and orthanc.count(study, "DOC") == before + 1
    at.button(key="pacs_write").click().run()
    assert any("not written again" in s.value for s in at.success), [s.value for s in at.success]
    assert orthanc.count(study, "SR") == before + 1, "a second click does not duplicate"
    events = [json.loads(x) for x in (pacs_env / "audit.jsonl").read_text().splitlines()]
    assert {"pacs_open", "pacs_write", "case_prediction"} <= {e["event"] for e in events}


def test_dashboard_without_pacs_or_with_pacs_down(pacs_env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("MODEL_ZOO_PACS_URL")
    monkeypatch.delenv("MODEL_ZOO_PACS_USERNAME")
    monkeypatch.delenv("MODEL_ZOO_PACS_PASSWORD")
    at = AppTest.from_file(str(APP), default_timeout=300).run()
    assert not at.exception and not [e for e in at.expander if e.label == "Open from PACS"], "hidden when not configured"

    monkeypatch.setenv("MODEL_ZOO_PACS_URL", f"http://127.0.0.1:{orthanc_helper.free_port()}/dicom-web")
    at = AppTest.from_file(str(APP), default_timeout=300).run()
    next(b for b in at.button if b.label == "Search the PACS").click().run()
    assert any("is not reachable" in e.value and "Uploads" in e.value for e in at.error), [e.value for e in at.error]
    at.button(key="case_load_sample").click().run()  # the page stays usable
    assert not at.exception and at.session_state["case"].label.startswith("sample case")


def test_dashboard_lists_non_radiograph_series_greyed_out(orthanc, pacs_env):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=300).run()
    at.text_input(key="pacs_q_pid").input("1CT1")
    at.selectbox(key="pacs_q_mod").set_value("Any modality")
    next(b for b in at.button if b.label == "Search the PACS").click().run()
    assert not at.error, [e.value for e in at.error]
    assert any("no radiograph" in w.value for w in at.warning), [w.value for w in at.warning]
    row = next(m.value for m in at.markdown if "not a radiograph" in m.value)
    assert row.startswith(":gray[") and "CT is cross-sectional" in row
    assert at.button(key="pacs_series_0").disabled, "a CT series cannot be opened"
    assert "case" not in at.session_state
