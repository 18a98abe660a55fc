"""(f) Calibration by what the image does: the default tolerance, and the check that it can be trusted.

For every configuration of the quality and guidance tables (the product's path: data moments, mean
from the model), calibrate_handoff's measured change is recorded at every hand-off on a few fresh noise
samples, under two scales: the spread between samples, and the sampler's own discretisation error
(plain run against the same schedule with every other step). A tolerance is then scored by what the
bisection would recommend: how often it passes the paired-quality verdict (strict and within seed
noise), how often it leaves the image unchanged (paired RMSE within the plain sampler's own
discretisation error, ΔFD within the seed noise), and how often it lies within one step of the best
passing hand-off. The chosen tolerance is validated by running calibrate_handoff itself.
"""

from __future__ import annotations

import torch

from ..demo import make_sigmas, seeded_noise
from ..reference import GuidedDenoiser
from ..scheduler import SAMPLERS, Handoff, calibrate_handoff, sample_teleport
from ..scheduler.calibrate import DEFAULT_TOLERANCE, largest_passing, paired_change, spread_between_samples
from .quality import STEPS, largest_saving, mean, paired_delta, skipped_of, strict, unchanged, within_noise

TOLERANCES = {"spread": (0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15),
              "steps": (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)}
SAMPLES = 8                 # noise samples a calibration uses (a user's batch of a few images)
SEED_OFFSET = 10**6         # calibration seeds are not the benchmark's


def quality_held(row, base) -> bool:
    """The benchmark's paired-quality verdict: strict and within the seed noise."""
    return strict(row, base) and within_noise(row, base)


def configurations(results) -> list[dict]:
    """Every (model, sampler, schedule, CFG) with its rows on the product's path (data moments, model mean)."""
    path = "data moments, model mean"
    out = []
    for result in results:
        for sampler, schedule in dict.fromkeys((r["sampler"], r["schedule"]) for r in result["rows"]):
            rows = [r for r in result["rows"] if (r["sampler"], r["schedule"], r["steps"]) ==
                    (sampler, schedule, STEPS[sampler]) and r["mode"] in ("plain", "save")
                    and r["variant"] in ("plain", path)]
            if len(rows) > 1:
                out.append({"model": result["model"], "sampler": sampler, "schedule": schedule, "cfg": None,
                            "rows": rows})
        for w in sorted({r["cfg"] for r in result.get("guidance", []) if r["cfg"] > 1}):
            for sampler, schedule in dict.fromkeys((r["sampler"], r["schedule"]) for r in result["guidance"]):
                rows = [r for r in result["guidance"] if (r["cfg"], r["sampler"], r["schedule"]) == (w, sampler, schedule)
                        and r["variant"] in ("plain", path)]
                if len(rows) > 1:
                    out.append({"model": result["model"], "sampler": sampler, "schedule": schedule, "cfg": w,
                                "rows": rows})
    for c in out:
        c["base"] = next(r for r in c["rows"] if r["mode"] == "plain")
        c["best"] = skipped_of(largest_saving(c["rows"], c["base"], quality_held))
        c["measured"] = max(skipped_of(r) for r in c["rows"])
    return out


def row_of(config, k: int):
    return next((r for r in config["rows"] if skipped_of(r) == k), None)


def passes(config, k: int, verdict=quality_held) -> bool:
    """Whether replacing k steps passes ``verdict`` (k beyond the measured range counts as failing)."""
    if k == 0:
        return True
    row = row_of(config, k)
    return row is not None and verdict(row, config["base"])


def fd_change(config, k: int) -> float | None:
    """The paired FD change of replacing k steps, as a share of the plain FD (None: not measured)."""
    row = row_of(config, k) if k else None
    return None if row is None else mean(paired_delta(row, config["base"])) / mean(config["base"]["fd"])


def setup(ref, config):
    """(model, start noise, schedule, extra_args) of a configuration at the calibration's sample count."""
    sd = ref.sigma_data
    steps = STEPS[config["sampler"]]
    sigmas = make_sigmas(config["schedule"], steps, sd)
    noise = seeded_noise(range(SEED_OFFSET, SEED_OFFSET + SAMPLES), ref.shape)
    model, extra = ref.model, {}
    if config["cfg"] is not None:
        labels = torch.arange(SAMPLES) % ref.model.cfg.num_classes
        model = ref.model if config["cfg"] == 1 else GuidedDenoiser(ref.model, config["cfg"])
        extra = {"class_labels": labels}
    return model, noise * sigmas[0], sigmas, extra


def curves(ref, config) -> dict:
    """The change at every hand-off under each scale, and the plain calls."""
    model, x, sigmas, extra = setup(ref, config)
    sampler = SAMPLERS[config["sampler"]]
    plain = sampler(model, x, sigmas, extra_args=extra, disable=True)
    coarse = torch.cat([sigmas[:-1][::2], sigmas[-1:]])
    units = {"spread": spread_between_samples(plain),
             "steps": paired_change(plain, sampler(model, x, coarse, extra_args=extra, disable=True))}
    change = {}
    for k in range(1, len(sigmas) - 1):
        if float(sigmas[k]) <= 0:
            break
        out = sample_teleport(model, x, sigmas, extra, moments=ref.moments, sampler=sampler,
                              handoff=Handoff("steps", k), mean="model", disable=True)
        change[k] = paired_change(out, plain)
    return {scale: {k: v / unit for k, v in change.items()} for scale, unit in units.items()}


def bisect(curve: dict, tolerance: float) -> int:
    """What calibrate_handoff's bisection recommends on a measured curve."""
    return largest_passing(sorted(curve), lambda k: curve[k] <= tolerance)


def tolerance_table(configs) -> list[dict]:
    rows = []
    for scale, grid in TOLERANCES.items():
        for tol in grid:
            picks = [bisect(c["curves"][scale], tol) for c in configs]
            ok = [passes(c, k) for c, k in zip(configs, picks)]
            same = [passes(c, k, unchanged) for c, k in zip(configs, picks)]
            near = [k >= c["best"] - 1 for c, k in zip(configs, picks)]
            rows.append({"scale": scale, "tolerance": tol, "pass": sum(ok), "unchanged": sum(same),
                         "within_one": sum(near),
                         "configs": len(configs), "steps_replaced": sum(picks)})
    return rows


def validate(ref_of, configs, tolerance: float = DEFAULT_TOLERANCE) -> list[dict]:
    """Run calibrate_handoff itself at the default tolerance on every configuration."""
    rows = []
    for c in configs:
        ref = ref_of(c["model"])
        model, x, sigmas, extra = setup(ref, c)
        cal = calibrate_handoff(model, x, sigmas, SAMPLERS[c["sampler"]], moments=ref.moments, mean="model",
                                extra_args=extra, tolerance=tolerance)
        rows.append({"model": c["model"], "sampler": c["sampler"], "schedule": c["schedule"], "cfg": c["cfg"],
                     "recommended": cal.skipped, "best": c["best"], "measured": c["measured"],
                     "passes": passes(c, cal.skipped), "unchanged": passes(c, cal.skipped, unchanged),
                     "fd_change": fd_change(c, cal.skipped), "within_one": cal.skipped >= c["best"] - 1,
                     "calls_spent": cal.calls_spent, "calls_plain": cal.calls_plain,
                     "calls_teleport": cal.calls_teleport, "sigma": cal.sigma, "summary": cal.summary()})
    return rows
