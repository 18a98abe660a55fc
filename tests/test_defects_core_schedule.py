"""Issue 19, items 6, 10, 11, 14: schedules, sigma types and hand-off values refused or converted, never NaN."""

import numpy as np
import pytest
import torch
from conftest import correlated_latents

from gaussian_teleport.moments import estimate_moments, gaussian_x0
from gaussian_teleport.scheduler import (Handoff, calibrate_handoff, get_sigmas_edm, get_sigmas_flow,
                                         get_sigmas_karras, get_sigmas_sd_karras, make_teleport_sampler, plan_teleport,
                                         sample_euler, sample_teleport, teleport_sigmas)

SHAPE = (2, 3, 3)


@pytest.fixture(scope="module")
def moments():
    return estimate_moments([correlated_latents(200, SHAPE, seed=4)], "dense", dtype=torch.float64, space="model")


def gaussian_model(moments):
    op = moments.operator(SHAPE)
    return lambda x, sigma, **_: gaussian_x0(op, x, float(sigma[0]), 1.0)


def start(sigma0=80.0):
    return sigma0 * torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------
# Item 6: a 0 inside a schedule; schedule builders with impossible ranges.


@pytest.mark.parametrize("sigmas, index", [([80.0, 20, 5, 1, 0, 0], 4), ([80.0, 0, 0], 1), ([14.6, 0, 0, 0], 1)])
def test_a_zero_before_the_end_of_a_schedule_is_refused(sigmas, index):
    with pytest.raises(ValueError, match=rf"sigmas\[{index}\] is 0 but the schedule goes on.*only the last sigma"):
        plan_teleport(torch.tensor(sigmas, dtype=torch.float64), "sigma:10")


def test_a_zero_inside_the_schedule_never_reaches_the_sampler(moments):
    with pytest.raises(ValueError, match="only the last sigma may be 0"):
        sample_teleport(gaussian_model(moments), start(), torch.tensor([80.0, 20, 5, 1, 0, 0], dtype=torch.float64),
                        moments=moments, sampler=sample_euler, handoff="sigma:10", mean="data")


@pytest.mark.parametrize("args, message", [
    ((5, 0.0, 14.6), "sigma_min must be a finite number > 0, got 0.0"),
    ((5, -1.0, 14.6), "sigma_min must be a finite number > 0, got -1.0"),
    ((5, 1.0, 1.0), "sigma_max 1 must be above sigma_min 1"),
    ((5, 2.0, 1.0), "sigma_max 1 must be above sigma_min 2"),
    ((5, 0.03, float("inf")), "sigma_max must be a finite number > 0"),
    ((5, float("nan"), 14.6), "sigma_min must be a finite number > 0"),
    ((0, 0.03, 14.6), "whole number of steps ≥ 1, got 0"),
    ((-2, 0.03, 14.6), "whole number of steps ≥ 1, got -2"),
    ((2.5, 0.03, 14.6), "whole number of steps ≥ 1, got 2.5"),
])
def test_karras_refuses_an_impossible_range(args, message):
    with pytest.raises(ValueError, match=message):
        get_sigmas_karras(*args)


