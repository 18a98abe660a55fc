"""The closed-form Gaussian math against independent dense float64 computations and a fine-step ODE solve."""

import numpy as np
import pytest
import torch
from conftest import correlated_latents, dense_covariance, dense_x0

from gaussian_teleport.moments import estimate_moments, gaussian_flow, gaussian_x0

STRUCTURES = ["dense", "lowrank", "stationary"]


def random_case(seed, structure):
    """Random latent shape, moments of the chosen structure, and a noisy batch."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(2, 6)), int(rng.integers(2, 6)))
    d = int(np.prod(shape))
    n = int(rng.integers(d // 2 + 3, 3 * d))  # sometimes fewer samples than dimensions
    data = correlated_latents(n, shape, seed)
    rank = int(rng.integers(1, d))
    m = estimate_moments(data.split(7), structure, rank=rank, dtype=torch.float64)
    return m, shape, rng


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("seed", range(4))
def test_operator_is_the_dense_covariance(structure, seed):
    m, shape, _ = random_case(seed, structure)
    mean, cov = dense_covariance(m)
    op = m.operator(shape)
    v = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got = op.apply(v, lambda lam: lam).reshape(3, -1).numpy()
    want = v.reshape(3, -1).numpy() @ cov.T
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10 * np.abs(want).max())
    np.testing.assert_allclose(op.mean.flatten().numpy(), mean)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("flow", [False, True])
def test_x0_matches_linear_solve(structure, seed, flow):
    m, shape, rng = random_case(seed + 10, structure)
    mean, cov = dense_covariance(m)
    sigma = float(rng.uniform(0.05, 0.95)) if flow else float(np.exp(rng.uniform(-3, 4)))
    alpha = 1 - sigma if flow else 1.0
    x = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got = gaussian_x0(m.operator(shape), x, sigma, alpha).reshape(2, -1).numpy()
    want = dense_x0(mean, cov, x.reshape(2, -1).numpy(), sigma, alpha)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-9 * np.abs(want).max())


def rk4_flow(mean, cov, x, s_from, s_to, flow, steps=2000):
    """Fine-step RK4 solve of the probability-flow ODE for x = α(σ)·x0 + σ·ε, with dense linear solves.

    The flow is the conditional mean of the path's velocity: dx/dσ = α'(σ)·E[x0|x] + E[ε|x], which is
    (x − D(x, σ))/σ for VE (α = 1) and E[ε|x] − E[x0|x] for rectified flow (α = 1 − σ). Steps are uniform
    in log σ (VE) or in σ (flow, which reaches α = 0 at σ = 1).
    """
    alpha_of, dalpha = (lambda s: 1.0 - s, -1.0) if flow else (lambda s: 1.0, 0.0)

    def velocity(xv, s):
        a = alpha_of(s)
        x0 = dense_x0(mean, cov, xv, s, a)
        return dalpha * x0 + (xv - a * x0) / s

    if not flow:
        grid = np.exp(np.linspace(np.log(s_from), np.log(s_to), steps + 1))
    else:
        grid = np.linspace(s_from, s_to, steps + 1)
    for a, b in zip(grid[:-1], grid[1:]):
        h = b - a
        k1 = velocity(x, a)
        k2 = velocity(x + h / 2 * k1, a + h / 2)
        k3 = velocity(x + h / 2 * k2, a + h / 2)
        k4 = velocity(x + h * k3, b)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("flow", [False, True])
def test_closed_form_flow_matches_fine_ode_solve(structure, seed, flow):
    m, shape, rng = random_case(seed + 20, structure)
    mean, cov = dense_covariance(m)
    if flow:
        alpha_of = lambda s: 1.0 - s
        s_from = 1.0 if seed == 0 else float(rng.uniform(0.7, 0.99))  # includes t = 1 (α = 0) exactly
        s_to = float(rng.uniform(0.1, 0.5))
    else:
        alpha_of = lambda s: 1.0
        s_from = float(np.exp(rng.uniform(np.log(5), np.log(80))))
        s_to = float(np.exp(rng.uniform(np.log(0.2), np.log(3))))
    gen = torch.Generator().manual_seed(seed)
    x0 = correlated_latents(2, shape, seed)
    x_T = alpha_of(s_from) * x0 + s_from * torch.randn(2, *shape, dtype=torch.float64, generator=gen)
    got = gaussian_flow(m.operator(shape), x_T, s_from, s_to, alpha_of(s_from), alpha_of(s_to))
    want = rk4_flow(mean, cov, x_T.reshape(2, -1).numpy(), s_from, s_to, flow)
    rel = np.linalg.norm(got.reshape(2, -1).numpy() - want) / np.linalg.norm(want)
    assert rel <= 1e-5, f"closed form vs ODE: relative error {rel:.3g}"


def test_flow_is_a_semigroup_and_identity():
    m, shape, _ = random_case(3, "lowrank")
    op = m.operator(shape)
    x = torch.randn(2, *shape, dtype=torch.float64)
    two_hops = gaussian_flow(op, gaussian_flow(op, x, 20.0, 4.0), 4.0, 0.5)
    np.testing.assert_allclose(two_hops, gaussian_flow(op, x, 20.0, 0.5), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gaussian_flow(op, x, 3.0, 3.0), x, rtol=1e-13, atol=1e-13)
