"""The Gaussian solver for diffusers pipelines: the core's ``sample_gaussian`` through the pipeline's denoiser.

``gaussian_solver(pipe, moments, **call)`` samples what ``pipe(**call)`` samples, on the pipeline's own
schedule (its steps, Karras sigmas, SD3's shift, Flux's ``mu``, custom ``sigmas=``), with the
Gaussian solver's steps instead of the scheduler's:

1. record: the pipeline draws its start noise and sets its schedule, with no model call (as teleport);
2. solve: ``sample_gaussian`` runs every step, each model call one pipeline call through
   ``PipelineDenoiser`` (the pipeline's guidance, conditioning and prediction type included);
3. finish: one more pipeline call with no step turns the final latents into the output the call asks for
   (decoded by the VAE unless ``output_type="latent"``).

Glue only: the solver is scheduler/solver.py's. The scheduler's arithmetic is not used, only its sigmas.
The text encoders run on every call (see denoiser.py), a small share of a step for SD/SDXL.
"""

from __future__ import annotations

import torch

from ..scheduler.binding import bind_moments
from ..scheduler.solver import make_gaussian_sampler
from .denoiser import PipelineDenoiser
from .families import image_latents, latent_format, pipeline_family, pipeline_latents
from .schedulers import ScheduleCut, running, scheduler_kind
from .teleport import CALLBACKS, as_moments, record_start


def gaussian_solver(pipe, moments, *, order: int = 3, mean: str = "data", **call):
    """``pipe(**call)`` sampled by the Gaussian solver on the pipeline's own schedule; returns the pipeline's output.

    ``moments``: raw VAE-space moments of this model family (converted with the pipeline's VAE scale and
    shift), model-space moments, or a moments file path. ``order`` (1–4), ``mean`` ("data", or "model": each
    sample's mean from the first call, no extra call) and ``residual=``/``variable=``/``corrector=`` are
    ``sample_gaussian``'s options. Give ``generator=`` for reproducible results: the same generator gives the
    plain call's start noise. Each step is one model call (``num_inference_steps`` calls in all). The
    pipeline's step callbacks are not run (the solver's steps are not the scheduler's): leave them out.
    """
    given = [k for k in CALLBACKS if call.get(k) is not None]
    if given:
        raise ValueError(f"the Gaussian solver runs its own steps, so the pipeline's step callbacks ({', '.join(given)}) "
                         "would never be called: leave them out")
    options = {k: call.pop(k) for k in ("residual", "variable", "corrector") if k in call}
    family = pipeline_family(pipe)
    kind = scheduler_kind(pipe.scheduler, family)
    fmt = latent_format(pipe, family)
    moments = as_moments(moments)
    solver = make_gaussian_sampler(moments, order=order, latent_format=fmt, parameterization=kind.parameterization,
                                   mean=mean, **options)
    with torch.no_grad():
        noise, record = record_start(pipe, kind, call)
        sigmas = record.sigmas
        image = image_latents(pipe, family, noise * record.start_scale, call)
        gauss = bind_moments(moments, image.shape[1:], latent_format=fmt,
                             parameterization=kind.parameterization, device=image.device)  # refused before any call
        x = kind.to_core(image.to(gauss.dtype), float(sigmas[0]))
        model = PipelineDenoiser(pipe, **call)
        bar = getattr(pipe, "_progress_bar_config", None) or {}
        out = solver(model, x, sigmas.to(x.device), disable=bar.get("disable", False))
        final = pipeline_latents(pipe, family, kind.from_core(out, float(sigmas[-1])).to(noise.dtype))
    with running(pipe, ScheduleCut(pipe.scheduler, kind, "record")):
        return pipe(**{**call, "latents": final})
