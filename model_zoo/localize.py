"""Auto-crop: propose a lesion ROI on a whole radiograph.

A small U-Net segments lesion pixels on the whole image resized to ``input_size`` (aspect
not kept, as in BTXRD's 256-px images); the proposal is the bounding box of every
connected region above ``threshold`` (BTXRD's annotator box covers all lesions together),
mapped back to stored-image pixels. Confidence is the peak lesion probability. When nothing
passes the threshold the region around the peak is proposed anyway, with its (low)
confidence, so the user always gets an editable box and an honest number.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_zoo import roi

if TYPE_CHECKING:  # pragma: no cover
    from model_zoo.manifest import LocaliserInfo


@dataclass(frozen=True)
class LocaliserSpec:
    input_size: int = 128
    base_channels: int = 16
    threshold: float = 0.5
    min_area_frac: float = 0.001  # ignore specks smaller than this fraction of the image
    mean: float = 0.5
    std: float = 0.25

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LocaliserSpec:
        return cls(**{k: d[k] for k in (f.name for f in dataclasses.fields(cls)) if k in d})


@dataclass(frozen=True)
class Proposal:
    box: roi.Box  # stored-image pixels
    confidence: float  # peak lesion probability in [0, 1]
    found: bool  # False when no region passed the threshold (fallback box)
    seconds: float


def build_unet(spec: LocaliserSpec) -> Any:
    """A 4-level U-Net (one grey input channel, one lesion logit per pixel), ~0.5 M params at c=16."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.enc = nn.ModuleList([block(1, c), block(c, 2 * c), block(2 * c, 4 * c), block(4 * c, 8 * c)])
            self.up = nn.ModuleList(
                [
                    nn.ConvTranspose2d(8 * c, 4 * c, 2, stride=2),
                    nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2),
                    nn.ConvTranspose2d(2 * c, c, 2, stride=2),
                ]
            )
            self.dec = nn.ModuleList([block(8 * c, 4 * c), block(4 * c, 2 * c), block(2 * c, c)])
            self.head = nn.Conv2d(c, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for i, enc in enumerate(self.enc):
                x = enc(x)
                if i < len(self.enc) - 1:
                    skips.append(x)
                    x = nn.functional.max_pool2d(x, 2)
            for up, dec in zip(self.up, self.dec):
                x = up(x)
                x = dec(torch.cat([x, skips.pop()], dim=1))
            return self.head(x)

    if spec.input_size % 8:
        raise ValueError("localiser input_size must be a multiple of 8")
    return UNet(spec.base_channels)


def prepare(spec: LocaliserSpec, pixels: np.ndarray) -> np.ndarray:
    """Whole image -> (S, S) float32 in [0, 1] (aspect not kept, like the training data)."""
    return np.clip(roi.resize(pixels.astype(np.float32, copy=False), spec.input_size), 0, 1)


def mask_to_box(prob: np.ndarray, threshold: float, min_area: int, secondary_ratio: float = 0.5) -> tuple[roi.Box, bool]:
    """Bounding box (map pixels, x1/y1 exclusive) of the dominant lesion region.

    Regions are connected components of ``prob >= threshold`` with at least ``min_area``
    pixels. The dominant one has the largest probability mass; others are added when their
    mass is at least ``secondary_ratio`` of it (BTXRD's annotator box covers all lesions of
    an image, but a union of every speck above threshold grows towards the whole image).
    If no region remains, the region around the peak above half the peak value is
    returned with ``found=False``.
    """
    import cv2

    binary = (prob >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    masses = np.bincount(labels.ravel(), weights=np.asarray(prob, np.float64).ravel(), minlength=n)
    regions = [
        (float(masses[i]), tuple(int(v) for v in stats[i, :4])) for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area
    ]
    found = bool(regions)
    if regions:
        top = max(mass for mass, _ in regions)
        kept = [rect for mass, rect in regions if mass >= secondary_ratio * top]
    else:
        peak = float(prob.max())
        y, x = np.unravel_index(int(np.argmax(prob)), prob.shape)
        _, labels2, stats2, _ = cv2.connectedComponentsWithStats((prob >= peak / 2).astype(np.uint8), connectivity=8)
        kept = [tuple(int(v) for v in stats2[int(labels2[y, x]), :4])]
    x0 = min(r[0] for r in kept)
    y0 = min(r[1] for r in kept)
    x1 = max(r[0] + r[2] for r in kept)
    y1 = max(r[1] + r[3] for r in kept)
    return (float(x0), float(y0), float(x1), float(y1)), found


class Localiser:
    """A loaded localiser; ``propose`` is thread-safe (one lock per model)."""

    def __init__(self, spec: LocaliserSpec, model: Any, metrics: dict[str, Any] | None = None):
        self.spec, self.model, self.metrics = spec, model.eval(), metrics or {}

    def probability_map(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        from model_zoo.locks import model_lock

        x = (prepare(self.spec, pixels) - self.spec.mean) / self.spec.std
        with model_lock(self.model), torch.inference_mode():
            logits = self.model(torch.from_numpy(x)[None, None].float())
        return torch.sigmoid(logits)[0, 0].numpy()

    def propose(self, pixels: np.ndarray) -> Proposal:
        start = time.perf_counter()
        prob = self.probability_map(pixels)
        s = self.spec.input_size
        box, found = mask_to_box(prob, self.spec.threshold, max(1, int(self.spec.min_area_frac * s * s)))
        h, w = pixels.shape[:2]
        image_box = roi.clamp_box(roi.scale_box(box, (s, s), (w, h)), (w, h))
        return Proposal(image_box, float(prob.max()), found, time.perf_counter() - start)


def load_localiser(folder: Path, entry: LocaliserInfo) -> Localiser:
    """Load from a (verified) release folder; ``entry`` is ``Manifest.localiser``."""
    from safetensors.torch import load_file

    spec = entry.spec
    model = build_unet(spec)
    state = {k: v.float() for k, v in load_file(str(Path(folder) / entry.weights)).items()}
    model.load_state_dict(state)
    return Localiser(spec, model, dict(entry.metrics))
