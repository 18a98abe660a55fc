"""AUTOMATIC1111 / Forge adapters: teleport samplers and the Gaussian Solver in the sampler list, their controls
and infotext.

Importing this package needs no webui; the functions take the host modules they use as arguments.
"""

if "." not in __name__:  # found as a top-level module on a host's sys.path: not ours (see _isolation.py)
    import os as _os, runpy as _runpy
    _runpy.run_path(_os.path.join(_os.path.dirname(__file__), _os.pardir, "_isolation.py"))["defer"](globals())

from .console import ESTIMATE_TEXT, estimate_job, show_log_lines, use_host
from .model_facts import checkpoint_key, latent_format_of, parameterization_of
from .request import (DEFAULT_ORDER, FROM_MODEL, KEY_CALIBRATION, KEY_HANDOFF, KEY_HIRES_RESULT, KEY_MEAN, KEY_MODE,
                      KEY_MOMENTS, KEY_ORDER, KEY_RESULT, NO_MOMENTS, OPTIONS, RequestRefused, TeleportRequest,
                      check_order, check_switch, parse_handoff, request_from_args, request_from_infotext)
from .samplers import (BASE_SAMPLERS, CORE_SAMPLERS, FILES, FROM_MODEL_FOLDER, IPNDM_LABEL, LAST_CALIBRATION,
                       SOLVER_LABEL, core_sampler_data, make_host_sampler_function, make_solver_function,
                       moments_folder, register_samplers, request_for, resolve_moments_file, teleport_name,
                       teleport_sampler_data)
from .ui import (TITLE, XYZ_HANDOFF, XYZ_MEAN, XYZ_MOMENTS, XYZ_ORDER, add_settings, add_xyz_axes, attach,
                 build_controls, find_xyz_module, infotext_readers, last_calibration, moments_choices)


def host_settings_source(shared, models_path: str):
    """What the sampler constructors read at construction: the live options and the moments folder."""
    folder = moments_folder(models_path)
    return lambda: (shared.opts, folder)


__all__ = [
    "ESTIMATE_TEXT", "estimate_job", "show_log_lines", "use_host", "RequestRefused", "check_switch",
    "request_from_args",
    "checkpoint_key", "latent_format_of", "parameterization_of",
    "DEFAULT_ORDER", "FROM_MODEL", "KEY_CALIBRATION", "KEY_HANDOFF", "KEY_HIRES_RESULT", "KEY_MEAN", "KEY_MODE",
    "KEY_MOMENTS", "KEY_ORDER", "KEY_RESULT", "NO_MOMENTS", "OPTIONS", "TeleportRequest", "check_order",
    "parse_handoff", "request_from_infotext",
    "BASE_SAMPLERS", "CORE_SAMPLERS", "FILES", "FROM_MODEL_FOLDER", "IPNDM_LABEL", "LAST_CALIBRATION", "SOLVER_LABEL",
    "core_sampler_data", "make_host_sampler_function", "make_solver_function", "moments_folder",
    "register_samplers", "request_for", "resolve_moments_file", "teleport_name", "teleport_sampler_data",
    "TITLE", "XYZ_HANDOFF", "XYZ_MEAN", "XYZ_MOMENTS", "XYZ_ORDER", "add_settings", "add_xyz_axes", "attach",
    "build_controls",
    "find_xyz_module", "infotext_readers", "last_calibration", "moments_choices", "host_settings_source",
]
