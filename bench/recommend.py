"""The method to use at each budget, derived from the committed fixed-budget benchmark; no model is run.

    python -m gaussian_teleport.bench.recommend            # rewrite the two files below from solvers.json
    python -m gaussian_teleport.bench.recommend --check    # exit 1 if either differs from what it would write

Reads ``bench/results/solvers.json`` (written by ``python -m gaussian_teleport.bench.solvers``) and writes
``scheduler/recommendations.py``, the table that ``gaussian_teleport.scheduler.recommend.recommend_sampler``
and ``python -m gaussian_teleport.scheduler recommend`` answer from, and ``bench/results/recommendations.md``,
the tables the README shows. Both are generated: change this rule or rerun the benchmark, never the files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pprint
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOLVERS_JSON = os.path.join(HERE, "results", "solvers.json")
TABLE_PY = os.path.normpath(os.path.join(HERE, os.pardir, "scheduler", "recommendations.py"))
REPORT_MD = os.path.join(HERE, "results", "recommendations.md")
COMMAND = "python -m gaussian_teleport.bench.recommend"

WIN_MARGIN = 0.95
RULE = ("For a schedule, a CFG scale and a budget, every reference model measured there counts (CFG 1: digits "
        "and patches; CFG 3, 5 and 7: digits, the class-conditional one). A method's score is its worst error "
        "ratio over those models, the ratio being its error over the best plain sampler's error on the same "
        "model. The teleport or Gaussian method with the lowest score is recommended if its score is at most "
        f"{WIN_MARGIN:g}× the lowest score of a plain sampler (with one model: it beats the best plain sampler by "
        "5% or more); otherwise the plain sampler with the lowest score is, as it needs no moments and no "
        "hand-off, and teleport is reported not to help there. Ties go to the lower sum of ratios.")

SCHEDULE_NAMES = {"edm": "Karras, σ 160 → 0.004 σ_data (EDM's 80 → 0.002 at σ_data 0.5)",
                  "sd": "Karras, σ 14.6 → 0.029 σ_data (Stable Diffusion's range)",
                  "sd_normal": "Stable Diffusion's \"normal\" scheduler: its discrete sigmas, timesteps evenly spaced",
                  "flow": "rectified-flow times, shift 3, as SD3 and Flux sample"}

SHORT = {"euler": "Euler", "heun": "Heun", "dpmpp_2m": "DPM++ 2M", "ipndm": "iPNDM", "ipndm_v": "iPNDM-v",
         "deis": "DEIS", "uni_pc_bh2": "UniPC", "teleport + dpmpp_2m (best hand-off)": "T+2M",
         "teleport + ipndm (best hand-off)": "T+iPNDM", "gaussian": "G", "gaussian order 1": "G1",
         "gaussian order 2": "G2", "gaussian, model mean": "G-mm", "gaussian, mean residual + corrector": "G-mrc",
         "gaussian, mean residual, order 2, model mean": "G-mr2mm", "gaussian, data residual": "G-dr",
         "gaussian, residual linear in σ": "G-σ"}


class ResultsError(ValueError):
    """solvers.json lacks something the recommendation needs."""


def kind(name: str, results: dict) -> str:
    """plain (a peer sampler), teleport (the jump + a sampler) or gaussian (a Gaussian-solver form)."""
    if name.startswith("teleport"):
        return "teleport"
    return "gaussian" if name in results["forms"] else "plain"


def cfg_of(config: dict) -> float:
    return 1.0 if config["cfg"] is None else float(config["cfg"])


def families(results: dict) -> list[tuple[str, float]]:
    """The (schedule, CFG) pairs measured, in the order of the results."""
    out = []
    for c in results["configs"]:
        if (c["schedule"], cfg_of(c)) not in out:
            out.append((c["schedule"], cfg_of(c)))
    return out


def error(config: dict, name: str, i: int) -> float:
    r = config["rows"][name][i]
    return math.inf if r is None else float(r["error"])


def best(config: dict, i: int, results: dict, kinds: tuple[str, ...]) -> tuple[str, float]:
    """(method, error): the lowest error at budget index i among the methods of ``kinds``."""
    err, name = min((error(config, m, i), m) for m in config["rows"] if kind(m, results) in kinds)
    return name, err


def ratio(config: dict, name: str, i: int, results: dict) -> float:
    """A method's error over the best plain sampler's on the same configuration and budget."""
    return error(config, name, i) / best(config, i, results, ("plain",))[1]


def method_options(name: str, config_rows: list[dict], results: dict) -> dict:
    """How to run ``name``: the Gaussian solver's options, or teleport's sampler, hand-off, mode and mean."""
    k = kind(name, results)
    if k == "gaussian":
        return dict(results["forms"][name])
    if k == "plain":
        return {}
    settings = results.get("teleport")
    handoffs = [r.get("handoff") for r in config_rows]
    if settings is None or None in handoffs:
        raise ResultsError(f"{name!r} is recommended but solvers.json does not record its hand-off: run "
                           "`python -m gaussian_teleport.bench.solvers --fill-handoffs` (reruns the teleport rows "
                           "only and checks they reproduce the committed errors)")
    handoff = handoffs[0] if len(set(handoffs)) == 1 else None
    out = {"sampler": re.match(r"teleport \+ (\w+)", name).group(1), "mode": settings["mode"],
           "mean": settings["mean"], "handoff_sigma_data": handoff}
    if handoff is None:     # a different hand-off won on each model: name each
        out["handoff_sigma_data_per_model"] = {r["model"]: h for r, h in zip(config_rows, handoffs)}
    return out


def recommend_cell(results: dict, schedule: str, cfg: float, i: int) -> dict:
    """The recommendation at (schedule, CFG, budget index i), by RULE."""
    configs = [c for c in results["configs"] if c["schedule"] == schedule and cfg_of(c) == cfg]
    names = list(configs[0]["rows"])
    rat = {m: [ratio(c, m, i, results) for c in configs] for m in names}
    key = {m: (max(rat[m]), sum(rat[m]), names.index(m)) for m in names}
    project = min((m for m in names if kind(m, results) != "plain"), key=key.get)
    plain = min((m for m in names if kind(m, results) == "plain"), key=key.get)
    helps = max(rat[project]) <= WIN_MARGIN * max(rat[plain])
    chosen = project if helps else plain
    models = []
    for c, r in zip(configs, rat[chosen]):
        row = c["rows"][chosen][i]
        peer, peer_err = best(c, i, results, ("plain",))
        models.append({"model": c["model"], "cfg": c["cfg"], "error": row["error"], "fd": row["fd"],
                       "calls": row["calls"], "ratio": r, "best_plain": peer, "best_plain_error": peer_err,
                       "plain_error": error(c, plain, i)})
    return {"method": chosen, "kind": kind(chosen, results), "helps": helps, "ratio": max(rat[chosen]),
            "options": method_options(chosen, [{"model": c["model"], **c["rows"][chosen][i]} for c in configs],
                                      results),
            "plain": plain, "plain_ratio": max(rat[plain]), "project": project, "project_ratio": max(rat[project]),
            "models": models}


def build_table(results: dict) -> dict:
    """{(schedule, CFG, budget): recommendation} for every family and budget measured."""
    return {(s, cfg, b): recommend_cell(results, s, cfg, i)
            for s, cfg in families(results) for i, b in enumerate(results["budgets"])}


# ----------------------------------------------------------------------------
# The two generated files.


def table_source(results: dict) -> str:
    """The text of scheduler/recommendations.py."""
    fams = families(results)
    models = {}
    for c in results["configs"]:
        models.setdefault(cfg_of(c), [])
        if c["model"] not in models[cfg_of(c)]:
            models[cfg_of(c)].append(c["model"])
    fmt = lambda obj: pprint.pformat(obj, width=116, sort_dicts=False)
    lines = ['"""Which method to use at each budget, schedule and CFG: GENERATED, do not edit.',
             "",
             f"Written by ``{COMMAND}`` from bench/results/solvers.json (the fixed-budget",
             "benchmark, ``python -m gaussian_teleport.bench.solvers``); a test checks that rerunning it reproduces",
             'this file byte for byte. Read it through ``recommend.recommend_sampler``."""',
             "",
             f"SOURCE = {'bench/results/solvers.json'!r}",
             f"COMMAND = {COMMAND!r}",
             f"SAMPLES = {results['samples']!r}",
             f"RULE = {fmt(RULE)}",
             f"WIN_MARGIN = {WIN_MARGIN!r}",
             f"BUDGETS = {tuple(results['budgets'])!r}",
             f"SCHEDULES = {fmt({s: SCHEDULE_NAMES.get(s, s) for s in dict.fromkeys(s for s, _ in fams)})}",
             f"CFGS = {tuple(sorted({cfg for _, cfg in fams}))!r}",
             f"MODELS = {fmt({cfg: tuple(m) for cfg, m in models.items()})}",
             f"TABLE = {fmt(build_table(results))}",
             ""]
    return "\n".join(lines)


