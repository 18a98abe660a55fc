"""Issue 19, item 2: calibrate_handoff refuses a broken measurement instead of answering confidently."""

import pytest
import torch
from conftest import correlated_latents

from gaussian_teleport.moments import estimate_moments, gaussian_x0
from gaussian_teleport.scheduler import calibrate_handoff, get_sigmas_karras, sample_euler, sample_heun

SHAPE = (2, 3, 3)
SIGMAS = get_sigmas_karras(12, 0.02, 30.0)


@pytest.fixture(scope="module")
def setup():
    moments = estimate_moments([correlated_latents(300, SHAPE, seed=5)], "dense", dtype=torch.float64, space="model")
    op = moments.operator(SHAPE)

    def model(x, sigma, **_):
        return gaussian_x0(op, x, float(sigma[0]))

    x = torch.randn(6, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * float(SIGMAS[0])
    return moments, model, x


class Calls:
    """Counts the calls a model gets (to check a refusal comes before the first)."""

    def __init__(self, model):
        self.model, self.n = model, 0

    def __call__(self, x, sigma, **kw):
        self.n += 1
        return self.model(x, sigma, **kw)


def test_a_sound_model_still_calibrates(setup):
    moments, model, x = setup
    got = calibrate_handoff(model, x, SIGMAS, sample_heun, moments=moments, mean="model", tolerance=0.02)
    assert got.skipped > 0 and got.sigma is not None


def test_nan_from_the_model_in_one_sample_is_named(setup):
    moments, model, x = setup

    def one_nan(x, sigma, **kw):
        out = model(x, sigma, **kw)
        if float(sigma[0]) < 5:
            out = out.clone()
            out[3] = float("nan")
        return out

    with pytest.raises(ValueError, match=r"model returned NaN or Inf at σ .* in 1 of 6 samples"):
        calibrate_handoff(one_nan, x, SIGMAS, sample_heun, moments=moments, mean="data")


def test_a_model_output_that_is_not_a_latent_is_named(setup):
    moments, model, x = setup
    with pytest.raises(ValueError, match="shaped like x .*got tuple"):
        calibrate_handoff(lambda x, s, **kw: (model(x, s),), x, SIGMAS, sample_euler, moments=moments)


@pytest.mark.parametrize("broken, message", [
    (lambda x: x.index_fill(0, torch.tensor([2]), float("nan")), "start noise x contains NaN"),
    (lambda x: x[:1].expand_as(x).clone(), "noise samples are identical"),
])
def test_broken_start_noise_is_refused_before_any_model_call(setup, broken, message):
    moments, model, x = setup
    counted = Calls(model)
    with pytest.raises(ValueError, match=message):
        calibrate_handoff(counted, broken(x), SIGMAS, sample_heun, moments=moments)
    assert counted.n == 0


def test_a_model_that_ignores_x_is_named(setup):
    moments, _, x = setup
    constant = torch.linspace(-1, 1, 18, dtype=torch.float64).reshape(SHAPE)
    with pytest.raises(ValueError, match="does not depend on x"):
        calibrate_handoff(lambda x, s, **kw: constant.expand_as(x).clone(), x, SIGMAS, sample_heun, moments=moments,
                          mean="data")


def test_a_non_deterministic_model_is_named(setup):
    moments, model, x = setup
    gen = torch.Generator().manual_seed(3)

    def dropout_like(x, sigma, **kw):
        out = model(x, sigma, **kw)
        return out + 0.05 * torch.randn(out.shape, generator=gen, dtype=out.dtype)

    with pytest.raises(ValueError, match="not deterministic: two plain runs from the same noise differ"):
        calibrate_handoff(dropout_like, x, SIGMAS, sample_heun, moments=moments, mean="data")


def test_a_deterministic_model_that_nothing_suits_still_says_do_not_teleport(setup):
    moments, model, x = setup
    got = calibrate_handoff(model, x, SIGMAS, sample_heun, moments=moments, mean="data", tolerance=1e-9)
    assert got.sigma is None and got.summary().startswith("do not teleport")
    assert got.calls_spent == got.calls_plain * 2 + sum(c.calls for c in got.curve)   # the repeat is counted


@pytest.mark.parametrize("option, message", [
    ({"mean": "modle"}, "mean must be one of"),
    ({"mode": "sav"}, "mode must be one of"),
    ({"tolerance": "0.01"}, "tolerance must be a number > 0"),
    ({"tolerance": None}, "tolerance must be a number > 0"),
    ({"tolerance": True}, "tolerance must be a number > 0"),
    ({"tolerance": float("nan")}, "tolerance must be a number > 0"),
])
def test_settings_are_refused_before_the_first_model_call(setup, option, message):
    moments, model, x = setup
    counted = Calls(model)
    with pytest.raises(ValueError, match=message):
        calibrate_handoff(counted, x, SIGMAS, sample_heun, moments=moments, **option)
    assert counted.n == 0


def test_a_plain_run_that_breaks_without_the_model_is_named(setup):
    moments, model, x = setup

    def broken_sampler(model, x, sigmas, **kw):
        return sample_heun(model, x, sigmas, **kw) * float("nan")

    with pytest.raises(ValueError, match="plain run gave NaN or Inf although every model output was finite"):
        calibrate_handoff(model, x, SIGMAS, broken_sampler, moments=moments, mean="data")
