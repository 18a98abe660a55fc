"""The Gaussian-teleport sampler in k-diffusion's function form.

from: Wang & Vastola, arXiv 2311.10892, §"Gaussian teleportation": replace the high-noise steps by the
closed-form flow of the data's Gaussian, then let an ordinary sampler finish the schedule. The mean
may come from the model itself (one call at the start), which makes the jump prompt-aware under
classifier-free guidance: μ̂ = (I + α²Σ/σ²)·D − (αΣ/σ²)·x is exact for a Gaussian.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import torch

from ..moments.base import GaussianMoments, MomentsError
from ..moments.latent_formats import LatentFormat
from .binding import ModelGaussian, bind_moments
from .handoff import Handoff, TeleportPlan, plan_teleport, schedule_tensor
from .parameterization import Parameterization
from .settings import DEFAULT_HANDOFF, DEFAULT_MEAN, DEFAULT_MODE, check_mean, check_on_mismatch

log = logging.getLogger("gaussian_teleport")

MomentsSource = "GaussianMoments | Callable[[], GaussianMoments]"


def check_latent(x: torch.Tensor, *, video: bool = False) -> None:
    """A floating (B, C, H, W) latent, or with ``video`` also (B, C, T, H, W); ValueError naming what else was given."""
    dims = (4, 5) if video else (4,)
    if not isinstance(x, torch.Tensor) or x.dim() not in dims:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        if isinstance(x, torch.Tensor) and x.dim() == 5:
            raise ValueError(f"this path works on image latents (B, C, H, W); got the video latent {shape}. Video "
                             "latents (B, C, T, H, W) are taken by the teleport sampler (sample_teleport) and "
                             "teleport_jump with video moments")
        raise ValueError(f"teleport works on image latents (B, C, H, W){' and video latents (B, C, T, H, W)' * video}; "
                         f"got {shape} (audio latents are not supported)")
    if not x.is_floating_point():
        raise ValueError(f"the latent must be floating point, got {x.dtype}")


def sampler_sigmas(sigmas, x: torch.Tensor) -> torch.Tensor:
    """The schedule as the sampler gets it: a floating tensor as given; a list, numpy array or integer tensor as a
    float tensor on x's device (float64; float32 on MPS, which has none), so no plan is truncated to integers."""
    if isinstance(sigmas, torch.Tensor) and sigmas.is_floating_point():
        return sigmas
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    return schedule_tensor(sigmas).to(device=x.device, dtype=dtype)


def teleport_jump(moments: GaussianMoments, x: torch.Tensor, sigma_from: float, sigma_to: float,
                  parameterization: Parameterization | str = "ve", latent_format: LatentFormat | str | None = None):
    """Jump x from σ_T to σ (sampler units); returns (x at σ, the Gaussian x0 prediction at σ_T)."""
    gauss = bind_moments(moments, x.shape[1:], latent_format=latent_format, parameterization=parameterization,
                         device=x.device)
    xc = x.to(gauss.dtype)
    (_, x0), (landed, _) = gauss.trajectory(xc, sigma_from, [sigma_from, sigma_to])
    return landed.to(x.dtype), x0.to(x.dtype)


def _offset_callback(callback, offset: int):
    if callback is None or offset == 0:
        return callback
    return lambda info: callback({**info, "i": info["i"] + offset})


