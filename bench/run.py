"""Run the teleport benchmark: ``python -m gaussian_teleport.bench.run`` (``--quick`` for a smoke run).

For each reference model: (a) explained variance of the Gaussian denoiser by moments structure and
rank across σ; (b) Fréchet distance and paired RMSE versus model calls for euler, heun and dpmpp_2m on
the EDM and a Stable-Diffusion-like schedule, plain and with teleport (data moments with the data's or
the model's mean, and moments read off the model), in both schedule modes; (c) the largest saving per
verdict; (d) on the class-conditional model, the same under classifier-free guidance w = 1, 3, 5, 7
with class accuracy; (e) moments read off the model: settings sweep, explained variance and cost;
(f) the calibration's tolerance and its validation. Writes markdown tables, PNG plots and the raw
numbers (results.json) to --out; a --quick run writes to a new temporary folder, removed when it ends,
unless --out is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from ..reference import REFERENCE_MODELS, load_reference
from . import RESULTS  # the committed results (callers import it from here too)
from ..reference.data import load_dataset, load_patches
from . import calibration, guidance, model_moments
from .explained import EV_SIGMAS, explained_variance_table, moment_variants
from .features import accuracy, features, gaussian_stats, train_classifier
from .quality import (LOW_STEPS, STEPS, Run, Variant, configurations, evaluate, real_floor, sample_run, seed_sets)
from .report import write_reports

PARTS = ("ev", "quality", "guidance", "model-moments", "calibration")
QUALITY_VARIANTS = (Variant("data", "data"), Variant("data", "model"), Variant("model", "model"))


def log(msg):
    print(msg, flush=True)


def run_model(name: str, opts) -> dict:
    torch.manual_seed(0)
    ref = load_reference(name)
    sd = ref.sigma_data
    data = load_dataset(name, seed=0)
    if name == "patches":
        real = load_patches(count=opts.real, seed=1).images
        fresh = lambda k: load_patches(count=opts.samples, seed=2 + k).images  # noqa: E731
    else:
        real, fresh = data.images, None
    log(f"[{name}] training the feature classifier ({opts.classifier_steps} steps)")
    classifier = train_classifier(data.images, data.labels, data.num_classes, steps=opts.classifier_steps)
    held = load_patches(count=2000, seed=99) if name == "patches" else None
    result = {"model": name, "sigma_data": sd, "record": ref.record, "samples": opts.samples, "sets": opts.sets,
              "real": len(real),
              "classifier_accuracy": accuracy(classifier, held.images, held.labels) if held is not None
              else accuracy(classifier, data.images, data.labels),
              "classifier_accuracy_on": "2,000 fresh patches" if held is not None else "the training digits"}
    real_stats = gaussian_stats(features(classifier, real))
    result["sqrt_lambda_max"] = float(ref.moments.eigvals.double().max().sqrt()) / sd
    result["floor"] = real_floor(classifier, real, opts.samples, opts.sets, real_stats, fresh)
    result["floor_kind"] = (f"{opts.samples} fresh real patches vs the {len(real)}-patch reference" if fresh
                            else f"two disjoint random halves of the {len(real)} real digits")
    derived = model_moments.estimate(ref, model_moments.defaults())
    result["model_moments"] = {**{k: str(v) for k, v in derived.metadata.items()}, "rank": derived.rank}
    noise = seed_sets(opts.sets, opts.samples, ref.shape)
    with torch.no_grad():
        if "ev" in opts.parts:
            log(f"[{name}] explained variance")
            ev_images = real[: opts.ev_samples]
            result["ev"] = explained_variance_table(ref.model, ev_images, moment_variants(data.images, ranks=opts.ranks),
                                                    sd, opts.ev_sigmas)
            result["model_ev"] = model_moments.explained(ref, ev_images, opts, derived)
        if "quality" in opts.parts:
            result["rows"] = run_quality(ref, noise, classifier, real_stats, opts, derived)
        if "guidance" in opts.parts and ref.model.cfg.num_classes:
            result["guidance"] = guidance.run_guidance(ref, data, classifier, real_stats, noise, opts, derived, log)
        if "model-moments" in opts.parts:
            result["sweep"] = model_moments.sweep(ref, noise[: opts.sweep_samples], opts, log)
    return result


def run_quality(ref, noise, classifier, real_stats, opts, derived) -> list[dict]:
    sd, rows = ref.sigma_data, []
    for schedule in opts.schedules:
        for sampler in opts.samplers:
            budgets = [(STEPS[sampler], True)] + ([(LOW_STEPS[sampler], False)] if opts.low_budget else [])
            for steps, save in budgets:
                plain = Run(sampler, schedule, steps)
                base, calls, sec, land = sample_run(plain, ref.model, noise, sd)
                fine = sample_run(plain, ref.model, noise, sd, steps=2 * steps)[0] if save else None
                head = {"sampler": sampler, "schedule": schedule, "steps": steps}
                rows.append({**head, "variant": "plain", "mode": "plain", "handoff": "", "calls": calls, "seconds": sec,
                             "handoff_sigma_data": land,
                             **evaluate(base, base, classifier, real_stats, opts.sets, fine=fine)})
                for run in configurations(sampler, schedule, steps, sd, variants=opts.variants, save=save,
                                          same_budget=opts.same_budget, max_skip=opts.max_skip)[1:]:
                    moments = ref.moments if run.variant.moments == "data" else derived
                    x, calls, sec, land = sample_run(run, ref.model, noise, sd, moments)
                    m = evaluate(x, base, classifier, real_stats, opts.sets)
                    rows.append({**head, "variant": run.variant.label, "mode": run.mode, "handoff": str(run.handoff),
                                 "calls": calls, "seconds": sec, "handoff_sigma_data": land, **m})
                    log(f"[{ref.name}] {sampler:8s} {schedule:3s} {steps:2d} {run.mode:11s} {str(run.handoff):12s} "
                        f"{run.variant.label:34s} calls {calls:2d}  RMSE {sum(m['rmse']) / len(m['rmse']):.4f}  "
                        f"{sec:.1f}s")
    return rows


def run_calibration(results, opts) -> dict:
    refs = {r["model"]: load_reference(r["model"]) for r in results}
    configs = calibration.configurations(results)
    for c in configs:
        c["curves"] = calibration.curves(refs[c["model"]], c)
        log(f"[calibration] {c['model']} {c['sampler']} {c['schedule']} cfg {c['cfg']}: best k {c['best']}")
    table = calibration.tolerance_table(configs)
    validation = calibration.validate(refs.__getitem__, configs)
    for v in validation:
        log(f"[calibration] {v['model']} {v['sampler']} {v['schedule']} cfg {v['cfg']}: {v['summary']}")
    return {"tolerances": table, "validation": validation,
            "curves": [{k: c[k] for k in ("model", "sampler", "schedule", "cfg", "best", "measured", "curves")}
                       for c in configs]}


def at_least(least: int, why: str):
    """An argparse type: a whole number ≥ ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"got {value}; {why}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gaussian_teleport.bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny sizes, one configuration per part; writes to a temporary folder, removed at "
                        "the end (default: off, the full benchmark)")
    p.add_argument("--models", nargs="+", choices=REFERENCE_MODELS, default=list(REFERENCE_MODELS),
                   help="reference models (default: %(default)s)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: %(default)s)")
    p.add_argument("--samples", type=at_least(2, "give at least 2 samples per seed set"), default=1000,
                   help="samples per seed set (default: %(default)s; --quick: at most 32)")
    p.add_argument("--sets", type=at_least(2, "the verdicts compare at least 2 seed sets"), default=4,
                   help="seed sets (default: %(default)s; --quick: at most 2)")
    p.add_argument("--out", default=None, help="folder the reports go to (default: bench/results in this package; "
                                               "--quick: a temporary folder, removed at the end)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots, no matplotlib needed (default: plot)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the tables and plots from <--out>/results.json without sampling again (default: off)")
    p.add_argument("--reuse", action="store_true",
                   help="run only --parts and keep the other parts' numbers from <--out>/results.json (default: off)")
    return p


