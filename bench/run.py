"""Run the teleport benchmark: ``python -m gaussian_teleport.bench.run`` (``--quick`` for a smoke test).

For each reference model: (a) explained variance of the Gaussian denoiser by moments structure and
rank across σ; (b) Fréchet distance (classifier features) and paired RMSE versus model calls for
euler, heun and dpmpp_2m on the EDM and a Stable-Diffusion-like schedule, plain and with teleport in
both schedule modes; (c) the largest saving at a quality within the seed noise of the baseline;
(d) on the class-conditional model, the same under classifier-free guidance with class accuracy.
Writes markdown tables, PNG plots and the raw numbers (results.json) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time

import torch

from ..reference import REFERENCE_MODELS, GuidedDenoiser, load_reference
from ..reference.data import load_dataset, load_patches
from ..scheduler import Handoff
from .explained import EV_SIGMAS, explained_variance_table, moment_variants
from .features import accuracy, features, gaussian_stats, train_classifier
from .quality import (LOW_STEPS, STEPS, Run, class_moments, configurations, evaluate, real_floor, sample_by_class,
                      sample_run, seed_sets)

GUIDANCE_SCALES = (1.0, 3.0)
GUIDANCE_RUNS = (("heun", "edm"), ("dpmpp_2m", "sd"))
GUIDANCE_HANDOFFS = (10.0, 5.0, 3.0)


def mean(v):
    return statistics.fmean(v)


def std(v):
    return statistics.stdev(v) if len(v) > 1 else 0.0


def pm(v, digits=2):
    return f"{mean(v):.{digits}f} ± {std(v):.{digits}f}"


# ----------------------------------------------------------------------------
# Running.


def run_model(name: str, opts) -> dict:
    torch.manual_seed(0)
    ref = load_reference(name)
    model, sd = ref.model, ref.sigma_data
    data = load_dataset(name, seed=0)
    if name == "patches":
        real = load_patches(count=opts.real, seed=1).images
        fresh = lambda k: load_patches(count=opts.samples, seed=2 + k).images
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

    log(f"[{name}] explained variance")
    ev_images = real[: opts.ev_samples]
    variants = moment_variants(data.images, ranks=opts.ranks)
    result["ev"] = explained_variance_table(model, ev_images, variants, sd, opts.ev_sigmas)

    noise = seed_sets(opts.sets, opts.samples, ref.shape)
    rows = []
    with torch.no_grad():
        for schedule in opts.schedules:
            for sampler in opts.samplers:
                budgets = [(STEPS[sampler], True)] + ([(LOW_STEPS[sampler], False)] if opts.low_budget else [])
                for steps, save in budgets:
                    base = None
                    for run in configurations(sampler, schedule, steps, sd, save=save,
                                              same_budget=opts.same_budget, max_skip=opts.max_skip):
                        x, calls, sec, land = sample_run(run, model, noise, sd, ref.moments)
                        base = x if run.mode == "plain" else base
                        m = evaluate(x, base, classifier, real_stats, opts.sets)
                        rows.append({"sampler": sampler, "schedule": schedule, "steps": steps, "mode": run.mode,
                                     "handoff": str(run.handoff) if run.handoff else "", "calls": calls,
                                     "seconds": sec, "handoff_sigma_data": land, **m})
                        log(f"[{name}] {sampler:8s} {schedule:3s} {steps:2d} {run.mode:11s} "
                            f"{rows[-1]['handoff']:12s} calls {calls:2d}  FD {pm(m['fd'])}  "
                            f"RMSE {mean(m['rmse']):.4f}  {sec:.1f}s")
    result["rows"] = rows
    if ref.model.cfg.num_classes and opts.guidance:
        result["guidance"] = run_guidance(ref, data, classifier, real_stats, noise, opts)
    return result


def run_guidance(ref, data, classifier, real_stats, noise, opts) -> list:
    """(d) CFG on the class-conditional model: teleport with the unconditional vs. class Gaussians."""
    sd, classes = ref.sigma_data, ref.model.cfg.num_classes
    labels = torch.arange(len(noise)) % classes
    class_means = torch.stack([data.images[data.labels == c].double().mean(0) for c in range(classes)])
    rows = []
    with torch.no_grad():
        for w in opts.guidance_scales:
            guided = ref.model if w == 1.0 else GuidedDenoiser(ref.model, w)
            for sampler, schedule in opts.guidance_runs:
                steps = STEPS[sampler]
                plain = Run(sampler, schedule, steps)
                base, calls, sec, land = sample_run(plain, guided, noise, sd, None, {"class_labels": labels})
                runs = [("plain", "", base, calls, sec, land)]
                for ratio in opts.guidance_handoffs:
                    run = Run(sampler, schedule, steps, "save", Handoff("sigma", round(ratio * sd, 4)))
                    x, calls, sec, land = sample_run(run, guided, noise, sd, ref.moments, {"class_labels": labels})
                    runs.append(("unconditional Gaussian", str(run.handoff), x, calls, sec, land))
                    moments_for = lambda c: class_moments(ref.moments, class_means[c], w)
                    x, calls, sec, land = sample_by_class(run, guided, noise, labels, sd, moments_for)
                    runs.append(("class Gaussian (μ_w)", str(run.handoff), x, calls, sec, land))
                for kind, handoff, x, calls, sec, land in runs:
                    m = evaluate(x, base, classifier, real_stats, opts.sets, labels)
                    rows.append({"cfg": w, "sampler": sampler, "schedule": schedule, "steps": steps, "teleport": kind,
                                 "handoff": handoff, "calls": calls, "seconds": sec, "handoff_sigma_data": land, **m})
                    log(f"[guidance w={w:g}] {sampler} {schedule} {kind:24s} {handoff:12s} calls {calls:2d} "
                        f"acc {mean(m['acc']):.3f}  FD {pm(m['fd'])}  RMSE {mean(m['rmse']):.4f}")
    return rows


# ----------------------------------------------------------------------------
# Verdicts.


def within_noise(row, base) -> bool:
    """Quality held: the paired FD increase is at most the baseline's spread over seed sets."""
    delta = [a - b for a, b in zip(row["fd"], base["fd"])]
    return mean(delta) <= max(std(base["fd"]), 1e-12)


