"""The pack inside a real ComfyUI (skipped unless GT_COMFYUI_PATH names a checkout; see comfy_harness.py).

Sampling runs through comfy.sample / comfy.samplers with tiny models whose denoiser is the exact
Gaussian one (model_function_wrapper), so the probability-flow ODE has a known answer: a fine
DPM++ 2M run. Teleport plus an inner sampler must match it within the inner sampler's own error.
With ``prompt_shift`` the Gaussian's mean depends on the text conditioning, so CFG moves it: the
prompt-aware (model) mean must follow, the data mean must not.
"""

import logging

import pytest
import torch

import comfy_harness as ch

FAMILIES = {"SD15": ((4, 8, 8), 0.18215, "karras"), "SD3": ((16, 4, 4), 1.5305, "simple")}


def family_setup(family, seed=0, prompt_shift=False):
    shape, scale, scheduler = FAMILIES[family]
    mean, cov = ch.random_gaussian(shape, seed, scale)
    model = ch.tiny_model(family, mean, cov, prompt_shift=prompt_shift)
    lam, u = torch.linalg.eigh(cov)
    moments = ch.pack_module("moments").DenseMoments(mean.float(), lam.flip(0).float(), u.flip(1).float(),
                                                     count=1000, space="raw")
    return model, moments, shape, scheduler


def run(model, sampler, sigmas, noise, latent=None, mask=None, positive=0.0, negative=0.0, cfg=1.0):
    import comfy.sample

    latent = torch.zeros_like(noise) if latent is None else latent
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, ch.conditioning(positive),
                                      ch.conditioning(negative), latent, noise_mask=mask, disable_pbar=True, seed=0)


def schedule(model, scheduler, steps):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def rel(a, b):
    return float((a - b).norm() / b.norm())


def teleport(moments, inner, value, kind="sigma", mode="save", mean="data", sampler=None):
    (out,) = ch.run_node("GaussianTeleportSampler", moments=moments, sampler_name=inner, handoff_kind=kind,
                         handoff_value=value, mode=mode, mean=mean, sampler=sampler)
    return out


@pytest.fixture(scope="module")
def comfy():
    ch.load_pack()
    import comfy.samplers

    return comfy.samplers


# ζ 5.667 is t 0.85 on the SD3 flow schedule: hand-off sigmas are noise levels on every model
@pytest.mark.parametrize("family,handoff", [("SD15", 3.0), ("SD3", 5.667)])
@pytest.mark.parametrize("mean", ["data", "model"])
def test_teleport_matches_fine_run_within_inner_error(comfy, family, handoff, mean):
    model, moments, shape, scheduler = family_setup(family)
    noise = torch.randn((2, *shape), generator=torch.Generator().manual_seed(1))
    fine = run(model, comfy.sampler_object("dpmpp_2m"), schedule(model, scheduler, 100), noise)
    sig = schedule(model, scheduler, 20)
    ms = model.get_model_object("model_sampling")
    levels = sig / (1 - sig) if family == "SD3" else sig
    skipped = int((levels[:-1] > handoff * 1.001).sum())
    assert 2 <= skipped <= 10, sig
    for inner in ("euler", "dpmpp_2m", "heun"):
        plain = run(model, comfy.sampler_object(inner), sig, noise)
        tp = run(model, teleport(moments, inner, handoff, mean=mean), sig, noise)
        err_plain, err_tp = rel(plain, fine), rel(tp, fine)
        # the jump is exact for a Gaussian, so only the inner sampler's remaining steps add error
        assert err_tp <= err_plain * 1.02 + 1e-4, (inner, err_tp, err_plain)
    fine_sig = schedule(model, scheduler, 100)
    tp_fine = run(model, teleport(moments, "dpmpp_2m", handoff, mean=mean), fine_sig, noise)
    assert rel(tp_fine, fine) < 2e-3, rel(tp_fine, fine)
    assert ms is not None


def test_the_model_mean_follows_the_prompt_under_cfg(comfy):
    """CFG 5 with a prompt that moves the Gaussian's mean: one model call makes the jump exact again."""
    model, moments, shape, scheduler = family_setup("SD15", seed=4, prompt_shift=True)
    noise = torch.randn((2, *shape), generator=torch.Generator().manual_seed(3))
    guided = dict(positive=0.4, negative=0.0, cfg=5.0)
    fine = run(model, comfy.sampler_object("dpmpp_2m"), schedule(model, scheduler, 100), noise, **guided)
    fine_sig = schedule(model, scheduler, 100)
    own = run(model, teleport(moments, "dpmpp_2m", 3.0, mean="model"), fine_sig, noise, **guided)
    data = run(model, teleport(moments, "dpmpp_2m", 3.0, mean="data"), fine_sig, noise, **guided)
    assert rel(own, fine) < 2e-3, rel(own, fine)
    assert rel(data, fine) > 0.02, rel(data, fine)


