"""The one seam between moments and a model: the Gaussian a sampler call works with.

``bind_moments(moments, shape, latent_format=..., parameterization=...)`` does, once per moments object,
format, latent size, device and dtype: the family checks (channels, the format a file was made for),
the exact raw → model-space conversion, and the operator at the latent size (for stationary moments a
resampled spectrum). Both hosts, the demo, the benchmarks and the calibration call it; results are
cached (weakly: they go when the moments object goes), so repeated sampling calls with the same
moments (ComfyUI re-running a graph, A1111 generating a batch) redo nothing.

Video latents bind the same way: ``shape`` is then (C, T, H, W) and the moments are video moments
(moments.video); image moments for a video latent, and the reverse, are refused here, before any
model call, naming the moments to use.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..moments.base import GaussianMoments, GaussianOperator, MomentsError
from ..moments.gaussian import gaussian_trajectory, gaussian_x0, model_implied_mean
from ..moments.latent_formats import NO_FORMAT, LatentFormat, find_latent_format as as_format, to_model_space
from ..moments.video import is_video_moments
from .parameterization import Parameterization, parameterization as as_parameterization

CACHE_PER_MOMENTS = 4


@dataclass(frozen=True)
class ModelGaussian:
    """Moments in a model's sampling space, bound to one latent size, device and dtype."""

    moments: GaussianMoments
    op: GaussianOperator
    parameterization: Parameterization

    @property
    def dtype(self) -> torch.dtype:
        return self.op.dtype

    def alpha(self, sigma: float) -> float:
        return self.parameterization.alpha(sigma)

    def denoise(self, x, sigma, mean=None):
        """The Gaussian's x0 prediction at (x, σ), σ in the sampler's units."""
        return gaussian_x0(self.op, x, sigma, self.alpha(sigma), mean)

    def trajectory(self, x, sigma_from, sigmas, mean=None):
        """[(x(σ), x0 prediction at σ) for σ in sigmas] from (x, σ_from), in one pass over the eigenbasis."""
        points = [(float(s), self.alpha(s)) for s in sigmas]
        return gaussian_trajectory(self.op, x, sigma_from, self.alpha(sigma_from), points, mean)

    def implied_mean(self, x, denoised, sigma):
        """The per-sample mean under which this covariance reproduces the model's output at (x, σ)."""
        return model_implied_mean(self.op, x, denoised, sigma, self.alpha(sigma))


def compute_dtype(moments: GaussianMoments) -> torch.dtype:
    """At least float32; float64 when the moments are float64 (the reference precision)."""
    return torch.promote_types(moments.mean.dtype, torch.float32)


def sampler_space(moments: GaussianMoments, fmt: LatentFormat | str | None) -> GaussianMoments:
    """The moments in the sampler's space. Without a format they must already be there."""
    if fmt is not None:
        return to_model_space(moments, as_format(fmt))
    if moments.space == "raw" and moments.latent_format != NO_FORMAT:
        raise MomentsError(f"these are raw {moments.latent_format} VAE-space moments; give the model's latent format "
                           f"({moments.latent_format}) so they are converted to its sampling space")
    return moments


def check_layout(moments: GaussianMoments, shape) -> None:
    """Image moments serve image latents (C, H, W), video moments video latents (C, T, H, W); MomentsError otherwise."""
    shape = tuple(int(s) for s in shape)
    dims = "×".join(map(str, shape))
    if len(shape) not in (3, 4):
        raise MomentsError(f"a latent is (B, C, H, W) for images or (B, C, T, H, W) for video; this one is "
                           f"B×{dims} ({len(shape) + 1}-D), which teleport cannot serve")
    if len(shape) == 4 and not is_video_moments(moments):
        raise MomentsError(
            f"the latent is a video latent (B×{dims}, B×C×T×H×W) but these are image moments ({moments.structure}, "
            f"latent {'×'.join(map(str, moments.latent_shape))} C×H×W): video and audio latents are not served by "
            "image moments. Load or estimate video moments for this model (moments.video: estimate_video_moments "
            "on its video latents, or video_moments_from_vae_stats from its VAE's latents_mean / latents_std)")
    if len(shape) == 3 and is_video_moments(moments):
        moments.check_channels(shape)     # names the fix (image moments, or the frame axis)


class _Cache:
    """Per moments object (weakly held): a few recent results by key."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_moments: "weakref.WeakKeyDictionary[GaussianMoments, OrderedDict]" = weakref.WeakKeyDictionary()

    def get(self, moments, key, make):
        with self._lock:
            entries = self._by_moments.get(moments)
            if entries is not None and key in entries:
                entries.move_to_end(key)
                return entries[key]
        value = make()
        with self._lock:
            entries = self._by_moments.setdefault(moments, OrderedDict())
            entries[key] = value
            while len(entries) > CACHE_PER_MOMENTS:
                entries.popitem(last=False)
        return value

    def clear(self):
        with self._lock:
            self._by_moments.clear()


_CONVERTED = _Cache()
_BOUND = _Cache()


def bind_moments(moments: GaussianMoments, shape, *, latent_format: LatentFormat | str | None = None,
                 parameterization: Parameterization | str = "ve", device=None) -> ModelGaussian:
    """The Gaussian of ``moments`` in a model's sampling space at latent ``shape`` (C, H, W), cached.

    ``latent_format``: the model's (a name in LATENT_FORMATS or VIDEO_LATENT_FORMATS, or a LatentFormat,
    e.g. read off a host's map); raw moments are converted exactly, moments made for another family are
    refused. None: the moments are already in the sampler's space. ``shape`` is (C, T, H, W) for video
    latents, which need video moments. Raises MomentsError naming what does not fit.
    """
    shape = tuple(int(s) for s in shape)
    check_layout(moments, shape)
    fmt = None if latent_format is None else as_format(latent_format)
    param = as_parameterization(parameterization)
    if fmt is None or moments.space == "model":
        converted = sampler_space(moments, fmt)    # checks only; the same object comes back
    else:
        converted = _CONVERTED.get(moments, fmt, lambda: sampler_space(moments, fmt))
    dtype = compute_dtype(converted)
    device = torch.device(device) if device is not None else torch.device("cpu")
    op = _BOUND.get(converted, (shape, str(device), dtype), lambda: converted.operator(shape, device, dtype))
    return ModelGaussian(converted, op, param)


def clear_binding_cache():
    """Drop every cached conversion and operator (they are rebuilt on the next call)."""
    _CONVERTED.clear()
    _BOUND.clear()
