"""GradCAM and ScoreCAM for any ensemble member, mapped back onto the ROI and the radiograph.

Every member outputs ONE logit (the log-odds of the positive class), so the CAM target is
that logit itself - pytorch-grad-cam's ``BinaryClassifierOutputTarget(1)``. The target layer
and the activation reshape come from the member's :class:`~model_zoo.members.MemberSpec`
(``cam_layer``, ``reshape_activations``); no grid size is written here.

Thread safety (one cached model serves several dashboard sessions)
------------------------------------------------------------------
Two mechanisms, because each covers a hole in the other:

* ``model_lock(model)`` (``model_zoo.locks``): one re-entrant lock per model object, the same lock
  ``model_zoo.ensemble`` takes around every prediction forward. A CAM holds it for as long
  as its hooks are registered (the hooked forward and, for GradCAM, the backward), and
  ScoreCAM takes it around each batch of masked forwards, so a long ScoreCAM lets other
  sessions' predictions in between batches instead of blocking them for seconds.
* Hooks record only for the thread that registered them (:func:`_capture`). A forward hook
  is a property of the module, so without this a forward run by any other thread on the
  same module - e.g. code that forgot to take the lock - would append its activations to
  this request's record. With it, a foreign forward cannot contaminate a CAM even then.

GradCAM differentiates the logit with ``torch.autograd.grad`` with respect to the captured
activation only, so parameters' ``.grad`` (shared by every user of the model) are never
written. All hooks are removed in ``finally`` blocks (context managers), also on errors.

Speed
-----
Plain ScoreCAM runs one forward pass per channel of the target layer (384 for
EfficientNet-B3 at ``blocks.-1``, 1,536 at ``bn2``). :func:`scorecam` computes the same quantity with batched masked forwards
under ``torch.inference_mode`` (channels-last input, which oneDNN runs 2-3x faster for the
EfficientNets), upsampling the activations once. The default scores every channel; a smaller
``top_k`` scores only the channels with the highest mean activation; that approximation is named in
``Heatmap.method`` and flagged in ``Heatmap.approximate``. Because ScoreCAM's softmax
weights of a channel subset differ from the full ones only by a common factor (removed by
the final min-max scaling), the approximation is exactly "full ScoreCAM without the
low-activation channels' terms", and ``top_k >= channels`` reproduces full ScoreCAM
(tested against pytorch-grad-cam). :func:`scorecam_topk_agreement` measures how close the
approximation is on real cases.

Cancellation
------------
ScoreCAM takes seconds to minutes per member, so :func:`scorecam`, :func:`explain_member` and
:meth:`CamCache.get_or_compute` take an optional ``should_stop`` callable, asked before the
activations are captured and between batches of masked forwards (and while waiting for another
caller's computation of the same map); when it returns True they raise
:class:`~model_zoo.errors.Cancelled` and cache nothing. An optional ``progress(done, total)``
is called after each batch (masked inputs scored so far, of all to score).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from model_zoo.errors import Cancelled, InputError
from model_zoo.locks import model_lock
from model_zoo.members import MemberSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_TOP_K",
    "TARGET_DESCRIPTION",
    "CamCache",
    "EnsembleHeatmap",
    "Heatmap",
    "MemberExplanation",
    "agreement",
    "blank_reason",
    "cam_cache_key",
    "check_stop",
    "ensemble_heatmap",
    "explain_member",
    "gradcam",
    "naive_scorecam",
    "scorecam",
    "scorecam_topk_agreement",
    "to_roi_and_image",
]

# Scores every channel of every bundled member (192-512 channels at their CAM layers), i.e.
# exact ScoreCAM: top-k by mean activation measured unfaithful for the CNNs (issue #5 note).
DEFAULT_TOP_K = 512
# Batch 32 was the fastest of 32/64/96 for every family at 128 px on 2 cores.
DEFAULT_BATCH_SIZE = 32
TARGET_DESCRIPTION = "logit of the positive class"

StopCheck = Callable[[], bool]  # ``should_stop``: True once the caller wants the computation abandoned
Progress = Callable[[int, int], None]  # ``progress(done, total)``
_WAIT_POLL_S = 0.1  # how often a caller waiting for another's computation asks its should_stop

# pytorch-grad-cam's constants, kept so full ScoreCAM here equals the library's output.
_MASK_EPS = 1e-8  # score_cam.py: (a - min) / (max - min + 1e-8)
_SCALE_EPS = 1e-7  # utils/image.py scale_cam_image: img / (1e-7 + max)


# ----------------------------------------------------------------------------- results


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    a.setflags(write=False)  # cached results are shared between sessions: nobody may edit them
    return a


@dataclass(frozen=True, eq=False)
class Heatmap:
    """One member's CAM on its model-input grid.

    Attributes
    ----------
    member_id : str
    method : str
        Human label for the UI and reports, e.g. ``"GradCAM"``, ``"ScoreCAM"`` or
        ``"ScoreCAM (approx.: top-k=96 of 1536 channels by mean activation)"``.
    input_map : (S, S) float32 in [0, 1], read-only
        Row = y, column = x of the model input (S = ``spec.input_size``).
    seconds : float
        Wall time of the computation that produced it (a cached result keeps that time).
    approximate : bool
        True when ``method`` is an approximation of the named CAM.
    details : mapping
        ``target``, ``logit``, ``layer``, ``grid`` (h, w), ``channels`` and method-specific
        facts (``top_k``, ``scored_channels``, ``forwards``); ``empty`` is True when the CAM
        is zero everywhere (no positive evidence at that layer); ``blank_reason`` says why
        the displayed map is blank (zero, or flat - constant maps scale to zero), "" if not.
    """

    member_id: str
    method: str
    input_map: np.ndarray
    seconds: float
    approximate: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class EnsembleHeatmap:
    """Weighted mean of member heatmaps on a common grid (normally the full image).

    ``method`` always starts with ``"Ensemble-weighted"``; ``weights`` are the normalised
    weights actually used (summing to 1).
    """

    method: str
    values: np.ndarray
    weights: Mapping[str, float]


@dataclass(frozen=True, eq=False)
class MemberExplanation:
    """A member's heatmap on the input grid, the ROI crop and the whole stored image.

    ``roi_map`` covers ``crop_box`` (the ROI plus the spec's margin: the region the model
    saw) at stored-image resolution; ``image_map`` is the full image, zero outside the crop.
    """

    heatmap: Heatmap
    crop_box: tuple[float, float, float, float]
    roi_map: np.ndarray
    image_map: np.ndarray


# ----------------------------------------------------------------------------- locking
# ``model_lock`` (model_zoo.locks) is the lock registry; tokens below
# name a model object in cache keys.

_MODEL_TOKENS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_MODEL_TOKENS_GUARD = threading.Lock()
_TOKEN_COUNTER = itertools.count(1)


def _model_token(model: Any) -> int:
    """A number unique to this model object for the life of the process.

    ``id()`` can be reused after garbage collection, which would let a cache serve a CAM of
    a previously loaded release; this counter never repeats.
    """
    with _MODEL_TOKENS_GUARD:
        token = _MODEL_TOKENS.get(model)
        if token is None:
            token = next(_TOKEN_COUNTER)
            _MODEL_TOKENS[model] = token
        return token


@contextmanager
def _capture(layer: torch.nn.Module) -> Iterator[list[Any]]:
    """Record ``layer``'s outputs during forwards run by THIS thread only; always unhook."""
    owner = threading.get_ident()
    outputs: list[Any] = []

    def hook(module: Any, inputs: Any, output: Any) -> None:
        # Another session's forward on the same module also calls this hook: ignore it.
        if threading.get_ident() == owner:
            outputs.append(output)

    handle = layer.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- helpers


