"""A diffusers pipeline as a k-diffusion-form denoiser: model(x, σ·ones[B]) → the guided x0 prediction.

Each call is one pipeline call of a single step from σ straight to 0 (``ScheduleCut`` "probe" at σ), so
the pipeline's own guidance, conditioning and prediction type are what the core sees. The text
encoders run on every call (a pipeline has no public way to keep their output for any family), which
is fine for the few calls the core's model-moments estimator and the hand-off calibration make.

x and σ are in the core's units: VE latents and sigmas, or a flow model's latents at t.
"""

from __future__ import annotations

import torch

from ..moments.from_model import DEFAULT_ITERATIONS, DEFAULT_MODEL_RANK, DEFAULT_SIGMA, estimate_moments_from_model
from .families import image_latents, latent_size, pipeline_family, pipeline_latents
from .schedulers import ScheduleCut, scheduler_kind
from .teleport import internal_call


# Per-prompt tensors a call may give instead of a prompt (one row per prompt).
EMBEDDINGS = ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds",
              "prompt_attention_mask", "negative_prompt_attention_mask")


class PipelineDenoiser:
    """``pipe`` with the arguments ``call`` (prompt, guidance, size, …) as a k-diffusion denoiser.

    The batch of x is the pipeline's batch: prompts × images per prompt, prompt-major (a single prompt
    is repeated for every sample). Counts its pipeline calls in ``calls``.
    """

    def __init__(self, pipe, **call):
        self.pipe, self.call = pipe, {k: v for k, v in call.items() if k not in ("latents", "generator")}
        self.family = pipeline_family(pipe)
        self.kind = scheduler_kind(pipe.scheduler, self.family)
        self.parameterization = self.kind.parameterization
        self.calls = 0

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.pipe, self.family.denoiser).dtype

    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the latents this call denoises."""
        module = getattr(self.pipe, self.family.denoiser)
        channels = int(module.config.in_channels) // (4 if self.family.packed else 1)
        return (channels, *latent_size(self.pipe, self.family, self.call))

    def _given_embeddings(self) -> bool:
        return self.call.get("prompt") is None and self.call.get("prompt_embeds") is not None

    def _images_per_prompt(self, batch: int) -> int:
        prompt = self.call.get("prompt")
        prompts = len(prompt) if isinstance(prompt, list) else 1
        if self._given_embeddings():
            prompts = int(self.call["prompt_embeds"].shape[0])
        if batch % prompts:
            raise ValueError(f"a batch of {batch} latents does not split over {prompts} prompts")
        return batch // prompts

    def batch_call(self, batch: int) -> dict:
        """The pipeline arguments for ``batch`` latents: given embeddings repeated prompt-major to the batch here
        (SD3 and Flux do not apply num_images_per_prompt to them), or num_images_per_prompt for text prompts."""
        per_prompt = self._images_per_prompt(batch)
        if not self._given_embeddings():
            return {**self.call, "num_images_per_prompt": per_prompt}
        repeated = {k: v.repeat_interleave(per_prompt, dim=0) for k, v in self.call.items()
                    if k in EMBEDDINGS and isinstance(v, torch.Tensor)}
        return {**self.call, **repeated, "num_images_per_prompt": 1}

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        s = float(sigma.reshape(-1)[0])
        if not torch.all(sigma == sigma.reshape(-1)[0]):
            raise ValueError("the pipeline denoises a batch at one noise level; got several sigmas")
        frame = pipeline_latents(self.pipe, self.family, self.kind.from_core(x, s)).to(self.dtype)
        call = self.batch_call(x.shape[0])
        cut = ScheduleCut(self.pipe.scheduler, self.kind, "probe", sigma=s)
        with torch.no_grad():
            out = internal_call(self.pipe, cut, call, latents=frame)
        self.calls += 1
        return image_latents(self.pipe, self.family, out, call).to(x.dtype)


def estimate_pipeline_moments_from_model(pipe, *, sigma: float = DEFAULT_SIGMA, rank: int = DEFAULT_MODEL_RANK,
                                         iterations: int = DEFAULT_ITERATIONS, batch_size: int | None = None,
                                         generator: torch.Generator | None = None, progress=None,
                                         **call):
    """Model-space moments read off the pipeline's own guided denoiser at noise level ``sigma`` (no images).

    ``call``: the pipeline arguments the moments are for (prompt, guidance_scale, height, width, …);
    the core's ``estimate_moments_from_model`` does the rest (its README section says what it costs).
    """
    model = PipelineDenoiser(pipe, **{k: v for k, v in call.items() if k != "num_images_per_prompt"})
    return estimate_moments_from_model(model, model.latent_shape(), sigma=sigma, rank=rank, iterations=iterations,
                                       parameterization=model.parameterization, batch_size=batch_size,
                                       generator=generator, progress=progress,
                                       latent_format=model.family.latent_format,
                                       device=getattr(pipe, "_execution_device", None), input_dtype=model.dtype)
