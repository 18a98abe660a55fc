"""Quality versus model calls, with and without teleport, from the same noise; and the verdicts.

Every configuration samples the same seed sets (one generator per seed), so each teleport run is
compared with its own baseline sample by sample (paired RMSE), and by the Fréchet distance of its
classifier features to the real data's, per seed set (mean and spread over the sets).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..demo import make_sigmas, seeded_noise
from ..moments import DenseMoments
from ..scheduler import SAMPLERS, Handoff, make_teleport_sampler
from ..scheduler.calibrate import CountingModel
from .features import accuracy, features, frechet_distance, gaussian_stats

SAVE_FLOOR = 1.5            # save-mode skips stop where the hand-off σ would fall below this many σ_data
SAME_BUDGET_HANDOFFS = (10.0, 5.0, 3.0)   # same-budget hand-off σ in units of σ_data
STEPS = {"euler": 20, "heun": 18, "dpmpp_2m": 20}
LOW_STEPS = {"euler": 10, "heun": 5, "dpmpp_2m": 10}   # ≤ 10 model calls
STRICT_TOLERANCE = 0.02   # share of the plain FD a strict verdict tolerates beyond the paired noise


def mean(v):
    return statistics.fmean(v)


def std(v):
    return statistics.stdev(v) if len(v) > 1 else 0.0


@dataclass(frozen=True)
class Variant:
    """Where the jump's Gaussian comes from: the moments (data, model-derived, class) and the mean."""

    moments: str = "data"      # data | model (read off the model, no images) | prompt (read off the guided model
                               # for each prompt) | class (μ_w, an oracle)
    mean: str = "data"         # data (the moments' mean) | model (one model call at the start)

    @property
    def label(self) -> str:
        names = {("data", "data"): "data moments, data mean", ("data", "model"): "data moments, model mean",
                 ("model", "model"): "model-derived moments, model mean",
                 ("model", "data"): "model-derived moments and mean", ("class", "data"): "class Gaussian μ_w (oracle)",
                 ("prompt", "model"): "moments read off the guided model per prompt, model mean"}
        return names[(self.moments, self.mean)]


@dataclass(frozen=True)
class Run:
    """One sampling configuration."""
    sampler: str
    schedule: str
    steps: int
    mode: str = "plain"            # plain | save | same_budget
    handoff: Handoff | None = None
    variant: Variant = Variant()


def configurations(sampler: str, schedule: str, steps: int, sigma_data: float, *, variants=(Variant(),), save=True,
                   same_budget=SAME_BUDGET_HANDOFFS, max_skip: int | None = None) -> list[Run]:
    """The plain run, then per variant every save-mode skip down to SAVE_FLOOR·σ_data and the same-budget ones."""
    sigmas = make_sigmas(schedule, steps, sigma_data)
    runs = [Run(sampler, schedule, steps)]
    for variant in variants:
        if save:
            for k in range(1, steps if max_skip is None else min(steps, max_skip + 1)):
                if float(sigmas[k]) < SAVE_FLOOR * sigma_data:
                    break
                runs.append(Run(sampler, schedule, steps, "save", Handoff("steps", k), variant))
        for ratio in same_budget:
            if ratio * sigma_data < float(sigmas[0]):
                runs.append(Run(sampler, schedule, steps, "same_budget", Handoff("sigma", round(ratio * sigma_data, 4)),
                                variant))
    return runs


def class_moments(moments: DenseMoments, class_mean: torch.Tensor, scale: float) -> DenseMoments:
    """The guided Gaussian with a shared covariance: mean μ_w = μ_u + w(μ_c − μ_u) (arXiv 2412.09726)."""
    mean_w = moments.mean + scale * (class_mean.to(moments.mean.dtype) - moments.mean)
    return DenseMoments(mean_w, moments.eigvals, moments.eigvecs, count=moments.count, space="model",
                        latent_format=moments.latent_format)


def sample_run(run: Run, model, noise, sigma_data, moments=None, extra_args=None, steps: int | None = None):
    """Samples of one configuration, its model calls, wall time and where the sampler started (σ/σ_data)."""
    sigmas = make_sigmas(run.schedule, steps or run.steps, sigma_data)
    inner = SAMPLERS[run.sampler]
    counted = CountingModel(model)
    landed = [float(sigmas[0])]
    if run.mode == "plain":
        fn = inner
    else:
        fn = make_teleport_sampler(inner, moments, run.handoff, mode=run.mode, mean=run.variant.mean,
                                   on_plan=lambda plan: landed.__setitem__(0, plan.sigma_to))
    start = time.perf_counter()
    x = fn(counted, noise * sigmas[0], sigmas.to(noise.dtype), extra_args=extra_args or {}, disable=True)
    return x, counted.calls, time.perf_counter() - start, landed[0] / sigma_data


