"""A crashed batch run leaves a valid partial CSV; ``--resume`` fills only the missing rows."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_zoo import predict as P
from model_zoo.ensemble import load_zoo

REPO = Path(__file__).resolve().parents[1]
RESULT_COLS = ["p_ensemble", "p_clinic", "prediction", "roi_x0", "roi_y0", "roi_x1", "roi_y1", "roi_source", "error"]


@pytest.fixture(scope="module")
def cases_with_duplicates(tiny_release, tmp_path_factory) -> Path:
    """The synthetic case table plus the first image again with a different ROI (a legal duplicate path)."""
    table = pd.read_csv(tiny_release["cases"])
    table["image"] = [str(Path(tiny_release["cases"]).parent / p) for p in table["image"]]  # table moves
    extra = table.iloc[[0]].copy()
    extra[["roi_x0", "roi_y0", "roi_x1", "roi_y1"]] = [0, 0, 40, 40]
    out = tmp_path_factory.mktemp("resume") / "cases.csv"
    pd.concat([table, extra], ignore_index=True).to_csv(out, index=False)
    return out


@pytest.fixture(scope="module")
def reference(tiny_release, cases_with_duplicates, tmp_path_factory) -> pd.DataFrame:
    zoo = load_zoo(tiny_release["release"])
    return P.predict_cases(zoo, cases_with_duplicates, tmp_path_factory.mktemp("ref") / "full.csv")


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert len(a) == len(b)
    assert list(a["image"].astype(str)) == list(b["image"].astype(str))
    for col in RESULT_COLS:
        if col.startswith("p_") or col.startswith("roi_x") or col.startswith("roi_y"):
            np.testing.assert_allclose(a[col].astype(float), b[col].astype(float), atol=1e-6, err_msg=col)
        else:
            assert list(a[col].astype("string").fillna("")) == list(b[col].astype("string").fillna("")), col


def test_interrupted_run_leaves_flushed_rows_and_resume_fills_only_the_rest(
    tiny_release, cases_with_duplicates, reference, tmp_path, monkeypatch
):
    zoo = load_zoo(tiny_release["release"])
    out = tmp_path / "p.csv"
    real_predict_row = P.predict_row
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt  # not an Exception: the batch loop must not swallow it
        return real_predict_row(*args, **kwargs)

    monkeypatch.setattr(P, "predict_row", crashing)
    with pytest.raises(KeyboardInterrupt):
        P.predict_cases(zoo, cases_with_duplicates, out, flush_every=10)
    partial = pd.read_csv(out, keep_default_na=False)
    assert len(partial) == 20, "the last atomic flush (row 20) is what survives"
    assert (partial["error"] == "").all() and (partial["p_ensemble"] != "").all()

    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real_predict_row(*args, **kwargs)

    monkeypatch.setattr(P, "predict_row", counting)
    resumed = P.predict_cases(zoo, cases_with_duplicates, out, resume=True, flush_every=10)
    assert counted["n"] == len(reference) - 20, "only the missing rows are computed"
    _same(resumed, reference)
    _same(pd.read_csv(out), reference)
    # The duplicated image with its own ROI kept its own result (keyed by position, not path).
    assert resumed["p_ensemble"].iloc[-1] == pytest.approx(reference["p_ensemble"].iloc[-1], abs=1e-6)
    assert resumed["roi_x1"].iloc[-1] == pytest.approx(40)


def test_resume_recomputes_rows_that_failed_moved_or_changed(
    tiny_release, cases_with_duplicates, reference, tmp_path, monkeypatch
):
    """Reused: finished rows with the same inputs. Recomputed: a failed row, a row whose
    position now holds another image, one whose age changed, one whose ROI changed; and
    every row when the ROI mode changes."""
    zoo = load_zoo(tiny_release["release"])
    out = tmp_path / "p.csv"
    stale = reference.copy()
    stale.loc[3, "error"] = "image file not found: earlier run"
    stale.loc[3, ["p_ensemble", "p_clinic"]] = np.nan
    stale.loc[5, "p_ensemble"] = 0.123456  # pretend row 5 was another image
    stale.loc[5, "image_path"] = "/elsewhere/other.png"
    stale.loc[7, "age"] = float(stale.loc[7, "age"]) + 1  # the earlier run saw another age
    stale.loc[9, "roi_x1"] = float(stale.loc[9, "roi_x1"]) - 3  # ... and another ROI
    stale.to_csv(out, index=False)
    real_predict_row, calls = P.predict_row, []
    monkeypatch.setattr(
        P, "predict_row", lambda zoo_, row, mode, **kw: calls.append(1) or real_predict_row(zoo_, row, mode, **kw)
    )
    resumed = P.predict_cases(zoo, cases_with_duplicates, out, resume=True)
    assert len(calls) == 4, "rows 3, 5, 7 and 9 only"
    _same(resumed, reference)
    calls.clear()
    P.predict_cases(zoo, cases_with_duplicates, out, resume=True, roi_mode="full")
    assert len(calls) == len(reference), "a different --roi mode reuses nothing"


def test_hard_killed_cli_run_resumes_to_the_uninterrupted_result(tiny_release, cases_with_duplicates, reference, tmp_path):
    """The CLI process dies with os._exit (no cleanup, as under SIGKILL or power loss) after
    the 30th row; ``--resume`` then completes the file, equal to an uninterrupted run."""
    out = tmp_path / "p.csv"
    crash = textwrap.dedent("""
        import os, sys
        import model_zoo.predict as P
        real, calls = P.predict_row, [0]
        def dying(*a, **k):
            calls[0] += 1
            if calls[0] == 30:
                os._exit(137)
            return real(*a, **k)
        P.predict_row = dying
        from model_zoo.__main__ import main
        sys.exit(main(sys.argv[1:]))
    """)
    args = ["predict", "--cases", str(cases_with_duplicates), "--out", str(out), "--zoo", str(tiny_release["release"]), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    died = subprocess.run([sys.executable, "-c", crash, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert died.returncode == 137, died.stderr
    partial = pd.read_csv(out, keep_default_na=False)
    flush_every = inspect.signature(P.predict_cases).parameters["flush_every"].default
    assert len(partial) == flush_every, "the last flush survives; the file is whole, not torn"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "p.csv"]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    done = subprocess.run(
        [sys.executable, "-m", "model_zoo", *args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    _same(pd.read_csv(out), reference)
