"""What the jump costs next to one model call.

Times one call of an SD1.5-sized UNet (diffusers' UNet2DConditionModel built from the SD1.5 config,
random weights: the real architecture without the weights) on a 4×64×64 latent, and the teleport jump
(the first call with its binding of the moments, and the later, cached calls, exactly as the sampler runs it) for each moments
structure and rank at SD1.5 (4×64×64), SDXL (4×128×128) and Flux (16×128×128) latent sizes.
Target: a rank-256 jump ≤ 0.5% of one SD1.5 UNet call. Needs diffusers (``pip install diffusers``) for the UNet.

    python bench/core_jump_cost.py                          # writes core_jump_cost.md to a new temporary folder
    python bench/core_jump_cost.py --out bench/results      # replaces the committed bench/results/core_jump_cost.md
    python bench/core_jump_cost.py --quick                  # tiny UNet, small latents: a smoke run (printed, no file)
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch

from gaussian_teleport.bench.core_moments_size import report_file, write_report
from gaussian_teleport.moments import LowRankMoments, StationaryMoments, DenseMoments
from gaussian_teleport.scheduler import clear_binding_cache, teleport_jump

SIZES = {"SD1.5": (4, 64, 64), "SDXL": (4, 128, 128), "Flux": (16, 128, 128)}
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, cross_attention_dim=768,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8)
TINY_UNET = dict(sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=32,
                 block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=4,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def unet_call_seconds(config: dict, repeats: int) -> float:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    size = config["sample_size"]
    x = torch.randn(1, 4, size, size)
    ctx = torch.randn(1, 77, config["cross_attention_dim"])
    t = torch.tensor([999])
    with torch.no_grad():
        return median_time(lambda: unet(x, t, encoder_hidden_states=ctx), repeats)


def random_moments(structure: str, shape, rank: int):
    """Moments with the right sizes and orthonormal eigenvectors; values do not change the cost."""
    gen = torch.Generator().manual_seed(0)
    c, h, w = shape
    d = c * h * w
    mean = torch.randn(shape, generator=gen) * 0.1
    kw = dict(count=1000)
    if structure == "stationary":
        q = torch.linalg.qr(torch.randn(h, w, c, c, dtype=torch.complex64, generator=gen))[0]
        return StationaryMoments(mean, torch.rand(h, w, c, generator=gen), q, **kw)
    lam = torch.rand(rank, generator=gen).sort(descending=True).values
    if structure == "dense":  # a QR of D×D would take minutes; orthonormality does not change the cost
        return DenseMoments(mean, lam, torch.randn(d, d, generator=gen) / d ** 0.5, **kw)
    u = torch.linalg.qr(torch.randn(d, rank, generator=gen))[0]
    return LowRankMoments(mean, lam, u, 0.01, **kw)


def jump_cases(sizes: dict, ranks: list[int], dense_max_dim: int):
    for name, shape in sizes.items():
        d = shape[0] * shape[1] * shape[2]
        for rank in ranks:
            yield name, shape, "lowrank", rank
        yield name, shape, "stationary", shape[0]
        if d <= dense_max_dim:
            yield name, shape, "dense", d


def repeats(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; give a whole number ≥ 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny UNet and latents: checks the script runs; prints the report and, without --out, "
                         "keeps no file (default: off)")
    ap.add_argument("--repeats", type=repeats, default=3,
                    help="timed runs per case, the median kept (default: %(default)s)")
    ap.add_argument("--out", default=None,
                    help="report: a folder (bench/results replaces the committed one) or a .md file (default: a new "
                         "temporary folder; --quick: none, the report is printed)")
    return ap


@torch.no_grad()   # a decorator, so a caller's grad mode is left as it was
def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if importlib.util.find_spec("diffusers") is None:
        ap.error("the UNet it times comes from diffusers, which is not installed: pip install diffusers")
    report = report_file(args.out, "core_jump_cost.md", args.quick)

    if args.quick:
        sizes, ranks, unet_cfg, dense_max = {"tiny": (4, 16, 16)}, [16], TINY_UNET, 1024
    else:
        sizes, ranks, unet_cfg, dense_max = SIZES, [64, 256], SD15_UNET, 16384
    unet_s = unet_call_seconds(unet_cfg, args.repeats)
    print(f"UNet call ({'tiny' if args.quick else 'SD1.5 config'}, batch 1): {unet_s * 1e3:.1f} ms")

    rows = []
    for name, shape, structure, rank in jump_cases(sizes, ranks, dense_max):
        m = random_moments(structure, shape, rank)
        x = torch.randn(1, *shape) * 14.6
        first = median_time(lambda: (clear_binding_cache(), teleport_jump(m, x, 14.6, 3.0)), args.repeats)
        secs = median_time(lambda: teleport_jump(m, x, 14.6, 3.0), args.repeats)
        rows.append((name, "×".join(map(str, shape)), structure, rank, first * 1e3, secs * 1e3, 100 * secs / unet_s))
        print(f"{name:6s} {structure:10s} rank {rank:6d}: first {first * 1e3:9.2f} ms, then jump {secs * 1e3:9.2f} ms "
              f"= {100 * secs / unet_s:7.3f}% "
              f"of one UNet call")
        del m

    lines = [
        "# Jump cost versus one SD1.5 UNet call",
        "",
        f"Command: `python bench/core_jump_cost.py{' --quick' if args.quick else ''}` on "
        f"{torch.get_num_threads()} CPU thread(s), torch {torch.__version__}; median of {args.repeats}.",
        f"One UNet call ({'tiny test config' if args.quick else 'SD1.5 config, random weights'}, batch 1, "
        f"{unet_cfg['sample_size']}×{unet_cfg['sample_size']} latent): **{unet_s * 1e3:.0f} ms**.",
        "The jump computes in the moments' precision (float32 here). The first sampling call with a moments "
        "object binds it to the latent size (conversion, the operator; for stationary moments at a new size a "
        "resampled spectrum); later calls with the same moments and size reuse that binding.",
        "",
        "| latent | size | structure | rank | first call: binding + jump (ms) | later calls: jump (ms) | "
        "% of one UNet call |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {r} | {ms0:.2f} | {ms:.2f} | {pct:.3f}% |" for a, b, c, r, ms0, ms, pct in rows]
    if not args.quick:
        lines += ["", "Dense moments are benchmarked only where D×D fits: SDXL needs 16 GiB and Flux 256 GiB "
                      "(fp32) for the eigenvectors alone."]
    write_report(report, lines)


if __name__ == "__main__":
    main()
