"""Estimate moments: from images (through the VAE), from latents, or from the model itself (no images)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

import comfy.model_management
import comfy.samplers
import comfy.utils
from comfy_api.latest import io

from ..moments.estimate import estimate_moments_from_images, start_accumulator
from ..moments.from_model import DEFAULT_MODEL_RANK, DEFAULT_SIGMA, estimate_moments_from_model
from .comfy_model import patcher_facts, run_in_guider
from .fingerprint import fingerprint, model_fingerprint
from .widgets import CATEGORY, Moments, moments_input, rank_input, structure_input


def _first(v):
    return v[0] if isinstance(v, list) else v


def progress_bar(total: int):
    """A ComfyUI progress bar whose update also honours Cancel."""
    bar = comfy.utils.ProgressBar(total)

    def update(done, of=None):
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, of or total)

    return update


def add_to_input():
    return moments_input("add_to", optional=True, tooltip=(
        "Optional: raw moments to add these samples to, so moments accumulate over several runs or image folders. "
        "Same structure and latent size required."))


class GaussianTeleportEstimateMomentsImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GaussianTeleportEstimateMomentsImages", display_name="Estimate Moments (Images)", category=CATEGORY,
            description="Encode images with a VAE in batches and estimate the Gaussian moments of their latents. Every "
                        "image is brought to one size first. Connect several image batches or folders (lists) to pool "
                        "them.",
            inputs=[
                io.Image.Input("images", tooltip="Images like the ones you generate (a batch or a list of batches); a "
                               "few hundred or more give a good covariance."),
                io.Vae.Input("vae", tooltip="The VAE of the model the moments are for."),
                structure_input(), rank_input(),
                io.Int.Input("width", default=0, min=0, max=8192, step=8, tooltip=(
                    "Width every image is brought to, in pixels (0: the first image's width); a multiple of the VAE's "
                    "downscale factor (8). Generate at this size unless structure is stationary.")),
                io.Int.Input("height", default=0, min=0, max=8192, step=8, tooltip="Height every image is brought to "
                             "(0: the first image's height)."),
                io.Combo.Input("fit", options=["crop", "stretch"], default="crop", tooltip=(
                    "How images of another size are brought to width × height. crop: scale to cover and cut the "
                    "centre (no distortion). stretch: resize directly.")),
                io.Int.Input("batch_size", default=8, min=1, max=256, tooltip="Images encoded by the VAE at once; "
                             "lower it if you run out of memory."),
                add_to_input(),
            ],
            outputs=[Moments.Output(display_name="moments", tooltip="Raw VAE-space Gaussian moments.")],
            is_input_list=True,
        )

    @classmethod
    def execute(cls, images, vae, structure, rank, width, height, fit, batch_size, add_to=None) -> io.NodeOutput:
        vae, structure, rank, fit = _first(vae), _first(structure), _first(rank), _first(fit)
        width, height, batch_size, add_to = _first(width), _first(height), _first(batch_size), _first(add_to)
        images = images if isinstance(images, list) else [images]
        ratio = vae.spacial_compression_encode()
        update = progress_bar(sum(int(i.shape[0]) for i in images))
        done = [0]

        def progress(n):
            done[0] += n
            update(done[0])

        moments = estimate_moments_from_images(
            (group.movedim(-1, 1) for group in images), lambda x: vae.encode(x.movedim(1, -1)), structure=structure,
            rank=rank, width=width, height=height, fit=fit, batch_size=batch_size,
            multiple=ratio if isinstance(ratio, int) else 8, add_to=add_to, progress=progress)
        return io.NodeOutput(moments, ui={"text": (f"{moments.describe()} ({moments.metadata['images_added']} new "
                                                   f"image(s) at {moments.metadata['image_size']})",)})


class GaussianTeleportEstimateMomentsLatents(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GaussianTeleportEstimateMomentsLatents", display_name="Estimate Moments (Latents)",
            category=CATEGORY, description="Estimate the Gaussian moments of LATENT batches (raw VAE space, e.g. from "
                                           "VAE Encode).",
            inputs=[io.Latent.Input("latents", tooltip="Latents to learn the distribution from (a batch or a list of "
                                    "batches of one size)."),
                    structure_input(), rank_input(), add_to_input()],
            outputs=[Moments.Output(display_name="moments", tooltip="Raw VAE-space Gaussian moments.")],
            is_input_list=True,
        )

    @classmethod
    def execute(cls, latents, structure, rank, add_to=None) -> io.NodeOutput:
        structure, rank, add_to = _first(structure), _first(rank), _first(add_to)
        latents = latents if isinstance(latents, list) else [latents]
        acc = start_accumulator(structure, rank, add_to)
        update = progress_bar(len(latents))
        for i, latent in enumerate(latents):
            acc.add(latent["samples"])
            update(i + 1)
        moments = acc.finalize(metadata={"source": "latents"})
        return io.NodeOutput(moments, ui={"text": (moments.describe(),)})


# ----------------------------------------------------------------------------
# From the model: its own Jacobian at a noise level where it is Gaussian.

_CACHE: "OrderedDict[tuple, object]" = OrderedDict()
_CACHE_LOCK = threading.Lock()


def zero_conditioning(model):
    """Zeros of the model's text-embedding size, for UNet models that declare it; else ask for a conditioning."""
    config = getattr(getattr(model.model, "model_config", None), "unet_config", {}) or {}
    dim = config.get("context_dim")
    if not dim or config.get("adm_in_channels"):
        raise ValueError("this model needs a conditioning to be called: connect one to Estimate Moments (Model), "
                         "e.g. CLIP Text Encode with an empty prompt (prompt = unconditional zeroes it)")
    return [[torch.zeros(1, 1, int(dim)), {}]]


