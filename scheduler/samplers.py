"""Deterministic k-diffusion samplers for use outside a host.

Same contract and arithmetic as k-diffusion's sample_euler, sample_heun and sample_dpmpp_2m
(crowsonkb/k-diffusion, k_diffusion/sampling.py); inside ComfyUI or A1111 the host's own samplers
are used instead. ``model(x, sigma·ones[B], **extra_args)`` returns the denoised x0 prediction.
"""

from __future__ import annotations

import torch

try:
    from tqdm.auto import trange
except ImportError:  # tqdm is optional
    def trange(n, disable=None, **_):
        return range(n)


def to_d(x, sigma, denoised):
    """The probability-flow ODE derivative dx/dσ = (x − D(x, σ)) / σ."""
    return (x - denoised) / sigma


def euler_step(x, sigma, sigma_next, denoised):
    """One Euler step of the probability-flow ODE; with σ = t it is also the flow models' Euler step."""
    return x + to_d(x, sigma, denoised) * (sigma_next - sigma)


def _s_in(x):
    return x.new_ones([x.shape[0]])


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Implements Algorithm 2 (Euler steps) from Karras et al. (2022), without churn."""
    extra_args = {} if extra_args is None else extra_args
    s_in = _s_in(x)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = euler_step(x, sigmas[i], sigmas[i + 1], denoised)
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Implements Algorithm 2 (Heun steps) from Karras et al. (2022), without churn."""
    extra_args = {} if extra_args is None else extra_args
    s_in = _s_in(x)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt  # Euler method
        else:
            x_2 = x + d * dt  # Heun's method
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al., 2022), k-diffusion's formulation."""
    extra_args = {} if extra_args is None else extra_args
    s_in = _s_in(x)
    sigma_fn = lambda t: t.neg().exp()
    t_fn = lambda sigma: sigma.log().neg()
    old_denoised = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m}


def model_calls(sampler: str, sigmas: torch.Tensor) -> int:
    """Model evaluations a sampler makes on a schedule (Heun: 2 per step except a final step to 0)."""
    steps = len(sigmas) - 1
    if sampler == "heun":
        return 2 * steps - int((sigmas[1:] == 0).sum())
    return steps
