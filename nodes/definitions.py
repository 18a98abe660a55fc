"""The Gaussian Teleport nodes, described once for both ComfyUI node APIs.

Run functions import the ComfyUI glue (host.py) when called, so this module imports without ComfyUI.
"""

from __future__ import annotations

from ..moments.structures import STRUCTURES
from ..scheduler.handoff import KINDS, MODES
from .spec import MOMENTS_TYPE, In, NodeSpec, Out


def _host(name):
    def run(**kwargs):
        from . import host

        return getattr(host, name)(**kwargs)

    run.__name__ = name
    return run


def _host_list(name):
    def options():
        from . import host

        return getattr(host, name)()

    return options


# ----------------------------------------------------------------------------
# Inputs shared by several nodes.

MOMENTS_IN = In(MOMENTS_TYPE, "moments", "Gaussian moments (mean and covariance) of the model's latents, from "
                "Estimate Moments or Load Moments. Raw VAE-space moments are converted to the model's space.")
STRUCTURE_IN = In("COMBO", "structure", "Covariance structure. lowrank: top-k eigenpairs plus an isotropic rest "
                  "(default; any latent size, one resolution). stationary: per-frequency channel covariance, "
                  "serves every resolution and aspect ratio. dense: exact, small latents only (≤ 4096 values).",
                  default="lowrank", options=list(STRUCTURES))
RANK_IN = In("INT", "rank", "Eigenpairs kept by the lowrank structure (ignored by dense and stationary). "
             "64–256 match the full covariance at high noise; it cannot exceed the number of images − 1.",
             default=128, min=1, max=4096)
EXISTING_IN = In(MOMENTS_TYPE, "add_to", "Optional: existing raw moments to add these samples to, so moments "
                 "accumulate over several runs or image folders. Same structure and latent size required.",
                 optional=True)
KIND_IN = In("COMBO", "handoff_kind", "Unit of the hand-off. sigma: the noise level where the sampler takes over "
             "(the jump lands on the first schedule sigma at or below it). steps: how many schedule steps the jump "
             "replaces. fraction: the share of the steps it replaces.", default="sigma", options=list(KINDS))
VALUE_IN = In("FLOAT", "handoff_value", "The hand-off in the unit chosen above: a sigma (in the model's own units: "
              "for flow models SD3/Flux, t in (0, 1)), a whole number of steps, or a fraction below 1. Calibrate "
              "Teleport recommends a sigma for your model.", default=5.0, min=0.0, max=10000.0, step=0.01)
MODE_IN = In("COMBO", "mode", "save: drop the replaced steps (fewer model calls). same_budget: re-space the "
             "original number of steps over the rest of the schedule (same calls, finer steps).",
             default="save", options=list(MODES))


