"""Teleport variants of the host's own k-diffusion samplers, in the webui's "Sampling method" list.

A1111 and Forge call a sampler function as
``fn(model_wrap_cfg, x, extra_args=..., disable=..., callback=..., sigmas=..., **options)``: x already
scaled to sigmas[0], a CFG-wrapped denoiser over VE sigmas (or over t for Forge's flow models), and
options chosen by inspecting fn's signature. The wrapper keeps the host function's signature, so the
host passes the same options (s_churn, …) it would pass to the plain sampler. Everything a run does is
the core's ``sample_teleport``; this module adapts the host's counters, progress bar and files to it.

Three more entries come from the core rather than the host: "Gaussian Solver" (``sample_gaussian`` with
the accordion's moments; no hand-off), "iPNDM Teleport" (teleport, then the host's iPNDM where it has one,
as Forge's "IPNDM", else the core's ``sample_ipndm``) and plain "iPNDM" (the core's, only where the host has no
sampler of that name).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading

import torch

from ..moments.base import MomentsError
from ..moments.files import (EXTENSION, MOMENTS_FOLDER, MomentsFiles, contained_path, load_moments, path_inside,
                             save_moments)
from ..moments.from_model import DEFAULT_SIGMA, cost_in_calls, estimate_moments_from_model
from ..scheduler.calibrate import calibrate_handoff
from ..scheduler.handoff import TeleportPlan
from ..scheduler.multistep import sample_ipndm
from ..scheduler.solver import make_gaussian_sampler
from ..scheduler.teleport import sample_teleport
from .console import estimate_job
from .model_facts import checkpoint_key, latent_format_of, parameterization_of
from .request import (ATTRIBUTE, FROM_MODEL, KEY_CALIBRATION, KEY_HIRES_RESULT, KEY_RESULT, NO_MOMENTS,
                      RequestRefused, TeleportRequest)

SOLVER_LABEL = "Gaussian Solver"
IPNDM_LABEL = "iPNDM"
# (label, core function, aliases, options) of the entries the core provides; options as DPM++ 2M's (multistep)
CORE_SAMPLERS = {IPNDM_LABEL: (sample_ipndm, ["k_ipndm"], {"scheduler": "karras"})}
SOLVER_OPTIONS = {"scheduler": "karras", "gaussian_solver": True}
OURS = ("teleport", "gaussian_solver", "gaussian_teleport")    # option keys that mark this extension's entries

log = logging.getLogger("gaussian_teleport")

SUFFIX = " Teleport"
BASE_SAMPLERS = ("Euler", "Heun", "DPM++ 2M")    # host labels of the samplers that get a teleport variant
FROM_MODEL_FOLDER = "from_model"                  # cached model-derived moments, inside models/moments
FILES = MomentsFiles()
LAST_CALIBRATION: dict = {}                       # the last calibration's recommendation, for the accordion
_LOCK = threading.Lock()


def teleport_name(base: str) -> str:
    return base + SUFFIX


def moments_folder(models_path: str) -> str:
    return os.path.join(models_path, MOMENTS_FOLDER)


# ----------------------------------------------------------------------------
# What a run asked for, and what it did (written to the processing object's infotext).


def request_for(p, opts=None) -> TeleportRequest:
    """The request the script attached to ``p``; the Settings defaults when it attached none.

    A refusal the script recorded (values it could not use) is raised here, in the sampler call the host
    does not swallow, so the generation fails with that reason instead of running with the Settings values.
    """
    request = getattr(p, ATTRIBUTE, None)
    if isinstance(request, TeleportRequest):
        return request
    if isinstance(request, RequestRefused):
        raise RequestRefused(str(request))
    return TeleportRequest.from_options(opts) if opts is not None else TeleportRequest()


def record(p, request: TeleportRequest, result: str | None, key: str | None = None):
    """Write the run's parameters and (when it ran) its result; the hires pass gets its own result key."""
    params = getattr(p, "extra_generation_params", None)
    if params is None:
        return
    params.update(request.infotext())
    if result is not None:
        params[key or (KEY_HIRES_RESULT if getattr(p, "is_hr_pass", False) else KEY_RESULT)] = result


