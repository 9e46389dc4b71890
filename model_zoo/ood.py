"""Out-of-distribution (OOD) score: does this crop look like the radiographs the members were fitted on?

The score uses the members' own pooled penultimate features (timm ``forward_features`` then
``forward_head(pre_logits=True)``), computed in the same forward pass that gives the member's
logit (:func:`logits_and_features`), so a release with an OOD model predicts at no extra
network cost.

Per member ``m`` the fitted state describes where the training crops' features lie (after an
optional ``transform``: ``sqrt`` = signed square root, which tames the heavy right tail of
pooled ReLU features):

* ``knn``: the L2-normalised training features (float16); the raw score is the Euclidean
  distance of the L2-normalised feature to its ``k``-th nearest training feature (cosine
  k-NN; Sun et al. 2022).
* ``mahalanobis``: mean ``mu`` and a Ledoit-Wolf shrunk covariance of the training features;
  the raw score is the squared Mahalanobis distance ``(x - mu)^T S^-1 (x - mu)`` (the
  precision ``S^-1`` is what the release stores; Lee et al. 2018 with one class).

Which one, with which ``k``, transform and combination, was chosen by measurement on the
demo release (``python -m training add-ood`` records every candidate's numbers).

Each member's raw score is standardised with the median and the robust spread (IQR / 1.349)
of its scores on the internal VALIDATION crops, and the members are combined (``max`` or
``mean`` of the standardised scores). The threshold is a quantile of the combined score on
the same validation crops (``val_quantile``; the expected false-alarm rate on in-distribution
images is ``1 - val_quantile``). Nothing here looks at external or non-bone images: those only
measure the result (``training.add_ood``).

The arrays live in the release as one safetensors file (hashed like every file); the manifest
block (:class:`OodInfo`) holds the method, the per-member standardisation, the threshold and
the measured detection / false-alarm numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from model_zoo.errors import IntegrityError

# The manifest's ``ood`` block (OodInfo, OodMember) and the values it may hold belong to the
# release schema, model_zoo.manifest; imported here for the fitting and scoring code.
from model_zoo.manifest import OOD_COMBINES as COMBINES
from model_zoo.manifest import OOD_METHODS as METHODS
from model_zoo.manifest import OOD_TRANSFORMS as TRANSFORMS
from model_zoo.manifest import Manifest, OodInfo, OodMember

if TYPE_CHECKING:  # pragma: no cover
    import torch

OOD_FILE = "ood/ood.safetensors"
OOD_MESSAGE = "this image does not look like the radiographs the model was trained on"
_IQR_TO_SD = 1.349  # IQR of a normal distribution in standard deviations


# ----------------------------------------------------------------------------- features


def logits_and_features(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B,), pooled pre-logit features (B, D)) of a timm single-logit model in ONE pass.

    ``forward_head(pre_logits=True)`` stops right before the classifier, so the classifier on
    those features is exactly ``model(x)`` in eval mode (dropout is a no-op there).
    """
    # timm's forward_features/forward_head/get_classifier are not declared on nn.Module, whose
    # __getattr__ types any other attribute as Tensor | Module.
    timm_model: Any = model
    feats = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
    feats = feats.reshape(feats.shape[0], -1)
    logits = timm_model.get_classifier()(feats).reshape(-1)
    return logits, feats


