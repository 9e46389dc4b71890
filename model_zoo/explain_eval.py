"""Do the heatmaps point at the lesion, and does the score depend on what they highlight?

Two parts:

* **Pure metrics** on a heatmap and a lesion (box or mask) on the same grid: the pointing
  game, the share of the map's positive mass inside the lesion ("energy"), the IoU of the
  map's top 20 % with the lesion, deletion / insertion curves of any scoring function and
  their areas, two baseline maps (random, centre prior) and a seeded percentile bootstrap.
* **The runner** (``python -m model_zoo explain-eval``): for every usable case-table row with
  a lesion box, every member and the ensemble-weighted map, GradCAM and ScoreCAM, computed
  with exactly the calls the Case page makes (``explain.explain_member`` per member,
  ``explain.ensemble_heatmap`` with ``Zoo.cam_weights``), in two views:

  ``roi``    the ROI is the lesion box (as when a user draws it): the models see the box plus
             their margin, and the metrics are taken over the union of the members' crop
             boxes (the Case page's "on the ROI" view). Chance is high here - the box fills
             most of the crop - which is why every number comes with its baselines.
  ``image``  the ROI is the whole image (the Case page's "Whole image" choice): the metrics
             are taken over the whole radiograph.

  Faithfulness: the region's pixels are replaced, most-highlighted first, by a blurred copy
  of the image (deletion), or revealed in that order starting from the blurred copy
  (insertion), and the target's probability is re-computed through the product path
  (``preprocess.member_input`` -> member; members -> ``Zoo.combine`` for the ensemble) at
  ``steps + 1`` points; the curve's area over the fraction perturbed is the score (deletion:
  lower = more faithful; insertion: higher).

Outputs: ``cases.csv`` (one row per case x view x target x map) and ``summary.json`` (means
with bootstrap CIs per view / target / map, the same for the baselines, and paired
differences against the random map). :class:`ExplainReport` is the typed reader of the
release file ``report/explain.json`` that ``python -m training add-explain`` writes from one
or more summaries.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_zoo.errors import InputError, ZooError

# The release's typed report lives in model_zoo.explain_report (a loaded Zoo reads it).
from model_zoo.explain_report import ExplainReport, MetricSummary, release_fingerprint

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from model_zoo.ensemble import Zoo

__all__ = [
    "BASELINES",
    "METHODS",
    "METRICS",
    "VIEWS",
    "EvalOptions",
    "PerturbationCurve",
    "bootstrap_ci",
    "box_mask",
    "centre_prior_map",
    "curve_auc",
    "deletion_curve",
    "energy_inside",
    "evaluate_case",
    "insertion_curve",
    "markdown_tables",
    "perturbation_curve",
    "pointing_game",
    "random_map",
    "reference_image",
    "run_explain_eval",
    "summarise_rows",
    "top_fraction_region",
    "top_iou",
]

# Scores perturbed images: one probability per image, as a sequence or a 1-D array.
ScoreFn = Callable[[list[np.ndarray]], Sequence[float] | np.ndarray]

METHODS = ("gradcam", "scorecam")
METHOD_LABELS = {"gradcam": "GradCAM", "scorecam": "ScoreCAM", "random": "random map", "centre": "centre prior"}
BASELINES = ("random", "centre")
VIEWS = ("roi", "image")
VIEW_LABELS = {"roi": "ROI = lesion box (the crop the models saw)", "image": "ROI = whole image (the whole radiograph)"}
ENSEMBLE = "ensemble"
# Per-case metrics (cases.csv columns) summarised in summary.json.
METRICS = ("pointing_box", "energy_box", "iou_box", "pointing_mask", "energy_mask", "iou_mask", "deletion_auc", "insertion_auc")
TOP_FRAC = 0.2
RANDOM_GRID = 7  # the random baseline's grid: the EfficientNet members' CAM grid at 224 px
CENTRE_SIGMA = 0.25  # centre prior: Gaussian with sigma = 0.25 x the region's width / height
BLUR_SIGMA = 0.1  # deletion / insertion reference: Gaussian blur, sigma = 0.1 x the region's longer side
SUMMARY_FORMAT = 1

CSV_COLUMNS = [
    "set",
    "case",
    "image",
    "label",
    "view",
    "target",
    "method",
    "blank",
    "box_share",
    "mask_share",
    *METRICS,
    "p_original",
    "cam_seconds",
]


# ============================================================================= pure metrics


def _map(heat: np.ndarray, name: str = "heatmap") -> np.ndarray:
    a = np.asarray(heat, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"{name} must be a non-empty 2-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} contains NaN or infinite values")
    return a


def _target(target: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    t = np.asarray(target, dtype=bool)
    if t.shape != shape:
        raise InputError(f"lesion mask has shape {t.shape}, the heatmap {shape}")
    return t


def box_mask(shape: tuple[int, int], box: Sequence[float], origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the pixels whose centre lies inside ``box``.

    ``box`` is ``(x0, y0, x1, y1)`` (x1/y1 exclusive, pixel edges) in the frame whose pixel
    ``(0, 0)`` is at ``origin`` - e.g. stored-image coordinates with ``origin`` = the
    region's top-left corner when the grid covers only a region of the image.
    """
    h, w = int(shape[0]), int(shape[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    ox, oy = float(origin[0]), float(origin[1])
    xs = np.arange(w) + ox + 0.5
    ys = np.arange(h) + oy + 0.5
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def pointing_game(heat: np.ndarray, target: np.ndarray) -> float:
    """Pointing game: does the map's peak fall inside the lesion?

    Returns 1.0 when the maximum lies inside ``target``, 0.0 outside, and with several
    pixels tied at the maximum the share of them inside (the hit rate of a random tie-break).
    NaN when the map has no positive peak (blank: zero everywhere) - a blank map points
    nowhere, which is reported as such rather than as a miss.
    """
    a = _map(heat)
    t = _target(target, a.shape)
    peak = a.max()
    if peak <= 0:
        return float("nan")
    at_peak = a == peak
    return float(np.count_nonzero(at_peak & t) / np.count_nonzero(at_peak))


def energy_inside(heat: np.ndarray, target: np.ndarray) -> float:
    """Share of the map's positive mass inside the lesion: ``sum(max(h, 0)[t]) / sum(max(h, 0))``.

    A uniform map gives the lesion's share of the grid; NaN for a map with no positive mass.
    """
    a = np.clip(_map(heat), 0.0, None)
    t = _target(target, a.shape)
    total = a.sum()
    if total <= 0:
        return float("nan")
    return float(a[t].sum() / total)


def top_fraction_region(heat: np.ndarray, frac: float = TOP_FRAC) -> np.ndarray:
    """The map's top ``frac`` as a boolean mask: pixels at or above its ``1 - frac`` quantile.

    Ties at the threshold are included (a flat map's region is the whole map, not an
    arbitrary subset), and only positive pixels count: where the quantile is 0 (a map that
    is zero on more than ``1 - frac`` of the grid) the region is the map's positive support.
    """
    a = _map(heat)
    if not 0 < frac <= 1:
        raise InputError(f"frac must be in (0, 1], got {frac}")
    q = float(np.quantile(a, 1.0 - frac))
    return (a >= q) & (a > 0) if q <= 0 else a >= q


def top_iou(heat: np.ndarray, target: np.ndarray, frac: float = TOP_FRAC) -> float:
    """IoU of :func:`top_fraction_region` with the lesion; NaN for a blank map."""
    a = _map(heat)
    t = _target(target, a.shape)
    top = top_fraction_region(a, frac)
    if not top.any():
        return float("nan")
    union = np.count_nonzero(top | t)
    return float(np.count_nonzero(top & t) / union) if union else float("nan")


def random_map(shape: tuple[int, int], rng: np.random.Generator, grid: int | None = RANDOM_GRID) -> np.ndarray:
    """Baseline: uniform noise on a ``grid x grid`` lattice, bilinearly stretched to ``shape``.

    The coarse lattice makes it as smooth as a CAM (the bundled EfficientNets' CAM grid is
    7 x 7); ``grid=None`` gives independent noise per pixel. Values in [0, 1).
    """
    h, w = int(shape[0]), int(shape[1])
    if grid is None:
        return rng.random((h, w))
    from model_zoo import roi

    coarse = rng.random((int(grid), int(grid))).astype(np.float32)
    return roi.heatmap_to_image(coarse, (0, 0, w, h), (w, h)).astype(np.float64)


def centre_prior_map(shape: tuple[int, int], sigma_frac: float = CENTRE_SIGMA) -> np.ndarray:
    """Baseline: a Gaussian centred on the grid, sigma = ``sigma_frac`` x width / height; peak 1.

    The "lesions sit in the middle of the picture" prior: what a map that ignored the image
    would score.
    """
    h, w = int(shape[0]), int(shape[1])
    ys = (np.arange(h) + 0.5 - h / 2.0) / max(sigma_frac * h, 1e-9)
    xs = (np.arange(w) + 0.5 - w / 2.0) / max(sigma_frac * w, 1e-9)
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))


