"""Plans and input checks: the unit rule, schedule validation, messages that say what to change."""

import math

import pytest
import torch
from conftest import correlated_latents

from gaussian_teleport.moments import estimate_moments, gaussian_flow, gaussian_x0
from gaussian_teleport.scheduler import (FLOW, VE, Handoff, TeleportSettings, get_sigmas_flow, get_sigmas_karras,
                                         plan_teleport, sample_euler, sample_teleport, skipped_steps)

SIGMAS = get_sigmas_karras(20, 0.0292, 14.6146)
SHAPE = (2, 3, 3)


@pytest.fixture(scope="module")
def moments():
    return estimate_moments([correlated_latents(200, SHAPE, seed=3)], "dense", dtype=torch.float64, space="model")


def test_the_hand_off_unit_is_a_noise_level_on_every_model():
    """sigma:5 replaces the same share of the noise range on a VE and on a flow schedule: t = σ/(1 + σ)."""
    ve = plan_teleport(SIGMAS, "sigma:5", parameterization=VE)
    t = get_sigmas_flow(20, shift=3.0)
    flow = plan_teleport(t, "sigma:5", parameterization=FLOW)
    assert flow.jumped and flow.noise_level_to <= 5.0 * (1 + 1e-3)
    assert float(t[flow.skipped - 1]) > 5 / 6 > flow.sigma_to
    assert ve.noise_level_to == ve.sigma_to <= 5.0
    assert "t 0.8" in flow.summary() and "(σ 4." in flow.summary()


def test_an_old_flow_workflow_value_is_refused_with_what_changed():
    """Version 0.1 read ComfyUI's flow sigmas as t: 0.8 there is σ 4 now, and the message says so."""
    with pytest.raises(ValueError, match=r"enter sigma 4 instead"):
        plan_teleport(get_sigmas_flow(20), "sigma:0.8", parameterization="flow")
    assert plan_teleport(get_sigmas_flow(20), "steps:5", parameterization="flow").skipped == 5


@pytest.mark.parametrize("sigmas, message", [
    (torch.tensor([float("inf"), 5.0, 0.0]), "infinite"),
    (torch.tensor([14.6, float("nan"), 0.0]), "NaN"),
    (torch.tensor([14.6, 3.0, -1.0]), "≥ 0"),
    (torch.tensor([3.0, 14.6, 0.0]), "must not increase"),
    (torch.tensor([0.0, 0.0]), "nothing to sample"),
    (torch.tensor([14.6]), "at least 2"),
])
def test_broken_schedules_are_named(sigmas, message):
    with pytest.raises(ValueError, match=message):
        plan_teleport(sigmas, "sigma:5")


def test_a_ve_schedule_on_a_flow_model_is_refused():
    with pytest.raises(ValueError, match="VE schedule"):
        plan_teleport(SIGMAS, "steps:2", parameterization="flow")


def test_handoff_values_are_numbers_and_print_back():
    assert str(Handoff("sigma", "5")) == "sigma:5" and Handoff("steps", "4").value == 4.0
    with pytest.raises(ValueError, match="whole number"):
        Handoff("steps", 2.5)
    with pytest.raises(ValueError, match="must be a number"):
        Handoff("sigma", "five")


def test_a_typed_back_sigma_lands_on_the_same_step():
    """A hand-off printed to 4 significant digits (or computed on float32 sigmas) replaces the same steps."""
    for k in range(1, 19):
        exact = float(SIGMAS[k])
        printed = float(f"{exact:.4g}")
        assert skipped_steps(SIGMAS, Handoff("sigma", printed)) == k
        assert skipped_steps(SIGMAS.float().double(), Handoff("sigma", exact)) == k


def test_too_far_hand_offs_say_which_way_to_move():
    with pytest.raises(ValueError, match="raise the hand-off sigma"):
        plan_teleport(SIGMAS, "sigma:0")
    with pytest.raises(ValueError, match="replace at most 19 steps"):
        plan_teleport(SIGMAS, "steps:20")
    with pytest.raises(ValueError, match="same_budget re-spaces.*replace fewer steps, or use save mode"):
        plan_teleport(SIGMAS, "steps:19", "same_budget")


