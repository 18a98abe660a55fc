"""The Gaussian solver and the multistep peers, against independent computations.

- On a model that *is* the moments' Gaussian the solver is the closed-form flow at any budget.
- With zero-variance moments and a data residual held over the step it is DDIM (Euler).
- On a non-Gaussian model (an exact two-component mixture denoiser) every solver converges to a
  float64 fine-step solve at its order, measured from the error at n and 2n steps.
"""

import math

import pytest
import torch

from gaussian_teleport.moments import DenseMoments, MomentsError
from gaussian_teleport.moments.gaussian import gaussian_flow, gaussian_x0
from gaussian_teleport.scheduler import bind_moments, get_sigmas_karras, sample_euler, sample_heun
from gaussian_teleport.scheduler.multistep import (lagrange_integrals, sample_deis, sample_ipndm, sample_ipndm_v,
                                                   sample_uni_pc_bh2)
from gaussian_teleport.scheduler.solver import make_gaussian_sampler, sample_gaussian

SHAPE = (1, 4, 4)
D = 16


def dense_moments(seed=0, zero=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = a @ a.T / D + 0.05 * torch.eye(D, dtype=torch.float64)
    lam, u = torch.linalg.eigh(cov)
    if zero:
        lam = torch.zeros_like(lam)
    mean = 0.3 * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return DenseMoments(mean, lam.flip(0), u.flip(1), count=1000, space="model")


def gaussian_model(moments, param="ve"):
    gauss = bind_moments(moments, SHAPE, parameterization=param)
    return lambda x, s, **_: gauss.denoise(x, float(s[0]))


class Mixture:
    """Exact denoiser of ½N(m, s²I) + ½N(−m, s²I): a non-Gaussian model with a closed-form D."""

    def __init__(self, seed=1, s=0.4):
        g = torch.Generator().manual_seed(seed)
        self.m = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        self.s2 = s * s

    def __call__(self, x, sigma, **_):
        v = self.s2 + float(sigma[0]) ** 2
        logits = torch.stack([-((x - c) ** 2).flatten(1).sum(1) / (2 * v) for c in (self.m, -self.m)], 1)
        w = logits.softmax(1)[:, :, None, None, None]
        post = [c + self.s2 / v * (x - c) for c in (self.m, -self.m)]
        return w[:, 0] * post[0] + w[:, 1] * post[1]

    def moments(self):
        mean = torch.zeros(SHAPE, dtype=torch.float64)
        flat = self.m.flatten()
        cov = self.s2 * torch.eye(D, dtype=torch.float64) + torch.outer(flat, flat)
        lam, u = torch.linalg.eigh(cov)
        return DenseMoments(mean, lam.flip(0), u.flip(1), count=1000, space="model")


def noise(n=64, seed=3):
    return torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def fine_solution(model, x, sigma_max, sigma_min, steps=2000):
    """Heun on a fine log-uniform grid to σ_min, then the model's x0 there (where every sampler's last step lands)."""
    grid = torch.cat([torch.logspace(math.log10(sigma_max), math.log10(sigma_min), steps, dtype=torch.float64)])
    x = sample_heun(model, x * sigma_max, torch.cat([grid, grid.new_zeros(1)])[:-1], disable=True)
    return model(x, torch.full((len(x),), sigma_min, dtype=torch.float64))


def log_schedule(n, sigma_max=20.0, sigma_min=0.05):
    s = torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n, dtype=torch.float64)
    return torch.cat([s, s.new_zeros(1)])


def observed_order(sampler, model, x, truth, n=(64, 128)):
    errs = []
    for steps in n:
        out = sampler(model, x * 20.0, log_schedule(steps), disable=True)
        errs.append(float((out - truth).pow(2).mean().sqrt()))
    return math.log(errs[0] / errs[1]) / math.log(n[1] / n[0]), errs


# ----------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize("options", [dict(), dict(order=1), dict(order=2), dict(order=4), dict(corrector=True),
                                     dict(residual="mean"), dict(residual="data"), dict(variable="sigma"),
                                     dict(mean="model")])
@pytest.mark.parametrize("steps", [2, 5, 12])
def test_on_a_gaussian_model_the_solver_is_the_closed_form_at_any_budget(options, steps):
    moments = dense_moments()
    model = gaussian_model(moments)
    sigmas = get_sigmas_karras(steps, 0.03, 15.0)
    x = noise(8) * 15.0
    out = sample_gaussian(model, x, sigmas, moments=moments, **options)
    op = bind_moments(moments, SHAPE).op
    landed = gaussian_flow(op, x, 15.0, float(sigmas[-2]))
    expected = gaussian_x0(op, landed, float(sigmas[-2]))
    assert torch.allclose(out, expected, atol=1e-9, rtol=1e-9)


