"""See teleport save model calls: ``python -m gaussian_teleport.demo``.

Samples the shipped reference model from the same seeds twice, once with the plain sampler and once
with the Gaussian jump over the high-noise steps, writes the two grids side by side to a PNG and
prints the model calls, wall time and how far the teleported samples are from their same-seed
baseline. Needs only torch, numpy and safetensors (tqdm and pillow are used when present).
"""

from __future__ import annotations

import argparse
import math
import os
import struct
import sys
import time
import zlib
from collections import Counter

import torch

from .moments import MomentsError
from .reference import DEFAULT_MODEL, REFERENCE_MODELS, GuidedDenoiser, check_label, load_reference
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
    """'0-63', '1,2,5' or '0-9,100': at least two different seeds (the summary compares different seeds)."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            span = range(int(lo), int(hi) + 1) if sep else [int(part)]
        except ValueError:
            raise ValueError(f"seeds {text!r} must look like '0-63' or '1,2,5' (whole numbers ≥ 0)") from None
        if not span:
            raise ValueError(f"seed range {part!r} is empty: write it low-high, e.g. '0-63'")
        seeds.extend(span)
    repeated = sorted(s for s, count in Counter(seeds).items() if count > 1)
    if repeated:
        raise ValueError(f"seeds {text!r} repeat {repeated[0]}: give each seed once")
    if len(seeds) < 2:
        raise ValueError(f"seeds {text!r} give one sample; give at least 2 seeds (e.g. '0-63'): the demo measures "
                         "teleport's change against how far different seeds' samples differ")
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


# A 5×7 bitmap font (the HD44780 character shapes), so the labels are drawn the same with or without
# pillow (the quick-start environment has none) and scale with the grid. Each glyph is 7 rows of 5 bits
# (the high bit on the left), as 14 hex digits.
FONT = {
    " ": "00000000000000", ",": "000000000c0408", ".": "00000000000c0c", ":": "000c0c000c0c00",
    "-": "0000001f000000", "(": "02040808080402", ")": "08040202020408", "%": "18190204081303",
    "0": "0e11131519110e", "1": "040c040404040e", "2": "0e11010204081f", "3": "1f02040201110e",
    "4": "02060a121f0202", "5": "1f101e0101110e", "6": "0608101e11110e", "7": "1f010204080808",
    "8": "0e11110e11110e", "9": "0e11110f01020c", "a": "00000e010f110f", "b": "1010161911111e",
    "c": "00000e1010110e", "d": "01010d1311110f", "e": "00000e111f100e", "f": "0609081c080808",
    "g": "000f11110f010e", "h": "10101619111111", "i": "04000c0404040e", "j": "0200060202120c",
    "k": "10101214181412", "l": "0c04040404040e", "m": "00001a15151111", "n": "00001619111111",
    "o": "00000e1111110e", "p": "00001e111e1010", "q": "00000d130f0101", "r": "00001619101010",
    "s": "00000e100e011e", "t": "08081c08080906", "u": "0000111111130d", "v": "00001111110a04",
    "w": "0000111115150a", "x": "0000110a040a11", "y": "000011110f010e", "z": "00001f0204081f",
}
GLYPH_W, GLYPH_H = 5, 7


def text_bitmap(text: str, px: int) -> torch.Tensor:
    """(7·px, 6·px·len(text)) bool: True where ``text`` is inked, each font pixel drawn as px × px."""
    columns = []
    for ch in text.lower():
        if ch not in FONT:
            raise ValueError(f"the demo's caption font has no {ch!r}; write captions with {''.join(sorted(FONT))!r}")
        rows = bytes.fromhex(FONT[ch])
        glyph = torch.tensor([[bool(r >> (GLYPH_W - 1 - i) & 1) for i in range(GLYPH_W)] for r in rows])
        columns += [glyph, torch.zeros(GLYPH_H, 1, dtype=torch.bool)]     # one blank column between letters
    bits = torch.cat(columns, 1) if columns else torch.zeros(GLYPH_H, 0, dtype=torch.bool)
    return bits.repeat_interleave(px, 0).repeat_interleave(px, 1)


def captioned(rgb: torch.Tensor, text: str, px: int) -> torch.Tensor:
    """``rgb`` below a white band with ``text`` in black, widened (white on the right) if the text is wider."""
    ink = text_bitmap(text, px)
    margin = px
    band_h, width = ink.shape[0] + 2 * margin, max(rgb.shape[1], ink.shape[1] + 2 * margin)
    out = torch.full((band_h + rgb.shape[0], width, 3), 255, dtype=torch.uint8)
    out[margin:margin + ink.shape[0], margin:margin + ink.shape[1]][ink] = 0
    out[band_h:, :rgb.shape[1]] = rgb
    return out


def comparison_image(plain: torch.Tensor, teleport: torch.Tensor, cols: int, scale: int, gap: int = 12,
                     labels: tuple[str, str] = ("plain", "teleport")) -> torch.Tensor:
    """The plain grid left, the teleport grid right, each under its label (drawn in, legible at any scale)."""
    px = max(1, scale // 2)        # the labels grow with the grid's upscaling, as the images do
    return side_by_side(captioned(to_uint8_grid(plain, cols, scale), labels[0], px),
                        captioned(to_uint8_grid(teleport, cols, scale), labels[1], px), gap)


def image_suffixes() -> tuple[str, ...]:
    """What write_png can write: PNG always, JPEG with pillow."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        return (".png",)
    return (".png", ".jpg", ".jpeg")


