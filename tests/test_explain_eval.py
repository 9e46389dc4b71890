"""Heatmap evaluation: metrics on synthetic maps with known answers, the runner on the tiny
release, ``add-explain`` and the Case-page sentence.

The metric tests' expected values are worked out by hand in the comments next to them.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from model_zoo import explain_eval as ee
from model_zoo.errors import InputError

# ----------------------------------------------------------------------------- pure metrics


def _box_target(shape=(10, 10), box=(2, 3, 6, 8)) -> np.ndarray:
    return ee.box_mask(shape, box)


def test_box_mask_uses_pixel_centres_and_origin():
    m = ee.box_mask((10, 10), (2, 3, 6, 8))
    assert m.sum() == 4 * 5 and m[3, 2] and m[7, 5] and not m[8, 5] and not m[3, 6]
    # The same box on a grid whose pixel (0, 0) is stored pixel (2, 3): the box starts at (0, 0).
    shifted = ee.box_mask((10, 10), (2, 3, 6, 8), origin=(2, 3))
    assert shifted[0, 0] and shifted[4, 3] and shifted.sum() == 20


def test_pointing_game_peak_inside_outside_ties_and_blank():
    t = _box_target()
    heat = np.zeros((10, 10))
    heat[5, 4] = 1.0  # inside the box (x 2..5, y 3..7)
    assert ee.pointing_game(heat, t) == 1.0
    heat2 = np.zeros((10, 10))
    heat2[0, 0] = 1.0  # outside
    assert ee.pointing_game(heat2, t) == 0.0
    heat3 = np.zeros((10, 10))
    heat3[5, 4] = heat3[0, 0] = 1.0  # two tied peaks, one inside -> 1/2
    assert ee.pointing_game(heat3, t) == 0.5
    assert np.isnan(ee.pointing_game(np.zeros((10, 10)), t))  # blank: no peak


def test_energy_of_a_uniform_map_is_the_box_share():
    t = _box_target()
    assert ee.energy_inside(np.full((10, 10), 0.3), t) == pytest.approx(20 / 100)
    heat = np.zeros((10, 10))
    heat[t] = 1.0
    heat[0, 0] = 1.0  # 20 units inside, 1 outside
    assert ee.energy_inside(heat, t) == pytest.approx(20 / 21)
    # Negative values carry no mass; an all-negative map has none.
    assert np.isnan(ee.energy_inside(-np.ones((10, 10)), t))


def test_top20_iou_of_a_ramp_map():
    # heat = column index on a 10x10 grid: the top 20 % is columns 8-9 (20 pixels); the
    # target covers columns 6-9 (40 pixels) -> IoU = 20 / 40.
    heat = np.tile(np.arange(10, dtype=float), (10, 1))
    target = ee.box_mask((10, 10), (6, 0, 10, 10))
    assert ee.top_fraction_region(heat).sum() == 20
    assert ee.top_iou(heat, target) == pytest.approx(0.5)
    # A map that is zero on 90 % of the grid: only its positive pixels are "top".
    sparse = np.zeros((10, 10))
    sparse[0, :] = 1.0
    assert ee.top_fraction_region(sparse).sum() == 10
    assert np.isnan(ee.top_iou(np.zeros((10, 10)), target))


def test_baselines_random_is_seeded_and_centre_peaks_in_the_middle():
    a = ee.random_map((30, 40), np.random.default_rng(3))
    b = ee.random_map((30, 40), np.random.default_rng(3))
    assert a.shape == (30, 40) and np.array_equal(a, b) and 0 <= a.min() and a.max() < 1
    c = ee.centre_prior_map((31, 41))
    assert c.shape == (31, 41) and np.unravel_index(np.argmax(c), c.shape) == (15, 20)
    # The centre prior points at a centred box and a random map only by chance.
    centred = ee.box_mask((31, 41), (15, 10, 26, 21))
    assert ee.pointing_game(c, centred) == 1.0


def _mean_of_region_model(box):
    """Toy model: its score is the mean of the image over ``box`` (a known, local dependence)."""
    x0, y0, x1, y1 = box

    def score(images):
        return [float(im[y0:y1, x0:x1].mean()) for im in images]

    return score


def test_deletion_and_insertion_curves_of_a_known_model():
    image = np.ones((10, 10), dtype=np.float32)
    reference = np.zeros_like(image)
    box = (0, 0, 10, 1)  # the first row: 10 pixels = 10 % of the image
    score = _mean_of_region_model(box)
    heat = ee.box_mask((10, 10), box).astype(float)  # the map highlights exactly that row
    dele = ee.deletion_curve(image, heat, score, reference=reference, steps=10)
    # After 10 % deleted the row is gone: scores 1, 0, 0, ... -> AUC = 0.1 * (1 + 0) / 2 = 0.05.
    assert np.allclose(dele.scores, [1.0] + [0.0] * 10)
    assert dele.auc == pytest.approx(0.05)
    ins = ee.insertion_curve(image, heat, score, reference=reference, steps=10)
    assert np.allclose(ins.scores, [0.0] + [1.0] * 10)
    assert ins.auc == pytest.approx(0.95)
    # A map that ranks that row last: deletion removes it only in the last step.
    worst = ee.deletion_curve(image, 1.0 - heat, score, reference=reference, steps=10)
    assert np.allclose(worst.scores, [1.0] * 10 + [0.0]) and worst.auc == pytest.approx(0.95)
    # A random map sits in between.
    rnd = ee.deletion_curve(
        image, ee.random_map((10, 10), np.random.default_rng(0), grid=None), score, reference=reference, steps=10
    )
    assert dele.auc < rnd.auc < worst.auc


def test_perturbation_region_leaves_the_rest_of_the_image_alone():
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    seen = []

    def score(images):
        seen.extend(images)
        return [0.0] * len(images)

    ee.deletion_curve(image, np.ones((4, 4)), score, reference=np.zeros_like(image), region=(2, 2, 6, 6), steps=2)
    last = seen[-1]
    assert np.all(last[2:6, 2:6] == 0) and np.array_equal(last[:2], image[:2]) and np.array_equal(last[:, 6:], image[:, 6:])
    with pytest.raises(InputError):
        ee.deletion_curve(image, np.ones((3, 3)), score, region=(2, 2, 6, 6))


def test_curve_auc_and_bootstrap_ci():
    assert ee.curve_auc([0, 0.5, 1], [1, 1, 1]) == pytest.approx(1.0)
    v = np.r_[np.zeros(50), np.ones(50)]
    lo, hi = ee.bootstrap_ci(v, n_boot=2000, seed=1)
    assert lo < 0.5 < hi and 0.35 < lo and hi < 0.65
    assert ee.bootstrap_ci(v, seed=1) == ee.bootstrap_ci(v, seed=1)  # seeded
    assert ee.bootstrap_ci([1.0, float("nan")]) is None  # one finite value
    assert ee.bootstrap_ci(np.full(10, 0.7)) == pytest.approx((0.7, 0.7))


def test_summarise_rows_pairs_against_random():
    rows = []
    for case in range(1, 21):
        rows.append(
            {
                "case": case,
                "view": "roi",
                "target": "ensemble",
                "method": "gradcam",
                "blank": 0,
                "pointing_box": 1.0,
                "deletion_auc": 0.2,
            }
        )
        rows.append(
            {
                "case": case,
                "view": "roi",
                "target": "ensemble",
                "method": "random",
                "blank": 0,
                "pointing_box": float(case % 2),
                "deletion_auc": 0.5,
            }
        )
    res = ee.summarise_rows(pd.DataFrame(rows), n_boot=500)
    g = res["roi"]["ensemble"]["gradcam"]
    assert g["pointing_box"]["mean"] == 1.0 and g["pointing_box"]["n"] == 20
    assert g["vs_random"]["pointing_box"]["mean"] == pytest.approx(0.5)
    assert g["vs_random"]["deletion_auc"]["mean"] == pytest.approx(-0.3)
    assert res["roi"]["ensemble"]["random"]["pointing_box"]["mean"] == pytest.approx(0.5)


def test_blank_reason_zero_flat_and_shown():
    from model_zoo import explain

    assert explain.blank_reason(np.zeros((7, 7))) == explain.BLANK_ZERO
    assert explain.blank_reason(np.full((7, 7), 0.3)) == explain.BLANK_FLAT  # min-max scales it to zero
    assert explain.blank_reason(np.eye(7)) == ""


def test_report_reader_and_case_sentence():
    from dashboard import case_logic as cl

    def m(mean, ci=None, n=40):
        return {"mean": mean, "ci": ci, "n": n}

    results = {
        "roi": {
            "ensemble": {
                "gradcam": {"pointing_box": m(0.8, [0.7, 0.9])},
                "scorecam": {"pointing_box": m(0.75, [0.6, 0.85])},
                "random": {"pointing_box": m(0.6, [0.5, 0.7])},
            }
        }
    }
    blob = {
        "sets": {
            "test": {"kind": "internal", "n_cases": 50, "views": ["roi"], "methods": ["gradcam"], "results": results},
            "centre3": {
                "kind": "external",
                "n_cases": 40,
                "views": ["roi"],
                "methods": ["gradcam", "scorecam"],
                "results": results,
            },
        }
    }
    report = ee.ExplainReport.from_dict(blob)
    assert report.headline_set().name == "centre3"  # external first
    stat = report.sets[1].metric("roi", "ensemble", "gradcam", "pointing_box")
    assert stat == ee.MetricSummary(mean=0.8, ci=(0.7, 0.9), n=40)
    line = cl.explain_sentence(report, "roi")
    assert line == (
        "Measured on 40 external lesions (centre3), with the ROI drawn around the lesion: the ensemble "
        "GradCAM peak fell inside the annotator's lesion box in 80 % [70-90 %] of cases (ScoreCAM: 75 %); "
        "a random map: 60 %."
    )
    assert cl.explain_sentence(report, "image") is None  # that view was not measured
    assert cl.explain_sentence(None, "roi") is None  # a release without report/explain.json
    assert "| centre3 (external, n=40) | ensemble GradCAM | 80 % [70-90]" in ee.markdown_tables(report)


# ----------------------------------------------------------------------------- runner on the tiny release


@pytest.fixture(scope="module")
def evaluated(tiny_release, tmp_path_factory):
    """explain-eval on 2 cases of the tiny release's external set, with lesion masks = the boxes."""
    from model_zoo.ensemble import load_zoo

    tmp = tmp_path_factory.mktemp("explain_eval")
    ext = tiny_release["external"]
    frame = pd.read_csv(ext)
    masks = []
    for i, row in frame.iterrows():
        m = np.zeros((96, 96), np.uint8)
        m[int(row.roi_y0) : int(row.roi_y1), int(row.roi_x0) : int(row.roi_x1)] = 255
        name = f"masks/m{i}.png"
        (ext.parent / "masks").mkdir(exist_ok=True)
        from PIL import Image

        Image.fromarray(m).save(ext.parent / name)
        masks.append(name)
    frame["mask"] = masks
    cases = ext.parent / "cases_with_masks.csv"
    frame.to_csv(cases, index=False)
    zoo = load_zoo(tiny_release["release"])
    options = ee.EvalOptions(max_cases=2, steps=4, n_boot=200)
    summary = ee.run_explain_eval(zoo, cases, tmp / "site2", name="site2", options=options)
    return {"zoo": zoo, "summary": summary, "out": tmp / "site2", "cases": cases, "tmp": tmp, "frame": frame}