def test_an_old_flow_hand_off_is_refused_with_what_changed(comfy):
    model, moments, shape, scheduler = family_setup("SD3")
    noise = torch.randn((1, *shape), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"enter sigma 5\.667 instead"):
        run(model, teleport(moments, "euler", 0.85), schedule(model, scheduler, 10), noise)


def test_wrong_space_moments_would_be_caught(comfy):
    """The fine-run comparison can fail: moments left in raw space give a visibly different result."""
    model, moments, shape, scheduler = family_setup("SD15")
    noise = torch.randn((2, *shape), generator=torch.Generator().manual_seed(2))
    fine_sig = schedule(model, scheduler, 100)
    fine = run(model, comfy.sampler_object("dpmpp_2m"), fine_sig, noise)
    raw_as_model = type(moments)(moments.mean, moments.eigvals, moments.eigvecs, count=moments.count,
                                 space="model", latent_format="SD15")
    wrong = run(model, teleport(raw_as_model, "dpmpp_2m", 3.0), fine_sig, noise)
    assert rel(wrong, fine) > 0.05


def test_img2img_jump_follows_the_same_flow(comfy, caplog):
    model, moments, shape, scheduler = family_setup("SD15", seed=3)
    gen = torch.Generator().manual_seed(4)
    noise = torch.randn((2, *shape), generator=gen)
    image = moments.mean[None].repeat(2, 1, 1, 1) + torch.randn((2, *shape), generator=gen) * 2
    full = schedule(model, scheduler, 200)
    sig = full[int(0.15 * 200):]            # denoise 0.85: starts below σ_max, latent is the image
    assert 4.0 < float(sig[0]) < 14.0
    fine = run(model, comfy.sampler_object("dpmpp_2m"), sig, noise, latent=image)
    with caplog.at_level(logging.INFO, logger="gaussian_teleport"):
        tp = run(model, teleport(moments, "dpmpp_2m", 2.0, mean="model"), sig, noise, latent=image)
    assert rel(tp, fine) < 2e-3
    lines = [r.getMessage() for r in caplog.records if r.name == "gaussian_teleport"]
    assert len(lines) == 1 and "image-conditioned start latent (img2img)" in lines[0]


def test_inpainting_passes_through_unchanged(comfy, caplog):
    model, moments, shape, scheduler = family_setup("SD15")
    noise = torch.randn((1, *shape), generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 1, shape[1], shape[2])
    mask[..., : shape[1] // 2, :] = 1
    sig = schedule(model, scheduler, 12)
    image = torch.randn((1, *shape), generator=torch.Generator().manual_seed(6))
    plain = run(model, comfy.sampler_object("euler"), sig, noise, latent=image, mask=mask)
    with caplog.at_level(logging.INFO, logger="gaussian_teleport"):
        tp = run(model, teleport(moments, "euler", 3.0, mean="model"), sig, noise, latent=image, mask=mask)
    assert torch.equal(tp, plain)
    assert "no jump: inpainting" in caplog.text


def test_ksampler_dropdown_variants(comfy):
    from comfy import sample as comfy_sample
    import nodes

    sampling = ch.pack_module("nodes.sampling")
    names = ["teleport_euler", "teleport_heun", "teleport_dpmpp_2m"]
    lists = (comfy.SAMPLER_NAMES, comfy.KSAMPLER_NAMES, comfy.KSampler.SAMPLERS)
    before = [id(x) for x in lists]
    sampling.register_ksampler_variants()     # a second registration changes nothing
    assert [id(x) for x in lists] == before
    for x in lists:
        assert all(x.count(n) == 1 for n in names)
    assert comfy.KSampler.SAMPLERS is comfy.SAMPLER_NAMES
    assert all(n in nodes.KSampler.INPUT_TYPES()["required"]["sampler_name"][0] for n in names)

    model, moments, shape, scheduler = family_setup("SD15")
    noise = torch.randn((2, *shape), generator=torch.Generator().manual_seed(7))
    (attached,) = ch.run_node("GaussianTeleportAttachMoments", model=model, moments=moments, handoff_kind="sigma",
                              handoff_value=3.0, mode="save", mean="model")
    assert model.get_attachment("gaussian_teleport") is None       # the input model is left alone
    latent = torch.zeros_like(noise)
    via_ksampler = comfy_sample.sample(attached, noise, 20, 1.0, "teleport_dpmpp_2m", scheduler,
                                       ch.conditioning(), ch.conditioning(), latent, disable_pbar=True, seed=0)
    via_custom = run(model, teleport(moments, "dpmpp_2m", 3.0, mean="model"), schedule(model, scheduler, 20), noise)
    assert torch.allclose(via_ksampler, via_custom, atol=1e-5)
    with pytest.raises(ValueError, match="Attach Teleport Moments"):
        comfy_sample.sample(model, noise, 5, 1.0, "teleport_euler", scheduler, ch.conditioning(),
                            ch.conditioning(), latent, disable_pbar=True, seed=0)


def test_a_teleport_sampler_is_refused_as_the_inner_sampler(comfy):
    model, moments, shape, scheduler = family_setup("SD15")
    outer = teleport(moments, "euler", 3.0)
    with pytest.raises(ValueError, match="itself a Gaussian Teleport sampler"):
        teleport(moments, "euler", 3.0, sampler=outer)
    with pytest.raises(ValueError, match="itself a teleport sampler"):
        teleport(moments, "teleport_euler", 3.0)
    cls = ch.node_class("GaussianTeleportSampler")
    assert "itself a teleport sampler" in cls.validate_inputs(sampler_name="teleport_heun")
    assert cls.validate_inputs(sampler_name="euler") is True
    with pytest.raises(ValueError, match="whole number"):     # refused when the node runs, once (issue 23 item 10)
        teleport(moments, "euler", 2.5, kind="steps")


def test_errors_show_a_clean_type_and_name_the_fix(comfy):
    """ComfyUI shows an exception as module.Class: ours must not read as a file path."""
    import execution

    model, moments, shape, scheduler = family_setup("SD15")
    noise = torch.randn((1, shape[0], 16, 16))
    with pytest.raises(ValueError, match="stationary") as info:
        run(model, teleport(moments, "euler", 3.0), schedule(model, scheduler, 10), noise)
    assert execution.full_type_name(type(info.value)) == "gaussian_teleport.MomentsError"

    import comfy.model_sampling

    comfy_model = ch.pack_module("nodes.comfy_model")

    class X0Sampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.X0):
        pass

    with pytest.raises(ValueError, match="X0"):
        comfy_model.parameterization_of(X0Sampling())