def check_out(p: argparse.ArgumentParser, opts) -> None:
    """Before any work: --out is a folder, and the results.json that --reuse or --report-only read exists."""
    if opts.out is not None and os.path.exists(opts.out) and not os.path.isdir(opts.out):
        p.error(f"--out {opts.out} is a file; give a folder for the reports")
    for flag, wanted in (("--reuse", opts.reuse), ("--report-only", opts.report_only)):
        if not wanted:
            continue
        if opts.out is None:
            p.error(f"{flag} reads <--out>/results.json, and a --quick run has no folder of its own: give --out")
        path = os.path.join(opts.out, "results.json")
        if not os.path.isfile(path):
            p.error(f"{flag} reads {path}, which does not exist; point --out at the folder of a benchmark run's "
                    "results.json")


def parse(argv=None):
    p = build_parser()
    opts = p.parse_args(argv)
    opts.command = None
    opts.argv = list(sys.argv[1:] if argv is None else argv)
    opts.samplers, opts.schedules = ("euler", "heun", "dpmpp_2m"), ("edm", "sd")
    opts.classifier_steps, opts.real, opts.ev_samples, opts.ev_sigmas = 3000, 10000, 1000, EV_SIGMAS
    opts.model_ev_sigmas = (1.0, 2.0, 3.5, 5.0, 10.0, 20.0, 80.0)
    opts.ranks, opts.low_budget = (1, 4, 16, 48), True
    opts.same_budget, opts.max_skip = (10.0, 5.0, 3.0), None
    opts.variants = QUALITY_VARIANTS
    opts.guidance_scales, opts.guidance_runs = guidance.GUIDANCE_SCALES, guidance.GUIDANCE_RUNS
    opts.guidance_variants = guidance.VARIANTS
    opts.sweep, opts.sweep_samples, opts.sweep_seeds = model_moments.SWEEP, 1000, model_moments.SWEEP_SEEDS
    if opts.quick:
        opts.samples, opts.sets = min(opts.samples, 32), min(opts.sets, 2)
        opts.samplers, opts.schedules = ("euler",), ("sd",)
        opts.classifier_steps, opts.real, opts.ev_samples = 100, 300, 64
        opts.ev_sigmas, opts.model_ev_sigmas, opts.ranks, opts.low_budget = (0.5, 5.0, 50.0), (5.0,), (4,), False
        opts.same_budget, opts.max_skip = (5.0,), 2
        opts.guidance_scales, opts.guidance_runs = (3.0,), (("euler", "sd"),)
        opts.sweep, opts.sweep_samples, opts.sweep_seeds = {"sigma": (10.0,)}, 32, 1
    if opts.out is None and not (opts.quick and not opts.report_only):
        opts.out = RESULTS      # a quick run's temporary folder is made (and removed) by main
    check_out(p, opts)
    return opts


