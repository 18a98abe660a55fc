"""The Gaussian solver: the moments' Gaussian as the exact linear part of every step.

from: the integrating-factor form of the probability-flow ODE under a Gaussian (Wang & Vastola,
arXiv 2311.10892), used as an exponential integrator (Hochbruck & Ostermann 2010; DEIS, DPM-Solver).

In the VE frame (x_ve = x/α, noise level ν = σ/α), with y = x_ve − μ and Σ = U diag(λ) Uᵀ, write the
model's denoiser as D = D_G + r, D_G the Gaussian's. Per eigendirection

    dy/dν = ν y / (λ + ν²) + e,   e = −r/ν,
    y(ν₁) = Φ(ν₁)/Φ(ν₀) · y(ν₀) + Φ(ν₁) ∫ e(ν)/Φ(ν) dν,   Φ(ν) = √(λ + ν²).

The solver carries the Gaussian part exactly and a polynomial through the last residuals (a
multistep method): r = 0 is the teleport jump exactly, Σ = 0 is DDIM / DPM-Solver++. The residual
can be interpolated as

- ``noise``: e = −r/ν (the noise prediction's residual; iPNDM's variable where Σ is large),
- ``data``: r (the data prediction's residual; DPM-Solver++'s variable where Σ is 0),
- ``mean``: δ with r = (I − P_ν)δ, P_ν = Σ(Σ + ν²I)⁻¹: a shift of the Gaussian's mean (held
  constant it is the exact jump with the model-implied mean μ + δ).

The step weights ∫ ℓ_j(τ) K(ν; λ) dν depend on λ only: Gauss–Legendre in log ν, vectorised over the
eigenvalues. The last step to σ = 0 returns the model's denoised output, as k-diffusion's samplers do.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..moments.gaussian import gaussian_x0
from .binding import bind_moments
from .handoff import check_schedule
from .parameterization import parameterization as as_parameterization
from .samplers import _s_in, trange

RESIDUALS = ("noise", "data", "mean")
VARIABLES = ("sigma", "log")
MEANS = ("data", "model")
QUADRATURE = 12


def kernel(form: str, nu: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """K(ν; λ) with y(ν₁) ∋ Φ(ν₁) ∫ q(ν) K(ν; λ) dν for the residual variable q of ``form``."""
    phi2 = lam + nu ** 2
    if form == "noise":
        return phi2.rsqrt()
    if form == "data":
        return -1.0 / (nu * phi2.sqrt())
    return -nu / phi2 ** 1.5


def interp_coord(variable: str, nu: float) -> float:
    return nu if variable == "sigma" else math.log(nu)


@functools.lru_cache(maxsize=8)
def _legendre(n: int):
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)


def step_weights(form: str, variable: str, nodes: list[float], nu0: float, nu1: float, n: int = QUADRATURE):
    """λ ↦ [∫_{ν₀}^{ν₁} ℓ_j(τ(ν)) K(ν; λ) dν]_j, stacked on a last axis, for the Lagrange basis ℓ_j through
    ``nodes`` (in τ): the kernel is evaluated once at the quadrature points for every j."""
    gx, gw = _legendre(n)
    l0, l1 = math.log(nu0), math.log(nu1)
    logs = 0.5 * (l1 - l0) * gx + 0.5 * (l0 + l1)
    nus = logs.exp()
    dnu = 0.5 * (l1 - l0) * gw * nus                   # dν = ν d(log ν)
    taus = nus if variable == "sigma" else logs
    basis = []
    for j in range(len(nodes)):
        b = torch.ones_like(taus)
        for m in range(len(nodes)):
            if m != j:
                b = b * (taus - nodes[m]) / (nodes[j] - nodes[m])
        basis.append(b * dnu)
    basis = torch.stack(basis, -1)                     # (n, J)
    return lambda lam: kernel(form, nus.to(lam), lam[..., None]) @ basis.to(lam)


def per_input(fn):
    """``fn`` evaluated once per spectrum tensor it is called with (an operator calls each term's f on the same
    eigenvalues; the step's terms share one weight table)."""
    seen = {}

    def cached(lam):
        hit = seen.get(id(lam))
        if hit is None or hit[0] is not lam:
            hit = seen[id(lam)] = (lam, fn(lam))
        return hit[1]
    return cached


def first_step_weight(nu1: float, nu0: float):
    """∫ K_mean over [ν₁, ν₀] in closed form, also from ν₀ = ∞ (a flow model's t = 1): 1/Φ(ν₁) − 1/Φ(ν₀)."""
    def weight(lam):
        inv0 = torch.zeros_like(lam) if math.isinf(nu0) else (lam + nu0 ** 2).rsqrt()
        return (lam + nu1 ** 2).rsqrt() - inv0
    return weight


@torch.no_grad()
def sample_gaussian(model, x, sigmas, extra_args=None, callback=None, disable=None, *, moments, order: int = 3,
                    latent_format=None, parameterization="ve", residual: str = "noise", variable: str = "log",
                    corrector: bool = False, mean: str = "data"):
    """The Gaussian solver in k-diffusion's form: the Gaussian part exact, the residual by a multistep rule.

    ``order``: the residuals (model calls) the polynomial runs through, rising from 1 over the first
    steps. ``residual``/``variable``: what is interpolated (see the module) and in which coordinate
    (``log``: log ν, ``sigma``: ν). ``corrector``: redo each step with the polynomial through the call
    that ends it (UniPC's trick: that call is made at the predicted point and reused, so it costs
    nothing). ``mean="model"``: each sample's Gaussian mean from the first call (exact for a Gaussian).
    A flow model's first step from t = 1 holds the mean the first call implies (the closed-form jump).
    """
    check_options(order, residual, variable, mean)
    extra_args = {} if extra_args is None else extra_args
    param = as_parameterization(parameterization)
    n = check_schedule(sigmas, param)
    gauss = bind_moments(moments, x.shape[1:], latent_format=latent_format, parameterization=param, device=x.device)
    op, dtype = gauss.op, gauss.dtype
    s_in = _s_in(x)
    mu = op.mean
    hist = []          # (ν, residual in its interpolated form) of the last calls, newest first
    prev = None        # (x, σ₀, σ₁) of the step just taken, for the corrector
    for i in trange(n, disable=disable):
        s, s1 = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if s1 == 0:
            return denoised
        check_finite(denoised, s)
        if i == 0 and mean == "model":
            mu = gauss.implied_mean(x.to(dtype), denoised.to(dtype), s)
        hist = ([call_point(op, mu, param, s, x.to(dtype), denoised.to(dtype), residual)] + hist)[:order + 1]
        if corrector and prev is not None:
            x = step(op, mu, param, *prev, hist[:order + 1], residual, variable).to(denoised.dtype)
        xc = x.to(dtype)
        x = step(op, mu, param, xc, s, s1, hist[:order], residual, variable).to(denoised.dtype)
        prev = None if math.isinf(param.noise_level(s)) else (xc, s, s1)
    return x


def check_options(order, residual, variable, mean):
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"the Gaussian solver's order must be a whole number from 1 to 4, got {order!r}")
    for name, value, allowed in (("residual", residual, RESIDUALS), ("variable", variable, VARIABLES),
                                 ("mean", mean, MEANS)):
        if value not in allowed:
            raise ValueError(f"the Gaussian solver's {name} must be one of {allowed}, got {value!r}")


