"""The teleport samplers driven through the hosts' k-diffusion call shape by an exact Gaussian denoiser.

References are computed independently with numpy: the closed-form Gaussian flow from an eigh of the
model-space covariance (built by hand from the raw file and the published VAE scale), followed by the
plain host sampler on the remaining sigmas.
"""

import types

import numpy as np
import pytest
import torch

from gaussian_teleport.moments import MomentsError, estimate_moments, load_moments, save_moments
from gaussian_teleport.scheduler import get_sigmas_flow, get_sigmas_karras, respace
from test_webui_hosts import SDModel, load_script, make_host

SHAPE = (4, 2, 2)
SCALES = {"SD15": (0.18215, 0.0), "SDXL": (0.13025, 0.0), "Flux": (0.3611, 0.1159)}


def raw_latents(n, shape, seed):
    gen = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    a = torch.randn(d, d, generator=gen, dtype=torch.float64) * torch.logspace(0, -1, d, dtype=torch.float64)
    return (3.0 * torch.randn(d, generator=gen, dtype=torch.float64) + torch.randn(n, d, generator=gen,
            dtype=torch.float64) @ a.T).reshape(n, *shape)


def write_moments(folder, name, shape, seed=0, latent_format="none", overwrite=False):
    moments = estimate_moments([raw_latents(300, shape, seed)], "dense", latent_format=latent_format,
                               dtype=torch.float64)
    folder.mkdir(parents=True, exist_ok=True)
    return save_moments(moments, folder / name, dtype="float64", overwrite=overwrite)


def model_space_gaussian(path, fmt):
    """(μ, Σ) in model space from the raw file, by the explicit per-channel affine map."""
    m = load_moments(path)
    u, lam = m.eigvecs.double().numpy(), m.eigvals.double().numpy()
    mean, cov = m.mean.double().flatten().numpy(), (u * lam) @ u.T
    scale, shift = SCALES[fmt]
    per_pixel = m.latent_shape[1] * m.latent_shape[2]
    return scale * (mean - shift), scale * scale * cov, per_pixel


def gaussian_flow_ref(mean, cov, x, s_from, s_to, flow):
    """x(σ_to) from x(σ_from) by the closed form of DESIGN §1 (α = 1 − t for flow, else 1)."""
    a0, a1 = (1 - s_from, 1 - s_to) if flow else (1.0, 1.0)
    lam, u = np.linalg.eigh(cov)
    lam = np.clip(lam, 0, None)
    flat = x.reshape(x.shape[0], -1).numpy()
    coeff = (flat - a0 * mean) @ u
    ratio = np.sqrt((s_to**2 + a1**2 * lam) / (s_from**2 + a0**2 * lam))
    return torch.from_numpy(a1 * mean + (coeff * ratio) @ u.T).reshape(x.shape)


@pytest.fixture
def sd15(monkeypatch, tmp_path):
    host = make_host(monkeypatch, tmp_path, "a1111")
    folder = tmp_path / "models" / "moments"
    path = write_moments(folder, "sd15.safetensors", SHAPE)
    mean, cov, _ = model_space_gaussian(path, "SD15")
    model = SDModel(mean=mean, cov=cov, flow=False, is_sdxl=False, is_sd3=False)
    load_script()
    return host, model


def processing(enabled=True, moments="sd15.safetensors", kind="sigma", value=5.0, mode="save", mean="model",
               calibrate=False, **attrs):
    from gaussian_teleport.webui import attach
    fields = dict(extra_generation_params={}, is_hr_pass=False, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                  s_noise=1.0)
    p = types.SimpleNamespace(**{**fields, **attrs})
    attach(p, enabled, moments, kind, value, mode, mean, calibrate)
    return p


def run(host, model, name, p, noise, sigmas):
    sampler = host.sd_samplers.create_sampler(name, model)
    out = sampler.sample(p, noise, sigmas)
    return out, sampler


def noise_like(shape, seed=1, batch=3):
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


SD_SIGMAS = get_sigmas_karras(10, 0.0292, 14.6146).double()
# Just above SD_SIGMAS[2] = 5.479: a save-mode jump lands on that schedule step whatever the core's rule for a
# hand-off far above the next step (test_a_hand_off_far_above_the_next_step_lands_where_the_plan_says).
ON_STEP = 5.5


