"""Where the jump hands off to the sampler, and what schedule the sampler then runs.

The hand-off is given in one of three units:
- ``sigma``: a noise level σ/α (the unit rule of parameterization.py: the same number on every
  model; ∞ means "never jump"); in "save" mode the jump lands on the first schedule sigma at or below it, within a
  relative tolerance of 1e-3 so that a value printed to 4 significant digits lands on the same step. It never
  lands far past the hand-off: when that sigma is below LANDING_FLOOR × the hand-off (a coarse schedule: 2–8
  steps), a caller that runs the plan's sigmas (``can_respace``, every k-diffusion host) lands on the hand-off
  itself and the sampler's remaining steps are re-spaced below it; any other caller lands on the last schedule
  step above the hand-off (or does not jump, saying why);
- ``steps``: how many of the schedule's steps the jump replaces (a whole number);
- ``fraction``: the share of the schedule's steps the jump replaces (rounded to whole steps).

Schedule modes:
- ``save``: drop the replaced steps, so the sampler makes fewer model calls;
- ``same_budget``: re-space the sampler's original number of steps over [hand-off, end], following
  the original schedule's shape in log-sigma, so the call count matches the run without teleport.

A schedule that ends above 0 is a stage of a longer run (SplitSigmas): when the hand-off is at or below its
last sigma, the jump replaces all its steps and reaches that sigma in closed form (a jump-only stage); the
next stage continues from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .parameterization import VE, Parameterization, format_sigma, parameterization as as_parameterization

KINDS = ("sigma", "steps", "fraction")
MODES = ("save", "same_budget")
SIGMA_RTOL = 1e-3       # a typed-back σ with 4 significant digits lands on the same schedule step
FLOW_LOWEST_SIGMA = 1.0  # below σ 1 (t 0.5) a flow hand-off replaces most of the range: see plan_teleport
LANDING_FLOOR = 0.8      # a save-mode jump lands on a schedule step only down to 0.8 × the hand-off's noise level


@dataclass(frozen=True)
class Handoff:
    kind: str
    value: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"hand-off unit must be one of {KINDS}, got {self.kind!r}")
        if type(self.value).__name__ in ("bool", "bool_"):      # Python's and numpy's: float(True) would be 1.0
            raise ValueError(f"hand-off {self.kind} must be a number, got {self.value!r}")
        if isinstance(self.value, str) and "_" in self.value:   # float('5_0') is 50
            raise ValueError(f"hand-off {self.kind} must be a plain number, got {self.value!r}: write it without "
                             "'_' (e.g. 5.0)")
        try:
            v = float(self.value)
        except (TypeError, ValueError):
            raise ValueError(f"hand-off {self.kind} must be a number, got {self.value!r}") from None
        if math.isnan(v) or v < 0 or (math.isinf(v) and self.kind != "sigma"):
            raise ValueError(f"hand-off {self.kind} must be a finite number ≥ 0, got {self.value!r}")
        if self.kind == "steps" and v != int(v):
            raise ValueError(f"hand-off steps must be a whole number of steps, got {self.value!r}; "
                             "use the fraction unit for a share of the schedule")
        if self.kind == "fraction" and v >= 1:
            raise ValueError(f"hand-off fraction must be below 1 (the model needs some steps), got {v:g}")
        object.__setattr__(self, "value", v)

    @classmethod
    def parse(cls, text) -> "Handoff":
        """'sigma:5.0', 'steps:4', 'fraction:0.25', or a Handoff."""
        if isinstance(text, Handoff):
            return text
        kind, sep, value = str(text).partition(":")
        if not sep:
            raise ValueError(f"hand-off {text!r} must look like 'sigma:5.0', 'steps:4' or 'fraction:0.25'")
        try:
            return cls(kind.strip(), value.strip())
        except ValueError as exc:
            raise ValueError(f"hand-off {text!r}: {exc}") from None

    def __str__(self):
        if self.kind == "steps":
            return f"steps:{int(self.value)}"
        return f"{self.kind}:{format_sigma(self.value) if self.kind == 'sigma' else f'{self.value:g}'}"


@dataclass(frozen=True)
class TeleportPlan:
    """What a teleport run does; the record hosts log and show. ``sigmas`` is what the sampler runs."""

    jumped: bool
    sigma_from: float          # σ_T in the sampler's units (sigmas[0])
    sigma_to: float            # where the sampler takes over, in the sampler's units
    skipped: int               # schedule steps the jump replaces
    steps: int                 # steps of the original schedule
    step_offset: int           # added to the inner sampler's step index in callbacks
    sigmas: torch.Tensor
    mode: str
    reason: str
    parameterization: Parameterization = VE
    mean: str = "data"         # where the jump's mean comes from: "data" (the moments) or "model" (one call)
    _original: torch.Tensor | None = None
    note: str = ""             # how the landing was chosen, when it is not simply the schedule's step

    @property
    def sampler_steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def probe_calls(self) -> int:
        """Model calls the teleport makes itself (the model-mean probe)."""
        return int(self.jumped and self.mean == "model")

    @property
    def noise_level_to(self) -> float:
        """The hand-off as a noise level σ/α (the unit a user types)."""
        return self.parameterization.noise_level(self.sigma_to)

    def without_jump(self, reason: str) -> "TeleportPlan":
        """The same schedule run unchanged, and why."""
        return TeleportPlan(False, self.sigma_from, self.sigma_from, 0, self.steps, 0, self.original, self.mode,
                            reason + ": the sampler runs unchanged", self.parameterization, self.mean)

    @property
    def original(self) -> torch.Tensor:
        """The full schedule the plan was made for (before the jump cut it)."""
        return self._original if self._original is not None else self.sigmas

    def where(self, sigma: float) -> str:
        return self.parameterization.describe_sigma(sigma)

    def summary(self) -> str:
        """One line for the log: what happened, or why nothing did."""
        if not self.jumped:
            return f"teleport: no jump: {self.reason}"
        probe = ", mean from one model call" if self.probe_calls else ""
        jump = (f"teleport: jumped {self.where(self.sigma_from)} → {self.where(self.sigma_to)} in closed form "
                f"{self.reason}{probe}")
        note = f" ({self.note})" if self.note else ""
        if self.sampler_steps == 0:
            return f"{jump}, replacing all {self.steps} steps; the sampler runs none{note}"
        if self.mode == "save":
            runs = "runs" if self.note else "runs the last"
            return (f"{jump}, replacing {self.skipped} of {self.steps} steps; the sampler {runs} "
                    f"{self.sampler_steps}{note}")
        return (f"{jump} (the noise range of the first {self.skipped} of {self.steps} steps); same_budget: the "
                f"sampler runs all {self.sampler_steps} steps, re-spaced below the hand-off{note}")

    def short(self) -> str:
        """A short value for image metadata: '14.61→4.5, 5/20 steps replaced, save' or 'no jump (…)'."""
        if not self.jumped:
            return f"no jump ({self.reason.split(':')[0]})"
        probe = ", model mean" if self.probe_calls else ""
        span = lambda s: format_sigma(self.parameterization.noise_level(s))  # noqa: E731
        return (f"σ {span(self.sigma_from)}→{span(self.sigma_to)}, {self.skipped}/{self.steps} steps replaced, "
                f"{self.mode}{probe}")


def schedule_tensor(sigmas) -> torch.Tensor:
    """Sigmas as a floating tensor: a tensor as given (integer ones converted to float64, so nothing truncates
    them later), a list, tuple or numpy array as float64; ValueError for anything else."""
    if isinstance(sigmas, torch.Tensor):
        if sigmas.is_complex():
            raise ValueError(f"sigmas must be real noise levels, got a {sigmas.dtype} tensor")
        return sigmas if sigmas.is_floating_point() else sigmas.to(torch.float64)
    if isinstance(sigmas, (list, tuple, np.ndarray)):
        try:
            return torch.as_tensor(np.asarray(sigmas, dtype=np.float64))
        except (TypeError, ValueError):
            raise ValueError(f"sigmas must be a list of numbers, got {sigmas!r}") from None
    raise ValueError(f"sigmas must be a 1-D tensor (or a list or numpy array) of noise levels, got "
                     f"{type(sigmas).__name__}")


def check_schedule(sigmas: torch.Tensor, param: Parameterization = VE) -> int:
    """The number of steps of a valid schedule; ValueError saying what is wrong otherwise."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or len(sigmas) < 2:
        shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise ValueError(f"sigmas must be a 1-D schedule of at least 2 values, got {shape}")
    if torch.isnan(sigmas).any():
        raise ValueError("sigmas contain NaN; the schedule is broken (check the scheduler's settings)")
    if torch.isinf(sigmas).any():
        raise ValueError("sigmas contain an infinite value; a sampler cannot start from infinite noise: use a "
                         "finite sigma_max")
    if bool((sigmas < 0).any()):
        raise ValueError(f"sigmas must be ≥ 0, got {float(sigmas.min()):.4g}")
    if not bool(torch.all(sigmas[1:] <= sigmas[:-1])):
        raise ValueError("sigmas must not increase; restart-style schedules need their own sampler")
    if float(sigmas[0]) <= 0:
        raise ValueError("the schedule starts at σ 0: there is nothing to sample")
    if bool((sigmas[:-1] == 0).any()):
        first = int((sigmas == 0).nonzero()[0])
        raise ValueError(f"sigmas[{first}] is 0 but the schedule goes on to sigmas[{len(sigmas) - 1}]: only the last "
                         "sigma may be 0 (a step from σ 0 divides by zero). End the schedule at its first 0, or build "
                         "it with a sigma_min above 0")
    param.check_schedule_range(sigmas)
    return len(sigmas) - 1


