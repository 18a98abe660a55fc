"""The benchmark's markdown reports and raw numbers (results.json), written from the results alone."""

from __future__ import annotations

import json
import os
import platform
import shlex

import torch

from .calibration import SAMPLES, quality_held
from .quality import LOW_STEPS, STEPS, largest_saving, mean, paired_delta, std, unchanged


def pm(v, digits=2):
    return f"{mean(v):.{digits}f} ± {std(v):.{digits}f}"


def table(headers, lines) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def groups(rows, steps_of=STEPS):
    """(sampler, schedule, rows of that configuration at steps_of[sampler], the plain row) in measured order."""
    for schedule in dict.fromkeys(r["schedule"] for r in rows):
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            g = [r for r in rows if (r["sampler"], r["schedule"], r["steps"]) == (sampler, schedule, steps_of[sampler])]
            if g:
                yield sampler, schedule, g, next(r for r in g if r["mode"] == "plain")


def variants_of(rows) -> list[str]:
    return [v for v in dict.fromkeys(r["variant"] for r in rows) if v != "plain"]


def saving(row, base) -> str:
    if row is base:
        return "none"
    return (f"{row['calls']} (−{1 - row['calls'] / base['calls']:.0%}) at {row['handoff_sigma_data']:.3g}σ_d, "
            f"RMSE {mean(row['rmse']):.4f}")


def bottom_line(rows, verdict) -> list[list]:
    """Per configuration and variant: the most calls saved with every smaller skip passing ``verdict``."""
    lines = []
    for sampler, schedule, g, base in groups(rows):
        for variant in variants_of(g):
            vrows = [base] + [r for r in g if r["variant"] == variant and r["mode"] == "save"]
            best = largest_saving(vrows, base, verdict)
            lines.append([sampler, schedule, base["calls"], pm(base["fd"]), f"{mean(base['rmse_fine']):.4f}", variant,
                          saving(best, base)])
    return lines


BOTTOM_HEADERS = ["sampler", "schedule", "plain calls", "plain FD", "plain's discretisation error (RMSE vs 2× steps)",
                  "teleport", "fewest calls (saved) at hand-off, paired RMSE"]


def quality_markdown(result) -> str:
    lines = []
    for r in result["rows"]:
        base = next(b for b in result["rows"] if (b["sampler"], b["schedule"], b["steps"], b["mode"]) ==
                    (r["sampler"], r["schedule"], r["steps"], "plain"))
        plain = r["mode"] == "plain"
        lines.append([r["sampler"], r["schedule"], r["steps"], r["variant"], r["mode"], r["handoff"] or "–",
                      f"{r['handoff_sigma_data']:.3g}", r["calls"], pm(r["fd"]),
                      "–" if plain else pm(paired_delta(r, base)), f"{mean(r['rmse']):.4f}",
                      "–" if plain else ("yes" if quality_held(r, base) else "**no**"),
                      "–" if plain or "rmse_fine" not in base else ("yes" if unchanged(r, base) else "no")])
    return table(["sampler", "schedule", "steps", "teleport", "mode", "hand-off", "sampler starts at σ/σ_data",
                  "model calls", "FD (mean ± std over seed sets)", "ΔFD vs same-seed plain", "paired RMSE",
                  "quality held", "unchanged"], lines)


def low_budget_lines(result) -> list[list]:
    lines = []
    for sampler, schedule, g, base in groups(result["rows"], LOW_STEPS):
        for r in (r for r in g if r["mode"] == "same_budget"):
            delta = paired_delta(r, base)
            lines.append([result["model"], sampler, schedule, r["variant"], base["calls"], pm(base["fd"]),
                          f"{r['handoff_sigma_data']:.3g}", r["calls"], pm(r["fd"]), pm(delta),
                          "better" if mean(delta) < -std(base["fd"]) else
                          ("worse" if mean(delta) > std(base["fd"]) else "same")])
    return lines


LOW_HEADERS = ["model", "sampler", "schedule", "teleport", "plain calls", "plain FD", "hand-off σ/σ_data",
               "teleport calls", "teleport FD", "ΔFD (paired)", "verdict"]


