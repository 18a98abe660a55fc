"""Noise schedules (sigmas ending in 0) for standalone use, and the flow ↔ VE conversions."""

from __future__ import annotations

import torch


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) schedule: n sigmas from sigma_max to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def get_sigmas_edm(n: int, sigma_data: float = 0.5) -> torch.Tensor:
    """The EDM schedule (σ_max 80, σ_min 0.002 for σ_data 0.5), scaled to another σ_data."""
    k = sigma_data / 0.5
    return get_sigmas_karras(n, 0.002 * k, 80.0 * k)


SD_SIGMA_MIN, SD_SIGMA_MAX = 0.0292, 14.6146  # Stable Diffusion's discrete VP range in VE terms


def get_sigmas_sd_karras(n: int, sigma_data: float = 1.0) -> torch.Tensor:
    """A Stable-Diffusion-like Karras schedule (σ 14.6 → 0.029) for data of std σ_data."""
    return get_sigmas_karras(n, SD_SIGMA_MIN * sigma_data, SD_SIGMA_MAX * sigma_data)


def get_sigmas_flow(n: int, shift: float = 3.0) -> torch.Tensor:
    """Rectified-flow times t from 1 to 0 with SD3/Flux's shift t' = s·t / (1 + (s − 1)·t)."""
    t = torch.linspace(1, 0, n + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)



REFERENCE_SCHEDULES = ("edm", "sd")


def make_sigmas(schedule: str, steps: int, sigma_data: float) -> torch.Tensor:
    """The reference models' schedules, scaled to σ_data: EDM's, or Stable Diffusion's Karras range."""
    if schedule == "edm":
        return get_sigmas_edm(steps, sigma_data)
    if schedule == "sd":
        return get_sigmas_sd_karras(steps, sigma_data)
    raise ValueError(f"schedule must be one of {REFERENCE_SCHEDULES}, got {schedule!r}")
