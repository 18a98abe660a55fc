"""Sampling with teleport: a SAMPLER for SamplerCustom(Advanced), moments on a MODEL for the KSampler's
teleport_* entries (and gaussian_solver, see gaussian_solver.py), and the schedule cut at the hand-off for
split graphs."""

from __future__ import annotations

from dataclasses import dataclass

import comfy.samplers
from comfy.k_diffusion import sampling as k_diffusion_sampling
from comfy_api.latest import io

from ..moments.base import GaussianMoments, MomentsError
from ..scheduler.handoff import Handoff, plan_teleport
from ..scheduler.settings import TeleportSettings
from .comfy_model import (SOLVER_FUNCTION, SOLVER_NAME, TELEPORT_FUNCTION, find_on_chain, parameterization_of,
                          teleport_function)
from .widgets import CATEGORY, handoff_inputs, moments_input

ATTACHMENT_KEY = "gaussian_teleport"
TELEPORT_PREFIX = "teleport_"
KSAMPLER_INNER = ("euler", "heun", "dpmpp_2m", "ipndm")    # inner samplers offered in the KSampler dropdown
KSAMPLER_NAMES = ", ".join(TELEPORT_PREFIX + s for s in KSAMPLER_INNER)
ATTACH_USERS = f"{KSAMPLER_NAMES} or {SOLVER_NAME}"    # the dropdown entries that read the attachment


@dataclass(frozen=True)
class Attachment:
    """What Attach Teleport Moments puts on a MODEL (a ModelPatcher attachment, shared by reference)."""

    moments: GaussianMoments
    settings: TeleportSettings


def inner_sampler(sampler_name: str, sampler=None):
    """The KSAMPLER the jump hands off to: a connected SAMPLER, else the named one; never a teleport one."""
    if sampler is None:
        problem = sampler_name_problem(sampler_name)
        if problem is not True:
            raise ValueError(problem)
        sampler = comfy.samplers.sampler_object(sampler_name)
    if not isinstance(sampler, comfy.samplers.KSAMPLER):
        raise ValueError(f"the connected sampler ({type(sampler).__name__}) is not a k-diffusion KSAMPLER; "
                         "teleport can only hand off to k-diffusion-style samplers")
    name = getattr(sampler.sampler_function, "__name__", "")
    if name == TELEPORT_FUNCTION or name.startswith("sample_" + TELEPORT_PREFIX):
        raise ValueError("the connected sampler is itself a Gaussian Teleport sampler; connect a plain sampler "
                         "(e.g. KSamplerSelect with euler) as the inner sampler")
    if name == SOLVER_FUNCTION:
        raise ValueError("the connected sampler is the Gaussian solver, which already uses the moments at every "
                         "step; use it on its own (connect it to SamplerCustom's sampler input) or connect a plain "
                         "sampler (e.g. KSamplerSelect with euler) as the inner sampler")
    return sampler


def plain_sampler_names() -> list[str]:
    """The KSampler's samplers that can run after the jump: not this pack's teleport_* and gaussian_* entries."""
    return [n for n in comfy.samplers.SAMPLER_NAMES if not n.startswith((TELEPORT_PREFIX, "gaussian_"))]


def sampler_name_input(tooltip: str):
    return io.Combo.Input("sampler_name", options=plain_sampler_names(), default="euler", tooltip=tooltip)


def sampler_name_problem(sampler_name) -> str | bool:
    if sampler_name is None:
        return True
    if sampler_name.startswith(TELEPORT_PREFIX):
        return (f"'{sampler_name}' is itself a teleport sampler; pick a plain inner sampler such as "
                f"{sampler_name[len(TELEPORT_PREFIX):]}")
    if sampler_name == SOLVER_NAME:
        return (f"'{SOLVER_NAME}' is the Gaussian solver, which already uses the moments at every step; pick a plain "
                "inner sampler such as euler (or use the Gaussian Solver Sampler node on its own)")
    if sampler_name not in comfy.samplers.SAMPLER_NAMES:
        return f"unknown sampler {sampler_name!r}"
    return True


class GaussianTeleportSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GaussianTeleportSampler", display_name="Gaussian Teleport Sampler", category=CATEGORY,
            description="A SAMPLER for SamplerCustom / SamplerCustomAdvanced: jumps over the high-noise steps in closed "
                        "form, then the inner sampler runs the rest. EPS, v-prediction, EDM and flow (SD3, Flux) "
                        "models.",
            inputs=[
                moments_input(),
                sampler_name_input("The inner sampler that finishes the schedule after the jump (the KSampler "
                                   "list, including samplers other packs add)."),
                *handoff_inputs(),
                io.Sampler.Input("sampler", optional=True, tooltip=(
                    "Optional: a SAMPLER (e.g. from KSamplerSelect or another pack) to use as the inner sampler "
                    "instead of sampler_name.")),
            ],
            outputs=[io.Sampler.Output(display_name="sampler", tooltip="Teleport followed by the inner sampler.")],
        )

    @classmethod
    def validate_inputs(cls, sampler_name=None):
        # one input only: ComfyUI shows a refusal once under every input validate_inputs takes. The combos and
        # the hand-off's range are checked by ComfyUI itself; a hand-off value that does not fit its unit (steps
        # 2.5) is refused when the node runs, before any sampling.
        return sampler_name_problem(sampler_name)

    @classmethod
    def execute(cls, moments, sampler_name, handoff_kind, handoff_value, mode, mean, sampler=None) -> io.NodeOutput:
        inner = inner_sampler(sampler_name, sampler)
        settings = TeleportSettings.from_values(handoff_kind, handoff_value, mode, mean)
        fn = teleport_function(moments, settings, inner.sampler_function)
        return io.NodeOutput(comfy.samplers.KSAMPLER(fn, dict(inner.extra_options), dict(inner.inpaint_options)))


class GaussianTeleportAttachMoments(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GaussianTeleportAttachMoments", display_name="Attach Teleport Moments", category=CATEGORY,
            description=f"Attach moments and a hand-off to a MODEL so the KSampler's {KSAMPLER_NAMES} samplers use "
                        f"them. The KSampler's {SOLVER_NAME} uses the moments only (order 3, no hand-off).",
            inputs=[io.Model.Input("model", tooltip="The diffusion model to attach moments to (the result is a light "
                                   "clone)."),
                    moments_input(), *handoff_inputs()],
            outputs=[io.Model.Output(display_name="model", tooltip=f"The model with moments attached; pick "
                                     f"{ATTACH_USERS} in the KSampler.")],
        )

    @classmethod
    def execute(cls, model, moments, handoff_kind, handoff_value, mode, mean) -> io.NodeOutput:
        attachment = Attachment(moments, TeleportSettings.from_values(handoff_kind, handoff_value, mode, mean))
        model = model.clone()
        model.set_attachments(ATTACHMENT_KEY, attachment)
        return io.NodeOutput(model, ui={"text": (f"{moments.describe()}; {attachment.settings.describe()}; pick "
                                                 f"{ATTACH_USERS} in the KSampler",)})


class GaussianTeleportSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GaussianTeleportSigmas", display_name="Teleport Sigmas", category=CATEGORY,
            description="Cut a schedule at the hand-off, for split graphs: the SIGMAS the sampler runs after the jump, "
                        "the hand-off sigma and how many steps the jump replaces.",
            inputs=[
                io.Sigmas.Input("sigmas", tooltip="The full schedule, e.g. from BasicScheduler or KarrasScheduler."),
                *handoff_inputs()[:3],
                io.Model.Input("model", optional=True, tooltip=(
                    "The model the schedule is for. Needed for flow models (SD3, Flux), whose schedules run on t: "
                    "the hand-off sigma is a noise level on every model.")),
            ],
            outputs=[
                io.Sigmas.Output(display_name="sigmas", tooltip="The schedule after the jump (truncated, or re-spaced "
                                 "in same_budget mode)."),
                io.Float.Output(display_name="handoff_sigma", tooltip="The hand-off as a noise level σ (type it back "
                                "into a sampler's hand-off to replace the same steps)."),
                io.Int.Output(display_name="skipped_steps", tooltip="Schedule steps the jump replaces."),
            ],
        )

    @classmethod
    def execute(cls, sigmas, handoff_kind, handoff_value, mode, model=None) -> io.NodeOutput:
        if model is not None:
            param = parameterization_of(model.get_model_object("model_sampling"))
        elif float(sigmas.max()) <= 1.0:
            raise ValueError("this schedule never exceeds 1, so it may be a flow model's (t) or a very short VE one: "
                             "connect the model to Teleport Sigmas so the hand-off sigma is read right")
        else:
            param = "ve"
        plan = plan_teleport(sigmas, Handoff(handoff_kind, handoff_value), mode, param, can_respace=True)
        return io.NodeOutput(plan.sigmas.to(sigmas.dtype), float(plan.noise_level_to), int(plan.skipped),
                             ui={"text": (plan.summary(),)})


# ----------------------------------------------------------------------------
# The KSampler dropdown entries (registered once, at load).


def attached_moments(model, sampler_name: str) -> Attachment:
    """What Attach Teleport Moments put on the MODEL behind a sampler call; MomentsError naming the node if none."""
    holder = find_on_chain(model, "model_patcher")
    attachment = holder.model_patcher.get_attachment(ATTACHMENT_KEY) if holder is not None else None
    if attachment is None:
        raise MomentsError(f"sampler '{sampler_name}' needs Gaussian moments on the model: put an 'Attach Teleport "
                           "Moments' node between the model loader and the KSampler")
    return attachment


def attached_sampler(inner_name: str):
    """The KSampler-dropdown sampler teleport_<inner_name>: its moments and settings ride on the MODEL."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        attachment = attached_moments(model, TELEPORT_PREFIX + inner_name)
        inner = getattr(k_diffusion_sampling, "sample_" + inner_name)
        fn = teleport_function(attachment.moments, attachment.settings, inner)
        return fn(model, x, sigmas, extra_args, callback, disable, **options)

    sample.__name__ = f"sample_{TELEPORT_PREFIX}{inner_name}"
    sample.__doc__ = f"Gaussian teleport, then ComfyUI's {inner_name}; moments come from the MODEL's attachment."
    return sample


def add_ksampler_entry(name: str, function) -> None:
    """Put sample_<name> on comfy.k_diffusion.sampling and <name> in the KSampler dropdown, once.

    KSampler reads the very list objects SAMPLER_NAMES / KSAMPLER_NAMES, so they are appended to,
    never reassigned; a name missing from them would silently fall back to euler.
    """
    lists = [comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES]
    if comfy.samplers.KSampler.SAMPLERS is not comfy.samplers.SAMPLER_NAMES:
        lists.append(comfy.samplers.KSampler.SAMPLERS)
    if not hasattr(k_diffusion_sampling, "sample_" + name):
        setattr(k_diffusion_sampling, "sample_" + name, function)
    for names in lists:
        if name not in names:
            names.append(name)


def register_ksampler_variants():
    """Add teleport_<inner> to the KSampler dropdown in place, for each inner sampler this ComfyUI has; a second
    call changes nothing."""
    for inner in KSAMPLER_INNER:
        if hasattr(k_diffusion_sampling, "sample_" + inner):
            add_ksampler_entry(TELEPORT_PREFIX + inner, attached_sampler(inner))


NODES = [GaussianTeleportSampler, GaussianTeleportAttachMoments, GaussianTeleportSigmas]
