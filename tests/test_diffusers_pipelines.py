"""Teleport for diffusers pipelines, on tiny pipelines built here from configs (no weights, no downloads).

The denoisers are exact Gaussians: a small module returns the eps, v or flow-velocity prediction of
x0 ~ N(μ, Σ) for the noise level the scheduler gives it, so the truth is the closed-form flow from the
start noise (the plain pipeline at many steps converges to it). Checked: teleport + N steps is at least
as close to it as the plain pipeline at N steps (SD with Euler, Euler Karras v-prediction, Heun Karras,
DPM++ 2M; SD3 and Flux with their flow-matching Euler); teleport off is bit-identical to the plain call;
the denoiser calls drop by the replaced steps (+1 for the model mean); under CFG with a prompt-dependent
mean, the model mean matches the truth and the data mean does not. Plus SDXL, the refusals, moments
through the pipeline's VAE and off the model, the k-diffusion wrapper, the benchmark on a tiny saved
pipeline, and the Gaussian solver through the pipeline (exact on the Gaussians, one call a step).
"""

import contextlib
import json
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,  # noqa: E402
                       EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline,
                       HeunDiscreteScheduler, StableDiffusion3Pipeline, StableDiffusionImg2ImgPipeline,
                       StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
from diffusers.configuration_utils import ConfigMixin, register_to_config  # noqa: E402
from diffusers.models.modeling_utils import ModelMixin  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from gaussian_teleport.diffusers import (PipelineDenoiser, estimate_pipeline_moments,  # noqa: E402
                                         estimate_pipeline_moments_from_model, gaussian_solver, latent_format,
                                         scheduler_kind, teleport, teleport_plan)
from gaussian_teleport.moments import DenseMoments, MomentsError  # noqa: E402

SD_SHAPE = (4, 8, 8)          # 16×16 pixels through a VAE that halves the size
FLOW_SHAPE = (16, 4, 4)       # 32×32 pixels through the default factor 8 (no VAE): 2×2 tokens for Flux
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


# ----------------------------------------------------------------------------
# The exact Gaussian and the denoisers that predict from it.


class Gaussian:
    """x0 ~ N(μ + shift, U diag(λ) Uᵀ) on flattened latents, in float64."""

    def __init__(self, shape, seed):
        gen = torch.Generator().manual_seed(seed)
        d = math.prod(shape)
        self.shape = shape
        self.u, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
        self.lam = torch.logspace(0.3, -2.0, d, dtype=torch.float64)
        self.mean = 0.5 * torch.randn(d, generator=gen, dtype=torch.float64)
        direction = torch.randn(d, generator=gen, dtype=torch.float64)
        self.direction = 0.1 * direction / direction.norm() * d ** 0.5

    def x0(self, x, sigma, alpha, mean):
        """E[x0 | x = α x0 + σ ε] for flat x (B, D) and per-sample means (B, D)."""
        gain = alpha * self.lam / (alpha ** 2 * self.lam + sigma ** 2)
        return mean + ((x - alpha * mean) @ self.u * gain) @ self.u.T

    def flow(self, x, sigma_from, alpha_from, sigma_to, alpha_to, mean=None):
        """The probability flow carried exactly from (σ_from, α_from) to (σ_to, α_to), for flat x (B, D)."""
        mean = self.mean if mean is None else mean
        gain = ((sigma_to ** 2 + alpha_to ** 2 * self.lam) / (sigma_from ** 2 + alpha_from ** 2 * self.lam)).sqrt()
        return alpha_to * mean + ((x - alpha_from * mean) @ self.u * gain) @ self.u.T

    def moments(self):
        return DenseMoments(self.mean.reshape(self.shape), self.lam, self.u, count=1000, space="model")


