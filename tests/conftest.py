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
