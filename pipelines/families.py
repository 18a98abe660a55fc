"""The diffusers pipelines teleport covers, and what each one's latents look like.

A family names the pipeline class, its latent format tag (the one moments files carry), whether it is
a rectified-flow model, which module is its denoiser, and whether it packs latents into tokens (Flux
does: (B, C, H, W) → (B, H/2·W/2, 4C)). The jump always works on (B, C, H, W) latents in the model's
space, z' = scale·(z − shift) of raw VAE latents, with the scale and shift read off the pipeline's VAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..moments.latent_formats import LatentFormat


@dataclass(frozen=True)
class Family:
    pipeline: str         # the diffusers class name
    latent_format: str    # the tag moments files carry (moments.latent_formats.LATENT_FORMATS)
    flow: bool            # rectified flow (the schedule runs on t) rather than VE sigmas
    denoiser: str         # the pipeline attribute holding the denoiser
    packed: bool = False  # latents travel as (B, tokens, 4C) 2×2 patches
    patch: int = 1        # the latent's height and width must be multiples of this

    @property
    def parameterization(self) -> str:
        return "flow" if self.flow else "ve"


FAMILIES = (
    Family("StableDiffusionPipeline", "SD15", flow=False, denoiser="unet"),
    Family("StableDiffusionXLPipeline", "SDXL", flow=False, denoiser="unet"),
    Family("StableDiffusion3Pipeline", "SD3", flow=True, denoiser="transformer", patch=2),
    Family("FluxPipeline", "Flux", flow=True, denoiser="transformer", packed=True, patch=2),
)


def supported_pipelines() -> str:
    return ", ".join(f.pipeline for f in FAMILIES)


def require_diffusers():
    """The diffusers package, or an ImportError that says how to install it."""
    try:
        import diffusers
    except ImportError as exc:
        raise ImportError("teleport for diffusers pipelines needs diffusers (and transformers for the text "
                          "encoders): pip install diffusers transformers") from exc
    return diffusers


def pipeline_family(pipe) -> Family:
    """The family of ``pipe`` (its class or a subclass of a covered one); ValueError naming the covered ones."""
    diffusers = require_diffusers()
    for family in FAMILIES:
        cls = getattr(diffusers, family.pipeline, None)
        if cls is not None and isinstance(pipe, cls):
            return family
    raise ValueError(f"teleport does not cover {type(pipe).__name__}; it covers the text-to-image pipelines "
                     f"{supported_pipelines()} (img2img, inpainting and ControlNet pipelines start from an image "
                     "and are not covered)")


def latent_format(pipe, family: Family | None = None) -> LatentFormat | None:
    """The raw → model-space map the pipeline uses, read off its VAE, under the family's tag.

    SD, SD3 and Flux pipelines decode ``z'/scaling_factor + shift_factor``; SDXL pipelines honour a
    VAE's per-channel ``latents_mean``/``latents_std`` when it has them. None without a VAE (the
    moments must then be in the model's space already).
    """
    family = family or pipeline_family(pipe)
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return None
    cfg = vae.config
    channels = int(cfg.latent_channels)
    scale = float(cfg.scaling_factor)
    shift = float(getattr(cfg, "shift_factor", None) or 0.0)
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if family.latent_format == "SDXL" and mean is not None and std is not None:
        return LatentFormat(family.latent_format, channels, tuple(scale / float(s) for s in std),
                            tuple(float(m) for m in mean))
    return LatentFormat(family.latent_format, channels, scale, shift)


def pixel_size(pipe, call: dict) -> tuple[int, int]:
    """(height, width) in pixels as the pipeline will use them, its defaults included."""
    height, width = call.get("height"), call.get("width")
    f = int(pipe.vae_scale_factor)
    default = getattr(pipe, "default_sample_size", None)
    if default is not None:                  # SDXL, SD3, Flux: each side defaults on its own
        return int(height or int(default) * f), int(width or int(default) * f)
    if height and width:                     # SD: both given, or both from the UNet's sample size
        return int(height), int(width)
    size = pipe.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    return int(h) * f, int(w) * f


def latent_size(pipe, family: Family, call: dict) -> tuple[int, int]:
    """(H, W) of the image latent the pipeline denoises."""
    height, width = pixel_size(pipe, call)
    f = int(pipe.vae_scale_factor) * family.patch
    return family.patch * (height // f), family.patch * (width // f)


def image_latents(pipe, family: Family, latents: torch.Tensor, call: dict) -> torch.Tensor:
    """The pipeline's latents as (B, C, H, W) (Flux's token packing undone)."""
    if not family.packed:
        return latents
    height, width = pixel_size(pipe, call)
    return type(pipe)._unpack_latents(latents, height, width, pipe.vae_scale_factor)


def pipeline_latents(pipe, family: Family, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents in the layout the pipeline takes as ``latents=`` (packed for Flux)."""
    if not family.packed:
        return x
    b, c, h, w = x.shape
    return type(pipe)._pack_latents(x, b, c, h, w)
