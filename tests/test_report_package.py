"""training.report as a package: metrics.json unchanged by the split, the agreement
statistics computed once, and the files written by the library's atomic write.

``golden/report_small_metrics.json`` was written by the single-module ``training/report.py``
(before the split) from SMALL_CSV below with ``--readers``; the values are also checked
against scikit-learn / statsmodels where they have an independent reference.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import cochrans_q as sm_cochrans_q
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

import training.report
from model_zoo.zoo import atomic_write_text
from training import stats as st
from training.report import compute_metrics, main, write_report

GOLDEN = Path(__file__).parent / "golden" / "report_small_metrics.json"

# 24 analysable cases, plus one without a label and one with a failed member score.
SMALL_CSV = """label,p_ensemble,p_m1,reader_a,reader_b,reader_c,tumor_subtype
1,0.793,0.7,0,1,1,osteosarcoma
0,0.79,0.3,0,0,0,osteosarcoma
0,0.229,0.3,0,1,0,osteochondroma
1,0.886,0.6,0,1,1,osteochondroma
1,0.371,0.6,1,1,1,osteochondroma
0,0.419,0.5,0,0,1,osteosarcoma
0,0.158,0.4,0,1,0,giant cell
1,0.886,0.6,1,1,1,osteosarcoma
0,0.583,0.0,0,0,1,osteosarcoma
1,0.863,0.9,1,0,1,giant cell
0,0.2,0.4,0,0,1,osteochondroma
0,0.546,0.2,0,0,1,osteosarcoma
0,0.265,0.3,0,0,0,osteosarcoma
0,0.277,0.1,0,0,0,osteochondroma
0,0.502,0.6,0,0,1,osteosarcoma
0,0.593,0.7,1,0,1,osteosarcoma
1,0.712,0.3,0,1,1,giant cell
1,0.518,0.6,1,1,1,giant cell
1,0.469,0.8,0,1,1,osteosarcoma
1,0.895,0.5,1,1,1,osteosarcoma
0,0.523,0.4,0,0,0,osteosarcoma
1,0.805,0.6,1,1,1,giant cell
0,0.843,0.5,0,0,1,osteosarcoma
1,0.471,1.0,0,0,1,osteochondroma
,0.61,0.4,1,1,0,osteosarcoma
1,0.77,,1,1,1,giant cell
"""
READERS = ("a", "b", "c")


def _key_paths(obj, prefix=()):
    """Every key path in document order, so a reordered or renamed key is caught."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _key_paths(v, (*prefix, k))


