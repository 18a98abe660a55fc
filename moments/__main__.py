"""Command line: estimate moments from latent files or from a model, or describe a moments file.

    python -m gaussian_teleport.moments estimate LATENTS... --out moments.safetensors [--structure lowrank]
    torchrun --nproc_per_node 4 -m gaussian_teleport.moments estimate LATENTS... --out moments.safetensors
    python -m gaussian_teleport.moments from-model --model digits --out digits-model.safetensors
    python -m gaussian_teleport.moments info moments.safetensors

LATENTS are safetensors files (ComfyUI's .latent files included), folders of them or glob patterns,
holding raw VAE latents (B, C, H, W) or (C, H, W); moments files found among them are skipped. Under
torchrun each process reads every world-size-th file and the statistics are all-reduced (gloo on CPU,
NCCL when CUDA is available), so the result equals a single-process run; each process waits at most
``--join-timeout`` seconds (60) for the others to join, and says so. ``from-model`` reads the
moments off a k-diffusion-form denoiser's Jacobian: a reference model (digits, patches, a weights file
from reference.train) or ``module:function`` returning (model, latent_shape, parameterization).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from datetime import timedelta

import torch

from .base import DEFAULT_RANK, MomentAccumulator, MomentsError, structures
from .latent_formats import check_format_channels, check_format_name, known_format_names
from .files import is_moments_file, load_moments, read_header, save_moments
from .from_model import (DEFAULT_DRAWS, DEFAULT_ITERATIONS, DEFAULT_MODEL_RANK, DEFAULT_SIGMA, DEFAULT_STEP,
                         STRUCTURES_FROM_MODEL, estimate_moments_from_model)

LATENT_KEYS = ("latent_tensor", "latent", "samples", "latents")
JOIN_TIMEOUT = 60.0   # seconds a torchrun process waits for the others before it gives up


class UsageError(Exception):
    """A mistake in the command line: printed as 'error: …' with exit status 2, no traceback."""


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


def expand(patterns: list[str], skip: str | None = None) -> list[str]:
    """Files named by paths, folders and glob patterns; every pattern must match something.

    Moments files in a folder or glob (an earlier --out, say) are skipped with a note on stderr.
    """
    files = []
    for p in patterns:
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "*.safetensors")) + glob.glob(os.path.join(p, "*.latent")))
            if not found:
                raise UsageError(f"folder {p} holds no .safetensors or .latent files")
        elif any(ch in p for ch in "*?["):
            found = sorted(glob.glob(p))
            if not found:
                raise UsageError(f"no files match {p!r}")
        elif os.path.isfile(p):
            found = [p]
        else:
            raise UsageError(f"no such file or folder: {p}")
        for f in found:
            if skip is not None and os.path.abspath(f) == os.path.abspath(skip):
                continue
            if is_moments_file(f):
                print(f"note: skipping {f}: it is a moments file, not latents", file=sys.stderr)
                continue
            files.append(f)
    if not files:
        raise UsageError("none of the inputs holds latents")
    return files


def check_output(path: str, overwrite: bool) -> None:
    """Refuse an output that cannot be written, before any work is done."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"the folder of --out does not exist: {folder}; create it first")
    if os.path.isdir(path):
        raise UsageError(f"--out {path} is a folder; give a file name such as "
                         f"{os.path.join(path, 'moments.safetensors')}")
    if os.path.exists(path) and not overwrite:
        raise UsageError(f"{path} already exists; choose another --out or pass --overwrite")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write to {folder}")


TORCHRUN = "torchrun --nproc_per_node N -m gaussian_teleport.moments estimate …"


