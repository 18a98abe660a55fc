"""(a) How Gaussian the model is: explained variance of the Gaussian denoiser against the model's own.

Points x = x0 + σε with x0 from the data. The figure used is the score EV of
scheduler.explained (the Gaussian's error over the spread of D_nn − x, the paper's measure); the
denoiser-output EV (the same error over the spread of D_nn) is reported beside it.
"""

from __future__ import annotations

import torch

from ..moments import estimate_moments, gaussian_x0
from ..scheduler.explained import denoiser_explained_variance, score_explained_variance

EV_SIGMAS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 2.7, 3.5, 5.0, 7.0, 10.0, 20.0, 40.0, 80.0, 160.0)


def moment_variants(images: torch.Tensor, ranks=(1, 4, 16, 48)) -> dict:
    """Moments of the data in each structure: dense, low-rank at several ranks, stationary."""
    dim = images[0].numel()
    out = {"dense": estimate_moments([images], "dense", space="model")}
    for r in ranks:
        if r < dim:
            out[f"lowrank-{r}"] = estimate_moments([images], "lowrank", rank=r, space="model")
    out["stationary"] = estimate_moments([images], "stationary", space="model")
    return out


@torch.no_grad()
def explained_variance_table(model, images: torch.Tensor, variants: dict, sigma_data: float,
                             sigmas_over_sd=EV_SIGMAS, seed: int = 0, denoiser_ev: bool = True) -> list[dict]:
    """One row per σ: the score EV of each moments variant, and (``denoiser_ev``) the dense denoiser-output EV."""
    gen = torch.Generator().manual_seed(seed)
    ops = {name: m.operator(images.shape[1:], dtype=torch.float64) for name, m in variants.items()}
    rows = []
    for ratio in sigmas_over_sd:
        sigma = ratio * sigma_data
        x = images.double() + sigma * torch.randn(images.shape, generator=gen, dtype=torch.float64)
        d_nn = model(x.float(), torch.full((len(x),), sigma)).double()
        row = {"sigma/sigma_data": ratio, "sigma": sigma}
        for name, op in ops.items():
            d_g = gaussian_x0(op, x, sigma)
            row[name] = score_explained_variance(d_nn, d_g, x)
            if denoiser_ev and name == "dense":
                row["dense (denoiser EV)"] = denoiser_explained_variance(d_nn, d_g)
        rows.append(row)
    return rows
