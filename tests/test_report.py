"""training.report: metrics.json (README: Training, report) and the offline report.html.

Values are checked against scikit-learn / statsmodels / SciPy on a synthetic predictions
table with three models (one the ensemble), three readers, a subtype and clinical columns.
"""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import cochrans_q as sm_cochrans_q
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

from model_zoo.errors import InputError
from training import stats as st
from training.report import compute_metrics, main, write_report

PROPS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
MODEL_KEYS = {"auc", "auc_ci", "f1", "threshold", "confusion", "delong_p_vs_ensemble"}
MODEL_KEYS |= set(PROPS) | {f"{p}_ci" for p in PROPS}
READER_KEYS = set(PROPS) | {f"{p}_ci" for p in PROPS} | {"confusion", "cochran_q_p_vs_ensemble"}
TOP_KEYS = {"n", "models", "readers", "cochran_q_p", "fleiss_kappa", "fleiss_kappa_ci", "cohen_kappa"}
READERS = ("r1", "r2", "r3")


def make_predictions(n: int = 160, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    latent = 1.3 * y + rng.normal(0, 1, n)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    df = pd.DataFrame(
        {
            "image": [f"case{i:03d}.png" for i in range(n)],
            "label": y.astype(int),
            "p_ensemble": sig(1.2 * latent - 0.5),
            "p_effb3": sig(latent + rng.normal(0, 0.7, n) - 0.5),
            "p_vit": sig(0.8 * latent + rng.normal(0, 1, n) - 0.4),
            "error": "",
        }
    )
    for name, acc in zip(READERS, (0.85, 0.8, 0.75)):
        df[f"reader_{name}"] = np.where(rng.random(n) < acc, y, ~y).astype(int)
    df["tumor_subtype"] = np.where(
        y, rng.choice(["osteosarcoma", "chondrosarcoma"], n), rng.choice(["osteochondroma", "enchondroma"], n)
    )
    df["age"] = np.round(rng.normal(30 + 6 * y, 14, n))
    df["sex"] = rng.choice(["M", "F"], n)
    df["site"] = rng.choice(["appendicular", "axial"], n, p=[0.8, 0.2])
    return df


def _strict_load(text: str) -> dict:
    def reject(token):
        raise AssertionError(f"non-strict JSON constant {token}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One full CLI run shared by the contract and HTML tests."""
    d = tmp_path_factory.mktemp("report")
    pred = make_predictions()
    csv = d / "pred.csv"
    pred.to_csv(csv, index=False)
    out = d / "out"
    code = main(["--predictions", str(csv), "--out", str(out), "--readers"])
    return {
        "code": code,
        "pred": pred,
        "out": out,
        "metrics": _strict_load((out / "metrics.json").read_text()),
        "html": (out / "report.html").read_text(encoding="utf-8"),
    }


# ------------------------------------------------------------------ metrics.json contract


def test_cli_writes_exactly_the_contract_keys(cli_run):
    assert cli_run["code"] == 0
    m = cli_run["metrics"]
    assert set(m) == TOP_KEYS
    assert m["n"] == len(cli_run["pred"])
    assert list(m["models"]) == ["ensemble", "effb3", "vit"]
    for entry in m["models"].values():
        assert set(entry) == MODEL_KEYS
        assert len(entry["auc_ci"]) == 2 and all(len(entry[f"{p}_ci"]) == 2 for p in PROPS)
    assert list(m["readers"]) == list(READERS)
    for entry in m["readers"].values():
        assert set(entry) == READER_KEYS
    pairs = {f"{a}|{b}" for a, b in itertools.combinations(READERS, 2)}
    assert set(m["cohen_kappa"]) == pairs | {f"ensemble|{r}" for r in READERS}
    assert len(m["fleiss_kappa_ci"]) == 2
    # Same dictionary as the library call.
    assert compute_metrics(cli_run["pred"]) == m


def test_model_values_match_references(cli_run):
    pred, m = cli_run["pred"], cli_run["metrics"]
    y = pred["label"].to_numpy()
    for name, entry in m["models"].items():
        s = pred[f"p_{name}"].to_numpy()
        call = (s >= 0.5).astype(int)
        assert entry["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-6)
        ref = st.delong_auc(y, s)
        assert entry["auc_ci"] == pytest.approx(list(ref.ci), abs=1e-4)
        assert entry["auc_ci"][0] < entry["auc"] < entry["auc_ci"][1]
        tn, fp, fn, tp = skm.confusion_matrix(y, call, labels=[0, 1]).ravel()
        assert entry["confusion"] == [[tn, fp], [fn, tp]]
        assert entry["threshold"] == 0.5
        assert entry["accuracy"] == pytest.approx(skm.accuracy_score(y, call), abs=1e-6)
        assert entry["sensitivity"] == pytest.approx(skm.recall_score(y, call), abs=1e-6)
        assert entry["specificity"] == pytest.approx(skm.recall_score(y, call, pos_label=0), abs=1e-6)
        assert entry["ppv"] == pytest.approx(skm.precision_score(y, call), abs=1e-6)
        assert entry["npv"] == pytest.approx(skm.precision_score(y, call, pos_label=0), abs=1e-6)
        assert entry["f1"] == pytest.approx(skm.f1_score(y, call), abs=1e-6)
        counts = {
            "accuracy": (tp + tn, tp + tn + fp + fn),
            "sensitivity": (tp, tp + fn),
            "specificity": (tn, tn + fp),
            "ppv": (tp, tp + fp),
            "npv": (tn, tn + fn),
        }
        for p, (k, n) in counts.items():
            assert entry[f"{p}_ci"] == pytest.approx(list(proportion_confint(k, n, method="wilson")), abs=1e-4)
        if name == "ensemble":
            assert entry["delong_p_vs_ensemble"] is None
        else:
            t = st.delong_test(y, pred["p_ensemble"].to_numpy(), s)
            assert entry["delong_p_vs_ensemble"] == pytest.approx(t.p_value, abs=1e-6)
            assert 0 < entry["delong_p_vs_ensemble"] <= 1


def test_reader_and_agreement_values_match_references(cli_run):
    pred, m = cli_run["pred"], cli_run["metrics"]
    y = pred["label"].to_numpy()
    ens_call = (pred["p_ensemble"].to_numpy() >= 0.5).astype(int)
    reads = {r: pred[f"reader_{r}"].to_numpy() for r in READERS}
    for r, x in reads.items():
        e = m["readers"][r]
        tn, fp, fn, tp = skm.confusion_matrix(y, x, labels=[0, 1]).ravel()
        assert e["confusion"] == [[tn, fp], [fn, tp]]
        assert e["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-6)
        assert e["npv_ci"] == pytest.approx(list(proportion_confint(tn, tn + fn, method="wilson")), abs=1e-4)
        pair = np.column_stack([ens_call == y, x == y]).astype(int)
        assert e["cochran_q_p_vs_ensemble"] == pytest.approx(sm_cochrans_q(pair).pvalue, abs=1e-6)
    correct = np.column_stack([ens_call == y] + [x == y for x in reads.values()]).astype(int)
    assert m["cochran_q_p"] == pytest.approx(sm_cochrans_q(correct).pvalue, abs=1e-6)
    for a, b in itertools.combinations(READERS, 2):
        assert m["cohen_kappa"][f"{a}|{b}"] == pytest.approx(skm.cohen_kappa_score(reads[a], reads[b]), abs=1e-6)
    for r in READERS:
        assert m["cohen_kappa"][f"ensemble|{r}"] == pytest.approx(skm.cohen_kappa_score(ens_call, reads[r]), abs=1e-6)
    counts, _ = st.ratings_to_counts(np.column_stack(list(reads.values())), [0, 1])
    assert m["fleiss_kappa"] == pytest.approx(sm_fleiss_kappa(counts, method="fleiss"), abs=1e-6)
    lo, hi = m["fleiss_kappa_ci"]
    assert lo < m["fleiss_kappa"] < hi


def test_thresholds_global_and_per_model():
    pred = make_predictions(80, seed=3)
    pred.loc[0:2, "p_vit"] = 0.7  # scores exactly at the threshold are called positive
    y, s = pred["label"].to_numpy(), pred["p_vit"].to_numpy()
    m = compute_metrics(pred, threshold=0.3, thresholds={"vit": 0.7, "p_effb3": 0.6})
    assert m["models"]["ensemble"]["threshold"] == 0.3
    assert m["models"]["effb3"]["threshold"] == 0.6
    assert m["models"]["vit"]["threshold"] == 0.7
    tn, fp, fn, tp = skm.confusion_matrix(y, (s >= 0.7).astype(int), labels=[0, 1]).ravel()
    assert m["models"]["vit"]["confusion"] == [[tn, fp], [fn, tp]]
    # The ensemble's calls at its own threshold drive Cohen's kappa against readers.
    ens = (pred["p_ensemble"].to_numpy() >= 0.3).astype(int)
    assert m["cohen_kappa"]["ensemble|r1"] == pytest.approx(skm.cohen_kappa_score(ens, pred["reader_r1"]), abs=1e-6)
    with pytest.raises(InputError, match="unknown model"):
        compute_metrics(pred, thresholds={"swin": 0.5})
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        compute_metrics(pred, threshold=50)


def test_rows_with_missing_label_or_score_are_excluded():
    pred = make_predictions(60, seed=4)
    pred.loc[2, "p_vit"] = np.nan  # a failed prediction row
    pred.loc[2, "error"] = "cannot read image"
    pred.loc[7, "label"] = np.nan  # unlabelled case
    m = compute_metrics(pred)
    assert m["n"] == 58
    keep = pred.drop(index=[2, 7])
    assert m["models"]["effb3"]["auc"] == pytest.approx(skm.roc_auc_score(keep["label"], keep["p_effb3"]), abs=1e-6)


def test_single_class_gives_nulls_not_nan(tmp_path):
    pred = make_predictions(30, seed=5)
    pred["label"] = 1
    m = write_report(pred, tmp_path)
    on_disk = _strict_load((tmp_path / "metrics.json").read_text())
    assert on_disk == m
    e = m["models"]["vit"]
    assert e["auc"] is None and e["auc_ci"] == [None, None]
    assert e["specificity"] is None and e["specificity_ci"] == [None, None]
    assert e["delong_p_vs_ensemble"] is None
    assert e["sensitivity"] is not None and e["accuracy"] == e["sensitivity"]
    assert "Only one class" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_without_readers_or_ensemble():
    pred = make_predictions(50, seed=6).drop(columns=[f"reader_{r}" for r in READERS])
    m = compute_metrics(pred)
    assert m["readers"] == {} and m["cohen_kappa"] == {}
    assert m["cochran_q_p"] is None and m["fleiss_kappa"] is None and m["fleiss_kappa_ci"] == [None, None]
    assert set(m) == TOP_KEYS

    pred = make_predictions(50, seed=6).drop(columns=["p_ensemble"])
    m = compute_metrics(pred)
    assert all(e["delong_p_vs_ensemble"] is None for e in m["models"].values())
    assert all(e["cochran_q_p_vs_ensemble"] is None for e in m["readers"].values())
    assert set(m["cohen_kappa"]) == {"r1|r2", "r1|r3", "r2|r3"}
    correct = np.column_stack([pred[f"reader_{r}"] == pred["label"] for r in READERS]).astype(int)
    assert m["cochran_q_p"] == pytest.approx(sm_cochrans_q(correct).pvalue, abs=1e-6)


def test_label_formats_and_bad_values():
    pred = make_predictions(40, seed=7)
    ref = compute_metrics(pred)
    as_text = pred.assign(label=pred["label"].astype(str), reader_r1=pred["reader_r1"].astype(bool))
    assert compute_metrics(as_text) == ref
    with pytest.raises(InputError, match="'label' must hold 0/1"):
        compute_metrics(pred.assign(label=pred["label"].replace({1: "malignant"})))
    with pytest.raises(InputError, match="'reader_r2' must hold 0/1"):
        compute_metrics(pred.assign(reader_r2=2))
    with pytest.raises(InputError, match="numeric"):
        compute_metrics(pred.assign(p_vit="high"))
    with pytest.raises(InputError, match="no 'label' column"):
        compute_metrics(pred.drop(columns=["label"]))
    with pytest.raises(InputError, match="p_<model>"):
        compute_metrics(pred.drop(columns=["p_ensemble", "p_effb3", "p_vit"]))
    with pytest.raises(InputError, match="no usable rows"):
        compute_metrics(pred.assign(label=np.nan))


# ------------------------------------------------------------------ report.html


def test_html_is_offline_and_complete(cli_run):
    h = cli_run["html"]
    assert "cdn.plot.ly" not in h
    assert not re.search(r"<script[^>]*\bsrc\s*=", h, re.I)  # everything inline
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?https?:", h, re.I)
    assert h.count("Plotly.newPlot(") == 3  # ROC, confusion, reliability
    from plotly.offline import get_plotlyjs

    banner = get_plotlyjs()[:40]
    assert h.count(banner) == 1  # the bundle is inlined exactly once
    for section in ("Table 2", "Readers and agreement", "Table 3", "Table 1", "Methods"):
        assert section in h
    for div in ("fig-roc", "fig-confusion", "fig-reliability"):
        assert f'id="{div}"' in h


def test_html_tables_show_reference_values(cli_run):
    pred, h = cli_run["pred"], cli_run["html"]
    y = pred["label"].to_numpy()
    # Table 1: age by label (Kruskal-Wallis) and sex (Pearson chi-square) from SciPy.
    p_age = sps.kruskal(pred.loc[y == 0, "age"], pred.loc[y == 1, "age"]).pvalue
    table = pd.crosstab(pred["sex"], pred["label"]).to_numpy()
    p_sex = sps.chi2_contingency(table, correction=False).pvalue
    t1 = h[h.index("Table 1") :]
    for p in (p_age, p_sex):
        assert (f"<td>{p:.3f}</td>" in t1) or (p < 0.001 and "&lt;0.001" in t1)
    # Table 3: one subtype's accuracy for a reader, with its Wilson CI.
    sub = pred["tumor_subtype"] == "osteosarcoma"
    k = int((pred.loc[sub, "reader_r2"] == pred.loc[sub, "label"]).sum())
    lo, hi = proportion_confint(k, int(sub.sum()), method="wilson")
    assert f"{k / sub.sum():.3f} ({lo:.3f}–{hi:.3f})" in h[h.index("Table 3") : h.index("Table 1")]
    # Kappa grades as in the paper.
    m = cli_run["metrics"]
    grade = st.kappa_grade(m["fleiss_kappa"])
    assert f"Fleiss: all 3 readers</td><td>{m['fleiss_kappa']:.3f}" in h
    assert grade in h


def test_html_escapes_user_text(tmp_path):
    pred = make_predictions(30, seed=8).rename(columns={"reader_r1": "reader_<b>x</b>"})
    write_report(pred, tmp_path, title="<script>alert(1)</script>", context={"zoo": "demo <v1>"})
    h = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in h and "&lt;script&gt;alert(1)" in h
    assert "reader &lt;b&gt;x&lt;/b&gt;" in h and "demo &lt;v1&gt;" in h


def test_write_is_atomic_and_replaces(tmp_path):
    pred = make_predictions(40, seed=9)
    write_report(pred, tmp_path, threshold=0.4)
    first = (tmp_path / "metrics.json").read_text()
    write_report(pred, tmp_path, threshold=0.6)
    second = _strict_load((tmp_path / "metrics.json").read_text())
    assert second["models"]["ensemble"]["threshold"] == 0.6 and first != json.dumps(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.html"]  # no temp files
    # A failure before writing leaves the previous report untouched.
    with pytest.raises(InputError):
        write_report(pred.drop(columns=["label"]), tmp_path)
    assert _strict_load((tmp_path / "metrics.json").read_text()) == second


# ------------------------------------------------------------------ CLI errors


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    pred = make_predictions(30, seed=10)
    good = tmp_path / "pred.csv"
    pred.to_csv(good, index=False)
    no_readers = tmp_path / "noreaders.csv"
    pred.drop(columns=[f"reader_{r}" for r in READERS]).to_csv(no_readers, index=False)
    no_label = tmp_path / "nolabel.csv"
    pred.drop(columns=["label"]).to_csv(no_label, index=False)
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    cases = [
        (["--predictions", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")], "not found"),
        (["--predictions", str(no_label), "--out", str(tmp_path / "o")], "label"),
        (["--predictions", str(no_readers), "--out", str(tmp_path / "o"), "--readers"], "reader_"),
        (["--predictions", str(good), "--out", str(tmp_path / "o"), "--threshold", "2"], "[0, 1]"),
        (["--predictions", str(good), "--out", str(a_file)], "is a file"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and needle in err
        assert "Traceback" not in err
    assert main(["--out", str(tmp_path / "o")]) == 2  # argparse: --predictions missing
    capsys.readouterr()
    # Without --readers a table without readers is fine.
    assert main(["--predictions", str(no_readers), "--out", str(tmp_path / "ok")]) == 0
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["n=1", "one per class", "all ties", "perfect", "constant readers"])
def test_edge_cases_write_strict_json(tmp_path, case):
    pred = make_predictions(12, seed=11)
    if case == "n=1":
        pred = pred.iloc[:1]
    elif case == "one per class":
        pred = pd.concat([pred[pred.label == 0].iloc[:1], pred[pred.label == 1].iloc[:1]])
    elif case == "all ties":
        pred[["p_ensemble", "p_effb3", "p_vit"]] = 0.5
    elif case == "perfect":
        pred["p_ensemble"] = 0.2 + 0.6 * pred["label"]
    else:
        pred[[f"reader_{r}" for r in READERS]] = 1
    m = write_report(pred, tmp_path)
    assert _strict_load((tmp_path / "metrics.json").read_text()) == m
    assert set(m) == TOP_KEYS and m["n"] == len(pred)
    assert (tmp_path / "report.html").stat().st_size > 1_000_000
    e = m["models"]["ensemble"]
    if case == "all ties":
        assert e["auc"] == 0.5 and e["auc_ci"] == [0.5, 0.5]
        assert m["models"]["vit"]["delong_p_vs_ensemble"] == 1.0
    if case == "perfect":
        assert e["auc"] == 1.0 and e["auc_ci"] == [1.0, 1.0]
    if case == "one per class":
        assert e["auc"] in (0.0, 1.0) and e["auc_ci"] == [None, None]
    if case == "n=1":
        assert e["auc"] is None and m["fleiss_kappa_ci"] == [None, None]
    if case == "constant readers":
        assert m["fleiss_kappa"] is None and m["cohen_kappa"]["r1|r2"] is None
