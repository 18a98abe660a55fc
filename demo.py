"""See teleport save model calls: ``python -m gaussian_teleport.demo``.

Samples the shipped reference model from the same seeds twice, once with the plain sampler and once
with the Gaussian jump over the high-noise steps, writes the two grids side by side to a PNG and
prints the model calls, wall time and how far the teleported samples are from their same-seed
baseline. Needs only torch, numpy and safetensors (tqdm and pillow are used when present).
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
import zlib

import torch

from .reference import DEFAULT_MODEL, REFERENCE_MODELS, GuidedDenoiser, load_reference
from .scheduler import DEFAULT_MEAN, MEANS, SAMPLERS, Handoff, make_teleport_sampler, model_calls, plan_teleport
from .scheduler.calibrate import CountingModel
from .scheduler.schedules import REFERENCE_SCHEDULES, make_sigmas  # noqa: F401  (make_sigmas: the bench's too)

SCHEDULES = REFERENCE_SCHEDULES
DEFAULT_STEPS = {"euler": 20, "heun": 18, "dpmpp_2m": 20}
# The default hand-off σ, in units of the data's largest standard deviation √λ_max. In the benchmark
# (README, "The benchmark") the safe hand-off differed between the models in both σ_data and √λ_max
# units (digits broke below 1.6–1.8·√λ_max, patches below 0.5–0.9·√λ_max); 3·√λ_max stays above both
# and kept every FD within the strict tolerance on both reference models and both schedules.
DEFAULT_HANDOFF_SQRT_LAMBDA = 3.0


def default_handoff(moments) -> Handoff:
    lam_max = float(moments.variances().double().max())
    return Handoff("sigma", round(DEFAULT_HANDOFF_SQRT_LAMBDA * lam_max ** 0.5, 4))


# ----------------------------------------------------------------------------
# Progress bar: tqdm if installed, else a one-line bar on stderr.


class _PlainBar:
    def __init__(self, total, desc="", disable=False):
        self.total, self.desc, self.n, self.disable = total, desc, 0, disable
        self._draw()

    def _draw(self):
        if self.disable:
            return
        done = int(30 * self.n / max(self.total, 1))
        sys.stderr.write(f"\r{self.desc} [{'#' * done}{'.' * (30 - done)}] {self.n}/{self.total}")
        sys.stderr.flush()

    def update(self, k=1):
        self.n += k
        self._draw()

    def close(self):
        if not self.disable:
            sys.stderr.write("\n")


def progress_bar(total: int, desc: str, disable: bool = False):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _PlainBar(total, desc, disable)
    return tqdm(total=total, desc=desc, disable=disable, unit="call")


# ----------------------------------------------------------------------------
# Noise, schedules and sampling.


def seeded_noise(seeds, shape) -> torch.Tensor:
    """One generator per seed, so sample i depends only on seed i (not on batch size or order)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def parse_seeds(text: str) -> list[int]:
    """'0-63', '1,2,5' or '0-9,100'."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(part)])
        except ValueError:
            raise ValueError(f"seeds {text!r} must look like '0-63' or '1,2,5'") from None
    if not seeds:
        raise ValueError("give at least one seed")
    return seeds


def run_sampler(fn, model, noise, sigmas, extra_args, desc, quiet, expected_calls, repeats=2):
    """Samples, model calls and the best wall time of ``repeats`` runs (a busy machine adds noise)."""
    bar = progress_bar(expected_calls * repeats, desc, disable=quiet)
    seconds = []
    for _ in range(repeats):
        counted = CountingModel(model, lambda _: bar.update(1))
        start = time.perf_counter()
        x = fn(counted, noise * sigmas[0], sigmas.to(noise.dtype), extra_args=extra_args, disable=True)
        seconds.append(time.perf_counter() - start)
    bar.close()
    return x, counted.calls, min(seconds)


# ----------------------------------------------------------------------------
# PNG output: pillow if installed, else a minimal writer (zlib + struct).


def to_uint8_grid(images: torch.Tensor, cols: int, scale: int, pad: int = 1) -> torch.Tensor:
    """(N, C, H, W) in [−1, 1] → (rows·(H+pad)·scale, cols·(W+pad)·scale, 3) uint8 grid."""
    n, c, h, w = images.shape
    rows = -(-n // cols)
    img = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if c == 1:
        img = img.expand(n, 3, h, w)
    grid = torch.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, x:x + w] = img[i].permute(1, 2, 0)
    return grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def side_by_side(left: torch.Tensor, right: torch.Tensor, gap: int = 12) -> torch.Tensor:
    h = max(left.shape[0], right.shape[0])
    out = torch.full((h, left.shape[1] + gap + right.shape[1], 3), 255, dtype=torch.uint8)
    out[:left.shape[0], :left.shape[1]] = left
    out[:right.shape[0], left.shape[1] + gap:] = right
    return out


def write_png(path: str, rgb: torch.Tensor):
    """Write an (H, W, 3) uint8 image."""
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        Image.fromarray(rgb.numpy()).save(path)
        return
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + bytes(rgb[y].flatten().tolist()) for y in range(h))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


# ----------------------------------------------------------------------------
# The comparison.


def paired_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square pixel difference between same-seed samples, averaged over the batch."""
    return float(((a.double() - b.double()) ** 2).flatten(1).mean(1).sqrt().mean())


