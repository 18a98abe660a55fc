"""The pack inside a real ComfyUI (skipped unless GT_COMFYUI_PATH names a checkout; see comfy_harness.py).

Sampling runs through comfy.sample / comfy.samplers with tiny models whose denoiser is the exact
Gaussian one (model_function_wrapper), so the probability-flow ODE has a known answer: a fine
DPM++ 2M run. Teleport plus an inner sampler must match it within the inner sampler's own error.
"""

import pytest
import torch

import comfy_harness as ch

FAMILIES = {"SD15": ((4, 8, 8), 0.18215, "karras"), "SD3": ((16, 4, 4), 1.5305, "simple")}


def family_setup(family, seed=0):
    shape, scale, scheduler = FAMILIES[family]
    mean, cov = ch.random_gaussian(shape, seed, scale)
    model = ch.tiny_model(family, mean, cov)
    lam, u = torch.linalg.eigh(cov)
    moments = ch.pack_module("moments").DenseMoments(mean.float(), lam.flip(0).float(), u.flip(1).float(),
                                                     count=1000, space="raw")
    return model, moments, shape, scheduler


def run(model, sampler, sigmas, noise, latent=None, mask=None):
    import comfy.sample

    latent = torch.zeros_like(noise) if latent is None else latent
    return comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, ch.conditioning(), ch.conditioning(),
                                      latent, noise_mask=mask, disable_pbar=True, seed=0)


def schedule(model, scheduler, steps):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def rel(a, b):
    return float((a - b).norm() / b.norm())


def teleport(moments, inner, value, kind="sigma", mode="save"):
    (sampler,) = ch.run_node("GaussianTeleportSampler", moments=moments, sampler_name=inner, handoff_kind=kind,
                             handoff_value=value, mode=mode)
    return sampler


@pytest.fixture(scope="module")
def comfy():
    ch.load_pack()
    import comfy.samplers

    return comfy.samplers


@pytest.mark.parametrize("family,handoff", [("SD15", 3.0), ("SD3", 0.85)])
def test_teleport_matches_fine_run_within_inner_error(comfy, family, handoff):
    model, moments, shape, scheduler = family_setup(family)
    noise = torch.randn((2, *shape), generator=torch.Generator().manual_seed(1))
    fine = run(model, comfy.sampler_object("dpmpp_2m"), schedule(model, scheduler, 100), noise)
    sig = schedule(model, scheduler, 20)
    skipped = int((sig[:-1] > handoff).sum())
    assert 2 <= skipped <= 10, sig
    for inner in ("euler", "dpmpp_2m", "heun"):
        plain = run(model, comfy.sampler_object(inner), sig, noise)
        tp = run(model, teleport(moments, inner, handoff), sig, noise)
        err_plain, err_tp = rel(plain, fine), rel(tp, fine)
        # the jump is exact for a Gaussian, so only the inner sampler's remaining steps add error
        assert err_tp <= err_plain * 1.02 + 1e-4, (inner, err_tp, err_plain)
    # with a fine inner schedule the result is the ODE solution itself: the jump lands exactly
    fine_sig = schedule(model, scheduler, 100)
    tp_fine = run(model, teleport(moments, "dpmpp_2m", handoff), fine_sig, noise)
    assert rel(tp_fine, fine) < 2e-3, rel(tp_fine, fine)


def test_wrong_space_moments_would_be_caught(comfy):
    """The fine-run comparison can fail: moments left in raw space give a visibly different result."""
    pack = ch.load_pack()
    model, moments, shape, scheduler = family_setup("SD15")
    noise = torch.randn((2, *shape), generator=torch.Generator().manual_seed(2))
    fine_sig = schedule(model, scheduler, 100)
    fine = run(model, comfy.sampler_object("dpmpp_2m"), fine_sig, noise)
    raw_as_model = type(moments)(moments.mean, moments.eigvals, moments.eigvecs, count=moments.count,
                                 space="model", latent_format="SD15")
    wrong = run(model, teleport(raw_as_model, "dpmpp_2m", 3.0), fine_sig, noise)
    assert rel(wrong, fine) > 0.05
    assert pack is not None


def test_img2img_jump_follows_the_same_flow(comfy):
    model, moments, shape, scheduler = family_setup("SD15", seed=3)
    gen = torch.Generator().manual_seed(4)
    noise = torch.randn((2, *shape), generator=gen)
    image = moments.mean[None].repeat(2, 1, 1, 1) + torch.randn((2, *shape), generator=gen) * 2
    full = schedule(model, scheduler, 200)
    sig = full[int(0.15 * 200):]            # denoise 0.85: starts below σ_max, latent is the image
    assert 4.0 < float(sig[0]) < 14.0
    fine = run(model, comfy.sampler_object("dpmpp_2m"), sig, noise, latent=image)
    tp = run(model, teleport(moments, "dpmpp_2m", 2.0), sig, noise, latent=image)
    assert rel(tp, fine) < 2e-3


