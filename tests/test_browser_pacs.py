"""Real-browser PACS round trip: headless Debian Chromium (Playwright) against the Streamlit app
and a live Orthanc (DICOMweb + HTTP basic auth, ``tests/orthanc.py``).

Case page -> "Open from PACS" -> search by patient ID -> RG3's study, series, image -> ROI
"Whole image" -> confirm the clinical inputs -> probability -> "Write the result to the PACS";
then, through Orthanc's own DICOMweb/REST API (not the code under test): an SR and an
Encapsulated PDF are in the SAME study, the SR references the opened image's SOP Instance UID.
A screenshot of the PACS panel goes to /tmp/pacs.png (and the page to $BROWSER_SHOTS or the
test's tmp folder). Skips with a printed reason where Chromium, Playwright or Orthanc is missing.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
import requests

import orthanc as orthanc_helper
from test_browser import CHROMIUM, CHROMIUM_ARGS, _skip, streamlit_server

pytestmark = pytest.mark.browser

RG3_PATIENT_ID = "11RG3"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PANEL_SHOT = Path("/tmp/pacs.png")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc with RG3 (CR) and CT_small in it; skips before anything slow is built."""
    if not CHROMIUM.exists():
        _skip("Debian chromium is not installed (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        _skip("playwright is not installed")
    reason = orthanc_helper.missing_reason()
    if reason:
        _skip(reason)
    import pydicom
    from pydicom.data import get_testdata_file

    paths = {name: get_testdata_file(name) for name in ("RG3_UNCR.dcm", "CT_small.dcm")}
    if paths["RG3_UNCR.dcm"] is None:
        _skip("pydicom-data's RG3_UNCR.dcm is not installed")
    server = orthanc_helper.Orthanc(tmp_path_factory.mktemp("orthanc_browser")).start()
    try:
        for path in paths.values():
            if path is not None:
                server.upload(Path(path).read_bytes())
        rg3 = pydicom.dcmread(paths["RG3_UNCR.dcm"], stop_before_pixels=True)
        server.rg3 = {"study": str(rg3.StudyInstanceUID), "sop": str(rg3.SOPInstanceUID)}
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def app(pacs, request, tmp_path_factory):
    """``streamlit run dashboard/app.py`` with the PACS and the tiny zoo set by environment."""
    tiny_release = request.getfixturevalue("tiny_release")  # after the skips: ~40 s to build
    tmp = tmp_path_factory.mktemp("browser_pacs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_ZOO_PACS_")}
    env.update(
        MODEL_ZOO_DIR=str(tiny_release["release"]),
        MODEL_ZOO_AUDIT_LOG=str(tmp / "audit.jsonl"),
        MODEL_ZOO_PACS_URL=pacs.dicomweb_url,
        MODEL_ZOO_PACS_USERNAME=orthanc_helper.USER,
        MODEL_ZOO_PACS_PASSWORD=orthanc_helper.PASSWORD,
        MODEL_ZOO_PACS_TIMEOUT="30",
    )
    with streamlit_server(env, tmp) as url:
        yield {"url": url, "tmp": tmp, "audit": tmp / "audit.jsonl", "log": tmp / "server.log"}


# -- checks through Orthanc itself (independent of model_zoo.pacs) ------------------------


def _study_instances(pacs, study_uid: str) -> list[dict]:
    r = requests.get(
        f"{pacs.dicomweb_url}/studies/{study_uid}/instances",
        params={"includefield": "00080060"},
        auth=(orthanc_helper.USER, orthanc_helper.PASSWORD),
        timeout=10,
    )
    r.raise_for_status()
    return r.json() if r.status_code == 200 and r.text.strip() else []


def _tag(item: dict, tag: str) -> str:
    return str((item.get(tag, {}).get("Value") or [""])[0])


def _fetch(pacs, sop_uid: str):
    """The stored file of one instance, via Orthanc's REST API (lookup -> /instances/{id}/file)."""
    import pydicom

    auth = (orthanc_helper.USER, orthanc_helper.PASSWORD)
    r = requests.post(f"{pacs.url}/tools/lookup", data=sop_uid, auth=auth, timeout=10)
    r.raise_for_status()
    (hit,) = [h for h in r.json() if h["Type"] == "Instance"]
    r = requests.get(f"{pacs.url}/instances/{hit['ID']}/file", auth=auth, timeout=30)
    r.raise_for_status()
    return pydicom.dcmread(io.BytesIO(r.content))


def _content_references(sr) -> set[str]:
    """Every ReferencedSOPInstanceUID in the SR's content tree (not its evidence sequences)."""
    return {
        str(elem.value) for item in sr.ContentSequence for elem in item.iterall() if elem.keyword == "ReferencedSOPInstanceUID"
    }