def skipped_steps(sigmas: torch.Tensor, handoff: Handoff, param: Parameterization = VE) -> int:
    """How many leading steps of the schedule the hand-off replaces."""
    n = check_schedule(sigmas, param)
    if handoff.kind == "steps":
        return int(handoff.value)
    if handoff.kind == "fraction":
        return int(math.floor(handoff.value * n + 0.5))
    level = torch.tensor([param.noise_level(float(s)) for s in sigmas[:-1]], dtype=torch.float64)
    return int((level > handoff.value * (1 + SIGMA_RTOL)).sum())


def plan_teleport(sigmas: torch.Tensor, handoff: Handoff | str, mode: str = "save",
                  parameterization: Parameterization | str = VE, *, mean: str = "data",
                  no_jump: str | None = None, img2img: bool = False, can_respace: bool = False) -> TeleportPlan:
    """Decide the jump and the sampler's schedule; ValueError for an impossible hand-off.

    ``no_jump`` is a host's reason to run the sampler unchanged (an inpainting mask); ``img2img`` says the
    start latent carries an image, which the summary then mentions. ``can_respace``: the caller runs the
    plan's ``sigmas`` (any k-diffusion sampler), so a hand-off far above the schedule's next step can be
    landed on exactly, with the remaining steps re-spaced; without it the plan only ever skips leading steps.
    """
    if mode not in MODES:
        raise ValueError(f"schedule mode must be one of {MODES}, got {mode!r}")
    handoff = Handoff.parse(handoff)
    param = as_parameterization(parameterization)
    sigmas = schedule_tensor(sigmas).detach().to("cpu", torch.float64)
    n = check_schedule(sigmas, param)
    s0 = float(sigmas[0])
    if param.is_flow and handoff.kind == "sigma" and handoff.value < FLOW_LOWEST_SIGMA:
        as_t = format_sigma(param.noise_level(handoff.value))
        raise ValueError(
            f"hand-off sigma {handoff.value:g} on a flow model (SD3, Flux): hand-off sigmas are noise levels σ/α, the "
            "same numbers on every model (a flow model's t = σ/(1 + σ)), while version 0.1 of the ComfyUI nodes read "
            f"them as the flow time t. If {handoff.value:g} is a t, enter sigma {as_t} instead. Below sigma "
            f"{FLOW_LOWEST_SIGMA:g} (t 0.5) a jump would replace most of a flow schedule's noise range; use the "
            "steps unit if you mean that")
    k = skipped_steps(sigmas, handoff, param)
    stage = float(sigmas[-1]) > 0      # a stage of a longer run: the next stage starts at its last sigma
    level = lambda i: param.noise_level(float(sigmas[i]))  # noqa: E731
    shown = lambda i: format_sigma(level(i))  # noqa: E731

    def unchanged(reason):
        return TeleportPlan(False, s0, s0, 0, n, 0, sigmas, mode, reason + ": the sampler runs unchanged", param, mean)

    if no_jump:
        return unchanged(no_jump)
    if k == 0:
        if handoff.kind == "sigma":
            start = format_sigma(param.noise_level(s0))
            # Say what is known, never guess a cause: a txt2img schedule that starts below the hand-off is the
            # hand-off being too high for it (or a schedule cut short on purpose).
            why = ("img2img or hires fix: the schedule starts part-way down" if img2img else
                   f"the schedule starts below the hand-off; a hand-off below σ {start} jumps")
            return unchanged(f"hand-off σ {format_sigma(handoff.value)} ≥ schedule start σ {start} ({why})")
        return unchanged(f"hand-off {handoff} replaces no step")
    if k > n or (k == n and not stage):
        raise ValueError(_too_far(handoff, n, sigmas, param))
    reason = "from the image-conditioned start latent (img2img)" if img2img else "from the start noise"
    h = handoff.value
    jump_only = k == n and not (mode == "same_budget" and handoff.kind == "sigma" and h > level(n) * (1 + SIGMA_RTOL))
    far = handoff.kind == "sigma" and mode == "save" and level(k) < LANDING_FLOOR * h
    note = ""
    if far and can_respace:
        # land on the hand-off itself; the sampler's remaining steps (at least one, to reach a stage's end) are
        # re-spaced below it along the schedule's shape
        left = max(n - k, 1)
        note = (f"the schedule's next step, σ {shown(k)}, is far below the hand-off, so the jump lands on the "
                f"hand-off and the sampler's {left} step(s) are re-spaced below it")
        k = n - left
        target = param.schedule_sigma(h)
        return TeleportPlan(True, s0, target, k, n, k, respace(sigmas, target, left), mode, reason, param, mean,
                            sigmas, note)
    if far:
        # this caller can only skip schedule steps: stop on the last one above the hand-off
        note = (f"the schedule's next step, σ {shown(k)}, is far below the hand-off, so the jump stops on the last "
                "step above it")
        k -= 1
        if k == 0:
            return unchanged(f"hand-off σ {format_sigma(h)}: the schedule's first step below σ {shown(0)} is σ "
                             f"{shown(1)}, far past the hand-off (a coarse schedule; add steps or raise the hand-off)")
        return TeleportPlan(True, s0, float(sigmas[k]), k, n, k, sigmas[k:], mode, reason, param, mean, sigmas, note)
    if jump_only:
        note = (f"a jump-only stage: the schedule ends at σ {shown(n)}, not 0, so the next stage continues from "
                "there")
        return TeleportPlan(True, s0, float(sigmas[n]), n, n, n, sigmas[n:], mode, reason, param, mean, sigmas, note)
    target = float(sigmas[k])
    if mode == "same_budget" and handoff.kind == "sigma":
        target = param.schedule_sigma(h)
    if target <= 0:
        raise ValueError(_too_far(handoff, n, sigmas, param))
    if mode == "save":
        rest, offset = sigmas[k:], k
    else:
        rest, offset = respace(sigmas, target, n), 0
    return TeleportPlan(True, s0, target, k, n, offset, rest, mode, reason, param, mean, sigmas)


