"""Shared fixtures.

The core suite runs on synthetic data and pydicom-data alone. Tests that need the real
BTXRD radiographs use the ``btxrd_dir`` fixture, which skips with a printed reason where
``../shared/data/btxrd`` is absent (a user's fresh clone) and runs in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BTXRD_DIR = Path(os.environ.get("BTXRD_DIR", REPO_ROOT.parent / "shared" / "data" / "btxrd"))

# Keep torch from oversubscribing the 2 cores when tests run.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def btxrd_dir() -> Path:
    if not (BTXRD_DIR / "metadata.csv").is_file():
        reason = f"BTXRD data not found at {BTXRD_DIR} (set BTXRD_DIR to run the real-data tests)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return BTXRD_DIR


@pytest.fixture(scope="session")
def rg3_paths() -> dict[str, Path]:
    """All variants of pydicom-data's RG3 computed radiograph, keyed by file name."""
    from pydicom.data import get_testdata_file

    names = ["RG3_UNCR.dcm", "RG3_UNCI.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"]
    found = {}
    for name in names:
        path = get_testdata_file(name)
        if path is not None:
            found[name] = Path(path)
    if "RG3_UNCR.dcm" not in found:
        pytest.skip("pydicom-data's RG3_UNCR.dcm is not installed")
    return found


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory) -> dict[str, Path]:
    """One tiny zoo release (4 tiny members + stacker + localiser) trained on synthetic cases
    through the real CLI path, shared by every test that needs a zoo (~40 s on 2 cores)."""
    from synthetic import write_case_table
    from training.fit import main as fit_main
    from training.fit_localiser import main as localiser_main

    tmp = tmp_path_factory.mktemp("tiny_release")
    cases = write_case_table(tmp / "data", n=48, size=96, seed=1)
    # A second synthetic 'hospital', configured as an external set: scored, never fitted on.
    external = write_case_table(tmp / "external", n=20, size=96, seed=7)
    assert (
        localiser_main(
            ["--cases", str(cases), "--out", str(tmp / "loc"), "--epochs", "1", "--input-size", "32", "--base-channels", "4"]
        )
        == 0
    )
    assert (
        fit_main(
            [
                "--config",
                "tiny",
                "--quiet",
                "--cases",
                str(cases),
                "--out",
                str(tmp / "zoo"),
                "--run-dir",
                str(tmp / "run"),
                "version=0.0.1",
                f"localiser.path={tmp / 'loc'}",
                "calibration.method=platt",
                f"external=[{{name: site2, cases: '{external}'}}]",
            ]
        )
        == 0
    )
    releases = [p for p in (tmp / "zoo").iterdir() if not p.name.startswith(".")]
    assert len(releases) == 1, "exactly one release folder, no temp leftovers"
    return {"release": releases[0], "run_dir": tmp / "run", "cases": cases, "tmp": tmp, "external": external}