def save_progress(results, opts, seconds):
    """Each model's numbers as soon as they exist (results.partial.json), so a stopped run loses only the
    model it was on: finish it with --models <the rest> --reuse after renaming the file to results.json."""
    if opts.reuse:
        return
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "results.partial.json"), "w", encoding="utf-8") as f:
        json.dump({"command": "python -m gaussian_teleport.bench.run " + " ".join(opts.argv), "seconds": seconds,
                   "results": results, "calibration": None}, f, default=str)


def load_saved(out: str, flag: str) -> dict:
    path = os.path.join(out, "results.json")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {flag} reads {path}, which does not exist; point --out at the folder of a benchmark "
                         "run's results.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def restore_options(opts, saved: dict) -> None:
    """The saved run's sizes, which the reports quote."""
    for key, value in saved.get("options", {}).items():
        setattr(opts, key, value)


def main(argv=None):
    opts = parse(argv)
    if opts.out is not None:
        if os.path.realpath(opts.out) == os.path.realpath(RESULTS):    # said up front, not found out afterwards
            log(f"writing into {RESULTS}: the reports replace the committed ones (give --out FOLDER to write "
                "elsewhere)")
        return run(opts)
    with tempfile.TemporaryDirectory(prefix="teleport-bench-") as folder:   # a quick run leaves nothing behind
        opts.out = folder
        try:
            return run(opts)
        finally:
            log(f"removed {folder} (a quick run keeps nothing; give --out FOLDER to keep its reports)")


def run(opts):
    if opts.report_only:
        saved = load_saved(opts.out, "--report-only")
        opts.command, results, seconds = saved["command"], saved["results"], saved["seconds"]
        restore_options(opts, saved)
        calibration_result = saved.get("calibration")
    else:
        saved = load_saved(opts.out, "--reuse") if opts.reuse else None   # read before the work, not after it
        start = time.time()
        results = []
        for name in opts.models:
            results.append(run_model(name, opts))
            save_progress(results, opts, time.time() - start)
        if opts.reuse:
            results = merge_saved(saved, results, opts)
        calibration_result = run_calibration(results, opts) if "calibration" in opts.parts else None
        if opts.reuse and calibration_result is None:
            calibration_result = saved.get("calibration")
        seconds = time.time() - start + (saved["seconds"] if opts.reuse else 0)
    write_reports(results, calibration_result, opts, seconds)
    with open(os.path.join(opts.out, "summary.md"), encoding="utf-8") as f:
        print(f.read())
    log(f"reports in {opts.out}")
    return results


def merge_saved(saved: dict, results: list[dict], opts) -> list[dict]:
    """The saved run's models with this run's parts over them; the record names both runs."""
    fresh = {r["model"]: r for r in results}
    merged = [{**r, **fresh.pop(r["model"], {})} for r in saved["results"]] + list(fresh.values())
    opts.command = f"{saved['command']}` then `python -m gaussian_teleport.bench.run {' '.join(opts.argv)}"
    restore_options(opts, saved)
    return merged


if __name__ == "__main__":
    main()
