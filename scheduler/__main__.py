"""Command line: calibrate the hand-off for a model, sampler and schedule; recommend a method for a budget.

    python -m gaussian_teleport.scheduler calibrate --model digits --sampler heun --schedule edm --steps 18
    python -m gaussian_teleport.scheduler calibrate --model digits --cfg 3 --label 7 --moments model
    python -m gaussian_teleport.scheduler calibrate --model mypkg.models:load --moments m.safetensors --schedule karras
    python -m gaussian_teleport.scheduler recommend --calls 6 --schedule sd --cfg 5

``--model`` is a shipped reference model (digits, patches), a weights file from reference.train, or
``module:function`` returning (model, latent_shape, parameterization) for any k-diffusion-form
denoiser. ``--moments``: ``data`` (the reference model's shipped moments), ``model`` (read off the
model, no images) or a moments file. It prints the measured hand-offs and the recommendation.

``recommend`` runs nothing: it answers from the committed fixed-budget benchmark on the reference models
(bench/results/solvers.json) with the fastest sampler, teleport or Gaussian-solver form measured at that
budget, schedule and CFG, its error against the best plain sampler, and where the figures come from.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from ..moments import MomentsError, estimate_moments_from_model, load_moments
from .calibrate import DEFAULT_TOLERANCE, calibrate_handoff
from .samplers import SAMPLERS
from .parameterization import parameterization
from .recommend import CFGS as MEASURED_CFGS, SCHEDULES as MEASURED_SCHEDULES, recommend_sampler
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


def load_setup(args):
    """(model, latent shape, parameterization, extra_args, moments, σ_data) for --model and --moments."""
    from ..reference import condition, is_function_spec, load_denoiser, load_reference

    if is_function_spec(args.model):
        reference = None
        model, shape, param, extra_args = load_denoiser(args.model, label=args.label, cfg=args.cfg)
    else:
        reference = load_reference(args.model)
        model, extra_args = condition(reference, label=args.label, cfg=args.cfg)
        shape, param = reference.shape, "ve"
    if args.moments == "data":
        if reference is None:
            raise MomentsError("--moments data needs a reference model; give a moments file or 'model'")
        moments = reference.moments
    elif args.moments == "model":
        moments = estimate_moments_from_model(model, shape, parameterization=param, extra_args=extra_args)
    else:
        moments = load_moments(args.moments)
    return model, shape, param, extra_args, moments, reference.sigma_data if reference is not None else 1.0


def calibrate(args) -> int:
    if args.schedule == "karras" and args.sigma_min >= args.sigma_max:
        raise ValueError(f"--sigma-min {args.sigma_min:g} must be below --sigma-max {args.sigma_max:g}")
    model, shape, param, extra_args, moments, sigma_data = load_setup(args)
    sigmas = schedule(args.schedule, args.steps, sigma_data, args.sigma_min, args.sigma_max, args.shift)
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed))
    x = start_latent(noise, sigmas, param)
    if "class_labels" in extra_args:
        extra_args = {"class_labels": extra_args["class_labels"].expand(args.samples)}
    result = calibrate_handoff(model, x, sigmas.to(x.dtype), SAMPLERS[args.sampler], moments=moments, mean=args.mean,
                               parameterization=param, extra_args=extra_args, tolerance=args.tolerance)
    print(result.report())
    return 0


def recommend(args) -> int:
    rec = recommend_sampler(args.calls, args.schedule, args.cfg)
    print(json.dumps(rec.as_dict(), indent=1, ensure_ascii=False) if args.json else rec.describe())
    return 0


def integer(least: int, why: str):
    """An argparse type: an int ≥ ``least``, refused with ``why`` otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"got {value}; {why}")
        return value
    return parse


def number(positive: bool, what: str = "it"):
    """An argparse type: a finite float (> 0 when ``positive``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or (positive and value <= 0):
            raise argparse.ArgumentTypeError(f"got {text}; {what} must be a finite number{' > 0' if positive else ''}")
        return value
    return parse


class Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: …)' after each option's help, except where the help says it itself (no default, required)."""

    def _get_help_string(self, action):
        if action.default is None or action.required or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gaussian_teleport.scheduler", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    cal = sub.add_parser("calibrate", help="recommend the hand-off by what the image does",
                         formatter_class=Defaults)
    cal.add_argument("--model", required=True, help="digits, patches, a reference weights file, or module:function "
                     "returning (model, latent_shape, parameterization) (required; no default)")
    cal.add_argument("--moments", default="data", help="data, model, or a moments file")
    cal.add_argument("--sampler", choices=sorted(SAMPLERS), default="heun", help="inner sampler")
    cal.add_argument("--schedule", choices=SCHEDULES, default="edm",
                     help="edm / sd: scaled to the reference model's σ_data; karras: --sigma-min/--sigma-max; "
                          "flow: shifted t (--shift)")
    cal.add_argument("--steps", type=integer(2, "calibration needs at least 2 steps (one to replace, one left to "
                                                "the sampler)"), default=18, help="schedule steps")
    cal.add_argument("--sigma-min", type=number(True, "sigma-min"), default=0.0292, help="karras: the last σ > 0")
    cal.add_argument("--sigma-max", type=number(True, "sigma-max"), default=14.6146, help="karras: the first σ")
    cal.add_argument("--shift", type=number(True, "shift"), default=3.0, help="flow: the timestep shift")
    cal.add_argument("--mean", choices=MEANS, default=DEFAULT_MEAN, help="where the jump's mean comes from")
    cal.add_argument("--tolerance", type=number(True, "the tolerance"), default=DEFAULT_TOLERANCE,
                     help="largest change allowed, as paired RMSE over the spread between samples")
    cal.add_argument("--samples", type=integer(2, "calibration needs at least 2 noise samples"), default=8,
                     help="noise samples (a batch; at least 2)")
    cal.add_argument("--seed", type=int, default=0, help="seed of the noise samples")
    cal.add_argument("--cfg", type=number(False, "the guidance scale"), default=None,
                     help="classifier-free guidance scale (class-conditional reference models; default: none, "
                          "no guidance)")
    cal.add_argument("--label", type=integer(0, "labels are 0 or more"), default=None,
                     help="class label (class-conditional reference models; default: none, unconditional)")
    cal.set_defaults(fn=calibrate)
    rec = sub.add_parser("recommend", help="the fastest sampler, teleport or Gaussian-solver form measured for a "
                         "budget (runs nothing)", formatter_class=Defaults,
                         description="The fastest combination the fixed-budget benchmark measured on the reference "
                                     "models at this many model calls (bench/results/solvers.json); an unmeasured "
                                     "budget or CFG gets the nearest measured one, and the answer says so.")
    rec.add_argument("--calls", type=integer(1, "a budget is at least 1 model call"), required=True,
                     help="model calls per image (required; no default)")
    rec.add_argument("--schedule", choices=tuple(MEASURED_SCHEDULES), default="sd",
                     help="; ".join(f"{k}: {v}" for k, v in MEASURED_SCHEDULES.items()).replace("%", "%%"))
    rec.add_argument("--cfg", type=number(False, "the guidance scale"), default=1.0,
                     help="classifier-free guidance scale (1: no guidance; measured: "
                          + ", ".join(f"{c:g}" for c in MEASURED_CFGS) + ")")
    rec.add_argument("--json", action="store_true", help="print it as JSON")
    rec.set_defaults(fn=recommend)
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (MomentsError, ValueError, OSError) as exc:
        print(f"{ap.prog} {args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
