"""Out-of-distribution score (``model_zoo.ood``), ``python -m training add-ood`` and where the
flag shows: ``Zoo.predict``, ``python -m model_zoo predict`` (``ood_score``/``ood`` columns, no
word without ``--allow-ood``), the Batch logic and the Case page (no call until overridden,
override audited). Releases without an OOD model behave exactly as before.

Toy feature sets check the maths against independent computations (scipy's Mahalanobis with
sklearn's Ledoit-Wolf covariance, brute-force nearest neighbours); the shared tiny release
(``tiny_release``) gets an OOD model through the real add-ood path, with a few non-bone images
instead of the full installed set so the module stays fast.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_zoo import ood

# ----------------------------------------------------------------------------- maths (toy features)


def _gaussian(n: int, d: int, seed: int, scale: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sd = np.ones(d) if scale is None else scale
    return rng.normal(size=(n, d)) * sd


def test_mahalanobis_matches_scipy_with_ledoit_wolf_covariance():
    from scipy.spatial.distance import mahalanobis
    from sklearn.covariance import ledoit_wolf

    sd = np.array([1.0, 2.0, 0.5, 3.0])
    train = {"a": _gaussian(400, 4, 0, sd)}
    val = {"a": _gaussian(200, 4, 1, sd)}
    model = ood.fit_ood(train, val, method="mahalanobis", transform="none", combine="max", val_quantile=0.95)
    cov, _ = ledoit_wolf(train["a"])
    vi = np.linalg.inv(cov)
    mean = train["a"].mean(0)
    queries = np.array([[0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [5.0, -4.0, 1.0, 9.0]])
    raw = model.raw_scores({"a": queries})["a"]
    expected = np.array([mahalanobis(q, mean, vi) ** 2 for q in queries])
    np.testing.assert_allclose(raw, expected, rtol=1e-5)
    # The known answer, roughly: 3 SD along axis 0 and 4 SD (2 / 0.5) along axis 2 of a diagonal Gaussian.
    assert raw[1] == pytest.approx(9.0, rel=0.25) and raw[2] == pytest.approx(16.0, rel=0.25)
    assert raw[0] < 0.5


def test_far_image_scores_higher_and_is_flagged_near_one_is_not():
    """Training features cluster around a direction (as pooled ReLU features do); a crop along it is in
    distribution, one whose features for member ``a`` point elsewhere is not (max of members)."""
    centre_a, centre_b = np.linspace(1.0, 3.0, 8), np.linspace(2.0, 1.0, 5)
    train = {"a": centre_a + _gaussian(300, 8, 2) * 0.3, "b": centre_b + _gaussian(300, 5, 3) * 0.3}
    val = {"a": centre_a + _gaussian(150, 8, 4) * 0.3, "b": centre_b + _gaussian(150, 5, 5) * 0.3}
    near = {"a": centre_a[None] + 0.05, "b": centre_b[None] - 0.05}
    far = {"a": centre_a[None] * np.array([1, -1] * 4), "b": centre_b[None]}
    for method in ood.METHODS:
        for transform in ood.TRANSFORMS:
            model = ood.fit_ood(train, val, method=method, transform=transform, combine="max", k=3, val_quantile=0.99)
            s_near, s_far = float(model.score(near)[0]), float(model.score(far)[0])
            assert s_far > s_near, (method, transform)
            assert model.is_ood(s_far) is True and model.is_ood(s_near) is False, (method, s_near, s_far)


def test_knn_distance_is_the_kth_nearest_normalised_neighbour():
    rng = np.random.default_rng(8)
    bank_raw = rng.normal(size=(50, 6))
    bank = bank_raw / np.linalg.norm(bank_raw, axis=1, keepdims=True)
    q = rng.normal(size=(4, 6))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    brute = np.sort(np.linalg.norm(qn[:, None, :] - bank[None, :, :], axis=2), axis=1)
    for k in (1, 3, 7):
        np.testing.assert_allclose(ood.knn_distance(q, bank, k), brute[:, k - 1], atol=1e-9)
    # Scoring the bank against itself: the k-th neighbour other than the point itself.
    self_brute = np.sort(np.linalg.norm(bank[:, None] - bank[None], axis=2), axis=1)[:, 3]
    np.testing.assert_allclose(ood.knn_distance(bank, bank, 3, exclude_self=True), self_brute, atol=1e-6)


def test_threshold_is_the_val_quantile_and_ignores_everything_else():
    train = {"a": _gaussian(300, 6, 10)}
    val = {"a": _gaussian(120, 6, 11) * 1.3}
    model = ood.fit_ood(train, val, method="mahalanobis", transform="none", val_quantile=0.95)
    val_scores = model.score(val)
    assert model.threshold == pytest.approx(float(np.quantile(val_scores, 0.95)))
    assert model.info.val_false_alarm == pytest.approx(float(np.mean(val_scores > model.threshold)))
    assert model.info.n_val == 120 and model.info.val_quantile == 0.95
    # Standardisation is the val median / IQR: the median val crop scores ~0.
    assert abs(float(np.median(val_scores))) < 1e-9
    # Another val set moves the threshold; the training reference alone does not decide it.
    other = ood.fit_ood(train, {"a": val["a"] * 2.0}, method="mahalanobis", transform="none", val_quantile=0.95)
    assert other.info.members[0].loc > model.info.members[0].loc
    with pytest.raises(ValueError):
        ood.fit_ood(train, val, val_quantile=0.3)


def test_ood_info_round_trips_and_refuses_unknown_fields():
    model = ood.fit_ood({"a": _gaussian(50, 3, 12)}, {"a": _gaussian(30, 3, 13)}, method="knn", k=2)
    info = model.info
    d = json.loads(json.dumps(info.to_dict()))
    assert ood.OodInfo.from_dict(d) == info
    with pytest.raises(ValueError):
        ood.OodInfo.from_dict({**d, "surprise": 1})
    with pytest.raises(ValueError):
        ood.OodInfo.from_dict({**d, "method": "magic"})


# ----------------------------------------------------------------------------- the network side


def test_features_come_from_the_same_pass_as_the_logit(tiny_release):
    """``logits_and_features`` gives exactly ``model(x)`` for every tiny member family, and
    batched features equal ``Zoo.member_outputs`` ones (the product path)."""
    import torch

    from model_zoo import preprocess
    from model_zoo.ensemble import load_zoo

    zoo = load_zoo(tiny_release["release"])
    rng = np.random.default_rng(0)
    pixels = rng.random((96, 96)).astype(np.float32)
    box = (10.0, 12.0, 60.0, 70.0)
    for m in zoo.members:
        x, _, _ = preprocess.member_input(m.spec, pixels, box)
        with torch.inference_mode():
            direct = m.model(x).reshape(-1)
            logit, feats = ood.logits_and_features(m.model, x)
        assert torch.allclose(direct, logit, atol=1e-6), m.spec.member_id
        assert feats.ndim == 2 and feats.shape[0] == 1
    logits, _, feats = zoo.member_outputs(pixels, box)
    batched = ood.crop_features(zoo, [(pixels, box), (pixels, (0.0, 0.0, 96.0, 96.0))], batch_size=4)
    for mid in zoo.member_ids:
        np.testing.assert_allclose(batched[mid][0], feats[mid], atol=1e-4)


# ----------------------------------------------------------------------------- add-ood on the tiny release


def _document_png(path: Path) -> Path:
    import cv2

    page = np.full((200, 160), 250, np.uint8)
    for i, y in enumerate(range(20, 190, 14)):
        cv2.putText(page, f"line {i} of a typed letter", (6, y), cv2.FONT_HERSHEY_PLAIN, 0.8, 0, 1)
    cv2.imwrite(str(path), page)
    return path


def _small_non_bone():
    from model_zoo import imaging
    from training.ood_sets import documents, synthetic

    items = [*list(documents())[:2], *[s for s in synthetic() if s.name in ("checkerboard.png", "uniform-noise.png")]]
    return [(item, imaging.load_image(item.data, name=item.name)) for item in items], []


@pytest.fixture(scope="module")
def ood_env(tiny_release, tmp_path_factory):
    from training.add_ood import add_ood

    tmp = tmp_path_factory.mktemp("ood")
    cache = tmp / "features"
    non_bone = _small_non_bone()
    quiet = dict(quiet=True, log=lambda *_: None, non_bone=non_bone, features_cache=cache)
    plain = add_ood(tiny_release["release"], tmp / "zoo-plain", **quiet)
    release = add_ood(tiny_release["release"], tmp / "zoo", external={"site2": str(tiny_release["external"])}, **quiet)
    return {"release": release, "plain": plain, "source": tiny_release["release"], "tmp": tmp, "cases": tiny_release["cases"]}


def test_add_ood_writes_a_verified_release_with_identical_members(ood_env):
    from model_zoo.zoo import verify_release

    source, release = ood_env["source"], ood_env["release"]
    old, new = verify_release(source).to_dict(), verify_release(release).to_dict()
    assert new["version"] == "0.0.2" and old["version"] == "0.0.1"
    assert new["derived_from"]["release"] == f"{old['name']} {old['version']}"
    regenerated = {"MODEL_CARD.md", "config.yaml"}
    for rel, digest in old["files"].items():
        if rel not in regenerated:
            assert new["files"][rel] == digest, f"{rel} changed"
            assert (release / rel).read_bytes() == (source / rel).read_bytes()
    added = set(new["files"]) - set(old["files"])
    assert added == {ood.OOD_FILE}
    for key in ("members", "stacker", "threshold", "calibration", "localiser", "metrics"):
        assert new[key] == old[key], key
    info = ood.OodInfo.from_dict(new["ood"])
    assert (info.method, info.transform, info.k, info.combine, info.val_quantile) == ("knn", "sqrt", 20, "max", 0.99)
    assert info.member_ids == [m["spec"]["member_id"] for m in old["members"]]
    measured = info.measured
    assert measured["detection"]["all_crops"]["n"] == 2 * 4  # 4 images x (whole image, centre box)
    assert set(measured["false_alarm"]) == {"internal_val", "internal_test", "site2"}
    assert measured["headline"]["false_alarm_on"] == "site2, annotator boxes"
    from training.add_ood import CANDIDATES

    assert [(c["method"], c["transform"], c["k"] or 0, c["combine"]) for c in measured["comparison"]] == list(CANDIDATES)
    assert measured["detection"]["with_input_gate"]["flagged"] >= measured["detection"]["all_crops"]["flagged"]
    card = (release / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Out-of-distribution check" in card and "Detection of non-bone images" in card
    old_card = (source / "MODEL_CARD.md").read_text(encoding="utf-8").rstrip("\n").splitlines()
    assert card.splitlines()[0] == old_card[0].replace("0.0.1", "0.0.2"), "the title names the new version"
    assert "\n".join(old_card[1:]) in card, "every section of the source card is kept"
    assert "0.0.2" in (release / "config.yaml").read_text(encoding="utf-8")


def test_external_set_is_measured_never_fitted(ood_env):
    """The same release made with and without --external: identical OOD state and threshold."""
    from model_zoo.zoo import verify_release

    with_ext, without = verify_release(ood_env["release"]).to_dict(), verify_release(ood_env["plain"]).to_dict()
    assert with_ext["files"][ood.OOD_FILE] == without["files"][ood.OOD_FILE]
    a, b = ood.OodInfo.from_dict(with_ext["ood"]), ood.OodInfo.from_dict(without["ood"])
    assert (a.threshold, a.members, a.n_fit, a.n_val) == (b.threshold, b.members, b.n_fit, b.n_val)
    assert "site2" in a.measured["false_alarm"] and "site2" not in b.measured["false_alarm"]


def test_add_ood_refuses_an_ood_release_and_an_old_version(ood_env, tmp_path):
    from model_zoo.errors import InputError
    from training.add_ood import add_ood

    with pytest.raises(InputError, match="already has an OOD model"):
        add_ood(ood_env["release"], tmp_path, quiet=True, log=lambda *_: None, non_bone=([], []))
    with pytest.raises(InputError, match="must be newer"):
        add_ood(ood_env["source"], tmp_path, version="0.0.1", quiet=True, log=lambda *_: None, non_bone=([], []))


def test_add_ood_refuses_cases_that_are_not_the_release_rows(ood_env, tmp_path):
    from model_zoo.errors import InputError
    from training.add_ood import add_ood

    cases = pd.read_csv(ood_env["cases"])
    cases.loc[0, "age"] = int(cases.loc[0, "age"]) + 1
    (tmp_path / "images").symlink_to(Path(ood_env["cases"]).parent / "images")
    cases.to_csv(tmp_path / "cases.csv", index=False)
    with pytest.raises(InputError, match="fingerprint"):
        add_ood(
            ood_env["source"],
            tmp_path / "out",
            cases=str(tmp_path / "cases.csv"),
            quiet=True,
            log=lambda *_: None,
            non_bone=([], []),
        )


# ----------------------------------------------------------------------------- product: predict


def _with_threshold(release: Path, parent: Path, threshold: float, version: str) -> Path:
    """A copy of ``release`` whose OOD threshold is ``threshold`` (a verified release of its own)."""
    from model_zoo.zoo import ReleaseWriter, verify_release

    import dataclasses

    manifest = verify_release(release)
    assert manifest.ood is not None
    with ReleaseWriter(parent, manifest.name, version) as rw:
        for rel in manifest.files:
            rw.copy_file(rel, release / rel)
        return rw.publish(manifest.replace(ood=dataclasses.replace(manifest.ood, threshold=threshold)))


@pytest.fixture(scope="module")
def flagged_env(ood_env):
    """A synthetic case (in distribution) and a typed page (not a radiograph), both scored on the whole
    image, and a release whose threshold lies between the two scores."""
    from model_zoo import imaging
    from model_zoo.ensemble import load_zoo

    tmp = ood_env["tmp"]
    cases = pd.read_csv(ood_env["cases"])
    case_png = Path(ood_env["cases"]).parent / cases.loc[0, "image"]
    doc_png = _document_png(tmp / "letter.png")
    zoo = load_zoo(ood_env["release"])
    scores = {}
    for name, path in (("case", case_png), ("doc", doc_png)):
        pixels = imaging.load_image(path).pixels
        scores[name] = zoo.predict(pixels, None).ood_score
    assert scores["doc"] > scores["case"], f"a typed page must score further from the training crops: {scores}"
    mid = (scores["doc"] + scores["case"]) / 2
    release = _with_threshold(ood_env["release"], tmp / "zoo-mid", mid, "0.0.3")
    return {"release": release, "case": case_png, "doc": doc_png, "scores": scores, "tmp": tmp}


def test_predict_carries_ood_and_leaves_everything_else_unchanged(ood_env, flagged_env):
    from model_zoo import imaging
    from model_zoo.ensemble import load_zoo

    plain, with_ood = load_zoo(ood_env["source"]), load_zoo(flagged_env["release"])
    for path, expect in ((flagged_env["case"], False), (flagged_env["doc"], True)):
        pixels = imaging.load_image(path).pixels
        a, b = plain.predict(pixels, None, age=40, sex="F"), with_ood.predict(pixels, None, age=40, sex="F")
        assert a.ood_score is None and a.ood is None, "a release without OOD predicts as before"
        assert (a.p_ensemble, a.p_members, a.label) == (b.p_ensemble, b.p_members, b.label)
        assert b.ood is expect and isinstance(b.ood_score, float)
        # The score in predict is the OOD model on the crop's member features.
        feats = ood.crop_features(with_ood, [(pixels, (0.0, 0.0, pixels.shape[1], pixels.shape[0]))])
        assert float(with_ood.ood.score(feats)[0]) == pytest.approx(b.ood_score, abs=1e-3)


def _predict_cli(args: list[str]) -> tuple[int, str]:
    from model_zoo.__main__ import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["predict", "--quiet", *args])
    return rc, err.getvalue()


def _two_row_table(flagged_env) -> Path:
    folder = flagged_env["tmp"] / "table"
    folder.mkdir(exist_ok=True)
    table = folder / "cases.csv"
    pd.DataFrame(
        {
            "image": [str(flagged_env["case"]), str(flagged_env["doc"])],
            "age": [30, 30],
            "sex": ["F", "M"],
            "site": ["appendicular", "appendicular"],
        }
    ).to_csv(table, index=False)
    return table


def test_predict_cli_writes_ood_columns_and_withholds_the_word(flagged_env, ood_env):
    table = _two_row_table(flagged_env)
    out = flagged_env["tmp"] / "pred.csv"
    rc, err = _predict_cli(["--cases", str(table), "--out", str(out), "--zoo", str(flagged_env["release"]), "--roi", "full"])
    assert rc == 0, err
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame["ood"]) == [False, True]
    assert frame.columns.get_loc("ood_score") == frame.columns.get_loc("prediction") + 1
    assert frame.loc[0, "prediction"] != ""
    assert frame.loc[1, "prediction"] == "" and frame.loc[1, "p_ensemble"] != ""
    assert "out of distribution" in frame.loc[1, "warning"] and frame.loc[0, "warning"] == ""
    assert "1 out of distribution" in err and "--allow-ood" in err
    # --allow-ood: the word is given, the flag stays.
    rc, _ = _predict_cli(
        ["--cases", str(table), "--out", str(out), "--zoo", str(flagged_env["release"]), "--roi", "full", "--allow-ood"]
    )
    allowed = pd.read_csv(out, keep_default_na=False)
    assert rc == 0 and allowed.loc[1, "prediction"] != "" and bool(allowed.loc[1, "ood"])
    assert "predicted anyway" in allowed.loc[1, "warning"]
    # --resume without --allow-ood recomputes the flagged row: no stale word is kept.
    rc, _ = _predict_cli(
        ["--cases", str(table), "--out", str(out), "--zoo", str(flagged_env["release"]), "--roi", "full", "--resume"]
    )
    assert pd.read_csv(out, keep_default_na=False).loc[1, "prediction"] == ""


def test_predict_cli_without_ood_release_writes_the_old_columns(flagged_env, ood_env):
    table = _two_row_table(flagged_env)
    out = flagged_env["tmp"] / "pred-plain.csv"
    rc, err = _predict_cli(["--cases", str(table), "--out", str(out), "--zoo", str(ood_env["source"]), "--roi", "full"])
    assert rc == 0, err
    frame = pd.read_csv(out, keep_default_na=False)
    assert "ood" not in frame.columns and "ood_score" not in frame.columns
    assert (frame["prediction"] != "").all() and "out of distribution" not in err


def test_batch_logic_withholds_the_word_unless_allowed(flagged_env):
    import zipfile

    from dashboard.batch_logic import run_batch
    from model_zoo.ensemble import load_zoo

    zoo = load_zoo(flagged_env["release"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(flagged_env["case"], "case.png")
        zf.write(flagged_env["doc"], "letter.png")
    csv = b"image,age,sex,site\ncase.png,30,F,appendicular\nletter.png,30,M,appendicular\n"
    blocked = run_batch(zoo, csv, buf.getvalue(), roi_mode="full", with_reports=True)
    assert blocked.n_failed == 0 and blocked.n_ood == 1
    assert list(blocked.frame["ood"]) == [False, True] and blocked.frame.loc[1, "prediction"] == ""
    with zipfile.ZipFile(io.BytesIO(blocked.pdf_zip)) as zf:
        assert zf.namelist() == ["case-0001.pdf"], "no PDF (no call) for the withheld row"
    allowed = run_batch(zoo, csv, buf.getvalue(), roi_mode="full", allow_ood=True)
    assert allowed.frame.loc[1, "prediction"] != "" and allowed.n_ood == 1


# ----------------------------------------------------------------------------- product: Case page


def _case_page(release: Path, audit_log: Path):
    import os

    from test_dashboard_apptest import _app

    os.environ["MODEL_ZOO_DIR"] = str(release)
    os.environ["MODEL_ZOO_AUDIT_LOG"] = str(audit_log)
    return _app().run()


@pytest.fixture()
def page_env(flagged_env):
    import os

    saved = {k: os.environ.get(k) for k in ("MODEL_ZOO_DIR", "MODEL_ZOO_AUDIT_LOG")}
    yield flagged_env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _upload_png_whole_image(at, path: Path):
    from test_dashboard_apptest import _no_crash

    at.file_uploader(key="case_upload").set_value((path.name, path.read_bytes(), "image/png")).run()
    at.radio(key="case_roi_mode").set_value("Whole image").run()
    at.checkbox(key="case_confirm").check().run()
    _no_crash(at)
    return at


def _probabilities(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("#### Probability of")]


def test_case_page_withholds_the_call_for_an_ood_image_until_overridden(page_env, tmp_path):
    from model_zoo import audit
    from test_dashboard_apptest import _no_crash

    log = tmp_path / "audit.jsonl"
    at = _upload_png_whole_image(_case_page(page_env["release"], log), page_env["doc"])
    errors = [e.value for e in at.error]
    assert any("does not look like the radiographs the model was trained on" in e for e in errors), errors
    assert not _probabilities(at)
    assert not [m for m in at.markdown if m.value.startswith("Member disagreement")], "no member view either"
    assert not [e for e in audit.read_events(log) if e["event"] == "case_prediction"]
    at.checkbox(key="case_ood_override").check().run()
    _no_crash(at)
    assert len(_probabilities(at)) == 1
    events = audit.read_events(log)
    overrides = [e for e in events if e["event"] == "ood_override"]
    assert len(overrides) == 1 and overrides[0]["ood"]["score"] == pytest.approx(page_env["scores"]["doc"], abs=1e-3)
    pred = [e for e in events if e["event"] == "case_prediction"]
    assert pred and pred[-1]["ood"]["flagged"] is True and pred[-1]["ood"]["overridden"] is True


def test_case_page_shows_the_call_for_an_in_distribution_image(page_env, tmp_path):
    at = _upload_png_whole_image(_case_page(page_env["release"], tmp_path / "audit.jsonl"), page_env["case"])
    assert not [e.value for e in at.error if "does not look like" in e.value]
    assert len(_probabilities(at)) == 1
    assert any("Out-of-distribution check passed" in c.value for c in at.caption)
    assert not [c for c in at.checkbox if c.key == "case_ood_override"]