def test_same_budget_says_the_sampler_still_runs_every_step():
    plan = plan_teleport(SIGMAS, "sigma:5", "same_budget")
    assert "runs all 20 steps" in plan.summary() and "replacing" not in plan.summary()
    assert "replacing 5 of 20 steps" in plan_teleport(SIGMAS, "sigma:5").summary()


def test_empty_batches_come_back_empty_and_integer_latents_are_refused(moments):
    calls = []
    model = lambda x, s, **_: calls.append(1) or x  # noqa: E731
    out = sample_teleport(model, torch.zeros(0, *SHAPE), SIGMAS, moments=moments, sampler=sample_euler,
                          handoff="steps:3")
    assert out.shape == (0, *SHAPE) and calls == []
    with pytest.raises(ValueError, match="floating point"):
        sample_teleport(model, torch.zeros(1, *SHAPE, dtype=torch.long), SIGMAS, moments=moments,
                        sampler=sample_euler, handoff="steps:3")
    with pytest.raises(ValueError, match="video and audio"):
        sample_teleport(model, torch.zeros(1, 1, *SHAPE), SIGMAS, moments=moments, sampler=sample_euler)


def test_a_host_reason_passes_through_bit_identically(moments):
    x = torch.randn(2, *SHAPE, dtype=torch.float64) * 14.6
    model = lambda xb, s, **_: xb * 0.5  # noqa: E731
    seen = []
    out = sample_teleport(model, x, SIGMAS, moments=moments, sampler=sample_euler, no_jump="inpainting mask",
                          on_plan=seen.append)
    assert torch.equal(out, sample_euler(model, x, SIGMAS)) and "inpainting mask" in seen[0].summary()
    assert not seen[0].jumped and seen[0].short().startswith("no jump (inpainting mask")