def test_runner_writes_cases_and_summary(evaluated):
    zoo, summary, out = evaluated["zoo"], evaluated["summary"], evaluated["out"]
    rows = pd.read_csv(out / "cases.csv")
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    n_targets = len(zoo.members) + 1
    assert summary["n_cases"] == 2 and rows["case"].nunique() == 2
    assert len(rows) == 2 * 2 * n_targets * (2 + 2)  # cases x views x targets x (2 CAMs + 2 baselines)
    assert set(rows["method"]) == {"gradcam", "scorecam", "random", "centre"}
    assert summary["kind"] == "external", summary["kind_reason"]  # site2's images are not the release's
    sel = summary["selection"]
    assert sel["max_cases"] == 2 and sel["n_eligible"] == len(evaluated["frame"]) and len(sel["selected_cases"]) == 2
    chosen = np.sort(np.random.default_rng(0).choice(len(evaluated["frame"]), size=2, replace=False)) + 1
    assert sel["selected_cases"] == chosen.tolist()  # the seeded subset, recorded
    # The summary is the mean of the per-case rows.
    g = rows[(rows.view == "roi") & (rows.target == "ensemble") & (rows.method == "gradcam")]
    assert summary["results"]["roi"]["ensemble"]["gradcam"]["energy_box"]["mean"] == pytest.approx(g["energy_box"].mean())
    # Masks equal to the boxes: every box metric equals its mask metric.
    both = rows.dropna(subset=["pointing_box", "pointing_mask"])
    assert len(both) and np.allclose(both["pointing_box"], both["pointing_mask"])
    assert np.allclose(both["iou_box"], both["iou_mask"])
    # Faithfulness computed for the non-blank maps, in [0, 1] (probabilities).
    f = rows[rows.blank == 0]
    assert f["deletion_auc"].between(0, 1).all() and f["insertion_auc"].between(0, 1).all()
    # The ROI view's box share is the chance level of a random peak; the image view's is smaller.
    assert rows[rows.view == "roi"]["box_share"].mean() > rows[rows.view == "image"]["box_share"].mean()
    assert summary["release_fingerprint"] == ee.release_fingerprint(zoo.manifest)