STRICT_TOLERANCE = 0.02   # share of the plain FD a strict verdict tolerates beyond the paired noise


def undetectable(row, base) -> bool:
    """Stricter: the paired FD increase is at most 2% of the plain FD plus 2 standard errors of the pairs."""
    delta = [a - b for a, b in zip(row["fd"], base["fd"])]
    return mean(delta) <= STRICT_TOLERANCE * mean(base["fd"]) + 2 * std(delta) / len(delta) ** 0.5


def largest_saving(rows, base, verdict):
    """The save-mode run with the most skipped steps such that it and every smaller skip pass ``verdict``."""
    best = base
    for r in (r for r in rows if r["mode"] == "save"):
        if not verdict(r, base):
            break
        best = r
    return best


def group(rows, sampler, schedule, steps):
    return [r for r in rows if (r["sampler"], r["schedule"], r["steps"]) == (sampler, schedule, steps)]


def measured_groups(rows, steps_of):
    """(schedule, sampler, its rows at steps_of[sampler], the plain run) for every configuration measured."""
    for schedule in dict.fromkeys(r["schedule"] for r in rows):
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            g = group(rows, sampler, schedule, steps_of[sampler])
            if g:
                yield schedule, sampler, g, next(r for r in g if r["mode"] == "plain")


def bottom_line(result) -> list[dict]:
    """(c) Per sampler and schedule: the largest save-mode skip with every smaller skip within noise."""
    out = []
    for schedule, sampler, g, base in measured_groups(result["rows"], STEPS):
        best = largest_saving(g, base, within_noise)
        strict = largest_saving(g, base, undetectable)
        budget = [r for r in g if r["mode"] == "same_budget"]
        top = min(budget, key=lambda r: mean(r["fd"])) if budget else None
        out.append({"model": result["model"], "sampler": sampler, "schedule": schedule, "base": base,
                    "best": best, "strict": strict, "same_budget": top})
    return out


# ----------------------------------------------------------------------------
# Reports.


def table(headers, lines) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def ev_markdown(result) -> str:
    ev = result["ev"]
    names = [k for k in ev[0] if k not in ("sigma/sigma_data", "sigma")]
    fmt = lambda v: "< 0" if v < 0 else f"{v:.4f}"
    lines = [[f"{r['sigma/sigma_data']:g}", f"{r['sigma']:.3g}"] + [fmt(r[n]) for n in names] for r in ev]
    return table(["σ/σ_data", "σ"] + [f"score EV {n}" if "denoiser" not in n else n for n in names], lines)