def check_finite(denoised, sigma):
    if not bool(torch.isfinite(denoised).all()):
        raise ValueError(f"the model returned NaN or Inf at σ {sigma:.4g}; the solver cannot continue (check the "
                         "model, its precision and the prompt)")


def call_point(op, mean, param, s, x, denoised, residual):
    """(ν, q) of one model call: its residual r = D − D_G in the form ``residual`` interpolates, computed once
    per call. At ν = ∞ (a flow model's t = 1) q is r itself, there the shift δ of the mean."""
    nu = param.noise_level(s)
    r = denoised - gaussian_x0(op, x, s, param.alpha(s), mean)
    return nu, (r if math.isinf(nu) else in_form(residual, op, r, nu))


def step(op, mean, param, xc, s, s1, points, residual, variable):
    """x at σ₁ from xc at σ: the Gaussian part exactly, the residuals ``points`` through their polynomial.

    Every term is a function of Σ applied to one vector, so the operator sums them in one pass over its
    eigenbasis (two (B×D)(D×k) products a step with the residual's, like the jump)."""
    a0, a1 = param.alpha(s), param.alpha(s1)
    nu0, nu1 = param.noise_level(s), param.noise_level(s1)
    psi1 = lambda lam: (a1 ** 2 * lam + s1 ** 2).sqrt()           # α₁Φ(ν₁)  # noqa: E731
    vs, fs = [xc - a0 * mean], [lambda lam: psi1(lam) / (a0 ** 2 * lam + s ** 2).sqrt()]
    if math.isinf(points[0][0]):     # from t = 1: hold the mean the call implies (there r = δ), exactly
        w = first_step_weight(nu1, nu0)
        vs.append(points[0][1])
        fs.append(lambda lam: psi1(lam) * w(lam))
    else:
        points = [(nu, q) for nu, q in points if not math.isinf(nu)]
        weights = step_weights(residual, variable, [interp_coord(variable, nu) for nu, _ in points], nu0, nu1)
        table = per_input(lambda lam: psi1(lam)[..., None] * weights(lam))
        for j, (_, q) in enumerate(points):
            vs.append(q)
            fs.append(lambda lam, j=j: table(lam)[..., j])
    return a1 * mean + op.apply_sum(vs, fs)


def in_form(form: str, op, r: torch.Tensor, nu: float) -> torch.Tensor:
    """The residual r = D − D_G in the variable ``form`` interpolates."""
    if form == "noise":
        return -r / nu
    if form == "data":
        return r
    return op.apply(r, lambda lam: (lam + nu ** 2) / nu ** 2)     # δ = (I − P_ν)⁻¹ r


def make_gaussian_sampler(moments, order: int = 3, latent_format=None, parameterization="ve", **options):
    """``sample_gaussian`` bound to its moments: a k-diffusion sampler function fn(model, x, sigmas, …)."""
    check_options(order, options.get("residual", "noise"), options.get("variable", "log"), options.get("mean", "data"))
    fn = functools.partial(sample_gaussian, moments=moments, order=order, latent_format=latent_format,
                           parameterization=parameterization, **options)
    functools.update_wrapper(fn, sample_gaussian)
    return fn
