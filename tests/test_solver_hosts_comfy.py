"""The Gaussian solver and teleport_ipndm inside a real ComfyUI (skipped unless GT_COMFYUI_PATH is set; see
comfy_harness.py).

The tiny models' denoiser is the exact Gaussian one, so the probability-flow ODE has a closed form: a
KSAMPLER written here carries the start latent to the last noise level by the eigendecomposition of the
model-space Gaussian and returns the model's x0 there, as every k-diffusion sampler's last step does. The
solver must match it at any number of steps, where a plain sampler with the same steps does not.
"""

import pytest
import torch

import comfy_harness as ch
from test_comfy_host import FAMILIES, family_setup, rel, run, schedule, teleport

NEW = ["gaussian_solver", "teleport_ipndm"]


@pytest.fixture(scope="module")
def comfy():
    ch.load_pack()
    import comfy.samplers

    return comfy.samplers


def solver(moments, order=3):
    (out,) = ch.run_node("GaussianTeleportSolverSampler", moments=moments, order=order)
    return out


def model_space(moments, model):
    """(μ, Σ) of the raw-space moments in the model's space, by the latent format's own scale and shift."""
    fmt = model.get_model_object("latent_format")
    scale, shift = float(fmt.scale_factor), float(getattr(fmt, "shift_factor", 0.0) or 0.0)
    mean = (moments.mean.double() - shift) * scale
    u, lam = moments.eigvecs.double(), moments.eigvals.double()
    return mean.flatten(), (u * lam * scale**2) @ u.T


def closed_form_sampler(comfy, mean, cov, flow):
    """A KSAMPLER: x carried from sigmas[0] to sigmas[-2] by the Gaussian's flow, then the model's x0 there."""
    lam, u = torch.linalg.eigh(cov)
    lam = lam.clamp(min=0)

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s0, s1 = float(sigmas[0]), float(sigmas[-2])
        a0, a1 = (1 - s0, 1 - s1) if flow else (1.0, 1.0)
        flat = x.double().reshape(x.shape[0], -1)
        coeff = ((flat - a0 * mean) @ u) * ((a1**2 * lam + s1**2) / (a0**2 * lam + s0**2)).sqrt()
        landed = (a1 * mean + coeff @ u.T).reshape(x.shape).to(x.dtype)
        return model(landed, sigmas[-2] * x.new_ones([x.shape[0]]), **(extra_args or {}))

    return comfy.KSAMPLER(sample)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_solver_node_is_exact_on_a_gaussian_model(comfy, family):
    model, moments, shape, scheduler = family_setup(family)
    noise = torch.randn((2, *shape), generator=torch.Generator().manual_seed(1))
    sig = schedule(model, scheduler, 8)
    mean, cov = model_space(moments, model)
    exact = run(model, closed_form_sampler(comfy, mean, cov, family == "SD3"), sig, noise)
    plain = run(model, comfy.sampler_object("dpmpp_2m"), sig, noise)
    err_plain = rel(plain, exact)
    assert err_plain > 1e-3, err_plain          # the check can fail: 8 plain steps are visibly off
    for order in (1, 2, 3, 4):
        out = run(model, solver(moments, order), sig, noise)
        assert rel(out, exact) < 1e-4, (order, rel(out, exact), err_plain)