def world_size() -> int:
    """The process count torchrun set in WORLD_SIZE (1 when unset); UsageError for anything but a whole number ≥ 1."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(text)
    except ValueError:
        world = 0
    if world < 1:
        raise UsageError(f"WORLD_SIZE={text!r} in the environment is not a process count (a whole number ≥ 1); "
                         f"torchrun sets it for the processes it starts ({TORCHRUN}). Unset it to run in one process")
    return world


def join_processes(world: int, timeout: float):
    """Join the torchrun group (waiting at most ``timeout`` s); returns (rank, the group the statistics use)."""
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    print(f"WORLD_SIZE={world}: waiting up to {timeout:g} s for the other {world - 1} process(es) to join "
          f"({TORCHRUN} starts them together; unset WORLD_SIZE to run in one process)", file=sys.stderr)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    except (ValueError, RuntimeError) as exc:   # missing RANK/MASTER_ADDR, or the others never came (DistStoreError)
        raise UsageError(f"could not join the other {world - 1} process(es): {exc}. Start every process with "
                         f"{TORCHRUN} (or raise --join-timeout), or unset WORLD_SIZE to run in one process") from None
    # The short timeout is for joining; reading files and reducing may take long on some processes.
    return dist.get_rank(), dist.new_group(timeout=timedelta(minutes=30))


def estimate(args) -> int:
    check_format_name(args.latent_format)
    if not args.join_timeout > 0:
        raise UsageError(f"--join-timeout must be a number of seconds > 0, got {args.join_timeout:g}")
    world = world_size()
    rank, group = join_processes(world, args.join_timeout) if world > 1 else (0, None)
    if rank == 0:
        check_output(args.out, args.overwrite)
    files = expand(args.latents, skip=args.out)
    acc = MomentAccumulator(args.structure, rank=args.rank)
    for path in files[rank::world]:
        acc.add(read_latents(path))
        check_format_channels(args.latent_format, acc.shape[0])
    if world > 1:
        acc.all_reduce(group)
    if rank == 0:
        m = acc.finalize(space=args.space, latent_format=args.latent_format,
                         metadata={"source": "latents", "source_files": str(len(files))},
                         progress=lambda message: print(f"{message} …", file=sys.stderr))
        save_moments(m, args.out, dtype=args.dtype, overwrite=args.overwrite)
        print(f"wrote {args.out}: {m.describe()}")
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def from_model(args) -> int:
    from ..reference import load_denoiser

    check_output(args.out, args.overwrite)
    model, shape, param, extra_args = load_denoiser(args.model, label=args.label)
    m = estimate_moments_from_model(model, shape, sigma=args.sigma, rank=args.rank, iterations=args.iterations,
                                    parameterization=param, extra_args=extra_args, structure=args.structure,
                                    draws=args.draws, step=args.step, batch_size=args.batch_size,
                                    generator=torch.Generator().manual_seed(args.seed),
                                    metadata={"model": os.path.basename(args.model)})
    save_moments(m, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {m.describe()} ({m.metadata['model_calls']} model calls, batch sizes "
          f"{m.metadata['batch_sizes']})")
    return 0


def info(args) -> int:
    m = load_moments(args.file)
    print(m.describe())
    for k, v in sorted(m.metadata.items()):
        print(f"  {k}: {v}")
    top = m.variances()[:8].tolist()
    print("  top variances: " + ", ".join(f"{v:.4g}" for v in top))
    return 0


def latent_format_arg(text: str) -> str:
    try:
        return check_format_name(text)
    except MomentsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gaussian_teleport.moments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    est = sub.add_parser("estimate", help="estimate moments from latent files")
    est.add_argument("latents", nargs="+", help="safetensors files, folders or glob patterns")
    est.add_argument("--out", required=True, help="the moments file to write (required; no default)")
    est.add_argument("--structure", choices=structures(), default="lowrank", help="what the file stores: "
                     "dense (every eigenpair), lowrank (the top ones), stationary (any latent size) "
                     "(default: %(default)s)")
    est.add_argument("--rank", type=int, default=DEFAULT_RANK, help="eigenpairs kept by 'lowrank' (default: "
                     "%(default)s)")
    est.add_argument("--space", choices=("raw", "model"), default="raw",
                     help="raw: VAE latents as encoded; model: already scaled to the model's space "
                          "(default: %(default)s)")
    est.add_argument("--latent-format", default="none", type=latent_format_arg,
                     help=f"the VAE family of the latents: {', '.join(known_format_names())} (default: none)")
    est.add_argument("--dtype", choices=("auto", "float32", "float16"), default="auto",
                     help="storage precision of the eigenvectors (auto: float16 for large ones; default: %(default)s)")
    est.add_argument("--overwrite", action="store_true", help="replace an existing --out (default: refuse)")
    est.add_argument("--join-timeout", type=float, default=JOIN_TIMEOUT, metavar="SECONDS",
                     help="under torchrun: how long to wait for the other processes to join (default: %(default)g)")
    est.set_defaults(fn=estimate)
    fm = sub.add_parser("from-model", help="read the moments off a model's Jacobian (no images)")
    fm.add_argument("--model", required=True, help="digits, patches, a reference weights file, or module:function "
                    "returning (model, latent_shape, parameterization) (required; no default)")
    fm.add_argument("--out", required=True, help="the moments file to write (required; no default)")
    fm.add_argument("--structure", choices=STRUCTURES_FROM_MODEL, default="lowrank",
                    help="what the file stores (default: %(default)s)")
    fm.add_argument("--rank", type=int, default=DEFAULT_MODEL_RANK,
                    help="directions read off the model; the rest is one variance (default: %(default)s)")
    fm.add_argument("--sigma", type=float, default=DEFAULT_SIGMA,
                    help="noise level σ/α the Jacobian is read at (default: %(default)g)")
    fm.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                    help="subspace iterations, one model call each (default: %(default)s)")
    fm.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                    help="noise draws the result is averaged over, one model call each (default: %(default)s)")
    fm.add_argument("--step", type=float, default=DEFAULT_STEP,
                    help="finite-difference step per latent element, in units of σ (default: %(default)g)")
    fm.add_argument("--batch-size", type=int, default=None,
                    help="largest batch of one model call (default: all of a call's samples at once)")
    fm.add_argument("--label", type=int, default=None, help="class label for a class-conditional model "
                    "(default: unconditional)")
    fm.add_argument("--seed", type=int, default=0, help="seed of the random directions (default: %(default)s)")
    fm.add_argument("--overwrite", action="store_true", help="replace an existing --out (default: refuse)")
    fm.set_defaults(fn=from_model)
    inf = sub.add_parser("info", help="describe a moments file")
    inf.add_argument("file")
    inf.set_defaults(fn=info)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (UsageError, MomentsError, FileExistsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