@pytest.mark.parametrize("mean", ["data", "model"])
@pytest.mark.parametrize("base", ["Euler", "Heun", "DPM++ 2M"])
def test_jump_then_host_sampler_matches_reference(sd15, base, mean):
    host, model = sd15
    noise = noise_like(SHAPE)
    p = processing(value=ON_STEP, mean=mean)
    out, sampler = run(host, model, base + " Teleport", p, noise, SD_SIGMAS)
    k = int((SD_SIGMAS[:-1] > ON_STEP).sum())
    assert k >= 2
    x_k = gaussian_flow_ref(model.mean, model.cov, noise * SD_SIGMAS[0], float(SD_SIGMAS[0]), float(SD_SIGMAS[k]),
                            flow=False)
    plain = host.sd_samplers.create_sampler(base, model)
    plain_fn = plain.func
    reference = plain_fn(model.make_denoiser(), x_k, SD_SIGMAS[k:], extra_args=EXTRA)
    torch.testing.assert_close(out, reference, rtol=1e-9, atol=1e-9)

    # Step counters: every call sees the counter value the plain sampler has at that sigma (the probe
    # call, when there is one, is the plain run's first call).
    full = host.sd_samplers.create_sampler(base, model)
    full.sample(processing(), noise, SD_SIGMAS)
    seen = {}
    for step, sigma in full.model_wrap_cfg.calls:
        seen.setdefault(round(sigma, 10), []).append(step)
    for step, sigma in sampler.model_wrap_cfg.calls:
        assert step in seen[round(sigma, 10)], (step, sigma)
    assert sampler.model_wrap_cfg.step == full.model_wrap_cfg.step
    # the host's progress bar ticks once per callback: it ends at its total, the jump's steps included
    assert sampler.last_states == full.last_states == list(range(len(SD_SIGMAS) - 1))

    params = p.extra_generation_params
    assert params["Teleport"] == "sigma:5.5" and params["Teleport moments"] == "sd15.safetensors"
    assert params["Teleport mean"] == mean and "Teleport mode" not in params
    assert f"{k}/10 steps replaced" in params["Teleport result"]
    assert ("model mean" in params["Teleport result"]) == (mean == "model")


@pytest.mark.parametrize("base", ["Euler", "DPM++ 2M"])
def test_a_hand_off_far_above_the_next_step_lands_where_the_plan_says(sd15, base):
    """σ 5 on the 10-step schedule: the next step (σ 3.169) is far below it. Wherever the core's plan lands the jump
    (on the hand-off with the rest re-spaced, or on a schedule step), the wrapper is that closed-form jump followed by
    the host's own function on the plan's sigmas, and the host's progress still ends at its total."""
    from gaussian_teleport.scheduler.handoff import plan_teleport
    host, model = sd15
    noise = noise_like(SHAPE)
    p = processing(value=5.0, mean="data")
    out, sampler = run(host, model, base + " Teleport", p, noise, SD_SIGMAS)
    plan = plan_teleport(SD_SIGMAS, "sigma:5", "save", can_respace=True)
    assert plan.jumped and plan.sigma_to >= float(SD_SIGMAS[3])          # never past the schedule's next step
    x_to = gaussian_flow_ref(model.mean, model.cov, noise * SD_SIGMAS[0], float(SD_SIGMAS[0]), plan.sigma_to,
                             flow=False)
    plain = host.sd_samplers.create_sampler(base, model)
    reference = plain.func(model.make_denoiser(), x_to, plan.sigmas.double(), extra_args=EXTRA)
    torch.testing.assert_close(out, reference, rtol=1e-9, atol=1e-9)
    assert [s for _, s in sampler.model_wrap_cfg.calls] == pytest.approx([float(s) for s in plan.sigmas[:-1]])
    assert sampler.last_states == list(range(len(SD_SIGMAS) - 1))
    assert sampler.model_wrap_cfg.step == len(SD_SIGMAS) - 1
    assert p.extra_generation_params["Teleport result"] == plan.short()


EXTRA = {"cond": 0, "uncond": 0, "cond_scale": 7.0, "image_cond": None, "s_min_uncond": 0.0}


def test_host_options_are_passed_through(sd15, monkeypatch):
    host, model = sd15
    seen = {}
    sampling = host.sd_samplers_kdiffusion.k_diffusion.sampling
    original = sampling.sample_euler

    def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                     s_tmax=float("inf"), s_noise=1.):
        seen.update(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, steps=len(sigmas) - 1)
        return original(model, x, sigmas, extra_args, callback, disable, s_churn, s_tmin, s_tmax, s_noise)

    monkeypatch.setattr(sampling, "sample_euler", sample_euler)
    p = processing(kind="steps", value=3)
    p.s_tmin = 0.25
    run(host, model, "Euler Teleport", p, noise_like(SHAPE), SD_SIGMAS)
    assert seen == {"s_churn": 0.0, "s_tmin": 0.25, "s_tmax": float("inf"), "s_noise": 1.0, "steps": 7}


