"""The fastest combination measured for a budget: which sampler, teleport or Gaussian-solver form to use.

    recommend_sampler(6, schedule="sd", cfg=5)   # → Recommendation (method, options, figures, notes)

The answer comes from the fixed-budget benchmark on the project's two small reference models
(``bench/results/solvers.json``), through the table ``recommendations.py`` that
``python -m gaussian_teleport.bench.recommend`` generates from it (its rule: ``RULE``). A budget or CFG
that was not measured gets the nearest measured one, and the answer says so. The figures describe those
8×8 models, not Stable Diffusion: they say which method to try first, not what a large model will do.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field

from .recommendations import BUDGETS, CFGS, COMMAND, MODELS, RULE, SAMPLES, SCHEDULES, SOURCE, TABLE, WIN_MARGIN

__all__ = ["BUDGETS", "CFGS", "SCHEDULES", "RULE", "WIN_MARGIN", "ModelFigure", "Recommendation", "recommend_sampler"]

KINDS = {"plain": "a plain sampler", "teleport": "the teleport jump, then a sampler",
         "gaussian": "the Gaussian solver"}
MODEL_NAMES = {"digits": "digits (8×8, class-conditional)", "patches": "patches (8×8 RGB photo patches)"}
PLAIN_PYTHON = {"euler": "scheduler.samplers.sample_euler", "heun": "scheduler.samplers.sample_heun",
                "dpmpp_2m": "scheduler.samplers.sample_dpmpp_2m", "ipndm": "scheduler.multistep.sample_ipndm",
                "ipndm_v": "scheduler.multistep.sample_ipndm_v", "deis": "scheduler.multistep.sample_deis",
                "uni_pc_bh2": "scheduler.multistep.sample_uni_pc_bh2"}

WEBUI_LABELS = {"euler": "Euler", "heun": "Heun", "dpmpp_2m": "DPM++ 2M", "ipndm": "iPNDM"}   # "<label> Teleport"


@dataclass(frozen=True)
class ModelFigure:
    """One reference model's figures at the measured budget: the recommended method against the best plain."""

    model: str
    cfg: float | None
    error: float              # paired RMSE to the converged solution, the recommended method
    fd: float                 # its Fréchet distance in classifier features
    calls: int                # the model calls it made (≤ the budget)
    ratio: float              # error / best_plain_error
    best_plain: str           # the best plain sampler on this model at this budget
    best_plain_error: float
    plain_error: float        # the error of the recommendation's plain winner (``Recommendation.plain``) here


