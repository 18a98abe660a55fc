"""calibrate_handoff: the bisection finds what an exhaustive search finds, within its call budget."""

import pytest
import torch
from conftest import correlated_latents

from gaussian_teleport.moments import estimate_moments, gaussian_x0
from gaussian_teleport.scheduler import (Handoff, calibrate_handoff, get_sigmas_karras, model_calls, sample_dpmpp_2m,
                                         sample_heun, sample_teleport)

SHAPE = (2, 3, 3)
SIGMAS = get_sigmas_karras(18, 0.02, 30.0)


@pytest.fixture(scope="module")
def setup():
    moments = estimate_moments([correlated_latents(300, SHAPE, seed=5)], "dense", dtype=torch.float64, space="model")
    op = moments.operator(SHAPE)
    target = op.mean + 0.3 * torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(9))

    def model(x, sigma, **_):   # a Gaussian whose mean the moments do not know: the data-mean jump drifts
        return gaussian_x0(op, x, float(sigma[0]), mean=target)

    x = torch.randn(6, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * float(SIGMAS[0])
    return moments, model, x


def exhaustive(moments, model, x, sampler, tolerance):
    plain = sampler(model, x, SIGMAS)
    spread = float(plain.var(dim=0).mean().sqrt())
    changes = {}
    for k in range(1, 18):
        out = sample_teleport(model, x, SIGMAS, moments=moments, sampler=sampler, handoff=Handoff("steps", k),
                              mean="data")
        changes[k] = float((out - plain).pow(2).mean().sqrt()) / spread
    best = 0
    for k in range(1, 18):
        if changes[k] > tolerance:
            break
        best = k
    return best, changes


@pytest.mark.parametrize("sampler", [sample_heun, sample_dpmpp_2m])
@pytest.mark.parametrize("tolerance", [0.002, 0.02, 0.2])
def test_bisection_agrees_with_the_exhaustive_search(setup, sampler, tolerance):
    moments, model, x = setup
    want, changes = exhaustive(moments, model, x, sampler, tolerance)
    assert all(changes[k] <= changes[k + 1] * 1.05 for k in range(1, 17)), changes  # the curve rises
    got = calibrate_handoff(model, x, SIGMAS, sampler, moments=moments, mean="data", tolerance=tolerance)
    assert got.skipped == want
    for c in got.curve:
        assert c.change == pytest.approx(changes[c.skipped], rel=1e-9)
        assert c.passed == (c.change <= tolerance)
    plain_calls = model_calls(sampler.__name__.removeprefix("sample_"), SIGMAS)
    assert got.calls_plain == plain_calls and got.calls_spent <= 5 * plain_calls
    if want:
        assert got.sigma == pytest.approx(float(SIGMAS[want])) and f"{want} of 18 steps replaced" in got.summary()
        assert got.handoff is not None and got.calls_teleport == got.curve[[c.skipped for c in got.curve].index(want)].calls
    else:
        assert got.sigma is None and got.handoff is None and got.summary().startswith("do not teleport")


def test_the_model_mean_is_calibrated_as_it_samples(setup):
    """With the mean read off the model the jump is exact here, so far more steps can go."""
    moments, model, x = setup
    data = calibrate_handoff(model, x, SIGMAS, sample_heun, moments=moments, mean="data", tolerance=0.02)
    own = calibrate_handoff(model, x, SIGMAS, sample_heun, moments=moments, mean="model", tolerance=0.02)
    assert own.skipped > data.skipped and own.mean == "model"
    assert "mean from the model" in own.report()


def test_candidates_and_progress(setup):
    moments, model, x = setup
    seen = []
    got = calibrate_handoff(model, x, SIGMAS, sample_heun, moments=moments, mean="model", tolerance=0.02,
                            candidates=["sigma:10", 5.0, Handoff("steps", 12)],
                            progress=lambda done, bound: seen.append((done, bound)))
    assert {c.skipped for c in got.curve} <= {int((SIGMAS[:-1] > 10).sum()), int((SIGMAS[:-1] > 5).sum()), 12}
    assert seen and seen[-1][0] == got.calls_spent and all(done <= bound for done, bound in seen)


def test_refusals(setup):
    moments, model, x = setup
    with pytest.raises(ValueError, match="at least 2 noise samples"):
        calibrate_handoff(model, x[:1], SIGMAS, sample_heun, moments=moments)
    with pytest.raises(ValueError, match="tolerance"):
        calibrate_handoff(model, x, SIGMAS, sample_heun, moments=moments, tolerance=0)
    with pytest.raises(ValueError, match="none of the candidates"):
        calibrate_handoff(model, x, SIGMAS, sample_heun, moments=moments, candidates=["sigma:100"])


def test_a_hand_off_that_saves_no_call_is_not_recommended(setup):
    """Euler with the mean from the model: replacing one step costs the probe's call and saves one."""
    from gaussian_teleport.scheduler import sample_euler

    moments, model, x = setup
    got = calibrate_handoff(model, x, SIGMAS, sample_euler, moments=moments, mean="model", tolerance=1.0,
                            candidates=[Handoff("steps", 1)])
    assert [c.passed for c in got.curve] == [True] and got.curve[0].calls == got.calls_plain
    assert got.sigma is None and got.skipped == 0 and got.calls_teleport == got.calls_plain
    assert got.summary() == (f"do not teleport with these settings (replacing 1 step would save no model call); "
                             f"calls stay {got.calls_plain}")
    two = calibrate_handoff(model, x, SIGMAS, sample_euler, moments=moments, mean="model", tolerance=1.0,
                            candidates=[Handoff("steps", 2)])
    assert two.skipped == 2 and two.calls_teleport == two.calls_plain - 1
