"""Teleport for diffusers pipelines: the pipeline's own scheduler and guidance run, the jump replaces the first steps.

One ``teleport(pipe, moments, **call)`` does what ``pipe(**call)`` does, in up to three pipeline calls
with the same arguments:

1. record: the pipeline draws its start noise from the call's generator exactly as the plain call
   would, and sets its schedule (steps, Karras, shift, ``mu``), but runs no step (no model call);
2. probe (mean "model" only): one step from the start straight to 0 gives the guided x0 prediction D
   of each sample (CFG, prompt, LoRA included); the mean the model implies, μ̂, comes from the core;
3. the closed-form Gaussian jump from the start to the hand-off, then the pipeline runs the rest of
   its own schedule from the jumped latents.

Without a jump (a hand-off at or above the schedule's start, ``steps:0``) the pipeline runs once more
from the recorded noise, which gives the plain call's result bit for bit.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Callable

import torch

from ..moments.base import GaussianMoments, MomentsError
from ..moments.files import load_moments
from ..scheduler.binding import bind_moments
from ..scheduler.handoff import Handoff, TeleportPlan, plan_teleport
from ..scheduler.settings import DEFAULT_HANDOFF, DEFAULT_MEAN, check_mean
from .families import Family, image_latents, latent_format, pipeline_family, pipeline_latents
from .schedulers import ScheduleCut, SchedulerKind, running, scheduler_kind

log = logging.getLogger("gaussian_teleport")

# Keyword arguments of a pipeline call that the internal record and probe calls leave out.
CALLBACKS = ("callback", "callback_steps", "callback_on_step_end", "callback_on_step_end_tensor_inputs")


def as_moments(moments) -> GaussianMoments:
    """Moments given as an object or a file path (loaded here; load once and pass the object to reuse it)."""
    if isinstance(moments, GaussianMoments):
        return moments
    if isinstance(moments, (str, os.PathLike)):
        return load_moments(moments)
    raise MomentsError(f"teleport needs Gaussian moments or the path of a moments file, got {type(moments).__name__}")


def never_jumps(handoff: Handoff) -> bool:
    """A hand-off that replaces no step on any schedule (so the plain call runs directly)."""
    return (handoff.kind in ("steps", "fraction") and handoff.value == 0) or \
        (handoff.kind == "sigma" and math.isinf(handoff.value))


def internal_call(pipe, cut: ScheduleCut, call: dict, latents=None) -> torch.Tensor:
    """The pipeline's latents at the end of a run with ``cut`` as its scheduler (no callbacks, no progress bar)."""
    args = {k: v for k, v in call.items() if k not in CALLBACKS}
    args.update(output_type="latent", return_dict=False)
    if latents is not None:
        args["latents"] = latents
    with running(pipe, cut, quiet=True):
        return pipe(**args)[0]


def record_start(pipe, kind: SchedulerKind, call: dict) -> tuple[torch.Tensor, ScheduleCut]:
    """(the start noise as the pipeline draws it, unscaled; the cut holding the full schedule), no model call."""
    cut = ScheduleCut(pipe.scheduler, kind, "record")
    noise = internal_call(pipe, cut, call)
    if cut.sigmas is None:
        raise RuntimeError(f"{type(pipe).__name__} did not set its scheduler's timesteps; teleport cannot follow it")
    return noise, cut


def model_mean(pipe, kind: SchedulerKind, family: Family, gauss, call: dict, x_start: torch.Tensor,
               x_core: torch.Tensor, plan: TeleportPlan) -> torch.Tensor:
    """μ̂ per sample from one guided x0 prediction of the pipeline at the schedule's start."""
    denoised = internal_call(pipe, ScheduleCut(pipe.scheduler, kind, "probe"), call, latents=x_start)
    denoised = image_latents(pipe, family, denoised, call).to(gauss.dtype)
    return gauss.implied_mean(x_core, denoised, plan.sigma_from)


def teleport(pipe, moments, *, handoff: Handoff | str = DEFAULT_HANDOFF, mean: str = DEFAULT_MEAN,
             on_plan: Callable[[TeleportPlan], None] | None = None, **call):
    """``pipe(**call)`` with the first steps replaced by the closed-form Gaussian jump; returns the pipeline's output.

    ``moments``: raw VAE-space moments of this model family (converted with the pipeline's VAE scale
    and shift), model-space moments, or a moments file path. ``handoff``: where the pipeline's own
    sampler takes over ('sigma:5' a noise level σ/α on every model, 'steps:4', 'fraction:0.25').
    ``mean``: "model" (each sample's mean from one guided prediction; one extra model call) or "data".
    Give ``generator=`` for reproducible results: the same generator gives the plain call's start noise.
    ``on_plan`` receives the plan (what is replaced) before the model runs.
    """
    check_mean(mean)
    handoff = Handoff.parse(handoff)
    family = pipeline_family(pipe)
    kind = scheduler_kind(pipe.scheduler, family)
    if never_jumps(handoff):
        return pipe(**call)
    with torch.no_grad():
        noise, record = record_start(pipe, kind, call)
        plan = plan_teleport(record.sigmas, handoff, "save", kind.parameterization, mean=mean)
        gauss = None
        if plan.jumped:   # bind before any model call, so moments that do not fit stop the run here
            x_start = noise * record.start_scale          # the plain call's scaling, in its dtype
            image = image_latents(pipe, family, x_start, call)
            gauss = bind_moments(as_moments(moments), image.shape[1:], latent_format=latent_format(pipe, family),
                                 parameterization=kind.parameterization, device=image.device)
        log.info(plan.summary())
        if on_plan is not None:
            on_plan(plan)
        if not plan.jumped:
            return pipe(**{**call, "latents": noise})
        x_core = kind.to_core(image.to(gauss.dtype), plan.sigma_from)
        mu = model_mean(pipe, kind, family, gauss, call, x_start, x_core, plan) if plan.probe_calls else None
        (landed, _), = gauss.trajectory(x_core, plan.sigma_from, [plan.sigma_to], mu)
        jumped = pipeline_latents(pipe, family, kind.from_core(landed, plan.sigma_to).to(noise.dtype))
    with running(pipe, ScheduleCut(pipe.scheduler, kind, "skip", skip=plan.skipped)):
        return pipe(**{**call, "latents": jumped})


def teleport_plan(pipe, handoff: Handoff | str = DEFAULT_HANDOFF, mean: str = DEFAULT_MEAN, **call) -> TeleportPlan:
    """The plan ``teleport`` would follow for this call (a record call: the text encoders run, the model does not).

    Like the pipeline, it draws the start noise from the call's generator: give the run a fresh one.
    """
    family = pipeline_family(pipe)
    kind = scheduler_kind(pipe.scheduler, family)
    with torch.no_grad():
        _, record = record_start(pipe, kind, call)
    return plan_teleport(record.sigmas, Handoff.parse(handoff), "save", kind.parameterization, mean=mean)
