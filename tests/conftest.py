"""Shared fixtures: random data and dense float64 references computed independently of the operators."""

import numpy as np
import pytest
import torch


def correlated_latents(n, shape, seed, mean_scale=0.5):
    """Non-isotropic data with a non-zero mean: x = μ + A z, A random (rows scaled unevenly)."""
    gen = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    a = torch.randn(d, d, generator=gen, dtype=torch.float64) / d ** 0.5
    a = a * torch.logspace(0, -1.5, d, dtype=torch.float64)[None, :]
    mu = mean_scale * torch.randn(d, generator=gen, dtype=torch.float64)
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return (mu + z @ a.T).reshape(n, *shape)


def dft_matrix(n):
    k = np.arange(n)
    return np.exp(-2j * np.pi * np.outer(k, k) / n) / np.sqrt(n)


def dense_covariance(moments):
    """(μ, Σ) as flat float64 numpy arrays, built from the stored parameters by explicit formulas."""
    mean = moments.mean.double().flatten().numpy()
    d = mean.size
    if moments.structure in ("dense", "lowrank"):
        u = moments.eigvecs.double().numpy()
        lam = moments.eigvals.double().numpy()
        cov = (u * lam) @ u.T
        if moments.structure == "lowrank":
            cov = cov + float(moments.residual) * (np.eye(d) - u @ u.T)
        return mean, cov
    c, h, w = moments.latent_shape
    v = moments.eigvecs.to(torch.complex128).numpy()
    p = np.einsum("hwij,hwj,hwkj->hwik", v, moments.eigvals.double().numpy(), v.conj())  # (H, W, C, C)
    f = np.kron(dft_matrix(h), dft_matrix(w))  # (HW, HW), row-major over (h, w)
    blocks = p.reshape(h * w, c, c)
    # Σ[(c,q),(c',q')] = Σ_k conj(F[k,q]) P_k[c,c'] F[k,q']  (x_c = Fᴴ X_c)
    cov = np.einsum("kq,kij,kr->iqjr", f.conj(), blocks, f)
    return mean, cov.reshape(d, d).real


def dense_x0(mean, cov, x, sigma, alpha):
    """E[x0 | x] by a linear solve with the dense covariance (x: (B, D) numpy)."""
    d = mean.size
    m = alpha**2 * cov + sigma**2 * np.eye(d)
    return mean + (alpha * cov @ np.linalg.solve(m, (x - alpha * mean).T)).T


@pytest.fixture
def latents():
    return correlated_latents