class GaussianDenoiser(ModelMixin, ConfigMixin):
    """Shared part: the Gaussian, a call counter, and a per-sample mean that can follow the prompt."""

    config_name = "config.json"

    def setup(self, gaussian: Gaussian, cond_scale: float = 0.0):
        self.anchor = torch.nn.Parameter(torch.zeros(1))     # gives the module a device and float32 dtype
        self.gaussian, self.cond_scale, self.calls = gaussian, cond_scale, 0

    def means(self, embeddings, batch):
        g = self.gaussian
        if embeddings is None or not self.cond_scale:
            return g.mean.expand(batch, -1)
        level = embeddings.double().mean(dim=tuple(range(1, embeddings.dim())))
        return g.mean + self.cond_scale * level[:, None] * g.direction


class GaussianUNet(GaussianDenoiser):
    """A UNet's eps or v prediction; σ from the timestep by the schedulers' own log-linear interpolation."""

    @register_to_config
    def __init__(self, in_channels=4, out_channels=4, sample_size=8, time_cond_proj_dim=None,
                 prediction_type="epsilon"):
        super().__init__()

    def use_schedule(self, scheduler):
        sigmas = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5
        self.log_sigmas = sigmas.double().log()
        return self

    def sigma(self, t: float) -> float:
        lo = min(int(math.floor(t)), len(self.log_sigmas) - 2)
        w = t - lo
        return math.exp((1 - w) * float(self.log_sigmas[lo]) + w * float(self.log_sigmas[lo + 1]))

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True, **kwargs):
        self.calls += 1
        sigma = self.sigma(float(torch.as_tensor(timestep).reshape(-1)[0]))
        scale = math.sqrt(1 + sigma ** 2)
        x = sample.double().flatten(1) * scale                 # the UNet sees x_VE / √(1 + σ²)
        x0 = self.gaussian.x0(x, sigma, 1.0, self.means(encoder_hidden_states, x.shape[0]))
        eps = (x - x0) / sigma
        out = eps if self.config.prediction_type == "epsilon" else (eps - sigma * x0) / scale
        return (out.reshape(sample.shape).to(sample.dtype),)


class GaussianFlow(GaussianDenoiser):
    """A flow transformer's velocity ε − x0 at t; Flux's 2×2 token packing undone and redone."""

    @register_to_config
    def __init__(self, in_channels=16, out_channels=16, sample_size=4, patch_size=2, joint_attention_dim=8,
                 guidance_embeds=False, packed=False, time_scale=1000.0):
        super().__init__()

    def cache_context(self, name):
        return contextlib.nullcontext()

    def forward(self, hidden_states, timestep, encoder_hidden_states=None, return_dict=True, **kwargs):
        self.calls += 1
        t = float(timestep.reshape(-1)[0]) / self.config.time_scale
        c, h, w = self.gaussian.shape
        x = FluxPipeline._unpack_latents(hidden_states, h * 8, w * 8, 8) if self.config.packed else hidden_states
        flat = x.double().flatten(1)
        x0 = self.gaussian.x0(flat, t, 1.0 - t, self.means(encoder_hidden_states, flat.shape[0]))
        v = ((flat - x0) / t).reshape(x.shape).to(hidden_states.dtype)
        return (FluxPipeline._pack_latents(v, v.shape[0], c, h, w) if self.config.packed else v,)