def unpaired_rmse(a: torch.Tensor) -> float:
    """The same distance between different seeds' samples: the scale a paired gap is small against."""
    return paired_rmse(a, a.roll(1, 0))


@torch.no_grad()
def compare(args) -> dict:
    ref = load_reference(args.model)
    sd = ref.sigma_data
    seeds = parse_seeds(args.seeds)
    steps = args.steps or DEFAULT_STEPS[args.sampler]
    sigmas = make_sigmas(args.schedule, steps, sd)
    handoff = Handoff.parse(args.handoff) if args.handoff else default_handoff(ref.moments)
    plan = plan_teleport(sigmas, handoff, args.mode, mean=args.mean)

    model, extra_args = ref.model, {}
    if ref.model.cfg.num_classes:
        labels = (torch.tensor(seeds) % ref.model.cfg.num_classes if args.label is None
                  else torch.full((len(seeds),), args.label))
        if args.cfg is not None:
            model = GuidedDenoiser(ref.model, args.cfg)
        extra_args = {"class_labels": labels}
    elif args.label is not None or args.cfg is not None:
        raise ValueError(f"model {ref.name!r} is unconditional: drop --label and --cfg")

    noise = seeded_noise(seeds, ref.shape)
    model(noise * sigmas[0], sigmas[0] * torch.ones(len(seeds)), **extra_args)  # warm-up, so timings compare
    base_fn = SAMPLERS[args.sampler]
    tele_fn = make_teleport_sampler(base_fn, ref.moments, handoff, mode=args.mode, mean=args.mean)
    base, base_calls, base_s = run_sampler(base_fn, model, noise, sigmas, extra_args, "plain   ", args.quiet,
                                         model_calls(args.sampler, sigmas))
    tele, tele_calls, tele_s = run_sampler(tele_fn, model, noise, sigmas, extra_args, "teleport", args.quiet,
                                         model_calls(args.sampler, plan.sigmas) + plan.probe_calls)

    cols = args.cols or max(1, int(len(seeds) ** 0.5 + 0.5))
    grid = side_by_side(to_uint8_grid(base, cols, args.scale), to_uint8_grid(tele, cols, args.scale))
    write_png(args.out, grid)
    return {"model": ref.name, "sigma_data": sd, "samples": len(seeds), "sampler": args.sampler,
            "schedule": args.schedule, "steps": steps, "handoff": str(handoff), "mean": args.mean,
            "plan": plan.summary(),
            "calls_plain": base_calls, "calls_teleport": tele_calls, "seconds_plain": base_s,
            "seconds_teleport": tele_s, "paired_rmse": paired_rmse(base, tele),
            "unpaired_rmse": unpaired_rmse(base), "out": args.out}


def summary_text(r: dict) -> str:
    saved = 1 - r["calls_teleport"] / r["calls_plain"]
    return "\n".join([
        f"model {r['model']} (σ_data {r['sigma_data']:.3g}), {r['samples']} samples, {r['sampler']} on the "
        f"{r['schedule']} schedule, {r['steps']} steps, hand-off {r['handoff']}, mean from the {r['mean']}",
        r["plan"],
        f"model calls: {r['calls_plain']} plain → {r['calls_teleport']} with teleport ({saved:.0%} fewer)",
        f"wall time:   {r['seconds_plain']:.2f} s plain → {r['seconds_teleport']:.2f} s with teleport (best of 2)",
        f"quality gap: same-seed RMSE {r['paired_rmse']:.4f} (pixels in [−1, 1]); two different seeds differ "
        f"by {r['unpaired_rmse']:.3f}",
        f"wrote {r['out']} (left: plain, right: teleport, same seeds in the same places)",
    ])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gaussian_teleport.demo",
                                description="Compare plain sampling with teleport on a shipped reference model.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"{' or '.join(REFERENCE_MODELS)}, or a weights file from reference.train")
    p.add_argument("--seeds", default="0-63", help="seeds, e.g. '0-63' or '1,2,5' (one sample each)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="heun", help="inner sampler")
    p.add_argument("--schedule", choices=SCHEDULES, default="edm",
                   help="edm: σ_max 80 (scaled to σ_data); sd: Stable-Diffusion-like σ 14.6 → 0.029")
    p.add_argument("--steps", type=int, default=None, help="schedule steps (default: heun 18, others 20)")
    p.add_argument("--handoff", default=None,
                   help="where the sampler takes over: 'sigma:3.5', 'steps:6' or 'fraction:0.3' "
                        f"(default: sigma {DEFAULT_HANDOFF_SQRT_LAMBDA:g}·√λ_max, the data's largest std)")
    p.add_argument("--mode", choices=("save", "same_budget"), default="save",
                   help="save: fewer model calls; same_budget: the same calls spent below the hand-off")
    p.add_argument("--mean", choices=MEANS, default=DEFAULT_MEAN,
                   help="model: each sample's mean from one model call (prompt/class-aware); data: the moments' mean")
    p.add_argument("--label", type=int, default=None, help="class for a class-conditional model "
                   "(default: seed mod classes)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (conditional models)")
    p.add_argument("--out", default="teleport_demo.png", help="output PNG")
    p.add_argument("--cols", type=int, default=None, help="grid columns")
    p.add_argument("--scale", type=int, default=4, help="pixel upscaling of the grid")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    result = compare(args)
    print(summary_text(result))
    return result


if __name__ == "__main__":
    main()
