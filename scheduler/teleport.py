"""The Gaussian-teleport sampler in k-diffusion's function form.

from: Wang & Vastola, arXiv 2311.10892, §"Gaussian teleportation": replace the high-noise steps by the
closed-form flow of the data's Gaussian, then let an ordinary sampler finish the schedule.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import torch

from ..moments.gaussian import gaussian_flow_and_x0
from ..moments.structures import GaussianMoments
from .handoff import Handoff, TeleportPlan, plan_teleport

log = logging.getLogger("gaussian_teleport")

PARAMETERIZATIONS = ("ve", "flow")


def path_alpha(parameterization: str, sigma: float) -> float:
    """α(σ) of the host's sampling space: 1 for VE models, 1 − σ for rectified flow (σ = t)."""
    if parameterization == "ve":
        return 1.0
    if parameterization == "flow":
        return 1.0 - float(sigma)
    raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")


def compute_dtype(ref: GaussianMoments | torch.Tensor) -> torch.dtype:
    """At least float32; float64 when the moments (or tensor) are float64, the reference precision."""
    dtype = ref.mean.dtype if isinstance(ref, GaussianMoments) else ref.dtype
    return torch.promote_types(dtype, torch.float32)


def teleport_jump(moments: GaussianMoments, x: torch.Tensor, sigma_from: float, sigma_to: float,
                  parameterization: str = "ve"):
    """Jump x from σ_T to the hand-off σ; returns (x at hand-off, Gaussian x0 prediction at σ_T)."""
    op = moments.operator(x.shape[1:], device=x.device, dtype=compute_dtype(moments))
    a0, a1 = path_alpha(parameterization, sigma_from), path_alpha(parameterization, sigma_to)
    x_new, x0 = gaussian_flow_and_x0(op, x.to(op.mean.dtype), sigma_from, sigma_to, a0, a1)
    return x_new.to(x.dtype), x0.to(x.dtype)


def _offset_callback(callback, offset: int):
    if callback is None or offset == 0:
        return callback
    return lambda info: callback({**info, "i": info["i"] + offset})


def sample_teleport(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                    moments: GaussianMoments, sampler: Callable, handoff: Handoff | str,
                    mode: str = "save", parameterization: str = "ve",
                    on_plan: Callable[[TeleportPlan], None] | None = None, **sampler_options):
    """Jump from sigmas[0] to the hand-off in closed form, then run ``sampler`` on the rest.

    ``moments`` must be in the sampler's (model) space. ``x`` is taken as given at sigmas[0] (the host
    has already scaled the noise). With no jump (hand-off at or above sigmas[0], or 0 steps) this calls
    ``sampler`` with exactly the arguments it was given, so the result is bit-identical.
    """
    handoff = Handoff.parse(handoff) if isinstance(handoff, str) else handoff
    plan = plan_teleport(sigmas, handoff, mode)
    log.info(plan.summary())
    if on_plan is not None:
        on_plan(plan)
    if not plan.jumped:
        return sampler(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                       **sampler_options)
    x, x0 = teleport_jump(moments, x, plan.sigma_from, plan.sigma_to, parameterization)
    if callback is not None:
        callback({"x": x, "i": max(plan.step_offset - 1, 0), "sigma": sigmas[0], "sigma_hat": sigmas[0],
                  "denoised": x0})
    rest = plan.sigmas.to(device=sigmas.device, dtype=sigmas.dtype)
    return sampler(model, x, rest, extra_args=extra_args, callback=_offset_callback(callback, plan.step_offset),
                   disable=disable, **sampler_options)


def make_teleport_sampler(sampler: Callable, moments: GaussianMoments, handoff: Handoff | str, *,
                          mode: str = "save", parameterization: str = "ve",
                          on_plan: Callable[[TeleportPlan], None] | None = None, **sampler_options):
    """A k-diffusion-form function fn(model, x, sigmas, extra_args, callback, disable) with teleport."""
    fn = functools.partial(sample_teleport, moments=moments, sampler=sampler, handoff=handoff, mode=mode,
                           parameterization=parameterization, on_plan=on_plan, **sampler_options)
    functools.update_wrapper(fn, sample_teleport)
    return fn
