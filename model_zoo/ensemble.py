"""Ensemble inference: member probabilities -> stacker (+ age, sex, site) -> ensemble probability.

The stacker's feature vector is defined here once and used by both training
(``training.fit_stacker``) and inference, so the two can never disagree on column order or
on how missing clinical values are filled.

Missing clinical values (documented imputation): age -> the training median stored in the
manifest, sex -> 0.5 (between F=0 and M=1), site -> 0.5 (between appendicular=0 and
axial=1); each with a 0/1 ``*_missing`` indicator so the stacker can learn that a value was
absent rather than trust the fill.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from model_zoo import preprocess, roi
from model_zoo.calibration import Calibration
from model_zoo.clinical import validate_clinical
from model_zoo.errors import IntegrityError
from model_zoo.explain_report import ExplainReport, read_explain_report
from model_zoo.framing import DEFAULT_INDETERMINATE_BAND, JITTER_BOXES, Call, JitterSummary, check_band, frame_call
from model_zoo.locks import model_lock
from model_zoo.manifest import Manifest, Task
from model_zoo.members import MemberSpec
from model_zoo.zoo import MANIFEST_HASH, default_zoo_dir, verified_path, verify_release

CLINICAL_FEATURES = ("age", "age_missing", "sex_male", "sex_missing", "site_axial", "site_missing")


def clinical_vector(age: Any, sex: Any, site: Any, *, age_fill: float) -> list[float]:
    """Encode (age, sex, site) as ``CLINICAL_FEATURES`` with explicit missing indicators.

    Values are read by :func:`model_zoo.clinical.validate_clinical`, the case tables' rules
    (sex M/F or male/female, site appendicular/axial, age 0-120 years); a value those rules
    reject raises :class:`InputError` here too.
    """
    age, sex, site = validate_clinical(age, sex, site)
    return [
        float(age_fill) if age is None else age,
        float(age is None),
        0.5 if sex is None else float(sex == "M"),
        float(sex is None),
        0.5 if site is None else float(site == "axial"),
        float(site is None),
    ]


def stacker_matrix(
    member_probs: np.ndarray, ages: Sequence[Any], sexes: Sequence[Any], sites: Sequence[Any], *, age_fill: float
) -> np.ndarray:
    """(n, n_members) member probabilities + clinical values -> (n, n_members + 6) features."""
    member_probs = np.asarray(member_probs, dtype=np.float64)
    if member_probs.ndim != 2:
        raise ValueError("member_probs must be 2-D (cases x members)")
    clinical = np.array(
        [clinical_vector(a, s, t, age_fill=age_fill) for a, s, t in zip(ages, sexes, sites, strict=True)], dtype=np.float64
    )
    clinical = clinical.reshape(len(member_probs), len(CLINICAL_FEATURES))
    return np.hstack([member_probs, clinical])


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """Logistic function without overflow warnings for large negative logits."""
    from scipy.special import expit

    return expit(np.asarray(x, dtype=np.float64))


@dataclass
class LoadedMember:
    spec: MemberSpec
    model: Any  # torch.nn.Module in eval mode


@dataclass
class Prediction:
    """One case's result. Probabilities are of the zoo's positive class."""

    p_ensemble: float
    p_members: dict[str, float]
    p_clinic: float | None
    threshold: float
    label: str
    roi_box: roi.Box
    crop_boxes: dict[str, roi.Box]
    seconds: float
    disagreement: float = field(default=0.0)  # max - min of member probabilities
    # The release's calibration applied to p_ensemble (None when the release has none); the
    # call is the same either way (calibration is monotonic; see Zoo.threshold_calibrated).
    p_calibrated: float | None = None
    # The release's out-of-distribution score of this crop and whether it is above the release's
    # threshold (``model_zoo.ood``); both None when the release has no OOD model.
    ood_score: float | None = None
    ood: bool | None = None


class Zoo:
    """A verified, loaded release. Thread-safe for concurrent ``predict`` calls."""

    def __init__(self, root: Path, manifest: Manifest, members: list[LoadedMember], stacker: Any, clinic_model: Any):
        self.root = root
        self.manifest = manifest
        self.members = members
        self.stacker = stacker
        self.clinic_model = clinic_model
        self.localiser = None
        self.ood = None
        if manifest.ood is not None:
            from model_zoo.ood import load_ood

            self.ood = load_ood(root, manifest)
        if manifest.localiser is not None:
            from model_zoo.localize import load_localiser

            self.localiser = load_localiser(root, manifest.localiser)

    # -- facts from the manifest --------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.release_name} {self.version}"

    @property
    def release_name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def intended_use(self) -> str:
        return self.manifest.intended_use

    @property
    def files(self) -> dict[str, str]:
        """Every hashed file of the release: relative path -> sha256."""
        return dict(self.manifest.files)

    @functools.cached_property
    def manifest_sha256(self) -> str | None:
        """The hash in manifest.sha256 (pins the manifest, which pins every file; its first
        token); None if unreadable. Read once per loaded release."""
        try:
            text = (self.root / MANIFEST_HASH).read_text(encoding="ascii").strip()
        except OSError:
            return None
        return text.split()[0] if text else None

    @property
    def stacker_name(self) -> str:
        """The chosen stacker (e.g. "logistic"), as the release records it."""
        return self.manifest.stacker.chosen

    @property
    def cam_weights_rule(self) -> str:
        return self.manifest.stacker.cam_weights_rule or "equal"

    @property
    def task(self) -> Task:
        return self.manifest.task

    @property
    def positive_class(self) -> str:
        return self.task.positive_class

    @property
    def negative_class(self) -> str:
        return self.task.negative_class

    @property
    def threshold(self) -> float:
        return self.manifest.threshold.value

    @property
    def threshold_rule(self) -> str:
        """How the threshold was chosen (e.g. "youden"); "" when the release does not say."""
        return self.manifest.threshold.rule

    @property
    def threshold_chosen_on(self) -> str:
        """The split the threshold was chosen on (e.g. "val"); "" when the release does not say."""
        return self.manifest.threshold.chosen_on

    @property
    def created(self) -> str | None:
        """When the release was written (ISO 8601, UTC), as the manifest records it."""
        return self.manifest.created

    @property
    def member_ids(self) -> list[str]:
        return [m.spec.member_id for m in self.members]

    @property
    def age_fill(self) -> float:
        return self.manifest.stacker.age_fill

    @property
    def cam_weights(self) -> dict[str, float]:
        """Weights for the ensemble-weighted heatmap (stored at fit time; equal if absent)."""
        weights = self.manifest.stacker.cam_weights
        if not weights:
            return {mid: 1.0 / len(self.members) for mid in self.member_ids}
        return {mid: float(weights.get(mid, 0.0)) for mid in self.member_ids}

    @functools.cached_property
    def calibration(self) -> Calibration | None:  # parsed once: read on every predict and page rerun
        return self.manifest.calibration

    @functools.cached_property
    def explain_report(self) -> ExplainReport | None:
        """The release's measured heatmap metrics (``report/explain.json``, written by
        ``python -m training add-explain``); None for a release without them."""
        return read_explain_report(self.root, self.manifest)

    @property
    def threshold_calibrated(self) -> float | None:
        """The operating threshold on the calibrated scale (same call as ``threshold`` on the raw one)."""
        cal = self.calibration
        return float(cal.apply(self.threshold)) if cal else None

    def label_for(self, p: float) -> str:
        return self.positive_class if p >= self.threshold else self.negative_class

    @functools.cached_property
    def indeterminate_band(self) -> float:
        """Half-width of the release's "indeterminate" band on the shown scale
        (``threshold.indeterminate_band``, written by ``training fit``); releases without the
        field use the library default."""
        band = self.manifest.threshold.indeterminate_band
        if band is None:
            return DEFAULT_INDETERMINATE_BAND
        try:
            return check_band(band, f"{self.name}: manifest threshold.indeterminate_band")
        except ValueError as err:
            raise IntegrityError(str(err)) from None

    def call(self, p_raw: float, jitter: JitterSummary | None = None) -> Call:
        """The call every output shows for the raw ensemble probability ``p_raw``
        (``model_zoo.framing``): calibrated scale when the release has a calibration, the
        release's band, and the ROI-jitter result when it has been run."""
        cal = self.calibration
        return frame_call(
            p_raw,
            self.threshold,
            self.positive_class,
            self.negative_class,
            p_calibrated=float(cal.apply(p_raw)) if cal else None,
            threshold_calibrated=self.threshold_calibrated,
            band=self.indeterminate_band,
            jitter=jitter,
        )

    def jitter_probs(
        self,
        pixels: np.ndarray,
        box: roi.Box,
        *,
        age: Any = None,
        sex: Any = None,
        site: Any = None,
        n: int = JITTER_BOXES,
        seed: int = 0,
    ) -> list[float]:
        """Ensemble probabilities for ``n`` jittered copies of the ROI (``roi.jitter_boxes``).

        The same numbers as ``predict(pixels, b, ...).p_ensemble`` for each jittered box ``b``,
        without redoing per box what belongs to the image: the clinical values are checked and
        encoded once, the boxes come out of ``roi.jitter_boxes`` already inside the image, and
        the out-of-distribution gate is the caller's (one per image, on the reference box:
        ``predict``) - a jittered box is a box a reader could have drawn on the same image.
        """
        h, w = pixels.shape[:2]
        boxes = roi.jitter_boxes(tuple(float(v) for v in box), (w, h), n, seed=seed)
        if not boxes:
            return []
        clinical = clinical_vector(age, sex, site, age_fill=self.age_fill)
        probs = []
        for b in boxes:
            logits, _, _ = self.member_outputs(pixels, b, features=False)
            probs.append(self._stack({mid: float(sigmoid(v)) for mid, v in logits.items()}, clinical)[0])
        return probs

    # -- inference ---------------------------------------------------------------------------
    def member_logits(self, pixels: np.ndarray, box: roi.Box) -> tuple[dict[str, float], dict[str, roi.Box]]:
        logits, crop_boxes, _ = self.member_outputs(pixels, box)
        return logits, crop_boxes

    def member_outputs(
        self, pixels: np.ndarray, box: roi.Box, *, features: bool = True
    ) -> tuple[dict[str, float], dict[str, roi.Box], dict[str, np.ndarray]]:
        """Each member's logit, crop box and pooled pre-logit features (one forward pass each:
        the features are what the classifier reads, see ``ood.logits_and_features``; with
        ``features=False`` they are not copied out and the third dict is empty)."""
        import torch

        from model_zoo.ood import logits_and_features

        logits, crop_boxes, feature_map = {}, {}, {}
        for member in self.members:
            x, _, crop_box = preprocess.member_input(member.spec, pixels, box)
            with model_lock(member.model), torch.inference_mode():
                logit, feats = logits_and_features(member.model, x)
            logits[member.spec.member_id] = float(logit[0])
            if features:
                feature_map[member.spec.member_id] = feats[0].float().numpy()
            crop_boxes[member.spec.member_id] = crop_box
        return logits, crop_boxes, feature_map

    def ood_score(self, features: dict[str, np.ndarray]) -> tuple[float | None, bool | None]:
        """(score, out of distribution?) for one crop's member features; (None, None) when the
        release has no OOD model."""
        if self.ood is None:
            return None, None
        score = float(self.ood.score({mid: f[None] for mid, f in features.items()})[0])
        return score, bool(self.ood.is_ood(score))

    def combine(self, p_members: dict[str, float], age: Any, sex: Any, site: Any) -> tuple[float, float | None]:
        """Stacker (and clinic-only model) on member probabilities + clinical values."""
        return self._stack(p_members, clinical_vector(age, sex, site, age_fill=self.age_fill))

    def _stack(self, p_members: dict[str, float], clinical: Sequence[float]) -> tuple[float, float | None]:
        """``combine`` on an already checked and encoded clinical vector (``clinical_vector``)."""
        member_row = np.array([[p_members[mid] for mid in self.member_ids]], dtype=np.float64)
        features = np.hstack([member_row, np.asarray([clinical], dtype=np.float64)])  # = stacker_matrix's row
        p_ens = float(self.stacker.predict_proba(features)[0, 1])
        p_clinic = None
        if self.clinic_model is not None:
            p_clinic = float(self.clinic_model.predict_proba(features[:, len(self.member_ids) :])[0, 1])
        return p_ens, p_clinic

    def predict(
        self, pixels: np.ndarray, box: roi.Box | None, *, age: Any = None, sex: Any = None, site: Any = None
    ) -> Prediction:
        start = time.perf_counter()
        h, w = pixels.shape[:2]
        box = roi.full_image_box((w, h)) if box is None else roi.validate_box(box, (w, h))
        logits, crop_boxes, features = self.member_outputs(pixels, box)
        ood_score, ood = self.ood_score(features)
        p_members = {mid: float(sigmoid(v)) for mid, v in logits.items()}
        p_ens, p_clinic = self.combine(p_members, age, sex, site)
        probs = list(p_members.values())
        cal = self.calibration
        return Prediction(
            p_ensemble=p_ens,
            p_members=p_members,
            p_clinic=p_clinic,
            threshold=self.threshold,
            label=self.label_for(p_ens),
            roi_box=box,  # roi.Box: already four floats
            crop_boxes=crop_boxes,
            seconds=time.perf_counter() - start,
            disagreement=float(max(probs) - min(probs)) if probs else 0.0,
            p_calibrated=float(cal.apply(p_ens)) if cal else None,
            ood_score=ood_score,
            ood=ood,
        )


