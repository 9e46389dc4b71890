"""Cancelling ScoreCAM: the library's ``should_stop`` hook (model_zoo.explain) and the Case
page's background job (dashboard.cam_job), without Streamlit (issue 17)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from dashboard import cam_job
from model_zoo import explain
from model_zoo.errors import Cancelled, InputError
from model_zoo.members import family_spec

S = 64


@pytest.fixture(scope="module")
def member():
    torch.manual_seed(0)
    spec = family_spec("efficientnet_b3", variant="tiny", input_size=S)
    return spec, spec.build_model().eval(), torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(5))


# ----------------------------------------------------------------------------- library


def test_scorecam_reports_progress_and_equals_the_uncancelled_map(member):
    spec, model, x = member
    seen: list[tuple[int, int]] = []
    plain = explain.scorecam(spec, model, x, top_k=16, batch_size=4)
    watched = explain.scorecam(
        spec, model, x, top_k=16, batch_size=4, should_stop=lambda: False, progress=lambda done, total: seen.append((done, total))
    )
    np.testing.assert_array_equal(watched.input_map, plain.input_map)
    assert seen, "progress after every batch"
    totals = {t for _, t in seen}
    assert len(totals) == 1 and seen[-1][0] == totals.pop() == watched.details["forwards"]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen), "progress only grows"


def test_scorecam_stops_between_batches(member):
    spec, model, x = member
    batches: list[int] = []
    with pytest.raises(Cancelled):
        explain.scorecam(
            spec,
            model,
            x,
            top_k=16,
            batch_size=4,
            should_stop=lambda: len(batches) >= 2,
            progress=lambda done, total: batches.append(done),
        )
    assert len(batches) == 2, "stopped at the first check after the flag was raised, not at the end"
    with pytest.raises(Cancelled):  # asked before any forward pass, too
        explain.scorecam(
            spec, model, x, top_k=16, should_stop=lambda: True, progress=lambda done, total: pytest.fail("no batch may run")
        )


def test_cancelled_explanation_is_not_cached(member):
    spec, model, _ = member
    pixels = np.random.default_rng(3).random((120, 150)).astype(np.float32)
    cache = explain.CamCache(maxsize=4)
    with pytest.raises(Cancelled):
        explain.explain_member(
            spec, model, pixels, (20, 20, 80, 90), method="scorecam", top_k=8, cache=cache, should_stop=lambda: True
        )
    assert len(cache) == 0
    done = explain.explain_member(
        spec, model, pixels, (20, 20, 80, 90), method="scorecam", top_k=8, cache=cache, should_stop=lambda: False
    )
    assert len(cache) == 1 and done.heatmap.method.startswith("ScoreCAM")
    with pytest.raises(InputError):  # argument errors stay what they were
        explain.explain_member(spec, model, pixels, (20, 20, 80, 90), method="lime", should_stop=lambda: False)


def test_cache_waiter_computes_when_the_owner_is_cancelled():
    """Two sessions ask for the same map; the first cancels: the second must get the map, not
    the first one's cancellation."""
    cache = explain.CamCache(maxsize=4)
    stop_owner = threading.Event()
    started = threading.Event()

    def owner_compute() -> str:
        started.set()
        while not stop_owner.is_set():
            time.sleep(0.01)
        raise Cancelled("owner cancelled")

    errors: list[BaseException] = []

    def owner() -> None:
        try:
            cache.get_or_compute("k", owner_compute, should_stop=stop_owner.is_set)
        except Cancelled as err:
            errors.append(err)

    t = threading.Thread(target=owner)
    t.start()
    assert started.wait(5)
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(cache.get_or_compute("k", lambda: "mine", should_stop=lambda: False)))
    waiter.start()
    time.sleep(0.2)
    assert not got, "the waiter waits while the owner computes"
    stop_owner.set()
    t.join(5)
    waiter.join(5)
    assert len(errors) == 1 and got == ["mine"] and cache.get("k") == "mine"


def test_cache_waiter_can_cancel_its_wait():
    cache = explain.CamCache(maxsize=4)
    release = threading.Event()
    started = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        return "value"

    t = threading.Thread(target=lambda: cache.get_or_compute("k", slow))
    t.start()
    assert started.wait(5)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        cache.get_or_compute("k", lambda: "never", should_stop=stop.is_set)
    assert time.perf_counter() - t0 < 5, "the wait ends soon after should_stop turns True"
    release.set()
    t.join(5)
    assert cache.get("k") == "value"


# ----------------------------------------------------------------------------- background job


def _task(result, seconds=0.0, steps=4):
    def run(should_stop, progress):
        for i in range(steps):
            explain.check_stop(should_stop)
            time.sleep(seconds / steps)
            progress(i + 1, steps)
        return result

    return run


def test_job_runs_members_in_order_and_reports_progress():
    job = cam_job.MemberJob("key", [("a", _task(1)), ("b", _task(2))]).start()
    assert job.join(10)
    status = job.status()
    assert status.state == "done" and status.finished and status.fraction == 1.0
    assert dict(status.results) == {"a": 1, "b": 2} and status.done == status.total == 2 and status.member is None
    assert job.key == "key" and status.message == ""


def test_job_cancel_stops_between_batches():
    job = cam_job.MemberJob("key", [("a", _task(1, seconds=0.05)), ("b", _task(2, seconds=30, steps=300))]).start()
    deadline = time.monotonic() + 10
    while job.status().member != "b" and time.monotonic() < deadline:
        time.sleep(0.01)
    running = job.status()
    assert running.state == "running" and running.member == "b" and running.done == 1
    assert 0.5 <= running.fraction < 1.0
    t0 = time.perf_counter()
    job.cancel()
    assert job.should_stop() and job.join(5) and time.perf_counter() - t0 < 2
    status = job.status()
    assert status.state == "cancelled" and status.message == "ScoreCAM was cancelled." and status.member is None


def test_job_failure_is_a_message_not_a_traceback(caplog):
    def boom(should_stop, progress):
        raise RuntimeError("secret internals")

    job = cam_job.MemberJob("key", [("a", _task(1)), ("b", boom)]).start()
    assert job.join(10)
    status = job.status()
    assert status.state == "failed" and "RuntimeError" in status.message and "Reference" in status.message
    assert "secret internals" not in status.message and "Traceback" not in status.message
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records), "logged for the server"

    def bad_input(should_stop, progress):
        raise InputError("ROI is empty")

    job = cam_job.MemberJob("key", [("a", bad_input)]).start()
    assert job.join(10)
    assert job.status().message == "ScoreCAM could not be computed: ROI is empty"


def test_job_cancelled_before_start_runs_nothing():
    ran = []
    job = cam_job.MemberJob("key", [("a", lambda s, p: ran.append(1))])
    job.cancel()
    job.start()
    assert job.join(5) and job.status().state == "cancelled" and not ran
