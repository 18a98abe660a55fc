"""(b)–(d) Quality versus model calls, with and without teleport, from the same noise.

Every configuration samples the same seed sets (one generator per seed), so each teleport run is
compared with its own baseline sample by sample (paired RMSE), and by the Fréchet distance of its
classifier features to the real data's, per seed set (mean and spread over the sets).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..moments import DenseMoments
from ..scheduler import SAMPLERS, Handoff, make_teleport_sampler, model_calls, plan_teleport
from ..demo import make_sigmas, seeded_noise
from .features import accuracy, features, frechet_distance, gaussian_stats

SAVE_FLOOR = 1.5            # save-mode skips stop where the hand-off σ would fall below this many σ_data
SAME_BUDGET_HANDOFFS = (10.0, 5.0, 3.0)   # same-budget hand-off σ in units of σ_data
STEPS = {"euler": 20, "heun": 18, "dpmpp_2m": 20}
LOW_STEPS = {"euler": 10, "heun": 5, "dpmpp_2m": 10}   # ≤ 10 model calls


@dataclass
class Run:
    """One sampling configuration."""
    sampler: str
    schedule: str
    steps: int
    mode: str = "plain"            # plain | save | same_budget
    handoff: Handoff | None = None
    moments_kind: str = "unconditional"

    def key(self):
        return (self.sampler, self.schedule, self.steps, self.mode, str(self.handoff), self.moments_kind)


def configurations(sampler: str, schedule: str, steps: int, sigma_data: float, *, save=True,
                   same_budget=SAME_BUDGET_HANDOFFS, max_skip: int | None = None) -> list[Run]:
    """The plain run, every save-mode skip down to SAVE_FLOOR·σ_data, and the same-budget hand-offs."""
    sigmas = make_sigmas(schedule, steps, sigma_data)
    runs = [Run(sampler, schedule, steps)]
    if save:
        for k in range(1, steps if max_skip is None else min(steps, max_skip + 1)):
            if float(sigmas[k]) < SAVE_FLOOR * sigma_data:
                break
            runs.append(Run(sampler, schedule, steps, "save", Handoff("steps", k)))
    for ratio in same_budget:
        if ratio * sigma_data < float(sigmas[0]):
            runs.append(Run(sampler, schedule, steps, "same_budget", Handoff("sigma", round(ratio * sigma_data, 4))))
    return runs


def class_moments(moments: DenseMoments, class_mean: torch.Tensor, scale: float) -> DenseMoments:
    """The guided Gaussian with a shared covariance: mean μ_w = μ_u + w(μ_c − μ_u) (arXiv 2412.09726)."""
    mean = moments.mean + scale * (class_mean.to(moments.mean.dtype) - moments.mean)
    return DenseMoments(mean, moments.eigvals, moments.eigvecs, count=moments.count, space="model",
                        latent_format=moments.latent_format)


def sample_run(run: Run, model, noise, sigma_data, moments, extra_args=None):
    """Samples of one configuration, its model calls and wall time."""
    sigmas = make_sigmas(run.schedule, run.steps, sigma_data)
    inner = SAMPLERS[run.sampler]
    if run.mode == "plain":
        fn, rest = inner, sigmas
    else:
        fn = make_teleport_sampler(inner, moments, run.handoff, mode=run.mode)
        rest = plan_teleport(sigmas, run.handoff, run.mode).sigmas
    start = time.perf_counter()
    x = fn(model, noise * sigmas[0], sigmas.to(noise.dtype), extra_args=extra_args or {}, disable=True)
    return x, model_calls(run.sampler, rest), time.perf_counter() - start, float(rest[0]) / sigma_data


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


def evaluate(samples, baseline, classifier, real_stats, sets: int, labels=None) -> dict:
    """Per seed set: Fréchet distance to the real data, paired RMSE to the baseline, class accuracy."""
    n = len(samples) // sets
    fd, rmse, acc = [], [], []
    for s in range(sets):
        part = slice(s * n, (s + 1) * n)
        fd.append(frechet_distance(gaussian_stats(features(classifier, samples[part])), real_stats))
        rmse.append(paired_rmse(samples[part], baseline[part]))
        if labels is not None:
            acc.append(accuracy(classifier, samples[part], labels[part]))
    out = {"fd": fd, "rmse": rmse}
    if labels is not None:
        out["acc"] = acc
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