def short(name: str) -> str:
    return SHORT.get(name, name)


WINS = 0.995     # a ratio shown as 0.99 or less (two decimals) counts as a win in the reports


def shown(r: float) -> str:
    """A ratio with two decimals, bold where it is a win."""
    return f"**{r:.2f}**" if r < WINS else f"{r:.2f}"


def cfg_label(config: dict) -> str:
    return "–" if config["cfg"] is None else f"{config['cfg']:g}"


def report_lines(results: dict) -> list[str]:
    """The text of bench/results/recommendations.md."""
    budgets, table = results["budgets"], build_table(results)
    head = "| " + " | ".join(f"{b}" for b in budgets) + " |"
    rule = "|---" * len(budgets) + "|"
    lines = ["# What to use at each budget", "",
             f"Generated by `{COMMAND}` from [`solvers.json`](solvers.json) (`python -m "
             f"gaussian_teleport.bench.solvers`: {results['samples']} samples per configuration, the same noise for "
             "every method, error = paired RMSE to the converged solution; every figure per method is in "
             "[`solvers.md`](solvers.md)). No model is run here.", "",
             "## The project's best against the best plain sampler", "",
             "| model | CFG | schedule " + head, "|---|---|---" + rule]
    for c in results["configs"]:
        cells = []
        for i in range(len(budgets)):
            ours, ours_err = best(c, i, results, ("teleport", "gaussian"))
            peer, peer_err = best(c, i, results, ("plain",))
            cells.append(f"{shown(ours_err / peer_err)} {short(ours)} · {short(peer)}")
        lines.append(f"| {c['model']} | {cfg_label(c)} | {c['schedule']} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell: the error of the best teleport or Gaussian-solver method (the project's best) over the "
              "error of the best plain sampler, at the same model calls; **bold** where the project's best wins (≤ 0.99); "
              "then "
              "the two methods. "
              + "; ".join(f"{v}: {k}" for k, v in SHORT.items() if kind(k, results) != "plain") + ". Plain: "
              + ", ".join(f"{v} ({k})" for k, v in SHORT.items() if kind(k, results) == "plain") + ".", ""]
    lines += ["## The Gaussian solver alone against the best plain sampler", "",
              "| model | CFG | schedule " + head, "|---|---|---" + rule]
    for c in results["configs"]:
        cells = []
        for i in range(len(budgets)):
            ours, ours_err = best(c, i, results, ("gaussian",))
            cells.append(f"{shown(ours_err / best(c, i, results, ('plain',))[1])} {short(ours)}")
        lines.append(f"| {c['model']} | {cfg_label(c)} | {c['schedule']} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell: the best of the Gaussian solver's forms, error over the best plain sampler's, and the form.",
              ""]
    lines += count_lines(results)
    lines += target_lines(results)
    lines += ["## What the product recommends (`python -m gaussian_teleport.scheduler recommend`)", "",
              "| schedule | CFG | models " + head, "|---|---|---" + rule]
    for s, cfg in families(results):
        cells = []
        for b in budgets:
            t = table[s, cfg, b]
            o = t["options"]
            hand = ([o["handoff_sigma_data"]] if o.get("handoff_sigma_data") is not None
                    else list(o.get("handoff_sigma_data_per_model", {}).values()))
            cells.append(("**" + short(t["method"]) + "**" if t["helps"] else short(t["method"]))
                         + (" @" + "/".join(f"{h:g}" for h in hand) if hand else "") + f" {t['ratio']:.2f}")
        models = " + ".join(m["model"] for m in table[s, cfg, budgets[0]]["models"])
        lines.append(f"| {s} | {cfg:g} | {models} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell: the method recommended (**bold**: a teleport or Gaussian method; @h: teleport's "
              "hand-off in σ_data, per model where they differ: digits/patches), and its worst error ratio to the "
              "best plain sampler over the models measured. " + RULE, ""]
    return lines


