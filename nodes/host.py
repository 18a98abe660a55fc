"""ComfyUI glue: the bodies of the nodes and the sampler functions. Imported only inside ComfyUI."""

from __future__ import annotations

import functools
import logging
import os

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
from comfy.k_diffusion import sampling as k_diffusion_sampling

from ..moments.gaussian import gaussian_flow, gaussian_x0
from ..moments.io import load_moments, save_moments
from ..moments.structures import MomentsError
from ..scheduler.calibrate import Calibration, calibration_summary, sample_calibrate
from ..scheduler.handoff import plan_teleport
from ..scheduler.teleport import compute_dtype, path_alpha, sample_teleport
from . import logic
from .logic import ATTACHMENT_KEY, MOMENTS_FOLDER, TELEPORT_PREFIX, TELEPORT_SAMPLERS, TeleportSettings
from .plot import plot_explained_variance
from .spec import Result

log = logging.getLogger("gaussian_teleport")


# ----------------------------------------------------------------------------
# Registration (once, at load): the moments folder and the KSampler dropdown entries.


def register_moments_folder():
    default = os.path.join(folder_paths.models_dir, MOMENTS_FOLDER)
    logic.merge_model_folder(folder_paths.folder_names_and_paths, MOMENTS_FOLDER, default)


def register_ksampler_variants():
    """Add teleport_<inner> to the KSampler dropdown in place; a second call changes nothing.

    KSampler reads the very list objects SAMPLER_NAMES / KSAMPLER_NAMES, so they are appended to,
    never reassigned; a name missing from them would silently fall back to euler.
    """
    lists = [comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES]
    if comfy.samplers.KSampler.SAMPLERS is not comfy.samplers.SAMPLER_NAMES:
        lists.append(comfy.samplers.KSampler.SAMPLERS)
    for inner in TELEPORT_SAMPLERS:
        name = TELEPORT_PREFIX + inner
        if not hasattr(k_diffusion_sampling, "sample_" + name):
            setattr(k_diffusion_sampling, "sample_" + name, attached_sampler(inner))
        for names in lists:
            if name not in names:
                names.append(name)


# ----------------------------------------------------------------------------
# Sampler functions (k-diffusion form, called by comfy.samplers.KSAMPLER.sample).


def model_space_setup(model, x, moments):
    """(moments in the model's space, 've' | 'flow') for the model behind a ComfyUI sampler call."""
    base = logic.find_on_chain(model, "latent_format")
    if base is None or not hasattr(base, "model_sampling"):
        raise MomentsError("teleport could not find the diffusion model behind this sampler call "
                           "(no latent_format/model_sampling on the model chain)")
    kind = logic.model_parameterization(base.model_sampling)
    a, b = logic.latent_affine(base.latent_format.process_in, int(x.shape[1]))
    converted = logic.moments_in_model_space(moments, a, b, type(base.latent_format).__name__)
    logic.check_latent(x, converted)
    return converted, kind


def passthrough_reason(model, extra_args) -> str | None:
    """Why this call must run without a jump (inpainting), or None."""
    if (extra_args or {}).get("denoise_mask") is not None:
        return ("inpainting (a noise mask is set): the masked region is re-imposed every step, which the "
                "closed-form jump does not model; sampling without teleport")
    return None


def sample_with_teleport(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                         settings: TeleportSettings, inner, **options):
    """Teleport then ``inner``; passes through unchanged (with a notice) where the jump is not valid."""
    why = passthrough_reason(model, extra_args)
    if why is not None:
        log.warning("Gaussian Teleport: %s", why)
        return inner(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)
    moments, kind = model_space_setup(model, x, settings.moments)
    if kind == "flow" and settings.handoff.kind == "sigma" and settings.handoff.value >= 1:
        log.warning("Gaussian Teleport: hand-off sigma %g is at or above a flow model's start (t = 1), so nothing "
                    "is skipped; flow models (SD3, Flux) count sigma as t in (0, 1), e.g. 0.8",
                    settings.handoff.value)
    latent = getattr(model, "latent_image", None)
    if latent is not None and torch.count_nonzero(latent) > 0:
        log.info("Gaussian Teleport: img2img start at σ %.4g: the jump carries the image-conditioned latent "
                 "along the same flow the sampler follows", float(sigmas[0]))
    return sample_teleport(model, x, sigmas, extra_args, callback, disable, moments=moments, sampler=inner,
                           handoff=settings.handoff, mode=settings.mode, parameterization=kind, **options)


