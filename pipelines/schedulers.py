"""The diffusers schedulers teleport covers, the frame each one's latents live in, and the cut schedule.

A pipeline sets its scheduler's schedule itself, inside its ``__call__`` (number of steps, Karras
sigmas, SD3's shift, Flux's resolution-dependent ``mu``, custom ``sigmas=``/``timesteps=``). Rather
than re-deriving any of that, teleport hands the pipeline a ``ScheduleCut``: a copy of its own
scheduler that lets ``set_timesteps`` build the full schedule exactly as in the plain call, records
it, and then keeps only part of it:

- ``record``: no step at all (the pipeline returns its start noise without a model call);
- ``skip``: every step after the first ``skip`` (the steps the jump replaced): the same sigmas and
  timesteps as the plain call's tail, run by the scheduler's own arithmetic from fresh state;
- ``probe``: one step from the schedule's start (or a given sigma) straight to 0, which returns the
  guided x0 prediction for these first-order final steps.

Frames: Euler and Heun keep x = x0 + σε (VE); DPM-Solver++ keeps the VP sample x/√(1 + σ²); the
flow-matching Euler scheduler keeps x = (1 − t)x0 + tε. ``scheduler.sigmas`` are VE sigmas (or t)
in every case, which are the units the core's plans use.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from dataclasses import dataclass

import torch

from .families import Family, require_diffusers

MODES = ("record", "skip", "probe")


@dataclass(frozen=True)
class SchedulerKind:
    scheduler: str          # the diffusers class name
    name: str               # what the sampler is called in this project (euler, heun, dpmpp_2m, flow euler)
    frame: str              # "ve", "vp" or "flow": what a latent of the scheduler means
    interleaved: bool = False   # Heun: every sigma after the first is listed twice (one per model call)

    @property
    def parameterization(self) -> str:
        return "flow" if self.frame == "flow" else "ve"

    def schedule(self, scheduler) -> torch.Tensor:
        """The schedule as one sigma per step plus the last (k-diffusion form), float64 on the CPU."""
        sigmas = scheduler.sigmas.detach().to("cpu", torch.float64)
        if self.interleaved:
            sigmas = torch.cat([sigmas[:1], sigmas[1::2]])
        return sigmas

    def drop_steps(self, scheduler, k: int) -> None:
        """Keep the schedule after its first ``k`` steps (the scheduler's state is fresh after set_timesteps)."""
        per = 2 if self.interleaved else 1
        scheduler.timesteps = scheduler.timesteps[per * k:]
        scheduler.sigmas = scheduler.sigmas[per * k:]
        scheduler.num_inference_steps = len(self.schedule(scheduler)) - 1

    def first_step_to_zero(self, scheduler, sigma: float | None = None) -> None:
        """One step from the schedule's start, or from ``sigma`` (sampler units), straight to 0."""
        timesteps, sigmas = scheduler.timesteps, scheduler.sigmas
        if sigma is None:
            start, t = sigmas[:1], timesteps[:1]
        else:
            start = torch.tensor([float(sigma)], dtype=sigmas.dtype, device=sigmas.device)
            # float even where the scheduler's own timesteps are whole numbers (DPM-Solver): the exact one for σ
            t = torch.tensor([self.timestep(scheduler, float(sigma))], dtype=torch.float32, device=timesteps.device)
        scheduler.sigmas = torch.cat([start, torch.zeros_like(start)])
        scheduler.timesteps = t
        scheduler.num_inference_steps = 1

    def timestep(self, scheduler, sigma: float) -> float:
        """The timestep the scheduler gives the denoiser at ``sigma`` (as its own set_timesteps computes it)."""
        cfg = scheduler.config
        if self.frame == "flow":
            return sigma * cfg.num_train_timesteps
        if getattr(cfg, "timestep_type", "discrete") == "continuous" and cfg.prediction_type == "v_prediction":
            return 0.25 * math.log(sigma)
        import numpy as np

        cumprod = scheduler.alphas_cumprod
        log_sigmas = np.log(np.array(((1 - cumprod) / cumprod) ** 0.5))      # as the scheduler computes them
        return float(scheduler._sigma_to_t(np.array(sigma), log_sigmas))

    def to_core(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """A scheduler latent at ``sigma`` in the core's frame (VE, or flow as is)."""
        return x * math.sqrt(1.0 + sigma * sigma) if self.frame == "vp" else x

    def from_core(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x / math.sqrt(1.0 + sigma * sigma) if self.frame == "vp" else x


KINDS = (
    SchedulerKind("EulerDiscreteScheduler", "euler", "ve"),
    SchedulerKind("HeunDiscreteScheduler", "heun", "ve", interleaved=True),
    SchedulerKind("DPMSolverMultistepScheduler", "dpmpp_2m", "vp"),
    SchedulerKind("FlowMatchEulerDiscreteScheduler", "euler", "flow"),
)
SUPPORTED = ("EulerDiscreteScheduler, HeunDiscreteScheduler and DPMSolverMultistepScheduler (algorithm_type "
             "'dpmsolver++', DPM++ 2M) on Stable Diffusion 1.x/2.x and SDXL; FlowMatchEulerDiscreteScheduler on "
             "SD3 and Flux; Karras sigmas and custom sigmas or timesteps included")


def scheduler_kind(scheduler, family: Family) -> SchedulerKind:
    """The kind of ``scheduler`` on this pipeline family; ValueError naming what is covered and the fix."""
    diffusers = require_diffusers()
    name = type(scheduler).__name__
    kind = next((k for k in KINDS if isinstance(scheduler, getattr(diffusers, k.scheduler))), None)
    fix = ("e.g. pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)" if not family.flow
           else "SD3 and Flux ship with FlowMatchEulerDiscreteScheduler")
    if kind is None:
        raise ValueError(f"teleport does not cover {name}; it covers {SUPPORTED}: {fix}")
    if kind.parameterization != family.parameterization:
        raise ValueError(f"{name} does not sample {family.pipeline} the way teleport expects; it covers {SUPPORTED}")
    cfg = scheduler.config
    problem = None
    if kind.scheduler == "DPMSolverMultistepScheduler":
        if cfg.algorithm_type != "dpmsolver++":
            problem = f"algorithm_type {cfg.algorithm_type!r} (teleport covers 'dpmsolver++')"
        elif getattr(cfg, "use_flow_sigmas", False):
            problem = "use_flow_sigmas (flow sigmas on a VE pipeline)"
    elif kind.scheduler == "FlowMatchEulerDiscreteScheduler":
        if getattr(cfg, "stochastic_sampling", False):
            problem = "stochastic_sampling (fresh noise at every step)"
        elif getattr(cfg, "invert_sigmas", False):
            problem = "invert_sigmas"
    if problem:
        raise ValueError(f"teleport does not cover {name} with {problem}; it covers {SUPPORTED}")
    return kind


class ScheduleCut:
    """The pipeline's scheduler (a copy), keeping part of every schedule the pipeline sets (see the module).

    Everything but ``set_timesteps`` and ``init_noise_sigma`` is the copied scheduler's own. The
    latents the pipeline is given are already where the kept part starts, so they are not scaled
    (``init_noise_sigma`` 1). After the call, ``sigmas`` is the full schedule in sampler units and
    ``start_scale`` the full schedule's ``init_noise_sigma``.
    """

    init_noise_sigma = 1.0

    def __init__(self, scheduler, kind: SchedulerKind, mode: str, skip: int = 0, sigma: float | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.inner = copy.deepcopy(scheduler)
        self.kind, self.mode, self.skip, self.sigma = kind, mode, int(skip), sigma
        self.sigmas: torch.Tensor | None = None
        self.start_scale = None

        def set_timesteps(*args, **kwargs):
            self.inner.set_timesteps(*args, **kwargs)
            self.sigmas = kind.schedule(self.inner)
            self.start_scale = getattr(self.inner, "init_noise_sigma", 1.0)   # flow schedulers have none
            self._cut()

        functools.update_wrapper(set_timesteps, self.inner.set_timesteps)   # the pipeline inspects its signature
        self.set_timesteps = set_timesteps

    def _cut(self) -> None:
        s = self.inner
        if self.mode == "record":
            s.timesteps = s.timesteps[:0]
        elif self.mode == "skip":
            steps = len(self.sigmas) - 1
            if not 0 <= self.skip < steps:
                raise ValueError(f"cannot skip {self.skip} of the pipeline's {steps} steps: the schedule changed "
                                 "between the calls (pass the same num_inference_steps, sigmas or timesteps)")
            self.kind.drop_steps(s, self.skip)
        else:
            self.kind.first_step_to_zero(s, self.sigma)

    def __getattr__(self, name):
        if name == "inner":      # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


@contextlib.contextmanager
def running(pipe, scheduler, quiet: bool = False):
    """``pipe`` with ``scheduler`` in place (and its progress bar off if ``quiet``) for one call; restored after.

    Assigning ``pipe.scheduler`` is diffusers' own way to change a pipeline's scheduler; the original
    one (and the progress bar settings) come back even when the call fails.
    """
    original, bar = pipe.scheduler, getattr(pipe, "_progress_bar_config", None)
    pipe.scheduler = scheduler
    if quiet:
        pipe.set_progress_bar_config(**{**(bar or {}), "disable": True})
    try:
        yield pipe
    finally:
        pipe.scheduler = original
        if quiet:
            if bar is None:
                del pipe._progress_bar_config
            else:
                pipe._progress_bar_config = bar
