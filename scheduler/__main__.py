"""Command line: calibrate the hand-off for a model, sampler and schedule.

    python -m gaussian_teleport.scheduler calibrate --model digits --sampler heun --schedule edm --steps 18
    python -m gaussian_teleport.scheduler calibrate --model digits --cfg 3 --label 7 --moments model
    python -m gaussian_teleport.scheduler calibrate --model mypkg.models:load --moments m.safetensors --schedule karras

``--model`` is a shipped reference model (digits, patches), a weights file from reference.train, or
``module:function`` returning (model, latent_shape, parameterization) for any k-diffusion-form
denoiser. ``--moments``: ``data`` (the reference model's shipped moments), ``model`` (read off the
model, no images) or a moments file. It prints the measured hand-offs and the recommendation.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..moments import MomentsError, estimate_moments_from_model, load_moments
from .calibrate import DEFAULT_TOLERANCE, calibrate_handoff
from .samplers import SAMPLERS
from .parameterization import parameterization
from .schedules import REFERENCE_SCHEDULES, get_sigmas_flow, get_sigmas_karras, make_sigmas
from .settings import DEFAULT_MEAN, MEANS

SCHEDULES = ("edm", "sd", "karras", "flow")


def schedule(name: str, steps: int, sigma_data: float, sigma_min: float, sigma_max: float, shift: float):
    if name in REFERENCE_SCHEDULES:
        return make_sigmas(name, steps, sigma_data)
    if name == "karras":
        return get_sigmas_karras(steps, sigma_min, sigma_max)
    return get_sigmas_flow(steps, shift)


def start_latent(noise: torch.Tensor, sigmas: torch.Tensor, param) -> torch.Tensor:
    """The sampler's start: noise at sigmas[0] for VE models, the noise itself at t = 1 for flow models
    (``param`` a name or a Parameterization, as a ``module:function`` model may return either)."""
    return noise if parameterization(param).is_flow else noise * sigmas[0]


def calibrate(args) -> int:
    from ..reference import condition, is_function_spec, load_denoiser, load_reference

    if is_function_spec(args.model):
        reference = None
        model, shape, param, extra_args = load_denoiser(args.model)
    else:
        reference = load_reference(args.model)
        model, extra_args = condition(reference, label=args.label, cfg=args.cfg)
        shape, param = reference.shape, "ve"
    sigma_data = reference.sigma_data if reference is not None else 1.0
    if args.moments == "data":
        if reference is None:
            raise MomentsError("--moments data needs a reference model; give a moments file or 'model'")
        moments = reference.moments
    elif args.moments == "model":
        moments = estimate_moments_from_model(model, shape, parameterization=param, extra_args=extra_args)
    else:
        moments = load_moments(args.moments)
    sigmas = schedule(args.schedule, args.steps, sigma_data, args.sigma_min, args.sigma_max, args.shift)
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed))
    x = start_latent(noise, sigmas, param)
    if "class_labels" in extra_args:
        extra_args = {"class_labels": extra_args["class_labels"].expand(args.samples)}
    result = calibrate_handoff(model, x, sigmas.to(x.dtype), SAMPLERS[args.sampler], moments=moments, mean=args.mean,
                               parameterization=param, extra_args=extra_args, tolerance=args.tolerance)
    print(result.report())
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gaussian_teleport.scheduler", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    cal = sub.add_parser("calibrate", help="recommend the hand-off by what the image does")
    cal.add_argument("--model", required=True, help="digits, patches, a reference weights file, or module:function")
    cal.add_argument("--moments", default="data", help="data, model, or a moments file")
    cal.add_argument("--sampler", choices=sorted(SAMPLERS), default="heun")
    cal.add_argument("--schedule", choices=SCHEDULES, default="edm",
                     help="edm / sd: scaled to the reference model's σ_data; karras: --sigma-min/--sigma-max; "
                          "flow: shifted t (--shift)")
    cal.add_argument("--steps", type=int, default=18)
    cal.add_argument("--sigma-min", type=float, default=0.0292)
    cal.add_argument("--sigma-max", type=float, default=14.6146)
    cal.add_argument("--shift", type=float, default=3.0)
    cal.add_argument("--mean", choices=MEANS, default=DEFAULT_MEAN)
    cal.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    cal.add_argument("--samples", type=int, default=8, help="noise samples (a batch; at least 2)")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--cfg", type=float, default=None, help="classifier-free guidance (class-conditional models)")
    cal.add_argument("--label", type=int, default=None, help="class label (class-conditional models)")
    cal.set_defaults(fn=calibrate)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (MomentsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