@dataclass(frozen=True)
class Recommendation:
    """What to use at a budget, and the measured figures it rests on."""

    calls: int                # asked
    schedule: str
    cfg: float                # asked
    budget: int               # the measured budget the figures come from (the nearest to ``calls``)
    measured_cfg: float       # the measured CFG they come from (the nearest to ``cfg``)
    method: str               # the benchmark's name for it
    kind: str                 # plain, teleport or gaussian
    options: dict             # how to run it (the Gaussian solver's options; teleport's sampler and hand-off)
    helps: bool               # True: a teleport or Gaussian method beats the plain samplers (by the rule)
    ratio: float              # its worst error ratio to the best plain sampler over the models measured
    plain: str                # the plain sampler with the best worst-case ratio
    plain_ratio: float
    project: str              # the best teleport/Gaussian method (recommended or not)
    project_ratio: float
    models: tuple[ModelFigure, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        """The method in a few words (the benchmark's name, without its bookkeeping)."""
        if self.kind == "teleport":
            return f"teleport + {self.options['sampler']}"
        return f'the Gaussian solver ("{self.method}")' if self.kind == "gaussian" else self.method

    @property
    def sampler(self) -> str:
        """The sampler name to pick: a plain sampler's own, or teleport's inner sampler, or "gaussian"."""
        if self.kind == "teleport":
            return self.options["sampler"]
        return "gaussian" if self.kind == "gaussian" else self.method

    @property
    def steps(self) -> int:
        """The schedule's steps for ``calls`` model calls, as the benchmark counted them: teleport's model-mean
        probe is one of the calls; Heun makes 2 calls a step but 1 on the last."""
        if self.kind == "teleport":
            return max(self.calls - 1, 1)
        return (self.calls + 1) // 2 if self.method == "heun" else self.calls

    def how(self) -> str:
        """How to run it, in Python and in the hosts."""
        o = self.options
        if self.kind == "plain":
            return (f"the plain sampler `{self.method}` (ComfyUI's sampler list; Python: "
                    f"gaussian_teleport.{PLAIN_PYTHON.get(self.method, self.method)}); no moments needed")
        if self.kind == "teleport":
            h = o["handoff_sigma_data"]
            where = (f"hand-off σ = {h:g}·σ_data" if h is not None else "hand-off σ = "
                     + ", ".join(f"{v:g}·σ_data on {m}" for m, v in o["handoff_sigma_data_per_model"].items()))
            webui = WEBUI_LABELS.get(o["sampler"])
            webui = f"; A1111/Forge: '{webui} Teleport'" if webui else ""
            return (f"teleport into {o['sampler']}, {o['mode']} mode, {where}, mean from the {o['mean']} (ComfyUI: "
                    f"KSampler teleport_{o['sampler']}, hand-off and mode on Attach Teleport Moments{webui}; Python: "
                    f"make_teleport_sampler("
                    f"{PLAIN_PYTHON.get(o['sampler'], o['sampler']).rsplit('.', 1)[-1]}, moments, Handoff('sigma', "
                    f"{'h' if h is None else format(h, 'g')} * sigma_data), mode={o['mode']!r}, mean={o['mean']!r}))")
        args = "".join(f", {k}={v!r}" for k, v in o.items())
        if set(o) - {"order"}:
            hosts = "Python only: the hosts' Gaussian Solver entries set the order, not these options"
        else:
            order = f" (order {o['order']})" if "order" in o else " (its default order)"
            hosts = f"ComfyUI: Gaussian Solver Sampler{order}; A1111/Forge: Gaussian Solver{order}"
        return f"the Gaussian solver, make_gaussian_sampler(moments{args}); {hosts}"

    def describe(self) -> str:
        """A few lines for a person: the recommendation, its figures per model, where they come from."""
        lines = [f"{self.calls} model calls, CFG {self.cfg:g}, schedule {self.schedule}: {SCHEDULES[self.schedule]}"]
        if self.helps:
            verdict = (f"use {self.label}: its error is at most {self.ratio:.2f}× that of the best plain sampler "
                       f"on {' and '.join(m.model for m in self.models)}")
            if len(self.models) > 1:
                verdict += f" (the best single plain sampler, {self.plain}: {self.plain_ratio:.2f}×)"
        else:
            verdict = (f"use the plain sampler {self.method} (its error at most {self.ratio:.2f}× that of the best "
                       f"plain sampler on {' and '.join(m.model for m in self.models)}): teleport does not help here, nor "
                       f"does the Gaussian solver; their best, \"{self.project}\", measured "
                       f"{self.project_ratio:.2f}× (a win needs {WIN_MARGIN:g}× the plain samplers' or less)")
        lines.append("  " + verdict)
        lines.append(f"  how: {self.steps} steps; " + self.how())
        for m in self.models:
            lines.append(f"  {MODEL_NAMES.get(m.model, m.model)}: error {m.error:.4f} in {m.calls} calls (FD "
                         f"{m.fd:.1f}), best plain {m.best_plain} {m.best_plain_error:.4f}, ratio {m.ratio:.2f}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        lines.append(f"  source: {SOURCE} ({SAMPLES} samples per configuration, error = paired RMSE to the "
                     f"converged solution), through {COMMAND}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """Plain data (for JSON): every field, the models as dicts, and ``how``."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["models"] = [asdict(m) for m in self.models]
        out["notes"] = list(self.notes)
        out.update(how=self.how(), steps=self.steps, label=self.label)
        return out


def _number(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")


def check_calls(calls) -> int:
    if isinstance(calls, bool) or not isinstance(calls, numbers.Integral):
        raise ValueError(f"calls must be a whole number of model calls (1 or more), got {calls!r}; measured "
                         f"budgets: {', '.join(map(str, BUDGETS))}")
    if calls < 1:
        raise ValueError(f"calls must be at least 1 (model calls per image), got {calls}; measured budgets: "
                         f"{', '.join(map(str, BUDGETS))}")
    return int(calls)


def check_schedule(schedule) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)} (" + "; ".join(
            f"{k}: {v}" for k, v in SCHEDULES.items()) + f"), got {schedule!r}")
    return schedule


def check_cfg(cfg) -> float:
    if cfg is None:
        return 1.0
    _number(cfg, "cfg")
    if not math.isfinite(cfg) or cfg < 0:
        raise ValueError(f"cfg must be a finite number ≥ 0 (1 or None: no guidance), got {cfg!r}; measured: "
                         f"{', '.join(f'{c:g}' for c in CFGS)}")
    return float(cfg)


def nearest_budget(calls: int) -> int:
    """The measured budget nearest to ``calls``; a tie goes to the smaller (never more calls than asked for)."""
    return min(BUDGETS, key=lambda b: (abs(b - calls), b))


def nearest_cfg(cfg: float) -> float:
    """The measured CFG nearest to ``cfg``; a tie goes to the larger (guidance that strong is harder)."""
    return min(CFGS, key=lambda c: (abs(c - cfg), -c))


def recommend_sampler(calls: int, schedule: str = "sd", cfg: float | None = 1.0) -> Recommendation:
    """The fastest combination the benchmark measured at ``calls`` model calls per image.

    ``schedule``: one of ``SCHEDULES`` (edm, sd, sd_normal, flow). ``cfg``: the guidance scale (1 or None:
    none). Unmeasured budgets and scales get the nearest measured ones (``notes`` says so). Raises
    ValueError naming the valid values for calls < 1, an unknown schedule or a CFG that is not a finite
    number ≥ 0.
    """
    calls, schedule, cfg = check_calls(calls), check_schedule(schedule), check_cfg(cfg)
    budget, measured = nearest_budget(calls), nearest_cfg(cfg)
    notes = []
    if budget != calls:
        where = (f"below the smallest budget measured ({BUDGETS[0]})" if calls < BUDGETS[0] else
                 f"above the largest budget measured ({BUDGETS[-1]})" if calls > BUDGETS[-1] else
                 f"not a measured budget ({', '.join(map(str, BUDGETS))})")
        notes.append(f"{calls} calls is {where}: the figures are for {budget} calls, the nearest")
    if measured != cfg:
        notes.append(f"CFG {cfg:g} was not measured: the figures are for CFG {measured:g}, the nearest of "
                     f"{', '.join(f'{c:g}' for c in CFGS)}")
    models = MODELS[measured]
    notes.append(f"measured on the reference model{'s' if len(models) > 1 else ''} "
                 f"{' and '.join(models)} ({'class-conditional, guided' if measured != 1 else 'no guidance'}); "
                 "a large latent model may differ: calibrate or compare on your own model")
    entry = TABLE[schedule, measured, budget]
    figures = tuple(ModelFigure(**m) for m in entry["models"])
    return Recommendation(calls=calls, schedule=schedule, cfg=cfg, budget=budget, measured_cfg=measured,
                          method=entry["method"], kind=entry["kind"], options=dict(entry["options"]),
                          helps=entry["helps"], ratio=entry["ratio"], plain=entry["plain"],
                          plain_ratio=entry["plain_ratio"], project=entry["project"],
                          project_ratio=entry["project_ratio"], models=figures, notes=tuple(notes))