def test_switch_off_runs_the_plain_sampler_bit_for_bit(sd15):
    host, model = sd15
    noise = noise_like(SHAPE)
    p = processing(enabled=False, moments="None")
    out, _ = run(host, model, "Heun Teleport", p, noise, SD_SIGMAS)
    plain, _ = run(host, model, "Heun", processing(), noise, SD_SIGMAS)
    assert torch.equal(out, plain)
    assert p.extra_generation_params == {"Teleport": "off"}


@pytest.mark.parametrize("hires", [False, True])
def test_schedule_starting_below_the_handoff_does_not_jump(sd15, hires):
    """img2img, hires fix and detailers start part-way down the schedule: no jump, recorded as such."""
    host, model = sd15
    sigmas = SD_SIGMAS[4:]
    assert float(sigmas[0]) < 5.0
    noise = noise_like(SHAPE)
    p = processing(is_hr_pass=hires)
    out, _ = run(host, model, "DPM++ 2M Teleport", p, noise, sigmas)
    plain, _ = run(host, model, "DPM++ 2M", processing(), noise, sigmas)
    assert torch.equal(out, plain)
    key = "Hires teleport result" if hires else "Teleport result"
    assert p.extra_generation_params[key].startswith("no jump (hand-off σ 5 ≥ schedule start σ")


def test_a_hires_pass_the_moments_do_not_fit_runs_without_a_jump(sd15):
    """Moments made for the first pass's size do not fit the upscaled latent: the second pass runs plain and
    says why, instead of failing the request after the first pass."""
    host, model = sd15
    big = (SHAPE[0], SHAPE[1] * 2, SHAPE[2] * 2)
    any_size = SDModel(mean=np.zeros(int(np.prod(big))), cov=np.eye(int(np.prod(big))), flow=False, is_sdxl=False,
                       is_sd3=False)
    noise = noise_like(big)
    p = processing(is_hr_pass=True)
    out, _ = run(host, any_size, "Euler Teleport", p, noise, SD_SIGMAS)
    plain, _ = run(host, any_size, "Euler", processing(), noise, SD_SIGMAS)
    assert torch.equal(out, plain)
    said = p.extra_generation_params["Hires teleport result"]
    assert said.startswith("no jump (the moments do not fit this pass") and "stationary" in said
    with pytest.raises(MomentsError, match="stationary"):            # the first pass still refuses
        run(host, any_size, "Euler Teleport", processing(), noise, SD_SIGMAS)


def test_inpainting_mask_disables_the_jump(sd15):
    host, model = sd15
    noise = noise_like(SHAPE)
    p = processing(mask=torch.ones(1, 2, 2))
    out, _ = run(host, model, "Euler Teleport", p, noise, SD_SIGMAS)
    plain, _ = run(host, model, "Euler", processing(mask=torch.ones(1, 2, 2)), noise, SD_SIGMAS)
    assert torch.equal(out, plain)
    assert "inpainting mask" in p.extra_generation_params["Teleport result"]


@pytest.mark.parametrize("mean", ["data", "model"])
def test_same_budget_mode_keeps_the_call_count_and_the_counters(sd15, mean):
    host, model = sd15
    noise = noise_like(SHAPE)
    p = processing(mode="same_budget", mean=mean)
    out, sampler = run(host, model, "Euler Teleport", p, noise, SD_SIGMAS)
    rest = respace(SD_SIGMAS, 5.0, len(SD_SIGMAS) - 1)
    x_k = gaussian_flow_ref(model.mean, model.cov, noise * SD_SIGMAS[0], float(SD_SIGMAS[0]), 5.0, flow=False)
    reference = host.sd_samplers_kdiffusion.k_diffusion.sampling.sample_euler(model.make_denoiser(), x_k, rest,
                                                                             extra_args=EXTRA)
    torch.testing.assert_close(out, reference, rtol=1e-9, atol=1e-9)
    # the probe is one more model call, not a step: the counter and the progress bar count steps
    assert sampler.model_wrap_cfg.step == len(SD_SIGMAS) - 1
    assert len(sampler.model_wrap_cfg.calls) == len(SD_SIGMAS) - 1 + (mean == "model")
    assert sampler.last_states == list(range(len(SD_SIGMAS) - 1))
    assert p.extra_generation_params["Teleport mode"] == "same_budget"