def guidance_bottom_line(rows) -> list[list]:
    lines = []
    for w in dict.fromkeys(r["cfg"] for r in rows):
        wr = [r for r in rows if r["cfg"] == w]
        for sampler, schedule, g, base in groups(wr):
            for variant in variants_of(g):
                vrows = [base] + [r for r in g if r["variant"] == variant]
                held = largest_saving(vrows, base, quality_held)
                same = largest_saving(vrows, base, unchanged)
                lines.append([f"{w:g}", sampler, schedule, base["calls"], f"{mean(base['rmse_fine']):.4f}",
                              pm(base["fd"]), pm(base["acc"], 3), variant, saving(same, base), saving(held, base)])
    return lines


GUIDANCE_HEADERS = ["CFG w", "sampler", "schedule", "plain calls", "plain's discretisation error", "plain FD",
                    "plain class accuracy", "teleport", "unchanged: fewest calls (RMSE ≤ discretisation error, ΔFD "
                    "within noise)", "quality held: fewest calls (strict, within noise)"]


def guidance_markdown(rows) -> str:
    lines = []
    for r in rows:
        base = next(b for b in rows if (b["cfg"], b["sampler"], b["schedule"], b["mode"]) ==
                    (r["cfg"], r["sampler"], r["schedule"], "plain"))
        lines.append([f"{r['cfg']:g}", r["sampler"], r["schedule"], r["variant"], r["handoff"] or "–",
                      f"{r['handoff_sigma_data']:.3g}", r["calls"], pm(r["acc"], 3), pm(r["fd"]),
                      "–" if r is base else pm(paired_delta(r, base)), f"{mean(r['rmse']):.4f}"])
    return table(["CFG w", "sampler", "schedule", "teleport", "hand-off", "sampler starts at σ/σ_data", "model calls",
                  "class accuracy", "FD", "ΔFD (paired)", "paired RMSE"], lines)


def ev_markdown(ev) -> str:
    names = [k for k in ev[0] if k not in ("sigma/sigma_data", "sigma")]
    fmt = lambda v: "< 0" if v < 0 else f"{v:.4f}"  # noqa: E731
    lines = [[f"{r['sigma/sigma_data']:g}", f"{r['sigma']:.3g}"] + [fmt(r[n]) for n in names] for r in ev]
    return table(["σ/σ_data", "σ"] + [f"score EV {n}" if "denoiser" not in n else n for n in names], lines)


def sweep_markdown(rows) -> str:
    lines = [[r["varied"], r["value"] + (" (default)" if r["default"] else ""), r["calls"], r["evaluations"],
              " / ".join(pm(x, 3) for x in r["ratio"])] for r in rows]
    return table(["setting", "value", "model calls", "evaluations (samples)",
                  "paired RMSE over the data moments' at hand-off 10 / 5 σ_data (1 = as good; mean ± std of "
                  "3 estimates)"], lines)


def cost_markdown(rows) -> str:
    lines = [[r["latent"], r["structure"], r["calls"], r["evaluations"], f"{r['images_equivalent']:.0f}"]
             for r in rows]
    return table(["latent", "structure", "batched model calls", "evaluations (samples)",
                  "as many evaluations as generating N images at 20 steps"], lines)


def calibration_markdown(cal) -> tuple[str, str]:
    v = cal["validation"]
    yes = lambda b: "yes" if b else "**no**"
    fd = lambda x: "–" if x is None else f"{100 * x:+.1f}%"
    lines = [[r["model"], r["sampler"], r["schedule"], "–" if r["cfg"] is None else f"{r['cfg']:g}", r["best"],
              r["recommended"], fd(r.get("fd_change")), yes(r["passes"]), yes(r.get("unchanged")),
              yes(r["within_one"]), f"{r['calls_spent']} ({r['calls_spent'] / r['calls_plain']:.1f}×)",
              r["summary"]] for r in v]
    head = ["model", "sampler", "schedule", "CFG w", "best passing steps replaced", "recommended", "paired ΔFD",
            "quality held", "unchanged", "within one step", "calls spent (× plain)", "calibration says"]
    verdict = (f"{sum(r['passes'] for r in v)}/{len(v)} recommendations hold quality (strict and within noise), "
               f"{sum(bool(r.get('unchanged')) for r in v)}/{len(v)} leave the image unchanged, "
               f"{sum(r['within_one'] for r in v)}/{len(v)} lie within one step of the best passing hand-off; "
               f"cost at most {max(r['calls_spent'] / r['calls_plain'] for r in v):.1f}× one plain generation's calls.")
    rows = cal["tolerances"]
    tol = [[r["scale"], f"{r['tolerance']:g}", f"{r['pass']}/{r['configs']}",
            f"{r['unchanged']}/{r['configs']}" if "unchanged" in r else "–",
            f"{r['within_one']}/{r['configs']}", r["steps_replaced"]] for r in rows]
    tol_table = table(["change over", "tolerance", "recommendation holds quality", "unchanged",
                       "within one step of the best", "steps replaced (all configurations)"], tol)
    return table(head, lines) + "\n\n" + verdict, tol_table + "\n\n" + tolerance_window(rows)