def _check_input(spec: MemberSpec, x: Any) -> torch.Tensor:
    import torch

    if not isinstance(x, torch.Tensor):
        raise InputError(f"{spec.member_id}: CAM input must be a torch tensor, got {type(x).__name__}")
    s = spec.input_size
    if tuple(x.shape) != (1, 3, s, s):
        raise InputError(f"{spec.member_id}: CAM input must have shape (1, 3, {s}, {s}), got {tuple(x.shape)}")
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise InputError(f"{spec.member_id}: CAM input must be finite floating-point values")
    return x.detach()


def _check_model(spec: MemberSpec, model: Any) -> torch.nn.Module:
    if model.training:
        # Switching a shared model to eval here would change it under other sessions' feet.
        raise ValueError(f"{spec.member_id}: model is in training mode; call model.eval() once after loading")
    return spec.cam_target_layer(model)


def _single_output(captured: list[Any], spec: MemberSpec) -> Any:
    if len(captured) != 1:
        raise ValueError(
            f"{spec.member_id}: CAM layer {spec.cam_layer!r} ran {len(captured)} times in one forward; it must run exactly once"
        )
    out = captured[0]
    if isinstance(out, (tuple, list)):
        raise ValueError(f"{spec.member_id}: CAM layer {spec.cam_layer!r} returns a tuple, not a tensor")
    return out


