"""Choose the hand-off by what the image does: the lowest hand-off whose result stays within a tolerance.

For a few noise samples at the user's real settings (the model with its conditioning and CFG, the
sampler, the schedule), the plain sampler runs once; teleport runs from candidate hand-offs; the change
of each is the paired RMSE of the final latents over the spread between the plain samples, which means
the same on every model. The change grows as the hand-off goes lower, so a bisection over the schedule's
steps finds the most steps that can be replaced within ``tolerance`` from a handful of candidates.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..moments.base import GaussianMoments
from ..moments.latent_formats import LatentFormat
from .binding import bind_moments
from .explained import ExplainedVariance, RecordingModel
from .handoff import MODES, Handoff, check_schedule, format_sigma, skipped_steps
from .parameterization import Parameterization, parameterization as as_parameterization
from .settings import DEFAULT_MEAN, check_mean
from .teleport import check_latent, sample_teleport, sampler_sigmas

# The change is the paired RMSE over the plain run's own spread between samples: per element, the
# standard deviation of the final latents across the batch, so one number means the same on every model
# and costs no run beyond the plain one. The default tolerance is the calibration benchmark's choice
# (bench/results/calibration.md): at 0.01 every recommendation on both reference models kept the image
# unchanged (paired RMSE within the sampler's own discretisation error, ΔFD within the seed noise); larger
# tolerances replace more steps and start to cost FD on SD-like schedules.
DEFAULT_TOLERANCE = 0.01
LOWEST_CANDIDATE = 1.0   # default candidates hand off at noise levels ≥ 1 (about σ_data): below, jumps fail
# Two plain runs from the same noise may differ by at most this share of the tolerance (GPU kernels are not
# always bit-exact); beyond it the measured changes are the model's own noise, not what the hand-off does.
REPEAT_SHARE = 0.5
# A plain run whose spread between samples is below this share of its RMS has samples that are all the same.
SAME_SAMPLES = 1e-6


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


class FiniteModel:
    """Refuses a denoiser output that is not a finite tensor shaped like x (NaN, even in one sample, or a tuple)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, sigma, **extra_args):
        out = self.model(x, sigma, **extra_args)
        self.calls += 1
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the model must return the denoised latent shaped like x {tuple(x.shape)}, got {got}; "
                             "wrap it so it returns one tensor (the x0 prediction, k-diffusion form)")
        bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        if bool(bad.any()):
            raise ValueError(f"the model returned NaN or Inf at σ {format_sigma(float(sigma.reshape(-1)[0]))} (call "
                             f"{self.calls}, in {int(bad.sum())} of {len(bad)} samples): the calibration cannot "
                             "measure a broken image; fix the model or its inputs (a float16 overflow? a NaN in the "
                             "conditioning or the CFG scale?) and run it again")
        return out


def check_samples(x: torch.Tensor) -> None:
    if x.shape[0] < 2:
        raise ValueError("calibration needs at least 2 noise samples (a batch of 2 or more) to measure the spread "
                         "between samples")


def check_noise(x: torch.Tensor) -> None:
    """Finite start noise whose samples differ (the change is measured against the spread between them)."""
    check_latent(x)
    check_samples(x)
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"the start noise x contains NaN or Inf ({int(bad.sum())} of {x.numel()} values): draw it "
                         "again, e.g. torch.randn(B, C, H, W) · sigmas[0]")
    if bool((x == x[:1]).all()):
        raise ValueError("the noise samples are identical (spread 0 between them), so no change can be measured: "
                         "draw each sample from its own seed, e.g. torch.randn(B, C, H, W) with B ≥ 2")