def resolve_moments_file(folder: str, name: str, selected: str = "a teleport sampler",
                         other: str = "a sampler without 'Teleport'") -> str:
    """The path of a file listed in the moments dropdown; errors name the folder and the fix."""
    if not name or name == NO_MOMENTS:
        raise MomentsError(f"{selected} is selected but no moments file is chosen: pick one in the Gaussian "
                           f"Teleport accordion (files go in {folder}), choose '{FROM_MODEL}', or choose {other}")
    try:
        path = contained_path(folder, name)
    except ValueError:
        raise MomentsError(f"moments file {name!r} is outside {folder}; only files in that folder are loaded") from None
    if not os.path.isfile(path):
        raise MomentsError(f"moments file {name!r} was not found in {folder}; press the refresh button next to the "
                           "moments dropdown and choose a file that exists")
    return path


class FixedBatch:
    """The CFG denoiser takes exactly the generation's batch: split larger batches, pad the last one."""

    def __init__(self, model, batch: int):
        self.model, self.batch = model, batch

    def __call__(self, x, sigma, **extra_args):
        outs = []
        for chunk, sig in zip(x.split(self.batch), sigma.split(self.batch)):
            n = chunk.shape[0]
            if n < self.batch:
                chunk = torch.cat([chunk, chunk[-1:].expand(self.batch - n, *chunk.shape[1:])])
                sig = torch.cat([sig, sig[-1:].expand(self.batch - n)])
            outs.append(self.model(chunk, sig, **extra_args)[:n])
        return torch.cat(outs)


# The core's advice names a control this host does not have (the sigma the moments are read at).
CAPPED_ADVICE = (f"'{FROM_MODEL}' reads them at σ {DEFAULT_SIGMA:g}, which this extension does not let you change: "
                 "if teleported images look wrong, choose a moments file made from this model's latents "
                 "(python -m gaussian_teleport.moments estimate) or a higher hand-off (a shorter jump)")


def model_moments(model, x, extra_args, sd_model, param, fmt, folder):
    """Moments read off the loaded checkpoint, computed once per checkpoint and latent size and kept as a file.

    The model is called unconditionally (its CFG denoiser at guidance scale 0), in batches of the
    generation's batch size; the step counter it advances is put back.
    """
    shape = tuple(int(s) for s in x.shape[1:])
    name = f"{FROM_MODEL_FOLDER}/{checkpoint_key(sd_model)}-{'x'.join(map(str, shape))}{EXTENSION}"
    path = path_inside(folder, name)
    with _LOCK:
        if os.path.isfile(path):
            try:
                return FILES.load(path), name
            except MomentsError as exc:   # the extension's own cache: make it again rather than ask for a copy
                log.warning("Gaussian Teleport: the cached moments %s are damaged (%s); reading them from the "
                            "model again and replacing the file", name, str(exc).split("; ")[0])
        step = getattr(model, "step", None)
        unconditional = {**(extra_args or {}), "cond_scale": 0.0}
        log.info("Gaussian Teleport: reading moments for %s off the model (once; cached as %s)", shape, name)
        with estimate_job(cost_in_calls("lowrank", latent_shape=shape)["calls"]) as progress:
            moments = estimate_moments_from_model(FixedBatch(model, int(x.shape[0])), shape, structure="lowrank",
                                                  parameterization=param, extra_args=unconditional, device=x.device,
                                                  input_dtype=x.dtype, latent_format=fmt, progress=progress,
                                                  metadata={"model": checkpoint_key(sd_model)},
                                                  capped_advice=CAPPED_ADVICE)
        if step is not None:
            model.step = step
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_moments(moments, path, overwrite=True)
        return FILES.load(path), name


# ----------------------------------------------------------------------------
# The wrapper around one host sampler function.