# ----------------------------------------------------------------------------
# Tiny pipelines.


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from several threads, and lose much when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A CLIP tokenizer over single letters, from a vocab.json and merges.txt written here."""
    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8)


def text_encoder():
    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16,
                                        intermediate_size=16, num_attention_heads=2, num_hidden_layers=1,
                                        vocab_size=56, max_position_embeddings=8))


def tiny_vae(channels=4):
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=channels,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=16)


def tiny_unet(**sdxl):
    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=2, **sdxl)


def sd_pipeline(tokenizer, scheduler, unet=None, prediction="epsilon", cond_scale=0.0, seed=0):
    unet = unet or GaussianUNet(prediction_type=prediction)
    if isinstance(unet, GaussianUNet):
        unet.setup(Gaussian(SD_SHAPE, seed), cond_scale)
        unet.use_schedule(scheduler)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text_encoder(), tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flow_pipeline(kind, seed=1):
    if kind == "flux":
        model = GaussianFlow(in_channels=64, packed=True, time_scale=1.0)
        scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                    base_image_seq_len=4, max_image_seq_len=64)
        pipe = FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                            tokenizer_2=None, transformer=model)
    else:
        model = GaussianFlow(in_channels=16)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        pipe = StableDiffusion3Pipeline(transformer=model, scheduler=scheduler, vae=None, text_encoder=None,
                                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                                        tokenizer_3=None)
    model.setup(Gaussian(FLOW_SHAPE, seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flow_call(kind, steps, batch=2):
    gen = torch.Generator().manual_seed(3)
    call = dict(prompt_embeds=torch.randn(batch, 3, 8, generator=gen), num_inference_steps=steps,
                height=8 * FLOW_SHAPE[1], width=8 * FLOW_SHAPE[2], output_type="latent",
                pooled_prompt_embeds=torch.randn(batch, 8, generator=gen))
    if kind == "sd3":
        call.update(negative_prompt_embeds=torch.zeros(batch, 3, 8),
                    negative_pooled_prompt_embeds=torch.zeros(batch, 8), guidance_scale=4.0)
    return call


SD_CALL = dict(prompt=["a cat", "a red fox"], height=16, width=16, output_type="latent")


def seeded(call, seed=0):
    return {**call, "generator": torch.Generator().manual_seed(seed)}


def rmse(a, b):
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def images(output):
    return output.images if hasattr(output, "images") else output[0]


# ----------------------------------------------------------------------------
# (a) With an exact Gaussian the truth is the closed-form flow from the start noise: the plain
# pipeline at many steps converges to it, and teleport + N steps is at least as close to it as the
# plain N steps.

# Every schedule ends at one lowest noise level whatever the number of steps (Karras, or the
# scheduler's sigma_min as the last sigma), so the fine run converges to the exact flow. DPM++ 2M runs
# without lower_order_final, the arithmetic of k-diffusion's DPM++ 2M (the README says why).
SD_CASES = {
    "euler": (lambda: EulerDiscreteScheduler(**BETAS, timestep_spacing="trailing", final_sigmas_type="sigma_min"),
              "epsilon", 240),
    "euler-karras-v": (lambda: EulerDiscreteScheduler(**BETAS, use_karras_sigmas=True, prediction_type="v_prediction"),
                       "v_prediction", 240),
    "heun-karras": (lambda: HeunDiscreteScheduler(**BETAS, use_karras_sigmas=True), "epsilon", 60),
    "dpmpp_2m": (lambda: DPMSolverMultistepScheduler(**BETAS, timestep_spacing="trailing",
                                                     final_sigmas_type="sigma_min", lower_order_final=False),
                 "epsilon", 200),
}


def sd_truth(pipe, make, noise, steps, mean=None):
    """The exact end point of the plain call from ``noise`` (latents=), in the scheduler's frame."""
    scheduler = make()
    scheduler.set_timesteps(steps)
    start, end = float(scheduler.sigmas[0]), float(scheduler.sigmas[-1])
    vp = isinstance(scheduler, DPMSolverMultistepScheduler)
    x = noise.double().flatten(1) * float(scheduler.init_noise_sigma) * (math.sqrt(1 + start ** 2) if vp else 1.0)
    out = pipe.unet.gaussian.flow(x, start, 1.0, end, 1.0, mean) / (math.sqrt(1 + end ** 2) if vp else 1.0)
    return out.reshape(noise.shape)


def assert_teleport_at_least_as_close(truth, fine, plain, tele):
    spread = float(truth.double().std())
    assert rmse(fine, truth) < 0.25 * rmse(plain, truth), (rmse(fine, truth), rmse(plain, truth))
    assert rmse(tele, truth) <= rmse(plain, truth) + 1e-5 * spread, (rmse(tele, truth), rmse(plain, truth))
    assert rmse(tele, truth) < 0.25 * spread


