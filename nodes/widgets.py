"""Inputs several Gaussian Teleport nodes share, and their tooltips."""

from __future__ import annotations

from comfy_api.latest import io

from ..moments.base import DEFAULT_RANK
from ..scheduler.handoff import KINDS, MODES
from ..scheduler.settings import DEFAULT_HANDOFF, DEFAULT_MEAN, DEFAULT_MODE, MEANS

CATEGORY = "Gaussian Teleport"
Moments = io.Custom("GAUSSIAN_MOMENTS")
STRUCTURES = ["lowrank", "stationary", "dense"]


def moments_input(name: str = "moments", optional: bool = False, tooltip: str | None = None):
    return Moments.Input(name, optional=optional, tooltip=tooltip or (
        "Gaussian moments of the model's latents: from Estimate Moments (Images, Latents or Model) or Load "
        "Moments. Raw VAE-space moments are converted to the model's space."))


def structure_input():
    return io.Combo.Input("structure", options=STRUCTURES, default="lowrank", tooltip=(
        "Covariance structure. lowrank: top-k eigenpairs plus an isotropic rest (one resolution). stationary: "
        "per-frequency channel covariance, serves every resolution and aspect ratio. dense: exact, small latents "
        "only (≤ 4096 values)."))


def rank_input(default: int = DEFAULT_RANK, tooltip: str | None = None):
    return io.Int.Input("rank", default=default, min=1, max=4096, tooltip=tooltip or (
        "Eigenpairs kept by the lowrank structure (ignored by dense and stationary). 64–256 match the full "
        "covariance at high noise. With fewer samples than rank + 1, only samples − 1 are kept (the node says so)."))


def handoff_inputs():
    return [
        io.Combo.Input("handoff_kind", options=list(KINDS), default=DEFAULT_HANDOFF.kind, tooltip=(
            "Unit of the hand-off. sigma: the noise level where the sampler takes over (the jump lands on the first "
            "schedule step at or below it). steps: how many schedule steps the jump replaces. fraction: the share of "
            "the steps it replaces.")),
        io.Float.Input("handoff_value", default=DEFAULT_HANDOFF.value, min=0.0, max=10000.0, step=0.01, tooltip=(
            "The hand-off in the unit above: a noise level σ (the same number on every model: SD1.5, SDXL, SD3, "
            "Flux; a flow model's t = σ/(1 + σ)), a whole number of steps, or a fraction below 1. About 5 suits "
            "SD-like schedules; Calibrate Teleport measures it for your model and settings.")),
        io.Combo.Input("mode", options=list(MODES), default=DEFAULT_MODE, tooltip=(
            "save: drop the replaced steps (fewer model calls). same_budget: re-space the original number of steps "
            "over the rest of the schedule (same calls, finer steps).")),
        mean_input(),
    ]


def mean_input():
    return io.Combo.Input("mean", options=list(MEANS), default=DEFAULT_MEAN, tooltip=(
        "model: prompt-aware: one extra model call reads each image's mean from the model itself (your prompt, "
        "CFG, LoRA and ControlNet included). data: jump with the moments' own mean (no extra call; ignores the "
        "prompt, so under CFG the images drift)."))