def sample_by_class(run: Run, model, noise, labels, sigma_data, moments_for_class):
    """Teleport with a per-class Gaussian: each class's samples jump with its own mean."""
    out = torch.empty_like(noise)
    calls = seconds = land = 0.0
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        x, calls, sec, land = sample_run(run, model, noise[idx], sigma_data, moments_for_class(c),
                                         {"class_labels": labels[idx]})
        out[idx] = x
        seconds += sec
    return out, calls, seconds, land


def seed_sets(count: int, size: int, shape, offset: int = 0) -> torch.Tensor:
    """``count`` disjoint seed sets of ``size`` seeds, stacked: set s holds seeds s·size … (s+1)·size − 1."""
    return seeded_noise(range(offset, offset + count * size), shape)


def paired_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).flatten(1).mean(1).sqrt().mean())


def evaluate(samples, baseline, classifier, real_stats, sets: int, labels=None, fine=None) -> dict:
    """Per seed set: Fréchet distance to the real data, paired RMSE to the baseline (and to a finer
    run of the plain sampler, when given), class accuracy."""
    n = len(samples) // sets
    out = {"fd": [], "rmse": []}
    if labels is not None:
        out["acc"] = []
    if fine is not None:
        out["rmse_fine"] = []
    for s in range(sets):
        part = slice(s * n, (s + 1) * n)
        out["fd"].append(frechet_distance(gaussian_stats(features(classifier, samples[part])), real_stats))
        out["rmse"].append(paired_rmse(samples[part], baseline[part]))
        if fine is not None:
            out["rmse_fine"].append(paired_rmse(samples[part], fine[part]))
        if labels is not None:
            out["acc"].append(accuracy(classifier, samples[part], labels[part]))
    return out


def real_floor(classifier, real: torch.Tensor, n: int, sets: int, real_stats, fresh=None, seed: int = 0) -> list:
    """The Fréchet distance real data reaches against itself at the sample size used.

    With a source of fresh real samples (``fresh(k)`` → n new images), n fresh images against the
    reference statistics, like the generated sets. Without one (a small fixed data set), two disjoint
    random halves of the real set against each other.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(sets):
        if fresh is not None:
            out.append(frechet_distance(gaussian_stats(features(classifier, fresh(k)[:n])), real_stats))
        else:
            perm = torch.randperm(len(real), generator=gen)
            half = len(real) // 2
            a, b = real[perm[:half]], real[perm[half:2 * half]]
            out.append(frechet_distance(gaussian_stats(features(classifier, a)),
                                        gaussian_stats(features(classifier, b))))
    return out


# ----------------------------------------------------------------------------
# Verdicts: paired, beside the seed noise and the sampler's own discretisation error.


def paired_delta(row, base) -> list[float]:
    return [a - b for a, b in zip(row["fd"], base["fd"])]


def within_noise(row, base) -> bool:
    """Quality held: the paired FD increase is at most the baseline's spread over seed sets."""
    return mean(paired_delta(row, base)) <= max(std(base["fd"]), 1e-12)


def strict(row, base) -> bool:
    """Stricter: the paired FD increase is at most 2% of the plain FD plus 2 standard errors of the pairs."""
    delta = paired_delta(row, base)
    return mean(delta) <= STRICT_TOLERANCE * mean(base["fd"]) + 2 * std(delta) / len(delta) ** 0.5


def unchanged(row, base) -> bool:
    """The image did not change beyond the sampler's own error: paired RMSE to the plain run within the
    plain run's discretisation error (its RMSE to the same sampler at twice the steps), and ΔFD within
    the seed noise."""
    return mean(row["rmse"]) <= mean(base["rmse_fine"]) and within_noise(row, base)


def largest_saving(rows, base, verdict):
    """The save-mode run with the most skipped steps such that it and every smaller skip pass ``verdict``."""
    best = base
    for r in sorted((r for r in rows if r["mode"] == "save"), key=skipped_of):
        if not verdict(r, base):
            break
        best = r
    return best


def skipped_of(row) -> int:
    return int(row["handoff"].split(":")[1]) if row["mode"] == "save" else 0