def jump(model, x: torch.Tensor, sigmas: torch.Tensor, plan: TeleportPlan, gauss: ModelGaussian,
         extra_args: dict, callback) -> torch.Tensor:
    """x carried from sigmas[0] to the plan's hand-off: the model-mean probe (if any), then the closed form.

    Callbacks: in save mode one per replaced step (x and x0 on the Gaussian's path; the first carries the
    probe's x0 when there is one), so progress bars and previews count the real steps; in same_budget
    mode only the probe's.
    """
    xc = x.to(gauss.dtype)
    probed = model(x, float(plan.sigma_from) * x.new_ones([x.shape[0]]), **extra_args) if plan.probe_calls else None
    mean = None if probed is None else gauss.implied_mean(xc, probed.to(gauss.dtype), plan.sigma_from)
    shown = sigmas[:plan.skipped].tolist() if plan.mode == "save" and callback is not None else []
    *path, (landed, _) = gauss.trajectory(xc, plan.sigma_from, shown + [plan.sigma_to], mean)
    if callback is not None:
        if probed is not None:   # the first preview is the model's own x0 at the start
            path = [(xc, probed)] + path[1:]
        for i, (xi, di) in enumerate(path):
            callback({"x": xi.to(x.dtype), "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                      "denoised": di.to(x.dtype)})
    return landed.to(x.dtype)


def sample_teleport(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                    moments: MomentsSource, sampler: Callable, handoff: Handoff | str = DEFAULT_HANDOFF,
                    mode: str = DEFAULT_MODE, mean: str = DEFAULT_MEAN, parameterization: Parameterization | str = "ve",
                    latent_format: LatentFormat | str | None = None, no_jump: str | None = None,
                    img2img: bool = False, on_plan: Callable[[TeleportPlan], None] | None = None,
                    on_mismatch: str = "raise", **sampler_options):
    """Jump from sigmas[0] to the hand-off in closed form, then run ``sampler`` on the rest.

    ``x`` is taken as given at sigmas[0] (the host has already scaled the noise). ``moments`` are in the
    sampler's space, or raw ones with the model's ``latent_format``; a callable is called only when a
    jump happens (lazy loading). ``mean``: "data" (the moments' mean) or "model" (each sample's mean
    from one model call at sigmas[0]). ``no_jump``: a host's reason to pass through (an inpainting
    mask). With no jump this calls ``sampler`` with exactly the arguments it was given, so the result is
    bit-identical. ``on_plan`` receives the plan (the record to show) before any model call.
    ``on_mismatch="pass"``: moments that do not fit this latent (a hires pass at another size) run the
    sampler unchanged with the reason recorded, instead of raising.
    """
    check_latent(x, video=True)
    check_mean(mean)
    check_on_mismatch(on_mismatch)
    sigmas = sampler_sigmas(sigmas, x)
    plan = plan_teleport(sigmas, handoff, mode, parameterization, mean=mean, no_jump=no_jump, img2img=img2img,
                         can_respace=True)
    gauss = None
    if plan.jumped:   # bind before anything runs, so a mismatch stops the run before any model call
        source = moments() if callable(moments) else moments
        if not isinstance(source, GaussianMoments):
            raise MomentsError(f"teleport needs Gaussian moments, got {type(source).__name__}")
        try:
            gauss = bind_moments(source, x.shape[1:], latent_format=latent_format,
                                 parameterization=plan.parameterization, device=x.device)
        except MomentsError as exc:
            if on_mismatch != "pass":
                raise
            plan = plan.without_jump(f"the moments do not fit this pass ({exc})")
    log.info(plan.summary())
    if on_plan is not None:
        on_plan(plan)
    if not plan.jumped:
        return sampler(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                       **sampler_options)
    if x.shape[0] == 0:
        return x.clone()
    x = jump(model, x, sigmas, plan, gauss, extra_args or {}, callback)
    if plan.sampler_steps == 0:          # a jump-only stage: its last sigma is reached in closed form
        return x
    rest = plan.sigmas.to(device=sigmas.device, dtype=sigmas.dtype)
    return sampler(model, x, rest, extra_args=extra_args, callback=_offset_callback(callback, plan.step_offset),
                   disable=disable, **sampler_options)


def make_teleport_sampler(sampler: Callable, moments: MomentsSource, handoff: Handoff | str = DEFAULT_HANDOFF, *,
                          mode: str = DEFAULT_MODE, mean: str = DEFAULT_MEAN,
                          parameterization: Parameterization | str = "ve",
                          latent_format: LatentFormat | str | None = None,
                          on_plan: Callable[[TeleportPlan], None] | None = None, **sampler_options):
    """A k-diffusion-form function fn(model, x, sigmas, extra_args, callback, disable) with teleport."""
    Handoff.parse(handoff)
    check_mean(mean)
    check_on_mismatch(sampler_options.get("on_mismatch", "raise"))
    fn = functools.partial(sample_teleport, moments=moments, sampler=sampler, handoff=handoff, mode=mode, mean=mean,
                           parameterization=parameterization, latent_format=latent_format, on_plan=on_plan,
                           **sampler_options)
    functools.update_wrapper(fn, sample_teleport)
    return fn
