"""Synthetic radiograph-like cases for tests (no patient data).

Positives carry a bright blob inside their ROI, negatives a faint one, on a noisy
background with a bone-like bar, so tiny models can learn something in a few epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def synthetic_image(rng: np.random.Generator, size: int, positive: bool) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    img = rng.normal(60, 12, (size, size))
    img[:, size // 3 : 2 * size // 3] += 70  # a "bone" shaft
    side = int(rng.integers(size // 5, size // 3))
    x0 = int(rng.integers(0, size - side))
    y0 = int(rng.integers(0, size - side))
    yy, xx = np.mgrid[0:size, 0:size]
    cx, cy = x0 + side / 2, y0 + side / 2
    blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (side / 4) ** 2)))
    img += blob * (110 if positive else 25)
    return np.clip(img, 0, 255).astype(np.uint8), (x0, y0, x0 + side, y0 + side)


def write_case_table(folder: Path, n: int = 40, size: int = 96, seed: int = 0, positive_rate: float = 0.4) -> Path:
    """PNG images + a contract-2.1 case CSV in ``folder``; returns the CSV path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        positive = bool(rng.random() < positive_rate) if i >= 2 else bool(i)  # both classes guaranteed
        pixels, box = synthetic_image(rng, size, positive)
        name = f"images/case{i:03d}.png"
        Image.fromarray(pixels).save(folder / name)
        rows.append(
            {
                "image": name,
                "label": int(positive),
                "patient_id": f"P{i // 2:03d}",
                "age": int(rng.integers(8, 80)),
                "sex": "M" if rng.random() < 0.5 else "F",
                "site": "axial" if rng.random() < 0.2 else "appendicular",
                "roi_x0": box[0],
                "roi_y0": box[1],
                "roi_x1": box[2],
                "roi_y1": box[3],
            }
        )
    path = folder / "cases.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