def _assert_same(new, old, where="metrics"):
    """Equal structure and exact values (floats to 1e-12: the same arithmetic, not a refit)."""
    assert type(new) is type(old), where
    if isinstance(old, dict):
        assert list(new) == list(old), where
        for k in old:
            _assert_same(new[k], old[k], f"{where}.{k}")
    elif isinstance(old, list):
        assert len(new) == len(old), where
        for i, (a, b) in enumerate(zip(new, old)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(old, float):
        assert new == pytest.approx(old, rel=1e-12, abs=1e-12), where
    else:
        assert new == old, where


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    csv = d / "pred.csv"
    csv.write_text(SMALL_CSV)
    assert main(["--predictions", str(csv), "--out", str(d / "out"), "--readers"]) == 0
    text = (d / "out" / "metrics.json").read_text()
    pred = pd.read_csv(io.StringIO(SMALL_CSV))
    return {"out": d / "out", "text": text, "metrics": json.loads(text), "analysed": pred.dropna().reset_index()}


def test_metrics_json_is_unchanged_by_the_split(small):
    golden = json.loads(GOLDEN.read_text())
    assert list(_key_paths(small["metrics"])) == list(_key_paths(golden))
    _assert_same(small["metrics"], golden)
    assert small["metrics"]["n"] == 24  # the unlabelled row and the failed score are left out


def test_small_table_matches_independent_references(small):
    m, pred = small["metrics"], small["analysed"]
    y = pred["label"].astype(int).to_numpy()
    for name in ("ensemble", "m1"):
        s = pred[f"p_{name}"].to_numpy()
        call = (s >= 0.5).astype(int)
        e = m["models"][name]
        assert e["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        tn, fp, fn, tp = skm.confusion_matrix(y, call, labels=[0, 1]).ravel()
        assert e["confusion"] == [[tn, fp], [fn, tp]]
        assert e["f1"] == pytest.approx(skm.f1_score(y, call), abs=1e-12)
        assert e["ppv_ci"] == pytest.approx(list(proportion_confint(tp, tp + fp, method="wilson")), abs=1e-9)
    ens_call = (pred["p_ensemble"].to_numpy() >= 0.5).astype(int)
    reads = {r: pred[f"reader_{r}"].astype(int).to_numpy() for r in READERS}
    for a, b in itertools.combinations(READERS, 2):
        assert m["cohen_kappa"][f"{a}|{b}"] == pytest.approx(skm.cohen_kappa_score(reads[a], reads[b]), abs=1e-12)
    for r in READERS:
        assert m["cohen_kappa"][f"ensemble|{r}"] == pytest.approx(skm.cohen_kappa_score(ens_call, reads[r]), abs=1e-12)
        pair = np.column_stack([ens_call == y, reads[r] == y]).astype(int)
        assert m["readers"][r]["cochran_q_p_vs_ensemble"] == pytest.approx(sm_cochrans_q(pair).pvalue, abs=1e-12)
    correct = np.column_stack([ens_call == y] + [x == y for x in reads.values()]).astype(int)
    assert m["cochran_q_p"] == pytest.approx(sm_cochrans_q(correct).pvalue, abs=1e-12)
    counts, _ = st.ratings_to_counts(np.column_stack(list(reads.values())), [0, 1])
    assert m["fleiss_kappa"] == pytest.approx(sm_fleiss_kappa(counts, method="fleiss"), abs=1e-12)


def test_library_call_gives_the_cli_dictionary(small):
    pred = pd.read_csv(io.StringIO(SMALL_CSV))
    assert compute_metrics(pred) == small["metrics"]
    assert json.dumps(compute_metrics(pred), indent=2, allow_nan=False) + "\n" == small["text"]


def test_kappas_and_cochran_q_are_computed_once(monkeypatch, tmp_path):
    """One report (metrics.json and report.html) runs each agreement statistic once."""
    calls = {"cohen_kappa": 0, "fleiss_kappa": 0, "cochrans_q": 0}
    for name in calls:
        real = getattr(st, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(st, name, counted)
    write_report(pd.read_csv(io.StringIO(SMALL_CSV)), tmp_path)
    # 3 reader pairs + ensemble vs 3 readers; one Fleiss; Q over all + ensemble vs each reader.
    assert calls == {"cohen_kappa": 6, "fleiss_kappa": 1, "cochrans_q": 4}


def test_report_files_are_shared_readable_and_atomic(small, tmp_path):
    for name in ("metrics.json", "report.html"):
        assert os.stat(small["out"] / name).st_mode & 0o777 == 0o644
    assert sorted(p.name for p in small["out"].iterdir()) == ["metrics.json", "report.html"]
    # The library's atomic write keeps its private default and takes the mode when asked.
    atomic_write_text(tmp_path / "private.txt", "x")
    atomic_write_text(tmp_path / "shared.txt", "x", mode=0o644)
    assert os.stat(tmp_path / "private.txt").st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "shared.txt").st_mode & 0o777 == 0o644


def test_package_keeps_the_names_callers_import():
    # training/fit.py (write_report, plotly_bundle), training/evaluation.py (write_report),
    # training/__main__.py (main), tests and dashboard/teaching_logic.py (compute_metrics).
    for name in ("compute_metrics", "main", "plotly_bundle", "read_predictions", "write_report"):
        assert callable(getattr(training.report, name)), name
    assert "Plotly" in training.report.plotly_bundle()[:5000]