def make_host_sampler_function(base_fn, sd_model, *, calls_per_step: int = 1, opts=None, models_folder=None,
                               sampler_label: str = ""):
    """``base_fn`` with a teleport in front, same signature; the request comes from ``model.p`` at call time."""

    @functools.wraps(base_fn)
    def teleport_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        p = getattr(model, "p", None)
        request = request_for(p, opts)
        if not request.enabled:
            record(p, request, None)
            return base_fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)
        param, fmt = parameterization_of(model, sd_model), latent_format_of(sd_model)
        used = {}

        def moments():
            return request_moments(request, model, x, extra_args, sd_model, param, fmt, opts, models_folder, used)

        if request.calibrate:
            return calibrate(model, x, sigmas, extra_args, base_fn, moments(), request, p, param, fmt, sampler_label,
                             options)
        start = getattr(model, "step", None)
        plans: list[TeleportPlan] = []

        def inner(m, xk, sk, **kw):
            plan = plans[-1]
            if plan.jumped and start is not None:
                # Prompt editing ([a:b:N]) and the refiner switch index the CFG denoiser's call counter: put it
                # where the plain sampler would have it after the replaced steps (the probe call included).
                m.step = start + plan.step_offset * calls_per_step
            return base_fn(m, xk, sk, **kw)

        def on_plan(plan):
            plans.append(plan)
            result = plan.short() + (f", moments {used['file']}" if used.get("file") else "")
            record(p, request, result)

        return sample_teleport(model, x, sigmas, extra_args, progress_callback(callback, plans), disable,
                               moments=moments, sampler=inner, handoff=request.settings.handoff,
                               mode=request.settings.mode, mean=request.settings.mean, parameterization=param,
                               latent_format=fmt, no_jump=None if getattr(model, "mask", None) is None else
                               "inpainting mask: the webui blends the original back in at every call",
                               img2img=starts_from_an_image(p),
                               on_plan=on_plan, on_mismatch="pass" if getattr(p, "is_hr_pass", False) else "raise",
                               **options)

    teleport_sampler.__signature__ = inspect.signature(base_fn)
    return teleport_sampler


def starts_from_an_image(p) -> bool:
    """img2img (its processing object carries init images) or a hires pass: the schedule starts part-way down."""
    return bool(getattr(p, "is_hr_pass", False) or getattr(p, "init_images", None))


def request_moments(request, model, x, extra_args, sd_model, param, fmt, opts, folder, used, **who):
    """The moments the accordion chose: read off the model (cached file; its name goes in ``used``) or a file."""
    if request.moments == FROM_MODEL:
        found, used["file"] = model_moments(model, x, extra_args, sd_model, param, fmt, folder)
        return found
    keep = bool(getattr(opts, "gaussian_teleport_keep_loaded", True))
    path = resolve_moments_file(folder, request.moments, **who)
    return FILES.load(path) if keep else load_moments(path)


def make_solver_function(sd_model, *, opts=None, models_folder=None):
    """The Gaussian Solver entry's function: the core's solver with the accordion's moments and order.

    It has no plain form and no hand-off, so the accordion's switch, hand-off, schedule and mean do not
    apply; it calls the model once per step, so the host's counters and progress bar run as usual.
    """

    def gaussian_solver(model, x, sigmas, extra_args=None, callback=None, disable=None):
        p = getattr(model, "p", None)
        request = request_for(p, opts)
        if request.calibrate:
            raise ValueError("calibration measures a teleport hand-off, and the Gaussian Solver has none: untick "
                             "'Calibrate on the next generation', or pick a Teleport sampler to calibrate")
        param, fmt = parameterization_of(model, sd_model), latent_format_of(sd_model)
        moments = request_moments(request, model, x, extra_args, sd_model, param, fmt, opts, models_folder, {},
                                  selected=f"the {SOLVER_LABEL} sampler", other="another sampler")
        params = getattr(p, "extra_generation_params", None)
        if params is not None:
            params.update(request.solver_infotext())
        fn = make_gaussian_sampler(moments, request.order, latent_format=fmt, parameterization=param)
        try:
            return fn(model, x, sigmas, extra_args, callback, disable)
        except MomentsError as exc:
            if not getattr(p, "is_hr_pass", False):
                raise
            raise MomentsError(f"{exc} (in the hires pass, at the upscaled size: choose '{FROM_MODEL}' or moments that "
                               f"fit it, or another hires sampler)") from exc

    return gaussian_solver