def _logits(out: torch.Tensor, n: int, spec: MemberSpec) -> torch.Tensor:
    """(n,) logits from a single-logit model's output; the CAM target is the logit itself."""
    if out.numel() != n:
        raise ValueError(f"{spec.member_id}: CAM targets need a single-logit model; output shape {tuple(out.shape)}")
    return out.reshape(n)


def _scale_to_input(cam: np.ndarray, size: int) -> np.ndarray:
    """Min-max on the CAM grid, bilinear to the input, min-max again (as pytorch-grad-cam).

    The library scales per layer (``scale_cam_image`` with a target size) and again after
    aggregating layers; the second pass makes the peak exactly ~1 at input resolution.
    """
    import cv2

    def minmax(a: np.ndarray) -> np.ndarray:
        a = a - a.min()
        return a / (_SCALE_EPS + a.max())

    up = cv2.resize(minmax(cam.astype(np.float32)), (size, size), interpolation=cv2.INTER_LINEAR)
    return np.clip(minmax(up), 0.0, 1.0)


BLANK_ZERO = "no positive evidence at this layer (the map is zero)"
BLANK_FLAT = "no spatial contrast at this layer (the map is the same everywhere)"


def blank_reason(cam: np.ndarray) -> str:
    """Why a CAM (on its grid, before scaling) shows nothing; "" when it does show something.

    Min-max scaling turns a constant positive map into zeros, so "flat" is as blank on the
    page as "zero" and needs its own reason.
    """
    a = np.asarray(cam, dtype=np.float64)
    top = float(a.max()) if a.size else 0.0
    if top <= 0:
        return BLANK_ZERO
    if top - float(a.min()) <= 1e-6 * top:
        return BLANK_FLAT
    return ""


def _fast_input(x: torch.Tensor, spec: MemberSpec) -> torch.Tensor:
    import torch

    # Channels-last input makes oneDNN pick its fast CPU convolutions (2-3x for the full
    # EfficientNets at 128 px; measured slower for the tiny test nets and of no use to the
    # transformers, whose only convolution is the patch embedding). Same arithmetic.
    if spec.cam_layout == "bchw" and spec.input_size >= 96:
        return x.contiguous(memory_format=torch.channels_last)
    return x


# ----------------------------------------------------------------------------- GradCAM


def gradcam(spec: MemberSpec, model: torch.nn.Module, x: torch.Tensor) -> Heatmap:
    """GradCAM of the positive-class logit at ``spec.cam_layer``.

    Parameters
    ----------
    spec : the member's spec (target layer, activation layout, input size).
    model : the member network, in eval mode; it is not modified.
    x : (1, 3, S, S) normalised input tensor (``preprocess.member_input``).

    Returns
    -------
    Heatmap with ``input_map`` (S, S) in [0, 1].
    """
    import torch

    start = time.perf_counter()
    x = _check_input(spec, x)
    layer = _check_model(spec, model)
    # inference_mode(False)/enable_grad: a caller inside inference_mode must not switch
    # autograd off for us (grad mode is per thread, so this affects no other session).
    with model_lock(model), torch.inference_mode(False), torch.enable_grad():
        with _capture(layer) as captured:
            # A leaf input that requires grad keeps a graph even if the weights are frozen.
            xg = x.clone().requires_grad_(True)
            logit = _logits(model(xg), 1, spec)[0]
        raw = _single_output(captured, spec)
        # Gradient w.r.t. the activation only: parameters' .grad stay untouched.
        (raw_grad,) = torch.autograd.grad(logit, raw)
    with torch.no_grad():
        acts = spec.reshape_activations(raw.detach()).float()
        grads = spec.reshape_activations(raw_grad).float()
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * acts).sum(dim=1))[0].cpu().numpy()
    input_map = _scale_to_input(cam, spec.input_size)
    return Heatmap(
        member_id=spec.member_id,
        method="GradCAM",
        input_map=_frozen(input_map),
        seconds=time.perf_counter() - start,
        approximate=False,
        details=MappingProxyType(
            {
                "target": TARGET_DESCRIPTION,
                "logit": float(logit.detach()),
                "layer": spec.cam_layer,
                "grid": tuple(int(v) for v in acts.shape[2:]),
                "channels": int(acts.shape[1]),
                "empty": bool(cam.max() <= 0),
                "blank_reason": blank_reason(cam),
            }
        ),
    )