def test_moments_folder_is_merged_not_replaced(comfy):
    import folder_paths

    files = ch.pack_module("nodes.moments_files")
    entry = folder_paths.folder_names_and_paths["moments"]
    user = "/user/declared/moments"
    entry[0].insert(0, user)
    files.register_moments_folder()
    assert folder_paths.folder_names_and_paths["moments"][0][0] == user
    assert ".safetensors" in folder_paths.folder_names_and_paths["moments"][1]
    entry[0].remove(user)


class Noise:
    seed = 0

    def generate_noise(self, latent):
        return torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(9))


def test_estimate_save_and_load_nodes(comfy, tmp_path, monkeypatch):
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
                    storage="auto")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["test.safetensors", "test_00001.safetensors"]
    with pytest.raises(ValueError, match="outside|plain name"):
        ch.run_node("GaussianTeleportSaveMoments", moments=m2, filename="../evil", if_exists="add number",
                    storage="float32")
    load = ch.node_class("GaussianTeleportLoadMoments")
    assert load.validate_inputs(moments_file="sub/test.safetensors") is True
    assert "not in models/moments" in load.validate_inputs(moments_file="missing.safetensors")
    (loaded,) = ch.run_node("GaussianTeleportLoadMoments", moments_file="sub/test.safetensors")
    assert torch.allclose(loaded.mean, m2.mean)


def test_sigmas_node_reads_the_hand_off_as_a_noise_level(comfy):
    model, moments, shape, scheduler = family_setup("SD15")
    sig = schedule(model, scheduler, 20)
    rest, s_to, skipped = ch.run_node("GaussianTeleportSigmas", sigmas=sig, handoff_kind="steps", handoff_value=4,
                                      mode="save")
    assert torch.equal(rest, sig[4:]) and s_to == pytest.approx(float(sig[4])) and skipped == 4
    flow_model, _, _, flow_scheduler = family_setup("SD3")
    t = schedule(flow_model, flow_scheduler, 20)
    with pytest.raises(ValueError, match="connect the model"):
        ch.run_node("GaussianTeleportSigmas", sigmas=t, handoff_kind="sigma", handoff_value=4.0, mode="save")
    rest, s_to, skipped = ch.run_node("GaussianTeleportSigmas", sigmas=t, handoff_kind="sigma", handoff_value=4.0,
                                      mode="save", model=flow_model)
    assert float(t[skipped - 1]) > 0.8 >= float(t[skipped]) and s_to <= 4.0


