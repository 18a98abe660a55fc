"""The Gaussian solver: a SAMPLER for SamplerCustom(Advanced) and the KSampler's gaussian_solver entry.

Glue only: the solver is the core's ``sample_gaussian`` (scheduler/solver.py); the model's latent format
and parameterization are read at sampling time, as for the teleport SAMPLER.
"""

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from ..scheduler.solver import check_options
from .comfy_model import SOLVER_FUNCTION, SOLVER_NAME, solver_function
from .sampling import add_ksampler_entry, attached_moments
from .widgets import CATEGORY, moments_input

DEFAULT_ORDER = 3          # the core's default; also what the KSampler entry uses


def order_input():
    return io.Int.Input("order", default=DEFAULT_ORDER, min=1, max=4, tooltip=(
        "How many of the latest model calls each step's correction is fitted through (1 to 4). Higher orders "
        "follow the model more closely at the same number of steps; 1 is the simplest and the most robust with "
        "very few steps. The first steps start at 1 and rise to this order."))


def order_problem(order) -> str | bool:
    """True, or why the order widget's value is refused (a linked value is None at submission and skipped)."""
    if order is None:
        return True
    try:
        check_options(order, "noise", "log", "data")
    except ValueError as exc:
        return str(exc)
    return True


class GaussianSolverSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GaussianTeleportSolverSampler", display_name="Gaussian Solver Sampler", category=CATEGORY,
            description="A SAMPLER for SamplerCustom / SamplerCustomAdvanced that uses the moments at every step: "
                        "the part of each step a Gaussian explains is done exactly, and only the model's departure "
                        "from the Gaussian is stepped numerically (no hand-off to another sampler). EPS, "
                        "v-prediction, EDM and flow (SD3, Flux) models.",
            inputs=[moments_input(), order_input()],
            outputs=[io.Sampler.Output(display_name="sampler", tooltip=(
                "The Gaussian solver; connect it to SamplerCustom's or SamplerCustomAdvanced's sampler input."))],
        )

    @classmethod
    def validate_inputs(cls, order=None):
        return order_problem(order)

    @classmethod
    def execute(cls, moments, order) -> io.NodeOutput:
        return io.NodeOutput(comfy.samplers.KSAMPLER(solver_function(moments, order)))


# ----------------------------------------------------------------------------
# The KSampler dropdown entry (registered once, at load).


def attached_solver():
    """The KSampler-dropdown sampler gaussian_solver: its moments ride on the MODEL (Attach Teleport Moments)."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        attachment = attached_moments(model, SOLVER_NAME)
        fn = solver_function(attachment.moments, DEFAULT_ORDER)
        return fn(model, x, sigmas, extra_args, callback, disable, **options)

    sample.__name__ = SOLVER_FUNCTION
    sample.__doc__ = "The Gaussian solver (order 3); moments come from the MODEL's attachment."
    return sample


def register_ksampler_entry():
    """Add gaussian_solver to the KSampler dropdown in place; a second call changes nothing."""
    add_ksampler_entry(SOLVER_NAME, attached_solver())


NODES = [GaussianSolverSampler]