def count_lines(results: dict) -> list[str]:
    """How often the Gaussian solver and teleport beat the best plain sampler, by budget range."""
    out = ["## How often each beats the best plain sampler", "",
           "| budgets | cells | best Gaussian form wins | default Gaussian solver wins | project's best wins | "
           "project's best ≤ 0.85 |", "|---|---|---|---|---|---|"]
    budgets = results["budgets"]
    for label, lo, hi in (("4–8 calls", 4, 8), ("10–30 calls", 10, 30)):
        idx = [i for i, b in enumerate(budgets) if lo <= b <= hi]
        cells = [(c, i) for c in results["configs"] for i in idx]
        def count(kinds, test):
            return sum(test(best(c, i, results, kinds)[1] / best(c, i, results, ("plain",))[1]) for c, i in cells)
        wins, target = (lambda r: r < WINS), (lambda r: r <= 0.85)
        g_default = sum(wins(ratio(c, "gaussian", i, results)) for c, i in cells)
        out.append(f"| {label} | {len(cells)} | {count(('gaussian',), wins)} | {g_default} | "
                   f"{count(('teleport', 'gaussian'), wins)} | {count(('teleport', 'gaussian'), target)} |")
    out += ["", "A cell is one configuration (model × CFG × schedule) at one budget; a win: error ratio to the best "
            "plain sampler ≤ 0.99 (two decimals). The best Gaussian form and the project's best are the best of "
            "their methods in each cell, as the best plain sampler is the best of seven.", ""]
    return out


