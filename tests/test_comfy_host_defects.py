"""Host defects of issue 23 (ComfyUI items 6, 8-11) inside a real ComfyUI (skipped unless GT_COMFYUI_PATH names a
checkout; see comfy_harness.py). The models are the tiny exact-Gaussian ones of test_comfy_host.py."""

import gc
import logging

import pytest
import torch

import comfy_harness as ch
from test_comfy_host import family_setup, rel, run, schedule, teleport


@pytest.fixture(scope="module")
def comfy():
    ch.load_pack()
    import comfy.samplers

    return comfy.samplers


def counted(model):
    """A clone whose model calls are counted (the Gaussian denoiser stays the same)."""
    calls = []
    inner = model.model_options["model_function_wrapper"]
    out = model.clone()
    out.set_model_unet_function_wrapper(lambda apply_model, args: calls.append(1) or inner(apply_model, args))
    return out, calls


def estimate(model, seed=0, conditioning=None, prompt="unconditional"):
    (moments,) = ch.run_node("GaussianTeleportEstimateMomentsModel", model=model, width=64, height=64,
                             structure="dense", rank=64, sigma=2.0, prompt=prompt, seed=seed,
                             conditioning=ch.conditioning(0.0) if conditioning is None else conditioning)
    return moments


# -- item 6: the moments-from-the-model cache follows what the model computes ---------------------------------


def test_a_model_sampling_patch_is_estimated_again(comfy):
    """The same network through ModelSamplingDiscrete(v_prediction) is another model: no cached moments."""
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    model, calls = counted(family_setup("SD15", seed=21)[0])
    first = estimate(model)
    n = len(calls)
    assert n > 0 and estimate(model) is first and len(calls) == n          # unchanged: cached
    assert estimate(model.clone()) is first and len(calls) == n            # a clone computes the same: cached
    (vpred,) = ModelSamplingDiscrete().patch(model, "v_prediction", False)
    again = estimate(vpred)
    assert again is not first and len(calls) == 2 * n
    (eps,) = ModelSamplingDiscrete().patch(model, "eps", False)
    (eps2,) = ModelSamplingDiscrete().patch(model, "eps", False)           # the same patch made twice: one estimate
    third = estimate(eps)
    assert estimate(eps2) is third and len(calls) == 3 * n


def test_model_options_and_conditioning_content_are_part_of_the_key(comfy):
    model, calls = counted(family_setup("SD15", seed=22)[0])
    first = estimate(model, prompt="as given", conditioning=ch.conditioning(0.3))
    n = len(calls)
    # a new conditioning tensor with the same values is the same conditioning; other values are not
    assert estimate(model, prompt="as given", conditioning=ch.conditioning(0.3)) is first and len(calls) == n
    assert estimate(model, prompt="as given", conditioning=ch.conditioning(0.4)) is not first
    n = len(calls)
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(lambda args: args["denoised"] * 1.0)
    assert estimate(patched, prompt="as given", conditioning=ch.conditioning(0.3)) is not first
    assert len(calls) > n


def test_a_freed_models_cache_entry_is_never_given_to_a_new_model(comfy):
    """ids are reused after garbage collection; the key must not be."""
    seen = []
    for seed in range(4):
        model = family_setup("SD15", seed=30 + seed)[0]
        got = estimate(model, seed=7)
        assert all(got is not m for m in seen)
        seen.append(got)
        del model
        gc.collect()


# -- item 8: a coarse schedule lands on the asked hand-off ------------------------------------------------------


@pytest.mark.parametrize("steps", [2, 3, 4, 6])
def test_the_ksampler_entry_on_a_coarse_schedule_lands_on_the_hand_off(comfy, steps, caplog):
    from comfy import sample as comfy_sample

    model, moments, shape, _ = family_setup("SD15", seed=23)
    (attached,) = ch.run_node("GaussianTeleportAttachMoments", model=model, moments=moments, handoff_kind="sigma",
                              handoff_value=5.0, mode="save", mean="data")
    counting, calls = counted(attached)
    noise = torch.randn((1, *shape), generator=torch.Generator().manual_seed(3))
    with caplog.at_level(logging.INFO, logger="gaussian_teleport"):
        comfy_sample.sample(counting, noise, steps, 1.0, "teleport_euler", "normal", ch.conditioning(),
                            ch.conditioning(), torch.zeros_like(noise), disable_pbar=True, seed=0)
    sig = schedule(model, "normal", steps)
    replaced = int((sig[:-1] > 5.0 * 1.001).sum())
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("teleport:"))
    landed = float(line.split("→ σ ")[1].split()[0])
    assert 4.0 <= landed <= 5.0, line                   # never far below the asked σ 5
    assert f"replacing {replaced} of {steps} steps" in line
    assert len(calls) == steps - replaced               # the calls saved are those of the steps replaced


# -- item 9: a stage of a split schedule can be jump-only --------------------------------------------------------


