"""Closed-form Gaussian denoiser, probability-flow solution, and what a model's outputs imply about μ and Σ.

from: Wang & Vastola, "The Hidden Linear Structure in Score-Based Models and its Application"
(arXiv 2311.10892), extended in arXiv 2412.09726.

Noisy latents are x = α·x0 + σ·ε with x0 ~ N(μ, Σ). VE models (EPS, v-prediction, EDM as the hosts
sample them) have α = 1; flow models (SD3, Flux) have α = 1 − t and σ = t, with t = 1 pure noise.
Every function takes an optional ``mean`` that overrides the operator's: a per-sample (B, C, H, W)
mean (the model-implied one) broadcasts like the shared (C, H, W) one.
"""

from __future__ import annotations

import torch

from .base import GaussianOperator


def x0_spectrum(sigma: float, alpha: float):
    """λ ↦ αλ / (α²λ + σ²): the Gaussian denoiser's gain along an eigendirection of variance λ."""
    sigma, alpha = float(sigma), float(alpha)
    return lambda lam: alpha * lam / (alpha**2 * lam + sigma**2)


def flow_spectrum(sigma_from: float, sigma_to: float, alpha_from: float, alpha_to: float):
    """λ ↦ √((σ² + α²λ) / (σ_T² + α_T²λ)): the ratio of marginal standard deviations."""
    s0, s1, a0, a1 = float(sigma_from), float(sigma_to), float(alpha_from), float(alpha_to)
    if s0 <= 0:
        raise ValueError(f"the flow starts from σ = {s0}; it must start from a noisy latent (σ > 0)")
    return lambda lam: torch.sqrt((s1**2 + a1**2 * lam) / (s0**2 + a0**2 * lam))


def gaussian_x0(op: GaussianOperator, x: torch.Tensor, sigma: float, alpha: float = 1.0,
                mean: torch.Tensor | None = None) -> torch.Tensor:
    """E[x0 | x] = μ + αΣ(α²Σ + σ²I)⁻¹(x − αμ): the exact denoiser of the Gaussian."""
    mean = op.mean if mean is None else mean
    return mean + op.apply(x - float(alpha) * mean, x0_spectrum(sigma, alpha))


def gaussian_flow(op: GaussianOperator, x: torch.Tensor, sigma_from: float, sigma_to: float,
                  alpha_from: float = 1.0, alpha_to: float = 1.0, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Solve the probability-flow ODE of the Gaussian from (α_T, σ_T) to (α, σ) in closed form.

    x(σ) = α μ + g(Σ)(x_T − α_T μ) with g(λ) = √((σ² + α²λ) / (σ_T² + α_T²λ)): each eigendirection
    keeps its coordinate in units of the marginal standard deviation. Finite at α_T = 0 (t = 1).
    """
    mean = op.mean if mean is None else mean
    ratio = flow_spectrum(sigma_from, sigma_to, alpha_from, alpha_to)
    return float(alpha_to) * mean + op.apply(x - float(alpha_from) * mean, ratio)


def gaussian_trajectory(op: GaussianOperator, x: torch.Tensor, sigma_from: float, alpha_from: float,
                        points: list[tuple[float, float]], mean: torch.Tensor | None = None):
    """[(x(σ), E[x0 | x(σ)]) for each (σ, α) in ``points``] along the closed-form flow from (x, σ_T).

    Every output is a function of Σ applied to the same x − α_T μ, so one pass over the eigenbasis
    serves them all (the jump's landing point and a preview at each replaced step).
    """
    mean = op.mean if mean is None else mean
    fs = []
    for sigma, alpha in points:
        ratio, gain = flow_spectrum(sigma_from, sigma, alpha_from, alpha), x0_spectrum(sigma, alpha)
        fs += [ratio, (lambda r, g: lambda lam: r(lam) * g(lam))(ratio, gain)]
    outs = op.apply_many(x - float(alpha_from) * mean, fs)
    return [(float(alpha) * mean + outs[2 * i], mean + outs[2 * i + 1]) for i, (_, alpha) in enumerate(points)]


# ----------------------------------------------------------------------------
# What a model's own outputs imply (exact for a Gaussian model).


def model_implied_mean(op: GaussianOperator, x: torch.Tensor, denoised: torch.Tensor, sigma: float,
                       alpha: float = 1.0) -> torch.Tensor:
    """The mean μ̂ under which a Gaussian with covariance Σ has denoiser output ``denoised`` at (x, σ).

    Solving D = μ + αΣ(α²Σ + σ²I)⁻¹(x − αμ) for μ gives μ̂ = (I + α²Σ/σ²)·D − (αΣ/σ²)·x
    = D + (αΣ/σ²)(αD − x); at α = 0 (flow, t = 1) μ̂ = D. Per sample: (B, C, H, W).
    """
    a, s2 = float(alpha), float(sigma) ** 2
    return denoised + op.apply(a * denoised - x, lambda lam: a * lam / s2)


def variance_from_gain(gain: torch.Tensor, sigma: float, alpha: float = 1.0) -> torch.Tensor:
    """λ from an eigenvalue j of the Gaussian denoiser's Jacobian αΣ(α²Σ + σ²I)⁻¹: λ = σ²j / (α(1 − αj))."""
    a = float(alpha)
    return float(sigma) ** 2 * gain / (a * (1 - a * gain))