@pytest.mark.parametrize("build, message", [
    (lambda: get_sigmas_karras(5, 0.03, 14.6, rho=0), "rho must be a finite number > 0"),
    (lambda: get_sigmas_edm(5, sigma_data=0), "sigma_data must be a finite number > 0"),
    (lambda: get_sigmas_sd_karras(5, sigma_data=-1), "sigma_data must be a finite number > 0"),
    (lambda: get_sigmas_flow(5, shift=-1), "shift must be a finite number > 0"),
    (lambda: get_sigmas_flow(0), "whole number of steps ≥ 1"),
])
def test_the_other_builders_refuse_impossible_settings(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_valid_builders_end_in_exactly_one_zero():
    for sigmas in (get_sigmas_karras(1, 0.03, 14.6), get_sigmas_karras(20, 0.0292, 14.6146), get_sigmas_edm(18),
                   get_sigmas_flow(8)):
        assert float(sigmas[-1]) == 0 and bool((sigmas[:-1] > 0).all())


# ----------------------------------------------------------------------------
# Item 10: sigmas as a list or a numpy array.

SCHEDULE = [80.0, 20.0, 5.0, 1.0, 0.3, 0.0]


@pytest.mark.parametrize("given", [SCHEDULE, tuple(SCHEDULE), np.array(SCHEDULE), np.array(SCHEDULE, np.float32)],
                         ids=["list", "tuple", "numpy", "numpy-float32"])
def test_list_and_numpy_sigmas_are_converted(moments, given):
    as_tensor = torch.tensor(SCHEDULE, dtype=torch.float64)
    plan = plan_teleport(given, "sigma:10")
    assert plan.jumped and plan.skipped == plan_teleport(as_tensor, "sigma:10").skipped
    model = gaussian_model(moments)
    expect = sample_teleport(model, start(), as_tensor, moments=moments, sampler=sample_euler, handoff="sigma:10",
                             mean="data")
    for run in (lambda s: sample_teleport(model, start(), s, moments=moments, sampler=sample_euler,
                                          handoff="sigma:10", mean="data"),
                lambda s: make_teleport_sampler(sample_euler, moments, "sigma:10", mean="data")(model, start(), s)):
        assert torch.allclose(run(given), expect, atol=1e-5)


@pytest.mark.parametrize("given", [SCHEDULE, np.array(SCHEDULE), torch.tensor([80, 20, 5, 1, 0])],
                         ids=["list", "numpy", "integer-tensor"])
def test_calibration_takes_the_same_schedules_as_the_sampler(moments, given):
    """calibrate_handoff refused a list ("1-D schedule … got list") that sample_teleport takes."""
    as_tensor = torch.as_tensor(np.asarray(given, dtype=np.float64))
    expect = calibrate_handoff(gaussian_model(moments), start(), as_tensor, sample_euler, moments=moments, mean="data")
    got = calibrate_handoff(gaussian_model(moments), start(), given, sample_euler, moments=moments, mean="data")
    assert got.skipped == expect.skipped and [c.change for c in got.curve] == [c.change for c in expect.curve]


@pytest.mark.parametrize("given, message", [
    ("80, 5, 0", "sigmas must be a 1-D tensor .* got str"),
    (["80", "x", "0"], "sigmas must be a list of numbers"),
    ([[80.0, 0.0]], r"1-D schedule of at least 2 values, got \(1, 2\)"),
    (torch.tensor([80.0, 0.0], dtype=torch.complex64), "real noise levels"),
])
def test_sigmas_that_are_not_numbers_are_refused_clearly(moments, given, message):
    with pytest.raises(ValueError, match=message):
        plan_teleport(given, "sigma:10")
    with pytest.raises(ValueError, match=message):
        sample_teleport(gaussian_model(moments), start(), given, moments=moments, sampler=sample_euler,
                        handoff="sigma:10", mean="data")


# ----------------------------------------------------------------------------
# Item 11: integer sigmas keep the plan's float schedule.

INTEGERS = torch.tensor([80, 40, 20, 10, 5, 2, 1, 0])


def test_integer_sigmas_in_same_budget_mode_are_not_truncated(moments):
    seen = []

    def inner(model, x, sigmas, **kw):
        seen.append(sigmas.clone())
        return sample_euler(model, x, sigmas, **kw)

    plan = plan_teleport(INTEGERS, "sigma:7", "same_budget")
    sample_teleport(gaussian_model(moments), start(), INTEGERS, moments=moments, sampler=inner, handoff="sigma:7",
                    mode="same_budget", mean="data")
    assert seen[0].is_floating_point() and torch.equal(seen[0], plan.sigmas)
    assert float(seen[0][0]) == 7.0 and float(seen[0][1]) != int(seen[0][1])
    sigmas, level = teleport_sigmas(INTEGERS, "sigma:7", "same_budget")
    assert sigmas.is_floating_point() and torch.equal(sigmas, plan.sigmas) and level == 7.0


def test_integer_sigmas_run_like_their_float_schedule(moments):
    model = gaussian_model(moments)
    runs = [sample_teleport(model, start(), s, moments=moments, sampler=sample_euler, handoff="sigma:7",
                            mode=mode, mean="data")
            for mode in ("save", "same_budget") for s in (INTEGERS, INTEGERS.double())]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[2], runs[3])


# ----------------------------------------------------------------------------
# Item 14 (core): hand-off values, on_mismatch.


@pytest.mark.parametrize("text", ["sigma:5_0", "steps:1_0", "fraction:0.2_5"])
def test_a_handoff_with_an_underscore_is_refused(text):
    with pytest.raises(ValueError, match="without '_'"):
        Handoff.parse(text)


@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_a_bool_handoff_value_is_refused(value):
    with pytest.raises(ValueError, match="must be a number, got"):
        Handoff("sigma", value)


def test_plain_handoff_values_still_parse():
    assert Handoff.parse("sigma:50").value == 50.0 and Handoff("sigma", np.float64(5)).value == 5.0
    assert Handoff("steps", 4).value == 4.0 and Handoff.parse(" sigma : 1e1 ").value == 10.0


@pytest.mark.parametrize("on_mismatch", ["skip", "PASS", None])
def test_an_unknown_on_mismatch_is_refused_naming_the_valid_ones(moments, on_mismatch):
    calls = []

    def model(x, sigma, **_):
        calls.append(1)
        return x

    with pytest.raises(ValueError, match=r"on_mismatch must be one of \('raise', 'pass'\)"):
        sample_teleport(model, start(), get_sigmas_karras(5, 0.03, 80.0), moments=moments, sampler=sample_euler,
                        on_mismatch=on_mismatch)
    with pytest.raises(ValueError, match=r"on_mismatch must be one of \('raise', 'pass'\)"):
        make_teleport_sampler(sample_euler, moments, on_mismatch=on_mismatch)
    assert calls == []


def test_on_mismatch_pass_still_runs_the_sampler_unchanged(moments):
    other = estimate_moments([correlated_latents(50, (2, 2, 2), seed=1)], "dense", space="model")
    plans = []
    out = sample_teleport(gaussian_model(moments), start(), get_sigmas_karras(5, 0.03, 80.0), moments=other,
                          sampler=sample_euler, on_mismatch="pass", mean="data", on_plan=plans.append)
    assert not plans[0].jumped and "do not fit" in plans[0].reason and torch.isfinite(out).all()
