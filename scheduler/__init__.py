"""The teleport sampler, the hand-off plan, inner samplers and schedules."""

if "." not in __name__:  # found as a top-level module on a host's sys.path: not ours (see _isolation.py)
    import os as _os, runpy as _runpy
    _runpy.run_path(_os.path.join(_os.path.dirname(__file__), _os.pardir, "_isolation.py"))["defer"](globals())

from .handoff import KINDS, MODES, Handoff, TeleportPlan, plan_teleport, respace, skipped_steps, teleport_sigmas
from .samplers import SAMPLERS, model_calls, sample_dpmpp_2m, sample_euler, sample_heun
from .schedules import get_sigmas_edm, get_sigmas_flow, get_sigmas_karras, get_sigmas_sd_karras, ve_to_flow_sigma
from .teleport import PARAMETERIZATIONS, make_teleport_sampler, path_alpha, sample_teleport, teleport_jump

__all__ = [
    "KINDS", "MODES", "Handoff", "TeleportPlan", "plan_teleport", "respace", "skipped_steps", "teleport_sigmas",
    "SAMPLERS", "model_calls", "sample_dpmpp_2m", "sample_euler", "sample_heun",
    "get_sigmas_edm", "get_sigmas_flow", "get_sigmas_karras", "get_sigmas_sd_karras",
    "ve_to_flow_sigma", "PARAMETERIZATIONS", "make_teleport_sampler", "path_alpha", "sample_teleport",
    "teleport_jump",
]
