"""Moments file size and estimation throughput versus latent size, structure and rank.

File sizes are measured on files written by save_moments (float32 and float16 eigenvectors; the
default, "auto", is float16 once the eigenvectors exceed 2²⁴ values).
Throughput is latents per second through MomentAccumulator.add in float64 on random latents, measured
past the point where the low-rank sketch starts truncating (its steady state).
Target: a 16×128×128 (Flux) latent's moments ≤ 200 MB on disk.

    python bench/core_moments_size.py                       # writes core_moments_size.md to a new temporary folder
    python bench/core_moments_size.py --out bench/results   # replaces the committed bench/results/core_moments_size.md
    python bench/core_moments_size.py --quick               # small latents: a smoke run (printed, no file)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from gaussian_teleport.bench import RESULTS, report_path, write_markdown
from gaussian_teleport.moments import MomentAccumulator, save_moments
from gaussian_teleport.moments.eigen import default_sketch

SIZES = {"SD1.5": (4, 64, 64), "SDXL": (4, 128, 128), "Flux": (16, 128, 128)}


def finalize_random(structure, shape, rank, samples, batch):
    """Estimate from random latents; returns (moments, latents per second of add())."""
    gen = torch.Generator().manual_seed(0)
    acc = MomentAccumulator(structure, rank=rank)
    seconds = 0.0
    for start in range(0, samples, batch):
        x = torch.randn(min(batch, samples - start), *shape, generator=gen)
        t0 = time.perf_counter()
        acc.add(x)
        seconds += time.perf_counter() - t0
    return acc.finalize(), samples / seconds


def report_file(out: str | None, name: str, quick: bool = False) -> str | None:
    """Where a core benchmark's report goes: a new temporary folder by default (the committed results change only
    when asked: ``--out bench/results``), into a folder given as --out, or the .md file given as --out. None for a
    --quick smoke run without --out: its report is printed and nothing is left behind (see write_report)."""
    if out is None and quick:
        return None
    if out is None:
        path = report_path(None, True, name)
        committed = os.path.relpath(RESULTS) if not os.path.relpath(RESULTS).startswith("..") else RESULTS
        print(f"writing to a temporary folder; give --out {committed} to replace the committed report")
        return path
    path = os.path.join(out, name) if os.path.isdir(out) or not out.endswith(".md") else out
    if quick and os.path.realpath(os.path.dirname(os.path.abspath(path))) == os.path.realpath(RESULTS):
        raise SystemExit(f"error: --quick with --out {out} would replace the committed {name} with a smoke run's "
                         "numbers; give another --out, or drop --quick to regenerate it")
    return path


def write_report(path: str | None, lines: list[str]) -> None:
    """The report into ``path``, or printed when there is none (a smoke run keeps nothing)."""
    if path is not None:
        write_markdown(path, lines)
        return
    print("\n".join(lines))
    print("a --quick run keeps nothing; give --out FOLDER to keep its report")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small latents: checks the script runs; prints the report and, without --out, keeps no "
                         "file (default: off)")
    ap.add_argument("--out", default=None,
                    help="report: a folder (bench/results replaces the committed one) or a .md file (default: a new "
                         "temporary folder; --quick: none, the report is printed)")
    return ap


@torch.no_grad()   # a decorator, so a caller's grad mode is left as it was
def main(argv=None):
    args = build_parser().parse_args(argv)
    report = report_file(args.out, "core_moments_size.md", args.quick)
    sizes = {"tiny": (4, 16, 16)} if args.quick else SIZES
    ranks = [16] if args.quick else [64, 256]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in sizes.items():
            cases = [("lowrank", r) for r in ranks] + [("stationary", shape[0])]
            for structure, rank in cases:
                batch = 16
                samples = (default_sketch(rank) + 4 * batch) if structure == "lowrank" else 4 * batch
                m, rate = finalize_random(structure, shape, rank, samples, batch)
                sizes_mb = []
                for dtype in ("float32", "float16"):
                    path = save_moments(m, os.path.join(tmp, f"{name}-{structure}-{rank}-{dtype}.safetensors"),
                                        dtype=dtype)
                    sizes_mb.append(os.path.getsize(path) / 1e6)
                    os.remove(path)
                rows.append((name, "×".join(map(str, shape)), structure, rank, *sizes_mb, rate, samples))
                print(f"{name:6s} {structure:10s} rank {rank:4d}: {sizes_mb[0]:8.1f} MB fp32, {sizes_mb[1]:8.1f} MB "
                      f"fp16 eigenvectors; {rate:8.1f} latents/s over {samples} latents")
    lines = [
        "# Moments file size and estimation throughput",
        "",
        f"Command: `python bench/core_moments_size.py{' --quick' if args.quick else ''}` on "
        f"{torch.get_num_threads()} CPU thread(s), torch {torch.__version__}. Random latents, float64 "
        "accumulation, batches of 16; low-rank throughput measured past the sketch's first truncation "
        "(sketch = max(2·rank, rank + 128) columns).",
        "",
        "| latent | size | structure | rank | file, fp32 eigvecs (MB) | file, fp16 eigvecs (MB) | "
        "estimation (latents/s) | latents |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {r} | {s32:.1f} | {s16:.1f} | {rate:.1f} | {n} |"
              for a, b, c, r, s32, s16, rate, n in rows]
    if not args.quick:
        lines += ["", "Dense moments of SD1.5 latents would take 1.07 GB (D² fp32 values); SDXL 17 GB; Flux 275 GB: "
                      "the estimator refuses dense above D = 4096 and points to 'lowrank' or 'stationary'."]
    write_report(report, lines)


if __name__ == "__main__":
    main()