def target_lines(results: dict) -> list[str]:
    """Per configuration, the teleport or Gaussian methods that meet the target on their own: ≤ 0.85× the best
    plain sampler at 5–8 calls and never worse at 10–30."""
    budgets = results["budgets"]
    out = ["## One method that beats the best plain sampler at every budget", "",
           "The target: error ≤ 0.85× the best plain sampler's at 5–8 calls and ≤ 1× at 10–30, by one method "
           "(not the best per cell).", "", "| model | CFG | schedule | methods that meet it |", "|---|---|---|---|"]
    met = 0
    for c in results["configs"]:
        names = []
        for m in c["rows"]:
            if kind(m, results) == "plain":
                continue
            rs = [(b, ratio(c, m, i, results)) for i, b in enumerate(budgets)]
            if all(r <= 0.85 for b, r in rs if 5 <= b <= 8) and all(r <= 1 for b, r in rs if b >= 10):
                names.append(m)
        met += bool(names)
        out.append(f"| {c['model']} | {cfg_label(c)} | {c['schedule']} | " + ("; ".join(f"{short(n)} ({n})" for n in names) or "none") + " |")
    out += ["", f"{met} of {len(results['configs'])} configurations have such a method.", ""]
    return out


def outputs(results: dict) -> dict[str, str]:
    return {TABLE_PY: table_source(results), REPORT_MD: "\n".join(report_lines(results)) + "\n"}


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--results", default=SOLVERS_JSON, help="the benchmark's results")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is out of date")
    args = ap.parse_args(argv)
    try:
        files = outputs(load(args.results))
    except (OSError, ValueError, KeyError) as exc:
        print(f"{COMMAND}: error: {exc}", file=sys.stderr)
        return 2
    stale = []
    for path, text in files.items():
        try:
            with open(path, encoding="utf-8", newline="") as fh:
                same = fh.read() == text
        except FileNotFoundError:
            same = False
        if args.check:
            if not same:
                stale.append(path)
            continue
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        print(f"wrote {os.path.relpath(path)}")
    if stale:
        print(f"out of date (rerun {COMMAND}): " + ", ".join(os.path.relpath(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
