"""AUTOMATIC1111 / Forge adapters: teleport samplers in the sampler list, their controls and infotext.

Importing this package needs no webui; the functions take the host modules they use as arguments.
"""

if "." not in __name__:  # found as a top-level module on a host's sys.path: not ours (see _isolation.py)
    import os as _os, runpy as _runpy
    _runpy.run_path(_os.path.join(_os.path.dirname(__file__), _os.pardir, "_isolation.py"))["defer"](globals())

from .moments_files import (CACHE, MomentsCache, latent_format_of, list_moments_files, model_space_moments,
                            moments_choices, moments_folder, parameterization_of, resolve_moments_file)
from .samplers import (BASE_SAMPLERS, advance_step_counter, host_handoff, make_host_sampler_function,
                       register_samplers, settings_for, teleport_name, teleport_sampler_data)
from .settings import (KEY_HANDOFF, KEY_HIRES_RESULT, KEY_MODE, KEY_MOMENTS, KEY_RESULT, NO_MOMENTS, OPTIONS,
                       TeleportSettings, parse_handoff, settings_from_infotext)
from .ui import (TITLE, XYZ_HANDOFF, XYZ_MOMENTS, add_settings, add_xyz_axes, attach, build_controls,
                 find_xyz_module, infotext_readers)


def host_settings_source(shared, models_path: str):
    """What the sampler constructors read at construction: the live options and the moments folder."""
    folder = moments_folder(models_path)
    return lambda: (shared.opts, folder)


__all__ = [
    "CACHE", "MomentsCache", "latent_format_of", "list_moments_files", "model_space_moments", "moments_choices",
    "moments_folder", "parameterization_of", "resolve_moments_file", "BASE_SAMPLERS", "advance_step_counter",
    "host_handoff", "make_host_sampler_function", "register_samplers", "settings_for", "teleport_name",
    "teleport_sampler_data", "KEY_HANDOFF", "KEY_HIRES_RESULT", "KEY_MODE", "KEY_MOMENTS", "KEY_RESULT",
    "NO_MOMENTS", "OPTIONS", "TeleportSettings", "parse_handoff", "settings_from_infotext", "TITLE",
    "XYZ_HANDOFF", "XYZ_MOMENTS", "add_settings", "add_xyz_axes", "attach", "build_controls", "find_xyz_module",
    "infotext_readers", "host_settings_source",
]
