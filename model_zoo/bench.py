"""CAM timings: GradCAM, the dashboard's ScoreCAM and pytorch-grad-cam's plain ScoreCAM.

``bench_cams`` times already-loaded members (the lead's CLI adds load and predict times).
``bench_page_cams`` times what the Case page computes (every member's CAM mapped onto the ROI
view and the full radiograph, plus the ensemble-weighted maps); ``run_bench`` reports those
as ``gradcam_s`` / ``scorecam_s`` and the bare CAMs as ``*_cam_only_s``.
``bench_full_variants`` builds the paper's full architectures (random weights: the cost of
a CAM does not depend on the weights' values) and times them; run it as a script::

    python -m model_zoo.bench [input_size] [repeats] [naive_repeats] [exact_repeats]

It prints one JSON object. It takes minutes on 2 CPU cores because of the plain ScoreCAM.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from model_zoo import explain
from model_zoo.errors import InputError
from model_zoo.members import FAMILIES, MemberSpec, family_spec

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["bench_cams", "bench_full_variants", "bench_page_cams", "run_bench"]


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def bench_cams(
    members: list[tuple[MemberSpec, torch.nn.Module]],
    inputs: dict[str, torch.Tensor],
    repeats: int = 3,
    *,
    naive_repeats: int = 1,
    top_k: int | None = explain.DEFAULT_TOP_K,
    batch_size: int = explain.DEFAULT_BATCH_SIZE,
    warmup: bool = True,
    exact_repeats: int = 0,
) -> dict[str, Any]:
    """Median wall times of CAMs for all members on one case.

    Parameters
    ----------
    members : (spec, model) pairs, models in eval mode.
    inputs : member_id -> (1, 3, S, S) normalised input of that member.
    repeats : timed repeats for GradCAM and the dashboard's ScoreCAM.
    naive_repeats : timed repeats for pytorch-grad-cam's plain ScoreCAM (slow); 0 skips it.
    top_k, batch_size : the dashboard's ScoreCAM settings (no cache: every repeat computes).
    warmup : run each member's GradCAM and one fast ScoreCAM batch once, untimed, so one-off
        costs (allocator growth, oneDNN kernel creation) do not land in the first repeat.
    exact_repeats : also time this module's batched ScoreCAM over ALL channels
        (``scorecam_exact_s``): separates the speed-up of the engineering (batching,
        inference mode, channels-last) from that of the top-k approximation. 0 skips it.

    Returns
    -------
    ``{"gradcam_s", "scorecam_s", "scorecam_naive_s" (None if skipped), "scorecam_exact_s"
    (None if skipped), "speedup_vs_naive",
    "threads", "scorecam_method": {member: label}, "top_k", "batch_size", "repeats",
    "naive_repeats", "per_member": {member: {"gradcam_s", "scorecam_s", "scorecam_naive_s"}}}``
    (all times in seconds; totals are medians over repeats of the sum over members).
    """
    import torch

    if not members:
        raise InputError("no members to benchmark")
    if repeats < 1 or naive_repeats < 0 or exact_repeats < 0:
        raise InputError("repeats must be >= 1; naive_repeats and exact_repeats >= 0")
    missing = [spec.member_id for spec, _ in members if spec.member_id not in inputs]
    if missing:
        raise InputError(f"no benchmark input for {', '.join(missing)}")

    if warmup:
        for spec, model in members:
            explain.gradcam(spec, model, inputs[spec.member_id])
            explain.scorecam(
                spec, model, inputs[spec.member_id], top_k=min(batch_size, top_k or batch_size), batch_size=batch_size
            )

    def timed(fn: Any, n: int) -> tuple[list[float], dict[str, list[float]], dict[str, str]]:
        totals: list[float] = []
        per: dict[str, list[float]] = {spec.member_id: [] for spec, _ in members}
        labels: dict[str, str] = {}
        for _ in range(n):
            total = 0.0
            for spec, model in members:
                t0 = time.perf_counter()
                heat = fn(spec, model, inputs[spec.member_id])
                dt = time.perf_counter() - t0
                per[spec.member_id].append(dt)
                labels[spec.member_id] = heat.method
                total += dt
            totals.append(total)
        return totals, per, labels

    g_tot, g_per, _ = timed(explain.gradcam, repeats)
    s_tot, s_per, s_labels = timed(
        lambda spec, model, x: explain.scorecam(spec, model, x, top_k=top_k, batch_size=batch_size), repeats
    )
    if exact_repeats:
        e_tot, e_per, _ = timed(
            lambda spec, model, x: explain.scorecam(spec, model, x, top_k=None, batch_size=batch_size),
            exact_repeats,
        )
    else:
        e_tot, e_per = [], {}
    if naive_repeats:
        n_tot, n_per, _ = timed(explain.naive_scorecam, naive_repeats)
    else:
        n_tot, n_per = [], {}

    scorecam_s = _median(s_tot)
    naive_s = _median(n_tot) if n_tot else None
    per_member = {
        spec.member_id: {
            "gradcam_s": _median(g_per[spec.member_id]),
            "scorecam_s": _median(s_per[spec.member_id]),
            "scorecam_naive_s": _median(n_per[spec.member_id]) if n_tot else None,
            "scorecam_exact_s": _median(e_per[spec.member_id]) if e_tot else None,
            "input_size": spec.input_size,
        }
        for spec, _ in members
    }
    return {
        "gradcam_s": _median(g_tot),
        "scorecam_s": scorecam_s,
        "scorecam_naive_s": naive_s,
        "scorecam_exact_s": _median(e_tot) if e_tot else None,
        "speedup_vs_naive": (naive_s / scorecam_s) if naive_s else None,
        "threads": torch.get_num_threads(),
        "scorecam_method": s_labels,
        "top_k": top_k,
        "batch_size": batch_size,
        "repeats": repeats,
        "naive_repeats": naive_repeats,
        "exact_repeats": exact_repeats,
        "per_member": per_member,
    }


def bench_full_variants(
    input_size: int = 128,
    repeats: int = 3,
    naive_repeats: int = 1,
    *,
    families: Sequence[str] = FAMILIES,
    top_k: int | None = explain.DEFAULT_TOP_K,
    exact_repeats: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`bench_cams` on the paper's full architectures at ``input_size`` (random weights)."""
    import torch

    torch.manual_seed(seed)
    members = []
    inputs = {}
    for family in families:
        spec = family_spec(family, variant="full", input_size=input_size)
        model = spec.build_model().eval()
        members.append((spec, model))
        inputs[spec.member_id] = torch.randn(1, 3, input_size, input_size)
    result = bench_cams(members, inputs, repeats, naive_repeats=naive_repeats, top_k=top_k, exact_repeats=exact_repeats)
    result["input_size"] = input_size
    result["weights"] = "random (timing only)"
    return result