def test_on_a_gaussian_flow_model_the_solver_starts_at_t_1_and_stays_exact():
    moments = dense_moments()
    model = gaussian_model(moments, "flow")
    shift = 3.0
    t = torch.linspace(1, 0, 7, dtype=torch.float64)
    sigmas = shift * t / (1 + (shift - 1) * t)
    x = noise(8)                                   # x at t = 1 is the noise itself
    out = sample_gaussian(model, x, sigmas, moments=moments, parameterization="flow")
    op = bind_moments(moments, SHAPE, parameterization="flow").op
    t_last = float(sigmas[-2])
    landed = gaussian_flow(op, x, 1.0, t_last, 0.0, 1 - t_last)
    assert torch.allclose(out, gaussian_x0(op, landed, t_last, 1 - t_last), atol=1e-9)


def test_low_rank_and_stationary_moments_are_exact_on_their_own_gaussian():
    from gaussian_teleport.moments import estimate_moments

    g = torch.Generator().manual_seed(5)
    data = torch.randn(400, 2, 8, 8, generator=g, dtype=torch.float64).cumsum(-1) * 0.3
    for structure, kw in (("lowrank", {"rank": 8}), ("stationary", {})):
        moments = estimate_moments([data], structure, latent_format="none", **kw)
        gauss = bind_moments(moments, (2, 8, 8))
        model = lambda x, s, **_: gauss.denoise(x.to(gauss.dtype), float(s[0])).to(x.dtype)   # noqa: E731
        sigmas = get_sigmas_karras(6, 0.05, 10.0)
        x = torch.randn(4, 2, 8, 8, generator=g, dtype=torch.float64) * 10.0
        out = sample_gaussian(model, x, sigmas, moments=moments)
        landed = gaussian_flow(gauss.op, x.to(gauss.dtype), 10.0, float(sigmas[-2]))
        expected = gaussian_x0(gauss.op, landed, float(sigmas[-2])).to(out.dtype)
        assert torch.allclose(out, expected, atol=1e-5), structure


def test_zero_variance_moments_with_the_data_residual_held_is_euler():
    moments = dense_moments(zero=True)
    model = Mixture()
    sigmas = get_sigmas_karras(9, 0.05, 20.0)
    x = noise(16) * 20.0
    ours = sample_gaussian(model, x, sigmas, moments=moments, order=1, residual="data")
    assert torch.allclose(ours, sample_euler(model, x, sigmas), atol=1e-10)


def test_the_solver_is_deterministic_bit_for_bit():
    mix = Mixture()
    sigmas = get_sigmas_karras(7, 0.05, 20.0)
    fn = make_gaussian_sampler(mix.moments())
    a, b = fn(mix, noise(8) * 20.0, sigmas), fn(mix, noise(8) * 20.0, sigmas)
    assert torch.equal(a, b)


def test_callbacks_come_once_per_step_with_the_denoised_output():
    mix = Mixture()
    seen = []
    sigmas = get_sigmas_karras(5, 0.05, 20.0)
    out = sample_gaussian(mix, noise(4) * 20.0, sigmas, callback=seen.append, moments=mix.moments())
    assert [c["i"] for c in seen] == list(range(5))
    assert torch.equal(seen[-1]["denoised"], out)


# ----------------------------------------------------------------------------
# Convergence on a non-Gaussian model


@pytest.fixture(scope="module")
def mixture_truth():
    mix = Mixture()
    x = noise(64)
    return mix, x, fine_solution(mix, x, 20.0, 0.05)


@pytest.mark.parametrize("order, least", [(1, 0.9), (2, 1.7), (3, 2.5)])
def test_the_gaussian_solver_converges_at_its_order(mixture_truth, order, least):
    mix, x, truth = mixture_truth
    fn = make_gaussian_sampler(mix.moments(), order=order)
    p, errs = observed_order(fn, mix, x, truth)
    assert p >= least, (p, errs)


@pytest.mark.parametrize("sampler, least", [(sample_ipndm_v, 3.2), (sample_deis, 2.5), (sample_uni_pc_bh2, 3.2)])
def test_the_multistep_peers_converge_at_their_order(mixture_truth, sampler, least):
    mix, x, truth = mixture_truth
    p, errs = observed_order(sampler, mix, x, truth)
    assert p >= least, (p, errs)