@pytest.mark.parametrize("case", sorted(SD_CASES))
def test_sd_teleport_is_as_close_to_the_truth_as_the_plain_run(tokenizer, case):
    make, prediction, fine_steps = SD_CASES[case]
    pipe = sd_pipeline(tokenizer, make(), prediction=prediction)
    steps = 8
    noise = torch.randn(2, *SD_SHAPE, generator=torch.Generator().manual_seed(5))
    call = {**SD_CALL, "latents": noise}
    truth = sd_truth(pipe, make, noise, steps)
    fine = images(pipe(**call, num_inference_steps=fine_steps))
    plain = images(pipe(**call, num_inference_steps=steps))
    plans = []
    tele = images(teleport(pipe, pipe.unet.gaussian.moments(), handoff="sigma:3", mean="data", on_plan=plans.append,
                           **call, num_inference_steps=steps))
    assert plans[0].jumped and plans[0].skipped >= 2
    assert_teleport_at_least_as_close(truth, fine, plain, tele)


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_flow_teleport_is_as_close_to_the_truth_as_the_plain_run(kind):
    pipe = flow_pipeline(kind)
    c, h, w = FLOW_SHAPE
    noise = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(5))
    given = FluxPipeline._pack_latents(noise, 2, c, h, w) if kind == "flux" else noise
    x0 = pipe.transformer.gaussian.flow(noise.double().flatten(1), 1.0, 0.0, 0.0, 1.0)    # t 1 → 0
    truth = x0.reshape(noise.shape)
    truth = FluxPipeline._pack_latents(truth, 2, c, h, w) if kind == "flux" else truth
    fine = images(pipe(**flow_call(kind, 200), latents=given))
    plain = images(pipe(**flow_call(kind, 8), latents=given))
    plans = []
    tele = images(teleport(pipe, pipe.transformer.gaussian.moments(), handoff="sigma:5", mean="data",
                           on_plan=plans.append, **flow_call(kind, 8), latents=given))
    assert plans[0].jumped and plans[0].skipped >= 2 and plans[0].parameterization.is_flow
    assert_teleport_at_least_as_close(truth, fine, plain, tele)


# ----------------------------------------------------------------------------
# (b) teleport off is the plain call, bit for bit; (c) the calls drop by the replaced steps.

OFF_SCHEDULERS = {
    "euler": lambda: EulerDiscreteScheduler(**BETAS),
    "heun-karras": lambda: HeunDiscreteScheduler(**BETAS, use_karras_sigmas=True),
    "dpmpp_2m-karras": lambda: DPMSolverMultistepScheduler(**BETAS, use_karras_sigmas=True),
}


@pytest.mark.parametrize("name", sorted(OFF_SCHEDULERS))
def test_teleport_off_is_the_plain_call_bit_for_bit(tokenizer, name):
    pipe = sd_pipeline(tokenizer, OFF_SCHEDULERS[name](), unet=tiny_unet() if name == "euler" else None)
    call = {**SD_CALL, "num_inference_steps": 4}
    plain = images(pipe(**seeded(call)))
    for handoff in ("steps:0", "sigma:1000"):     # the second records the schedule, then runs from its noise
        off = images(teleport(pipe, "no moments needed", handoff=handoff, **seeded(call)))
        assert torch.equal(off, plain), handoff


def test_flux_teleport_off_with_custom_sigmas_is_the_plain_call_bit_for_bit():
    pipe = flow_pipeline("flux")
    call = {**flow_call("flux", 5), "sigmas": [0.5, 0.4, 0.3, 0.2, 0.1]}     # starts below pure noise
    plain = images(pipe(**seeded(call)))
    off = images(teleport(pipe, pipe.transformer.gaussian.moments(), handoff="sigma:1000", **seeded(call)))
    assert torch.equal(off, plain)