def test_the_solver_converges_when_a_prompt_moves_the_mean(comfy):
    """Under CFG the guided Gaussian's mean is not the moments' one: the solver steps that difference, so its
    result approaches the fine solve as the steps increase (it is no longer exact)."""
    model, moments, shape, scheduler = family_setup("SD15", seed=4, prompt_shift=True)
    noise = torch.randn((2, *shape), generator=torch.Generator().manual_seed(3))
    guided = dict(positive=0.4, negative=0.0, cfg=5.0)
    fine = run(model, comfy.sampler_object("dpmpp_2m"), schedule(model, scheduler, 200), noise, **guided)
    errors = [rel(run(model, solver(moments), schedule(model, scheduler, n), noise, **guided), fine)
              for n in (6, 10, 20)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02, errors


def test_the_ksampler_entries_are_registered_once(comfy):
    import nodes

    sampling = ch.pack_module("nodes.sampling")
    gaussian_solver = ch.pack_module("nodes.gaussian_solver")
    lists = (comfy.SAMPLER_NAMES, comfy.KSAMPLER_NAMES, comfy.KSampler.SAMPLERS)
    before = [id(x) for x in lists]
    sampling.register_ksampler_variants()            # a second registration changes nothing
    gaussian_solver.register_ksampler_entry()
    assert [id(x) for x in lists] == before
    for x in lists:
        assert all(x.count(n) == 1 for n in NEW), x
    assert all(n in nodes.KSampler.INPUT_TYPES()["required"]["sampler_name"][0] for n in NEW)
    from comfy.k_diffusion import sampling as kd
    assert kd.sample_gaussian_solver.__name__ == "sample_gaussian_solver"


def test_the_ksampler_entries_use_the_attached_moments(comfy):
    from comfy import sample as comfy_sample

    model, moments, shape, scheduler = family_setup("SD15")
    noise = torch.randn((2, *shape), generator=torch.Generator().manual_seed(7))
    (attached,) = ch.run_node("GaussianTeleportAttachMoments", model=model, moments=moments, handoff_kind="sigma",
                              handoff_value=3.0, mode="save", mean="model")
    latent = torch.zeros_like(noise)
    sig = schedule(model, scheduler, 12)

    def ksampler(m, name, steps=12):
        return comfy_sample.sample(m, noise, steps, 1.0, name, scheduler, ch.conditioning(), ch.conditioning(),
                                   latent, disable_pbar=True, seed=0)

    torch.testing.assert_close(ksampler(attached, "gaussian_solver"), run(model, solver(moments, 3), sig, noise),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(ksampler(attached, "teleport_ipndm"),
                               run(model, teleport(moments, "ipndm", 3.0, mean="model"), sig, noise),
                               atol=1e-5, rtol=0)
    for name in NEW:
        with pytest.raises(ValueError, match=f"sampler '{name}' needs Gaussian moments.*'Attach Teleport Moments'"):
            ksampler(model, name, 4)


def test_the_solver_is_refused_as_an_inner_sampler_and_bad_orders_are_named(comfy):
    model, moments, shape, scheduler = family_setup("SD15")
    with pytest.raises(ValueError, match="is the Gaussian solver"):
        teleport(moments, "euler", 3.0, sampler=solver(moments))
    with pytest.raises(ValueError, match="is the Gaussian solver"):
        teleport(moments, "gaussian_solver", 3.0)
    with pytest.raises(ValueError, match="itself a teleport sampler"):
        teleport(moments, "teleport_ipndm", 3.0)
    for node in ("GaussianTeleportSampler", "GaussianTeleportCalibrate"):
        cls = ch.node_class(node)
        assert "is the Gaussian solver" in cls.validate_inputs(sampler_name="gaussian_solver")
        assert "itself a teleport sampler" in cls.validate_inputs(sampler_name="teleport_ipndm")
    cls = ch.node_class("GaussianTeleportSolverSampler")
    assert cls.validate_inputs(order=3) is True and cls.validate_inputs(order=None) is True
    assert "from 1 to 4" in cls.validate_inputs(order=5)
    with pytest.raises(ValueError, match="from 1 to 4"):
        solver(moments, 0)


def test_the_solver_names_a_moments_mismatch_with_a_clean_type(comfy):
    import execution

    model, moments, shape, scheduler = family_setup("SD15")
    noise = torch.randn((1, shape[0], 16, 16))
    with pytest.raises(ValueError, match="stationary") as info:
        run(model, solver(moments), schedule(model, scheduler, 6), noise)
    assert execution.full_type_name(type(info.value)) == "gaussian_teleport.MomentsError"
