"""(e) Moments read off the model itself (no image set): settings, how Gaussian they are, what they cost.

- The settings sweep: noise level σ, finite-difference step, subspace iterations and noise draws, rank
  and structure, each scored by the paired RMSE of teleport (model mean) to the plain run at two
  hand-offs, over the same with the data's moments: 1.0 means "as good as having the images".
- Explained variance of the model-derived Gaussian beside the data-derived one, per σ.
- The cost in model calls and evaluations, here and at SD1.5 and Flux latent sizes.
"""

from __future__ import annotations

import itertools

import torch

from ..moments import estimate_moments_from_model
from ..moments.from_model import (DEFAULT_DRAWS, DEFAULT_ITERATIONS, DEFAULT_MODEL_RANK, DEFAULT_SIGMA, DEFAULT_STEP,
                                  cost_in_calls)
from ..scheduler import Handoff
from .explained import explained_variance_table
from .quality import Run, Variant, mean, paired_rmse, sample_run, std

SWEEP = {
    "sigma": (5.0, 10.0, 20.0),
    "step": (0.01, 0.05, 0.2),
    "calls": ((2, 2), (3, 4), (4, 8)),          # (iterations, draws)
    "rank": (8, 16, 32, 64),
    "structure": ("lowrank", "dense", "stationary"),
}
SWEEP_HANDOFFS = (10.0, 5.0)                    # hand-off σ/σ_data the sweep scores at (heun, EDM schedule)
SWEEP_SEEDS = 3                                 # estimates per setting (their probes are random): mean ± std
SIZES = {"SD1.5 512² (4×64×64)": (4, 64, 64), "SDXL 1024² (4×128×128)": (4, 128, 128),
         "Flux 1024² (16×128×128)": (16, 128, 128)}


def defaults() -> dict:
    return {"sigma": DEFAULT_SIGMA, "step": DEFAULT_STEP, "calls": (DEFAULT_ITERATIONS, DEFAULT_DRAWS),
            "rank": DEFAULT_MODEL_RANK, "structure": "lowrank"}


def estimate(ref, settings: dict, seed: int = 0):
    iterations, draws = settings["calls"]
    return estimate_moments_from_model(ref.model, ref.shape, sigma=settings["sigma"], rank=settings["rank"],
                                       iterations=iterations, draws=draws, step=settings["step"],
                                       structure=settings["structure"],
                                       generator=torch.Generator().manual_seed(seed),
                                       metadata={"model": ref.name})


def sweep(ref, noise, opts, log) -> list[dict]:
    """One setting changed at a time from the defaults; scored against the data moments at each hand-off."""
    sd = ref.sigma_data
    plain_run = Run("heun", "edm", 18)
    base, *_ = sample_run(plain_run, ref.model, noise, sd)
    runs = [Run("heun", "edm", 18, "save", Handoff("sigma", round(r * sd, 4)), Variant("data", "model"))
            for r in SWEEP_HANDOFFS]
    reference = [paired_rmse(sample_run(run, ref.model, noise, sd, ref.moments)[0], base) for run in runs]
    rows = []
    for key, values in opts.sweep.items():
        for value in values:
            settings = {**defaults(), key: value}
            scores = []
            for seed in range(opts.sweep_seeds):
                m = estimate(ref, settings, seed)
                scores.append([paired_rmse(sample_run(run, ref.model, noise, sd, m)[0], base) / r
                               for run, r in zip(runs, reference)])
            ratio = [[s[i] for s in scores] for i in range(len(runs))]
            rows.append({"varied": key, "value": str(value), "default": value == defaults()[key],
                         "calls": m.metadata["model_calls"], "evaluations": m.metadata["evaluations"],
                         "ratio": ratio, "reference_rmse": reference})
            log(f"[{ref.name} model moments] {key}={value}: {m.metadata['model_calls']} calls, RMSE ratio "
                + " / ".join(f"{mean(r):.3f} ± {std(r):.3f}" for r in ratio))
    return rows


def explained(ref, images, opts, model_moments) -> list[dict]:
    variants = {"data (dense)": ref.moments, "model-derived": model_moments}
    stationary = estimate(ref, {**defaults(), "structure": "stationary"})
    variants["model-derived stationary"] = stationary
    return explained_variance_table(ref.model, images, variants, ref.sigma_data, opts.model_ev_sigmas,
                                    denoiser_ev=False)


def cost_rows(reference_shapes: dict) -> list[dict]:
    rows = []
    settings = defaults()
    iterations, draws = settings["calls"]
    for name, shape in itertools.chain(reference_shapes.items(), SIZES.items()):
        for structure in ("lowrank", "stationary"):
            c = cost_in_calls(structure, iterations, draws, settings["rank"], shape)
            rows.append({"latent": name, "structure": structure if structure == "stationary"
                         else f"lowrank, rank {min(settings['rank'], shape[0] * shape[1] * shape[2])}", **c,
                         "images_equivalent": c["evaluations"] / 20})
    return rows