# ----------------------------------------------------------------------------- ScoreCAM


def _capture_activations(spec: MemberSpec, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(1, C, h, w) float activations at the CAM layer and the input's logit (no grad)."""
    import torch

    layer = _check_model(spec, model)
    with torch.inference_mode():
        with model_lock(model), _capture(layer) as captured:
            logit = float(_logits(model(x), 1, spec)[0])
        acts = spec.reshape_activations(_single_output(captured, spec)).float()
    return acts, logit


def _masks(acts: torch.Tensor, channels: torch.Tensor, size: int) -> torch.Tensor:
    """Channel activations upsampled to the input once, min-max scaled per channel: (k, S, S)."""
    import torch.nn.functional as F

    sel = acts[:, channels]
    # align_corners=True: pytorch-grad-cam's ScoreCAM uses nn.UpsamplingBilinear2d.
    up = F.interpolate(sel, size=(size, size), mode="bilinear", align_corners=True)[0]
    flat = up.reshape(up.shape[0], -1)
    mins = flat.min(dim=1).values[:, None, None]
    maxs = flat.max(dim=1).values[:, None, None]
    return (up - mins) / (maxs - mins + _MASK_EPS)


def check_stop(should_stop: StopCheck | None, what: str = "computation") -> None:
    """Raise :class:`Cancelled` when ``should_stop`` (if given) says so."""
    if should_stop is not None and should_stop():
        raise Cancelled(f"{what} cancelled")


def _channel_scores(
    spec: MemberSpec,
    model: torch.nn.Module,
    x: torch.Tensor,
    masks: torch.Tensor,
    batch_size: int,
    should_stop: StopCheck | None = None,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, int]:
    """Positive-class logit of ``x * mask`` for every mask, in batches; returns (scores, forwards).

    ``should_stop`` is asked before every batch (raises :class:`Cancelled`); ``progress(done,
    total)`` is told after every batch, in masked inputs.
    """
    import torch

    k = masks.shape[0]
    scores = torch.empty(k, dtype=torch.float32)
    # A constant channel's mask is exactly zero, so all of them give the same (all-zero)
    # input: score it once. Exact, and common in trained nets (dead channels).
    flat = masks.reshape(k, -1)
    constant = flat.amax(dim=1) == 0
    todo = torch.nonzero(~constant).reshape(-1)
    forwards = 0
    total = len(todo) + int(bool(constant.any()))
    what = f"{spec.member_id} ScoreCAM"
    with torch.inference_mode():
        if bool(constant.any()):
            check_stop(should_stop, what)
            with model_lock(model):
                zero_logit = _logits(model(_fast_input(torch.zeros_like(x), spec)), 1, spec)[0]
            scores[constant] = float(zero_logit)
            forwards += 1
            if progress is not None:
                progress(forwards, total)
        for i in range(0, len(todo), batch_size):
            check_stop(should_stop, what)
            idx = todo[i : i + batch_size]
            batch = _fast_input(x * masks[idx, None], spec)
            # Lock per batch: other sessions' predictions can run between batches.
            with model_lock(model):
                scores[idx] = _logits(model(batch), len(idx), spec).float()
            forwards += len(idx)
            if progress is not None:
                progress(forwards, total)
    return scores, forwards


def _score_weighted_cam(acts: torch.Tensor, channels: torch.Tensor, scores: torch.Tensor) -> np.ndarray:
    """relu(sum_c softmax(scores)_c * A_c) over the given channels, on the CAM grid."""
    import torch

    weights = torch.softmax(scores.double(), dim=0).float()
    cam = (weights[:, None, None] * acts[0, channels]).sum(dim=0)
    return torch.relu(cam).cpu().numpy()


def _select_channels(acts: torch.Tensor, top_k: int | None) -> torch.Tensor:
    import torch

    n = acts.shape[1]
    if top_k is None or top_k >= n:
        return torch.arange(n)
    mean = acts[0].mean(dim=(1, 2))
    # Sorted so the batches (and hence float rounding) do not depend on ranking ties' order.
    return torch.topk(mean, top_k).indices.sort().values


def _scorecam_method(top_k: int | None, channels: int) -> tuple[str, bool]:
    if top_k is None or top_k >= channels:
        return "ScoreCAM", False
    return f"ScoreCAM (approx.: top-k={top_k} of {channels} channels by mean activation)", True


def scorecam(
    spec: MemberSpec,
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    top_k: int | None = DEFAULT_TOP_K,
    batch_size: int = DEFAULT_BATCH_SIZE,
    should_stop: StopCheck | None = None,
    progress: Progress | None = None,
) -> Heatmap:
    """ScoreCAM of the positive-class logit, batched; optionally over the top-k channels.

    Parameters
    ----------
    top_k : int or None
        Score only the ``top_k`` channels with the highest mean activation (named in
        ``method``; ``approximate=True``). ``None`` (or ``top_k >= channels``) computes full
        ScoreCAM, equal to pytorch-grad-cam's ``ScoreCAM`` with
        ``BinaryClassifierOutputTarget(1)``.
    batch_size : int
        Masked inputs per forward pass.
    should_stop : callable or None
        Asked before the activations are captured and before every batch; True raises
        :class:`~model_zoo.errors.Cancelled`.
    progress : callable or None
        ``progress(done, total)`` after every batch (masked inputs scored, of all).
    """
    import torch

    start = time.perf_counter()
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size!r}")
    x = _check_input(spec, x)
    check_stop(should_stop, f"{spec.member_id} ScoreCAM")
    with torch.inference_mode():
        acts, logit = _capture_activations(spec, model, x)
        channels = _select_channels(acts, top_k)
        masks = _masks(acts, channels, spec.input_size)
        scores, forwards = _channel_scores(spec, model, x, masks, int(batch_size), should_stop, progress)
        cam = _score_weighted_cam(acts, channels, scores)
    n_channels = int(acts.shape[1])
    method, approximate = _scorecam_method(top_k, n_channels)
    return Heatmap(
        member_id=spec.member_id,
        method=method,
        input_map=_frozen(_scale_to_input(cam, spec.input_size)),
        seconds=time.perf_counter() - start,
        approximate=approximate,
        details=MappingProxyType(
            {
                "target": TARGET_DESCRIPTION,
                "logit": logit,
                "layer": spec.cam_layer,
                "grid": tuple(int(v) for v in acts.shape[2:]),
                "channels": n_channels,
                "top_k": None if not approximate else int(top_k),  # type: ignore[arg-type]
                "selection": "all channels" if not approximate else "top-k by mean activation",
                "scored_channels": int(len(channels)),
                "forwards": forwards,
                "batch_size": int(batch_size),
                "empty": bool(cam.max() <= 0),
                "blank_reason": blank_reason(cam),
            }
        ),
    )


