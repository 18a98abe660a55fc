"""What the loaded A1111/Forge checkpoint is: its latent format, its noise parameterization, its identity."""

from __future__ import annotations

import re


def latent_format_of(sd_model) -> str:
    """The latent-format name (see moments.LATENT_FORMATS) of an A1111 or Forge checkpoint object."""
    if getattr(sd_model, "is_sd3", False):
        return "SD3"
    if getattr(sd_model, "is_sdxl", False):
        return "SDXL"
    if type(sd_model).__name__ in ("Flux", "Chroma"):   # Forge's flow engines carry no is_* flag
        return "Flux"
    return "SD15"                                       # SD1.x and SD2.x share the VAE and its scale


def parameterization_of(denoiser, sd_model) -> str:
    """'flow' for rectified-flow models (x = (1 − t)·x0 + t·ε, sigma = t), else 've'.

    ``denoiser`` is the CFG-wrapped model the sampler function receives. Forge exposes the model's
    prediction object; A1111 runs only SD3 as a flow model.
    """
    inner = getattr(denoiser, "model_wrap", None) or getattr(denoiser, "inner_model", None)
    predictor = getattr(inner, "predictor", None)
    if predictor is not None:
        return "flow" if getattr(predictor, "prediction_type", None) == "const" else "ve"
    return "flow" if getattr(sd_model, "is_sd3", False) else "ve"


def checkpoint_key(sd_model) -> str:
    """A file-name-safe identity of the loaded checkpoint: its name and short hash."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    name = getattr(info, "model_name", None) or type(sd_model).__name__
    short = getattr(info, "shorthash", None) or getattr(sd_model, "sd_model_hash", None) or "nohash"
    return re.sub(r"[^\w\-.]+", "_", f"{name}-{short}")