def quality_markdown(result) -> str:
    lines = []
    for r in result["rows"]:
        base = next(b for b in group(result["rows"], r["sampler"], r["schedule"], r["steps"]) if b["mode"] == "plain")
        delta = [a - b for a, b in zip(r["fd"], base["fd"])]
        held = "" if r["mode"] == "plain" else ("yes" if within_noise(r, base) else "**no**")
        lines.append([r["sampler"], r["schedule"], r["steps"], r["mode"], r["handoff"] or "–",
                      f"{r['handoff_sigma_data']:.3g}", r["calls"], pm(r["fd"]),
                      "–" if r["mode"] == "plain" else pm(delta), f"{mean(r['rmse']):.4f}", held])
    return table(["sampler", "schedule", "steps", "mode", "hand-off", "sampler starts at σ/σ_data", "model calls",
                  "FD (mean ± std over seed sets)", "ΔFD vs same-seed plain", "paired RMSE", "within noise"], lines)


def summary_lines(results) -> list[list]:
    lines = []
    for result in results:
        for b in bottom_line(result):
            base, best, strict, top = b["base"], b["best"], b["strict"], b["same_budget"]
            saving = lambda r: f"{r['calls']} (−{base['calls'] - r['calls']}, {1 - r['calls'] / base['calls']:.0%})"
            delta = [a - c for a, c in zip(best["fd"], base["fd"])]
            sb = "–"
            if top is not None:
                sb = f"{pm(top['fd'])} (hand-off {top['handoff_sigma_data']:.3g}σ_data)"
            lines.append([b["model"], b["sampler"], b["schedule"], base["calls"], pm(base["fd"]), saving(best),
                          f"{best['handoff_sigma_data']:.3g}" if best is not base else "–",
                          pm(delta) if best is not base else "–", f"{mean(best['rmse']):.4f}",
                          f"{saving(strict)} at {strict['handoff_sigma_data']:.3g}" if strict is not base else "none",
                          sb])
    return lines


def low_budget_lines(results) -> list[list]:
    lines = []
    for result in results:
        for schedule, sampler, g, base in measured_groups(result["rows"], LOW_STEPS):
            for r in (r for r in g if r["mode"] == "same_budget"):
                delta = [a - c for a, c in zip(r["fd"], base["fd"])]
                lines.append([result["model"], sampler, schedule, base["calls"], pm(base["fd"]),
                              f"{r['handoff_sigma_data']:.3g}", pm(r["fd"]), pm(delta),
                              "better" if mean(delta) < -std(base["fd"]) else
                              ("worse" if mean(delta) > std(base["fd"]) else "same")])
    return lines


def guidance_markdown(rows) -> str:
    lines = [[f"{r['cfg']:g}", r["sampler"], r["schedule"], r["teleport"], r["handoff"] or "–",
              f"{r['handoff_sigma_data']:.3g}", r["calls"], pm(r["acc"], 3), pm(r["fd"]), f"{mean(r['rmse']):.4f}"]
             for r in rows]
    return table(["CFG w", "sampler", "schedule", "teleport", "hand-off", "sampler starts at σ/σ_data",
                  "model calls", "class accuracy", "FD", "paired RMSE"], lines)


SUMMARY_HEADERS = ["model", "sampler", "schedule", "plain calls", "plain FD", "teleport calls (saved)",
                   "hand-off σ/σ_data", "ΔFD (paired)", "paired RMSE", "strict: calls at hand-off σ/σ_data",
                   "best same-budget FD"]
LOW_HEADERS = ["model", "sampler", "schedule", "calls", "plain FD", "same-budget hand-off σ/σ_data",
               "teleport FD", "ΔFD (paired)", "verdict"]