def test_preview_node_is_the_jump_then_the_gaussian_x0(comfy):
    import comfy.samplers as cs

    model, moments, shape, scheduler = family_setup("SD15")
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


def _model_space(moments, fmt):
    scale = float(fmt.scale_factor)
    mean = moments.mean.double() * scale
    u, lam = moments.eigvecs.double(), moments.eigvals.double()
    return mean, (u * lam * scale**2) @ u.T


def test_calibrate_node_measures_the_image(comfy):
    import comfy.samplers as cs

    model, moments, shape, scheduler = family_setup("SD15", seed=4, prompt_shift=True)
    sig = schedule(model, scheduler, 12)
    results = {}
    for mean in ("data", "model"):
        guider = cs.CFGGuider(model)
        guider.set_conds(ch.conditioning(0.4), ch.conditioning(0.0))
        guider.set_cfg(4.0)
        results[mean] = ch.run_node("GaussianTeleportCalibrate", guider=guider, sigmas=sig,
                                    latent={"samples": torch.zeros(4, *shape)}, moments=moments, noise=Noise(),
                                    sampler_name="dpmpp_2m", mean=mean, tolerance=0.03)
    handoff, plot, report, ev = results["model"]
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and ev.shape[-1] == 3
    assert "steps replaced" in report and "mean from the model" in report
    # the prompt moves the mean: read off the model the jump is exact, down to the lowest candidate (σ ≥ 1);
    # with the data's mean not even one step can go
    lowest = min(float(s) for s in sig if float(s) >= 1.0)
    assert handoff == pytest.approx(lowest, rel=1e-3) and results["data"][0] == float("inf")


def test_estimate_moments_from_the_model_node_reads_its_gaussian_and_caches(comfy):
    model, moments, shape, scheduler = family_setup("SD15", seed=5)
    calls = []
    inner = model.model_options["model_function_wrapper"]
    model.set_model_unet_function_wrapper(lambda apply_model, args: calls.append(1) or inner(apply_model, args))
    kw = dict(model=model, width=shape[2] * 8, height=shape[1] * 8, structure="dense", rank=64, sigma=2.0,
              prompt="unconditional", seed=0, conditioning=ch.conditioning(0.0))
    (got,) = ch.run_node("GaussianTeleportEstimateMomentsModel", **kw)
    first = len(calls)
    (again,) = ch.run_node("GaussianTeleportEstimateMomentsModel", **kw)
    assert again is got and len(calls) == first and got.metadata["model_calls"] == first
    fmt = model.get_model_object("latent_format")
    mean, cov = _model_space(moments, fmt)
    u, lam = got.eigvecs.double(), got.eigvals.double()
    torch.testing.assert_close((u * lam) @ u.T, cov, atol=2e-3 * float(cov.abs().max()), rtol=0)
    torch.testing.assert_close(got.mean.double().flatten(), mean.flatten(), atol=2e-3, rtol=0)
    assert got.space == "model" and got.latent_format == "SD15"


def test_batch_layout_and_stationary_moments_at_another_resolution(comfy):
    model, moments, shape, scheduler = family_setup("SD15", seed=9)
    noise = torch.randn((3, *shape), generator=torch.Generator().manual_seed(10))
    sig = schedule(model, scheduler, 12)
    together = run(model, teleport(moments, "dpmpp_2m", 3.0, mean="model"), sig, noise)
    alone = torch.cat([run(model, teleport(moments, "dpmpp_2m", 3.0, mean="model"), sig, noise[i:i + 1])
                       for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)

    estimate = ch.pack_module("moments").estimate_moments
    gen = torch.Generator().manual_seed(11)
    stationary = estimate([torch.randn(64, *shape, generator=gen) * 4 + 1], "stationary")
    big = torch.randn((2, shape[0], 16, 24), generator=gen)
    any_size = model.clone()     # the exact Gaussian denoiser is fixed to 8×8; any denoiser will do here
    any_size.set_model_unet_function_wrapper(lambda apply_model, args: 0.5 * args["input"])
    out = run(any_size, teleport(stationary, "euler", 3.0), sig, big)   # stationary moments: any size
    assert out.shape == big.shape and torch.isfinite(out).all()


def test_a_host_without_the_v3_api_gets_one_clear_line(comfy, monkeypatch, caplog):
    pack_nodes = ch.pack_module("nodes")
    monkeypatch.setattr(pack_nodes, "has_v3_api", lambda: False)
    with caplog.at_level(logging.ERROR, logger="gaussian_teleport"):
        assert pack_nodes.old_host_mappings() == {}
    assert "V3 node API" in caplog.text and "update ComfyUI" in caplog.text
