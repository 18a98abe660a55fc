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


def readable_structure(moments) -> str:
    structure = getattr(moments, "structure", None)
    if structure not in ("dense", "lowrank", "stationary"):
        raise ValueError(f"a spectrum schedule reads dense, low-rank or stationary image moments; got {moments!r}")
    return structure


def moments_spectrum(moments) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ, w): the covariance's eigenvalues and how many directions each stands for (float64, flat).

    Dense and low-rank moments: their eigenvalues, and the isotropic residual for the D − k directions
    outside span(U); stationary moments: one eigenvalue per frequency and channel."""
    structure = readable_structure(moments)
    lam = moments.eigvals.detach().flatten().double().cpu()
    weight = torch.ones_like(lam)
    rest = moments.dim - lam.numel()
    if structure != "stationary" and rest > 0:
        lam = torch.cat([lam, moments.residual.detach().double().cpu().reshape(1)])
        weight = torch.cat([weight, weight.new_full((1,), float(rest))])
    if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()):
        raise ValueError("the moments' eigenvalues must be finite and ≥ 0 for a spectrum schedule")
    return lam.clamp(min=0), weight


def denoiser_change(lam: torch.Tensor, weight: torch.Tensor, u: torch.Tensor, order: int) -> torch.Tensor:
    """‖∂ᵖ D_G / ∂(log σ)ᵖ‖ along the Gaussian's own probability flow, p = ``order`` (1 or 2), at log σ = u.

    On that flow each eigendirection keeps its coordinate z in units of the marginal standard deviation
    √(λ + σ²), and the Gaussian denoiser's coordinate is λ z / √(λ + σ²); with s = σ² its derivatives in
    log σ are −λ s (λ + s)^(−3/2) and −2λ s (λ − s/2)(λ + s)^(−5/2). The norm is the root mean square over
    z ~ N(0, I), summed over the directions."""
    s = (2 * u).exp()[:, None]
    lam = lam[None, :]
    if order == 1:
        d = -lam * s * (lam + s) ** -1.5
    else:
        d = -2 * lam * s * (lam - s / 2) * (lam + s) ** -2.5
    return (d ** 2 @ weight).sqrt()


SPECTRUM_MEASURES = ("error", "variance")


def spectrum_sigmas(moments, n: int, sigma_min: float, sigma_max: float, *, measure: str = "error", order: int = 1,
                    mix: float = 0.0, rho: float = 7.0, latent_format=None, grid: int = 4096) -> torch.Tensor:
    """n sigmas from sigma_max to sigma_min, then 0, spaced by the moments' spectrum (VE noise levels).

    ``measure="error"``: each step gets an equal share of a p-th order method's local error on the
    moments' own Gaussian ODE: the step density in log σ is ∝ ‖∂ᵖ D_G/∂(log σ)ᵖ‖^(1/(p+1)) (see
    ``denoiser_change``; p = ``order``), the density that also minimises the sum of those errors at n
    steps. A first-order data-prediction step (DDIM, Euler in VE) errs by about h²/2·‖∂D/∂ log σ‖ over
    a step of h in log σ. ``measure="variance"``: equal steps in the share of the data's variance the
    Gaussian denoiser explains, Σ λ²/(λ + σ²) / Σ λ. Either way, where the Gaussian denoiser barely
    changes (σ far above every √λ, or far below) the steps are long. ``mix`` in [0, 1] blends in Karras's
    density (equal steps in σ^(1/rho)) by that share, which keeps steps where the data stops being
    Gaussian (low σ). ``latent_format``: raw VAE-space moments are converted to the model's space first,
    as the samplers do. ValueError on bad input.
    """
    n = check_steps(n)
    sigma_min = check_positive("sigma_min", sigma_min)
    sigma_max = check_positive("sigma_max", sigma_max)
    rho = check_positive("rho", rho)
    if sigma_max <= sigma_min:
        raise ValueError(f"sigma_max {sigma_max:g} must be above sigma_min {sigma_min:g}")
    if measure not in SPECTRUM_MEASURES:
        raise ValueError(f"the spectrum schedule's measure must be one of {SPECTRUM_MEASURES}, got {measure!r}")
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"the spectrum schedule's order must be 1 or 2, got {order!r}")
    mix = float(mix)
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be within [0, 1], got {mix!r}")
    readable_structure(moments)
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    from .binding import sampler_space      # the moments in the sampler's space, exactly as bind_moments has them

    lam, weight = moments_spectrum(sampler_space(moments, latent_format))
    grid = check_steps(grid)
    if grid < 2 * n:
        raise ValueError(f"the spectrum schedule's grid must have at least 2n = {2 * n} points, got {grid}")
    u = torch.linspace(math.log(sigma_max), math.log(sigma_min), grid, dtype=torch.float64)
    if measure == "error":
        density = denoiser_change(lam, weight, u, order) ** (1.0 / (order + 1))
    else:                                    # |d/d log σ| of Σ λ²/(λ + σ²): 2λ²σ²/(λ + σ²)²
        s = (2 * u).exp()[:, None]
        density = (2 * lam ** 2 * s / (lam + s) ** 2) @ weight
    karras = (u / rho).exp()                 # d(σ^(1/ρ)) / d(log σ) up to a constant
    cdf = []
    for d in (density, karras):
        c = torch.cat([d.new_zeros(1), torch.cumsum(0.5 * (d[1:] + d[:-1]) * (u[:-1] - u[1:]), 0)])
        cdf.append(c / c[-1] if float(c[-1]) > 0 else None)
    if cdf[0] is None:
        if mix < 1.0:
            raise ValueError("the moments have no variance (every eigenvalue 0): their Gaussian denoiser never "
                             "changes, so it cannot space steps; use mix=1 (Karras) or other moments")
        cdf[0] = cdf[1]
    total = (1 - mix) * cdf[0] + mix * cdf[1]
    targets = torch.linspace(0, 1, n, dtype=torch.float64)
    idx = torch.searchsorted(total, targets).clamp(1, len(u) - 1)
    lo, hi = total[idx - 1], total[idx]
    frac = ((targets - lo) / (hi - lo).clamp(min=1e-300)).clamp(0, 1)
    sigmas = (u[idx - 1] + frac * (u[idx] - u[idx - 1])).exp()
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"the spectrum puts less than one step's share between some of {n} steps on a {grid}-point "
                         "grid; give a finer grid, fewer steps or a larger mix")
    return torch.cat([sigmas, sigmas.new_zeros(1)])


REFERENCE_SCHEDULES = ("edm", "sd")


def make_sigmas(schedule: str, steps: int, sigma_data: float) -> torch.Tensor:
    """The reference models' schedules, scaled to σ_data: EDM's, or Stable Diffusion's Karras range."""
    if schedule == "edm":
        return get_sigmas_edm(steps, sigma_data)
    if schedule == "sd":
        return get_sigmas_sd_karras(steps, sigma_data)
    raise ValueError(f"schedule must be one of {REFERENCE_SCHEDULES}, got {schedule!r}")
