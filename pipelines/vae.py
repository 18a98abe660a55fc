"""Moments from images through a pipeline's VAE: raw latent space, the family's tag, streamed, with a progress bar.

The images are brought to one size (the core's crop or stretch), encoded a batch at a time with
the VAE's posterior mean (the deterministic encoding), and accumulated by the core's streaming
estimator, so memory does not grow with the number of images. The result is raw VAE-space moments
tagged with the family's latent format; teleport converts them with the pipeline's VAE scale and shift.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

import torch

from ..moments.base import DEFAULT_RANK, GaussianMoments, MomentsError
from ..moments.estimate import estimate_moments_from_images, fit_images, target_size
from .families import pipeline_family

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_files(folder: str) -> list[str]:
    """The image files directly in ``folder``, sorted by name."""
    if not os.path.isdir(folder):
        raise MomentsError(f"{folder} is not a folder of images")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise MomentsError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def read_image(path: str) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


def image_folder(folder: str, *, width: int = 0, height: int = 0, fit: str = "crop", batch_size: int = 8,
                 multiple: int = 8) -> Iterator[torch.Tensor]:
    """Batches (B, 3, height, width) of a folder's images, each brought to one size as it is read."""
    batch, size = [], None
    for path in image_files(folder):
        image = read_image(path)
        if size is None:
            size = target_size(tuple(image.shape[-2:]), width, height, multiple)
        batch.append(fit_images(image, *size, fit))
        if len(batch) == batch_size:
            yield torch.cat(batch)
            batch = []
    if batch:
        yield torch.cat(batch)


def vae_encoder(vae):
    """Images (B, 3, H, W) in [0, 1] → raw latents (the posterior mean), in float32 on the CPU."""
    def encode(images: torch.Tensor) -> torch.Tensor:
        x = (images * 2 - 1).to(device=vae.device, dtype=vae.dtype)
        with torch.no_grad():
            return vae.encode(x).latent_dist.mean.float().cpu()
    return encode


def estimate_pipeline_moments(pipe, images: "str | Iterable[torch.Tensor]", *, structure: str = "lowrank",
                              rank: int = DEFAULT_RANK, width: int = 0, height: int = 0, fit: str = "crop",
                              batch_size: int = 8, add_to: GaussianMoments | None = None,
                              progress: bool = True) -> GaussianMoments:
    """Raw VAE-space moments of ``images`` through ``pipe.vae``, tagged with the pipeline's latent format.

    ``images``: a folder, or batches (B, C, H, W) in [0, 1]. Every image is brought to ``width`` ×
    ``height`` (0: the first image's size), a multiple of the VAE's downscale factor (times 2 for SD3
    and Flux, whose latents are cut into 2×2 patches). Generate at that size to use lowrank or dense
    moments; stationary moments serve any size.
    """
    family = pipeline_family(pipe)
    if getattr(pipe, "vae", None) is None:
        raise MomentsError("this pipeline has no VAE to encode images with; load it with its VAE")
    multiple = int(pipe.vae_scale_factor) * family.patch
    total = None
    if isinstance(images, (str, os.PathLike)):
        total = len(image_files(str(images)))
        images = image_folder(str(images), width=width, height=height, fit=fit, batch_size=batch_size,
                              multiple=multiple)
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="image", desc="moments", disable=not progress) as bar:
        return estimate_moments_from_images(images, vae_encoder(pipe.vae), structure=structure, rank=rank, width=width,
                                            height=height, fit=fit, batch_size=batch_size, multiple=multiple,
                                            add_to=add_to, latent_format=family.latent_format, progress=bar.update)
