"""What the loaded A1111/Forge checkpoint is: its latent format, its noise parameterization, its identity."""

from __future__ import annotations

import re

import torch

from ..moments.base import MomentsError
from ..moments.latent_formats import LATENT_FORMATS, LatentFormat

KNOWN = ", ".join(sorted(LATENT_FORMATS))


def _unsupported(sd_model, what: str) -> MomentsError:
    return MomentsError(f"Gaussian Teleport does not support this checkpoint ({type(sd_model).__name__}, {what}): "
                        f"it knows the latent formats {KNOWN}. Choose a sampler without 'Teleport' (and not "
                        "'Gaussian Solver') for this model")


def _host_format(sd_model, config_format) -> str:
    """The name of the latent format Forge / Forge Neo's model config declares, checked against ours by its map."""
    name = type(config_format).__name__
    ours = LATENT_FORMATS.get(name)
    process_in = getattr(config_format, "process_in", None)
    if ours is None or not callable(process_in):
        raise _unsupported(sd_model, f"latent format {name}")
    try:
        theirs = LatentFormat.from_map(name, process_in, ours.channels)
    except (MomentsError, RuntimeError, TypeError, ValueError) as exc:
        raise _unsupported(sd_model, f"latent format {name}, whose map could not be read: {exc}") from None
    if not all(torch.allclose(t, o, rtol=1e-4, atol=1e-6) for t, o in zip(theirs.affine(), ours.affine())):
        raise _unsupported(sd_model, f"latent format {name} with a scale or shift other than {name}'s")
    return name


def latent_format_of(sd_model) -> str:
    """The latent-format name (see moments.LATENT_FORMATS) of an A1111, Forge or Forge Neo checkpoint object.

    Forge and Forge Neo carry the model family's latent format on ``sd_model.model_config`` (huggingface_guess):
    it is used when present, so Neo's newer families are told apart (Lumina 2, Z-Image and Chroma use Flux's
    VAE; Qwen-Image and Wan use Wan's, which teleport does not know). A1111 marks its families with is_* flags.
    A checkpoint that is none of the known families is refused (MomentsError), never taken for SD1.5.
    """
    config_format = getattr(getattr(sd_model, "model_config", None), "latent_format", None)
    if config_format is not None:
        return _host_format(sd_model, config_format)
    if getattr(sd_model, "is_sd3", False):
        return "SD3"
    if getattr(sd_model, "is_sdxl", False):
        return "SDXL"
    if type(sd_model).__name__ in ("Flux", "Chroma"):   # Forge's flow engines carry no is_* flag
        return "Flux"
    if getattr(sd_model, "is_sd1", False) or getattr(sd_model, "is_sd2", False):
        return "SD15"                                   # SD1.x and SD2.x share the VAE and its scale
    raise _unsupported(sd_model, "no SD1.x, SD2.x, SDXL, SD3 or Flux mark")


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
