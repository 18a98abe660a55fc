"""Closed-form Gaussian denoiser and probability-flow solution.

from: Wang & Vastola, "The Hidden Linear Structure in Score-Based Models and its Application"
(arXiv 2311.10892), extended in arXiv 2412.09726.

Noisy latents are x = α·x0 + σ·ε with x0 ~ N(μ, Σ). VE models (EPS, v-prediction, EDM as the hosts
sample them) have α = 1; flow models (SD3, Flux) have α = 1 − t and σ = t, with t = 1 pure noise.
"""

from __future__ import annotations

import torch

from .structures import GaussianOperator


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


def gaussian_x0(op: GaussianOperator, x: torch.Tensor, sigma: float, alpha: float = 1.0) -> torch.Tensor:
    """E[x0 | x] = μ + αΣ(α²Σ + σ²I)⁻¹(x − αμ): the exact denoiser of the Gaussian."""
    return op.mean + op.apply(x - float(alpha) * op.mean, x0_spectrum(sigma, alpha))


def gaussian_flow(op: GaussianOperator, x: torch.Tensor, sigma_from: float, sigma_to: float,
                  alpha_from: float = 1.0, alpha_to: float = 1.0) -> torch.Tensor:
    """Solve the probability-flow ODE of the Gaussian from (α_T, σ_T) to (α, σ) in closed form.

    x(σ) = α μ + g(Σ)(x_T − α_T μ) with g(λ) = √((σ² + α²λ) / (σ_T² + α_T²λ)): each eigendirection
    keeps its coordinate in units of the marginal standard deviation. Finite at α_T = 0 (t = 1).
    """
    ratio = flow_spectrum(sigma_from, sigma_to, alpha_from, alpha_to)
    return float(alpha_to) * op.mean + op.apply(x - float(alpha_from) * op.mean, ratio)


def gaussian_flow_and_x0(op: GaussianOperator, x: torch.Tensor, sigma_from: float, sigma_to: float,
                         alpha_from: float = 1.0, alpha_to: float = 1.0):
    """gaussian_flow and gaussian_x0 at the start, in one pass over the eigenbasis."""
    ratio = flow_spectrum(sigma_from, sigma_to, alpha_from, alpha_to)
    moved, x0 = op.apply_many(x - float(alpha_from) * op.mean, [ratio, x0_spectrum(sigma_from, alpha_from)])
    return float(alpha_to) * op.mean + moved, op.mean + x0

