"""Data sets for the reference models, made from images that scikit-learn ships.

- ``digits``: scikit-learn's 1,797 8×8 handwritten digits, 10 classes, scaled to [−1, 1].
- ``patches``: 8×8 RGB patches of scikit-learn's two bundled photographs (``load_sample_images``:
  a temple in China and a flower), downscaled 4× by area averaging so a patch holds texture and
  edges rather than a smooth gradient, scaled to [−1, 1], with random flips. The label is the
  photograph and the quadrant the patch comes from (8 classes); it trains the benchmark's feature
  classifier, the diffusion model itself is unconditional.

Only training and the benchmark need these (and scikit-learn); the demo runs from the shipped
weights and moments alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DATASETS = ("digits", "patches")
PATCH_SIZE, PATCH_DOWNSCALE = 8, 4


@dataclass
class DataSet:
    name: str
    images: torch.Tensor      # (N, C, H, W) float32 in [−1, 1]
    labels: torch.Tensor      # (N,) long
    num_classes: int
    description: str

    @property
    def shape(self):
        return tuple(self.images.shape[1:])


def _require_sklearn():
    try:
        import sklearn.datasets as datasets
    except ImportError:
        raise ImportError("the reference data sets need scikit-learn (and pillow for the photographs): "
                          "pip install scikit-learn pillow") from None
    return datasets


def load_digits() -> DataSet:
    datasets = _require_sklearn()
    d = datasets.load_digits()
    images = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    return DataSet("digits", images, torch.tensor(d.target, dtype=torch.long), 10,
                   "scikit-learn load_digits(): 1,797 8×8 grayscale digits (0..16 → [−1, 1]), 10 classes")


def _photographs() -> list[np.ndarray]:
    """The two bundled photographs, downscaled by area averaging, as float arrays in [−1, 1]."""
    datasets = _require_sklearn()
    out = []
    for img in datasets.load_sample_images().images:
        f = PATCH_DOWNSCALE
        h, w = img.shape[0] // f * f, img.shape[1] // f * f
        small = img[:h, :w].astype(np.float64).reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))
        out.append((small / 127.5 - 1.0).astype(np.float32))
    return out


def load_patches(count: int = 60000, seed: int = 0) -> DataSet:
    """``count`` random 8×8 RGB patches (random position and flips) with photograph×quadrant labels."""
    photos = _photographs()
    rng = np.random.default_rng(seed)
    p = PATCH_SIZE
    images = np.empty((count, 3, p, p), dtype=np.float32)
    labels = np.empty(count, dtype=np.int64)
    which = rng.integers(0, len(photos), count)
    for i in range(count):
        photo = photos[which[i]]
        h, w = photo.shape[:2]
        y, x = rng.integers(0, h - p + 1), rng.integers(0, w - p + 1)
        patch = photo[y:y + p, x:x + p]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch[::-1]
        images[i] = patch.transpose(2, 0, 1)
        quadrant = 2 * int(y + p / 2 >= h / 2) + int(x + p / 2 >= w / 2)
        labels[i] = 4 * which[i] + quadrant
    return DataSet("patches", torch.from_numpy(images), torch.from_numpy(labels), 4 * len(photos),
                   f"{count:,} random {p}×{p} RGB patches (flipped at random) of scikit-learn's two "
                   f"load_sample_images() photographs downscaled {PATCH_DOWNSCALE}× ([0, 255] → [−1, 1]); "
                   "labels = photograph × quadrant (8 classes)")


def load_dataset(name: str, *, seed: int = 0) -> DataSet:
    """A reference data set by name; ``seed`` picks the patch draw (digits are fixed)."""
    if name == "digits":
        return load_digits()
    if name == "patches":
        return load_patches(seed=seed)
    raise ValueError(f"unknown data set {name!r}; choose one of {DATASETS}")
