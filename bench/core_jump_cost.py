"""What the jump and a Gaussian solver step cost next to one model call.

Times one call of an SD1.5-sized UNet (diffusers' UNet2DConditionModel built from the SD1.5 config,
random weights: the real architecture without the weights) on a 4×64×64 latent, the teleport jump
(the first call with its binding of the moments, and the later, cached calls, exactly as the sampler runs it),
and the Gaussian solver's own arithmetic per step (sample_gaussian with its defaults and a model that costs
nothing, so all that is timed is the solver: its mean over the steps of a 20-step run that compute, the
binding cached) for each moments structure and rank at SD1.5 (4×64×64), SDXL (4×128×128) and Flux
(16×128×128) latent sizes. Targets: a rank-256 jump and a solver step each ≤ 0.5% of one SD1.5 UNet call at
SD1.5 and SDXL sizes. Needs diffusers (``pip install diffusers``) for the UNet.

    python bench/core_jump_cost.py                          # writes core_jump_cost.md to a new temporary folder
    python bench/core_jump_cost.py --out bench/results      # replaces the committed bench/results/core_jump_cost.md
    python bench/core_jump_cost.py --quick                  # tiny UNet, small latents: a smoke run (printed, no file)
    python bench/core_jump_cost.py --threads 1 --clock cpu  # one core's CPU time: steady on a machine other jobs use
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import torch

from gaussian_teleport.bench.core_moments_size import report_file, write_report
from gaussian_teleport.moments import LowRankMoments, StationaryMoments, DenseMoments
from gaussian_teleport.scheduler import clear_binding_cache, get_sigmas_karras, teleport_jump
from gaussian_teleport.scheduler.solver import sample_gaussian

SIZES = {"SD1.5": (4, 64, 64), "SDXL": (4, 128, 128), "Flux": (16, 128, 128)}
SOLVER_STEPS = 20
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, cross_attention_dim=768,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8)
TINY_UNET = dict(sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=32,
                 block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=4,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
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


def solver_step_seconds(moments, x, steps: int, repeats: int) -> float:
    """The solver's own time per computing step: a run of ``steps`` with a model that returns a fixed output
    (its last step, to σ = 0, returns the model's output and computes nothing, so it is not counted)."""
    denoised = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 0.5
    sigmas = get_sigmas_karras(steps, 0.03, 14.6)
    return median_time(lambda: sample_gaussian(lambda *_: denoised, x, sigmas, moments=moments, disable=True),
                       repeats) / (steps - 1)


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
    ap.add_argument("--threads", type=repeats, default=None,
                    help="CPU threads for torch (default: torch's own choice). On a machine other jobs are also using, "
                         "1 keeps small operations from waiting on a second thread that is not running")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time (all its threads), which time slices given "
                         "to other jobs do not inflate: with --threads 1, the work of one core (default: %(default)s)")
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
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    global clock
    clock = CLOCKS[args.clock]

    if args.quick:
        sizes, ranks, unet_cfg, dense_max = {"tiny": (4, 16, 16)}, [16], TINY_UNET, 1024
    else:
        sizes, ranks, unet_cfg, dense_max = SIZES, [64, 256], SD15_UNET, 16384
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    unet_s = unet_call_seconds(unet_cfg, args.repeats)
    print(f"UNet call ({'tiny' if args.quick else 'SD1.5 config'}, batch 1): {unet_s * 1e3:.1f} ms")

    rows = []
    for name, shape, structure, rank in jump_cases(sizes, ranks, dense_max):
        m = random_moments(structure, shape, rank)
        x = torch.randn(1, *shape) * 14.6
        first = median_time(lambda: (clear_binding_cache(), teleport_jump(m, x, 14.6, 3.0)), args.repeats)
        secs = median_time(lambda: teleport_jump(m, x, 14.6, 3.0), args.repeats)
        step = solver_step_seconds(m, x, SOLVER_STEPS, args.repeats)
        rows.append((name, "×".join(map(str, shape)), structure, rank, first * 1e3, secs * 1e3, 100 * secs / unet_s,
                     step * 1e3, 100 * step / unet_s))
        print(f"{name:6s} {structure:10s} rank {rank:6d}: first {first * 1e3:9.2f} ms, then jump {secs * 1e3:9.2f} ms "
              f"= {100 * secs / unet_s:7.3f}%, solver step {step * 1e3:9.2f} ms = {100 * step / unet_s:7.3f}% "
              f"of one UNet call")
        del m

    lines = [
        "# Jump and Gaussian solver step cost versus one SD1.5 UNet call",
        "",
        f"Command: `python bench/core_jump_cost.py{' --quick' if args.quick else ''}"
        f"{f' --threads {args.threads}' if args.threads is not None else ''}"
        f"{f' --clock {args.clock}' if args.clock != 'wall' else ''}` on {torch.get_num_threads()} CPU thread(s), "
        f"torch {torch.__version__}; median of {args.repeats} "
        f"{'wall-clock times' if args.clock == 'wall' else 'CPU times of the process'}; load average {load} at the "
        "start (other jobs on the machine inflate wall-clock times, small operations' most).",
        f"One UNet call ({'tiny test config' if args.quick else 'SD1.5 config, random weights'}, batch 1, "
        f"{unet_cfg['sample_size']}×{unet_cfg['sample_size']} latent): **{unet_s * 1e3:.0f} ms**.",
        "The jump computes in the moments' precision (float32 here). The first sampling call with a moments "
        "object binds it to the latent size (conversion, the operator; for stationary moments at a new size a "
        "resampled spectrum); later calls with the same moments and size reuse that binding.",
        f"Solver step: `sample_gaussian` with its defaults (order 3, the noise residual in log σ, no corrector), the "
        f"binding cached, and a model that returns a fixed output, over a {SOLVER_STEPS}-step Karras schedule "
        f"σ 14.6 → 0.03; the time per step is the run's over its {SOLVER_STEPS - 1} steps that compute (the last, to "
        "σ = 0, returns the model's output). Each step is the new call's residual (one pass over the eigenbasis) "
        "and the Gaussian propagation with the residuals' polynomial (one more, all terms together).",
    ]
    if not args.quick:
        lines += ["Every percentage is of the SD1.5 UNet call above, also at SDXL and Flux sizes, where the models "
                  "are larger and see 4× the latent pixels: there it overstates the share of their own call."]
    lines += [
        "",
        "| latent | size | structure | rank | first call: binding + jump (ms) | later calls: jump (ms) | "
        "jump, % of one UNet call | solver step (ms) | solver step, % of one UNet call |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {r} | {ms0:.2f} | {ms:.2f} | {pct:.3f}% | {sms:.2f} | {spct:.3f}% |"
              for a, b, c, r, ms0, ms, pct, sms, spct in rows]
    if not args.quick:
        lines += ["", "Dense moments are benchmarked only where D×D fits: SDXL needs 16 GiB and Flux 256 GiB "
                      "(fp32) for the eigenvectors alone."]
    write_report(report, lines)


if __name__ == "__main__":
    main()