def test_errors_name_the_problem(sd15, tmp_path):
    host, model = sd15
    noise = noise_like(SHAPE)
    with pytest.raises(MomentsError, match="no moments file is chosen"):
        run(host, model, "Euler Teleport", processing(moments="None"), noise, SD_SIGMAS)
    with pytest.raises(MomentsError, match="was not found"):
        run(host, model, "Euler Teleport", processing(moments="gone.safetensors"), noise, SD_SIGMAS)
    with pytest.raises(MomentsError, match="outside"):
        run(host, model, "Euler Teleport", processing(moments="../escape.safetensors"), noise, SD_SIGMAS)
    write_moments(tmp_path / "models" / "moments", "xl.safetensors", SHAPE, latent_format="SDXL")
    with pytest.raises(MomentsError, match="made for SDXL latents but the model uses SD15"):
        run(host, model, "Euler Teleport", processing(moments="xl.safetensors"), noise, SD_SIGMAS)


def test_sdxl_uses_its_own_scale(monkeypatch, tmp_path):
    host = make_host(monkeypatch, tmp_path, "a1111")
    path = write_moments(tmp_path / "models" / "moments", "sdxl.safetensors", SHAPE, seed=3)
    mean, cov, _ = model_space_gaussian(path, "SDXL")
    model = SDModel(mean=mean, cov=cov, flow=False, is_sdxl=True, is_sd3=False)
    load_script()
    noise = noise_like(SHAPE)
    out, _ = run(host, model, "Euler Teleport", processing(moments="sdxl.safetensors", kind="steps", value=3),
                 noise, SD_SIGMAS)
    x_k = gaussian_flow_ref(mean, cov, noise * SD_SIGMAS[0], float(SD_SIGMAS[0]), float(SD_SIGMAS[3]), flow=False)
    reference = host.sd_samplers_kdiffusion.k_diffusion.sampling.sample_euler(model.make_denoiser(), x_k,
                                                                             SD_SIGMAS[3:], extra_args=EXTRA)
    torch.testing.assert_close(out, reference, rtol=1e-9, atol=1e-9)


class Flux(SDModel):
    """Forge's Flux engine carries no is_* flag; its class name identifies it."""


def test_forge_flow_model_jumps_in_flow_form(monkeypatch, tmp_path):
    host = make_host(monkeypatch, tmp_path, "forge")
    shape = (16, 1, 1)
    path = write_moments(tmp_path / "models" / "moments", "flux.safetensors", shape, seed=5)
    mean, cov, _ = model_space_gaussian(path, "Flux")
    model = Flux(mean=mean, cov=cov, flow=True, is_sdxl=False, is_sd3=False)
    load_script()
    sigmas = get_sigmas_flow(12, 3.0).double()
    noise = noise_like(shape)
    p = processing(moments="flux.safetensors")           # sigma:5 is a noise level: t = 5/6
    out, sampler = run(host, model, "Euler Teleport", p, noise, sigmas)
    t_to = 5.0 / 6.0
    k = int((sigmas[:-1] > t_to).sum())
    assert k >= 3
    x_k = gaussian_flow_ref(mean, cov, noise * sigmas[0], float(sigmas[0]), float(sigmas[k]), flow=True)
    reference = host.sd_samplers_kdiffusion.k_diffusion.sampling.sample_euler(model.make_denoiser(), x_k,
                                                                             sigmas[k:], extra_args=EXTRA)
    torch.testing.assert_close(out, reference, rtol=1e-9, atol=1e-9)
    assert sampler.model_wrap_cfg.step == len(sigmas) - 1
    assert f"{k}/12 steps replaced" in p.extra_generation_params["Teleport result"]


