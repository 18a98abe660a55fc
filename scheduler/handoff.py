"""Where the jump hands off to the sampler, and what schedule the sampler then runs.

The hand-off is given in one of three units:
- ``sigma``: a noise level; in "save" mode the jump lands on the first schedule sigma ≤ it;
- ``steps``: how many of the schedule's steps the jump replaces;
- ``fraction``: the share of the schedule's steps the jump replaces (rounded to whole steps).

Schedule modes:
- ``save``: drop the replaced steps, so the sampler makes fewer model calls;
- ``same_budget``: re-space the sampler's original number of steps over [hand-off, end], following
  the original schedule's shape in log-sigma, so the call count matches the run without teleport.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("sigma", "steps", "fraction")
MODES = ("save", "same_budget")


@dataclass(frozen=True)
class Handoff:
    kind: str
    value: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"hand-off kind must be one of {KINDS}, got {self.kind!r}")
        v = float(self.value)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"hand-off {self.kind} must be a finite number ≥ 0, got {self.value!r}")
        if self.kind == "steps" and v != int(v):
            raise ValueError(f"hand-off steps must be a whole number, got {self.value!r}")
        if self.kind == "fraction" and v >= 1:
            raise ValueError(f"hand-off fraction must be below 1 (the model needs some steps), got {v}")

    @classmethod
    def parse(cls, text: str) -> "Handoff":
        """'sigma:5.0', 'steps:4' or 'fraction:0.25'."""
        kind, sep, value = str(text).partition(":")
        if not sep:
            raise ValueError(f"hand-off {text!r} must look like 'sigma:5.0', 'steps:4' or 'fraction:0.25'")
        try:
            return cls(kind.strip(), float(value))
        except ValueError as exc:
            raise ValueError(f"hand-off {text!r}: {exc}") from None

    def __str__(self):
        return f"{self.kind}:{int(self.value) if self.kind == 'steps' else self.value:g}"


@dataclass(frozen=True)
class TeleportPlan:
    """What a teleport run does. ``sigmas`` is the schedule the inner sampler runs."""

    jumped: bool
    sigma_from: float          # σ_T, where the jump starts (sigmas[0])
    sigma_to: float            # the hand-off sigma where the sampler takes over
    skipped: int               # schedule steps the jump replaces
    step_offset: int           # added to the inner sampler's step index in callbacks
    sigmas: torch.Tensor
    mode: str
    reason: str

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def summary(self) -> str:
        if not self.jumped:
            return f"teleport: no jump ({self.reason})"
        return (f"teleport: jumped σ {self.sigma_from:.4g} → {self.sigma_to:.4g}, replacing {self.skipped} "
                f"step(s); the sampler runs {self.steps} step(s) ({self.mode})")


def _steps_of(sigmas: torch.Tensor) -> int:
    if sigmas.dim() != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D schedule of at least 2 values, got shape {tuple(sigmas.shape)}")
    if not bool(torch.all(sigmas[1:] <= sigmas[:-1])):
        raise ValueError("sigmas must not increase; restart-style schedules need their own sampler")
    return len(sigmas) - 1


def skipped_steps(sigmas: torch.Tensor, handoff: Handoff) -> int:
    """How many leading steps of the schedule the hand-off replaces."""
    n = _steps_of(sigmas)
    if handoff.kind == "steps":
        return int(handoff.value)
    if handoff.kind == "fraction":
        return int(math.floor(handoff.value * n + 0.5))
    return int((sigmas[:-1] > handoff.value).sum())


def plan_teleport(sigmas: torch.Tensor, handoff: Handoff, mode: str = "save") -> TeleportPlan:
    """Decide the jump and the sampler's schedule; raises ValueError for an impossible skip."""
    if mode not in MODES:
        raise ValueError(f"schedule mode must be one of {MODES}, got {mode!r}")
    sigmas = sigmas.detach().to("cpu", torch.float64)
    n = _steps_of(sigmas)
    s0 = float(sigmas[0])
    k = skipped_steps(sigmas, handoff)
    if k == 0:
        why = (f"hand-off σ {handoff.value:g} ≥ schedule start σ {s0:.4g} (img2img or a short schedule)"
               if handoff.kind == "sigma" else f"hand-off {handoff} replaces no step")
        return TeleportPlan(False, s0, s0, 0, 0, sigmas, mode, why + ": the sampler runs unchanged")
    if k >= n:
        raise ValueError(f"hand-off {handoff} would replace all {n} steps (σ {s0:.4g} → {float(sigmas[-1]):.4g}); "
                         "the model must run at least the last step: lower the hand-off or add steps")
    target = float(sigmas[k])
    if mode == "same_budget" and handoff.kind == "sigma":
        target = float(handoff.value)
    if target <= 0:
        raise ValueError(f"hand-off {handoff} lands on σ = 0, where no sampler step is left; lower the hand-off")
    if mode == "save":
        rest = sigmas[k:]
        offset = k
    else:
        rest = respace(sigmas, target, n)
        offset = 0
    return TeleportPlan(True, s0, target, k, offset, rest, mode,
                        f"σ {s0:.4g} → {target:.4g} in closed form")


def teleport_sigmas(sigmas: torch.Tensor, handoff: Handoff, mode: str = "save"):
    """The schedule the sampler runs after the jump, and the hand-off sigma (for split graphs)."""
    plan = plan_teleport(sigmas, handoff, mode)
    return plan.sigmas.to(sigmas.dtype), plan.sigma_to


def respace(sigmas: torch.Tensor, start: float, steps: int) -> torch.Tensor:
    """``steps`` steps from ``start`` to the schedule's end, following its shape in log-sigma.

    The schedule's positive part is read as a curve log σ(u) over its step index u; the new points
    are evenly spaced in u from the index where σ(u) = start to the last positive sigma. Trailing
    zeros (the final denoise to σ = 0) are kept.
    """
    sigmas = sigmas.to(torch.float64)
    pos = sigmas[sigmas > 0]
    zeros = len(sigmas) - len(pos)
    if not float(pos[-1]) < start <= float(pos[0]) and not (len(pos) == 1 and start == float(pos[0])):
        raise ValueError(f"cannot re-space from σ {start:.4g}: it is outside the schedule's range "
                         f"[{float(pos[-1]):.4g}, {float(pos[0]):.4g}]")
    logs = pos.log()
    u_start = _fractional_index(logs, math.log(start))
    count = steps + 1 - zeros
    if count < 2:
        raise ValueError(f"{steps} step(s) leave no room for a re-spaced schedule")
    u = torch.linspace(u_start, len(pos) - 1, count, dtype=torch.float64)
    lo = u.floor().long().clamp(max=len(pos) - 2)
    t = u - lo
    new = torch.exp(logs[lo] * (1 - t) + logs[lo + 1] * t)
    new[0] = start
    return torch.cat([new, sigmas.new_zeros(zeros)])


def _fractional_index(logs: torch.Tensor, target: float) -> float:
    """Index u with log σ(u) = target on the piecewise-linear curve through decreasing ``logs``."""
    i = int((logs > target).sum()) - 1
    i = min(max(i, 0), len(logs) - 2)
    a, b = float(logs[i]), float(logs[i + 1])
    return i + (a - target) / (a - b) if a != b else float(i)
