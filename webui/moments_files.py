"""Moments files in the webui's models/moments folder, and what the loaded checkpoint needs from them.

Files hold raw-VAE-space moments (or model-space moments tagged with their format); A1111 and Forge
sample in model space, so they are converted with the checkpoint's latent format before use.
"""

from __future__ import annotations

import os
import threading

from ..moments.io import EXTENSION, load_moments
from ..moments.latent_formats import LATENT_FORMATS, to_model_space_named
from ..moments.structures import GaussianMoments, MomentsError
from .settings import MOMENTS_FOLDER, NO_MOMENTS


def moments_folder(models_path: str) -> str:
    return os.path.join(models_path, MOMENTS_FOLDER)


def list_moments_files(folder: str) -> list[str]:
    """Moments files under ``folder`` (sub-folders included) as '/'-separated relative names, sorted."""
    names = []
    for base, _dirs, files in os.walk(folder, followlinks=True):
        for f in files:
            if f.endswith(EXTENSION):
                rel = os.path.relpath(os.path.join(base, f), folder)
                names.append(rel.replace(os.sep, "/"))
    return sorted(names, key=str.lower)


def moments_choices(folder: str) -> list[str]:
    return [NO_MOMENTS, *list_moments_files(folder)]


def resolve_moments_file(folder: str, name: str) -> str:
    """The path of a file listed by ``list_moments_files``; errors name the folder and the fix."""
    if not name or name == NO_MOMENTS:
        raise MomentsError("a teleport sampler is selected but no moments file is chosen: pick one in the "
                           f"Gaussian Teleport accordion (files go in {folder}), or choose a sampler "
                           "without 'Teleport'")
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, *name.split("/")))
    if os.path.commonpath([root, path]) != root:
        raise MomentsError(f"moments file {name!r} is outside {folder}; only files in that folder are loaded")
    if not os.path.isfile(path):
        raise MomentsError(f"moments file {name!r} was not found in {folder}; press the refresh button next "
                           "to the moments dropdown and choose a file that exists")
    return path


# ----------------------------------------------------------------------------
# What the loaded checkpoint is.


def latent_format_of(sd_model) -> str:
    """The latent-format name (see LATENT_FORMATS) of an A1111 or Forge checkpoint object."""
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


# ----------------------------------------------------------------------------
# Loading, converted to model space, with a one-file cache.


def model_space_moments(moments: GaussianMoments, latent_format: str, source: str = "moments") -> GaussianMoments:
    """Moments in the sampler's space for a checkpoint with ``latent_format``."""
    if latent_format not in LATENT_FORMATS:
        raise MomentsError(f"unknown latent format {latent_format!r}; known: {sorted(LATENT_FORMATS)}")
    if moments.latent_format not in ("none", latent_format):
        raise MomentsError(f"{source} was made for {moments.latent_format} latents but the loaded checkpoint "
                           f"uses {latent_format}; choose moments estimated for this model family")
    if moments.channels != LATENT_FORMATS[latent_format].channels:
        raise MomentsError(f"{source} has {moments.channels}-channel latents but {latent_format} checkpoints "
                           f"have {LATENT_FORMATS[latent_format].channels}; choose moments for this model family")
    return to_model_space_named(moments, latent_format)


class MomentsCache:
    """Keeps the last converted file (on the CPU) when asked to; a changed file is reloaded."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key = None
        self._value = None

    def get(self, path: str, latent_format: str, keep: bool = True) -> GaussianMoments:
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size, latent_format)
        with self._lock:
            if self._key == key:
                return self._value
            moments = model_space_moments(load_moments(path), latent_format, os.path.basename(path))
            self._key, self._value = (key, moments) if keep else (None, None)
            return moments

    def clear(self):
        with self._lock:
            self._key = self._value = None


CACHE = MomentsCache()
