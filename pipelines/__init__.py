"""Teleport and the Gaussian solver for diffusers pipelines (SD 1.x/2.x, SDXL, SD3, Flux), imported as
``gaussian_teleport.diffusers``.

Needs diffusers (and transformers for the pipelines' text encoders); importing this package does not
import them, using it does.
"""

if "." not in __name__:  # found as a top-level module on a host's sys.path: not ours (see _isolation.py)
    import os as _os, runpy as _runpy
    _runpy.run_path(_os.path.join(_os.path.dirname(__file__), _os.pardir, "_isolation.py"))["defer"](globals())

from .families import FAMILIES, Family, latent_format, pipeline_family
from .schedulers import KINDS, SUPPORTED, ScheduleCut, SchedulerKind, scheduler_kind
from .teleport import teleport, teleport_plan
from .solver import gaussian_solver
from .vae import estimate_pipeline_moments, image_folder
from .denoiser import PipelineDenoiser, estimate_pipeline_moments_from_model

__all__ = [
    "FAMILIES", "Family", "latent_format", "pipeline_family",
    "KINDS", "SUPPORTED", "ScheduleCut", "SchedulerKind", "scheduler_kind",
    "teleport", "teleport_plan", "gaussian_solver",
    "estimate_pipeline_moments", "image_folder",
    "PipelineDenoiser", "estimate_pipeline_moments_from_model",
]