def reference_image(image: np.ndarray, region: Sequence[int] | None = None, sigma_frac: float = BLUR_SIGMA) -> np.ndarray:
    """The "removed information" image for deletion / insertion: a Gaussian blur of ``image``
    with sigma = ``sigma_frac`` x the region's longer side (whole image when ``region`` is None)."""
    import cv2

    img = np.asarray(image, dtype=np.float32)
    if region is None:
        side = max(img.shape[:2])
    else:
        x0, y0, x1, y1 = (int(v) for v in region)
        side = max(x1 - x0, y1 - y0)
    sigma = max(float(sigma_frac) * side, 0.5)
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


@dataclass(frozen=True)
class PerturbationCurve:
    """Scores after perturbing the top ``fractions`` of the map's pixels; ``auc`` over [0, 1]."""

    mode: str
    fractions: np.ndarray
    scores: np.ndarray
    auc: float


def curve_auc(fractions: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Trapezoidal area under ``scores`` over ``fractions`` (fractions run 0 -> 1)."""
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(scores, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise InputError("a curve needs matching 1-D fractions and scores with at least two points")
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def perturbation_order(heat: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Flat pixel indices, highest map value first; ties broken by a seeded random key."""
    a = _map(heat).ravel()
    rng = np.random.default_rng(0) if rng is None else rng
    return np.lexsort((rng.random(a.size), -a))


def perturbation_curve(
    image: np.ndarray,
    heat: np.ndarray,
    score_fn: ScoreFn,
    *,
    mode: str,
    reference: np.ndarray | None = None,
    region: Sequence[int] | None = None,
    steps: int = 10,
    rng: np.random.Generator | None = None,
) -> PerturbationCurve:
    """Deletion or insertion curve of ``score_fn`` for a heatmap.

    Parameters
    ----------
    image : (H, W) image the model scores.
    heat : map over ``region`` (the whole image when ``region`` is None), same shape as it.
    score_fn : list of (H, W) images -> one score per image (called once, with all points).
    mode : ``"deletion"`` (start from ``image``, replace the most-highlighted pixels by
        ``reference`` first) or ``"insertion"`` (start from ``image`` with the region replaced
        by ``reference``, restore the most-highlighted pixels first).
    reference : the replacement image (default :func:`reference_image`).
    region : integer ``(x0, y0, x1, y1)`` the map covers; pixels outside are never changed.
    steps : the curve has ``steps + 1`` points at fractions ``0, 1/steps, ..., 1``.
    """
    if mode not in ("deletion", "insertion"):
        raise InputError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if int(steps) < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise InputError(f"image must be 2-D, got shape {img.shape}")
    h, w = img.shape
    x0, y0, x1, y1 = (0, 0, w, h) if region is None else (int(v) for v in region)
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InputError(f"region {(x0, y0, x1, y1)} is not inside the {w}x{h} image")
    a = _map(heat)
    if a.shape != (y1 - y0, x1 - x0):
        raise InputError(f"heatmap shape {a.shape} does not match the region {(y1 - y0, x1 - x0)}")
    ref = reference_image(img, (x0, y0, x1, y1)) if reference is None else np.asarray(reference, dtype=np.float32)
    if ref.shape != img.shape:
        raise InputError(f"reference shape {ref.shape} does not match the image {img.shape}")
    order = perturbation_order(a, rng)
    n = a.size
    fractions = np.arange(int(steps) + 1, dtype=np.float64) / int(steps)
    orig_region = img[y0:y1, x0:x1].ravel()
    ref_region = ref[y0:y1, x0:x1].ravel()
    images = []
    for f in fractions:
        chosen = order[: int(round(f * n))]
        if mode == "deletion":
            flat = orig_region.copy()
            flat[chosen] = ref_region[chosen]
        else:
            flat = ref_region.copy()
            flat[chosen] = orig_region[chosen]
        out = img.copy()
        out[y0:y1, x0:x1] = flat.reshape(a.shape)
        images.append(out)
    scores = np.asarray(score_fn(images), dtype=np.float64).reshape(-1)
    if scores.shape != fractions.shape:
        raise ValueError(f"score_fn returned {scores.size} scores for {fractions.size} images")
    return PerturbationCurve(mode=mode, fractions=fractions, scores=scores, auc=curve_auc(fractions, scores))


def deletion_curve(image: np.ndarray, heat: np.ndarray, score_fn: ScoreFn, **kwargs: Any) -> PerturbationCurve:
    """:func:`perturbation_curve` with ``mode="deletion"`` (lower area = the map found what the score needs)."""
    return perturbation_curve(image, heat, score_fn, mode="deletion", **kwargs)


def insertion_curve(image: np.ndarray, heat: np.ndarray, score_fn: ScoreFn, **kwargs: Any) -> PerturbationCurve:
    """:func:`perturbation_curve` with ``mode="insertion"`` (higher area = more faithful)."""
    return perturbation_curve(image, heat, score_fn, mode="insertion", **kwargs)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean (or ``statistic``) over cases; NaNs are dropped.

    ``statistic`` maps an ``(n_boot, n)`` array of resamples to ``n_boot`` values (default:
    the row means). Seeded, so the same values always give the same interval. None when
    fewer than two finite values remain.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        return None
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    samples = v[rng.integers(0, v.size, size=(int(n_boot), v.size))]
    stats = samples.mean(axis=1) if statistic is None else np.asarray(statistic(samples), dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _summary(values: Iterable[float], n_boot: int, seed: int) -> dict[str, Any]:
    v = np.asarray(list(values), dtype=np.float64)
    finite = v[np.isfinite(v)]
    ci = bootstrap_ci(finite, n_boot=n_boot, seed=seed)
    return {"mean": float(finite.mean()) if finite.size else None, "ci": list(ci) if ci else None, "n": int(finite.size)}


# ============================================================================= runner


@dataclass(frozen=True)
class EvalOptions:
    """What the runner computes; all recorded in the summary."""

    methods: tuple[str, ...] = METHODS
    views: tuple[str, ...] = VIEWS
    steps: int = 10
    faithfulness: bool = True
    top_frac: float = TOP_FRAC
    seed: int = 0
    n_boot: int = 2000
    max_cases: int | None = None

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise InputError(f"methods must be among {', '.join(METHODS)}; got {', '.join(self.methods) or 'none'}")
        badv = [v for v in self.views if v not in VIEWS]
        if badv or not self.views:
            raise InputError(f"views must be among {', '.join(VIEWS)}; got {', '.join(self.views) or 'none'}")
        if self.steps < 1:
            raise InputError("steps must be at least 1")
        if self.max_cases is not None and self.max_cases < 1:
            raise InputError("max-cases must be at least 1")


@dataclass(frozen=True)
class CaseInput:
    """One row to evaluate: the lesion box (stored pixels) and optional mask / clinical values."""

    case: int  # 1-based data-row number in the case table
    image: str
    image_path: str
    label: int | None
    box: tuple[float, float, float, float]
    mask_path: str | None = None
    age: Any = None
    sex: Any = None
    site: Any = None


class _Scorer:
    """Member / ensemble probabilities of perturbed images through the product path, batched.

    The same calls as ``Zoo.member_logits`` (``preprocess.member_input``, the model under its
    lock in inference mode) on a batch; ensemble = ``Zoo.combine`` on the member probabilities.
    """

    def __init__(self, zoo: Zoo, box: Sequence[float], clinical: tuple[Any, Any, Any], batch: int = 16) -> None:
        from model_zoo import roi

        self.zoo = zoo
        self.box = roi.as_box(box)  # four floats, as tuple(float(v) for v in box) gave
        self.clinical = clinical
        self.batch = batch
        self._cache: dict[tuple[str, bytes], float] = {}
        self.seconds = 0.0

    @staticmethod
    def _key(img: np.ndarray) -> bytes:
        import hashlib

        return hashlib.sha1(np.ascontiguousarray(img, dtype=np.float32).tobytes()).digest()

    def member(self, mid: str, images: list[np.ndarray]) -> np.ndarray:
        import torch

        from model_zoo import preprocess
        from model_zoo.ensemble import sigmoid
        from model_zoo.locks import model_lock

        start = time.perf_counter()
        keys = [self._key(im) for im in images]
        todo = [i for i, k in enumerate(keys) if (mid, k) not in self._cache]
        m = next(m for m in self.zoo.members if m.spec.member_id == mid)
        for s in range(0, len(todo), self.batch):
            idx = todo[s : s + self.batch]
            x = torch.cat([preprocess.member_input(m.spec, images[i], self.box)[0] for i in idx])
            with model_lock(m.model), torch.inference_mode():
                logits = m.model(x).reshape(-1).float().numpy()
            for i, v in zip(idx, logits, strict=True):
                self._cache[(mid, keys[i])] = float(sigmoid(float(v)))
        self.seconds += time.perf_counter() - start
        return np.array([self._cache[(mid, k)] for k in keys])

    def ensemble(self, images: list[np.ndarray]) -> np.ndarray:
        """``Zoo.combine``'s stacker probability, for all images in one call (same features:
        ``ensemble.stacker_matrix`` in member order, the row's clinical values)."""
        from model_zoo.ensemble import stacker_matrix

        probs = np.stack([self.member(mid, images) for mid in self.zoo.member_ids], axis=1)
        n = len(images)
        age, sex, site = self.clinical
        features = stacker_matrix(probs, [age] * n, [sex] * n, [site] * n, age_fill=self.zoo.age_fill)
        return np.asarray(self.zoo.stacker.predict_proba(features)[:, 1], dtype=np.float64)

    def fn(self, target: str) -> Callable[[list[np.ndarray]], np.ndarray]:
        if target == ENSEMBLE:
            return self.ensemble
        return lambda images: self.member(target, images)


def _load_mask(path: str | None, size_wh: tuple[int, int]) -> np.ndarray | None:
    """A lesion mask (any non-zero pixel = lesion) resized to the image (nearest); None if absent."""
    if not path:
        return None
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        return None
    with Image.open(p) as im:
        arr = np.asarray(im.convert("L")) > 0
    if (arr.shape[1], arr.shape[0]) != tuple(size_wh):
        import cv2

        arr = cv2.resize(arr.astype(np.uint8), tuple(size_wh), interpolation=cv2.INTER_NEAREST) > 0
    return arr if arr.any() else None


def _union(boxes: Iterable[Sequence[float]]) -> tuple[int, int, int, int]:
    bs = [tuple(int(round(float(v))) for v in b) for b in boxes]
    return (min(b[0] for b in bs), min(b[1] for b in bs), max(b[2] for b in bs), max(b[3] for b in bs))


def _localisation(heat: np.ndarray, box_t: np.ndarray, mask_t: np.ndarray | None, top_frac: float) -> dict[str, float]:
    nan = float("nan")
    out = {
        "pointing_box": pointing_game(heat, box_t),
        "energy_box": energy_inside(heat, box_t),
        "iou_box": top_iou(heat, box_t, top_frac),
    }
    if mask_t is not None:
        out.update(
            {
                "pointing_mask": pointing_game(heat, mask_t),
                "energy_mask": energy_inside(heat, mask_t),
                "iou_mask": top_iou(heat, mask_t, top_frac),
            }
        )
    else:
        out.update({"pointing_mask": nan, "energy_mask": nan, "iou_mask": nan})
    return out


def evaluate_case(
    zoo: Zoo, pixels: np.ndarray, case: CaseInput, options: EvalOptions, mask: np.ndarray | None = None
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """All rows of one case (views x targets x maps) and its seconds per method / faithfulness.

    Maps are computed as the Case page computes them: ``explain.explain_member`` for each
    member (ROI = the lesion box for the ``roi`` view, None = whole image for ``image``),
    the ensemble with ``explain.ensemble_heatmap`` over the members' image maps weighted by
    ``zoo.cam_weights``.
    """
    from model_zoo import explain, roi

    h, w = pixels.shape[:2]
    seconds: dict[str, float] = {m: 0.0 for m in options.methods}
    seconds["faithfulness"] = 0.0
    rows: list[dict[str, Any]] = []
    rng_case = np.random.default_rng([options.seed, case.case])
    for view in options.views:
        box = roi.validate_box(case.box, (w, h)) if view == "roi" else roi.full_image_box((w, h))
        maps: dict[tuple[str, str], np.ndarray] = {}
        blank: dict[tuple[str, str], bool] = {}
        cam_s: dict[tuple[str, str], float] = {}
        crop_boxes: list[Sequence[float]] = []
        for method in options.methods:
            image_maps = {}
            for m in zoo.members:
                ex = explain.explain_member(m.spec, m.model, pixels, None if view == "image" else box, method=method)
                image_maps[m.spec.member_id] = ex.image_map
                crop_boxes.append(ex.crop_box)
                maps[(m.spec.member_id, method)] = ex.image_map
                blank[(m.spec.member_id, method)] = bool(ex.image_map.max() <= 0)
                cam_s[(m.spec.member_id, method)] = float(ex.heatmap.seconds)
                seconds[method] += float(ex.heatmap.seconds)
            ens = explain.ensemble_heatmap(image_maps, zoo.cam_weights, base_method=METHOD_LABELS[method])
            maps[(ENSEMBLE, method)] = np.asarray(ens.values)
            blank[(ENSEMBLE, method)] = bool(np.asarray(ens.values).max() <= 0)
            cam_s[(ENSEMBLE, method)] = sum(cam_s[(mid, method)] for mid in zoo.member_ids)
        region = _union(crop_boxes) if view == "roi" else (0, 0, w, h)
        x0, y0, x1, y1 = region
        shape = (y1 - y0, x1 - x0)
        box_t = box_mask(shape, case.box, origin=(x0, y0))
        mask_t = None if mask is None else mask[y0:y1, x0:x1]
        if mask_t is not None and not mask_t.any():
            mask_t = None
        baselines = {"random": random_map(shape, rng_case), "centre": centre_prior_map(shape)}
        region_maps: dict[tuple[str, str], np.ndarray] = {k: v[y0:y1, x0:x1] for k, v in maps.items()}
        targets = [*zoo.member_ids, ENSEMBLE]
        for t in targets:
            for b, bmap in baselines.items():
                region_maps[(t, b)] = bmap
                blank[(t, b)] = False
                cam_s[(t, b)] = 0.0
        scorer = _Scorer(zoo, box, (case.age, case.sex, case.site))
        reference = reference_image(pixels, region)
        base = {
            "set": "",
            "case": case.case,
            "image": case.image,
            "label": case.label,
            "view": view,
            "box_share": float(box_t.mean()),
            "mask_share": float(mask_t.mean()) if mask_t is not None else float("nan"),
        }
        for t in targets:
            p0 = float("nan")
            if options.faithfulness:
                p0 = float(scorer.fn(t)([np.asarray(pixels, dtype=np.float32)])[0])
            for method in (*options.methods, *BASELINES):
                heat = region_maps[(t, method)]
                row = dict(
                    base, target=t, method=method, blank=int(blank[(t, method)]), p_original=p0, cam_seconds=cam_s[(t, method)]
                )
                row.update(_localisation(heat, box_t, mask_t, options.top_frac))
                row["deletion_auc"] = row["insertion_auc"] = float("nan")
                if options.faithfulness and not blank[(t, method)]:
                    t0 = time.perf_counter()
                    for mode in ("deletion", "insertion"):
                        # The same tie-break for both curves of a map (a fresh generator each).
                        curve = perturbation_curve(
                            pixels,
                            heat,
                            scorer.fn(t),
                            mode=mode,
                            reference=reference,
                            region=region,
                            steps=options.steps,
                            rng=np.random.default_rng([options.seed, case.case, 1]),
                        )
                        row[f"{mode}_auc"] = curve.auc
                    seconds["faithfulness"] += time.perf_counter() - t0
                rows.append(row)
    return rows, seconds


# ----------------------------------------------------------------------------- case selection


def _release_splits(zoo: Zoo) -> dict[str, str]:
    """sha256 of each image file -> split, from the release's own ``data/cases.csv``."""
    import pandas as pd

    from model_zoo.zoo import verified_path

    rel = zoo.manifest.data.rows or "data/cases.csv"
    if rel not in zoo.manifest.files:
        raise InputError(f"{zoo.name} lists no case rows ({rel}); --split cannot be resolved for this release")
    table = pd.read_csv(verified_path(zoo.root, zoo.manifest, rel, "the release's case list"), dtype=str)
    if not {"sha256", "split"} <= set(table.columns):
        raise InputError(f"{zoo.name}: {rel} has no sha256/split columns; --split cannot be resolved")
    return dict(zip(table["sha256"], table["split"], strict=True))


def _eligible(frame: pd.DataFrame) -> pd.DataFrame:
    from model_zoo.cases import ROI_COLUMNS

    ok = (frame["row_error"] == "") & frame[ROI_COLUMNS].notna().all(axis=1)
    return frame[ok]


def select_cases(
    zoo: Zoo, cases_path: Path, *, split: str | None, options: EvalOptions
) -> tuple[list[CaseInput], dict[str, Any]]:
    """Rows with a lesion box (and no row error), restricted to the release's ``split`` when
    given (matched by the image file's sha256), then a seeded random subset of
    ``options.max_cases``. Returns the cases and a record of the selection."""
    from model_zoo.cases import read_case_table
    from model_zoo.zoo import sha256_file

    table = read_case_table(cases_path, label_map=zoo.task.label_map)
    frame = _eligible(table.frame)
    info: dict[str, Any] = {"n_rows": int(len(table.frame)), "n_with_box": int(len(frame))}
    hashes: dict[int, str] = {}
    if split is not None:
        splits = _release_splits(zoo)
        keep = []
        for idx, path in zip(frame.index, frame["image_path"], strict=True):
            digest = sha256_file(Path(path))
            hashes[int(idx)] = digest
            if splits.get(digest) == split:
                keep.append(idx)
        frame = frame.loc[keep]
        if frame.empty:
            raise InputError(f"no row of {cases_path} is in the release's {split!r} split (matched by image sha256)")
        info["split"] = split
    info["n_eligible"] = int(len(frame))
    info["subset"] = options.max_cases is not None and len(frame) > options.max_cases
    if info["subset"]:
        rng = np.random.default_rng(options.seed)
        chosen = np.sort(rng.choice(len(frame), size=options.max_cases, replace=False))
        frame = frame.iloc[chosen]
    root = Path(cases_path).expanduser().resolve().parent
    out = []
    for idx, row in frame.iterrows():
        mask = row.get("mask")
        mask_path = None
        if isinstance(mask, str) and mask.strip():
            mp = Path(mask.strip())
            mask_path = str(mp if mp.is_absolute() else root / mp)
        out.append(
            CaseInput(
                case=int(idx) + 1,
                image=str(row["image"]),
                image_path=str(row["image_path"]),
                label=None if _nan(row.get("label")) else int(row["label"]),
                box=tuple(float(row[c]) for c in ("roi_x0", "roi_y0", "roi_x1", "roi_y1")),  # type: ignore[arg-type]
                mask_path=mask_path,
                age=None if _nan(row.get("age")) else float(row["age"]),
                sex=None if _nan(row.get("sex")) else str(row["sex"]),
                site=None if _nan(row.get("site")) else str(row["site"]),
            )
        )
    info["selected_cases"] = [c.case for c in out]
    info["hashes"] = hashes
    return out, info


def _nan(v: Any) -> bool:
    if v is None:
        return True
    try:
        import pandas as pd

        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _kind(zoo: Zoo, cases: Sequence[CaseInput], split: str | None, hashes: Mapping[int, str]) -> tuple[str, str]:
    """internal / external / unknown, and why: a split of the release is internal; otherwise
    the set is external only if none of its images is one of the release's own images."""
    from model_zoo.zoo import sha256_file

    if split is not None:
        return "internal", f"the release's {split} split"
    try:
        own = set(_release_splits(zoo))
    except InputError:
        return "unknown", "the release lists no image hashes"
    shared = [c.case for c in cases if (hashes.get(c.case - 1) or sha256_file(Path(c.image_path))) in own]
    if shared:
        return "internal", f"{len(shared)} of the images are the release's own (e.g. row {shared[0]})"
    return "external", "no image is one of the release's own (sha256)"


# ----------------------------------------------------------------------------- summary


def summarise_rows(rows: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``results[view][target][method][metric] = {"mean", "ci", "n"}`` plus ``blank`` (share of
    blank maps) and ``vs_random[metric]`` (paired mean difference map - random map, per case)."""
    results: dict[str, Any] = {}
    if rows.empty:
        return results
    for (view, target), g in rows.groupby(["view", "target"], sort=False):
        block = results.setdefault(str(view), {}).setdefault(str(target), {})
        random_rows = g[g["method"] == "random"].set_index("case")
        for method, gm in g.groupby("method", sort=False):
            entry: dict[str, Any] = {m: _summary(gm[m], n_boot, seed) for m in METRICS if m in gm}
            entry["blank"] = _summary(gm["blank"].astype(float), n_boot, seed)
            if method != "random" and not random_rows.empty:
                paired = gm.set_index("case")
                entry["vs_random"] = {
                    m: _summary((paired[m] - random_rows[m].reindex(paired.index)).to_numpy(), n_boot, seed)
                    for m in ("pointing_box", "energy_box", "iou_box", "deletion_auc", "insertion_auc")
                    if m in paired
                }
            block[str(method)] = entry
    return results


def _pct(s: MetricSummary | None) -> str:
    if s is None or s.mean is None:
        return "-"
    out = f"{100 * s.mean:.0f} %"
    return out + (f" [{100 * s.ci[0]:.0f}-{100 * s.ci[1]:.0f}]" if s.ci else "")


def _val(s: MetricSummary | None) -> str:
    if s is None or s.mean is None:
        return "-"
    return f"{s.mean:.2f}" + (f" [{s.ci[0]:.2f}-{s.ci[1]:.2f}]" if s.ci else "")


def markdown_tables(report: ExplainReport) -> str:
    """One markdown table per view: every set x target x map, with the baselines."""
    lines: list[str] = []
    views = [v for v in VIEWS if any(v in s.views for s in report.sets)]
    for view in views:
        lines += [
            f"**{VIEW_LABELS[view]}**",
            "",
            "| set | map | pointing (box) | energy in box | top-20 % IoU (box) | pointing (mask) "
            "| deletion AUC (lower better) | insertion AUC (higher better) | blank |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in report.sets:
            if view not in s.views:
                continue
            targets = list((s.results.get(view) or {}).keys())
            targets = [t for t in targets if t != ENSEMBLE] + ([ENSEMBLE] if ENSEMBLE in targets else [])
            for t in targets:
                methods = [m for m in s.methods if m in METHODS] + (list(BASELINES) if t == ENSEMBLE else [])
                for m in methods:
                    name = f"{t} {METHOD_LABELS[m]}" if m in METHODS else f"{METHOD_LABELS[m]} (baseline)"
                    lines.append(
                        f"| {s.name} ({s.kind}, n={s.n_cases}) | {name} | {_pct(s.metric(view, t, m, 'pointing_box'))} "
                        f"| {_pct(s.metric(view, t, m, 'energy_box'))} | {_val(s.metric(view, t, m, 'iou_box'))} "
                        f"| {_pct(s.metric(view, t, m, 'pointing_mask'))} "
                        f"| {_val(s.metric(view, t, m, 'deletion_auc'))} "
                        f"| {_val(s.metric(view, t, m, 'insertion_auc'))} "
                        f"| {_pct(s.metric(view, t, m, 'blank'))} |"
                    )
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- run


def _write_rows(path: Path, rows: list[dict[str, Any]], *, header: bool) -> None:
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if header:
            writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


def run_explain_eval(
    zoo: Zoo,
    cases_path: Path,
    out_dir: Path,
    *,
    split: str | None = None,
    name: str | None = None,
    options: EvalOptions = EvalOptions(),
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate the zoo's heatmaps on a case table; write ``cases.csv`` and ``summary.json``.

    ``cases.csv`` is appended case by case (a killed run keeps what it finished; ``resume``
    skips the cases already in it - run with the same options). Returns the summary.
    """
    import pandas as pd
    import torch

    from model_zoo import imaging

    cases_path = Path(cases_path)
    if not cases_path.is_file():
        raise InputError(f"case table not found: {cases_path}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "cases.csv"
    set_name = name or split or cases_path.resolve().parent.name
    cases, info = select_cases(zoo, cases_path, split=split, options=options)
    hashes = info.pop("hashes")
    kind, kind_why = _kind(zoo, cases, split, hashes)
    done: set[int] = set()
    if resume and csv_path.is_file():
        done = set(pd.read_csv(csv_path, usecols=["case"])["case"].astype(int))
    elif csv_path.exists():
        csv_path.unlink()
    failed: list[dict[str, Any]] = []
    per_case: list[dict[str, float]] = []
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    wall0 = time.perf_counter()
    for i, case in enumerate(cases):
        if case.case in done:
            continue
        t0 = time.perf_counter()
        try:
            pixels = imaging.load_image(case.image_path).pixels
            h, w = pixels.shape[:2]
            mask = _load_mask(case.mask_path, (w, h))
            rows, secs = evaluate_case(zoo, pixels, case, options, mask)
        except (ZooError, ValueError, OSError) as err:
            failed.append({"case": case.case, "image": case.image, "error": str(err).splitlines()[0]})
        else:
            for r in rows:
                r["set"] = set_name
            _write_rows(csv_path, rows, header=not csv_path.exists())
            secs["total"] = time.perf_counter() - t0
            per_case.append(secs)
        if progress is not None:
            progress(i + 1, len(cases))
    wall = time.perf_counter() - wall0
    frame = pd.read_csv(csv_path) if csv_path.is_file() else pd.DataFrame(columns=CSV_COLUMNS)
    results = summarise_rows(frame, n_boot=options.n_boot, seed=options.seed)
    n_done = int(frame["case"].nunique()) if not frame.empty else 0
    timing = {k: float(np.mean([s[k] for s in per_case])) for k in (per_case[0] if per_case else {})}
    summary = {
        "format_version": SUMMARY_FORMAT,
        "set": set_name,
        "kind": kind,
        "kind_reason": kind_why,
        "zoo": zoo.name,
        "cases": str(cases_path),
        "split": split,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "n_cases": n_done,
        "selection": {
            **info,
            "max_cases": options.max_cases,
            "seed": options.seed,
            "rule": "rows with a lesion box and no row error"
            + (f", in the release's {split} split (image sha256)" if split else "")
            + (f"; a seeded random subset of {options.max_cases}" if info["subset"] else ""),
        },
        "failed": failed,
        "methods": list(options.methods),
        "views": list(options.views),
        "view_definitions": {v: VIEW_LABELS[v] for v in options.views},
        "targets": [*zoo.member_ids, ENSEMBLE],
        "cam_weights": zoo.cam_weights,
        "release_fingerprint": release_fingerprint(zoo.manifest),
        "definitions": {
            "pointing": "share of the map's maximum pixels inside the lesion (1 = peak inside); blank maps excluded",
            "energy": "share of the map's positive mass inside the lesion",
            "iou": f"IoU of the map's top {options.top_frac:.0%} (at/above its quantile, positive pixels) with the lesion",
            "deletion_auc": "area under the target's probability as the region's most-highlighted pixels are replaced "
            f"by a blurred copy (sigma {BLUR_SIGMA} x region side), {options.steps} steps; "
            "lower = more faithful",
            "insertion_auc": "area under the probability as pixels are restored into the blurred region, most "
            "highlighted first; higher = more faithful",
            "random": f"uniform noise on a {RANDOM_GRID}x{RANDOM_GRID} grid, bilinear (seeded per case)",
            "centre": f"Gaussian centred on the region, sigma {CENTRE_SIGMA} x width/height",
            "ci": f"percentile bootstrap over cases, {options.n_boot} resamples, seed {options.seed}, 95 %",
            "box": "the case table's ROI columns (the annotator's lesion box)",
            "mask": "the table's 'mask' column image, where present",
        },
        "options": {
            "steps": options.steps,
            "faithfulness": options.faithfulness,
            "top_frac": options.top_frac,
            "n_boot": options.n_boot,
        },
        "seconds_per_case": timing,
        "wall_seconds": wall,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "results": results,
    }
    summary = _json_safe(summary)
    from model_zoo.zoo import atomic_write_text

    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    return summary
