"""Teleport on a real diffusers pipeline.

    python -m gaussian_teleport.bench.pipeline --model PATH --prompts FILE --moments FILE

The same prompts and seeds run plainly at N steps, plainly at 2N steps, and with teleport at each
hand-off (optionally also at the one the core's calibration recommends). Per run: denoiser calls,
wall time, and the paired difference of the decoded images from the plain N-step image (pixel RMSE
in [0, 1]; LPIPS and a CLIP score where available). The plain pipeline's own discretisation error,
the RMSE between its N-step and 2N-step images, is the yardstick: a hand-off whose paired RMSE stays
within it changes the image less than the pipeline's own choice of step count does ("within").

Weights are read from local files only (a diffusers folder, or a hub id already in the local cache);
nothing is downloaded unless ``--allow-download`` is given. Writes pipeline_bench.md (the table),
pipeline_bench.png (an image grid) and pipeline_bench.json to ``--out`` (default: a new temporary
folder; never inside this repository).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

from ..moments.files import load_moments
from ..scheduler.calibrate import paired_change
from ..scheduler.handoff import Handoff

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULERS = ("default", "euler", "euler-karras", "heun", "heun-karras", "dpmpp_2m", "dpmpp_2m-karras")
DEFAULT_HANDOFFS = "sigma:10,sigma:7,sigma:5,sigma:3"
GRID_ROWS = 8            # (prompt, seed) rows shown in the image grid
GRID_CELL = 256          # the grid's cells are at most this many pixels wide


class UsageError(Exception):
    """A mistake in the command line: printed as 'error: …' with exit status 2."""


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------
# Inputs: the pipeline, its scheduler, prompts, moments, the output folder.


def load_pipeline(model: str, allow_download: bool, device: str, dtype: str):
    """The pipeline from a local diffusers folder or a cached hub id (downloads only with ``allow_download``)."""
    from diffusers import DiffusionPipeline

    if os.path.isfile(model):
        raise UsageError(f"{model} is a file; give a diffusers folder (one with model_index.json) or a hub id")
    torch_dtype = resolve_dtype(dtype, device, model)
    try:
        pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch_dtype, local_files_only=not allow_download)
    except (OSError, ValueError) as exc:
        hint = "" if os.path.isdir(model) or allow_download else \
            "; it is not in the local cache: pass --allow-download to fetch it from the hub"
        raise UsageError(f"cannot load {model} ({str(exc).splitlines()[0]}){hint}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str, model: str) -> torch.dtype:
    """float32 on the CPU; on a GPU float16, or bfloat16 for Flux (whose activations overflow float16)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if "flux" in model.lower() else torch.float16


def set_scheduler(pipe, name: str) -> None:
    """Replace the pipeline's scheduler by the named one, built from its own config (default: keep it)."""
    if name == "default":
        return
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

    base, _, karras = name.partition("-")
    classes = {"euler": EulerDiscreteScheduler, "heun": HeunDiscreteScheduler, "dpmpp_2m": DPMSolverMultistepScheduler}
    cls = classes[base]
    extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if base == "dpmpp_2m" else {}
    pipe.scheduler = cls.from_config(pipe.scheduler.config, use_karras_sigmas=bool(karras), **extra)