# -- the test -----------------------------------------------------------------------------


def test_open_from_pacs_predict_and_write_back(pacs, app):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)  # first render imports torch/timm: slow on 2 cores
    shots = Path(os.environ.get("BROWSER_SHOTS", app["tmp"]))
    shots.mkdir(parents=True, exist_ok=True)
    study_uid, source_sop = pacs.rg3["study"], pacs.rg3["sop"]
    before = {_tag(i, "00080018") for i in _study_instances(pacs, study_uid)}
    assert before == {source_sop}, "the study starts with the radiograph alone"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(120_000)
        page.goto(app["url"], wait_until="networkidle")
        expect(page.get_by_text("1. Radiograph")).to_be_visible()

        # Open from PACS: search by patient ID -> study -> series -> image.
        panel = page.locator("[data-testid='stExpander']").filter(has_text="Open from PACS")
        expect(panel).to_have_count(1)
        panel.get_by_text("Open from PACS").first.click()
        panel.get_by_label("Patient ID").fill(RG3_PATIENT_ID)
        panel.get_by_role("button", name="Search the PACS").click()
        expect(panel.get_by_text("1 study found")).to_be_visible()
        expect(panel.get_by_role("combobox", name="Study")).to_have_value(re.compile(rf"ID {RG3_PATIENT_ID} "))
        choose = panel.get_by_role("button", name="Choose", exact=True)  # not "Choose date"
        expect(choose).to_have_count(1)  # RG3's one CR series (the CT study is not listed)
        choose.click()
        open_button = panel.get_by_role("button", name="Open this image as the case")
        expect(open_button).to_be_visible()
        expect(panel.get_by_text("preview")).to_be_visible()  # the WADO-RS rendered thumbnail
        open_button.click()
        expect(panel.get_by_text("Opened from the PACS")).to_be_visible()
        expect(page.get_by_text(re.compile(r"Loaded: image from the PACS - 1760 x 1760 px DICOM"))).to_be_visible()
        page.wait_for_load_state("networkidle")
        expect(page.get_by_text("Running...")).to_have_count(0)
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(PANEL_SHOT))

        # ROI: the whole image (the page then quotes the release's whole-image AUC).
        page.locator("[data-testid='stRadio']").get_by_text("Whole image", exact=True).click()
        expect(page.get_by_text(re.compile(r"ROI in stored pixels: x 0-1760, y 0-1760"))).to_be_visible()
        page.get_by_text("I have checked age, sex and site").click()
        expect(page.get_by_text(re.compile(r"Probability of \w+: ")).first).to_be_visible()

        # Write back (the panel follows the heatmaps and the PDF section).
        write = page.get_by_role("button", name="Write the result to the PACS")
        expect(write).to_be_visible(timeout=180_000)
        expect(page.get_by_text("Running...")).to_have_count(0, timeout=180_000)
        write.click()
        expect(page.get_by_text(re.compile(r"PACS: saved SR \+ PDF in the patient's study"))).to_be_visible()
        expect(page.locator("[data-testid='stException']")).to_have_count(0)
        page.screenshot(path=str(shots / "pacs_written.png"), full_page=True)
        browser.close()

    # What the PACS now holds, read back through Orthanc (not through model_zoo.pacs).
    items = _study_instances(pacs, study_uid)
    new = {_tag(i, "00080018"): _tag(i, "00080060") for i in items if _tag(i, "00080018") != source_sop}
    assert sorted(new.values()) == ["DOC", "SR"], new
    sr_uid = next(uid for uid, mod in new.items() if mod == "SR")
    doc_uid = next(uid for uid, mod in new.items() if mod == "DOC")
    sr, doc = _fetch(pacs, sr_uid), _fetch(pacs, doc_uid)
    assert sr.SOPClassUID == COMPREHENSIVE_SR and doc.SOPClassUID == ENCAPSULATED_PDF
    assert sr.StudyInstanceUID == study_uid and doc.StudyInstanceUID == study_uid, "same study"
    assert sr.PatientID == RG3_PATIENT_ID and doc.PatientID == RG3_PATIENT_ID
    assert source_sop in _content_references(sr), "the SR's content references the opened image"
    assert doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert bytes(doc.EncapsulatedDocument).startswith(b"%PDF")
    studies = requests.get(f"{pacs.url}/studies", auth=(orthanc_helper.USER, orthanc_helper.PASSWORD), timeout=10).json()
    assert len(studies) == 2, "no new study was created (RG3 + CT_small only)"
    events = app["audit"].read_text()
    assert '"pacs_open"' in events and '"pacs_write"' in events
