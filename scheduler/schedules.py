"""Noise schedules (sigmas ending in 0) for standalone use, and the flow ↔ VE conversions."""

from __future__ import annotations

import math
import numbers

import torch


def check_steps(n) -> int:
    """``n`` as a step count (a whole number ≥ 1); ValueError otherwise."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"a schedule needs a whole number of steps ≥ 1, got {n!r}")
    return int(n)


def check_positive(name: str, value) -> float:
    """``value`` as a finite float > 0; ValueError naming ``name`` otherwise."""
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) schedule: n sigmas from sigma_max to sigma_min, then 0.

    ValueError unless n ≥ 1 and 0 < sigma_min < sigma_max (finite), rho > 0: only the final sigma is 0.
    """
    n = check_steps(n)
    sigma_min = check_positive("sigma_min", sigma_min)
    sigma_max = check_positive("sigma_max", sigma_max)
    rho = check_positive("rho", rho)
    if sigma_max <= sigma_min:
        raise ValueError(f"sigma_max {sigma_max:g} must be above sigma_min {sigma_min:g}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def get_sigmas_edm(n: int, sigma_data: float = 0.5) -> torch.Tensor:
    """The EDM schedule (σ_max 80, σ_min 0.002 for σ_data 0.5), scaled to another σ_data."""
    k = check_positive("sigma_data", sigma_data) / 0.5
    return get_sigmas_karras(n, 0.002 * k, 80.0 * k)


SD_SIGMA_MIN, SD_SIGMA_MAX = 0.0292, 14.6146  # Stable Diffusion's discrete VP range in VE terms


def get_sigmas_sd_karras(n: int, sigma_data: float = 1.0) -> torch.Tensor:
    """A Stable-Diffusion-like Karras schedule (σ 14.6 → 0.029) for data of std σ_data."""
    sigma_data = check_positive("sigma_data", sigma_data)
    return get_sigmas_karras(n, SD_SIGMA_MIN * sigma_data, SD_SIGMA_MAX * sigma_data)


def get_sigmas_flow(n: int, shift: float = 3.0) -> torch.Tensor:
    """Rectified-flow times t from 1 to 0 with SD3/Flux's shift t' = s·t / (1 + (s − 1)·t); ValueError unless
    n ≥ 1 and shift > 0."""
    n = check_steps(n)
    shift = check_positive("shift", shift)
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