def test_ipndm_has_order_four_on_equal_steps():
    """iPNDM's fixed coefficients are those of equal steps: on a schedule uniform in σ it is 4th order."""
    mix = Mixture()
    x = noise(32)
    errs = []
    for n in (16, 32):
        sig = torch.cat([torch.linspace(3.0, 0.5, n, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
        out = sample_ipndm(mix, x * 3.0, sig, disable=True)
        fine = sample_heun(mix, x * 3.0, torch.linspace(3.0, 0.5, 4000, dtype=torch.float64), disable=True)
        errs.append(float((out - mix(fine, torch.full((32,), 0.5, dtype=torch.float64))).pow(2).mean().sqrt()))
    assert math.log(errs[0] / errs[1]) / math.log(2) >= 3.0, errs


@pytest.mark.parametrize("structure", ["dense", "lowrank", "stationary"])
def test_an_operator_sums_its_terms_as_the_terms_applied_one_by_one(structure):
    """apply_sum (the solver step's one pass over the eigenbasis) against apply on each term, and the base fallback."""
    from gaussian_teleport.moments import LowRankMoments, StationaryMoments
    from gaussian_teleport.moments.base import GaussianOperator

    g = torch.Generator().manual_seed(4)
    m = dense_moments()
    if structure == "lowrank":
        m = LowRankMoments(m.mean, m.eigvals[:5], m.eigvecs[:, :5].contiguous(), 0.02, count=10, space="model")
    elif structure == "stationary":
        q = torch.linalg.qr(torch.randn(4, 4, 1, 1, generator=g, dtype=torch.complex128))[0]
        m = StationaryMoments(m.mean, torch.rand(4, 4, 1, generator=g, dtype=torch.float64), q, count=10,
                              space="model")
    op = m.operator(SHAPE)
    vs = [torch.randn(3, *SHAPE, generator=g, dtype=torch.float64) for _ in range(4)]
    fs = [lambda lam, k=k: (lam + 0.1 * (k + 1)).rsqrt() * (k - 1.5) for k in range(4)]
    expected = sum(op.apply(v, f) for v, f in zip(vs, fs))
    assert torch.allclose(op.apply_sum(vs, fs), expected, atol=1e-12)
    assert torch.allclose(GaussianOperator.apply_sum(op, vs, fs), expected, atol=1e-12)


def test_lagrange_integrals_integrate_polynomials_exactly():
    nodes = [0.0, 0.5, 1.3, 2.0]
    w = lagrange_integrals(nodes, 2.0, 3.0)
    for k in range(4):
        exact = (3.0 ** (k + 1) - 2.0 ** (k + 1)) / (k + 1)
        assert abs(sum(wi * n ** k for wi, n in zip(w, nodes)) - exact) < 1e-12


# ----------------------------------------------------------------------------
# Bad input


def test_bad_options_and_moments_are_refused_with_the_fix():
    mix = Mixture()
    sigmas = get_sigmas_karras(5, 0.05, 20.0)
    for bad in (dict(order=0), dict(order=5), dict(order=2.5), dict(order=True), dict(residual="nosie"),
                dict(variable="t"), dict(mean="prompt")):
        with pytest.raises(ValueError):
            make_gaussian_sampler(mix.moments(), **bad)
    other = DenseMoments(torch.zeros(4, 2, 2, dtype=torch.float64), torch.ones(16, dtype=torch.float64),
                         torch.eye(16, dtype=torch.float64), count=10, space="model")
    with pytest.raises(MomentsError, match="channels"):
        sample_gaussian(mix, noise(2) * 20.0, sigmas, moments=other)
    with pytest.raises(ValueError, match="NaN"):
        sample_gaussian(mix, noise(2) * 20.0, torch.tensor([20.0, float("nan"), 0.0], dtype=torch.float64),
                        moments=mix.moments())
    with pytest.raises(ValueError, match="NaN or Inf"):
        sample_gaussian(lambda x, s: x * float("nan"), noise(2) * 20.0, sigmas, moments=mix.moments())


def test_the_solver_benchmark_smoke_run_writes_its_report(tmp_path):
    from gaussian_teleport.bench import solvers

    opts = solvers.parse(["--quick", "--out", str(tmp_path)])
    opts.samples, opts.budgets, opts.classifier_steps = 6, (4, 6), 10
    results = solvers.run(opts, log=lambda *_: None)
    (config,) = results["configs"]
    assert set(config["rows"]) == set(solvers.method_table())
    for name, rows in config["rows"].items():
        assert all(r is not None and r["calls"] <= r["budget"] for r in rows), name
    text = "\n".join(solvers.report(results))
    assert "The winner at each budget" in text and "digits" in text
    assert solvers.get_sigmas_sd_normal(5)[0] == pytest.approx(14.6146, rel=1e-3)
