"""Choose the hand-off by what the image does: the lowest hand-off whose result stays within a tolerance.

For a few noise samples at the user's real settings (the model with its conditioning and CFG, the
sampler, the schedule), the plain sampler runs once; teleport runs from candidate hand-offs; the change
of each is the paired RMSE of the final latents over the spread between the plain samples, which means
the same on every model. The change grows as the hand-off goes lower, so a bisection over the schedule's
steps finds the most steps that can be replaced within ``tolerance`` from a handful of candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..moments.base import GaussianMoments
from ..moments.latent_formats import LatentFormat
from .binding import bind_moments
from .explained import ExplainedVariance, RecordingModel
from .handoff import Handoff, check_schedule, format_sigma, skipped_steps
from .parameterization import Parameterization, parameterization as as_parameterization
from .settings import DEFAULT_MEAN
from .teleport import check_latent, sample_teleport

# The change is the paired RMSE over the plain run's own spread between samples: per element, the
# standard deviation of the final latents across the batch, so one number means the same on every model
# and costs no run beyond the plain one. The default tolerance is the calibration benchmark's choice
# (bench/results/calibration.md): at 0.01 every recommendation on both reference models kept the image
# unchanged (paired RMSE within the sampler's own discretisation error, ΔFD within the seed noise); larger
# tolerances replace more steps and start to cost FD on SD-like schedules.
DEFAULT_TOLERANCE = 0.01
LOWEST_CANDIDATE = 1.0   # default candidates hand off at noise levels ≥ 1 (about σ_data): below, jumps fail


@dataclass(frozen=True)
class Candidate:
    skipped: int          # schedule steps replaced
    sigma: float          # the hand-off noise level σ/α (what a user types)
    calls: int            # model calls of the teleported run
    change: float         # paired RMSE to the plain run, over the scale
    passed: bool


@dataclass
class HandoffCalibration:
    """The measured candidates and the recommendation (``sigma`` None: do not teleport)."""

    curve: list[Candidate]
    skipped: int
    sigma: float | None
    steps: int
    calls_plain: int
    calls_teleport: int
    calls_spent: int
    tolerance: float
    scale: float
    mean: str
    explained: ExplainedVariance = field(default_factory=ExplainedVariance)
    plain: torch.Tensor | None = None      # the plain run's result (a host may return it as the generation)

    @property
    def handoff(self) -> Handoff | None:
        return None if self.sigma is None else Handoff("sigma", float(format_sigma(self.sigma)))

    @property
    def change(self) -> float:
        hit = [c for c in self.curve if c.skipped == self.skipped]
        return hit[0].change if hit else 0.0

    def summary(self) -> str:
        """One line: 'hand-off σ 4.5: 5 of 20 steps replaced, change 0.4 of the tolerance; calls 20 → 15'."""
        if self.sigma is None:
            within = [c for c in self.curve if c.passed]
            first = min(self.curve, key=lambda c: c.skipped) if self.curve else None
            if within:
                k = max(c.skipped for c in within)
                why = f" (replacing {k} step{'s' if k > 1 else ''} would save no model call)"
            elif first is not None and first.skipped == 1:
                why = f" (replacing 1 step already changes it by {first.change / self.tolerance:.2g}× the tolerance)"
            else:
                why = ""
            return f"do not teleport with these settings{why}; calls stay {self.calls_plain}"
        return (f"hand-off σ {format_sigma(self.sigma)}: {self.skipped} of {self.steps} steps replaced, change "
                f"{self.change / self.tolerance:.2g} of the tolerance; calls {self.calls_plain} → {self.calls_teleport}")

    def report(self) -> str:
        rows = [f"calibration: tolerance {self.tolerance:g} (paired RMSE / spread between samples {self.scale:.4g}), "
                f"mean from the {self.mean}; {self.calls_spent} model calls spent",
                "steps replaced   hand-off σ   calls   change   within"]
        for c in sorted(self.curve, key=lambda c: c.skipped):
            rows.append(f"{c.skipped:<16d} {format_sigma(c.sigma):<12} {c.calls:<7d} {c.change:<8.4f} "
                        f"{'yes' if c.passed else 'no'}")
        return "\n".join(rows + [self.summary()])


class CountingModel:
    """Counts calls of a k-diffusion denoiser and tells ``progress`` after each."""

    def __init__(self, model, progress: Callable[[int], None] | None = None):
        self.model, self.progress, self.calls = model, progress, 0

    def __call__(self, x, sigma, **extra_args):
        out = self.model(x, sigma, **extra_args)
        self.calls += 1
        if self.progress is not None:
            self.progress(self.calls)
        return out


def check_samples(x: torch.Tensor) -> None:
    if x.shape[0] < 2:
        raise ValueError("calibration needs at least 2 noise samples (a batch of 2 or more) to measure the spread "
                         "between samples")


def spread_between_samples(x: torch.Tensor) -> float:
    """Per element, the standard deviation of the batch (unbiased), as one RMS number."""
    check_samples(x)
    return float(x.double().var(dim=0).mean().sqrt())


def largest_passing(ks: list[int], passes: Callable[[int], bool]) -> int:
    """Bisection over sorted candidates whose failures only grow: the largest k that passes (0: none).
    Calls ``passes`` about log2(len(ks)) times."""
    lo, hi = 0, len(ks)          # ks[:lo] known to pass (index 0 = no jump), ks[hi:] known to fail
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if passes(ks[mid - 1]):
            lo = mid
        else:
            hi = mid - 1
    return ks[lo - 1] if lo else 0


def paired_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


@torch.no_grad()
def calibrate_handoff(model, x: torch.Tensor, sigmas: torch.Tensor, sampler: Callable, *,
                      moments: GaussianMoments, mean: str = DEFAULT_MEAN, parameterization: Parameterization | str = "ve",
                      extra_args: dict | None = None, tolerance: float = DEFAULT_TOLERANCE, candidates=None,
                      mode: str = "save", latent_format: LatentFormat | str | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      on_run_start: Callable[[], None] | None = None, **sampler_options) -> HandoffCalibration:
    """Recommend the hand-off that replaces the most steps while the result changes by at most ``tolerance``.

    ``x``: a few start noises at sigmas[0] (B ≥ 2, already scaled as the sampler gets them); ``model`` the
    guided denoiser in k-diffusion form; ``sampler`` the inner sampler. ``candidates``: hand-offs to
    consider (Handoff, 'sigma:4.5' or noise levels); default every schedule step at a noise level ≥ 1 that
    leaves the sampler at least one step. ``progress(calls_done, calls_bound)`` after every model call (raise to cancel).
    """
    check_latent(x)
    check_samples(x)             # before the plain run, not after it
    param = as_parameterization(parameterization)
    n = check_schedule(sigmas, param)
    if not (tolerance > 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a number > 0, got {tolerance}")
    extra_args = extra_args or {}
    gauss = bind_moments(moments, x.shape[1:], latent_format=latent_format, parameterization=param, device=x.device)
    levels = [param.noise_level(float(s)) for s in sigmas]
    ks = _candidate_steps(candidates, sigmas, levels, n, param)
    bound = (2 if "heun" in getattr(sampler, "__name__", "") else 1) * n * (2 + math.ceil(math.log2(len(ks) + 1)))
    counter = CountingModel(model, None if progress is None else (lambda done: progress(done, max(bound, done))))

    start_run = on_run_start or (lambda: None)
    record = ExplainedVariance()
    start_run()
    plain = sampler(RecordingModel(counter, gauss, record), x, sigmas, extra_args=extra_args, disable=True,
                    **sampler_options)
    calls_plain = counter.calls
    unit = max(spread_between_samples(plain), 1e-12)

    measured: dict[int, Candidate] = {}

    def measure(k: int) -> Candidate:
        before = counter.calls
        start_run()
        out = sample_teleport(counter, x, sigmas, extra_args, None, True, moments=gauss.moments, sampler=sampler,
                              handoff=Handoff("steps", k), mode=mode, mean=mean, parameterization=param,
                              **sampler_options)
        change = paired_change(out, plain) / unit
        measured[k] = Candidate(k, levels[k], counter.calls - before, change, change <= tolerance)
        return measured[k]

    best = largest_passing(ks, lambda k: measure(k).passed)   # the change grows with the steps replaced
    if best and measured[best].calls >= calls_plain:
        best = 0        # within the tolerance but no call saved (the model mean's probe costs one): no gain
    calls_best = measured[best].calls if best else calls_plain
    return HandoffCalibration(curve=sorted(measured.values(), key=lambda c: c.skipped), skipped=best,
                              sigma=levels[best] if best else None, steps=n, calls_plain=calls_plain,
                              calls_teleport=calls_best, calls_spent=counter.calls, tolerance=tolerance,
                              scale=unit, mean=mean, explained=record, plain=plain)


def _candidate_steps(candidates, sigmas, levels, n, param) -> list[int]:
    """Sorted distinct step counts to consider (each leaves the sampler at least one step)."""
    if candidates is None:
        ks = [k for k in range(1, n) if float(sigmas[k]) > 0 and levels[k] >= LOWEST_CANDIDATE]
        if not ks:
            raise ValueError(f"the schedule has no step at a noise level ≥ {LOWEST_CANDIDATE:g} to hand off at (it "
                             f"starts at σ {format_sigma(levels[0])}); teleport has nothing to replace here")
        return ks
    ks = set()
    for c in candidates:
        handoff = c if isinstance(c, Handoff) else (Handoff.parse(c) if isinstance(c, str) else Handoff("sigma", c))
        k = skipped_steps(sigmas, handoff, param)
        if 0 < k < n and float(sigmas[k]) > 0:
            ks.add(k)
    if not ks:
        raise ValueError(f"none of the candidates {list(candidates)} replaces a step and leaves the sampler one; "
                         f"the schedule runs from σ {format_sigma(levels[0])} to {format_sigma(levels[-2])}")
    return sorted(ks)