def tolerance_window(rows) -> str:
    """Per scale: the largest tolerance whose recommendations all hold quality, the smallest with ≥ 90% of
    them within one step of the best (the two cannot both hold when the first is below the second)."""
    out = []
    for scale in dict.fromkeys(r["scale"] for r in rows):
        mine = sorted((r for r in rows if r["scale"] == scale), key=lambda r: r["tolerance"])
        safe = [r["tolerance"] for r in mine if r["pass"] == r["configs"]]
        near = [r["tolerance"] for r in mine if r["within_one"] >= 0.9 * r["configs"]]
        out.append(f"- *{scale}*: every recommendation holds quality up to tolerance "
                   f"{max(safe):g}" if safe else f"- *{scale}*: no tolerance scored keeps every recommendation")
        out[-1] += (f"; 90% within one step of the best needs at least {min(near):g}." if near
                    else "; none scored reaches 90% within one step of the best.")
    return "\n".join(out)


def write_reports(results, cal, opts, seconds):
    out = opts.out
    os.makedirs(out, exist_ok=True)
    command = opts.command or "python -m gaussian_teleport.bench.run " + " ".join(shlex.quote(a) for a in opts.argv)
    parts = [f"# Teleport benchmark results\n\nCommand: `{command.strip()}` ({seconds / 60:.1f} min on "
             f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}).\n",
             f"Samples: {opts.sets} seed sets × {opts.samples} per configuration, the same seeds for every "
             "configuration. FD: Fréchet distance in the 64 penultimate features of a classifier trained on the "
             "data. Verdicts are paired (same seeds): \"quality held\" = the paired FD increase is at most 2% of the "
             "plain FD plus 2 standard errors of the paired differences (strict) *and* at most the plain run's "
             "standard deviation over seed sets (within noise); \"unchanged\" = the paired RMSE to the plain run is "
             "at most the plain sampler's own discretisation error (its paired RMSE to the same sampler with twice "
             "the steps) and ΔFD is within the seed noise. The mean from the model costs one model call, counted.\n"]
    for r in results:
        parts.append(f"- {r['model']}: σ_data {r['sigma_data']:.4g}; largest eigenvalue's std √λ_max = "
                     f"{r['sqrt_lambda_max']:.3g} σ_data; real-vs-real FD floor {pm(r['floor'])} "
                     f"({r['floor_kind']}); feature classifier accuracy {r['classifier_accuracy']:.3f} on "
                     f"{r['classifier_accuracy_on']}; moments read off the model: {r['model_moments']['model_calls']} "
                     f"calls (batch {r['model_moments']['batch_sizes']}), rank {r['model_moments'].get('rank', '')}.")
    for r in results:
        if r.get("rows"):
            parts += [f"\n## (c) {r['model']}: fewest model calls with quality held (save mode)\n",
                      table(BOTTOM_HEADERS, bottom_line(r["rows"], quality_held)),
                      f"\n### {r['model']}: fewest calls with the image unchanged\n",
                      table(BOTTOM_HEADERS, bottom_line(r["rows"], unchanged))]
    low = [line for r in results if r.get("rows") for line in low_budget_lines(r)]
    if low:
        parts += ["\n## Same budget at ≤ 10 model calls\n", table(LOW_HEADERS, low)]
    for r in results:
        if r.get("guidance"):
            parts += [f"\n## (d) {r['model']}: classifier-free guidance\n",
                      table(GUIDANCE_HEADERS, guidance_bottom_line(r["guidance"]))]
    validation, tolerances = calibration_markdown(cal) if cal else (None, None)
    if cal:
        parts += ["\n## (f) Calibration at the default tolerance\n", validation]
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
    for r in results:
        name = r["model"]
        if r.get("ev"):
            with open(os.path.join(out, f"{name}_explained_variance.md"), "w", encoding="utf-8") as f:
                f.write(f"# {name}: explained variance of the Gaussian denoiser\n\n{len(r['ev'])} noise levels, "
                        f"{opts.ev_samples} real images each; score EV = 1 − ‖D_nn − D_G‖² / spread of D_nn − x (the "
                        "paper's figure); denoiser EV = the same error over the spread of D_nn.\n\n"
                        + ev_markdown(r["ev"]) + "\n\n## Moments read off the model against the data's\n\n"
                        + ev_markdown(r["model_ev"]) + "\n")
        if r.get("rows"):
            with open(os.path.join(out, f"{name}_quality.md"), "w", encoding="utf-8") as f:
                f.write(f"# {name}: quality versus model calls\n\nReal-vs-real FD floor {pm(r['floor'])}. The plain "
                        "rows' paired RMSE column is 0; their discretisation error is in summary.md.\n\n"
                        + quality_markdown(r) + "\n")
        if r.get("guidance"):
            with open(os.path.join(out, f"{name}_guidance.md"), "w", encoding="utf-8") as f:
                f.write(f"# {name}: classifier-free guidance\n\nLabels: sample i gets class i mod 10. The class "
                        "Gaussian shares the unconditional covariance, mean μ_w = μ_u + w(μ_c − μ_u). Paired RMSE "
                        "against the same-seed plain guided run.\n\n" + table(GUIDANCE_HEADERS,
                                                                               guidance_bottom_line(r["guidance"]))
                        + "\n\n## Every run\n\n" + guidance_markdown(r["guidance"]) + "\n")
        if r.get("sweep"):
            from .model_moments import cost_rows

            shape = load_shape(r)
            shapes = {f"{name} ({'×'.join(map(str, shape))})": shape}
            with open(os.path.join(out, f"{name}_model_moments.md"), "w", encoding="utf-8") as f:
                f.write(f"# {name}: moments read off the model (no images)\n\nEach row changes one setting from the "
                        "defaults; heun, EDM schedule, mean from the model, "
                        f"{opts.sweep_samples} samples.\n\n" + sweep_markdown(r["sweep"])
                        + "\n\n## Cost\n\n" + cost_markdown(cost_rows(shapes)) + "\n")
    if cal:
        with open(os.path.join(out, "calibration.md"), "w", encoding="utf-8") as f:
            f.write("# Calibration: the default tolerance and its validation\n\n"
                    f"calibrate_handoff on {SAMPLES} fresh noise samples per configuration (the product's path: data "
                    "moments, mean from the model). \"Quality held\": the recommended hand-off passes the benchmark's "
                    "paired verdict (strict and within noise); \"unchanged\": its paired RMSE is within the plain "
                    "sampler's own discretisation error and its ΔFD within the seed noise; \"best\": the most steps "
                    "replaced with every smaller replacement holding quality. Scales: *spread* = paired RMSE over the "
                    "spread between samples; *steps* = paired RMSE over the plain run's RMSE to every other step of "
                    "its schedule.\n\n## The default tolerance, validated\n\n" + validation + "\n\n## Tolerances "
                    "scored (what the bisection would recommend on the measured change curves)\n\n" + tolerances
                    + "\n")
    partial = os.path.join(out, "results.partial.json")
    if os.path.exists(partial):
        os.remove(partial)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"command": command, "seconds": seconds, "options": {k: getattr(opts, k) for k in SAVED_OPTIONS},
                   "results": results, "calibration": cal}, f, indent=1, default=str)
    if not opts.no_plots:
        from .plots import plot_explained_variance, plot_quality
        for r in results:
            if r.get("ev"):
                plot_explained_variance(r, os.path.join(out, f"{r['model']}_explained_variance.png"))
            if r.get("rows"):
                plot_quality(r, os.path.join(out, f"{r['model']}_quality.png"))


SAVED_OPTIONS = ("samples", "sets", "ev_samples", "sweep_samples")   # what the reports quote about the run


def load_shape(result) -> tuple:
    cfg = result["record"].get("config", {})
    return (cfg.get("channels", 1), cfg.get("size", 8), cfg.get("size", 8))


__all__ = ["write_reports", "bottom_line"]
