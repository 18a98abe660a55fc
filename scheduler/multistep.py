"""The strongest plain samplers a user already has, written from their papers in k-diffusion's form.

- iPNDM (Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator", ICLR 2023,
  appendix: improved pseudo numerical methods): Adams–Bashforth on the noise prediction
  d = (x − D)/σ, the fixed coefficients of equal steps, order rising 1 → 4 over the first steps.
- iPNDM-v: the same with the coefficients of the actual (variable) steps: the Lagrange polynomial
  through the last ≤ 4 d's, integrated exactly over the step.
- DEIS (same paper, ρAB-DEIS): the exponential integrator of the VE/EDM ODE dx/dσ = d has no linear
  part, so ρAB-DEIS of order k is the variable-step Adams–Bashforth of order k in ρ = σ; ``sample_deis``
  is that, at most order 3 as the paper runs it.
- UniPC (Zhao et al., "UniPC: A Unified Predictor-Corrector Framework", NeurIPS 2023), the bh2
  variant with data prediction: a multistep predictor (UniP) and a corrector (UniC) that reuses the
  next step's model call, so it costs one call per step.

Every sampler's last step to σ = 0 returns the model's denoised output, as k-diffusion's do.
"""

from __future__ import annotations

import torch

from .samplers import _s_in, to_d, trange

IPNDM_COEFFICIENTS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def lagrange_integrals(nodes: list[float], a: float, b: float) -> list[float]:
    """∫_a^b ℓ_j(s) ds for the Lagrange basis ℓ_j through ``nodes`` (exact: Gauss–Legendre of enough points)."""
    k = len(nodes)
    gx, gw = _gauss_legendre(max(k, 1))
    s = [0.5 * (b - a) * g + 0.5 * (a + b) for g in gx]
    out = []
    for j in range(k):
        total = 0.0
        for sq, wq in zip(s, gw):
            term = 1.0
            for m in range(k):
                if m != j:
                    term *= (sq - nodes[m]) / (nodes[j] - nodes[m])
            total += wq * term
        out.append(0.5 * (b - a) * total)
    return out


def _gauss_legendre(n: int):
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(n)
    return x.tolist(), w.tolist()


def adams_bashforth(model, x, sigmas, extra_args, callback, disable, max_order, weights):
    """Adams–Bashforth on d = (x − D)/σ: x ← x + Σ_j w_j d_j with ``weights(nodes, σ, σ_next)`` (newest first)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = _s_in(x)
    history, nodes = [], []
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigmas[i + 1] == 0:
            return denoised
        history = ([to_d(x, sigmas[i], denoised)] + history)[:max_order]
        nodes = ([float(sigmas[i])] + nodes)[:max_order]
        x = x + sum(w * d for w, d in zip(weights(nodes, float(sigmas[i]), float(sigmas[i + 1])), history))
    return x


def equal_step_weights(nodes, sigma, sigma_next):
    return [c * (sigma_next - sigma) for c in IPNDM_COEFFICIENTS[len(nodes) - 1]]


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order: int = 4):
    """iPNDM: Adams–Bashforth on d = (x − D)/σ with the fixed coefficients of equal steps (order ≤ 4)."""
    return adams_bashforth(model, x, sigmas, extra_args, callback, disable, max_order, equal_step_weights)


@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order: int = 4):
    """iPNDM with variable steps: the Lagrange polynomial through the last ≤ 4 d's, integrated over the step."""
    return adams_bashforth(model, x, sigmas, extra_args, callback, disable, max_order, lagrange_integrals)


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order: int = 3):
    """ρAB-DEIS (order ≤ 3): on the VE/EDM ODE, variable-step Adams–Bashforth in ρ = σ."""
    return sample_ipndm_v(model, x, sigmas, extra_args, callback, disable, max_order=max_order)


def _unipc_coefficients(rks: list[float], hh: float, order: int):
    """UniPC's R matrix and b vector for B(h) = expm1(hh) (bh2), as in the paper's Algorithm (data prediction)."""
    import math

    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    b_h = math.expm1(hh)
    rows, b = [], []
    r = torch.tensor(rks, dtype=torch.float64)
    for k in range(1, order + 1):
        rows.append(r ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.tensor(b, dtype=torch.float64), h_phi_1, b_h


@torch.no_grad()
def sample_uni_pc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None, order: int = 3):
    """UniPC-bh2 with data prediction (predictor UniP, corrector UniC on the next call), order ≤ ``order``.

    VE form (α = 1, λ = −log σ). The corrector of step i uses the model call that starts step i + 1, so
    the sampler costs one call per step; the last step to σ = 0 returns the denoised output.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = _s_in(x)
    lam = lambda s: -float(torch.log(torch.as_tensor(s, dtype=torch.float64)))  # noqa: E731
    models, lams = [], []
    x_pre, step_order = None, 0   # the state before the last predictor step and its order: UniC redoes it
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if x_pre is not None:   # UniC: correct the step just taken with the new model output
            x = _unipc_update(x_pre, models[-step_order:], lams[-step_order:], lam(sigmas[i]), float(sigmas[i - 1]),
                              float(sigmas[i]), step_order, corrector=denoised)
        models = (models + [denoised])[-order:]
        lams = (lams + [lam(sigmas[i])])[-order:]
        if sigmas[i + 1] == 0:
            return denoised
        step_order = min(order, len(models), len(sigmas) - 2 - i)   # lower order on the final steps
        x_pre = x
        x = _unipc_update(x, models[-step_order:], lams[-step_order:], lam(sigmas[i + 1]), float(sigmas[i]),
                          float(sigmas[i + 1]), step_order)
    return x


def _unipc_update(x, models, lams, lam_t, sigma_prev, sigma_t, order, corrector=None):
    """One UniP step from the last of ``models`` (at λ lams[-1]) to λ_t; with ``corrector`` the UniC step."""
    m0, lam0 = models[-1], lams[-1]
    h = lam_t - lam0
    rks, d1s = [], []
    for k in range(1, order):
        rk = (lams[-(k + 1)] - lam0) / h
        rks.append(rk)
        d1s.append((models[-(k + 1)] - m0) / rk)
    rks.append(1.0)
    R, b, h_phi_1, b_h = _unipc_coefficients(rks, -h, order)
    x_t = (sigma_t / sigma_prev) * x - h_phi_1 * m0
    if corrector is None:
        if not d1s:
            return x_t
        rhos = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        return x_t - b_h * sum(r * d for r, d in zip(rhos, d1s))
    rhos = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
    res = sum(r * d for r, d in zip(rhos[:-1], d1s)) if d1s else 0
    return x_t - b_h * (res + rhos[-1] * (corrector - m0))


MULTISTEP_SAMPLERS = {"ipndm": sample_ipndm, "ipndm_v": sample_ipndm_v, "deis": sample_deis,
                      "uni_pc_bh2": sample_uni_pc_bh2}