SPECS = (
    NodeSpec(
        "GaussianTeleportEstimateMomentsImages", "Estimate Moments (Images)",
        "Encode images with a VAE in batches and estimate the Gaussian moments of their latents. Every image is "
        "brought to one size first. Connect several image batches or folders (lists) to pool them.",
        (
            In("IMAGE", "images", "Images to learn the latent distribution from (a batch or a list of batches). "
               "Use images like the ones you generate; a few hundred or more give a good covariance."),
            In("VAE", "vae", "The VAE of the model the moments are for (latent channels must match the model)."),
            STRUCTURE_IN, RANK_IN,
            In("INT", "width", "Width every image is brought to, in pixels (0: the first image's width). Must be a "
               "multiple of the VAE's downscale factor (8). Generate at this size unless structure is stationary.",
               default=0, min=0, max=8192, step=8),
            In("INT", "height", "Height every image is brought to, in pixels (0: the first image's height).",
               default=0, min=0, max=8192, step=8),
            In("COMBO", "fit", "How images of another size are brought to width × height. crop: scale to cover "
               "and cut the centre (no distortion). stretch: resize directly.", default="crop",
               options=["crop", "stretch"]),
            In("INT", "batch_size", "Images encoded by the VAE at once; lower it if you run out of memory.",
               default=8, min=1, max=256),
            EXISTING_IN,
        ),
        (Out(MOMENTS_TYPE, "moments", "Raw VAE-space Gaussian moments."),),
        _host("estimate_from_images"), input_is_list=True,
    ),
    NodeSpec(
        "GaussianTeleportEstimateMomentsLatents", "Estimate Moments (Latents)",
        "Estimate the Gaussian moments of LATENT batches (raw VAE space, e.g. from VAE Encode).",
        (
            In("LATENT", "latents", "Latents to learn the distribution from (a batch or a list of batches of one "
               "size)."),
            STRUCTURE_IN, RANK_IN, EXISTING_IN,
        ),
        (Out(MOMENTS_TYPE, "moments", "Raw VAE-space Gaussian moments."),),
        _host("estimate_from_latents"), input_is_list=True,
    ),
    NodeSpec(
        "GaussianTeleportSaveMoments", "Save Moments",
        "Save moments as .safetensors (with metadata) in the models/moments folder.",
        (
            MOMENTS_IN,
            In("STRING", "filename", "File name inside models/moments (subfolders with '/'; .safetensors is "
               "added). Nothing is ever written outside that folder.", default="my_moments"),
            In("COMBO", "if_exists", "When the file exists. add number: save as name_00001 etc. error: stop. "
               "overwrite: replace it (only when chosen here).", default="add number",
               options=["add number", "error", "overwrite"]),
            In("COMBO", "storage", "Precision of the stored eigenvectors; float16 halves large lowrank files. Means "
               "and eigenvalues stay float32.", default="float32", options=["float32", "float16", "bfloat16"]),
        ),
        (), _host("save"), output_node=True,
    ),
    NodeSpec(
        "GaussianTeleportLoadMoments", "Load Moments",
        "Load moments from the models/moments folder (also folders named 'moments' in extra_model_paths.yaml).",
        (In("COMBO", "moments_file", "A .safetensors moments file in models/moments. Refresh the page after "
            "saving new ones.", options=_host_list("moments_files")),),
        (Out(MOMENTS_TYPE, "moments", "The loaded moments (validated)."),),
        _host("load"),
    ),
    NodeSpec(
        "GaussianTeleportSampler", "Gaussian Teleport Sampler",
        "A SAMPLER for SamplerCustom / SamplerCustomAdvanced: jumps over the high-noise steps in closed form, "
        "then the inner sampler runs the rest. Works with EPS, v-prediction, EDM and flow (SD3, Flux) models.",
        (
            MOMENTS_IN,
            In("COMBO", "sampler_name", "The inner sampler that finishes the schedule after the jump (the KSampler "
               "list, including samplers other packs add).", default="euler", options=_host_list("sampler_names")),
            KIND_IN, VALUE_IN, MODE_IN,
            In("SAMPLER", "sampler", "Optional: a SAMPLER (e.g. from KSamplerSelect or another pack) to use as the "
               "inner sampler instead of sampler_name.", optional=True),
        ),
        (Out("SAMPLER", "sampler", "Teleport followed by the inner sampler."),),
        _host("teleport_sampler"),
    ),
    NodeSpec(
        "GaussianTeleportAttachMoments", "Attach Teleport Moments",
        "Attach moments and a hand-off to a MODEL so the KSampler's teleport_euler / teleport_heun / "
        "teleport_dpmpp_2m samplers can use them.",
        (
            In("MODEL", "model", "The diffusion model to attach moments to (the result is a light clone)."),
            MOMENTS_IN, KIND_IN, VALUE_IN, MODE_IN,
        ),
        (Out("MODEL", "model", "The model with moments attached; pick a teleport_* sampler in the KSampler."),),
        _host("attach"),
    ),
    NodeSpec(
        "GaussianTeleportSigmas", "Teleport Sigmas",
        "Cut a schedule at the hand-off, for split graphs: the SIGMAS the sampler runs after the jump, the "
        "hand-off sigma and how many steps the jump replaces.",
        (
            In("SIGMAS", "sigmas", "The full schedule, e.g. from BasicScheduler or KarrasScheduler."),
            KIND_IN, VALUE_IN, MODE_IN,
        ),
        (
            Out("SIGMAS", "sigmas", "The schedule after the jump (truncated, or re-spaced in same_budget mode)."),
            Out("FLOAT", "handoff_sigma", "The sigma where the sampler takes over."),
            Out("INT", "skipped_steps", "Schedule steps the jump replaces."),
        ),
        _host("sigmas"),
    ),
    NodeSpec(
        "GaussianTeleportPreview", "Gaussian Preview",
        "What the jump produces: the Gaussian x0 prediction at a chosen sigma after the closed-form jump from the "
        "model's highest sigma, for the given noise. Decode it with VAE Decode.",
        (
            In("MODEL", "model", "The model (its latent format and noise parameterization are used; it is not run)."),
            MOMENTS_IN,
            In("NOISE", "noise", "The start noise, e.g. from RandomNoise (same seed as your sampler to compare)."),
            In("LATENT", "latent", "Sets the latent size and batch, e.g. Empty Latent Image."),
            In("FLOAT", "sigma", "The hand-off sigma to preview, in the model's units (flow models: t in (0, 1]).",
               default=5.0, min=0.0001, max=10000.0, step=0.01),
        ),
        (Out("LATENT", "latent", "The Gaussian x0 prediction at sigma (raw VAE space)."),),
        _host("preview"),
    ),
    NodeSpec(
        "GaussianTeleportCalibrate", "Calibrate Teleport",
        "Run the model along a schedule on a few noise samples, compare its denoiser with the Gaussian one at every "
        "sigma, plot the explained variance and recommend a hand-off sigma.",
        (
            In("GUIDER", "guider", "The guider you sample with (CFGGuider or BasicGuider: model, prompt, cfg)."),
            In("SIGMAS", "sigmas", "The schedule to probe (every sigma in it is one model call per sample), e.g. "
               "BasicScheduler with 10–20 steps."),
            In("LATENT", "latent", "Sets the latent size and the number of noise samples (batch size 4–8 is "
               "enough), e.g. Empty Latent Image."),
            MOMENTS_IN,
            In("NOISE", "noise", "Noise for the probe samples, e.g. RandomNoise."),
            In("FLOAT", "threshold", "Minimum score explained variance (1 − ‖D_model − D_gauss‖² / spread of "
               "D_model − x over the samples, the paper's figure; not the denoiser-output EV, which is misleading "
               "at high sigma). The recommended hand-off is the lowest sigma at which it holds at every higher "
               "probed sigma. A starting point, not a guarantee: if teleported images differ from plain ones at the same "
               "seed, raise it (0.999) or the hand-off.", default=0.99, min=0.5, max=1.0, step=0.001),
        ),
        (
            Out("IMAGE", "plot", "Explained variance against sigma (blue: score EV, used; grey: denoiser EV)."),
            Out("FLOAT", "handoff_sigma", "The recommended hand-off sigma (the schedule's first sigma, i.e. no jump, "
                "if no sigma qualifies)."),
            Out("STRING", "report", "The table of sigmas and explained variances."),
        ),
        _host("calibrate"), output_node=True,
    ),
)