def load_members(root: Path, manifest: Manifest) -> list[LoadedMember]:
    import torch
    from safetensors.torch import load_file

    members = []
    for entry in manifest.members:
        spec: MemberSpec = entry.spec
        model = spec.build_model()
        state = load_file(str(verified_path(root, manifest, entry.weights, f"weights of {spec.member_id}")))
        state = {k: v.float() for k, v in state.items()}  # fp16 storage -> fp32 compute
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise IntegrityError(
                f"{root.name}: weights of {spec.member_id} do not fit its spec "
                f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
            )
        # channels_last: EfficientNet's depthwise convolutions run ~8x faster on the CPU (measured
        # on this torch build); the other families are unaffected.
        model = model.eval().to(memory_format=torch.channels_last)
        members.append(LoadedMember(spec, model))
    return members


def load_zoo(path: Path | str | None = None) -> Zoo:
    """Verify every file of a release (before unpickling anything), then load it."""
    import joblib

    root = Path(path) if path is not None else default_zoo_dir()
    manifest = verify_release(root)  # raises IntegrityError before any deserialisation
    # Every file the loaders will open must be one of the hashed files - checked before any load.
    for i, entry in enumerate(manifest.members):
        verified_path(root, manifest, entry.weights, f"weights of member {i + 1}")
    verified_path(root, manifest, manifest.stacker.file, "the stacker")
    if manifest.localiser is not None:
        verified_path(root, manifest, manifest.localiser.weights, "the localiser")
    if manifest.ood is not None:
        verified_path(root, manifest, manifest.ood.file, "the OOD model")
    members = load_members(root, manifest)
    bundle = joblib.load(verified_path(root, manifest, manifest.stacker.file, "the stacker"))
    return Zoo(root, manifest, members, bundle["stacker"], bundle.get("clinic"))
