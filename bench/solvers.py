"""Fixed-budget solvers: error against model calls for the strongest plain samplers, teleport and the
Gaussian solver, on the reference models. ``python -m gaussian_teleport.bench.solvers [--quick]``.

Every sampler starts from the same noise; its error is the paired RMSE to the converged solution of the
same ODE (a 200-step Heun solve from that noise to the schedule's last noise level, then the model's
x0 there, which is where every sampler's last step lands). FD: Fréchet distance of classifier features
to the real data (one set of ``--samples``). Budgets count every model call (a guided call is one).

Schedules: ``edm`` (Karras, σ 80 → 0.002 for σ_data 0.5), ``sd`` (Karras over Stable Diffusion's range,
14.6 → 0.029, times σ_data), ``sd_normal`` (Stable Diffusion's discrete sigmas, timesteps evenly
spaced: the "normal" scheduler), ``flow`` (rectified-flow times with shift 3, run on the VE model
through x_t = (1 − t)·x0 + t·ε, as SD3/Flux sample).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from ..moments import DenseMoments
from ..reference import GuidedDenoiser, load_reference
from ..reference.data import load_dataset
from ..scheduler import Handoff, get_sigmas_flow, get_sigmas_karras, make_teleport_sampler, sample_heun
from ..scheduler.multistep import MULTISTEP_SAMPLERS
from ..scheduler.samplers import SAMPLERS
from ..scheduler.solver import make_gaussian_sampler
from . import RESULTS, default_folder, write_markdown
from .features import features, frechet_distance, gaussian_stats, train_classifier

BUDGETS = (4, 5, 6, 8, 10, 12, 15, 20, 30)
SCHEDULES = ("edm", "sd", "sd_normal", "flow")
CONFIGS = (("digits", 1.0), ("digits", 3.0), ("digits", 5.0), ("digits", 7.0), ("patches", None))
PEERS = ("euler", "heun", "dpmpp_2m", "ipndm", "ipndm_v", "deis", "uni_pc_bh2")
TELEPORT_HANDOFFS = (2.0, 5.0, 10.0)          # same-budget hand-off σ in units of σ_data; the best is kept
TELEPORT = {"mode": "same_budget", "mean": "model", "handoffs": list(TELEPORT_HANDOFFS)}   # written to the results
FINE_STEPS = 200
FLOW_SHIFT = 3.0
FLOW_CAP = 1e4                                # t = 1 is evaluated at this VE noise level (the model's limit)
FLOW_END = 1e-4     # a flow schedule's last t grows as the steps shrink (shift 3, 4 steps: t 0.5): its error is
                    # measured against the solution at t = 1e-4 (≈ the ODE's end), not at each schedule's last t

# The Gaussian solver's forms: the default first, then the ones measured against it.
GAUSSIAN = {
    "gaussian": dict(),
    "gaussian order 1": dict(order=1),
    "gaussian order 2": dict(order=2),
    "gaussian, model mean": dict(mean="model"),
    "gaussian, mean residual + corrector": dict(residual="mean", corrector=True),
    "gaussian, mean residual, order 2, model mean": dict(residual="mean", order=2, mean="model"),
    "gaussian, data residual": dict(residual="data"),
    "gaussian, residual linear in σ": dict(order=2, variable="sigma"),
}


# ----------------------------------------------------------------------------
# Schedules and the flow view of a VE model.


def sd_discrete_sigmas(sigma_data: float = 1.0) -> torch.Tensor:
    """Stable Diffusion's 1,000 training noise levels (scaled-linear betas 0.00085 → 0.012), in VE terms."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    return ((1 - alphas) / alphas).sqrt() * sigma_data


def get_sigmas_sd_normal(n: int, sigma_data: float = 1.0) -> torch.Tensor:
    """The "normal" scheduler: n timesteps evenly spaced from 999 to 0, σ interpolated in log σ, then 0."""
    table = sd_discrete_sigmas(sigma_data).log()
    t = torch.linspace(999, 0, n, dtype=torch.float64)
    lo, frac = t.floor().long(), t - t.floor()
    hi = (lo + 1).clamp(max=999)
    sig = ((1 - frac) * table[lo] + frac * table[hi]).exp()
    return torch.cat([sig, sig.new_zeros(1)])


def make_schedule(name: str, steps: int, sigma_data: float) -> torch.Tensor:
    if name == "edm":
        k = sigma_data / 0.5
        return get_sigmas_karras(steps, 0.002 * k, 80.0 * k)
    if name == "sd":
        return get_sigmas_karras(steps, 0.0292 * sigma_data, 14.6146 * sigma_data)
    if name == "sd_normal":
        return get_sigmas_sd_normal(steps, sigma_data)
    if name == "flow":
        return get_sigmas_flow(steps, FLOW_SHIFT)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")


