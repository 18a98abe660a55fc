"""The teleport sampler, the hand-off plan and its calibration, the moments-to-model seam, inner samplers
and schedules."""

if "." not in __name__:  # found as a top-level module on a host's sys.path: not ours (see _isolation.py)
    import os as _os, runpy as _runpy
    _runpy.run_path(_os.path.join(_os.path.dirname(__file__), _os.pardir, "_isolation.py"))["defer"](globals())

from .binding import ModelGaussian, bind_moments, clear_binding_cache, compute_dtype
from .calibrate import DEFAULT_TOLERANCE, Candidate, HandoffCalibration, calibrate_handoff
from .explained import ExplainedVariance, denoiser_explained_variance, score_explained_variance
from .handoff import (KINDS, MODES, Handoff, TeleportPlan, check_schedule, format_sigma, plan_teleport, respace,
                      skipped_steps, teleport_sigmas)
from .parameterization import FLOW, PARAMETERIZATIONS, VE, Parameterization, parameterization, path_alpha
from .samplers import SAMPLERS, euler_step, model_calls, sample_dpmpp_2m, sample_euler, sample_heun
from .schedules import get_sigmas_edm, get_sigmas_flow, get_sigmas_karras, get_sigmas_sd_karras
from .settings import DEFAULT_HANDOFF, DEFAULT_MEAN, DEFAULT_MODE, MEANS, TeleportSettings
from .teleport import check_latent, make_teleport_sampler, sample_teleport, teleport_jump

__all__ = [
    "ModelGaussian", "bind_moments", "clear_binding_cache", "compute_dtype",
    "DEFAULT_TOLERANCE", "Candidate", "HandoffCalibration", "calibrate_handoff",
    "ExplainedVariance", "denoiser_explained_variance", "score_explained_variance",
    "KINDS", "MODES", "Handoff", "TeleportPlan", "check_schedule", "format_sigma", "plan_teleport", "respace",
    "skipped_steps", "teleport_sigmas",
    "FLOW", "PARAMETERIZATIONS", "VE", "Parameterization", "parameterization", "path_alpha",
    "SAMPLERS", "euler_step", "model_calls", "sample_dpmpp_2m", "sample_euler", "sample_heun",
    "get_sigmas_edm", "get_sigmas_flow", "get_sigmas_karras", "get_sigmas_sd_karras",
    "DEFAULT_HANDOFF", "DEFAULT_MEAN", "DEFAULT_MODE", "MEANS", "TeleportSettings",
    "check_latent", "make_teleport_sampler", "sample_teleport", "teleport_jump",
]
