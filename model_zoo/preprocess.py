"""From a stored image and an ROI to one member's model input - the only place it happens.

Training (to build its input cache), ``predict``, the CAM code and the dashboard all call
these functions, so a model always sees exactly the crop it was trained on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from model_zoo import roi
from model_zoo.members import MemberSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch


def member_crop(spec: MemberSpec, pixels: np.ndarray, box: roi.Box) -> tuple[np.ndarray, roi.Box]:
    """Crop the ROI with the spec's margin (square, kept inside the image) and resize.

    Parameters
    ----------
    pixels : (H, W) float image in [0, 1] (``LoadedImage.pixels``).
    box : ROI in stored-image pixels (x0, y0, x1, y1), x1/y1 exclusive.

    Returns
    -------
    crop : (S, S) float32, S = ``spec.input_size``
    crop_box : the integer box actually cropped, in stored-image pixels (for mapping back).
    """
    h, w = pixels.shape[:2]
    crop_box = roi.roi_crop_box(box, (w, h), spec.roi_margin, square=True)
    patch = roi.crop(pixels, crop_box)
    resized = roi.resize(patch.astype(np.float32, copy=False), spec.input_size)
    # Rounded to 1/255 steps: training caches every crop as uint8, so inference sees exactly the
    # values the members were fitted on (measured: without it a frozen-feature member's logit
    # moved by up to 2.3 between the cached and the freshly computed crop of the same case).
    return (np.round(np.clip(resized, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32), crop_box


def to_tensor(spec: MemberSpec, crop: np.ndarray) -> torch.Tensor:
    """(S, S) crop in [0, 1] -> (1, 3, S, S) normalised float tensor."""
    import torch

    return torch.from_numpy(spec.normalise(crop)).unsqueeze(0)


def member_input(spec: MemberSpec, pixels: np.ndarray, box: roi.Box) -> tuple[torch.Tensor, np.ndarray, roi.Box]:
    """Convenience: crop, resize and normalise -> (tensor, crop, crop_box)."""
    crop, crop_box = member_crop(spec, pixels, box)
    return to_tensor(spec, crop), crop, crop_box