@pytest.mark.parametrize("name,per_step", [("euler", 1), ("heun", 2), ("dpmpp_2m", 1)])
def test_calls_drop_by_the_replaced_steps(tokenizer, name, per_step):
    make = {"euler": lambda: EulerDiscreteScheduler(**BETAS), "heun": lambda: HeunDiscreteScheduler(**BETAS),
            "dpmpp_2m": lambda: DPMSolverMultistepScheduler(**BETAS)}[name]
    pipe = sd_pipeline(tokenizer, make())
    unet, call, steps = pipe.unet, {**SD_CALL, "num_inference_steps": 8}, 8
    plain_calls = per_step * steps - (per_step - 1)        # Heun's last step to σ 0 is one Euler step
    scheduler, registered = pipe.scheduler, pipe.config.scheduler
    for mean, probe in (("data", 0), ("model", 1)):
        unet.calls = 0
        teleport(pipe, unet.gaussian.moments(), handoff="steps:3", mean=mean, **seeded(call))
        assert unet.calls == plain_calls - per_step * 3 + probe, mean
    assert pipe.scheduler is scheduler and pipe.config.scheduler == registered     # the pipeline is as it was
    unet.calls = 0
    pipe(**seeded(call))
    assert unet.calls == plain_calls


def test_flux_calls_drop_by_the_replaced_steps():
    pipe = flow_pipeline("flux")
    model = pipe.transformer
    for mean, probe in (("data", 0), ("model", 1)):
        model.calls = 0
        teleport(pipe, model.gaussian.moments(), handoff="steps:3", mean=mean, **seeded(flow_call("flux", 8)))
        assert model.calls == 8 - 3 + probe


def test_sdxl_teleport_off_is_bit_identical_and_the_calls_drop():
    """SDXL with a tiny real UNet (text-time embeddings), embeddings passed directly (no text encoders)."""
    unet = tiny_unet(addition_embed_type="text_time", addition_time_embed_dim=4,
                     projection_class_embeddings_input_dim=32)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=EulerDiscreteScheduler(**BETAS))
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    call = dict(prompt_embeds=torch.randn(1, 8, 16, generator=gen),
                pooled_prompt_embeds=torch.randn(1, 8, generator=gen),
                negative_prompt_embeds=torch.zeros(1, 8, 16), negative_pooled_prompt_embeds=torch.zeros(1, 8),
                height=16, width=16, output_type="latent", num_inference_steps=4)
    plain = images(pipe(**seeded(call)))
    assert torch.equal(images(teleport(pipe, "unused", handoff="sigma:1000", **seeded(call))), plain)
    moments = DenseMoments(torch.zeros(SD_SHAPE), torch.ones(256), torch.eye(256), count=2, latent_format="SDXL")
    calls = []
    hook = unet.register_forward_pre_hook(lambda *args: calls.append(1))
    out = images(teleport(pipe, moments, handoff="steps:2", mean="model", **seeded(call)))
    hook.remove()
    assert len(calls) == 4 - 2 + 1 and torch.isfinite(out).all()


# ----------------------------------------------------------------------------
# (d) CFG 5 with a mean that follows the prompt: the model's mean matches the truth, the data's does not.


def test_model_mean_under_cfg_matches_the_truth_and_the_data_mean_does_not(tokenizer):
    make = SD_CASES["euler-karras-v"][0]
    pipe = sd_pipeline(tokenizer, make(), prediction="v_prediction", cond_scale=2.0)
    g = pipe.unet.gaussian
    noise = torch.randn(2, *SD_SHAPE, generator=torch.Generator().manual_seed(5))
    call = dict(prompt_embeds=torch.ones(2, 8, 16), negative_prompt_embeds=-torch.ones(2, 8, 16), guidance_scale=5.0,
                height=16, width=16, output_type="latent", latents=noise, num_inference_steps=8)
    guided = g.mean + 2.0 * (-1 + 5 * 2) * g.direction    # μ_u + w(μ_c − μ_u), μ_c and μ_u = μ ± 2·direction
    truth = sd_truth(pipe, make, noise, 8, guided)
    plain = images(pipe(**call))
    moments = g.moments()                               # the unconditional data Gaussian: its mean is μ
    err = {mean: rmse(images(teleport(pipe, moments, handoff="steps:3", mean=mean, **call)), truth)
           for mean in ("model", "data")}
    assert err["model"] <= rmse(plain, truth) + 1e-6, (err, rmse(plain, truth))
    assert err["data"] > 2 * rmse(plain, truth) and err["data"] > 2 * err["model"], (err, rmse(plain, truth))