def test_moments_from_the_model_are_read_once_per_checkpoint_and_size(sd15, tmp_path):
    """'From the model': read off the checkpoint's own (here: exact Gaussian) denoiser, kept as a file."""
    host, model = sd15
    model.sd_checkpoint_info = types.SimpleNamespace(model_name="tiny", shorthash="abc123")
    noise = noise_like(SHAPE)
    p = processing(moments="From the model")
    out, sampler = run(host, model, "Euler Teleport", p, noise, SD_SIGMAS)
    cached = tmp_path / "models" / "moments" / "from_model" / "tiny-abc123-4x2x2.safetensors"
    assert cached.is_file()
    first_calls = len(sampler.model_wrap_cfg.calls)
    assert "moments from_model/tiny-abc123-4x2x2.safetensors" in p.extra_generation_params["Teleport result"]
    assert p.extra_generation_params["Teleport moments"] == "From the model"
    again = processing(moments="From the model")
    out2, sampler2 = run(host, model, "Euler Teleport", again, noise, SD_SIGMAS)
    assert len(sampler2.model_wrap_cfg.calls) < first_calls            # loaded from the file, not re-read
    torch.testing.assert_close(out2, out)
    # the model's Gaussian is the file's: teleport with it matches teleport with the data's moments
    data, _ = run(host, model, "Euler Teleport", processing(), noise, SD_SIGMAS)
    torch.testing.assert_close(out, data, rtol=1e-3, atol=1e-3)
    assert sampler.model_wrap_cfg.step == len(SD_SIGMAS) - 1           # the estimate's calls left no trace


def test_a_calibration_run_returns_the_plain_images_and_remembers_the_hand_off(sd15):
    from gaussian_teleport.webui import LAST_CALIBRATION, last_calibration

    host, model = sd15
    noise = noise_like(SHAPE, batch=4)
    p = processing(calibrate=True)
    out, sampler = run(host, model, "DPM++ 2M Teleport", p, noise, SD_SIGMAS)
    plain, _ = run(host, model, "DPM++ 2M", processing(), noise, SD_SIGMAS)
    assert torch.equal(out, plain)
    said = p.extra_generation_params["Teleport calibration"]
    assert "steps replaced" in said and LAST_CALIBRATION["summary"] == said
    kind, value, message = last_calibration()
    assert kind == "sigma" and value >= 1.0 and message == said
    with pytest.raises(ValueError, match="batch of 2 or more"):
        run(host, model, "DPM++ 2M Teleport", processing(calibrate=True), noise[:1], SD_SIGMAS)


def test_moments_files_are_reloaded_only_when_changed(tmp_path):
    from gaussian_teleport.moments import MomentsFiles
    folder = tmp_path / "m"
    path = write_moments(folder, "a.safetensors", SHAPE, seed=0)
    files = MomentsFiles()
    first = files.load(path)
    assert files.load(path) is first
    write_moments(folder, "a.safetensors", SHAPE, seed=9, overwrite=True)
    second = files.load(path)
    assert second is not first and not torch.allclose(second.mean, first.mean)


# Latent formats as Forge and Forge Neo's huggingface_guess declares them (model_config.latent_format).
def _config_format(name, scale, shift=0.0):
    return type(name, (), {"process_in": lambda self, z: (z - shift) * scale})()


@pytest.mark.parametrize("name, scale, shift, expected", [
    ("SD15", 0.18215, 0.0, "SD15"), ("SDXL", 0.13025, 0.0, "SDXL"), ("SD3", 1.5305, 0.0609, "SD3"),
    ("Flux", 0.3611, 0.1159, "Flux"),                               # Flux, Chroma, Neo's Lumina 2 and Z-Image
    ("Wan21", 1.0, 0.0, None), ("SDXL_Playground_2_5", 0.5, 0.0, None), ("SDXL", 0.5, 0.0, None)])
def test_a_forge_model_family_is_its_declared_latent_format_or_refused(name, scale, shift, expected):
    from gaussian_teleport.webui import latent_format_of
    engine = type("QwenImage" if name == "Wan21" else "Engine", (), {})()
    engine.model_config = types.SimpleNamespace(latent_format=_config_format(name, scale, shift))
    engine.is_sd1 = engine.is_sdxl = engine.is_sd3 = False
    if expected is not None:
        assert latent_format_of(engine) == expected
    else:
        with pytest.raises(MomentsError, match=f"does not support this checkpoint .*{name}.*without 'Teleport'"):
            latent_format_of(engine)


def test_a_checkpoint_of_no_known_family_is_never_taken_for_sd15():
    from gaussian_teleport.webui import latent_format_of
    with pytest.raises(MomentsError, match="no SD1.x, SD2.x, SDXL, SD3 or Flux mark"):
        latent_format_of(types.SimpleNamespace(is_sdxl=False, is_sd3=False))
    assert latent_format_of(types.SimpleNamespace(is_sd2=True)) == "SD15"