def test_stage_one_of_a_split_schedule_is_jump_only(comfy):
    """SplitSigmas at step 5 of Karras 20 gives stage 1 = [14.61 … 5.79, 4.5]; the teleport sampler at σ 5 replaces
    all of it in closed form (exact for the Gaussian model) and stage 2 continues from 4.5."""
    from comfy_extras.nodes_custom_sampler import SplitSigmas

    model, moments, shape, scheduler = family_setup("SD15", seed=24)
    full = schedule(model, "karras", 20)
    split = SplitSigmas.execute(full, 5) if hasattr(SplitSigmas, "define_schema") else SplitSigmas().get_sigmas(full, 5)
    stage1 = (split.args if hasattr(split, "args") else split)[0]
    assert float(stage1[-1]) == pytest.approx(4.5, abs=0.01) and float(stage1[-2]) > 5
    counting, calls = counted(model)
    noise = torch.randn((2, *shape), generator=torch.Generator().manual_seed(5))
    fine = torch.exp(torch.linspace(float(stage1[0].log()), float(stage1[-1].log()), 200))
    exact = run(model, comfy.sampler_object("dpmpp_2m"), fine, noise)
    jumped = run(counting, teleport(moments, "euler", 5.0), stage1, noise)
    assert calls == [] and rel(jumped, exact) < 1e-3
    # and the refusal that remains names the first value that works
    four = schedule(model, "karras", 4)
    with pytest.raises(ValueError, match="raise the hand-off sigma to ([0-9.]+) or more") as info:
        run(model, teleport(moments, "euler", 0.01), four, noise)
    first_working = float(info.value.args[0].split("sigma to ")[1].split()[0])
    assert first_working == pytest.approx(float(four[-2]), rel=1e-3)
    run(model, teleport(moments, "euler", first_working), four, noise)


# -- item 11: the calibration plot --------------------------------------------------------------------------------


def drawable(text, font) -> bool:
    """Every character of ``text`` has a glyph in ``font`` (else Pillow draws the empty 'missing' box)."""
    missing = font.getmask("\U0010fffd")
    missing = (missing.size, bytes(missing))
    return all(c == " " or (font.getmask(c).size, bytes(font.getmask(c))) != missing for c in text)


def test_the_calibration_plot_draws_every_label_and_has_y_axis_values(comfy, monkeypatch):
    import comfy.samplers as cs
    from PIL import ImageDraw

    calibrate = ch.pack_module("nodes.calibrate")
    drawn = {"plot": [], "ev": []}
    target = []
    real_text = ImageDraw.ImageDraw.text

    def text(self, xy, s, *a, **k):
        drawn[target[-1]].append((xy, s, self.getfont()))
        return real_text(self, xy, s, *a, **k)

    def recording(name, fn):
        return lambda *a, **k: target.append(name) or fn(*a, **k)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    monkeypatch.setattr(calibrate, "plot_change_versus_calls", recording("plot", calibrate.plot_change_versus_calls))
    monkeypatch.setattr(calibrate, "plot_explained_variance", recording("ev", calibrate.plot_explained_variance))
    model, moments, shape, scheduler = family_setup("SD15", seed=4, prompt_shift=True)
    guider = cs.CFGGuider(model)
    guider.set_conds(ch.conditioning(0.4), ch.conditioning(0.0))
    guider.set_cfg(4.0)

    class Noise:
        seed = 0

        def generate_noise(self, latent):
            return torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(9))

    ch.run_node("GaussianTeleportCalibrate", guider=guider, sigmas=schedule(model, scheduler, 12),
                latent={"samples": torch.zeros(4, *shape)}, moments=moments, noise=Noise(), sampler_name="dpmpp_2m",
                mean="model", tolerance=0.03)
    labels = [s for _, s, _ in drawn["plot"]]
    assert any("sigma" in s for s in labels) and "tolerance 0.03" in labels, labels
    for name, texts in drawn.items():
        for _, s, font in texts:
            assert drawable(s, font), (name, s)           # σ, × and → were empty boxes
    plots = ch.pack_module("nodes.plots")
    y_values = [s for (x, _), s, _ in drawn["plot"] if x < plots.MARGIN_L and s.replace(".", "").replace("e-", "")
                .isdigit()]
    assert len(y_values) >= 2, labels


def test_the_calibrate_example_previews_the_plot():
    """calibrate_handoff.json's PreviewImage shows Calibrate Teleport's plot (output 1), not the EV diagnostic."""
    import json
    import os

    with open(os.path.join(ch.REPO, "example_workflows", "calibrate_handoff.json")) as fh:
        wf = json.load(fh)
    cal = next(n for n in wf["nodes"] if n["type"] == "GaussianTeleportCalibrate")
    previews = {n["id"] for n in wf["nodes"] if n["type"] == "PreviewImage"}
    shown = [link[2] for link in wf["links"] if link[1] == cal["id"] and link[3] in previews]
    outputs = [o["name"] for o in cal["outputs"]]
    assert [outputs[i] for i in shown] == ["plot"], shown