def read_prompts(path: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    with open(path, encoding="utf-8") as fh:
        prompts = [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UsageError(f"{path} has no prompts (one per line)")
    return prompts


def output_folder(out: str | None) -> str:
    """``out`` (created), or a new temporary folder; never a folder inside this repository."""
    if out is None:
        return tempfile.mkdtemp(prefix="teleport-pipeline-bench-")
    real = os.path.realpath(out)
    if os.path.commonpath([real, os.path.realpath(REPO)]) == os.path.realpath(REPO):
        raise UsageError(f"--out {out} is inside the gaussian_teleport package; choose a folder outside it")
    os.makedirs(real, exist_ok=True)
    return real


def parse_handoffs(text: str) -> list[Handoff]:
    try:
        return [Handoff.parse(h.strip()) for h in text.split(",") if h.strip()]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# ----------------------------------------------------------------------------
# Runs: one image per (prompt, seed), the denoiser's calls counted by a hook.


class CallCounter:
    """Counts forward calls of the pipeline's denoiser (one per CFG-batched evaluation)."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1


def run_once(fn, counter: CallCounter, device: str):
    """(images (B, 3, H, W) in [0, 1] on the CPU, denoiser calls, wall seconds) of one pipeline call."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    before, start = counter.calls, time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    images = out.images if hasattr(out, "images") else out[0]
    return images.float().cpu(), counter.calls - before, time.perf_counter() - start


def call_args(args, prompt: str, seed: int, steps: int) -> dict:
    call = dict(prompt=prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                output_type="pt")
    if args.guidance is not None:
        call["guidance_scale"] = args.guidance
    if args.height:
        call.update(height=args.height, width=args.width)
    return call


# ----------------------------------------------------------------------------
# Optional scores: LPIPS (the lpips package, with its backbone weights already cached) and CLIP.


def lpips_scorer(allow_download: bool):
    """A function (a, b) → LPIPS distance, or (None, why not)."""
    try:
        import lpips
    except Exception as exc:       # lpips imports torchvision, which may be missing or broken
        return None, f"LPIPS skipped: the lpips package does not import ({type(exc).__name__})"
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", "alexnet-owt-7be5be79.pth")
    if not (os.path.exists(cached) or allow_download):
        return None, "LPIPS skipped: its AlexNet backbone is not in the torch hub cache (pass --allow-download)"
    net = lpips.LPIPS(net="alex", verbose=False).eval()
    return (lambda a, b: float(net(a * 2 - 1, b * 2 - 1).mean())), "LPIPS: AlexNet, lower is closer"


def clip_scorer(name: str | None, allow_download: bool, device: str):
    """A function (images, prompt) → mean CLIP score (100 · cosine), or (None, why not)."""
    if not name:
        return None, "CLIP score skipped: no --clip model given"
    try:
        from transformers import CLIPModel, CLIPProcessor
        model = CLIPModel.from_pretrained(name, local_files_only=not allow_download).to(device).eval()
        processor = CLIPProcessor.from_pretrained(name, local_files_only=not allow_download)
    except Exception as exc:
        return None, f"CLIP score skipped: cannot load {name} ({type(exc).__name__})"

    def score(images, prompt):
        inputs = processor(text=[prompt], images=[im.permute(1, 2, 0).numpy() for im in images], return_tensors="pt",
                           padding=True, truncation=True, do_rescale=False).to(device)
        with torch.no_grad():
            out = model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        return float(100 * (img @ txt.T).mean())
    return score, f"CLIP score: {name}, 100 × cosine of image and prompt, higher is closer to the prompt"


# ----------------------------------------------------------------------------
# The benchmark.


def model_moments(pipe, args, prompt: str):
    from ..diffusers import estimate_pipeline_moments_from_model

    log("reading moments off the model (no images)")
    call = {"prompt": prompt}
    if args.guidance is not None:
        call["guidance_scale"] = args.guidance
    if args.height:
        call.update(height=args.height, width=args.width)
    return estimate_pipeline_moments_from_model(pipe, generator=torch.Generator().manual_seed(0), **call)


def calibrate(pipe, moments, args, prompt: str, seeds: list[int]):
    """The core's hand-off calibration on the first prompt's seeds, through the pipeline as a denoiser."""
    from ..diffusers import PipelineDenoiser, latent_format, pipeline_family, scheduler_kind
    from ..diffusers.families import image_latents
    from ..diffusers.teleport import record_start
    from ..scheduler import SAMPLERS, calibrate_handoff

    if len(seeds) < 2:
        raise UsageError("--calibrate needs at least 2 seeds (it measures the spread between samples)")
    family = pipeline_family(pipe)
    kind = scheduler_kind(pipe.scheduler, family)
    call = call_args(args, prompt, seeds[0], args.steps)
    call.update(num_images_per_prompt=len(seeds), generator=[torch.Generator().manual_seed(s) for s in seeds])
    with torch.no_grad():
        noise, record = record_start(pipe, kind, call)
    sigma0 = float(record.sigmas[0])
    x = kind.to_core(image_latents(pipe, family, noise * record.start_scale, call).float(), sigma0)
    model = PipelineDenoiser(pipe, **{k: v for k, v in call.items() if k not in ("generator", "num_images_per_prompt",
                                                                                 "output_type")})
    sampler = SAMPLERS[kind.name]
    log(f"calibrating the hand-off on {len(seeds)} seeds of the first prompt ({kind.name}, {args.steps} steps)")
    result = calibrate_handoff(model, x, record.sigmas.to(torch.float32), sampler, moments=moments, mean=args.mean,
                               parameterization=kind.parameterization, latent_format=latent_format(pipe, family))
    log(result.report())
    return result


def run_benchmark(args) -> dict:
    from ..diffusers import pipeline_family, scheduler_kind, teleport

    device = resolve_device(args.device)
    prompts = read_prompts(args.prompts)
    out = output_folder(args.out)
    pipe = load_pipeline(args.model, args.allow_download, device, args.dtype)
    set_scheduler(pipe, args.scheduler)
    family = pipeline_family(pipe)
    kind = scheduler_kind(pipe.scheduler, family)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    handoffs = parse_handoffs(args.handoffs)
    moments = model_moments(pipe, args, prompts[0]) if args.moments == "model" else load_moments(args.moments)
    calibration = calibrate(pipe, moments, args, prompts[0], seeds) if args.calibrate else None
    if calibration is not None and calibration.handoff is not None and calibration.handoff not in handoffs:
        handoffs.append(calibration.handoff)

    counter = CallCounter(getattr(pipe, family.denoiser))
    lp, lp_note = lpips_scorer(args.allow_download) if args.lpips else (None, "LPIPS skipped: pass --lpips")
    clip, clip_note = clip_scorer(args.clip, args.allow_download, device)
    log(f"warming up ({type(pipe).__name__}, {kind.scheduler}, {device})")
    run_once(lambda: pipe(**call_args(args, prompts[0], 0, 2)), counter, device)

    runs = {"plain": [], "plain_2n": [], **{str(h): [] for h in handoffs}}
    plans = {}
    pairs = [(p, s) for p in prompts for s in seeds]
    for i, (prompt, seed) in enumerate(pairs):
        log(f"[{i + 1}/{len(pairs)}] seed {seed}: {prompt[:60]}")
        plain = run_once(lambda: pipe(**call_args(args, prompt, seed, args.steps)), counter, device)
        fine = run_once(lambda: pipe(**call_args(args, prompt, seed, 2 * args.steps)), counter, device)
        record = lambda name, res: runs[name].append(  # noqa: E731
            {"prompt": prompt, "seed": seed, "calls": res[1], "seconds": res[2],
             "rmse": paired_change(res[0], plain[0]),
             "lpips": lp(res[0], plain[0]) if lp else None, "clip": clip(res[0], prompt) if clip else None,
             "image": res[0][0]})
        record("plain", plain)
        record("plain_2n", fine)
        for h in handoffs:
            got = []
            res = run_once(lambda: teleport(pipe, moments, handoff=h, mean=args.mean, on_plan=got.append,
                                            **call_args(args, prompt, seed, args.steps)), counter, device)
            plans.setdefault(str(h), got[0])
            record(str(h), res)
    counter.handle.remove()
    result = {"model": args.model, "pipeline": type(pipe).__name__, "scheduler": kind.scheduler, "sampler": kind.name,
              "karras": bool(getattr(pipe.scheduler.config, "use_karras_sigmas", False)), "steps": args.steps,
              "guidance": args.guidance, "size": list(runs["plain"][0]["image"].shape[-2:]), "device": device,
              "dtype": str(getattr(pipe, family.denoiser).dtype), "prompts": len(prompts), "seeds": seeds,
              "moments": args.moments, "mean": args.mean, "notes": [lp_note, clip_note],
              "calibration": calibration.summary() if calibration is not None else None,
              "plans": {k: plan_record(p) for k, p in plans.items()}, "runs": runs}
    result["out"] = out
    return result


def plan_record(plan) -> dict:
    return {"jumped": plan.jumped, "skipped": plan.skipped, "steps": plan.steps, "summary": plan.summary(),
            "from": plan.where(plan.sigma_from), "to": plan.where(plan.sigma_to) if plan.jumped else "",
            "handoff_sigma": plan.noise_level_to if plan.jumped else math.inf}


# ----------------------------------------------------------------------------
# Reports.


def mean_of(rows, key):
    values = [r[key] for r in rows if r[key] is not None]
    return sum(values) / len(values) if values else None


def verdict(paired: float, discretisation: float) -> str:
    """'within' when the paired RMSE is at most the plain pipeline's own N vs 2N difference."""
    if discretisation <= 0:
        return "—"
    return "within" if paired <= discretisation else f"beyond ({paired / discretisation:.2g}×)"


def table_lines(result) -> list[str]:
    runs, plans = result["runs"], result["plans"]
    disc = mean_of(runs["plain_2n"], "rmse")
    base_calls = mean_of(runs["plain"], "calls")
    has_lpips = any(r["lpips"] is not None for r in runs["plain"])
    has_clip = any(r["clip"] is not None for r in runs["plain"])
    headers = ["run", "hand-off", "steps replaced", "model calls / image", "wall s / image",
               "paired RMSE vs plain N", "÷ discretisation error"]
    headers += ["LPIPS vs plain N"] * has_lpips + ["CLIP score"] * has_clip + ["verdict"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]

    def row(name, key, handoff, skipped, verdict_text):
        rs = runs[key]
        paired = mean_of(rs, "rmse")
        cells = [name, handoff, skipped, f"{mean_of(rs, 'calls'):.1f}", f"{mean_of(rs, 'seconds'):.2f}",
                 f"{paired:.4f}", f"{paired / disc:.2f}" if disc else "—"]
        if has_lpips:
            cells.append(f"{mean_of(rs, 'lpips'):.4f}")
        if has_clip:
            cells.append(f"{mean_of(rs, 'clip'):.2f}")
        lines.append("| " + " | ".join(str(c) for c in cells + [verdict_text]) + " |")

    steps = result["steps"]
    row(f"plain, {steps} steps", "plain", "—", 0, "reference")
    row(f"plain, {2 * steps} steps", "plain_2n", "—", 0, "the discretisation error")
    for key, plan in plans.items():
        where = f"{key} ({plan['from']} → {plan['to']})" if plan["jumped"] else f"{key} (no jump)"
        saved = base_calls - mean_of(runs[key], "calls")
        row(f"teleport, {-saved:+.0f} calls" if saved else "teleport", key, where, plan["skipped"],
            verdict(mean_of(runs[key], "rmse"), disc or 0.0))
    return lines


def write_table(result, path: str) -> None:
    disc = mean_of(result["runs"]["plain_2n"], "rmse")
    h, w = result["size"]
    r = result
    karras = ", Karras" if r["karras"] else ""
    guidance = r["guidance"] if r["guidance"] is not None else "default"
    head = [f"# Teleport on {r['model']}", "",
            f"{r['pipeline']}, {r['scheduler']} ({r['sampler']}{karras}), {r['steps']} steps, guidance {guidance}, "
            f"{w}×{h} px; {r['prompts']} prompt(s) × {len(r['seeds'])} seed(s); moments: {r['moments']}; "
            f"mean from the {r['mean']}; {r['device']}, {r['dtype']}.", "",
            f"The plain pipeline's own discretisation error (pixel RMSE in [0, 1] between its {r['steps']}-step "
            f"and {2 * r['steps']}-step images, same seeds): **{disc:.4f}**. A hand-off is *within* when "
            "teleport's paired RMSE to the plain N-step image is at most that: it changes the image less than "
            "doubling the steps does.", ""]
    if result["calibration"]:
        head += [f"Calibration (core, first prompt): {result['calibration']}", ""]
    notes = [f"- {n}" for n in result["notes"]]
    notes.append("- Wall time includes teleport's record call (the text encoders run once more) and, with the model "
                 "mean, its probe call; the first call of the session was a warm-up and is not counted.")
    from . import write_markdown

    write_markdown(path, head + table_lines(result) + [""] + notes)


def write_grid(result, path: str) -> None:
    """Rows: (prompt, seed); columns: plain N, plain 2N, each hand-off; a label row on top."""
    from PIL import Image, ImageDraw

    keys = list(result["runs"])
    labels = [f"plain {result['steps']}", f"plain {2 * result['steps']}"] + keys[2:]
    rows = min(GRID_ROWS, len(result["runs"]["plain"]))
    h, w = result["size"]
    scale = min(1.0, GRID_CELL / w) if w > GRID_CELL else max(1, 64 // w)
    cw, ch = int(w * scale), int(h * scale)
    top, gap = 16, 2
    grid = Image.new("RGB", ((cw + gap) * len(keys), top + (ch + gap) * rows), "white")
    draw = ImageDraw.Draw(grid)
    for j, (key, label) in enumerate(zip(keys, labels)):
        draw.text((j * (cw + gap) + 2, 2), label[: max(4, cw // 7)], fill="black")
        for i in range(rows):
            image = result["runs"][key][i]["image"].clamp(0, 1)
            pil = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
            grid.paste(pil.resize((cw, ch), Image.NEAREST if scale > 1 else Image.BICUBIC),
                       (j * (cw + gap), top + i * (ch + gap)))
    grid.save(path)
    log(f"wrote {path}")


def write_json(result, path: str) -> None:
    plain = {k: [{kk: vv for kk, vv in r.items() if kk != "image"} for r in v] for k, v in result["runs"].items()}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({**result, "runs": plain}, fh, indent=1, default=str)
    log(f"wrote {path}")


# ----------------------------------------------------------------------------
# Command line.


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gaussian_teleport.bench.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a diffusers folder, or a hub id in the local cache")
    p.add_argument("--prompts", required=True, help="a text file, one prompt per line")
    p.add_argument("--moments", required=True, help="a moments file for this model family, or 'model' to read them "
                                                    "off the model (no images)")
    p.add_argument("--handoffs", default=DEFAULT_HANDOFFS,
                   help=f"comma-separated hand-offs (default {DEFAULT_HANDOFFS})")
    p.add_argument("--steps", type=int, default=20, help="the plain run's steps N (the yardstick runs 2N)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--mean", choices=("model", "data"), default=None, help="the jump's mean (default: the core's)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="default",
                   help="replace the pipeline's scheduler (SD/SDXL only); default: keep it")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    p.add_argument("--size", type=int, default=0, help="square image size in pixels (default: the pipeline's)")
    p.add_argument("--width", type=int, default=0)
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    p.add_argument("--calibrate", action="store_true", help="also run the core's hand-off calibration and benchmark "
                                                            "its recommendation")
    p.add_argument("--lpips", action="store_true", help="add LPIPS (needs the lpips package and its cached weights)")
    p.add_argument("--clip", default=None, help="a CLIP model (folder or cached hub id) for a CLIP score")
    p.add_argument("--allow-download", action="store_true", help="let hub ids be downloaded (off: local files only)")
    p.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from ..scheduler.settings import DEFAULT_MEAN

    args.mean = args.mean or DEFAULT_MEAN
    if args.size:
        args.width = args.height = args.size
    if bool(args.width) != bool(args.height):
        print("error: give both --width and --height (or --size)", file=sys.stderr)
        return 2
    try:
        result = run_benchmark(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = result["out"]
    write_table(result, os.path.join(out, "pipeline_bench.md"))
    write_grid(result, os.path.join(out, "pipeline_bench.png"))
    write_json(result, os.path.join(out, "pipeline_bench.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