# ----------------------------------------------------------------------------
# Refusals, plans, moments through the VAE, the k-diffusion wrapper.


def test_unsupported_schedulers_and_pipelines_are_refused_with_what_is_covered(tokenizer):
    pipe = sd_pipeline(tokenizer, EulerAncestralDiscreteScheduler(**BETAS))
    with pytest.raises(ValueError, match="EulerAncestralDiscreteScheduler.*EulerDiscreteScheduler"):
        teleport(pipe, "unused", handoff="sigma:5", **SD_CALL)
    pipe.scheduler = DPMSolverMultistepScheduler(**BETAS, algorithm_type="sde-dpmsolver++")
    with pytest.raises(ValueError, match="sde-dpmsolver.*dpmsolver\\+\\+"):
        teleport(pipe, "unused", **SD_CALL)
    img2img = StableDiffusionImg2ImgPipeline(**{**pipe.components, "scheduler": EulerDiscreteScheduler(**BETAS)})
    with pytest.raises(ValueError, match="StableDiffusionImg2ImgPipeline.*StableDiffusionPipeline"):
        teleport(img2img, "unused", **SD_CALL)


def test_plan_and_moments_of_another_family_are_refused_before_any_model_call(tokenizer):
    pipe = sd_pipeline(tokenizer, EulerDiscreteScheduler(**BETAS))
    plan = teleport_plan(pipe, "sigma:5", **seeded(SD_CALL), num_inference_steps=10)
    assert plan.jumped and plan.steps == 10 and 0 < plan.skipped < 10
    flux_moments = DenseMoments(torch.zeros(16, 4, 4), torch.ones(256), torch.eye(256), count=2, latent_format="Flux")
    pipe.unet.calls = 0
    with pytest.raises(MomentsError, match="Flux.*SD15"):
        teleport(pipe, flux_moments, **seeded(SD_CALL), num_inference_steps=10)
    assert pipe.unet.calls == 0


