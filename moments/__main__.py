"""Command line: estimate moments from latent files, or describe a moments file.

    python -m gaussian_teleport.moments estimate LATENTS... --out moments.safetensors [--structure lowrank]
    torchrun --nproc_per_node 4 -m gaussian_teleport.moments estimate LATENTS... --out moments.safetensors
    python -m gaussian_teleport.moments info moments.safetensors

LATENTS are safetensors files (ComfyUI's .latent files included) holding raw VAE latents (B, C, H, W)
or (C, H, W). Under torchrun each process reads every world-size-th file and the statistics are
all-reduced (gloo on CPU, NCCL when CUDA is available), so the result equals a single-process run.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import torch

from .estimate import MomentAccumulator
from .io import load_moments, read_header, save_moments
from .structures import STRUCTURES, MomentsError

LATENT_KEYS = ("latent_tensor", "latent", "samples", "latents")


def read_latents(path: str) -> torch.Tensor:
    """The latent tensor of a safetensors file: a known key, or its only tensor."""
    from safetensors.torch import load_file

    read_header(path)  # refuses pickles and truncated files with a clear message
    tensors = {k: v for k, v in load_file(path).items() if v.dim() in (3, 4)}
    for key in LATENT_KEYS:
        if key in tensors:
            return tensors[key]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise MomentsError(f"{path}: cannot tell which tensor is the latent (found {sorted(tensors)}); "
                       f"name it one of {LATENT_KEYS}")


def expand(patterns: list[str]) -> list[str]:
    files = []
    for p in patterns:
        if os.path.isdir(p):
            files += sorted(glob.glob(os.path.join(p, "*.safetensors")) + glob.glob(os.path.join(p, "*.latent")))
        else:
            files += sorted(glob.glob(p)) or [p]
    return files


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def estimate(args) -> int:
    files = expand(args.latents)
    if not files:
        raise SystemExit("no latent files matched")
    rank, world = 0, 1
    if _distributed():
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    acc = MomentAccumulator(args.structure, rank=args.rank)
    for path in files[rank::world]:
        acc.add(read_latents(path))
    if world > 1:
        acc.all_reduce()
    if rank == 0:
        m = acc.finalize(space=args.space, latent_format=args.latent_format,
                         metadata={"source_files": str(len(files))})
        save_moments(m, args.out, dtype=args.dtype, overwrite=args.overwrite)
        print(f"wrote {args.out}: {m.describe()}")
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def info(args) -> int:
    m = load_moments(args.file)
    print(m.describe())
    for k, v in sorted(m.metadata.items()):
        print(f"  {k}: {v}")
    top = m.variances()[:8].tolist()
    print("  top variances: " + ", ".join(f"{v:.4g}" for v in top))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gaussian_teleport.moments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    est = sub.add_parser("estimate", help="estimate moments from latent files")
    est.add_argument("latents", nargs="+", help="safetensors files, folders or glob patterns")
    est.add_argument("--out", required=True)
    est.add_argument("--structure", choices=STRUCTURES, default="lowrank")
    est.add_argument("--rank", type=int, default=256, help="eigenpairs kept by 'lowrank'")
    est.add_argument("--space", choices=("raw", "model"), default="raw")
    est.add_argument("--latent-format", default="none", help="e.g. SD15, SDXL, SD3, Flux")
    est.add_argument("--dtype", choices=("auto", "float32", "float16"), default="auto",
                     help="storage precision of the eigenvectors (auto: float16 for large ones)")
    est.add_argument("--overwrite", action="store_true")
    est.set_defaults(fn=estimate)
    inf = sub.add_parser("info", help="describe a moments file")
    inf.add_argument("file")
    inf.set_defaults(fn=info)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (MomentsError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