def crop_features(
    zoo: Any,
    items: Iterable[tuple[np.ndarray, Sequence[float]]],
    *,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Pooled features of many (pixels, ROI box) pairs, member_id -> (N, D), in batches.

    Each crop is cut by ``preprocess.member_input`` (the product's one crop path) and goes
    through :func:`logits_and_features`, as ``Zoo.predict`` does; only the batching differs.
    ``items`` may be a generator, so the images need not all be in memory at once.
    """
    import torch

    from model_zoo import preprocess, roi
    from model_zoo.locks import model_lock

    ids = [m.spec.member_id for m in zoo.members]
    out: dict[str, list[np.ndarray]] = {mid: [] for mid in ids}
    pending: dict[str, list[torch.Tensor]] = {mid: [] for mid in ids}
    done = 0

    def flush() -> None:
        nonlocal done
        n = 0
        for member in zoo.members:
            mid = member.spec.member_id
            if not pending[mid]:
                continue
            x = torch.cat(pending[mid])
            with model_lock(member.model), torch.inference_mode():
                _, feats = logits_and_features(member.model, x)
            out[mid].append(feats.float().numpy())
            n = len(pending[mid])
            pending[mid] = []
        done += n
        if progress is not None and n:
            progress(done)

    for pixels, box in items:
        for member in zoo.members:
            x, _, _ = preprocess.member_input(member.spec, pixels, roi.as_box(tuple(float(v) for v in box)))
            pending[member.spec.member_id].append(x)
        if len(pending[ids[0]]) >= batch_size:
            flush()
    flush()
    return {mid: (np.concatenate(v) if v else np.zeros((0, 0), np.float32)) for mid, v in out.items()}


# ----------------------------------------------------------------------------- scores (pure)


def mahalanobis_sq(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``x`` (N, D) under (``mean``, ``precision``)."""
    d = np.atleast_2d(np.asarray(x, dtype=np.float64)) - np.asarray(mean, dtype=np.float64)
    return np.einsum("nd,de,ne->n", d, np.asarray(precision, dtype=np.float64), d)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def transform_features(x: np.ndarray, transform: str) -> np.ndarray:
    """``none`` or ``sqrt`` (signed square root) of (N, D) features, as float64."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if transform == "none":
        return x
    if transform == "sqrt":
        return np.sign(x) * np.sqrt(np.abs(x))
    raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")


def knn_distance(x: np.ndarray, bank: np.ndarray, k: int, *, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance of each L2-normalised row of ``x`` to its ``k``-th nearest row of
    ``bank`` (already L2-normalised). ``exclude_self``: ``x`` is ``bank`` (drop the zero match).
    Computed in float64 for a float64 bank, else in float32."""
    b = np.asarray(bank)
    b = b if b.dtype == np.float64 else b.astype(np.float32, copy=False)
    q = l2_normalise(x).astype(b.dtype, copy=False)
    out = np.empty(len(q))
    kk = k + 1 if exclude_self else k
    if kk > len(b):
        raise ValueError(f"k={k} needs at least {kk} reference features, the bank has {len(b)}")
    for start in range(0, len(q), 512):  # (512, N) similarity blocks keep memory flat
        sims = q[start : start + 512] @ b.T
        d2 = np.clip(2.0 - 2.0 * sims, 0.0, None)
        out[start : start + 512] = np.sqrt(np.partition(d2, kk - 1, axis=1)[:, kk - 1])
    return out


def robust_loc_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and IQR / 1.349 (a normal distribution's SD); the scale is floored above zero."""
    v = np.asarray(values, dtype=np.float64)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    scale = float(q3 - q1) / _IQR_TO_SD
    if not math.isfinite(scale) or scale <= 1e-12:
        scale = float(np.std(v)) or 1.0
    return float(med), scale


def combine_scores(z: Mapping[str, np.ndarray], how: str) -> np.ndarray:
    """Members' standardised scores -> one score per crop (``max`` or ``mean``)."""
    if how not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {how!r}")
    stacked = np.vstack([np.asarray(v, dtype=np.float64) for v in z.values()])
    return stacked.max(axis=0) if how == "max" else stacked.mean(axis=0)


def quantile_threshold(val_scores: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of the validation in-distribution scores (higher = more unusual)."""
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"val quantile must lie in [0.5, 1), got {quantile}")
    v = np.asarray(val_scores, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no validation scores to choose a threshold on")
    return float(np.quantile(v, quantile))


# ----------------------------------------------------------------------------- the model


class OodModel:
    """Fitted state + :class:`OodInfo`; scores member features (``member_id -> (N, D)``)."""

    def __init__(self, info: OodInfo, arrays: Mapping[str, np.ndarray]):
        self.info = info
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        for m in info.members:
            for key in self._keys(m.member_id):
                if key not in self.arrays:
                    raise IntegrityError(f"OOD state lacks {key!r}")
            width = self.arrays[self._keys(m.member_id)[0]].shape[-1]
            if width != m.dim:
                raise IntegrityError(f"OOD state of {m.member_id} has width {width}, the manifest says {m.dim}")
        # Compute copies made once: float64 for the Mahalanobis state, float32 for a k-NN bank
        # (stored as float16; float32 products are exact enough for unit vectors and half the memory).
        dtype = np.float64 if info.method == "mahalanobis" else np.float32
        self._state = {k: np.asarray(v, dtype=dtype) for k, v in self.arrays.items()}

    def _keys(self, member_id: str) -> tuple[str, ...]:
        if self.info.method == "mahalanobis":
            return (f"{member_id}.mean", f"{member_id}.precision")
        return (f"{member_id}.bank",)

    @property
    def threshold(self) -> float:
        return self.info.threshold

    def raw_scores(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for m in self.info.members:
            x = transform_features(features[m.member_id], self.info.transform)
            if x.shape[1] != m.dim:
                raise ValueError(f"{m.member_id}: features of width {x.shape[1]}, the OOD model expects {m.dim}")
            if self.info.method == "mahalanobis":
                out[m.member_id] = mahalanobis_sq(x, self._state[f"{m.member_id}.mean"], self._state[f"{m.member_id}.precision"])
            else:
                out[m.member_id] = knn_distance(x, self._state[f"{m.member_id}.bank"], int(self.info.k or 1))
        return out

    def standardised(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raw = self.raw_scores(features)
        return {m.member_id: (raw[m.member_id] - m.loc) / m.scale for m in self.info.members}

    def score(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Combined OOD score per row (higher = less like the training crops)."""
        return combine_scores(self.standardised(features), self.info.combine)

    def is_ood(self, score: float | np.ndarray) -> bool | np.ndarray:
        result = np.asarray(score, dtype=np.float64) > self.info.threshold
        return bool(result) if result.ndim == 0 else result

    def with_info(self, **changes: Any) -> OodModel:
        import dataclasses

        return OodModel(dataclasses.replace(self.info, **changes), self.arrays)

    def state_bytes(self) -> bytes:
        from safetensors.numpy import save

        return save({k: np.ascontiguousarray(v) for k, v in sorted(self.arrays.items())}, metadata={"method": self.info.method})


def load_ood(root: Path, manifest: Manifest) -> OodModel:
    """The release's OOD model (``Manifest.ood``), from its verified safetensors file."""
    from safetensors.numpy import load_file

    info = manifest.ood
    if info is None:
        raise IntegrityError(f"{Path(root).name}: the release has no OOD model")
    path = manifest.verified_path(root, info.file, "the OOD model")
    return OodModel(info, load_file(str(path)))


# ----------------------------------------------------------------------------- fitting


def _fit_member_state(method: str, x: np.ndarray, k: int) -> tuple[dict[str, np.ndarray], float | None]:
    if method == "mahalanobis":
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf(assume_centered=False).fit(np.asarray(x, dtype=np.float64))
        return ({"mean": lw.location_.astype(np.float32), "precision": lw.precision_.astype(np.float32)}, float(lw.shrinkage_))
    return {"bank": l2_normalise(x).astype(np.float16)}, None


def fit_ood(
    train: Mapping[str, np.ndarray],
    val: Mapping[str, np.ndarray],
    *,
    method: str = "knn",
    combine: str = "max",
    k: int = 20,
    transform: str = "sqrt",
    val_quantile: float = 0.99,
    fit_on: str = "",
    val_on: str = "",
    file: str = OOD_FILE,
) -> OodModel:
    """Fit the reference state on ``train`` features and standardise + threshold on ``val``.

    ``train`` / ``val``: member_id -> (N, D) pooled features (same members, same order).
    The threshold is the ``val_quantile`` of the combined validation scores; nothing else is
    looked at.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if list(train) != list(val):
        raise ValueError("train and val features must name the same members in the same order")
    arrays: dict[str, np.ndarray] = {}
    shrink: dict[str, float | None] = {}
    n_fit = None
    for mid, x in train.items():
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"{mid}: need a (N >= 2, D) training feature matrix, got {x.shape}")
        if n_fit is not None and len(x) != n_fit:
            raise ValueError("every member needs features of the same training crops")
        n_fit = len(x)
        state, shrink[mid] = _fit_member_state(method, transform_features(x, transform), k)
        arrays.update({f"{mid}.{key}": value for key, value in state.items()})
    provisional = OodInfo(
        method=method,
        file=file,
        combine=combine,
        members=tuple(OodMember(mid, int(np.asarray(x).shape[1]), 0.0, 1.0, shrink[mid]) for mid, x in train.items()),
        threshold=0.0,
        val_quantile=val_quantile,
        val_false_alarm=0.0,
        n_fit=int(n_fit or 0),
        n_val=0,
        fit_on=fit_on,
        val_on=val_on,
        k=k if method == "knn" else None,
        transform=transform,
    )
    model = OodModel(provisional, arrays)
    raw = model.raw_scores(val)
    members = []
    for m in provisional.members:
        loc, scale = robust_loc_scale(raw[m.member_id])
        members.append(OodMember(m.member_id, m.dim, loc, scale, m.shrinkage))
    model = model.with_info(members=tuple(members))
    val_scores = model.score(val)
    threshold = quantile_threshold(val_scores, val_quantile)
    return model.with_info(
        threshold=threshold, val_false_alarm=float(np.mean(val_scores > threshold)), n_val=int(len(val_scores))
    )


def detection_summary(scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """``{"n", "flagged", "rate"}`` for scores against a threshold (flagged = score > threshold)."""
    s = np.asarray(list(scores), dtype=np.float64)
    flagged = int(np.sum(s > threshold))
    return {"n": int(s.size), "flagged": flagged, "rate": float(flagged / s.size) if s.size else None}
