"""A schedule from the moments' spectrum against Karras at the same calls, for the Gaussian solver and a plain
sampler: ``python -m gaussian_teleport.bench.spectrum_schedule [--quick]``.

Every schedule runs over Stable Diffusion's Karras range (σ 14.6 → 0.029, times σ_data: bench/solvers.py's
``sd`` schedule) with the same ends, so one converged solution per configuration serves them all. The
spectrum schedules (``scheduler.schedules.spectrum_sigmas``) space the steps by the moments' Gaussian:
``order`` p gives each step an equal share of a p-th order method's local error on the Gaussian's own ODE,
and ``mix`` blends in Karras's step density by that share. Error: the paired RMSE to the converged solution
from the same noise (bench/solvers.py's models, noise, converged solve and budgets in model calls), with
the standard error of the paired difference to Karras over the samples.

    python -m gaussian_teleport.bench.spectrum_schedule                    # replaces bench/results/spectrum_schedule.md/.json
    python -m gaussian_teleport.bench.spectrum_schedule --out FOLDER       # elsewhere
    python -m gaussian_teleport.bench.spectrum_schedule --quick            # smoke run into a temporary folder
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

from ..reference import GuidedDenoiser, load_reference
from ..scheduler.schedules import spectrum_sigmas
from . import RESULTS, default_folder, write_markdown
from .solvers import Counter, converged, gaussian, inputs, make_schedule, plain

CONFIGS = (("digits", 1.0), ("patches", None))
BUDGETS = (5, 6, 8, 10, 15, 20)
SAMPLERS = ("gaussian", "dpmpp_2m")
# name: spectrum_sigmas options (None: Karras, the baseline)
SCHEDULES = {
    "karras": None,
    "spectrum p1": dict(order=1),
    "spectrum p2": dict(order=2),
    "spectrum p1, mix 0.5": dict(order=1, mix=0.5),
    "spectrum p2, mix 0.5": dict(order=2, mix=0.5),
    "explained variance, mix 0.5": dict(measure="variance", mix=0.5),
}


def builder(name):
    return gaussian({}) if name == "gaussian" else plain(name)


def sigmas_for(schedule: str, moments, steps: int, sigma_data: float) -> torch.Tensor:
    karras = make_schedule("sd", steps, sigma_data)
    options = SCHEDULES[schedule]
    if options is None:
        return karras
    return spectrum_sigmas(moments, steps, float(karras[-2]), float(karras[0]), **options)


def paired_errors(x: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-sample RMSE to the converged solution (the mean of these is bench/solvers.py's error)."""
    return ((x.detach() - truth) ** 2).flatten(1).mean(1).sqrt()


@torch.no_grad()
def run_config(ref, cfg, noise, labels, budgets, samplers, schedules, log):
    """{sampler: {schedule: [row per budget]}}, each row with the error and the paired difference to Karras."""
    sd = ref.sigma_data
    base = ref.model if cfg is None or cfg == 1.0 else GuidedDenoiser(ref.model, cfg)
    extra = {"class_labels": labels} if labels is not None else {}
    model = lambda x, s, **kw: base(x.float(), s.float(), **kw).double()        # noqa: E731  (as bench/solvers.py)
    ctx = {"moments": ref.moments, "sigma_data": sd, "param": "ve"}
    end = float(make_schedule("sd", 2, sd)[-2])
    if any(float(make_schedule("sd", b, sd)[-2]) != end for b in budgets):
        raise RuntimeError("the sd schedule's last noise level depends on the steps; one converged solution "
                           "would not serve every budget")
    start = time.perf_counter()
    truth = converged(model, noise.double(), "sd", sd, {end}, extra)[end]
    log(f"  converged solution in {time.perf_counter() - start:.0f} s")
    out = {}
    for sampler in samplers:
        out[sampler] = {}
        base_errs = {}
        for schedule in schedules:
            rows = []
            for b in budgets:
                fn, steps = builder(sampler)(ctx, b)
                sigmas = sigmas_for(schedule, ref.moments, steps, sd)
                counted = Counter(model)
                x = fn(counted, noise.double() * float(sigmas[0]), sigmas, extra_args=extra, disable=True)
                errs = paired_errors(x, truth)
                row = {"budget": b, "calls": counted.calls, "error": float(errs.mean()),
                       "sigmas": [round(float(s), 5) for s in sigmas[:-1]]}
                if schedule == "karras":
                    base_errs[b] = errs
                else:
                    diff = errs - base_errs[b]
                    row["diff"] = float(diff.mean())
                    row["diff_se"] = float(diff.std() / math.sqrt(len(diff)))
                rows.append(row)
            out[sampler][schedule] = rows
            log(f"  {sampler:9s} {schedule:22s} " + " ".join(f"{r['error']:.4f}" for r in rows))
    return out