def test_inpainting_passes_through_unchanged(comfy, caplog):
    model, moments, shape, scheduler = family_setup("SD15")
    noise = torch.randn((1, *shape), generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 1, shape[1], shape[2])
    mask[..., : shape[1] // 2, :] = 1
    sig = schedule(model, scheduler, 12)
    image = torch.randn((1, *shape), generator=torch.Generator().manual_seed(6))
    plain = run(model, comfy.sampler_object("euler"), sig, noise, latent=image, mask=mask)
    with caplog.at_level("WARNING"):
        tp = run(model, teleport(moments, "euler", 3.0), sig, noise, latent=image, mask=mask)
    assert torch.equal(tp, plain)
    assert "inpainting" in caplog.text


def test_ksampler_dropdown_variants(comfy):
    from comfy import sample as comfy_sample
    import nodes

    host = ch.pack_module("nodes.host")
    names = ["teleport_euler", "teleport_heun", "teleport_dpmpp_2m"]
    lists = (comfy.SAMPLER_NAMES, comfy.KSAMPLER_NAMES, comfy.KSampler.SAMPLERS)
    before = [id(x) for x in lists]
    host.register_ksampler_variants()     # a second registration changes nothing
    assert [id(x) for x in lists] == before
    for x in lists:
        assert all(x.count(n) == 1 for n in names)
    assert comfy.KSampler.SAMPLERS is comfy.SAMPLER_NAMES
    assert all(n in nodes.KSampler.INPUT_TYPES()["required"]["sampler_name"][0] for n in names)

    model, moments, shape, scheduler = family_setup("SD15")
    noise = torch.randn((2, *shape), generator=torch.Generator().manual_seed(7))
    (attached,) = ch.run_node("GaussianTeleportAttachMoments", model=model, moments=moments, handoff_kind="sigma",
                              handoff_value=3.0, mode="save")
    assert model.get_attachment("gaussian_teleport") is None       # the input model is left alone
    latent = torch.zeros_like(noise)
    via_ksampler = comfy_sample.sample(attached, noise, 20, 1.0, "teleport_dpmpp_2m", scheduler,
                                       ch.conditioning(), ch.conditioning(), latent, disable_pbar=True, seed=0)
    via_custom = run(model, teleport(moments, "dpmpp_2m", 3.0), schedule(model, scheduler, 20), noise)
    assert torch.allclose(via_ksampler, via_custom, atol=1e-5)
    with pytest.raises(ValueError, match="Attach Teleport Moments"):
        comfy_sample.sample(model, noise, 5, 1.0, "teleport_euler", scheduler, ch.conditioning(),
                            ch.conditioning(), latent, disable_pbar=True, seed=0)


def test_unsupported_model_kind_and_resolution_errors(comfy):
    import comfy.model_sampling

    logic = ch.pack_module("nodes.logic")

    class X0Sampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.X0):
        pass

    with pytest.raises(ValueError, match="X0"):
        logic.model_parameterization(X0Sampling())
    model, moments, shape, scheduler = family_setup("SD15")
    noise = torch.randn((1, shape[0], 16, 16))
    with pytest.raises(ValueError, match="stationary"):
        run(model, teleport(moments, "euler", 3.0), schedule(model, scheduler, 10), noise)


def test_moments_folder_is_merged_not_replaced(comfy):
    import folder_paths

    host = ch.pack_module("nodes.host")
    entry = folder_paths.folder_names_and_paths["moments"]
    user = "/user/declared/moments"
    entry[0].insert(0, user)
    host.register_moments_folder()
    assert folder_paths.folder_names_and_paths["moments"][0][0] == user
    assert ".safetensors" in folder_paths.folder_names_and_paths["moments"][1]
    entry[0].remove(user)