def check_output(path: str, overwrite: bool) -> None:
    """Before any sampling: an image suffix, an existing writable folder, and no file replaced unasked."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in image_suffixes():
        extra = "" if ".jpg" in image_suffixes() else " (.jpg needs pillow)"
        raise ValueError(f"--out {path!r} is not an image file name: end it in {' or '.join(image_suffixes())}{extra}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"the folder of --out {path!r} does not exist: create it or give another --out")
    if os.path.isdir(path):
        raise ValueError(f"--out {path!r} is a folder: give a file name such as {os.path.join(path, 'demo.png')}")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"--out {path!r} already exists: give --overwrite to replace it, or another --out")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"the folder of --out {path!r} is not writable: give another --out")


def write_png(path: str, rgb: torch.Tensor):
    """Write an (H, W, 3) uint8 image (with pillow in the format of the suffix, else a PNG)."""
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


def conditioning(ref, seeds: list[int], label: int | None, cfg: float | None):
    """(model, extra_args): class labels (the seed's class by default) and guidance on a conditional model."""
    classes = ref.model.cfg.num_classes
    if not classes:
        if label is not None or cfg is not None:
            raise ValueError(f"model {ref.name!r} is unconditional: drop --label and --cfg")
        return ref.model, {}
    labels = torch.tensor(seeds) % classes if label is None else torch.full((len(seeds),), check_label(ref, label))
    return (ref.model if cfg is None else GuidedDenoiser(ref.model, cfg)), {"class_labels": labels}


@torch.no_grad()
def compare(args) -> dict:
    ref = load_reference(args.model)
    sd = ref.sigma_data
    seeds = parse_seeds(args.seeds) if isinstance(args.seeds, str) else args.seeds
    steps = DEFAULT_STEPS[args.sampler] if args.steps is None else args.steps
    sigmas = make_sigmas(args.schedule, steps, sd)
    handoff = Handoff.parse(args.handoff) if args.handoff else default_handoff(ref.moments)
    plan = plan_teleport(sigmas, handoff, args.mode, mean=args.mean, can_respace=True)  # as sample_teleport plans
    model, extra_args = conditioning(ref, seeds, args.label, args.cfg)

    noise = seeded_noise(seeds, ref.shape)
    model(noise * sigmas[0], sigmas[0] * torch.ones(len(seeds)), **extra_args)  # warm-up, so timings compare
    base_fn = SAMPLERS[args.sampler]
    tele_fn = make_teleport_sampler(base_fn, ref.moments, handoff, mode=args.mode, mean=args.mean)
    base, base_calls, base_s = run_sampler(base_fn, model, noise, sigmas, extra_args, "plain   ", args.quiet,
                                         model_calls(args.sampler, sigmas))
    tele, tele_calls, tele_s = run_sampler(tele_fn, model, noise, sigmas, extra_args, "teleport", args.quiet,
                                         model_calls(args.sampler, plan.sigmas) + plan.probe_calls)

    cols = args.cols or max(1, int(len(seeds) ** 0.5 + 0.5))
    labels = (f"plain, {base_calls} calls", f"teleport, {tele_calls} calls")
    write_png(args.out, comparison_image(base, tele, cols, args.scale, labels=labels))
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


def checked(parse, least=None):
    """An argparse type from a parser that raises ValueError (its message becomes argparse's error)."""
    def convert(text):
        try:
            value = parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if least is not None and value < least:
            raise argparse.ArgumentTypeError(f"got {value}; give {least} or more")
        return value
    return convert


def whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"got {text}; the guidance scale must be a finite number")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gaussian_teleport.demo",
                                description="Compare plain sampling with teleport on a shipped reference model.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"{' or '.join(REFERENCE_MODELS)}, or a weights file from reference.train "
                        "(default: %(default)s)")
    p.add_argument("--seeds", type=checked(parse_seeds), default="0-63",
                   help="seeds, e.g. '0-63' or '1,2,5', at least 2 (one sample each; default: %(default)s)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="heun", help="inner sampler (default: %(default)s)")
    p.add_argument("--schedule", choices=SCHEDULES, default="edm",
                   help="edm: σ_max 80 (scaled to σ_data); sd: Stable-Diffusion-like σ 14.6 → 0.029 "
                        "(default: %(default)s)")
    p.add_argument("--steps", type=checked(whole, 1), default=None, help="schedule steps (default: heun 18, others 20)")
    p.add_argument("--handoff", type=checked(Handoff.parse), default=None,
                   help="where the sampler takes over: 'sigma:3.5', 'steps:6' or 'fraction:0.3' "
                        f"(default: sigma {DEFAULT_HANDOFF_SQRT_LAMBDA:g}·√λ_max, the data's largest std)")
    p.add_argument("--mode", choices=("save", "same_budget"), default="save",
                   help="save: fewer model calls; same_budget: the same calls spent below the hand-off "
                        "(default: %(default)s)")
    p.add_argument("--mean", choices=MEANS, default=DEFAULT_MEAN,
                   help="model: each sample's mean from one model call (prompt/class-aware); data: the moments' mean "
                        "(default: %(default)s)")
    p.add_argument("--label", type=checked(whole, 0), default=None, help="class for a class-conditional model "
                   "(default: seed mod classes)")
    p.add_argument("--cfg", type=checked(finite), default=None,
                   help="classifier-free guidance scale (conditional models; default: none, no guidance)")
    p.add_argument("--out", default="teleport_demo.png",
                   help="output image, .png (or .jpg with pillow); never replaced without --overwrite "
                        "(default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (default: refuse)")
    p.add_argument("--cols", type=checked(whole, 1), default=None, help="grid columns (default: √samples, rounded)")
    p.add_argument("--scale", type=checked(whole, 1), default=4,
                   help="pixel upscaling of the grid (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: show them)")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    try:
        check_output(args.out, args.overwrite)     # before any sampling
        result = compare(args)
    except (ValueError, MomentsError, OSError) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(summary_text(result))
    return result


if __name__ == "__main__":
    main()