if __name__ == "__main__":  # pragma: no cover - manual benchmark
    import json

    args = [int(a) for a in sys.argv[1:5]]
    names = ("input_size", "repeats", "naive_repeats", "exact_repeats")
    kwargs: dict[str, Any] = dict(zip(names, args))  # the int options named above
    print(json.dumps(bench_full_variants(**kwargs), indent=2))


def _paste(values: np.ndarray, box: Sequence[float], view_box: Sequence[float]) -> np.ndarray:
    """A map covering integer ``box`` placed into a zero map covering ``view_box`` (the Case
    page's ROI view: the union of the members' crop boxes)."""
    vx0, vy0, vx1, vy1 = (int(round(float(v))) for v in view_box)
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    out = np.zeros((vy1 - vy0, vx1 - vx0), dtype=np.float32)
    out[y0 - vy0 : y1 - vy0, x0 - vx0 : x1 - vx0] = values
    return out


def bench_page_cams(
    zoo: Any,
    pixels: np.ndarray,
    box: Sequence[float] | None,
    repeats: int = 3,
    *,
    methods: Sequence[str] = ("gradcam", "scorecam"),
) -> dict[str, Any]:
    """Time what the Case page computes for one case, per CAM method, end to end.

    For every member ``explain.explain_member`` (the CAM on the ROI crop, mapped onto the ROI
    view and the full radiograph - the call ``dashboard.case_logic.member_cam`` makes), then
    the ensemble-weighted maps on both grids (``explain.ensemble_heatmap`` with
    ``zoo.cam_weights``, as ``case_logic.ensemble_cam``). No cache: each repeat is a first
    view of a case. Display downscaling (milliseconds) is not included.

    Returns ``{method: {"first_s", "median_s", "per_member_s", "blank"}}``: ``first_s`` is the
    process's first call (cold: oneDNN kernels and allocator growth, what the first case
    after the dashboard starts waits for), ``median_s`` the median of ``repeats`` further
    calls; ``blank`` maps each member whose map is blank to the reason the page shows.
    """
    if repeats < 1:
        raise InputError("repeats must be >= 1")
    out: dict[str, Any] = {}
    for method in methods:
        totals: list[float] = []
        per: dict[str, list[float]] = {m.spec.member_id: [] for m in zoo.members}
        blank: dict[str, str] = {}
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            results = {}
            for m in zoo.members:
                t1 = time.perf_counter()
                results[m.spec.member_id] = explain.explain_member(m.spec, m.model, pixels, box, method=method)
                per[m.spec.member_id].append(time.perf_counter() - t1)
            view_box = (
                min(r.crop_box[0] for r in results.values()),
                min(r.crop_box[1] for r in results.values()),
                max(r.crop_box[2] for r in results.values()),
                max(r.crop_box[3] for r in results.values()),
            )
            weights = {mid: zoo.cam_weights[mid] for mid in results}
            explain.ensemble_heatmap({mid: r.image_map for mid, r in results.items()}, weights)
            explain.ensemble_heatmap({mid: _paste(r.roi_map, r.crop_box, view_box) for mid, r in results.items()}, weights)
            totals.append(time.perf_counter() - t0)
            blank = {
                mid: str(r.heatmap.details.get("blank_reason") or "")
                for mid, r in results.items()
                if r.heatmap.details.get("blank_reason")
            }
        out[method] = {
            "first_s": totals[0],
            "median_s": _median(totals[1:]),
            "per_member_s": {mid: _median(v[1:]) for mid, v in per.items()},
            "blank": blank,
        }
    return out