def naive_scorecam(spec: MemberSpec, model: torch.nn.Module, x: torch.Tensor) -> Heatmap:
    """pytorch-grad-cam's plain ``ScoreCAM`` (the reference for speed and exactness).

    Its hooks record every thread's forwards, so it holds the model lock throughout (a
    prediction that takes the lock waits; one that does not would be recorded). Slow: one
    forward per channel, batch 16. For benchmarks and agreement checks, not the live path.
    """
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    start = time.perf_counter()
    x = _check_input(spec, x)
    layer = _check_model(spec, model)
    result = None
    with model_lock(model):
        with ScoreCAM(model=model, target_layers=[layer], reshape_transform=spec.reshape_activations) as cam:
            result = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)])
    if result is None:  # the library's __exit__ swallows IndexError
        raise RuntimeError(f"{spec.member_id}: pytorch-grad-cam ScoreCAM failed")
    return Heatmap(
        member_id=spec.member_id,
        method="ScoreCAM (pytorch-grad-cam, plain)",
        input_map=_frozen(np.clip(np.asarray(result[0], dtype=np.float32), 0.0, 1.0)),
        seconds=time.perf_counter() - start,
        approximate=False,
        details=MappingProxyType({"target": TARGET_DESCRIPTION, "layer": spec.cam_layer}),
    )