def check_request(tolerance, mean: str, mode: str, sampler) -> None:
    """The settings, checked before the first model call (not after the plain run)."""
    if not (isinstance(tolerance, numbers.Real) and not isinstance(tolerance, bool)
            and math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a number > 0 (the default is {DEFAULT_TOLERANCE:g}), got {tolerance!r}")
    check_mean(mean)
    if mode not in MODES:
        raise ValueError(f"calibration mode must be one of {MODES}, got {mode!r}")
    if not callable(sampler):
        raise ValueError(f"sampler must be a k-diffusion sampler function, got {type(sampler).__name__}")


def check_plain(plain: torch.Tensor) -> float:
    """The plain run's spread between samples; ValueError when it is not finite or its samples are all the same."""
    if not bool(torch.isfinite(plain).all()):
        raise ValueError("the plain run gave NaN or Inf although every model output was finite: the schedule or "
                         "the sampler is broken (a 0 inside the schedule? check the sigmas)")
    unit = spread_between_samples(plain)
    size = float(plain.double().pow(2).mean().sqrt())
    if not unit > SAME_SAMPLES * size:
        raise ValueError(f"the plain run's samples are all the same (spread {unit:.3g} between samples) although "
                         "their noise differs: the model's output does not depend on x. Check that the model "
                         "(or its wrapper) denoises the x it is given")
    return unit


def check_repeatable(repeat: torch.Tensor, plain: torch.Tensor, unit: float, tolerance: float) -> None:
    """Two plain runs from the same noise must agree far within the tolerance."""
    change = paired_change(repeat, plain) / unit
    if change > REPEAT_SHARE * tolerance:
        raise ValueError(f"the model is not deterministic: two plain runs from the same noise differ by {change:.3g} "
                         f"of the spread ({change / tolerance:.2g}× the tolerance {tolerance:g}), so the measured "
                         "changes are its own noise. Make it repeatable (model.eval() for dropout; fixed seeds for "
                         "any noise it or the sampler draws, reset in on_run_start) and calibrate again")


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

    A broken measurement raises ValueError naming the cause instead of recommending: NaN or identical
    noise samples and bad settings before the first model call; a model output that is NaN/Inf (in any
    sample) or not shaped like x; a plain run whose samples are all the same (the model ignores x); and,
    when no candidate is within the tolerance, a second plain run (its calls are counted) that differs
    from the first by more than half the tolerance (the model is not deterministic).
    """
    check_noise(x)               # everything before the first model call, not after the plain run
    check_request(tolerance, mean, mode, sampler)
    param = as_parameterization(parameterization)
    sigmas = sampler_sigmas(sigmas, x)      # a list, numpy array or integer tensor as sample_teleport takes it
    n = check_schedule(sigmas, param)
    extra_args = extra_args or {}
    gauss = bind_moments(moments, x.shape[1:], latent_format=latent_format, parameterization=param, device=x.device)
    levels = [param.noise_level(float(s)) for s in sigmas]
    ks = _candidate_steps(candidates, sigmas, levels, n, param)
    bound = (2 if "heun" in getattr(sampler, "__name__", "") else 1) * n * (2 + math.ceil(math.log2(len(ks) + 1)))
    counter = CountingModel(FiniteModel(model),
                            None if progress is None else (lambda done: progress(done, max(bound, done))))

    start_run = on_run_start or (lambda: None)
    record = ExplainedVariance()

    def run_plain(model_used):
        start_run()
        return sampler(model_used, x, sigmas, extra_args=extra_args, disable=True, **sampler_options)

    plain = run_plain(RecordingModel(counter, gauss, record))
    calls_plain = counter.calls
    unit = check_plain(plain)

    measured: dict[int, Candidate] = {}

    def measure(k: int) -> Candidate:
        before = counter.calls
        start_run()
        out = sample_teleport(counter, x, sigmas, extra_args, None, True, moments=gauss.moments, sampler=sampler,
                              handoff=Handoff("steps", k), mode=mode, mean=mean, parameterization=param,
                              **sampler_options)
        check_teleported(out, k)
        change = paired_change(out, plain) / unit
        measured[k] = Candidate(k, levels[k], counter.calls - before, change, change <= tolerance)
        return measured[k]

    best = largest_passing(ks, lambda k: measure(k).passed)   # the change grows with the steps replaced
    if not any(c.passed for c in measured.values()):         # nothing within: is it the model's own noise?
        check_repeatable(run_plain(counter), plain, unit, tolerance)
    if best and measured[best].calls >= calls_plain:
        best = 0        # within the tolerance but no call saved (the model mean's probe costs one): no gain
    calls_best = measured[best].calls if best else calls_plain
    return HandoffCalibration(curve=sorted(measured.values(), key=lambda c: c.skipped), skipped=best,
                              sigma=levels[best] if best else None, steps=n, calls_plain=calls_plain,
                              calls_teleport=calls_best, calls_spent=counter.calls, tolerance=tolerance,
                              scale=unit, mean=mean, explained=record, plain=plain)


def check_teleported(out: torch.Tensor, k: int) -> None:
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"teleport replacing {k} step{'s' if k > 1 else ''} gave NaN or Inf although every model "
                         "output was finite: the moments are broken; check them (python -m gaussian_teleport.moments "
                         "info FILE) or estimate them again")


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