def _rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_bench(
    zoo_dir: Any = None, *, repeats: int = 3, naive_repeats: int = 1, top_k: int | None = explain.DEFAULT_TOP_K
) -> dict[str, Any]:
    """Contract 2.4: load, one-case prediction and CAM timings for a zoo, medians over repeats.

    The case is the dashboard's sample case (pydicom-data's RG3 radiograph with its ROI), so
    the numbers are what a user of the case page waits for.
    """
    import torch

    from model_zoo import imaging, preprocess
    from model_zoo.ensemble import load_zoo
    from model_zoo.sample import sample_case

    start = time.perf_counter()
    zoo = load_zoo(zoo_dir)
    load_s = time.perf_counter() - start
    case = sample_case()
    pixels = imaging.load_image(case["path"]).pixels
    box = tuple(case["roi_box"])
    predict_times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        zoo.predict(pixels, box, age=case.get("age"), sex=case.get("sex"), site=case.get("site"))
        predict_times.append(time.perf_counter() - t0)
    # What the Case page computes (timed first, so its cold first call is a real one).
    page = bench_page_cams(zoo, pixels, box, repeats)
    members = [(m.spec, m.model) for m in zoo.members]
    inputs = {m.spec.member_id: preprocess.member_input(m.spec, pixels, box)[0] for m in zoo.members}
    cams = bench_cams(members, inputs, repeats, naive_repeats=naive_repeats, top_k=top_k)
    return {
        "zoo": zoo.name,
        "load_s": load_s,
        "predict_s": _median(predict_times),
        # The Case page's work: every member's CAM on the ROI crop mapped onto the ROI view and
        # the full radiograph, plus the ensemble-weighted maps on both (medians, warm).
        "gradcam_s": page["gradcam"]["median_s"],
        "scorecam_s": page["scorecam"]["median_s"],
        "gradcam_first_s": page["gradcam"]["first_s"],
        "scorecam_first_s": page["scorecam"]["first_s"],
        "page_per_member_s": {k: v["per_member_s"] for k, v in page.items()},
        "blank_maps": {k: v["blank"] for k, v in page.items()},
        # The bare CAM computations on the same inputs (no mapping, no ensemble).
        "gradcam_cam_only_s": cams["gradcam_s"],
        "scorecam_cam_only_s": cams["scorecam_s"],
        "scorecam_naive_s": cams["scorecam_naive_s"],
        "scorecam_method": cams.get("scorecam_method"),
        "speedup_vs_naive": cams.get("speedup_vs_naive"),
        "rss_mb": _rss_mb(),
        "threads": torch.get_num_threads(),
        "cpu_count": __import__("os").cpu_count(),
        "repeats": repeats,
        "naive_repeats": naive_repeats,
    }
