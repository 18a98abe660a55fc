"""Gaussian Preview: what the jump lands on, decoded, before any model call."""

from __future__ import annotations

import torch

import comfy.sample
from comfy_api.latest import io

from ..scheduler.binding import bind_moments
from ..scheduler.settings import DEFAULT_HANDOFF
from .comfy_model import patcher_facts
from .widgets import CATEGORY, moments_input


class GaussianTeleportPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GaussianTeleportPreview", display_name="Gaussian Preview", category=CATEGORY,
            description="What the jump produces: the Gaussian x0 prediction at a hand-off sigma after the closed-form "
                        "jump from the model's highest noise, for the given noise (the moments' mean; the model is "
                        "not run). Decode it with VAE Decode.",
            inputs=[
                io.Model.Input("model", tooltip="The model (its latent format and noise parameterization are used)."),
                moments_input(),
                io.Noise.Input("noise", tooltip="The start noise, e.g. RandomNoise (same seed as your sampler)."),
                io.Latent.Input("latent", tooltip="Sets the latent size and batch, e.g. Empty Latent Image."),
                io.Float.Input("sigma", default=DEFAULT_HANDOFF.value, min=0.0001, max=10000.0, step=0.01, tooltip=(
                    "The hand-off to preview, as a noise level σ (the hand-off unit on every model).")),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The Gaussian x0 prediction at sigma (raw VAE "
                                      "space).")],
        )

    @classmethod
    def execute(cls, model, moments, noise, latent, sigma) -> io.NodeOutput:
        latent = {**latent, "samples": comfy.sample.fix_empty_latent_channels(model, latent["samples"])}
        eps = noise.generate_noise(latent).float()
        fmt, param = patcher_facts(model, int(eps.shape[1]))
        model_sampling = model.get_model_object("model_sampling")
        s_max = float(model_sampling.sigma_max)
        target = param.schedule_sigma(sigma)
        if not 0 < target <= s_max:
            raise ValueError(f"sigma {sigma:g} is above the model's highest noise level "
                             f"{param.noise_level(s_max):.4g}; preview a lower one")
        gauss = bind_moments(moments, eps.shape[1:], latent_format=fmt, parameterization=param)
        # the start the host's samplers take at full denoise (ComfyUI's noise_scaling, e.g. √(1+σ²)·ε for EPS)
        x_t = model_sampling.noise_scaling(torch.tensor([s_max]), eps, torch.zeros_like(eps), max_denoise=True)
        ((_, x0),) = gauss.trajectory(x_t.to(gauss.dtype), s_max, [target])
        out = model.get_model_object("latent_format").process_out(x0.float())
        return io.NodeOutput({"samples": out}, ui={"text": (f"Gaussian x0 prediction at σ {sigma:.4g} after a jump "
                                                            f"from {param.describe_sigma(s_max)}",)})


NODES = [GaussianTeleportPreview]