def progress_callback(callback, plans):
    """The host's progress bar ticks once per callback and counts steps: in same_budget mode the model-mean
    probe is an extra call, not a step, so its callback (a preview of its x0) does not tick the bar."""
    if callback is None:
        return None
    seen = {"first": True}

    def forward(info):
        first, seen["first"] = seen["first"], False
        plan = plans[-1] if plans else None
        if first and plan is not None and plan.mode == "same_budget" and plan.probe_calls:
            return None
        return callback(info)

    return forward


def calibrate(model, x, sigmas, extra_args, base_fn, moments, request, p, param, fmt, label, options):
    """A calibration run on this generation's batch: the images it returns are the plain sampler's."""
    if x.shape[0] < 2:
        raise ValueError("calibration needs a batch of 2 or more images (set Batch size to 4), so it can compare "
                         "the change with the spread between samples")
    start = getattr(model, "step", None)

    def reset():
        if start is not None:
            model.step = start

    cal = calibrate_handoff(model, x, sigmas, base_fn, moments=moments, mean=request.settings.mean,
                            parameterization=param, latent_format=fmt, extra_args=extra_args, on_run_start=reset,
                            **options)
    log.info("Gaussian Teleport calibration (%s)\n%s", label, cal.report())
    with _LOCK:
        LAST_CALIBRATION.clear()
        LAST_CALIBRATION.update(handoff=cal.handoff, summary=cal.summary())
    record(p, request, cal.summary(), key=KEY_CALIBRATION)
    return cal.plain


# ----------------------------------------------------------------------------
# Registration in the host's sampler list.


def base_sampler_entries(kdiffusion) -> dict:
    """label -> (funcname, aliases, options) from the host's ``samplers_k_diffusion`` table."""
    entries = {}
    for label, funcname, aliases, options in kdiffusion.samplers_k_diffusion:
        if label in BASE_SAMPLERS and isinstance(funcname, str):
            entries[label] = (funcname, aliases, options)
    return entries


def make_constructor(kdiffusion, label: str, funcname, options: dict, settings_source):
    """The SamplerData constructor: the host's KDiffusionSampler around the wrapped function.

    ``funcname``: the host's k-diffusion function name, or a core function. ``settings_source`` is a
    callable returning (opts, models_folder) at construction time.
    """
    calls_per_step = 2 if options.get("second_order", False) else 1

    def constructor(sd_model):
        base_fn = funcname if callable(funcname) else getattr(kdiffusion.k_diffusion.sampling, funcname)
        opts, folder = settings_source()
        fn = make_host_sampler_function(base_fn, sd_model, calls_per_step=calls_per_step, opts=opts,
                                        models_folder=folder, sampler_label=label)
        sampler = kdiffusion.KDiffusionSampler(fn, sd_model)
        # The host looks its extra options up by function name; use the plain sampler's list.
        sampler.extra_params = kdiffusion.sampler_extra_params.get(funcname, []) if isinstance(funcname, str) else []
        return sampler

    return constructor


def make_core_constructor(kdiffusion, function):
    """The SamplerData constructor of a plain core sampler: the host's KDiffusionSampler around it."""

    def constructor(sd_model):
        sampler = kdiffusion.KDiffusionSampler(function, sd_model)
        sampler.extra_params = []
        return sampler

    return constructor


def make_solver_constructor(kdiffusion, settings_source):
    """The Gaussian Solver's SamplerData constructor."""

    def constructor(sd_model):
        opts, folder = settings_source()
        sampler = kdiffusion.KDiffusionSampler(make_solver_function(sd_model, opts=opts, models_folder=folder),
                                               sd_model)
        sampler.extra_params = []
        return sampler

    return constructor


