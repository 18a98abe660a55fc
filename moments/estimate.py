"""Estimate moments from latent batches, and from images through a VAE (streaming, in float64)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from .base import DEFAULT_RANK, GaussianMoments, MomentAccumulator, MomentsError, check_value_dtype
from .latent_formats import check_format_channels, check_format_name

FITS = ("crop", "stretch")


def estimate_moments(batches: Iterable[torch.Tensor], structure: str = "lowrank", *, rank: int = DEFAULT_RANK,
                     sketch: int | None = None, space: str = "raw", latent_format: str = "none",
                     metadata: dict | None = None, dtype: torch.dtype = torch.float32) -> GaussianMoments:
    """Estimate moments from an iterable of latent batches (B, C, H, W); stored in ``dtype``.

    ``latent_format`` is "none" or a name in LATENT_FORMATS (SD15, SDXL, SD3, Flux), whose channel
    count the latents must have; both are checked before the statistics are finalized.
    """
    check_format_name(latent_format)
    check_value_dtype(dtype)
    acc = MomentAccumulator(structure, rank=rank, sketch=sketch)
    for batch in batches:
        acc.add(batch)
        if acc.shape is not None:
            check_format_channels(latent_format, acc.shape[0])
    return acc.finalize(space=space, latent_format=latent_format, metadata=metadata, dtype=dtype)


def start_accumulator(structure: str, rank: int, add_to: GaussianMoments | None = None) -> MomentAccumulator:
    """A fresh accumulator, or one continuing from ``add_to`` (raw moments of the same structure)."""
    if add_to is None:
        return MomentAccumulator(structure, rank=rank)
    return MomentAccumulator.from_moments(add_to, structure=structure,
                                          rank=rank if structure == "lowrank" else None)


# ----------------------------------------------------------------------------
# Images: brought to one size, encoded by the caller's VAE in batches.


def target_size(first_hw: tuple[int, int], width: int, height: int, multiple: int) -> tuple[int, int]:
    """(width, height) every image is brought to: the given one, or the first image's (0 = keep)."""
    width = width or int(first_hw[1])
    height = height or int(first_hw[0])
    for name, v in (("width", width), ("height", height)):
        if v % multiple:
            raise ValueError(f"{name} {v} is not a multiple of {multiple} (the VAE's downscale factor); "
                             f"set {name} to {v - v % multiple} or {v - v % multiple + multiple}")
    return width, height


def fit_images(images: torch.Tensor, width: int, height: int, fit: str = "crop") -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1] → (B, 3, height, width).

    ``crop`` scales to cover and cuts the centre (no distortion); ``stretch`` resizes directly.
    Grey images get three channels, an alpha channel is dropped.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    x = images[:, :3].float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    if (h, w) != (height, width):
        if fit == "crop":
            scale = max(height / h, width / w)
            nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
            top, left = (nh - height) // 2, (nw - width) // 2
            x = x[..., top:top + height, left:left + width]
        else:
            x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1)


def estimate_moments_from_images(groups: Iterable[torch.Tensor], encode: Callable[[torch.Tensor], torch.Tensor], *,
                                 structure: str = "lowrank", rank: int = DEFAULT_RANK, width: int = 0,
                                 height: int = 0, fit: str = "crop", batch_size: int = 8, multiple: int = 8,
                                 add_to: GaussianMoments | None = None, latent_format: str = "none",
                                 progress: Callable[[int], None] | None = None,
                                 check_cancel: Callable[[], None] | None = None) -> GaussianMoments:
    """Raw VAE-space moments of images (groups of (B, C, H, W) in [0, 1]), ``batch_size`` encoded at a time.

    ``encode`` maps (b, 3, height, width) images in [0, 1] to raw latents; ``progress(n)`` is told how
    many images each batch added; ``check_cancel()`` may raise to stop between batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    acc = start_accumulator(structure, rank, add_to)
    size, total = None, 0
    for group in groups:
        if size is None:
            size = target_size(tuple(group.shape[-2:]), width, height, multiple)
        for start in range(0, int(group.shape[0]), batch_size):
            if check_cancel is not None:
                check_cancel()
            chunk = fit_images(group[start:start + batch_size], *size, fit)
            acc.add(encode(chunk))
            total += chunk.shape[0]
            if progress is not None:
                progress(chunk.shape[0])
    if size is None:
        raise MomentsError("no images were given; connect a batch or a folder of images")
    return acc.finalize(latent_format=latent_format,
                        metadata={"source": "images", "image_size": f"{size[0]}x{size[1]}", "images_added": total})
