"""A release's measured heatmap metrics (``report/explain.json``), typed for its readers.

Written by ``python -m training add-explain`` from ``python -m model_zoo explain-eval``
summaries (:mod:`model_zoo.explain_eval`, which measures them); read by ``Zoo.explain_report``
for the Case and Teaching pages. Its own small module so that loading a release never imports
the measuring code (which itself runs the ensemble).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_zoo.zoo import verified_path

if TYPE_CHECKING:  # pragma: no cover
    from model_zoo.manifest import Manifest

__all__ = ["REPORT_FILE", "ExplainReport", "ExplainSet", "MetricSummary", "read_explain_report", "release_fingerprint"]

REPORT_FILE = "report/explain.json"


@dataclass(frozen=True)
class MetricSummary:
    """A mean over cases with its bootstrap CI (None where not computable) and the count."""

    mean: float | None
    ci: tuple[float, float] | None
    n: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> MetricSummary | None:
        if not isinstance(d, Mapping):
            return None
        mean = d.get("mean")
        ci = d.get("ci")
        ci_pair = None
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
            ci_pair = (float(ci[0]), float(ci[1]))
        return cls(mean=float(mean) if isinstance(mean, (int, float)) else None, ci=ci_pair, n=int(d.get("n") or 0))


@dataclass(frozen=True)
class ExplainSet:
    """One case set's measured explanation metrics (one summary.json)."""

    name: str
    kind: str  # "internal", "external" or "unknown"
    n_cases: int
    views: tuple[str, ...]
    methods: tuple[str, ...]
    results: Mapping[str, Any] = field(repr=False)

    def metric(self, view: str, target: str, method: str, metric: str) -> MetricSummary | None:
        """``view`` (roi/image), ``target`` (member id or "ensemble"), ``method`` (gradcam,
        scorecam, random, centre), ``metric`` (see ``model_zoo.explain_eval.METRICS``, or ``blank``)."""
        block = ((self.results.get(view) or {}).get(target) or {}).get(method) or {}
        return MetricSummary.from_dict(block.get(metric))


@dataclass(frozen=True)
class ExplainReport:
    """The release's ``report/explain.json``: one :class:`ExplainSet` per measured case set."""

    sets: tuple[ExplainSet, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExplainReport:
        sets = []
        for name, s in (d.get("sets") or {}).items():
            if not isinstance(s, Mapping):
                continue
            sets.append(
                ExplainSet(
                    name=str(name),
                    kind=str(s.get("kind") or "unknown"),
                    n_cases=int(s.get("n_cases") or 0),
                    views=tuple(s.get("views") or ()),
                    methods=tuple(s.get("methods") or ()),
                    results=s.get("results") or {},
                )
            )
        return cls(sets=tuple(sets))

    def headline_set(self) -> ExplainSet | None:
        """The set to quote: the first external one (what a new hospital sees), else the first."""
        for s in self.sets:
            if s.kind == "external" and s.n_cases:
                return s
        return next((s for s in self.sets if s.n_cases), None)


def release_fingerprint(manifest: Manifest) -> dict[str, Any]:
    """What the measured maps depend on: the members' and the stacker's file hashes and the
    ensemble map's weights (as ``Zoo.cam_weights`` reads them). A summary carries it so a
    measurement can be attached only to a release with the same networks."""
    files = manifest.files
    members = {e.member_id: files.get(e.weights) for e in manifest.members}
    weights = manifest.stacker.cam_weights
    cam = {mid: (float(weights.get(mid, 0.0)) if weights else 1.0 / max(len(members), 1)) for mid in members}
    return {"members": members, "stacker": files.get(manifest.stacker.file), "cam_weights": cam}


def read_explain_report(root: Path, manifest: Manifest) -> ExplainReport | None:
    """The release's explain report (a verified file) or None when the release has none."""
    if REPORT_FILE not in manifest.files:
        return None
    path = verified_path(root, manifest, REPORT_FILE, "the explanation report")
    return ExplainReport.from_dict(json.loads(path.read_text(encoding="utf-8")))
