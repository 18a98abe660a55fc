"""The teleport sampler: plans, identity when off, exactness under a Gaussian model, callbacks, batches."""

import numpy as np
import pytest
import torch
from conftest import correlated_latents

from gaussian_teleport.moments import estimate_moments, gaussian_flow, gaussian_x0
from gaussian_teleport.scheduler import (SAMPLERS, Handoff, get_sigmas_flow, get_sigmas_karras, model_calls,
                                         plan_teleport, respace, sample_euler, sample_teleport, teleport_sigmas)

SHAPE = (2, 4, 4)


@pytest.fixture(scope="module")
def moments():
    return estimate_moments([correlated_latents(200, SHAPE, seed=11)], "lowrank", rank=12, dtype=torch.float64)


def gaussian_model(moments, flow=False):
    """A k-diffusion denoiser that is exactly the Gaussian's: model(x, σ·ones[B]) → E[x0 | x]."""
    op = moments.operator(SHAPE)
    calls = []

    def model(x, sigma, **_):
        s = float(sigma[0])
        calls.append(s)
        return gaussian_x0(op, x, s, 1 - s if flow else 1.0)

    model.calls = calls
    return model


def noise(batch=3, seed=0):
    return torch.randn(batch, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# -- plans ----------------------------------------------------------------------


SIGMAS = get_sigmas_karras(10, 0.03, 14.6)


@pytest.mark.parametrize("handoff, skipped", [
    (Handoff("steps", 3), 3), (Handoff("fraction", 0.25), 3), (Handoff("fraction", 0.2), 2),
    (Handoff("sigma", 3.5), int((SIGMAS[:-1] > 3.5).sum())),    # the next step (3.18) is near the hand-off
])
def test_handoff_units_agree_on_the_steps_replaced(handoff, skipped):
    plan = plan_teleport(SIGMAS, handoff, "save")
    assert plan.jumped and plan.skipped == skipped and plan.step_offset == skipped
    assert plan.sigma_to == float(SIGMAS[skipped]) and torch.equal(plan.sigmas, SIGMAS[skipped:])


def test_save_mode_snaps_to_the_schedule_and_same_budget_lands_exactly():
    save = plan_teleport(SIGMAS, Handoff("sigma", 3.5), "save")
    assert save.sigma_to <= 3.5 and float(SIGMAS[save.skipped - 1]) > 3.5
    same = plan_teleport(SIGMAS, Handoff("sigma", 5.0), "same_budget")
    assert same.sigma_to == 5.0 and same.steps == 10 and same.step_offset == 0
    assert float(same.sigmas[0]) == 5.0 and float(same.sigmas[-1]) == 0.0


@pytest.mark.parametrize("n", [4, 10, 25])
def test_respace_follows_the_schedule_shape(n):
    sigmas = get_sigmas_karras(n, 0.03, 14.6)
    start = float(sigmas[2]) * 0.9
    new = respace(sigmas, start, n)
    assert len(new) == n + 1 and float(new[0]) == start and new[-1] == 0
    assert float(new[-2]) == pytest.approx(float(sigmas[-2]), rel=1e-12)
    assert bool(torch.all(new[1:] < new[:-1]))
    full = respace(sigmas, float(sigmas[0]), n)  # re-spacing the whole range changes nothing
    torch.testing.assert_close(full, sigmas, rtol=1e-12, atol=0)


@pytest.mark.parametrize("handoff", [Handoff("sigma", 20.0), Handoff("steps", 0), Handoff("fraction", 0.01)])
def test_no_jump_plans_say_why(handoff):
    plan = plan_teleport(SIGMAS, handoff, "save")
    assert not plan.jumped and "unchanged" in plan.reason and torch.equal(plan.sigmas, SIGMAS)


def test_impossible_skips_are_refused():
    with pytest.raises(ValueError, match="replace all 10 steps"):
        plan_teleport(SIGMAS, Handoff("steps", 10))
    with pytest.raises(ValueError, match="replace all"):
        plan_teleport(SIGMAS, Handoff("sigma", 0.01))
    with pytest.raises(ValueError, match="fraction must be below 1"):
        Handoff("fraction", 1.0)
    with pytest.raises(ValueError, match="'sigma:5.0'"):
        Handoff.parse("5.0")
    with pytest.raises(ValueError, match="must not increase"):
        plan_teleport(torch.tensor([1.0, 2.0, 0.0]), Handoff("steps", 1))
    with pytest.raises(ValueError, match="schedule mode"):
        plan_teleport(SIGMAS, Handoff("steps", 1), "fast")


def test_teleport_sigmas_returns_rest_and_handoff():
    rest, sigma = teleport_sigmas(SIGMAS.float(), Handoff("steps", 4))
    assert rest.dtype == torch.float32 and sigma == pytest.approx(float(SIGMAS[4]))
    assert len(rest) == len(SIGMAS) - 4


# -- the sampler ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_off_is_bit_identical_to_the_inner_sampler(moments, name):
    x = noise() * float(SIGMAS[0])
    model = gaussian_model(moments)
    plain = SAMPLERS[name](model, x, SIGMAS, disable=True)
    for off in ("sigma:100", "steps:0"):
        out = sample_teleport(model, x, SIGMAS, disable=True, moments=moments, sampler=SAMPLERS[name], handoff=off)
        assert torch.equal(out, plain)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_under_a_gaussian_model_the_jump_only_removes_error(moments, name):
    """With the exact Gaussian denoiser, the true ODE solution is the closed form; the jump is exact, so
    teleport + sampler must be at least as close to it as the sampler alone, with fewer calls."""
    sigmas = get_sigmas_karras(12, 0.05, 40.0)[:-1]  # stop at σ_min: the solution there is known
    x = noise() * 40.0
    exact = gaussian_flow(moments.operator(SHAPE), x, 40.0, float(sigmas[-1]))
    model = gaussian_model(moments)
    plain = SAMPLERS[name](model, x, sigmas, disable=True)
    plain_calls = len(model.calls)
    model.calls.clear()
    tele = sample_teleport(model, x, sigmas, disable=True, moments=moments, sampler=SAMPLERS[name],
                           handoff=Handoff("steps", 5), mean="data")
    err = lambda y: float((y - exact).norm() / exact.norm())
    assert err(tele) <= err(plain) * 1.0001 + 1e-12
    assert len(model.calls) == plain_calls - (10 if name == "heun" else 5)
    assert max(model.calls) <= float(sigmas[5])


def test_same_budget_beats_the_plain_sampler_at_equal_calls(moments):
    sigmas = get_sigmas_karras(6, 0.05, 40.0)[:-1]
    x = noise() * 40.0
    exact = gaussian_flow(moments.operator(SHAPE), x, 40.0, float(sigmas[-1]))
    model = gaussian_model(moments)
    plain = sample_euler(model, x, sigmas, disable=True)
    n_plain = len(model.calls)
    model.calls.clear()
    same = sample_teleport(model, x, sigmas, disable=True, moments=moments, sampler=sample_euler,
                           handoff="sigma:4.0", mode="same_budget", mean="data")
    assert len(model.calls) == n_plain
    assert float((same - exact).norm()) < 0.8 * float((plain - exact).norm())


def test_flow_models_from_pure_noise(moments):
    """Rectified flow: x = (1 − t)x0 + tε from t = 1 (α = 0) exactly; Euler after the jump must converge
    to the closed form as its steps shrink, so the jump lands on the true path."""
    x = noise()
    errors = []
    for n in (10, 40):
        sigmas = torch.linspace(1.0, 0.2, n + 1, dtype=torch.float64)
        target = gaussian_flow(moments.operator(SHAPE), x, 1.0, 0.2, 0.0, 0.8)
        out = sample_teleport(gaussian_model(moments, flow=True), x, sigmas, disable=True, moments=moments,
                              sampler=sample_euler, handoff=Handoff("fraction", 0.3), parameterization="flow")
        errors.append(float((out - target).norm() / target.norm()))
    assert errors[1] < errors[0] / 3, errors  # first order: 4× the steps, about ¼ the error


def test_callbacks_count_the_real_steps_and_preview_the_gaussian_path(moments):
    """One callback per replaced step (so host progress bars end at their total), each on the Gaussian's path."""
    x = noise() * float(SIGMAS[0])
    seen = []
    sample_teleport(gaussian_model(moments), x, SIGMAS, callback=seen.append, disable=True, moments=moments,
                    sampler=sample_euler, handoff="steps:4", mean="data")
    assert [info["i"] for info in seen] == list(range(10))
    op = moments.operator(SHAPE)
    for i in range(4):
        on_path = gaussian_flow(op, x, float(SIGMAS[0]), float(SIGMAS[i]))
        torch.testing.assert_close(seen[i]["x"], on_path)
        torch.testing.assert_close(seen[i]["denoised"], gaussian_x0(op, on_path, float(SIGMAS[i])))
        assert float(seen[i]["sigma"]) == float(SIGMAS[i])


def test_the_model_mean_probe_is_one_call_seen_by_the_callback(moments):
    x = noise() * float(SIGMAS[0])
    model, seen = gaussian_model(moments), []
    sample_teleport(model, x, SIGMAS, callback=seen.append, disable=True, moments=moments, sampler=sample_euler,
                    handoff="steps:4", mean="model")
    assert len(model.calls) == 10 - 4 + 1 and model.calls[0] == float(SIGMAS[0])
    assert [info["i"] for info in seen] == list(range(10))
    torch.testing.assert_close(seen[0]["denoised"], gaussian_x0(moments.operator(SHAPE), x, float(SIGMAS[0])))
    model.calls.clear()
    same = []
    sample_teleport(model, x, SIGMAS, callback=same.append, disable=True, moments=moments, sampler=sample_euler,
                    handoff="sigma:4", mode="same_budget", mean="model")
    assert len(model.calls) == 10 + 1 and [info["i"] for info in same] == [0] + list(range(10))


def test_results_do_not_depend_on_batch_composition(moments):
    x = noise(batch=4) * float(SIGMAS[0])
    run = lambda xb: sample_teleport(gaussian_model(moments), xb, SIGMAS, disable=True, moments=moments,
                                     sampler=SAMPLERS["dpmpp_2m"], handoff="sigma:6")
    together = run(x)
    for i in range(4):
        torch.testing.assert_close(run(x[i:i + 1]), together[i:i + 1], rtol=1e-12, atol=1e-12)


def test_float32_inputs_come_back_float32(moments):
    x = (noise() * float(SIGMAS[0])).float()
    model = lambda xb, s, **_: xb * 0  # dtype check only
    out = sample_teleport(model, x, SIGMAS.float(), disable=True, moments=moments, sampler=sample_euler,
                          handoff="steps:2")
    assert out.dtype == torch.float32


def test_mismatched_latent_is_refused_before_any_model_call(moments):
    model = gaussian_model(moments)
    with pytest.raises(ValueError, match="stationary"):
        sample_teleport(model, torch.zeros(1, 2, 8, 8), SIGMAS, disable=True, moments=moments,
                        sampler=sample_euler, handoff="steps:2")
    assert model.calls == []


def test_model_calls_counts_heun_pairs():
    sigmas = get_sigmas_karras(18, 0.002, 80.0)
    assert model_calls("heun", sigmas) == 35 and model_calls("euler", sigmas) == 18


def test_stationary_moments_serve_other_resolutions():
    """A process with the same pixel-lag autocovariance at two sizes: moments estimated at 8×8 and resampled
    to 12×10 must match moments estimated at 12×10, and the teleport must run at the new size."""
    kernel = torch.tensor([[0.2, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 0.2]], dtype=torch.float64)

    def field(n, h, w, seed):
        z = torch.randn(n, 1, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        pad = torch.nn.functional.pad(z, (1, 1, 1, 1), mode="circular")
        return torch.nn.functional.conv2d(pad, kernel[None, None]) + 0.3

    small = estimate_moments([field(3000, 8, 8, 1)], "stationary", dtype=torch.float64)
    large = estimate_moments([field(3000, 12, 10, 2)], "stationary", dtype=torch.float64)
    v = torch.randn(2, 1, 12, 10, dtype=torch.float64)
    got = small.operator((1, 12, 10)).apply(v, lambda lam: lam)
    want = large.operator((1, 12, 10)).apply(v, lambda lam: lam)
    assert float((got - want).norm() / want.norm()) < 0.08
    x = torch.randn(2, 1, 12, 10, dtype=torch.float64) * 14.6
    sigmas = get_sigmas_karras(8, 0.03, 14.6)
    op = small.operator((1, 12, 10))
    out = sample_teleport(lambda xb, s, **_: gaussian_x0(op, xb, float(s[0])), x, sigmas, disable=True,
                          moments=small, sampler=sample_euler, handoff="steps:3")
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    np.testing.assert_allclose(small.operator((1, 12, 10)).mean.mean().item(), 0.3, atol=0.02)