def teleport_sampler_data(sd_samplers_common, kdiffusion, settings_source) -> list:
    """SamplerData entries for the teleport variants of the host's samplers that exist there."""
    data = []
    for label, (funcname, aliases, options) in base_sampler_entries(kdiffusion).items():
        if not hasattr(kdiffusion.k_diffusion.sampling, funcname):
            continue
        alias = [a + "_teleport" for a in aliases[:1]]
        data.append(sd_samplers_common.SamplerData(teleport_name(label),
                                                   make_constructor(kdiffusion, label, funcname, options,
                                                                    settings_source),
                                                   alias, {**options, "teleport": True}))
    own = {row[0].lower(): row for row in kdiffusion.samplers_k_diffusion if isinstance(row[0], str)}
    for label, (function, aliases, options) in CORE_SAMPLERS.items():
        alias = [a + "_teleport" for a in aliases[:1]]
        row = own.get(label.lower())
        if row is not None and isinstance(row[1], str) and hasattr(kdiffusion.k_diffusion.sampling, row[1]):
            # The host has its own (Forge's "IPNDM"): wrap that, so that switched off the entry is the host's
            # plain sampler bit for bit, as the other teleport entries are.
            function, options = row[1], row[3]
        data.append(sd_samplers_common.SamplerData(teleport_name(label),
                                                   make_constructor(kdiffusion, label, function, options,
                                                                    settings_source),
                                                   alias, {**options, "teleport": True}))
    return data


def core_sampler_data(sd_samplers_common, kdiffusion, settings_source) -> list:
    """SamplerData entries of the core's own samplers: the Gaussian Solver and the plain ones (iPNDM)."""
    data = [sd_samplers_common.SamplerData(SOLVER_LABEL, make_solver_constructor(kdiffusion, settings_source),
                                           ["gaussian_solver"], dict(SOLVER_OPTIONS))]
    for label, (function, aliases, options) in CORE_SAMPLERS.items():
        data.append(sd_samplers_common.SamplerData(label, make_core_constructor(kdiffusion, function), list(aliases),
                                                   {**options, "gaussian_teleport": True}))
    return data


def listed(sd_samplers, name: str):
    """None if no sampler of this name (or of a name or alias differing in case only) is listed, else whether the
    listed one is this extension's (registered by an earlier load: Reload UI)."""
    data = sd_samplers.all_samplers_map.get(name)
    if data is not None:
        return any(getattr(data, "options", {}).get(key) for key in OURS)
    return None if getattr(sd_samplers, "samplers_map", {}).get(name.lower()) is None else False


def register_samplers(sd_samplers, sd_samplers_common, kdiffusion, settings_source) -> list[str]:
    """Add the teleport samplers and the core's (Gaussian Solver; iPNDM where the host has none) once; calling
    again (Reload UI) changes nothing. Returns the names of this extension's entries in the list.

    Forge has ``add_sampler`` (it rebuilds its name map and lists); A1111 is extended through its
    ``all_samplers`` list and ``all_samplers_map`` in place, then ``set_samplers()``.
    """
    names = []
    for data in [*teleport_sampler_data(sd_samplers_common, kdiffusion, settings_source),
                 *core_sampler_data(sd_samplers_common, kdiffusion, settings_source)]:
        ours = listed(sd_samplers, data.name)
        if ours is not None:
            if ours:
                names.append(data.name)
            continue
        names.append(data.name)
        if hasattr(sd_samplers, "add_sampler"):
            sd_samplers.add_sampler(data)
        else:
            sd_samplers.all_samplers.append(data)
            sd_samplers.all_samplers_map[data.name] = data
            sd_samplers.set_samplers()
    cached = getattr(sd_samplers, "get_sampler_and_scheduler", None)
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()   # it may have memoised a fallback for one of the new names
    return names