def test_estimate_save_load_sigmas_preview_calibrate_nodes(comfy, tmp_path, monkeypatch):
    import comfy.samplers as cs
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "moments", ([str(tmp_path)], {".safetensors"}))
    gen = torch.Generator().manual_seed(8)
    lat = {"samples": torch.randn(40, 4, 8, 8, generator=gen) * 3 + 1}
    (m,) = ch.run_node("GaussianTeleportEstimateMomentsLatents", latents=[lat], structure=["lowrank"], rank=[16])
    (m2,) = ch.run_node("GaussianTeleportEstimateMomentsLatents", latents=[lat], structure=["lowrank"], rank=[16],
                        add_to=[m])
    assert (m.count, m2.count) == (40, 80)
    for _ in range(2):
        ch.run_node("GaussianTeleportSaveMoments", moments=m2, filename="sub/test", if_exists="add number",
                    storage="float32")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["test.safetensors", "test_00001.safetensors"]
    with pytest.raises(ValueError, match="outside|plain name"):
        ch.run_node("GaussianTeleportSaveMoments", moments=m2, filename="../evil", if_exists="add number",
                    storage="float32")
    (loaded,) = ch.run_node("GaussianTeleportLoadMoments", moments_file="sub/test.safetensors")
    assert torch.allclose(loaded.mean, m2.mean)

    model, moments, shape, scheduler = family_setup("SD15")
    sig = schedule(model, scheduler, 20)
    rest, s_to, skipped = ch.run_node("GaussianTeleportSigmas", sigmas=sig, handoff_kind="steps", handoff_value=4,
                                      mode="save")
    assert torch.equal(rest, sig[4:]) and s_to == pytest.approx(float(sig[4])) and skipped == 4

    class Noise:
        seed = 0

        def generate_noise(self, latent):
            return torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(9))

    empty = {"samples": torch.zeros(2, *shape)}
    (prev,) = ch.run_node("GaussianTeleportPreview", model=model, moments=moments, noise=Noise(), latent=empty,
                          sigma=0.5)
    # independent: the Gaussian x0 at σ = 0.5 after the jump, by a fine run of the analytic model
    noise = Noise().generate_noise(empty)
    fine_sig = schedule(model, scheduler, 150)
    fine_sig = fine_sig[fine_sig >= 0.5]
    fine_sig = torch.cat([fine_sig, torch.tensor([0.5])]) if float(fine_sig[-1]) > 0.5 else fine_sig
    x_half = run(model, cs.sampler_object("dpmpp_2m"), fine_sig, noise)  # raw space (process_out applied)
    fmt = model.get_model_object("latent_format")
    d = ch.gaussian_denoiser(*_model_space(moments, fmt), "ve")
    expected = fmt.process_out(d(fmt.process_in(x_half), torch.full((2,), 0.5)))
    assert rel(prev["samples"], expected) < 5e-3

    guider = cs.CFGGuider(model)
    guider.set_conds(ch.conditioning(), ch.conditioning())
    guider.set_cfg(1.0)
    plot, best, report = ch.run_node("GaussianTeleportCalibrate", guider=guider, sigmas=schedule(model, scheduler, 10),
                                     latent={"samples": torch.zeros(4, *shape)}, moments=moments, noise=Noise(),
                                     threshold=0.99)
    assert plot.shape[0] == 1 and plot.shape[-1] == 3
    assert best == pytest.approx(float(schedule(model, scheduler, 10)[-2]), rel=1e-4)  # exact model: all σ pass
    assert "score EV" in report


def _model_space(moments, fmt):
    scale = float(fmt.scale_factor)
    mean = moments.mean.double() * scale
    u, lam = moments.eigvecs.double(), moments.eigvals.double()
    return mean, (u * lam * scale**2) @ u.T


def test_classic_mappings_for_hosts_without_v3(comfy):
    classic = ch.pack_module("nodes.classic")
    mappings, names = classic.mappings()
    assert set(mappings) == set(names) and len(mappings) == 9
    sampler_types = mappings["GaussianTeleportSampler"].INPUT_TYPES()
    assert sampler_types["required"]["sampler_name"][0] == list(comfy.SAMPLER_NAMES)
    assert "teleport_euler" in sampler_types["required"]["sampler_name"][0]
    node = mappings["GaussianTeleportSigmas"]()
    sig = torch.linspace(10, 0, 11)
    out = getattr(node, mappings["GaussianTeleportSigmas"].FUNCTION)(sigmas=sig, handoff_kind="steps",
                                                                     handoff_value=3, mode="save")
    assert torch.equal(out["result"][0], sig[3:]) and out["result"][2] == 3
    assert "replacing 3 step(s)" in out["ui"]["text"][0]


def test_batch_layout_and_stationary_moments_at_another_resolution(comfy):
    model, moments, shape, scheduler = family_setup("SD15", seed=9)
    noise = torch.randn((3, *shape), generator=torch.Generator().manual_seed(10))
    sig = schedule(model, scheduler, 12)
    together = run(model, teleport(moments, "dpmpp_2m", 3.0), sig, noise)
    alone = torch.cat([run(model, teleport(moments, "dpmpp_2m", 3.0), sig, noise[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)

    estimate = ch.pack_module("moments").estimate_moments
    gen = torch.Generator().manual_seed(11)
    stationary = estimate([torch.randn(64, *shape, generator=gen) * 4 + 1], "stationary")
    big = torch.randn((2, shape[0], 16, 24), generator=gen)
    any_size = model.clone()     # the exact Gaussian denoiser is fixed to 8×8; any denoiser will do here
    any_size.set_model_unet_function_wrapper(lambda apply_model, args: 0.5 * args["input"])
    out = run(any_size, teleport(stationary, "euler", 3.0), sig, big)   # stationary moments: any size
    assert out.shape == big.shape and torch.isfinite(out).all()
