"""Calibrate Teleport: the hand-off measured on the user's own model, prompt, sampler and schedule."""

from __future__ import annotations

import logging
import math

import comfy.sample
from comfy_api.latest import io, ui

from ..scheduler.calibrate import DEFAULT_TOLERANCE, calibrate_handoff
from .comfy_model import model_facts, run_in_guider
from .estimate import progress_bar
from .plots import plot_change_versus_calls, plot_explained_variance
from .sampling import inner_sampler, sampler_name_input, sampler_name_problem
from .widgets import CATEGORY, mean_input, moments_input

log = logging.getLogger("gaussian_teleport")


class GaussianTeleportCalibrate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GaussianTeleportCalibrate", display_name="Calibrate Teleport", category=CATEGORY,
            description="Find the hand-off for your model, prompt, sampler and schedule by what the image does: it "
                        "samples a few noises plainly and with teleport from a handful of hand-offs (a bisection) and "
                        "recommends the one that saves the most calls while the result changes by at most the "
                        "tolerance. Costs a few generations' worth of model calls.",
            inputs=[
                io.Guider.Input("guider", tooltip="The guider you sample with (CFGGuider or BasicGuider: model, prompt, "
                                "cfg)."),
                io.Sigmas.Input("sigmas", tooltip="The schedule you sample with (e.g. BasicScheduler)."),
                io.Latent.Input("latent", tooltip="Sets the size and the number of noise samples (a batch of 4–8 is "
                                "enough), e.g. Empty Latent Image."),
                moments_input(),
                io.Noise.Input("noise", tooltip="Noise for the samples, e.g. RandomNoise."),
                sampler_name_input("The sampler you finish with (the one the teleport sampler will run)."),
                mean_input(),
                io.Float.Input("tolerance", default=DEFAULT_TOLERANCE, min=0.001, max=1.0, step=0.001, tooltip=(
                    "How much the final image may change: the paired RMSE to the plain run over the spread between "
                    f"different samples (0.01: 1% of how much two seeds differ). At the default {DEFAULT_TOLERANCE:g} "
                    "the benchmark's recommendations left the image unchanged on every model, sampler and schedule "
                    "measured; larger values replace more steps and may cost quality.")),
                io.Sampler.Input("sampler", optional=True, tooltip="Optional: a SAMPLER to use instead of "
                                 "sampler_name (e.g. from KSamplerSelect)."),
            ],
            outputs=[
                io.Float.Output(display_name="handoff_sigma", tooltip="The recommended hand-off (a noise level σ); "
                                "infinite when teleport is not recommended (no step is replaced)."),
                io.Image.Output(display_name="plot", tooltip="Change against model calls for each hand-off tried."),
                io.String.Output(display_name="report", tooltip="The measured hand-offs and the recommendation."),
                io.Image.Output(display_name="explained_variance", tooltip="A diagnostic: how Gaussian the model is "
                                "along the plain run (score and denoiser explained variance)."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, sampler_name=None):
        return sampler_name_problem(sampler_name)

    @classmethod
    def execute(cls, guider, sigmas, latent, moments, noise, sampler_name, mean, tolerance, sampler=None
                ) -> io.NodeOutput:
        inner = inner_sampler(sampler_name, sampler)

        def calibrate(model, x, schedule, extra_args):
            fmt, param = model_facts(model, int(x.shape[1]))
            return calibrate_handoff(model, x, schedule, inner.sampler_function, moments=moments, mean=mean,
                                     parameterization=param, latent_format=fmt, extra_args=extra_args,
                                     tolerance=tolerance, progress=progress_bar(1), **inner.extra_options)

        samples = comfy.sample.fix_empty_latent_channels(guider.model_patcher, latent["samples"])
        cal = run_in_guider(guider, noise.generate_noise(latent), samples, sigmas, noise.seed, calibrate)
        log.info("Gaussian Teleport calibration\n%s", cal.report())
        best = next((c for c in cal.curve if c.skipped == cal.skipped), None)
        plot = plot_change_versus_calls(cal.curve, cal.tolerance, cal.calls_plain, best, cal.summary())
        ev = plot_explained_variance(cal.explained.sigmas, cal.explained.score_ev, cal.explained.denoiser_ev, cal.sigma)
        handoff = math.inf if cal.handoff is None else cal.handoff.value
        shown = ui.PreviewImage(plot, cls=cls).as_dict()
        shown["text"] = (cal.summary(),)
        return io.NodeOutput(handoff, plot, cal.report(), ev, ui=shown)


NODES = [GaussianTeleportCalibrate]
