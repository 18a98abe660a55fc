"""Teleport variants of the host's own k-diffusion samplers, in the webui's "Sampling method" list.

A1111 and Forge call a sampler function as
``fn(model_wrap_cfg, x, extra_args=..., disable=..., callback=..., sigmas=..., **options)``: x already
scaled to sigmas[0], a CFG-wrapped denoiser over VE sigmas (or over t for Forge's flow models), and
options chosen by inspecting fn's signature. The wrapper keeps the host function's signature, so the
host passes the same options (s_churn, …) it would pass to the plain sampler.
"""

from __future__ import annotations

import functools
import inspect
import logging

from ..scheduler.handoff import Handoff, TeleportPlan, plan_teleport
from ..scheduler.schedules import ve_to_flow_sigma
from ..scheduler.teleport import sample_teleport
from .moments_files import CACHE, latent_format_of, parameterization_of, resolve_moments_file
from .settings import ATTRIBUTE, KEY_HIRES_RESULT, KEY_RESULT, TeleportSettings

log = logging.getLogger("gaussian_teleport")

SUFFIX = " Teleport"
BASE_SAMPLERS = ("Euler", "Heun", "DPM++ 2M")    # host labels of the samplers that get a teleport variant


def teleport_name(base: str) -> str:
    return base + SUFFIX


# ----------------------------------------------------------------------------
# What a run asked for, and what it did (written to the processing object's infotext).


def settings_for(p, opts=None) -> TeleportSettings:
    """The settings the script attached to ``p``; the Settings defaults when it attached none."""
    settings = getattr(p, ATTRIBUTE, None)
    if isinstance(settings, TeleportSettings):
        return settings
    return TeleportSettings.from_options(opts) if opts is not None else TeleportSettings()


def record(p, settings: TeleportSettings, result: str):
    """Write the run's parameters and result; the hires pass gets its own result key."""
    params = getattr(p, "extra_generation_params", None)
    if params is None:
        return
    params.update(settings.infotext())
    key = KEY_HIRES_RESULT if getattr(p, "is_hr_pass", False) else KEY_RESULT
    params[key] = result


def describe(plan: TeleportPlan) -> str:
    """A short infotext value: what the jump replaced, or why there was none."""
    if not plan.jumped:
        return f"no jump ({plan.reason.split(':')[0]})"
    return f"σ {plan.sigma_from:.4g}→{plan.sigma_to:.4g}, {plan.skipped} step(s) replaced, {plan.mode}"


def host_handoff(handoff: Handoff, parameterization: str) -> Handoff:
    """The hand-off in the sampler's sigma units: sigma values are VE, flow models run on t = σ/(1+σ)."""
    if handoff.kind == "sigma" and parameterization == "flow":
        return Handoff("sigma", ve_to_flow_sigma(handoff.value))
    return handoff


def advance_step_counter(model, plan: TeleportPlan, calls_per_step: int):
    """Keep the CFG denoiser's call counter where the plain sampler would have it after the skipped steps.

    A1111 and Forge index prompt editing ([a:b:N]) and the refiner switch by that counter
    (``model_wrap_cfg.step``). In "save" mode the skipped steps would have made ``calls_per_step``
    calls each; in "same_budget" mode the sampler makes all its calls itself.
    """
    if plan.jumped and plan.step_offset and hasattr(model, "step"):
        model.step += plan.step_offset * calls_per_step


# ----------------------------------------------------------------------------
# The wrapper around one host sampler function.


def make_host_sampler_function(base_fn, sd_model, *, calls_per_step: int = 1, opts=None, models_folder=None,
                               cache=CACHE):
    """``base_fn`` with a teleport in front, same signature; settings come from ``model.p`` at call time."""

    @functools.wraps(base_fn)
    def teleport_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        p = getattr(model, "p", None)
        settings = settings_for(p, opts)
        if not settings.enabled:
            record(p, settings, "off")
            return base_fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)
        parameterization = parameterization_of(model, sd_model)
        handoff = host_handoff(settings.handoff, parameterization)
        plan = plan_teleport(sigmas, handoff, settings.mode)
        if plan.jumped and getattr(model, "mask", None) is not None:
            # Inpainting blends the original latent back in at every step; a jump would bypass that.
            plan = TeleportPlan(False, plan.sigma_from, plan.sigma_from, 0, 0, sigmas, plan.mode,
                                "inpainting mask: the sampler runs unchanged")
        if not plan.jumped:
            record(p, settings, describe(plan))
            log.info(plan.summary())
            return base_fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)
        moments = cache.get(resolve_moments_file(models_folder, settings.moments), latent_format_of(sd_model),
                            keep=bool(getattr(opts, "gaussian_teleport_keep_loaded", True)))

        def on_plan(plan):
            record(p, settings, describe(plan))
            advance_step_counter(model, plan, calls_per_step)

        return sample_teleport(model, x, sigmas, extra_args, callback, disable, moments=moments, sampler=base_fn,
                               handoff=handoff, mode=settings.mode, parameterization=parameterization,
                               on_plan=on_plan, **options)

    teleport_sampler.__signature__ = inspect.signature(base_fn)
    return teleport_sampler


# ----------------------------------------------------------------------------
# Registration in the host's sampler list.


def base_sampler_entries(kdiffusion) -> dict:
    """label -> (funcname, aliases, options) from the host's ``samplers_k_diffusion`` table."""
    entries = {}
    for label, funcname, aliases, options in kdiffusion.samplers_k_diffusion:
        if label in BASE_SAMPLERS and isinstance(funcname, str):
            entries[label] = (funcname, aliases, options)
    return entries


def make_constructor(kdiffusion, funcname: str, options: dict, settings_source):
    """The SamplerData constructor: the host's KDiffusionSampler around the wrapped function.

    ``settings_source`` is a callable returning (opts, models_folder) at construction time.
    """
    calls_per_step = 2 if options.get("second_order", False) else 1

    def constructor(sd_model):
        base_fn = getattr(kdiffusion.k_diffusion.sampling, funcname)
        opts, folder = settings_source()
        fn = make_host_sampler_function(base_fn, sd_model, calls_per_step=calls_per_step, opts=opts,
                                        models_folder=folder)
        sampler = kdiffusion.KDiffusionSampler(fn, sd_model)
        # The host looks its extra options up by function name; use the plain sampler's list.
        sampler.extra_params = kdiffusion.sampler_extra_params.get(funcname, [])
        return sampler

    return constructor


def teleport_sampler_data(sd_samplers_common, kdiffusion, settings_source) -> list:
    """SamplerData entries for the teleport variants of the host's samplers that exist there."""
    data = []
    for label, (funcname, aliases, options) in base_sampler_entries(kdiffusion).items():
        if not hasattr(kdiffusion.k_diffusion.sampling, funcname):
            continue
        name = teleport_name(label)
        alias = [a + "_teleport" for a in aliases[:1]]
        data.append(sd_samplers_common.SamplerData(name, make_constructor(kdiffusion, funcname, options,
                                                                          settings_source),
                                                   alias, {**options, "teleport": True}))
    return data


def register_samplers(sd_samplers, sd_samplers_common, kdiffusion, settings_source) -> list[str]:
    """Add the teleport samplers once; calling again (Reload UI) changes nothing. Returns their names.

    Forge has ``add_sampler`` (it rebuilds its name map and lists); A1111 is extended through its
    ``all_samplers`` list and ``all_samplers_map`` in place, then ``set_samplers()``.
    """
    names = []
    for data in teleport_sampler_data(sd_samplers_common, kdiffusion, settings_source):
        names.append(data.name)
        if data.name in sd_samplers.all_samplers_map:
            continue
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