def write_reports(results, opts, seconds):
    out = opts.out
    os.makedirs(out, exist_ok=True)
    command = opts.command or "python -m gaussian_teleport.bench.run " + " ".join(shlex.quote(a) for a in opts.argv)
    parts = [f"# Teleport benchmark results\n\nCommand: `{command}` ({seconds / 60:.1f} min on {platform.machine()} "
             f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}).\n",
             f"Samples: {opts.sets} seed sets × {opts.samples} per configuration, the same seeds for every "
             "configuration. FD: Fréchet distance in the 64 penultimate features of a classifier trained on the "
             "data. \"Within noise\": the paired FD increase over the same-seed plain run is at most the plain "
             "run's standard deviation over seed sets.\n"]
    parts.append("\"Strict\": the paired FD increase is at most 2% of the plain FD plus 2 standard errors of the paired "
                 "differences. "
                 "\"Hand-off σ/σ_data\": the σ where the sampler takes over (the jump lands on a schedule σ).\n")
    for r in results:
        parts.append(f"- {r['model']}: σ_data {r['sigma_data']:.4g}; largest eigenvalue's std √λ_max = "
                     f"{r['sqrt_lambda_max']:.3g} σ_data; real-vs-real FD floor {pm(r['floor'])} "
                     f"({r['floor_kind']}); feature classifier accuracy {r['classifier_accuracy']:.3f} on "
                     f"{r['classifier_accuracy_on']}.")
    parts += ["\n## (c) The bottom line: largest saving within noise (save mode)\n",
              table(SUMMARY_HEADERS, summary_lines(results))]
    if opts.low_budget:
        parts += ["\n## Same budget at ≤ 10 model calls\n", table(LOW_HEADERS, low_budget_lines(results))]
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
    for r in results:
        name = r["model"]
        with open(os.path.join(out, f"{name}_explained_variance.md"), "w", encoding="utf-8") as f:
            f.write(f"# {name}: explained variance of the Gaussian denoiser\n\n{len(r['ev'])} noise "
                    f"levels, {opts.ev_samples} real images each; score EV = 1 − ‖D_nn − D_G‖² / spread of "
                    f"D_nn − x (the paper's figure); denoiser EV = the same error over the spread of D_nn.\n\n"
                    + ev_markdown(r) + "\n")
        with open(os.path.join(out, f"{name}_quality.md"), "w", encoding="utf-8") as f:
            f.write(f"# {name}: quality versus model calls\n\nReal-vs-real FD floor {pm(r['floor'])}.\n\n"
                    + quality_markdown(r) + "\n")
        if r.get("guidance"):
            with open(os.path.join(out, f"{name}_guidance.md"), "w", encoding="utf-8") as f:
                f.write(f"# {name}: classifier-free guidance\n\nLabels: sample i gets class i mod 10. The class "
                        "Gaussian shares the unconditional covariance, mean μ_w = μ_u + w(μ_c − μ_u). Paired RMSE "
                        "against the same-seed plain guided run.\n\n" + guidance_markdown(r["guidance"]) + "\n")
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"command": command, "seconds": seconds, "results": results}, f, indent=1, default=str)
    if not opts.no_plots:
        from .plots import plot_explained_variance, plot_quality
        for r in results:
            plot_explained_variance(r, os.path.join(out, f"{r['model']}_explained_variance.png"))
            plot_quality(r, os.path.join(out, f"{r['model']}_quality.png"))


def log(msg):
    print(msg, flush=True)


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m gaussian_teleport.bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, one sampler (under a minute)")
    p.add_argument("--models", nargs="+", choices=REFERENCE_MODELS, default=list(REFERENCE_MODELS))
    p.add_argument("--samples", type=int, default=1000, help="samples per seed set")
    p.add_argument("--sets", type=int, default=4, help="seed sets")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the tables and plots from --out/results.json without sampling again")
    opts = p.parse_args(argv)
    opts.command = None
    opts.argv = list(sys.argv[1:] if argv is None else argv)
    opts.samplers, opts.schedules = ("euler", "heun", "dpmpp_2m"), ("edm", "sd")
    opts.classifier_steps, opts.real, opts.ev_samples, opts.ev_sigmas = 3000, 10000, 1000, EV_SIGMAS
    opts.ranks, opts.low_budget, opts.guidance = (1, 4, 16, 48), True, True
    opts.same_budget, opts.max_skip = (10.0, 5.0, 3.0), None
    opts.guidance_scales, opts.guidance_runs, opts.guidance_handoffs = GUIDANCE_SCALES, GUIDANCE_RUNS, GUIDANCE_HANDOFFS
    if opts.quick:
        opts.samples, opts.sets = min(opts.samples, 64), min(opts.sets, 2)
        opts.samplers, opts.schedules = ("euler",), ("sd",)
        opts.classifier_steps, opts.real, opts.ev_samples = 150, 500, 128
        opts.ev_sigmas, opts.ranks, opts.low_budget = (0.5, 5.0, 50.0), (4,), False
        opts.same_budget, opts.max_skip = (5.0,), 2
        opts.guidance_scales, opts.guidance_runs, opts.guidance_handoffs = (3.0,), (("euler", "sd"),), (5.0,)
    return opts


def main(argv=None):
    opts = parse(argv)
    if opts.report_only:
        with open(os.path.join(opts.out, "results.json"), encoding="utf-8") as f:
            saved = json.load(f)
        opts.command, results, seconds = saved["command"], saved["results"], saved["seconds"]
        opts.low_budget = any(r["steps"] == LOW_STEPS[r["sampler"]] for x in results for r in x["rows"])
    else:
        start = time.time()
        results = [run_model(name, opts) for name in opts.models]
        seconds = time.time() - start
    write_reports(results, opts, seconds)
    with open(os.path.join(opts.out, "summary.md"), encoding="utf-8") as f:
        print(f.read())
    return results


if __name__ == "__main__":
    main()