def run(opts, log=print) -> dict:
    results = {"budgets": list(opts.budgets), "samples": opts.samples, "schedules": SCHEDULES,
               "samplers": list(SAMPLERS), "configs": []}
    for name, cfg in CONFIGS:
        if name not in opts.models:
            continue
        ref = load_reference(name)
        noise, labels = inputs(ref, opts.samples)
        log(f"[{name} cfg {cfg or '–'} sd]")
        start = time.perf_counter()
        rows = run_config(ref, cfg, noise, labels, opts.budgets, SAMPLERS, SCHEDULES, log)
        results["configs"].append({"model": name, "cfg": cfg, "schedule": "sd", "rows": rows,
                                   "seconds": time.perf_counter() - start})
    return results


# ----------------------------------------------------------------------------
# Report.


def verdict(row) -> str:
    """The error as a share of Karras's at the same calls, starred where the paired difference is over 2 SE."""
    ratio = row["error"] / (row["error"] - row["diff"])
    sure = abs(row["diff"]) > 2 * row["diff_se"]
    return f"{ratio:.2f}{'*' if sure else ''}"


def best_spectrum(rows_by_schedule, i):
    cands = [(r[i]["error"], s) for s, r in rows_by_schedule.items() if s != "karras"]
    return min(cands)


def report(results) -> list[str]:
    budgets = results["budgets"]
    lines = ["# A schedule from the moments' spectrum against Karras", "",
             f"`{results.get('command', 'python -m gaussian_teleport.bench.spectrum_schedule')}` "
             f"({results.get('seconds', 0):.0f} s): {results['samples']} samples per configuration, "
             "the same noise for every run; every schedule spans the SD Karras range (σ 14.6 → 0.029 × σ_data) with the "
             "same ends; error = paired RMSE to the converged solution (bench/solvers.py's 200-step Heun solve); "
             "budgets in model calls. Spectrum schedules: `spectrum_sigmas(moments, n, σ_min, σ_max, order=p, mix=m)` "
             "(scheduler/schedules.py): step density in log σ ∝ ‖∂ᵖD_G/∂(log σ)ᵖ‖^(1/(p+1)) of the moments' Gaussian "
             "denoiser along its own flow (equal shares of a p-th order step's local error), blended with Karras's "
             "density by the share m.", ""]
    lines += ["## Against Karras at the same calls", "",
              "Each cell: the error as a share of Karras's error for the same sampler and calls (< 1: the spectrum "
              "schedule is better); * where the paired difference exceeds twice its standard error over the samples.",
              "", "| model | CFG | sampler | schedule | " + " | ".join(f"{b} calls" for b in budgets) + " |",
              "|---|---|---|---|" + "---|" * len(budgets)]
    for c in results["configs"]:
        for sampler, by_schedule in c["rows"].items():
            for schedule, rows in by_schedule.items():
                if schedule == "karras":
                    continue
                lines.append(f"| {c['model']} | {c['cfg'] or '–'} | {sampler} | {schedule} | "
                             + " | ".join(verdict(r) for r in rows) + " |")
    lines += ["", "## Errors", ""]
    for c in results["configs"]:
        lines += [f"### {c['model']}, CFG {c['cfg'] or '–'} ({c['seconds']:.0f} s)", "",
                  "| sampler | schedule | " + " | ".join(f"{b}" for b in budgets) + " |",
                  "|---|---|" + "---|" * len(budgets)]
        for sampler, by_schedule in c["rows"].items():
            for schedule, rows in by_schedule.items():
                lines.append(f"| {sampler} | {schedule} | " + " | ".join(f"{r['error']:.4f}" for r in rows) + " |")
            cells = []
            for i in range(len(budgets)):
                err, name = best_spectrum(by_schedule, i)
                cells.append(f"{name} ({err / by_schedule['karras'][i]['error']:.2f})")
            lines.append(f"| {sampler} | **best spectrum** | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Geometric mean over the budgets of the error as a share of Karras's", "",
              "| sampler | schedule | " + " | ".join(f"{c['model']}" for c in results["configs"]) + " | all |",
              "|---|---|" + "---|" * (len(results["configs"]) + 1)]
    samplers = results["configs"][0]["rows"] if results["configs"] else {}
    for sampler in samplers:
        for schedule in samplers[sampler]:
            if schedule == "karras":
                continue
            logs = [[math.log(r["error"] / c["rows"][sampler]["karras"][i]["error"])
                     for i, r in enumerate(c["rows"][sampler][schedule])] for c in results["configs"]]
            cells = [f"{math.exp(sum(v) / len(v)):.2f}" for v in logs]
            every = [x for v in logs for x in v]
            lines.append(f"| {sampler} | {schedule} | " + " | ".join(cells) + f" | {math.exp(sum(every) / len(every)):.2f} |")
    lines += ["", "## Summary", ""]
    for c in results["configs"]:
        for sampler, by_schedule in c["rows"].items():
            for schedule, rows in by_schedule.items():
                if schedule == "karras":
                    continue
                ratios = [r["error"] / by_schedule["karras"][i]["error"] for i, r in enumerate(rows)]
                wins = sum(r["diff"] < 0 and abs(r["diff"]) > 2 * r["diff_se"] for r in rows)
                losses = sum(r["diff"] > 0 and abs(r["diff"]) > 2 * r["diff_se"] for r in rows)
                lines.append(f"- {c['model']} CFG {c['cfg'] or '–'}, {sampler}, {schedule}: error {min(ratios):.2f}–"
                             f"{max(ratios):.2f}× Karras's; better (> 2 SE) at {wins} of {len(rows)} budgets, worse "
                             f"at {losses}.")
    lines += ["", "Schedules: " + "; ".join(f"{k}: {v or 'get_sigmas_karras (ρ 7)'}"
                                             for k, v in results["schedules"].items()), ""]
    return lines


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m gaussian_teleport.bench.spectrum_schedule",
                                description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 8 samples, digits only, budgets 5 and 8; writes to "
                   "a temporary folder")
    p.add_argument("--samples", type=int, default=300, help="samples per configuration")
    p.add_argument("--models", nargs="+", default=[m for m, _ in CONFIGS], choices=[m for m, _ in CONFIGS])
    p.add_argument("--out", default=None, help="folder for spectrum_schedule.md/.json (default: bench/results; "
                   "--quick: a temporary folder)")
    p.add_argument("--report-only", action="store_true", help="rewrite spectrum_schedule.md from <--out>/"
                   "spectrum_schedule.json")
    opts = p.parse_args(argv)
    opts.argv = list(sys.argv[1:] if argv is None else argv)
    if opts.samples < 2:
        p.error(f"--samples must be at least 2, got {opts.samples}")
    opts.budgets = BUDGETS
    if opts.quick:
        if opts.out is not None and os.path.realpath(opts.out) == os.path.realpath(RESULTS) and not opts.report_only:
            p.error("--quick would replace the committed spectrum_schedule results with a smoke run's; give another "
                    "--out, or drop --quick")
        opts.samples, opts.models, opts.budgets = 8, ["digits"], (5, 8)
    if opts.out is None:
        opts.out = default_folder(opts.quick)
    return opts


def main(argv=None):
    opts = parse(argv)
    path = os.path.join(opts.out, "spectrum_schedule.json")
    if opts.report_only:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    else:
        start = time.perf_counter()
        results = run(opts)
        results["seconds"] = time.perf_counter() - start
        results["command"] = " ".join(["python -m gaussian_teleport.bench.spectrum_schedule", *opts.argv])
        os.makedirs(opts.out, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    write_markdown(os.path.join(opts.out, "spectrum_schedule.md"), report(results))
    return results


if __name__ == "__main__":
    main()