def test_runner_maps_are_the_case_page_maps(evaluated):
    """The ensemble row's energy is that of ensemble_heatmap over explain_member's image maps."""
    from model_zoo import explain, imaging

    zoo, rows = evaluated["zoo"], pd.read_csv(evaluated["out"] / "cases.csv")
    case = int(rows["case"].iloc[0])
    row = evaluated["frame"].iloc[case - 1]
    path = evaluated["cases"].parent / row["image"]
    pixels = imaging.load_image(path).pixels
    maps = {
        m.spec.member_id: explain.explain_member(m.spec, m.model, pixels, None, method="gradcam").image_map for m in zoo.members
    }
    ens = explain.ensemble_heatmap(maps, zoo.cam_weights).values
    box = ee.box_mask(ens.shape, (row.roi_x0, row.roi_y0, row.roi_x1, row.roi_y1))
    got = rows[(rows.case == case) & (rows.view == "image") & (rows.target == "ensemble") & (rows.method == "gradcam")]
    assert got["energy_box"].iloc[0] == pytest.approx(ee.energy_inside(ens, box), rel=1e-5)


def test_cli_split_selects_the_release_split(tiny_release, tmp_path):
    from model_zoo.__main__ import main

    out = tmp_path / "test"
    rc = main(
        [
            "explain-eval",
            "--cases",
            str(tiny_release["cases"]),
            "--zoo",
            str(tiny_release["release"]),
            "--split",
            "test",
            "--out",
            str(out),
            "--methods",
            "gradcam",
            "--views",
            "roi",
            "--max-cases",
            "2",
            "--no-faithfulness",
            "--n-boot",
            "100",
            "--quiet",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    splits = pd.read_csv(tiny_release["release"] / "data" / "cases.csv")
    n_test = int((splits["split"] == "test").sum())
    assert summary["kind"] == "internal" and summary["split"] == "test" and summary["set"] == "test"
    assert summary["selection"]["n_eligible"] == n_test and summary["n_cases"] == min(2, n_test)
    assert summary["methods"] == ["gradcam"] and list(summary["results"]) == ["roi"]
    assert summary["results"]["roi"]["ensemble"]["gradcam"]["deletion_auc"]["n"] == 0  # --no-faithfulness
    # Rows are the test split's: their images' hashes are listed with split "test".
    from model_zoo.zoo import sha256_file

    rows = pd.read_csv(out / "cases.csv")
    by_hash = dict(zip(splits["sha256"], splits["split"]))
    for img in rows["image"].unique():
        assert by_hash[sha256_file(tiny_release["cases"].parent / img)] == "test"
    assert (
        main(
            [
                "explain-eval",
                "--cases",
                str(tiny_release["cases"]),
                "--zoo",
                str(tiny_release["release"]),
                "--out",
                str(out),
                "--methods",
                "lime",
            ]
        )
        == 2
    )


# ----------------------------------------------------------------------------- add-explain


@pytest.fixture(scope="module")
def explained_release(evaluated):
    from training.add_explain import add_explain

    release = evaluated["zoo"].root
    return add_explain(release, {"site2": evaluated["out"] / "summary.json"}, evaluated["tmp"] / "zoo", log=lambda *a: None)


def test_add_explain_release_is_verified_and_members_byte_identical(evaluated, explained_release):
    from model_zoo.ensemble import load_zoo
    from model_zoo.zoo import verify_release

    source = evaluated["zoo"].root
    old, new = verify_release(source).to_dict(), verify_release(explained_release).to_dict()
    assert new["version"] == "0.0.2" and old["version"] == "0.0.1"
    assert new["derived_from"]["release"] == f"{old['name']} 0.0.1"
    for e in old["members"]:
        assert (explained_release / e["weights"]).read_bytes() == (source / e["weights"]).read_bytes()
    assert new["files"][old["stacker"]["file"]] == old["files"][old["stacker"]["file"]]
    assert set(new["files"]) == set(old["files"]) | {"report/explain.json"}
    card = (explained_release / "MODEL_CARD.md").read_text()
    assert card.startswith(f"# Model card: {old['name']} 0.0.2") and "## Heatmaps: where they point" in card
    assert "| site2 (external, n=2) | ensemble GradCAM |" in card
    zoo = load_zoo(explained_release)
    assert zoo.explain_report is not None and zoo.explain_report.headline_set().name == "site2"
    assert evaluated["zoo"].explain_report is None


def test_add_explain_refuses_a_summary_of_other_members(evaluated, tmp_path):
    from training.add_explain import add_explain, main

    summary = json.loads((evaluated["out"] / "summary.json").read_text())
    mid = next(iter(summary["release_fingerprint"]["members"]))
    summary["release_fingerprint"]["members"][mid] = "0" * 64
    bad = tmp_path / "summary.json"
    bad.write_text(json.dumps(summary))
    with pytest.raises(InputError, match="members differ"):
        add_explain(evaluated["zoo"].root, {"x": bad}, tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists() or not any(p for p in (tmp_path / "zoo").iterdir() if not p.name.startswith("."))
    assert main(["--zoo", str(evaluated["zoo"].root), "--summary", f"x={bad}", "--out", str(tmp_path / "z2")]) == 2


# ----------------------------------------------------------------------------- dashboard


def test_case_page_quotes_the_release_measurement(evaluated, explained_release, monkeypatch):
    from test_dashboard_apptest import _app, _no_crash

    from dashboard import case_logic as cl
    from model_zoo.ensemble import load_zoo

    monkeypatch.setenv("MODEL_ZOO_DIR", str(explained_release))
    monkeypatch.setenv("MODEL_ZOO_AUDIT_LOG", str(evaluated["tmp"] / "audit.jsonl"))
    zoo = load_zoo(explained_release)
    expected = cl.explain_sentence(zoo.explain_report, "roi")
    assert expected and expected.startswith("Measured on 2 external lesions (site2)")
    at = _app().run()
    at.button(key="case_load_sample").click().run()
    at.checkbox(key="case_confirm").check().run()
    _no_crash(at)
    texts = [md.value for md in at.markdown]
    assert expected in texts
    assert not any(cl.HEATMAP_HOW_TO == i.value for i in at.info)
    at.toggle(key="case_teaching").set_value(True).run()
    assert any(cl.HEATMAP_HOW_TO == i.value for i in at.info)


def test_case_page_without_explain_report_says_nothing(evaluated, monkeypatch):
    from test_dashboard_apptest import _app, _no_crash

    monkeypatch.setenv("MODEL_ZOO_DIR", str(evaluated["zoo"].root))
    monkeypatch.setenv("MODEL_ZOO_AUDIT_LOG", str(evaluated["tmp"] / "audit.jsonl"))
    at = _app().run()
    at.button(key="case_load_sample").click().run()
    at.checkbox(key="case_confirm").check().run()
    _no_crash(at)
    assert any(s.value == "4. Heatmaps" for s in at.subheader)
    assert not any("lesion box in" in md.value for md in at.markdown)


def test_teaching_cam_shows_the_annotator_box(evaluated):
    import io

    from PIL import Image

    from dashboard import teaching_logic as tl
    from model_zoo import imaging

    zoo, row = evaluated["zoo"], evaluated["frame"].iloc[0]
    pixels = imaging.load_image(evaluated["cases"].parent / row["image"]).pixels
    box = (float(row.roi_x0), float(row.roi_y0), float(row.roi_x1), float(row.roi_y1))
    with_box, _ = tl.cam_with_box_png(zoo, pixels, box, True)
    without, _ = tl.cam_with_box_png(zoo, pixels, box, False)
    a = np.asarray(Image.open(io.BytesIO(with_box)).convert("RGB"))
    b = np.asarray(Image.open(io.BytesIO(without)).convert("RGB"))
    white = np.all(a == 255, axis=2)
    assert white.sum() > 0 and not np.all(b == 255, axis=2).any()
    assert np.array_equal(a[~white], b[~white])  # the box is drawn on the same heatmap


def test_bench_times_the_case_page_work(evaluated):
    from model_zoo import imaging
    from model_zoo.bench import bench_page_cams

    zoo, row = evaluated["zoo"], evaluated["frame"].iloc[0]
    pixels = imaging.load_image(evaluated["cases"].parent / row["image"]).pixels
    out = bench_page_cams(zoo, pixels, (row.roi_x0, row.roi_y0, row.roi_x1, row.roi_y1), repeats=1)
    for method in ("gradcam", "scorecam"):
        r = out[method]
        assert r["first_s"] > 0 and r["median_s"] > 0 and set(r["per_member_s"]) == set(zoo.member_ids)
        assert sum(r["per_member_s"].values()) <= r["median_s"]  # members + mapping + ensemble
        assert all(reason for reason in r["blank"].values())