# ----------------------------------------------------------------------------- mapping


def to_roi_and_image(
    heat: Heatmap | np.ndarray, crop_box: Sequence[float], image_size_wh: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Map an input-grid heatmap onto the crop (ROI + margin) and onto the full stored image.

    Parameters
    ----------
    heat : Heatmap or (S, S) array in [0, 1].
    crop_box : integer-valued (x0, y0, x1, y1) in stored-image pixels, x1/y1 exclusive - the
        box ``preprocess.member_crop`` returned for this member.
    image_size_wh : (W, H) of the stored image.

    Returns
    -------
    roi_map : (y1 - y0, x1 - x0) float32 in [0, 1]
    image_map : (H, W) float32 in [0, 1], zero outside the crop box.
    """
    from model_zoo import roi

    values = heat.input_map if isinstance(heat, Heatmap) else np.asarray(heat)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise InputError(f"heatmap must be a square 2-D array, got shape {values.shape}")
    image_map = np.clip(roi.heatmap_to_image(values, crop_box, image_size_wh), 0.0, 1.0)
    # heatmap_to_image has validated the box (integer, positive area) and the size.
    x0, y0, x1, y1 = (int(round(float(v))) for v in crop_box)
    h, w = image_map.shape
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise InputError(f"crop box {tuple(float(v) for v in crop_box)} extends outside the {w}x{h} image")
    # The crop lies inside the image, so the ROI view is that window of the image map
    # (one resize, and the two views agree pixel for pixel).
    roi_map = image_map[y0:y1, x0:x1].copy()
    return roi_map, image_map


def ensemble_heatmap(
    maps: Mapping[str, np.ndarray | Heatmap],
    weights: Mapping[str, float],
    *,
    base_method: str | None = None,
) -> EnsembleHeatmap:
    """Weighted mean of member heatmaps, labelled ``"Ensemble-weighted <method>"``.

    Parameters
    ----------
    maps : member_id -> map on a common grid (use the full-image maps: members' crops and
        input sizes may differ). Heatmap objects use their ``input_map``.
    weights : member_id -> non-negative weight (e.g. ``Zoo.cam_weights``); normalised to sum
        to 1. Every member in ``maps`` needs a weight and vice versa - a silently partial
        ensemble map would misrepresent the ensemble.
    base_method : the member method's name for the label; taken from the Heatmaps when
        omitted (``"CAM"`` for bare arrays).
    """
    if not maps:
        raise InputError("no member heatmaps to combine")
    missing = sorted(set(maps) - set(weights))
    extra = sorted(set(weights) - set(maps))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no weight for {', '.join(missing)}")
        if extra:
            parts.append(f"no heatmap for {', '.join(extra)}")
        raise InputError("ensemble heatmap: " + "; ".join(parts))
    w = {}
    for mid, value in weights.items():
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise InputError(f"ensemble heatmap: weight of {mid} must be a finite number >= 0, got {value!r}")
        w[mid] = v
    total = sum(w.values())
    if total <= 0:
        raise InputError("ensemble heatmap: all weights are zero")
    arrays = {mid: (m.input_map if isinstance(m, Heatmap) else np.asarray(m, dtype=np.float32)) for mid, m in maps.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise InputError(
            f"ensemble heatmap: member maps have different shapes {sorted(shapes)}; map them onto the full image first"
        )
    if base_method is None:
        methods = {m.method for m in maps.values() if isinstance(m, Heatmap)}
        if len(methods) == 1:
            base_method = methods.pop()
        else:
            base_method = " / ".join(sorted(methods)) if methods else "CAM"
    norm = {mid: v / total for mid, v in w.items()}
    values = np.zeros(next(iter(shapes)), dtype=np.float64)
    for mid, a in arrays.items():
        if norm[mid] > 0:
            values += norm[mid] * a
    listing = ", ".join(f"{mid} {norm[mid]:.2f}" for mid in sorted(norm))
    return EnsembleHeatmap(
        method=f"Ensemble-weighted {base_method} (weights: {listing})",
        values=_frozen(np.clip(values, 0.0, 1.0)),
        weights=MappingProxyType(norm),
    )


# ----------------------------------------------------------------------------- agreement


def agreement(a: np.ndarray, b: np.ndarray, top_frac: float = 0.2) -> dict[str, float]:
    """How well two heatmaps on the same grid agree.

    Returns ``pearson`` (NaN when either map is constant) and ``top_iou``: IoU of the
    regions at or above each map's ``1 - top_frac`` quantile (ties at the threshold are
    included, so a flat map's region is the whole map rather than an arbitrary subset).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"heatmaps differ in shape: {a.shape} vs {b.shape}")
    if not 0 < top_frac <= 1:
        raise InputError(f"top_frac must be in (0, 1], got {top_frac}")
    fa, fb = a.ravel(), b.ravel()
    if fa.std() == 0 or fb.std() == 0:
        pearson = float("nan")
    else:
        pearson = float(np.corrcoef(fa, fb)[0, 1])
    top_a = fa >= np.quantile(fa, 1 - top_frac)
    top_b = fb >= np.quantile(fb, 1 - top_frac)
    union = np.logical_or(top_a, top_b).sum()
    iou = float(np.logical_and(top_a, top_b).sum() / union) if union else float("nan")
    return {"pearson": pearson, "top_iou": iou, "top_frac": float(top_frac)}


def scorecam_topk_agreement(
    spec: MemberSpec,
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    top_ks: Sequence[int] = (DEFAULT_TOP_K,),
    top_frac: float = 0.2,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Agreement of top-k ScoreCAM with full ScoreCAM on real cases.

    One full ScoreCAM per case scores every channel; each top-k map is then the same
    computation restricted to the top-k channels (what :func:`scorecam` with that
    ``top_k`` computes), so several k cost no extra forwards.

    Returns
    -------
    ``{"member_id", "n_cases", "channels", "top_frac", "results": [{"top_k", "pearson_median",
    "pearson_min", "top_iou_median", "top_iou_min", "per_case": [{"pearson", "top_iou"}]}]}``
    """
    import torch

    if not inputs:
        raise InputError("no cases to measure agreement on")
    per_k: dict[int, list[dict[str, float]]] = {int(k): [] for k in top_ks}
    n_channels = 0
    for x in inputs:
        x = _check_input(spec, x)
        with torch.inference_mode():
            acts, _ = _capture_activations(spec, model, x)
            n_channels = int(acts.shape[1])
            everything = torch.arange(n_channels)
            masks = _masks(acts, everything, spec.input_size)
            scores, _ = _channel_scores(spec, model, x, masks, batch_size)
            full = _scale_to_input(_score_weighted_cam(acts, everything, scores), spec.input_size)
            for k in per_k:
                chosen = _select_channels(acts, k)
                approx = _scale_to_input(_score_weighted_cam(acts, chosen, scores[chosen]), spec.input_size)
                per_k[k].append(agreement(full, approx, top_frac))
    results = []
    for k, rows in per_k.items():
        pear = np.array([r["pearson"] for r in rows], dtype=float)
        ious = np.array([r["top_iou"] for r in rows], dtype=float)
        results.append(
            {
                "top_k": k,
                "pearson_median": float(np.nanmedian(pear)) if np.isfinite(pear).any() else float("nan"),
                "pearson_min": float(np.nanmin(pear)) if np.isfinite(pear).any() else float("nan"),
                "top_iou_median": float(np.nanmedian(ious)) if np.isfinite(ious).any() else float("nan"),
                "top_iou_min": float(np.nanmin(ious)) if np.isfinite(ious).any() else float("nan"),
                "per_case": [{"pearson": r["pearson"], "top_iou": r["top_iou"]} for r in rows],
            }
        )
    return {
        "member_id": spec.member_id,
        "n_cases": len(inputs),
        "channels": n_channels,
        "top_frac": float(top_frac),
        "results": results,
    }


# ----------------------------------------------------------------------------- cache


def cam_cache_key(
    image_hash: str,
    roi_box: Sequence[float] | None,
    spec: MemberSpec,
    model: Any,
    method: str,
    top_k: int | None = None,
) -> tuple[Hashable, ...]:
    """Key of one member's CAM of one case: (image, ROI, member + model object, method)."""
    box = None if roi_box is None else tuple(round(float(v), 3) for v in roi_box)
    k = None if method == "gradcam" or top_k is None else int(top_k)
    return (image_hash, box, spec.member_id, _model_token(model), spec.input_size, method, k)


class CamCache:
    """Small thread-safe LRU of :class:`Heatmap` results.

    Values are stored read-only and shared between sessions. Concurrent requests for the
    same missing key compute it once: later callers wait for the first one's result (or
    its exception). Full-image maps are NOT cached - they are large and cheap to re-derive.
    """

    def __init__(self, maxsize: int = 64) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = int(maxsize)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._pending: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            return default

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._put_locked(key, value)

    def _put_locked(self, key: Hashable, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any], should_stop: StopCheck | None = None) -> Any:
        """The cached value, else ``compute()``'s (stored). A caller that finds another
        computing the same key waits for its result; ``should_stop`` is asked while waiting
        (True raises :class:`Cancelled`). When the computing caller is cancelled, a waiting
        one that is not computes the value itself."""
        while True:
            with self._lock:
                if key in self._data:
                    self._data.move_to_end(key)
                    self.hits += 1
                    return self._data[key]
                pending = self._pending.get(key)
                owner = pending is None
                if pending is None:
                    pending = Future()
                    self._pending[key] = pending
                    self.misses += 1
                else:
                    self.hits += 1
            if owner:
                break
            try:
                return self._wait(pending, should_stop)
            except Cancelled:
                check_stop(should_stop)  # ours: raise; the other caller's: compute it here
        try:
            value = compute()
        except BaseException as err:
            with self._lock:
                self._pending.pop(key, None)
            pending.set_exception(err)
            raise
        with self._lock:
            self._put_locked(key, value)
            self._pending.pop(key, None)
        pending.set_result(value)
        return value

    @staticmethod
    def _wait(pending: Future, should_stop: StopCheck | None) -> Any:
        if should_stop is None:
            return pending.result()
        while True:
            try:
                return pending.result(timeout=_WAIT_POLL_S)
            except TimeoutError:
                check_stop(should_stop)


# ----------------------------------------------------------------------------- one case


def explain_member(
    spec: MemberSpec,
    model: torch.nn.Module,
    pixels: np.ndarray,
    box: Sequence[float] | None,
    *,
    method: str = "gradcam",
    top_k: int | None = DEFAULT_TOP_K,
    cache: CamCache | None = None,
    pixels_hash: str | None = None,
    should_stop: StopCheck | None = None,
    progress: Progress | None = None,
) -> MemberExplanation:
    """One member's CAM for a stored image and ROI, on the input, the crop and the image.

    Parameters
    ----------
    pixels : (H, W) float image in [0, 1] (``LoadedImage.pixels``).
    box : ROI (x0, y0, x1, y1) in stored-image pixels; None = the whole image.
    method : ``"gradcam"`` or ``"scorecam"`` (``top_k`` applies to ScoreCAM only).
    cache : optional :class:`CamCache` shared across sessions.
    pixels_hash : precomputed ``imaging.image_hash(pixels)`` (saves hashing a large image).
    should_stop, progress : ScoreCAM's cancellation check and progress report (see
        :func:`scorecam`); ``should_stop`` is also asked before GradCAM and while waiting for
        another caller's computation of the same map. Cancelled raises
        :class:`~model_zoo.errors.Cancelled`.
    """
    from model_zoo import imaging, preprocess, roi

    if method not in ("gradcam", "scorecam"):
        raise InputError(f"unknown CAM method {method!r}; choose 'gradcam' or 'scorecam'")
    h, w = pixels.shape[:2]
    box = roi.full_image_box((w, h)) if box is None else roi.validate_box(box, (w, h))
    x, _, crop_box = preprocess.member_input(spec, pixels, box)

    def compute() -> Heatmap:
        check_stop(should_stop, f"{spec.member_id} {method}")
        if method == "gradcam":
            return gradcam(spec, model, x)
        return scorecam(spec, model, x, top_k=top_k, should_stop=should_stop, progress=progress)

    if cache is None:
        heat = compute()
    else:
        key = cam_cache_key(pixels_hash or imaging.image_hash(pixels), box, spec, model, method, top_k)
        heat = cache.get_or_compute(key, compute, should_stop)
    roi_map, image_map = to_roi_and_image(heat, crop_box, (w, h))
    return MemberExplanation(
        heatmap=heat,
        crop_box=crop_box,  # roi.Box: already four floats
        roi_map=roi_map,
        image_map=image_map,
    )