def attached_sampler(inner_name: str):
    """The KSampler-dropdown sampler teleport_<inner_name>: reads its settings from the MODEL."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        holder = logic.find_on_chain(model, "model_patcher")
        settings = holder.model_patcher.get_attachment(ATTACHMENT_KEY) if holder is not None else None
        if settings is None:
            raise MomentsError(f"sampler '{TELEPORT_PREFIX}{inner_name}' needs Gaussian moments on the model: put an "
                               "'Attach Teleport Moments' node between the model loader and the KSampler")
        inner = getattr(k_diffusion_sampling, "sample_" + inner_name)
        return sample_with_teleport(model, x, sigmas, extra_args, callback, disable, settings=settings,
                                    inner=inner, **options)

    sample.__name__ = f"sample_{TELEPORT_PREFIX}{inner_name}"
    sample.__doc__ = f"Gaussian teleport, then ComfyUI's {inner_name}; moments come from the MODEL's attachment."
    return sample


def inner_ksampler(sampler_name: str, sampler=None):
    """The KSAMPLER the jump hands off to: a connected SAMPLER, else the named one."""
    if sampler is None:
        if sampler_name.startswith(TELEPORT_PREFIX):
            raise ValueError(f"'{sampler_name}' is itself a teleport sampler; pick a plain inner sampler "
                             f"such as {sampler_name[len(TELEPORT_PREFIX):]}")
        if sampler_name not in comfy.samplers.SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {sampler_name!r}")
        sampler = comfy.samplers.sampler_object(sampler_name)
    if not isinstance(sampler, comfy.samplers.KSAMPLER):
        raise ValueError(f"the connected sampler ({type(sampler).__name__}) is not a k-diffusion KSAMPLER; "
                         "teleport can only hand off to k-diffusion-style samplers")
    return sampler


# ----------------------------------------------------------------------------
# Node bodies.


def _first(v):
    return v[0] if isinstance(v, list) else v


def estimate_from_images(images, vae, structure, rank, width, height, fit, batch_size, add_to=None):
    vae, structure, rank, fit = _first(vae), _first(structure), _first(rank), _first(fit)
    width, height, batch_size, moments = _first(width), _first(height), _first(batch_size), _first(add_to)
    images = images if isinstance(images, list) else [images]
    ratio = vae.spacial_compression_encode()
    w, h = logic.target_size(images, width, height, ratio if isinstance(ratio, int) else 8)
    acc = logic.start_accumulator(structure, rank, moments)
    total = sum(int(i.shape[0]) for i in images)
    pbar = comfy.utils.ProgressBar(total)
    for group in images:
        for start, stop in logic.batches(int(group.shape[0]), batch_size):
            comfy.model_management.throw_exception_if_processing_interrupted()
            acc.add(vae.encode(logic.fit_images(group[start:stop], w, h, fit)))
            pbar.update(stop - start)
    result = acc.finalize(metadata={"source": "images", "image_size": f"{w}x{h}"})
    return Result((result,), text=f"{result.describe()} ({total} new image(s) at {w}×{h})")


def estimate_from_latents(latents, structure, rank, add_to=None):
    structure, rank, moments = _first(structure), _first(rank), _first(add_to)
    latents = latents if isinstance(latents, list) else [latents]
    acc = logic.start_accumulator(structure, rank, moments)
    pbar = comfy.utils.ProgressBar(len(latents))
    for latent in latents:
        comfy.model_management.throw_exception_if_processing_interrupted()
        acc.add(latent["samples"])
        pbar.update(1)
    result = acc.finalize(metadata={"source": "latents"})
    return Result((result,), text=result.describe())


def save(moments, filename, if_exists, storage):
    folder = folder_paths.get_folder_paths(MOMENTS_FOLDER)[0]
    path = logic.moments_save_path(folder, filename, if_exists)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_moments(moments, path, dtype=storage, overwrite=(if_exists == "overwrite"))
    log.info("Gaussian Teleport: saved %s to %s", moments.describe(), path)
    return Result((), text=f"saved to {os.path.relpath(path, folder)}: {moments.describe()}")


def moments_files():
    return folder_paths.get_filename_list(MOMENTS_FOLDER)


def load(moments_file):
    moments = load_moments(folder_paths.get_full_path_or_raise(MOMENTS_FOLDER, moments_file))
    return Result((moments,), text=moments.describe())


def sampler_names():
    return comfy.samplers.SAMPLER_NAMES


def teleport_sampler(moments, sampler_name, handoff_kind, handoff_value, mode, sampler=None):
    inner = inner_ksampler(sampler_name, sampler)
    settings = TeleportSettings(moments, logic.make_handoff(handoff_kind, handoff_value), mode)
    fn = functools.partial(sample_with_teleport, settings=settings, inner=inner.sampler_function)
    return Result((comfy.samplers.KSAMPLER(fn, dict(inner.extra_options), dict(inner.inpaint_options)),))


def attach(model, moments, handoff_kind, handoff_value, mode):
    settings = TeleportSettings(moments, logic.make_handoff(handoff_kind, handoff_value), mode)
    model = model.clone()
    model.set_attachments(ATTACHMENT_KEY, settings)
    names = ", ".join(TELEPORT_PREFIX + s for s in TELEPORT_SAMPLERS)
    return Result((model,), text=f"{settings.describe()}; pick {names} in the KSampler")


def sigmas(sigmas, handoff_kind, handoff_value, mode):
    plan = plan_teleport(sigmas, logic.make_handoff(handoff_kind, handoff_value), mode)
    return Result((plan.sigmas.to(sigmas.dtype), float(plan.sigma_to), int(plan.skipped)), text=plan.summary())


def _model_parts(model):
    return model.get_model_object("model_sampling"), model.get_model_object("latent_format")


def preview(model, moments, noise, latent, sigma):
    model_sampling, latent_format = _model_parts(model)
    kind = logic.model_parameterization(model_sampling)
    latent = {**latent, "samples": comfy.sample.fix_empty_latent_channels(model, latent["samples"])}
    eps = noise.generate_noise(latent).float()
    a, b = logic.latent_affine(latent_format.process_in, int(eps.shape[1]))
    m = logic.moments_in_model_space(moments, a, b, type(latent_format).__name__)
    logic.check_latent(eps, m)
    s_max = float(model_sampling.sigma_max)
    if not 0 < sigma <= s_max:
        raise ValueError(f"sigma must be in (0, {s_max:.4g}] (the model's sigma range), got {sigma}")
    op = m.operator(eps.shape[1:], device="cpu", dtype=compute_dtype(m))
    # the start the host's samplers take at full denoise (ComfyUI's noise_scaling, e.g. √(1+σ²)·ε for EPS)
    x_t = model_sampling.noise_scaling(torch.tensor([s_max]), eps, torch.zeros_like(eps), max_denoise=True)
    x_t = x_t.to(op.mean.dtype)
    x = gaussian_flow(op, x_t, s_max, sigma, path_alpha(kind, s_max), path_alpha(kind, sigma))
    x0 = gaussian_x0(op, x, sigma, path_alpha(kind, sigma))
    out = latent_format.process_out(x0.float())
    return Result(({"samples": out},), text=f"Gaussian x0 prediction at σ {sigma:.4g} after a jump from {s_max:.4g}")


def calibrate(guider, sigmas, latent, moments, noise, threshold):
    import latent_preview

    record = Calibration()

    def probe(model, x, sig, extra_args=None, callback=None, disable=None):
        m, kind = model_space_setup(model, x, moments)
        return sample_calibrate(model, x, sig, extra_args, callback, disable, moments=m,
                                parameterization=kind, record=record)

    samples = comfy.sample.fix_empty_latent_channels(guider.model_patcher, latent["samples"])
    callback = latent_preview.prepare_callback(guider.model_patcher, sigmas.shape[-1] - 1)
    guider.sample(noise.generate_noise(latent), samples, comfy.samplers.KSAMPLER(probe), sigmas,
                  denoise_mask=None, callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
                  seed=noise.seed)
    best, report = calibration_summary(record, threshold)
    log.info("Gaussian Teleport calibration\n%s", report)
    image = plot_explained_variance(record.sigmas, record.score_ev, record.denoiser_ev, threshold, best)
    handoff = best if best is not None else float(sigmas[0])
    return Result((image, float(handoff), report), text=report, images=image)