class FlowView:
    """A VE denoiser seen as a flow model: D(x_t, t) = D_ve(x_t/(1 − t), t/(1 − t)); t = 1 at FLOW_CAP."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, t, **kw):
        t = t.clamp(max=FLOW_CAP / (1 + FLOW_CAP))
        nu = t / (1 - t)
        return self.model(x / (1 - t).view(-1, 1, 1, 1), nu, **kw)


# ----------------------------------------------------------------------------
# Samplers at a budget.


def plain(name):
    fn = {**SAMPLERS, **MULTISTEP_SAMPLERS}[name]
    steps = (lambda b: (b + 1) // 2) if name == "heun" else (lambda b: b)
    return lambda ctx, b: (fn, steps(b))


def teleport(inner, ratio):
    def build(ctx, b):
        fn = make_teleport_sampler(inner, ctx["moments"], Handoff("sigma", ratio * ctx["sigma_data"]),
                                   mode=TELEPORT["mode"], mean=TELEPORT["mean"], parameterization=ctx["param"])
        return fn, b - 1                      # the model mean's probe is one of the budget's calls
    build.handoff = ratio                     # recorded with the row it wins (σ_data units)
    return build


def gaussian(options):
    return lambda ctx, b: (make_gaussian_sampler(ctx["moments"], parameterization=ctx["param"], **options), b)


def method_table():
    """{name: [builders]}: a method with several builders is scored at the best of them per budget."""
    table = {p: [plain(p)] for p in PEERS}
    table["teleport + dpmpp_2m (best hand-off)"] = [teleport(SAMPLERS["dpmpp_2m"], r) for r in TELEPORT_HANDOFFS]
    table["teleport + ipndm (best hand-off)"] = [teleport(MULTISTEP_SAMPLERS["ipndm"], r) for r in TELEPORT_HANDOFFS]
    table.update({name: [gaussian(opts)] for name, opts in GAUSSIAN.items()})
    return table


class Counter:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, s, **kw):
        self.calls += 1
        return self.model(x, s, **kw)


# ----------------------------------------------------------------------------
# One configuration: model × CFG × schedule.


def converged(model, noise, schedule, sigma_data, ends, extra):
    """{σ_end: x0 of the fine solve from the noise to σ_end}: one Heun pass over a grid holding every end."""
    top = make_schedule(schedule, 2, sigma_data)[0]
    if schedule == "flow":
        grid = get_sigmas_flow(FINE_STEPS, FLOW_SHIFT)[:-1]
        grid = torch.cat([grid, torch.logspace(math.log10(float(grid[-1])), math.log10(FLOW_END), 40,
                                               dtype=torch.float64)[1:]])   # fine down to the end
    else:
        grid = get_sigmas_karras(FINE_STEPS, min(ends), float(top))
    grid = torch.unique(torch.cat([grid, torch.tensor(sorted(ends), dtype=torch.float64)])).flip(0)
    x = noise * float(top) if schedule != "flow" else noise.clone()
    out = {}
    for a, b in zip(grid[:-1], grid[1:]):
        x = sample_heun(model, x, torch.stack([a, b]), extra_args=extra, disable=True)
        if float(b) in ends:
            out[float(b)] = model(x, b.expand(len(x)).to(x.dtype), **extra)
    return out


@torch.no_grad()
def run_config(ref, cfg, schedule, noise, labels, classifier, real_stats, budgets, log, methods=None):
    """{method: [best row per budget]}; ``methods`` a subset of method_table(); FD only with a classifier."""
    sd = ref.sigma_data
    base = ref.model if cfg is None or cfg == 1.0 else GuidedDenoiser(ref.model, cfg)
    extra = {"class_labels": labels} if labels is not None else {}
    model = (lambda x, s, **kw: base(x.float(), s.float(), **kw).double())
    moments = ref.moments
    if schedule == "flow":
        model = FlowView(model)
    ctx = {"moments": moments, "sigma_data": sd, "param": "flow" if schedule == "flow" else "ve"}
    methods = method_table() if methods is None else methods
    ends = {FLOW_END} if schedule == "flow" else set()
    for b in budgets if schedule != "flow" else ():
        for builders in methods.values():
            for build in builders:
                steps = build(ctx, b)[1]
                if steps >= 1:
                    ends.add(float(make_schedule(schedule, steps, sd)[-2]))
    start = time.perf_counter()
    truth = converged(model, noise.double(), schedule, sd, ends, extra)
    log(f"  converged solutions in {time.perf_counter() - start:.0f} s")
    rows = {}
    for name, builders in methods.items():
        rows[name] = []
        for b in budgets:
            best = None
            for build in builders:
                fn, steps = build(ctx, b)
                if steps < 1:
                    continue
                sigmas = make_schedule(schedule, steps, sd)
                if name.startswith("teleport") and float(sigmas[0]) <= 0:
                    continue
                counted = Counter(model)
                x0 = noise.double() * (float(sigmas[0]) if schedule != "flow" else 1.0)
                try:
                    x = fn(counted, x0, sigmas, extra_args=extra, disable=True)
                except ValueError:         # a hand-off above the schedule's start: not a candidate
                    continue
                ref_x = truth[FLOW_END if schedule == "flow" else float(sigmas[-2])]
                err = float(((x.detach() - ref_x) ** 2).flatten(1).mean(1).sqrt().mean())
                if not math.isfinite(err):
                    err = math.inf
                if best is None or err < best["error"]:
                    best = {"budget": b, "calls": counted.calls, "error": err, "x": x}
                    if hasattr(build, "handoff"):
                        best["handoff"] = build.handoff
            if best is not None and classifier is None:
                best.pop("x")
            elif best is not None:
                best["fd"] = (frechet_distance(gaussian_stats(features(classifier, best.pop("x").float())),
                                               real_stats) if math.isfinite(best["error"]) else math.inf)
            rows[name].append(best)
        log("  " + f"{name:40s} " + " ".join("   –  " if r is None else f"{r['error']:.4f}" for r in rows[name]))
    return rows


def inputs(ref, samples: int):
    """The noise every method starts from, and the class labels of a conditional model (else None)."""
    gen = torch.Generator().manual_seed(1234)
    noise = torch.randn((samples, *ref.shape), generator=gen)
    return noise, (torch.arange(samples) % 10 if ref.model.cfg.num_classes else None)


def selected(opts, config) -> bool:
    return (config["model"] in opts.models and config["schedule"] in opts.schedules
            and (opts.cfgs is None or config["cfg"] is None or config["cfg"] in opts.cfgs))


def fill_handoffs(opts, log=print) -> dict:
    """Record which hand-off won each teleport row of <--out>/solvers.json (results from before rows kept it).

    Reruns only the teleport methods of the selected configurations that lack it (no FD), and refuses a
    rerun whose errors or calls differ from the committed ones (relative 1e-6): the results are reproduced,
    not replaced.
    """
    path = os.path.join(opts.out, "solvers.json")
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    teleports = {k: v for k, v in method_table().items() if k.startswith("teleport")}
    refs = {}
    for c in results["configs"]:
        todo = [r for m in teleports for r in c["rows"].get(m, []) if r is not None and "handoff" not in r]
        if not selected(opts, c) or not todo:
            continue
        if c["model"] not in refs:
            ref = load_reference(c["model"])
            refs[c["model"]] = (ref, *inputs(ref, results["samples"]))
        ref, noise, labels = refs[c["model"]]
        log(f"[{c['model']} cfg {c['cfg'] or '–'} {c['schedule']}] teleport rows only")
        rows = run_config(ref, c["cfg"], c["schedule"], noise, labels, None, None, results["budgets"], log,
                          methods=teleports)
        worst = 0.0
        for m in teleports:
            for old, new in zip(c["rows"][m], rows[m]):
                if old is None and new is None:
                    continue
                if old is None or new is None or old["calls"] != new["calls"] or not math.isclose(
                        old["error"], new["error"], rel_tol=1e-6):
                    raise RuntimeError(f"{c['model']} cfg {c['cfg']} {c['schedule']} {m}: the rerun gives {new}, "
                                       f"the results {old}; not reproduced, nothing written for it")
                worst = max(worst, abs(new["error"] - old["error"]) / old["error"])
                old["handoff"] = new["handoff"]
        results.setdefault("teleport", TELEPORT)
        log(f"  reproduced (largest relative difference {worst:.1e}); hand-offs recorded")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return results


def run(opts, log=print) -> dict:
    results = {"budgets": list(opts.budgets), "samples": opts.samples, "fine_steps": FINE_STEPS,
               "forms": {k: v for k, v in GAUSSIAN.items()}, "teleport": TELEPORT, "configs": []}
    for name in opts.models:
        ref = load_reference(name)
        data = load_dataset(name, seed=0)
        torch.manual_seed(0)
        classifier = train_classifier(data.images, data.labels, data.num_classes, steps=opts.classifier_steps)
        real_stats = gaussian_stats(features(classifier, data.images))
        noise, labels = inputs(ref, opts.samples)
        for model_name, cfg in CONFIGS:
            if model_name != name or (opts.cfgs is not None and cfg not in opts.cfgs and cfg is not None):
                continue
            for schedule in opts.schedules:
                log(f"[{name} cfg {cfg or '–'} {schedule}]")
                start = time.perf_counter()
                rows = run_config(ref, cfg, schedule, noise, labels, classifier, real_stats, opts.budgets, log)
                results["configs"].append({"model": name, "cfg": cfg, "schedule": schedule, "rows": rows,
                                           "seconds": time.perf_counter() - start})
    return results


# ----------------------------------------------------------------------------
# Reports.

PROJECT = ("gaussian",)     # the project's method; teleport rows are reported beside it


def best_peer(rows, i):
    peers = [(rows[p][i]["error"], p) for p in PEERS if rows[p][i] is not None]
    return min(peers)


SHORT = {"teleport + dpmpp_2m (best hand-off)": "teleport+dpmpp_2m", "teleport + ipndm (best hand-off)": "teleport+ipndm"}


def winner(rows, i) -> str:
    err, name = min((r[i]["error"], n) for n, r in rows.items() if r[i] is not None)
    peer = best_peer(rows, i)[0]
    at = f" @{rows[name][i]['handoff']:g}" if "handoff" in rows[name][i] else ""
    return f"{SHORT.get(name, name)}{at} ({err / peer:.2f})"


def matching_calls(rows, name, target):
    """The fewest calls at which ``name`` reaches an error ≤ target (None if no budget does)."""
    for r in rows[name]:
        if r is not None and r["error"] <= target:
            return r["calls"]
    return None


def report(results) -> list[str]:
    budgets = results["budgets"]
    lines = ["# Fixed-budget solvers", "",
             f"`python -m gaussian_teleport.bench.solvers`: {results['samples']} samples per configuration, the same "
             f"noise for every sampler; error = paired RMSE to the converged solution ({results['fine_steps']}-step "
             "Heun to the schedule's last noise level, then the model's x0); FD in classifier features. Budgets "
             "count every model call (teleport's model-mean probe included).", ""]
    lines += ["## The winner at each budget (lowest error of every method measured)", "",
              "| model | CFG | schedule | " + " | ".join(f"{b}" for b in budgets) + " |",
              "|---|---|---|" + "---|" * len(budgets)]
    for c in results["configs"]:
        lines.append(f"| {c['model']} | {c['cfg'] or '–'} | {c['schedule']} | "
                     + " | ".join(winner(c["rows"], i) for i in range(len(budgets))) + " |")
    lines += ["", "Each cell: the winner (@h: teleport's hand-off in σ_data, where recorded) and its error as a "
              "share of the best plain sampler's (1 = a plain sampler wins). What the product recommends from "
              "these: `recommendations.md` (`python -m gaussian_teleport.bench.recommend`).", ""]
    lines += ["## The Gaussian solver (default) against the best plain sampler at each budget", "",
              "| model | CFG | schedule | " + " | ".join(f"{b} calls" for b in budgets) + " |",
              "|---|---|---|" + "---|" * len(budgets)]
    for c in results["configs"]:
        rows = c["rows"]
        cells = []
        for i, b in enumerate(budgets):
            g = rows["gaussian"][i]
            e, p = best_peer(rows, i)
            cells.append(f"{g['error']:.4f} / {e:.4f} {p} (**{g['error'] / e:.2f}×**)")
        lines.append(f"| {c['model']} | {c['cfg'] or '–'} | {c['schedule']} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell: the Gaussian solver's error / the best plain sampler's error and its name (ratio).", ""]
    lines += ["## Calls to match DPM++ 2M at 10 and 20 calls", "",
              "| model | CFG | schedule | DPM++ 2M error at 10 / 20 | gaussian | best plain sampler | "
              "teleport + ipndm |", "|---|---|---|---|---|---|---|"]
    for c in results["configs"]:
        rows, cells = c["rows"], []
        i10, i20 = budgets.index(10) if 10 in budgets else None, budgets.index(20) if 20 in budgets else None
        targets = [rows["dpmpp_2m"][i]["error"] if i is not None else None for i in (i10, i20)]
        def calls(name):
            return " / ".join("–" if t is None else str(matching_calls(rows, name, t) or f"> {budgets[-1]}")
                              for t in targets)
        best = min(PEERS, key=lambda p: sum(r["error"] for r in rows[p] if r is not None))
        lines.append(f"| {c['model']} | {c['cfg'] or '–'} | {c['schedule']} | "
                     + " / ".join("–" if t is None else f"{t:.4f}" for t in targets)
                     + f" | {calls('gaussian')} | {calls(best)} ({best}) | {calls('teleport + ipndm (best hand-off)')} |")
    lines += ["", "## Every method, every configuration (error, FD)", ""]
    for c in results["configs"]:
        rows = c["rows"]
        lines += [f"### {c['model']}, CFG {c['cfg'] or '–'}, {c['schedule']} ({c['seconds']:.0f} s)", "",
                  "| method | " + " | ".join(f"{b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for name, rs in rows.items():
            cells = ["–" if r is None else f"{r['error']:.4f} ({r['fd']:.1f})" for r in rs]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        winners = []
        for i in range(len(budgets)):
            cands = [(r[i]["error"], n) for n, r in rows.items() if r[i] is not None]
            winners.append(min(cands)[1])
        lines.append("| **winner** | " + " | ".join(winners) + " |")
        lines.append("")
    lines += ["Gaussian forms (options of `sample_gaussian`): "
              + "; ".join(f"{k}: {v or 'the defaults'}" for k, v in results["forms"].items()), ""]
    return lines


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    configs = results["configs"]
    cols = 4
    rows_n = math.ceil(len(configs) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
    shown = ("dpmpp_2m", "ipndm", "uni_pc_bh2", "teleport + ipndm (best hand-off)", "gaussian")
    for ax, c in zip(axes.flat, configs):
        for name in shown:
            pts = [(r["calls"], r["error"]) for r in c["rows"][name] if r is not None and math.isfinite(r["error"])]
            ax.loglog(*zip(*pts), marker="o", ms=3, label=name, lw=2 if name == "gaussian" else 1)
        ax.set_title(f"{c['model']} cfg {c['cfg'] or '–'} {c['schedule']}", fontsize=9)
        ax.set_xlabel("model calls")
        ax.set_ylabel("RMSE to converged")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(configs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m gaussian_teleport.bench.solvers",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 16 samples, one configuration, 3 budgets; "
                   "writes to a temporary folder")
    p.add_argument("--samples", type=int, default=500, help="samples per configuration")
    p.add_argument("--models", nargs="+", default=["digits", "patches"], choices=["digits", "patches"])
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    p.add_argument("--cfgs", nargs="+", type=float, default=None, help="digits CFG scales (default: 1 3 5 7)")
    p.add_argument("--out", default=None, help="folder for solvers.md/.json/.png (default: bench/results; "
                   "--quick: a temporary folder)")
    p.add_argument("--report-only", action="store_true", help="rewrite solvers.md/.png from <--out>/solvers.json")
    p.add_argument("--fill-handoffs", action="store_true", help="record the winning hand-off in <--out>/solvers.json's "
                   "teleport rows that lack it (reruns those rows only, for --models/--schedules/--cfgs, and checks "
                   "they reproduce the stored errors), then rewrite solvers.md/.png")
    opts = p.parse_args(argv)
    if opts.samples < 2:
        p.error(f"--samples must be at least 2, got {opts.samples}")
    opts.budgets, opts.classifier_steps = BUDGETS, 3000
    if opts.quick:
        opts.samples, opts.models, opts.schedules, opts.cfgs = 16, ["digits"], ["sd"], [1.0]
        opts.budgets, opts.classifier_steps = (4, 8, 12), 50
    if opts.out is None:
        opts.out = default_folder(opts.quick)
    return opts


def main(argv=None):
    opts = parse(argv)
    if opts.fill_handoffs:
        if not os.path.isfile(os.path.join(opts.out, "solvers.json")):
            raise SystemExit(f"--fill-handoffs: no solvers.json in {opts.out}")
        fill_handoffs(opts)
        opts.report_only = True
    if opts.report_only:
        with open(os.path.join(opts.out, "solvers.json"), encoding="utf-8") as f:
            results = json.load(f)
        write_markdown(os.path.join(opts.out, "solvers.md"), report(results))
        plot(results, os.path.join(opts.out, "solvers.png"))
        return results
    start = time.perf_counter()
    results = run(opts)
    results["seconds"] = time.perf_counter() - start
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "solvers.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    write_markdown(os.path.join(opts.out, "solvers.md"), report(results))
    plot(results, os.path.join(opts.out, "solvers.png"))
    print(f"done in {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
