"""Several dashboard sessions on one cached zoo: identical to serial, no shared state, no leaks.

The dashboard serves every browser session from one process: one ``load_zoo`` result
(``st.cache_resource``) and one ``CamCache``. These tests drive the same functions the
Case page calls (``dashboard.case_logic``) from 8 threads at once, the way Streamlit runs
8 sessions, and compare every number with a serial run on fresh state.
"""

from __future__ import annotations

import gc
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from dashboard import case_logic as cl
from model_zoo import explain, imaging
from model_zoo.ensemble import load_zoo

N_SESSIONS = 8


def _case(seed: int, size: int = 160) -> dict:
    """A synthetic radiograph-like image with a bright lesion, its box and clinical inputs."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(0.4, 0.08, (size, size)), 0, 1).astype(np.float32)
    x0, y0 = int(rng.integers(10, size // 2)), int(rng.integers(10, size // 2))
    side = int(rng.integers(24, 48))
    pixels[y0 : y0 + side, x0 : x0 + side] += 0.3 * rng.random()
    pixels = np.clip(pixels, 0, 1)
    return {
        "pixels": pixels,
        "box": (float(x0), float(y0), float(x0 + side), float(y0 + side)),
        "age": float(rng.integers(5, 80)),
        "sex": ["M", "F"][seed % 2],
        "site": ["appendicular", "axial"][seed % 3 == 0],
    }


def _session(zoo, case: dict, cache) -> dict:
    """What one Case-page request computes: prediction, then GradCAM and ScoreCAM for every member."""
    pixels, box = case["pixels"], case["box"]
    h, w = pixels.shape
    pixels_hash = imaging.image_hash(pixels)
    pred = cl.predict(zoo, pixels, box, case["age"], case["sex"], case["site"])
    view_box = cl.union_box([b for _, b in cl.member_crops(zoo, pixels, box).values()])  # as the page
    view_wh = cl.display_size(int(view_box[2] - view_box[0]), int(view_box[3] - view_box[1]), 320, 320)[:2]
    out = {"p_ensemble": pred.p_ensemble, "p_members": dict(pred.p_members), "p_clinic": pred.p_clinic}
    for method in ("gradcam", "scorecam"):
        views = {
            m.spec.member_id: cl.member_cam(
                zoo, i, pixels, box, method, view_box, view_wh, (w, h), cache=cache, pixels_hash=pixels_hash
            )
            for i, m in enumerate(zoo.members)
        }
        ens = cl.ensemble_cam(views, zoo.cam_weights, method)
        out[method] = {k: (np.asarray(v.roi_map, np.float32), np.asarray(v.full_map, np.float32)) for k, v in views.items()}
        out[method]["ensemble"] = (np.asarray(ens.roi_map, np.float32), np.asarray(ens.full_map, np.float32))
    return out


def _assert_same(a: dict, b: dict, where: str) -> None:
    assert a["p_ensemble"] == pytest.approx(b["p_ensemble"], abs=1e-6), where
    assert a["p_clinic"] == pytest.approx(b["p_clinic"], abs=1e-9), where
    for mid, p in b["p_members"].items():
        assert a["p_members"][mid] == pytest.approx(p, abs=1e-6), f"{where} {mid}"
    for method in ("gradcam", "scorecam"):
        assert a[method].keys() == b[method].keys()
        for key, (roi_b, full_b) in b[method].items():
            roi_a, full_a = a[method][key]
            np.testing.assert_allclose(roi_a, roi_b, atol=2e-3, err_msg=f"{where} {method} {key} roi")
            np.testing.assert_allclose(full_a, full_b, atol=2e-3, err_msg=f"{where} {method} {key} full")


def _hook_count(zoo) -> int:
    total = 0
    for m in zoo.members:
        for module in m.model.modules():
            total += len(module._forward_hooks) + len(module._forward_pre_hooks) + len(module._backward_hooks)
            total += len(getattr(module, "_backward_pre_hooks", {}))
    return total


def test_eight_concurrent_sessions_equal_serial_runs(tiny_release):
    """8 threads, one zoo object, one CamCache, each on its own case, started together.

    Every probability and every CAM (GradCAM, ScoreCAM, ensemble-weighted; ROI and full
    image) equals the serial result computed on a freshly loaded zoo with no cache, and a
    second concurrent round served from the cache is unchanged. A cross-session leak (a
    hook recording another thread's forward, gradients of one request reaching another,
    a cache key missing the image, ROI or member) shows up as a mismatch here.
    """
    cases = [_case(100 + i) for i in range(N_SESSIONS)]
    serial_zoo = load_zoo(tiny_release["release"])
    serial = [_session(serial_zoo, c, cache=None) for c in cases]
    # Every pair of cases has ensemble maps further apart than the comparison tolerance, so
    # a session served another session's result cannot pass _assert_same.
    maps = [r["gradcam"]["ensemble"][1] for r in serial]
    for i in range(N_SESSIONS):
        for j in range(i + 1, N_SESSIONS):
            assert np.abs(maps[i] - maps[j]).max() > 2e-3, (i, j)

    shared_zoo = load_zoo(tiny_release["release"])
    cache = explain.CamCache(maxsize=96)
    for round_no in range(2):  # round 2: the same requests again, now answered from the cache
        barrier = threading.Barrier(N_SESSIONS)
        results: list[dict | None] = [None] * N_SESSIONS
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                barrier.wait(timeout=60)
                results[i] = _session(shared_zoo, cases[i], cache)
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                errors.append(err)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(N_SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors, errors
        for i in range(N_SESSIONS):
            _assert_same(results[i], serial[i], f"round {round_no + 1} session {i}")
        assert _hook_count(shared_zoo) == 0, "a CAM hook outlived its request"
    assert cache.hits >= N_SESSIONS * len(shared_zoo.members) * 2, "round 2 should be served from the cache"


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read RSS")
def test_memory_flat_over_100_consecutive_cases(tiny_release):
    """100 distinct cases (prediction + both CAMs for every member, 512 px images) in one
    process with the dashboard's bounded CamCache: resident memory after case 100 is within
    a small margin of memory after the warm-up, no hooks remain and the cache stays bounded.

    Sensitivity: each case produces 2 x (4 members + ensemble) full-image maps of
    512 x 512 float32 (1 MB each); keeping them (or the images) would add ~1 GB.
    """
    zoo = load_zoo(tiny_release["release"])
    cache = explain.CamCache(maxsize=96)
    hooks_before = _hook_count(zoo)
    samples = {}
    for i in range(100):
        _session(zoo, _case(1000 + i, size=512), cache)
        if i + 1 in (20, 100):
            gc.collect()
            samples[i + 1] = _rss_mb()
    growth = samples[100] - samples[20]
    print(
        f"\nRSS after 20 cases {samples[20]:.0f} MB, after 100 {samples[100]:.0f} MB "
        f"(+{growth:.1f} MB); cache {len(cache)} entries",
        file=sys.stderr,
    )
    assert _hook_count(zoo) == hooks_before == 0
    assert len(cache) <= cache.maxsize
    assert growth < 60, f"memory grew by {growth:.0f} MB over 80 cases"
