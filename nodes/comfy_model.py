"""What a ComfyUI model tells teleport, and the sampler function the SAMPLER node and the KSampler entries run.

Glue only: the latent format is read off the model's own ``process_in`` map, the parameterization off
its ``model_sampling`` class; everything else is the core's ``sample_teleport`` / ``sample_gaussian``.
"""

from __future__ import annotations

import logging

import torch

from ..moments.base import GaussianMoments, MomentsError
from ..moments.latent_formats import LatentFormat
from ..scheduler.parameterization import FLOW, VE, Parameterization
from ..scheduler.settings import TeleportSettings
from ..scheduler.solver import make_gaussian_sampler
from ..scheduler.teleport import sample_teleport

log = logging.getLogger("gaussian_teleport")
TELEPORT_FUNCTION = "sample_gaussian_teleport"   # the name a teleport SAMPLER's function carries
SOLVER_NAME = "gaussian_solver"                  # the Gaussian solver's KSampler-dropdown entry
SOLVER_FUNCTION = "sample_" + SOLVER_NAME        # the name a Gaussian-solver SAMPLER's function carries

# ComfyUI's model_sampling mix-ins, by class name (combined into one class per model).
VE_KINDS = ("EDM", "V_PREDICTION", "EPS")            # x = x0 + σ·ε as the samplers see it
FLOW_KINDS = ("CONST",)                              # x = (1 − t)·x0 + t·ε
REFUSED_KINDS = ("IMG_TO_IMG", "X0", "COSMOS_RFLOW")  # checked first: X0 derives from EPS


def parameterization_of(model_sampling) -> Parameterization:
    """VE or FLOW for a ComfyUI model_sampling object; MomentsError naming anything else."""
    names = [c.__name__ for c in type(model_sampling).__mro__]
    for name in REFUSED_KINDS:
        if name in names:
            raise MomentsError(f"Gaussian teleport does not support {name} models ({type(model_sampling).__name__}); "
                               "it works with EPS, v-prediction, EDM and flow (CONST: SD3, Flux) models")
    if any(n in names for n in FLOW_KINDS):
        return FLOW
    if any(n in names for n in VE_KINDS):
        return VE
    raise MomentsError(f"unknown model sampling type {type(model_sampling).__name__} (bases {names[1:4]}); "
                       "Gaussian teleport supports EPS, v-prediction, EDM and flow (CONST) models")


def latent_format_of(comfy_format, channels: int) -> LatentFormat:
    """The model's raw → model-space map, read off its own process_in (so any family works)."""
    return LatentFormat.from_map(type(comfy_format).__name__, comfy_format.process_in, channels)


def find_on_chain(model, attr: str, depth: int = 6):
    """The first object on the ``.inner_model`` chain that has ``attr`` (sampler → guider → model)."""
    obj = model
    for _ in range(depth):
        if obj is None:
            break
        if hasattr(obj, attr):
            return obj
        obj = getattr(obj, "inner_model", None)
    return None


def model_facts(model, channels: int) -> tuple[LatentFormat, Parameterization]:
    """(latent format, parameterization) of the diffusion model behind a sampler call."""
    base = find_on_chain(model, "latent_format")
    if base is None or not hasattr(base, "model_sampling"):
        raise MomentsError("teleport could not find the diffusion model behind this sampler call "
                           "(no latent_format/model_sampling on the model chain)")
    return latent_format_of(base.latent_format, channels), parameterization_of(base.model_sampling)


def patcher_facts(patcher, channels: int) -> tuple[LatentFormat, Parameterization]:
    """(latent format, parameterization) of a ModelPatcher (a MODEL socket)."""
    return (latent_format_of(patcher.get_model_object("latent_format"), channels),
            parameterization_of(patcher.get_model_object("model_sampling")))


def teleport_function(moments: GaussianMoments, settings: TeleportSettings, inner):
    """A k-diffusion sampler function: teleport with ``settings``, then the inner ComfyUI sampler ``inner``."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        fmt, param = model_facts(model, int(x.shape[1]))
        mask = (extra_args or {}).get("denoise_mask") is not None
        latent = getattr(model, "latent_image", None)
        img2img = latent is not None and bool(torch.count_nonzero(latent))
        return sample_teleport(model, x, sigmas, extra_args, callback, disable, moments=moments, sampler=inner,
                               handoff=settings.handoff, mode=settings.mode, mean=settings.mean,
                               parameterization=param, latent_format=fmt, img2img=img2img,
                               no_jump="inpainting (a noise mask is set): the masked region is re-imposed every "
                                       "step, which the closed-form jump does not model" if mask else None,
                               **options)

    sample.__name__ = TELEPORT_FUNCTION
    return sample


def solver_function(moments: GaussianMoments, order: int):
    """A k-diffusion sampler function: the Gaussian solver of ``order`` with ``moments`` (the core's
    ``sample_gaussian``), in the latent format and parameterization of the model it is called with."""
    make_gaussian_sampler(moments, order)          # bad options stop here, before any model call

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        if not isinstance(moments, GaussianMoments):
            raise MomentsError(f"the Gaussian solver needs Gaussian moments, got {type(moments).__name__}")
        fmt, param = model_facts(model, int(x.shape[1]))
        fn = make_gaussian_sampler(moments, order, latent_format=fmt, parameterization=param)
        return fn(model, x, sigmas, extra_args, callback, disable, **options)

    sample.__name__ = SOLVER_FUNCTION
    return sample


def run_in_guider(guider, noise: torch.Tensor, latent: torch.Tensor, sigmas: torch.Tensor, seed: int, fn):
    """Run ``fn(model, x, sigmas, extra_args)`` inside ``guider.sample`` (the guided model with its conds, as a
    sampler sees it) and return what ``fn`` returned."""
    import comfy.samplers

    found = {}

    def sampler(model, x, schedule, extra_args=None, callback=None, disable=None):
        found["result"] = fn(model, x, schedule, extra_args)
        return x

    guider.sample(noise, latent, comfy.samplers.KSAMPLER(sampler), sigmas, denoise_mask=None, callback=None,
                  disable_pbar=True, seed=seed)
    return found["result"]
