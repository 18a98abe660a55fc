"""Moments read off a model's Jacobian: exact for a Gaussian model, against dense float64 references."""

import numpy as np
import pytest
import torch
from conftest import correlated_latents, dense_covariance, dense_x0

from gaussian_teleport.moments import (MomentsError, estimate_moments, estimate_moments_from_model,
                                       model_implied_mean)
from gaussian_teleport.moments.from_model import cost_in_calls


def gaussian_denoiser(mean, cov, flow=False):
    """E[x0 | x] by dense float64 linear solves (independent of the operators); counts calls and batches."""
    calls = []

    def model(x, sigma, **extra):
        s = float(sigma[0])
        calls.append(x.shape[0])
        a = 1 - s if flow else 1.0
        out = dense_x0(mean, cov, x.double().reshape(x.shape[0], -1).numpy(), s, a)
        return torch.from_numpy(out).reshape(x.shape).to(x.dtype)

    model.calls = calls
    return model


@pytest.fixture(scope="module")
def truth():
    data = correlated_latents(4000, (2, 3, 4), seed=21, mean_scale=0.7)
    return dense_covariance(estimate_moments([data], "dense", dtype=torch.float64))


@pytest.mark.parametrize("flow", [False, True])
def test_dense_from_a_gaussian_model_recovers_its_moments(truth, flow):
    mean, cov = truth
    model = gaussian_denoiser(mean, cov, flow)
    m = estimate_moments_from_model(model, (2, 3, 4), structure="dense", sigma=2.0, parameterization="flow" if flow
                                    else "ve", input_dtype=torch.float64, dtype=torch.float64)
    got_mean, got_cov = dense_covariance(m)
    np.testing.assert_allclose(got_cov, cov, atol=2e-6 * np.abs(cov).max())
    np.testing.assert_allclose(got_mean, mean, atol=1e-6)
    assert m.space == "model" and m.metadata["source"] == "model"
    assert m.metadata["model_calls"] == len(model.calls) == 3 + 4
    assert m.metadata["batch_sizes"] == str(24 + 1)


def test_lowrank_keeps_the_top_directions_and_the_rest_on_average(truth):
    mean, cov = truth
    lam = np.linalg.eigvalsh(cov)[::-1]
    m = estimate_moments_from_model(gaussian_denoiser(mean, cov), (2, 3, 4), rank=6, sigma=1.5, draws=6, probes=12,
                                    input_dtype=torch.float64, dtype=torch.float64)
    np.testing.assert_allclose(m.eigvals.numpy(), lam[:6], rtol=1e-3)  # 3 subspace iterations: converged to ~1e-4
    # the isotropic rest is a Hutchinson estimate of the remaining trace: right on average, not exactly
    rest = lam[6:].mean()
    assert abs(float(m.residual) - rest) < 0.5 * rest


def test_stationary_from_a_stationary_gaussian_is_exact():
    kernel = torch.tensor([[0.2, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 0.2]], dtype=torch.float64)
    z = torch.randn(6000, 2, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    pad = torch.nn.functional.pad(z, (1, 1, 1, 1), mode="circular")
    mix = torch.tensor([[1.0, 0.4], [0.0, 0.6]], dtype=torch.float64)
    field = torch.nn.functional.conv2d(pad, kernel[None, None].expand(2, 1, 3, 3), groups=2)
    field = torch.einsum("ij,bjhw->bihw", mix, field) + torch.tensor([0.3, -0.2], dtype=torch.float64)[:, None, None]
    data = estimate_moments([field], "stationary", dtype=torch.float64)
    mean, cov = dense_covariance(data)
    m = estimate_moments_from_model(gaussian_denoiser(mean, cov), (2, 6, 5), structure="stationary", sigma=2.0,
                                    input_dtype=torch.float64, dtype=torch.float64)
    got_mean, got_cov = dense_covariance(m)
    np.testing.assert_allclose(got_cov, cov, atol=1e-6 * np.abs(cov).max())
    np.testing.assert_allclose(got_mean, mean, atol=1e-6)
    assert m.metadata["model_calls"] == 4 and m.metadata["batch_sizes"] == "3"


def test_calls_are_split_by_batch_size_and_reported(truth):
    mean, cov = truth
    model = gaussian_denoiser(mean, cov)
    seen = []
    m = estimate_moments_from_model(model, (2, 3, 4), rank=4, iterations=2, draws=2, batch_size=5,
                                    progress=lambda done, total: seen.append((done, total)))
    assert max(model.calls) == 5 and m.metadata["model_calls"] == len(model.calls) == len(seen)
    assert sum(model.calls) == m.metadata["evaluations"]
    assert cost_in_calls("lowrank", 2, 2, 4, (2, 3, 4))["evaluations"] == m.metadata["evaluations"]


def test_the_model_implied_mean_is_exact_for_a_gaussian(truth):
    """μ̂ = (I + α²Σ/σ²)D − (αΣ/σ²)x recovers μ from one denoiser output, for VE and flow."""
    mean, cov = truth
    m = estimate_moments([correlated_latents(500, (2, 3, 4), seed=22)], "dense", dtype=torch.float64, space="model")
    _, other_cov = dense_covariance(m)
    op = m.operator((2, 3, 4))
    x = torch.randn(3, 2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 4
    shifted = mean + 0.5
    for sigma, alpha in ((4.0, 1.0), (0.7, 0.3), (1.0, 0.0)):
        d = dense_x0(shifted, other_cov, x.reshape(3, -1).numpy(), sigma, alpha)
        got = model_implied_mean(op, x, torch.from_numpy(d).reshape(x.shape), sigma, alpha)
        np.testing.assert_allclose(got.reshape(3, -1).numpy(), np.tile(shifted, (3, 1)), atol=1e-9)


def test_bad_requests_are_refused_with_a_reason(truth):
    mean, cov = truth
    model = gaussian_denoiser(mean, cov)
    with pytest.raises(MomentsError, match="latent_shape"):
        estimate_moments_from_model(model, (2, 3))
    with pytest.raises(MomentsError, match="structure"):
        estimate_moments_from_model(model, (2, 3, 4), structure="full")
    with pytest.raises(MomentsError, match="iterations"):
        estimate_moments_from_model(model, (2, 3, 4), iterations=0)
    with pytest.raises(MomentsError, match="pure noise"):
        estimate_moments_from_model(model, (2, 3, 4), sigma=1e300, parameterization="flow")
    assert model.calls == []


def test_a_model_that_is_not_gaussian_at_sigma_is_capped_and_reported(caplog):
    """D(x) = 1.5·x has a Jacobian above 1 (an untrained or non-Gaussian model): no infinite variances."""
    import logging

    with caplog.at_level(logging.WARNING, logger="gaussian_teleport"):
        m = estimate_moments_from_model(lambda x, s, **_: 1.5 * x, (1, 2, 2), structure="dense", sigma=3.0)
    assert m.metadata["capped_directions"] == 4 and "capped" in m.describe()
    assert bool(torch.isfinite(m.eigvals).all()) and float(m.eigvals.max()) == pytest.approx(99 * 9.0, rel=1e-6)
    assert "not Gaussian there" in caplog.text and "higher sigma" in caplog.text