def zeroed(conditioning):
    """ConditioningZeroOut: the same structure with zero embeddings (the unconditional)."""
    out = []
    for cond, extra in conditioning:
        extra = dict(extra)
        for key in ("pooled_output", "conditioning_lyrics"):
            if extra.get(key) is not None:
                extra[key] = torch.zeros_like(extra[key])
        out.append([torch.zeros_like(cond), extra])
    return out


def cache_key(model, conditioning, settings) -> tuple:
    """What the estimate depends on, by stable identities: the network (a token that dies with it, never a reused
    id), its weight patches, the content of its object patches (model_sampling), model_options (wrappers, patches)
    and hooks, and the content of the conditioning."""
    cond = None if conditioning is None else fingerprint(conditioning)
    return (model_fingerprint(model), cond, settings)


class GaussianTeleportEstimateMomentsModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GaussianTeleportEstimateMomentsModel", display_name="Estimate Moments (Model)", category=CATEGORY,
            description="Read the Gaussian moments off the model itself, from its own denoiser at high noise: no "
                        "images needed, and they follow the model you sample with (fine-tunes, LoRAs, merges). A few "
                        "batched model calls; the result is cached until the model or a setting changes.",
            inputs=[
                io.Model.Input("model", tooltip="The model to read the moments from (with its LoRAs applied)."),
                io.Int.Input("width", default=1024, min=16, max=8192, step=8, tooltip="Image width you generate at, "
                             "in pixels (the latent is width/8). Use structure = stationary to serve every size."),
                io.Int.Input("height", default=1024, min=16, max=8192, step=8, tooltip="Image height in pixels."),
                structure_input(),
                rank_input(DEFAULT_MODEL_RANK, tooltip=(
                    "Eigen-directions read for the lowrank structure; each costs one sample in every model call "
                    "(64 takes about 7 calls of batch 80).")),
                io.Float.Input("sigma", default=DEFAULT_SIGMA, min=0.5, max=1000.0, step=0.1, tooltip=(
                    "Noise level the model is read at (σ, the same unit as the hand-off). Around the hand-off you "
                    "use is right.")),
                io.Conditioning.Input("conditioning", optional=True, tooltip=(
                    "Optional: a conditioning (e.g. CLIP Text Encode). Needed by models that cannot be called "
                    "without one; with prompt = unconditional it is zeroed.")),
                io.Combo.Input("prompt", options=["unconditional", "as given"], default="unconditional", tooltip=(
                    "unconditional: moments of everything the model draws (recommended; the samplers' model mean "
                    "adds the prompt). as given: moments for the connected conditioning.")),
                # control_after_generate=False: the frontend otherwise adds a "randomize" control to every INT
                # named seed, and each Queue would read the model again with other noise
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False, tooltip=(
                    "Seed of the probe noise. It stays as set (no randomize after each run), so the moments are "
                    "read once and then served from the cache.")),
            ],
            outputs=[Moments.Output(display_name="moments", tooltip="Model-space Gaussian moments; plug into the "
                                    "samplers or Save Moments.")],
        )

    @classmethod
    def execute(cls, model, width, height, structure, rank, sigma, prompt, seed, conditioning=None) -> io.NodeOutput:
        comfy_format = model.get_model_object("latent_format")
        channels = int(getattr(comfy_format, "latent_channels", 4))
        shape = (channels, height // 8, width // 8)
        settings = (shape, structure, rank, float(sigma), prompt, seed)
        if conditioning is None:
            cond = zero_conditioning(model)
        else:
            cond = zeroed(conditioning) if prompt == "unconditional" else conditioning
        key = cache_key(model, cond, settings)       # the conditioning the model is called with
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
        if cached is not None:
            return io.NodeOutput(cached, ui={"text": (f"{cached.describe()} (cached)",)})
        fmt, param = patcher_facts(model, channels)

        def estimate(model_k, x, sigmas, extra_args):
            return estimate_moments_from_model(
                model_k, shape, sigma=sigma, rank=rank, structure=structure, parameterization=param,
                extra_args=extra_args, device=x.device, input_dtype=x.dtype,
                generator=torch.Generator().manual_seed(seed), progress=progress_bar(1),
                latent_format=fmt.name, metadata={"model": type(model.model).__name__})

        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(cond, cond)
        guider.set_cfg(1.0)
        latent = torch.zeros(1, *shape)
        moments = run_in_guider(guider, torch.zeros_like(latent), latent,
                                torch.tensor([param.schedule_sigma(sigma), 0.0]), seed, estimate)
        with _CACHE_LOCK:
            _CACHE[key] = moments
            while len(_CACHE) > 4:
                _CACHE.popitem(last=False)
        return io.NodeOutput(moments, ui={"text": (f"{moments.describe()}: {moments.metadata['model_calls']} model "
                                                   f"calls of batch {moments.metadata['batch_sizes']}",)})


NODES = [GaussianTeleportEstimateMomentsImages, GaussianTeleportEstimateMomentsLatents,
         GaussianTeleportEstimateMomentsModel]