def _too_far(handoff: Handoff, n: int, sigmas: torch.Tensor, param: Parameterization) -> str:
    """Why the hand-off replaces every step of a schedule that ends at 0 (or more steps than a stage has), and the
    first value that works."""
    stage = float(sigmas[-1]) > 0
    last = format_sigma(param.noise_level(float(sigmas[sigmas > 0][-1])))
    if handoff.kind == "sigma":
        fix = (f"raise the hand-off sigma to {last} or more, the schedule's last noise level before 0 (about 5 is "
               "typical)")
    elif handoff.kind == "steps":
        fix = f"replace at most {n if stage else n - 1} steps"
    else:
        fix = f"lower the fraction below {(n - 0.5) / n:.3g}"
    return (f"hand-off {handoff} would replace {'more than the' if stage else 'all'} {n} steps of the schedule, "
            f"leaving the model no step to run: {fix}, or add steps")


def teleport_sigmas(sigmas: torch.Tensor, handoff: Handoff | str, mode: str = "save",
                    parameterization: Parameterization | str = VE):
    """The schedule the sampler runs after the jump, and the hand-off as a noise level (for split graphs)."""
    sigmas = schedule_tensor(sigmas)
    plan = plan_teleport(sigmas, handoff, mode, parameterization, can_respace=True)
    return plan.sigmas.to(sigmas.dtype), plan.noise_level_to