def test_moments_through_the_vae_are_raw_tagged_and_drive_a_teleport(tokenizer, tmp_path):
    from PIL import Image

    pipe = sd_pipeline(tokenizer, EulerDiscreteScheduler(**BETAS))
    gen = torch.Generator().manual_seed(0)
    for i in range(5):
        pixels = (torch.rand(20, 24, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    moments = estimate_pipeline_moments(pipe, str(tmp_path), structure="dense", width=16, height=16, batch_size=2,
                                        progress=False)
    assert moments.space == "raw" and moments.latent_format == "SD15" and moments.latent_shape == SD_SHAPE
    assert moments.count == 5
    assert latent_format(pipe).scale == pipe.vae.config.scaling_factor
    out = teleport(pipe, moments, handoff="steps:2", **seeded(SD_CALL), num_inference_steps=6)
    assert torch.isfinite(images(out)).all()


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
def test_the_pipeline_as_a_k_diffusion_denoiser_returns_the_gaussian_x0(tokenizer, name):
    make = {"euler": lambda: EulerDiscreteScheduler(**BETAS), "dpmpp_2m": lambda: DPMSolverMultistepScheduler(**BETAS)}
    pipe = sd_pipeline(tokenizer, make[name]())
    model = PipelineDenoiser(pipe, prompt="a cat", height=16, width=16)
    assert model.latent_shape() == SD_SHAPE
    x = 3.0 * torch.randn(3, *SD_SHAPE, generator=torch.Generator().manual_seed(1))
    g = pipe.unet.gaussian
    x0 = model(x, torch.full([3], 3.0))
    expect = g.x0(x.double().flatten(1), 3.0, 1.0, g.mean.expand(3, -1)).reshape(x.shape)
    assert rmse(x0, expect) < 1e-4 * float(expect.std())


def test_moments_read_off_the_pipeline_find_its_gaussian(tokenizer):
    pipe = sd_pipeline(tokenizer, EulerDiscreteScheduler(**BETAS))
    g = pipe.unet.gaussian
    moments = estimate_pipeline_moments_from_model(pipe, prompt="a cat", height=16, width=16, rank=8,
                                                   generator=torch.Generator().manual_seed(0))
    assert moments.space == "model" and moments.latent_format == "SD15" and moments.latent_shape == SD_SHAPE
    assert torch.allclose(moments.eigvals[:4].double(), g.lam[:4], rtol=0.1)
    assert float((moments.mean.double().flatten() - g.mean).norm() / g.mean.norm()) < 0.1


# ----------------------------------------------------------------------------
# The benchmark on a tiny pipeline saved to disk (local files only).


def test_benchmark_runs_on_a_tiny_saved_pipeline(tokenizer, tmp_path):
    from gaussian_teleport.bench import pipeline as bench

    pipe = sd_pipeline(tokenizer, EulerDiscreteScheduler(**BETAS, timestep_spacing="trailing"), unet=tiny_unet())
    pipe.save_pretrained(tmp_path / "model")
    moments = DenseMoments(torch.zeros(SD_SHAPE), torch.ones(256), torch.eye(256, dtype=torch.float32), count=2,
                           latent_format="SD15")
    from gaussian_teleport.moments import save_moments

    save_moments(moments, tmp_path / "m.safetensors")
    (tmp_path / "prompts.txt").write_text("# one prompt per line\n\na red fox\n")
    out = tmp_path / "out"
    code = bench.main(["--model", str(tmp_path / "model"), "--prompts", str(tmp_path / "prompts.txt"),
                       "--moments", str(tmp_path / "m.safetensors"), "--steps", "3", "--seeds", "2",
                       "--handoffs", "steps:1", "--size", "16", "--out", str(out), "--mean", "data"])
    assert code == 0
    table = (out / "pipeline_bench.md").read_text()
    assert "| teleport, -1 calls | steps:1 (σ" in table and "discretisation error" in table
    assert (out / "pipeline_bench.png").stat().st_size > 0


# ----------------------------------------------------------------------------
# The Gaussian solver through the pipeline's denoiser (gaussian_solver): exact on an exact Gaussian at any
# number of steps, one model call a step, the pipeline's own schedule and output.


def recorded(pipe, call):
    """(start latents in the core's frame, the pipeline's schedule) as gaussian_solver records them."""
    from gaussian_teleport.diffusers.families import image_latents, pipeline_family
    from gaussian_teleport.diffusers.teleport import record_start

    family = pipeline_family(pipe)
    kind = scheduler_kind(pipe.scheduler, family)
    noise, record = record_start(pipe, kind, call)
    x = image_latents(pipe, family, noise * record.start_scale, call).double()
    return kind.to_core(x, float(record.sigmas[0])), record.sigmas, kind


def gaussian_end(g, x, sigmas, alpha, mean=None):
    """Where an exact solver lands from x at sigmas[0]: the flow to the last σ, or, when the schedule ends at 0,
    the Gaussian's x0 at the σ before it (k-diffusion's last step)."""
    flat, shape = x.flatten(1), x.shape
    end = float(sigmas[-1]) if float(sigmas[-1]) > 0 else float(sigmas[-2])
    mean = g.mean if mean is None else mean
    y = g.flow(flat, float(sigmas[0]), alpha(float(sigmas[0])), end, alpha(end), mean)
    if float(sigmas[-1]) == 0:
        y = g.x0(y, end, alpha(end), mean.expand(len(y), -1))
    return y.reshape(shape)


@pytest.mark.parametrize("case", sorted(SD_CASES))
def test_the_gaussian_solver_is_exact_on_a_gaussian_sd_pipeline_with_one_call_a_step(tokenizer, case):
    make, prediction, _ = SD_CASES[case]
    pipe = sd_pipeline(tokenizer, make(), prediction=prediction)
    g, steps = pipe.unet.gaussian, 5
    noise = torch.randn(2, *SD_SHAPE, generator=torch.Generator().manual_seed(5))
    call = {**SD_CALL, "latents": noise, "num_inference_steps": steps}
    x, sigmas, kind = recorded(pipe, call)
    truth = kind.from_core(gaussian_end(g, x, sigmas, lambda s: 1.0), float(sigmas[-1]))
    plain = images(pipe(**call))
    pipe.unet.calls = 0
    out = images(gaussian_solver(pipe, g.moments(), **call))
    assert pipe.unet.calls == len(sigmas) - 1 == steps
    assert rmse(out, truth) < 1e-4 * float(truth.double().std()) < rmse(plain, truth), (rmse(out, truth),
                                                                                       rmse(plain, truth))


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_the_gaussian_solver_is_exact_on_a_gaussian_flow_pipeline(kind):
    pipe = flow_pipeline(kind)
    g, c, h, w = pipe.transformer.gaussian, *FLOW_SHAPE
    call = seeded(flow_call(kind, 4))
    x, sigmas, _ = recorded(pipe, call)
    assert float(sigmas[0]) == 1.0
    truth = gaussian_end(g, x, sigmas, lambda t: 1.0 - t)
    pipe.transformer.calls = 0
    out = images(gaussian_solver(pipe, g.moments(), order=2, **seeded(flow_call(kind, 4))))
    assert pipe.transformer.calls == 4
    out = FluxPipeline._unpack_latents(out, 8 * h, 8 * w, 8) if kind == "flux" else out
    assert rmse(out, truth) < 1e-4 * float(truth.double().std()), rmse(out, truth)


def test_the_gaussian_solver_on_sdxl_decodes_like_the_pipeline_and_refuses_what_it_cannot_run(tokenizer):
    """SDXL with a tiny real UNet: decoded output of the plain call's shape; refusals before any model call."""
    unet = tiny_unet(addition_embed_type="text_time", addition_time_embed_dim=4,
                     projection_class_embeddings_input_dim=32)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=EulerDiscreteScheduler(**BETAS))
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    call = dict(prompt_embeds=torch.randn(1, 8, 16, generator=gen),
                pooled_prompt_embeds=torch.randn(1, 8, generator=gen),
                negative_prompt_embeds=torch.zeros(1, 8, 16), negative_pooled_prompt_embeds=torch.zeros(1, 8),
                height=16, width=16, output_type="pt", num_inference_steps=4)
    moments = DenseMoments(torch.zeros(SD_SHAPE), torch.ones(256), torch.eye(256), count=2, latent_format="SDXL")
    calls = []
    hook = unet.register_forward_pre_hook(lambda *args: calls.append(1))
    out = images(gaussian_solver(pipe, moments, mean="model", **seeded(call)))
    assert out.shape == images(pipe(**seeded(call))).shape and torch.isfinite(out).all()
    assert len(calls) == 4 + 4          # the solver's 4, then the plain call's 4
    calls.clear()
    flux_moments = DenseMoments(torch.zeros(16, 4, 4), torch.ones(256), torch.eye(256), count=2, latent_format="Flux")
    with pytest.raises(MomentsError, match="Flux.*SDXL"):
        gaussian_solver(pipe, flux_moments, **seeded(call))
    with pytest.raises(ValueError, match="order"):
        gaussian_solver(pipe, moments, order=7, **seeded(call))
    with pytest.raises(ValueError, match="callback_on_step_end"):
        gaussian_solver(pipe, moments, callback_on_step_end=lambda *a: {}, **seeded(call))
    pipe.scheduler = EulerAncestralDiscreteScheduler(**BETAS)
    with pytest.raises(ValueError, match="EulerAncestralDiscreteScheduler.*EulerDiscreteScheduler"):
        gaussian_solver(pipe, moments, **seeded(call))
    hook.remove()
    assert calls == []