def test_the_model_mean_makes_the_jump_exact_for_a_shifted_gaussian(moments):
    """The model's Gaussian has another mean than the moments (a prompt, a class under CFG): one call
    recovers it, and the jump lands exactly on the model's flow; the data mean does not."""
    shift = 0.8
    op = moments.operator(SHAPE)
    target_mean = op.mean + shift

    def model(x, sigma, **_):
        return gaussian_x0(op, x, float(sigma[0]), mean=target_mean)

    x = torch.randn(3, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 14.6146
    k = 6
    exact = gaussian_flow(op, x, float(SIGMAS[0]), float(SIGMAS[k]), mean=target_mean)
    landed = {}
    for mean in ("model", "data"):
        sample_teleport(model, x, SIGMAS, moments=moments, sampler=lambda m, xk, s, **kw: landed.setdefault(mean, xk),
                        handoff=f"steps:{k}", mean=mean)
    torch.testing.assert_close(landed["model"], exact, rtol=1e-10, atol=1e-10)
    assert float((landed["data"] - exact).abs().max()) > 0.1


def test_settings_hold_the_rules_once():
    s = TeleportSettings.from_values("steps", 4.0, "save", "data")
    assert s.handoff == Handoff("steps", 4) and "mean from the moments" in s.describe()
    with pytest.raises(ValueError, match="whole number"):
        TeleportSettings.from_values("steps", 4.5)
    with pytest.raises(ValueError, match="mean must be one of"):
        TeleportSettings(mean="prompt")
    assert math.isclose(FLOW.schedule_sigma(4.0), 0.8) and math.isinf(FLOW.noise_level(1.0))


# -- coarse schedules and stages (issue 23, items 8 and 9) -------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 8, 10])
@pytest.mark.parametrize("flow", [False, True])
def test_a_coarse_schedule_never_lands_far_past_the_hand_off(n, flow):
    """Two steps of 'normal' are [14.61, 0.0292, 0]: the jump used to land on σ 0.03 for an asked 5. A sampler that
    runs the plan's sigmas lands on the hand-off (the rest re-spaced, the same calls saved); a caller that can only
    skip steps stops on the last step above it, or does not jump."""
    from gaussian_teleport.scheduler.handoff import LANDING_FLOOR

    sigmas = get_sigmas_flow(n, shift=3.0) if flow else get_sigmas_karras(n, 0.0292, 14.6146)
    param = FLOW if flow else VE
    steps_above = skipped_steps(sigmas, Handoff("sigma", 5.0), param)
    plan = plan_teleport(sigmas, "sigma:5", parameterization=param, can_respace=True)
    assert plan.jumped and plan.noise_level_to >= LANDING_FLOOR * 5.0, plan.summary()
    assert plan.noise_level_to <= 5.0 * (1 + 1e-3)
    assert plan.skipped == steps_above and plan.sampler_steps == n - steps_above and plan.sigmas[-1] == 0
    assert bool(torch.all(plan.sigmas[1:] < plan.sigmas[:-1]))
    if plan.note:
        assert plan.noise_level_to == pytest.approx(5.0) and "far below the hand-off" in plan.summary()
    skip_only = plan_teleport(sigmas, "sigma:5", parameterization=param)
    if skip_only.jumped:
        assert torch.equal(skip_only.sigmas, sigmas[skip_only.skipped:])
        assert skip_only.noise_level_to >= LANDING_FLOOR * 5.0
    else:
        assert "far past the hand-off" in skip_only.reason


def test_two_steps_jump_to_the_asked_sigma_and_save_a_call(moments):
    sigmas = torch.tensor([14.6146, 0.0292, 0.0], dtype=torch.float64)
    seen, plans = [], []
    x = torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 14.6146
    sample_teleport(lambda xb, s, **_: xb, x, sigmas, moments=moments, handoff="sigma:5", on_plan=plans.append,
                    sampler=lambda m, xk, s, **kw: seen.append(s.tolist()) or xk)
    assert seen == [[5.0, 0.0]] and "→ σ 5 " in plans[0].summary()


def test_a_stage_that_ends_above_zero_can_be_jump_only(moments):
    """Stage 1 of a split schedule (SplitSigmas at step 5 of Karras 20): all its steps replaced, its last sigma reached
    in closed form, no model call and no sampler call; the next stage continues from there."""
    stage = torch.tensor([14.6146, 10.7468, 7.8956, 5.7890, 4.2376 * 1.062], dtype=torch.float64)
    op = moments.operator(SHAPE)
    calls = []

    def model(x, sigma, **_):
        calls.append(float(sigma[0]))
        return gaussian_x0(op, x, float(sigma[0]))

    x = torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 14.6146
    for handoff in ("sigma:5", "sigma:3", "steps:4", "fraction:0.9"):
        plans = []
        out = sample_teleport(model, x, stage, moments=moments, handoff=handoff, mean="data", on_plan=plans.append,
                              sampler=lambda *a, **k: pytest.fail("the sampler has no step to run"))
        exact = gaussian_flow(op, x, float(stage[0]), float(stage[-1]))
        torch.testing.assert_close(out, exact, rtol=1e-9, atol=1e-9)
        assert calls == [] and "jump-only stage" in plans[0].summary() and plans[0].skipped == 4
    with pytest.raises(ValueError, match="replace at most 4 steps"):
        plan_teleport(stage, "steps:5")
    # the hand-off far above the stage's end: land on it, one step to the end
    plan = plan_teleport(torch.tensor([14.6, 11.0, 2.0]), "sigma:5", can_respace=True)
    assert plan.sigmas.tolist() == [5.0, 2.0] and plan.skipped == 1


def test_a_refusal_names_the_first_value_that_works():
    sigmas = torch.tensor([14.6146, 0.0292, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"raise the hand-off sigma to 0\.0292 or more"):
        plan_teleport(sigmas, "sigma:0.01")
    assert plan_teleport(sigmas, "sigma:0.0292").skipped == 1
    with pytest.raises(ValueError, match="replace at most 1 steps"):
        plan_teleport(sigmas, "steps:2")
