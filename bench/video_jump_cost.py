"""What the teleport jump costs on video latents next to one video model call.

Times the closed-form jump (``teleport_jump`` on a flow model, t 1 → 0.9) on Wan 2.1 latents at 480p
(16×21×60×104: 81 frames of 832×480) and 720p (16×21×90×160: 81 frames of 1280×720), for:

- ``video_stationary`` moments estimated at a smaller size (16×5×16×16, the way a file is made from short,
  small clips) and served at the full size: the first call binds them (the spectrum resampled to the
  latent's frequencies and one C×C eigendecomposition per frequency), later calls reuse that binding;
- the per-channel diagonal Gaussian from Wan 2.1's published VAE statistics (``video_moments_from_vae_stats``).

A Wan model call cannot be timed here (no weights, and a CPU would take an hour per call), so the model call
is its arithmetic: the multiply-adds of the Wan 2.1 transformer at that latent size, from the published 1.3B
and 14B configs (diffusers scripts/convert_wan_to_diffusers.py: 30 layers of width 1536, FFN 8960; 40 of 5120,
FFN 13824; patches 1×2×2; 512 text tokens), over the float32 matrix-multiply rate measured on the same
machine. That is a lower bound on the call's time, so the percentages are upper bounds. On a GPU the jump
(FFTs and small per-frequency products: bandwidth-bound) gains less than the model (compute-bound): measure
the ratio there before quoting it for a GPU.

    python bench/video_jump_cost.py                       # writes video_jump_cost.md to a new temporary folder
    python bench/video_jump_cost.py --out bench/results   # replaces the committed bench/results/video_jump_cost.md
    python bench/video_jump_cost.py --quick               # small latents: a smoke run (printed, no file)
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from gaussian_teleport.bench.core_jump_cost import median_time, repeats
from gaussian_teleport.bench.core_moments_size import report_file, write_report
from gaussian_teleport.moments import VAE_STATS, VideoStationaryMoments, video_moments_from_vae_stats
from gaussian_teleport.scheduler import clear_binding_cache, teleport_jump

SIZES = {"Wan 480p": (16, 21, 60, 104), "Wan 720p": (16, 21, 90, 160)}
QUICK_SIZES = {"quick": (16, 5, 12, 20)}
ESTIMATED_AT = (16, 5, 16, 16)
WAN_CONFIGS = {"Wan2.1 1.3B": dict(layers=30, dim=1536, ffn=8960), "Wan2.1 14B": dict(layers=40, dim=5120, ffn=13824)}
TEXT_TOKENS = 512
T_FROM, T_TO = 1.0, 0.9


def wan_call_flops(shape, layers: int, dim: int, ffn: int, text: int = TEXT_TOKENS) -> float:
    """Floating-point operations (2 per multiply-add) of one Wan transformer call on a (C, T, H, W) latent.

    Per layer: self-attention projections (q, k, v, o) and scores/values over N = T·H/2·W/2 tokens,
    cross-attention (q, o on N tokens; k, v on the text; scores/values N × text), and the FFN. Norms,
    modulation, embeddings and the head are left out (a few percent), so this is a lower bound.
    """
    _, t, h, w = shape
    n = t * (h // 2) * (w // 2)
    self_attn = 4 * 2 * n * dim * dim + 2 * 2 * n * n * dim
    cross = 2 * 2 * n * dim * dim + 2 * 2 * text * dim * dim + 2 * 2 * n * text * dim
    mlp = 2 * 2 * n * dim * ffn
    return float(layers * (self_attn + cross + mlp))


def matmul_flops_per_second(size: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size ** 3 / median_time(lambda: a @ b, repeats)


def once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def stationary_moments(shape=ESTIMATED_AT) -> VideoStationaryMoments:
    """Moments with the sizes of an estimate at ``shape`` and unitary eigenvectors; values do not change the cost."""
    gen = torch.Generator().manual_seed(0)
    c, t, h, w = shape
    q = torch.linalg.qr(torch.randn(t, h, w, c, c, dtype=torch.complex64, generator=gen))[0]
    return VideoStationaryMoments(torch.randn(shape, generator=gen) * 0.1, torch.rand(t, h, w, c, generator=gen), q,
                                  count=1000, latent_format="none")


def cases():
    yield "video_stationary", f"estimated at {'×'.join(map(str, ESTIMATED_AT))}", stationary_moments()
    yield "video_stationary (VAE stats)", "Wan21 latents_mean / latents_std", \
        video_moments_from_vae_stats(*VAE_STATS["Wan21"], latent_format="Wan21")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small latents: checks the script runs; prints the report and, without --out, keeps no "
                         "file (default: off)")
    ap.add_argument("--repeats", type=repeats, default=3,
                    help="timed runs of the cached jump per case, the median kept (default: %(default)s)")
    ap.add_argument("--out", default=None,
                    help="report: a folder (bench/results replaces the committed one) or a .md file (default: a new "
                         "temporary folder; --quick: none, the report is printed)")
    return ap


@torch.no_grad()
def main(argv=None):
    args = build_parser().parse_args(argv)
    report = report_file(args.out, "video_jump_cost.md", args.quick)
    sizes = QUICK_SIZES if args.quick else SIZES
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    rate = matmul_flops_per_second(512 if args.quick else 2048, args.repeats)
    print(f"float32 matrix multiply: {rate / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} thread(s)")

    rows = []
    for name, shape in sizes.items():
        x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
        model_s = {k: wan_call_flops(shape, **cfg) / rate for k, cfg in WAN_CONFIGS.items()}
        for structure, source, m in cases():
            fmt = m.latent_format if m.latent_format != "none" else None
            jump = lambda: teleport_jump(m, x, T_FROM, T_TO, parameterization="flow", latent_format=fmt)  # noqa: E731
            clear_binding_cache()
            first = once(jump)
            later = median_time(jump, args.repeats)
            pct = {k: 100 * later / s for k, s in model_s.items()}
            rows.append((name, "×".join(map(str, shape)), structure, source, first, later, pct))
            print(f"{name:9s} {structure:30s}: first call {first:7.2f} s, then {later * 1e3:8.1f} ms = "
                  + ", ".join(f"{v:.4f}% of a {k} call" for k, v in pct.items()))
            del m
        clear_binding_cache()

    lines = [
        "# Teleport jump cost on video latents versus one Wan model call",
        "",
        f"Command: `python bench/video_jump_cost.py{' --quick' if args.quick else ''}` on "
        f"{torch.get_num_threads()} CPU thread(s), torch {torch.__version__}; the cached jump's time is the median of "
        f"{args.repeats} after a warm-up, the first call's one run; load average {load} at the start (other work on "
        "the machine slows every figure).",
        f"The jump: `teleport_jump` on a flow model from t {T_FROM} to t {T_TO}, batch 1, float32 (the moments' "
        "precision). The first call binds the moments to the latent size (for stationary moments estimated at "
        "another size the spectrum resampled to the latent's frequencies and one C×C eigendecomposition per "
        "frequency; cached per moments object and size, so a sampler pays it once per clip size).",
        f"The model call: the arithmetic of one Wan 2.1 transformer call at that latent size (published configs; "
        f"see the script) over this machine's float32 matrix-multiply rate, **{rate / 1e9:.1f} GFLOP/s**: "
        + "; ".join(f"{k} ≥ {wan_call_flops(next(iter(sizes.values())), **cfg) / 1e12:.0f} TFLOP at "
                    f"{next(iter(sizes))}" for k, cfg in WAN_CONFIGS.items())
        + ". A lower bound on the call's time, so the percentages are upper bounds. On a GPU the jump "
          "(bandwidth-bound FFTs and small products) speeds up less than the model: measure there before quoting a "
          "GPU figure.",
        "",
        "| latent | size (C×T×H×W) | moments | made from | first call: binding + jump (s) | later calls: jump (ms) | "
        + " | ".join(f"jump, % of one {k} call" for k in WAN_CONFIGS) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(WAN_CONFIGS),
    ]
    lines += [f"| {n} | {s} | {st} | {src} | {first:.2f} | {later * 1e3:.1f} | "
              + " | ".join(f"{v:.4f}%" for v in pct.values()) + " |"
              for n, s, st, src, first, later, pct in rows]
    write_report(report, lines)


if __name__ == "__main__":
    main()