def respace(sigmas: torch.Tensor, start: float, steps: int) -> torch.Tensor:
    """``steps`` steps from ``start`` to the schedule's end, following its shape in log-sigma.

    The schedule's positive part is read as a curve log σ(u) over its step index u; the new points
    are evenly spaced in u from the index where σ(u) = start to the last positive sigma. Trailing
    zeros (the final denoise to σ = 0) are kept.
    """
    sigmas = sigmas.to(torch.float64)
    pos = sigmas[sigmas > 0]
    zeros = len(sigmas) - len(pos)
    lo, hi = float(pos[-1]), float(pos[0])
    if start > hi * (1 + 1e-12):
        raise ValueError(f"cannot re-space from σ {start:.4g}: it is above the schedule's start σ {hi:.4g}")
    if start <= lo and not (len(pos) == 1 and start == lo):
        raise ValueError(f"same_budget re-spaces the steps between the hand-off and the schedule's last noise "
                         f"level σ {lo:.4g}, but the hand-off σ {start:.4g} is not above it: replace fewer steps, "
                         "or use save mode")
    logs = pos.log()
    u_start = _fractional_index(logs, math.log(start))
    count = steps + 1 - zeros
    if count == 1 and zeros:          # one step, straight to 0
        return torch.cat([sigmas.new_tensor([start]), sigmas.new_zeros(zeros)])
    if count < 2:
        raise ValueError(f"{steps} step(s) leave no room for a re-spaced schedule")
    u = torch.linspace(u_start, len(pos) - 1, count, dtype=torch.float64)
    lo_i = u.floor().long().clamp(max=len(pos) - 2)
    t = u - lo_i
    new = torch.exp(logs[lo_i] * (1 - t) + logs[lo_i + 1] * t)
    new[0] = start
    return torch.cat([new, sigmas.new_zeros(zeros)])


def _fractional_index(logs: torch.Tensor, target: float) -> float:
    """Index u with log σ(u) = target on the piecewise-linear curve through decreasing ``logs``."""
    i = int((logs > target).sum()) - 1
    i = min(max(i, 0), len(logs) - 2)
    a, b = float(logs[i]), float(logs[i + 1])
    return i + (a - target) / (a - b) if a != b else float(i)
