"""Moments files: safetensors with metadata, validated on load. Loading never executes code."""

from __future__ import annotations

import json
import os
import struct
import time

import torch

from .structures import (SPACES, STRUCTURES, DenseMoments, GaussianMoments, LowRankMoments, MomentsError,
                         StationaryMoments, orthonormality_error)

FORMAT_NAME = "gaussian-teleport-moments"
FORMAT_VERSION = "1"
EXTENSION = ".safetensors"
ORTHONORMAL_TOL = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}

_TENSORS = {
    "dense": ("mean", "eigvals", "eigvecs"),
    "lowrank": ("mean", "eigvals", "eigvecs", "residual"),
    "stationary": ("mean", "eigvals", "eigvecs_real", "eigvecs_imag"),
}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


AUTO_HALF_ABOVE = 2**24  # eigenvector values above which "auto" stores them in float16 (64 MiB in fp32)


def storage_dtype(moments: GaussianMoments, dtype: str = "auto") -> str:
    """The eigenvector storage precision: "auto" keeps float32 unless the eigenvectors are large."""
    if dtype != "auto":
        return dtype
    return "float16" if moments.tensors()["eigvals"].numel() and _eigvec_values(moments) > AUTO_HALF_ABOVE \
        else "float32"


def _eigvec_values(moments: GaussianMoments) -> int:
    return sum(t.numel() for k, t in moments.tensors().items() if k.startswith("eigvecs"))


def save_moments(moments: GaussianMoments, path: str | os.PathLike, *, dtype: str = "auto",
                 overwrite: bool = False, metadata: dict | None = None) -> str:
    """Write moments to a .safetensors file and return its path.

    ``dtype`` is the storage precision of the eigenvectors: "float32", "float16" (half the size, about
    5e-4 relative precision, well inside the Gaussian approximation's own error) or "auto": float16
    once the eigenvectors exceed 2²⁴ values (a 16×128×128 latent at rank 256 is then 135 MB instead of
    270 MB). Means and eigenvalues stay float32 or wider. Refuses to replace a file unless ``overwrite``.
    """
    from safetensors.torch import save_file

    path = os.fspath(path)
    dtype = storage_dtype(moments, dtype)
    if dtype not in _DTYPES:
        raise MomentsError(f"unknown storage dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or pass overwrite=True")
    vec_dtype = _DTYPES[dtype]
    value_dtype = torch.float64 if vec_dtype == torch.float64 else torch.float32
    tensors = {}
    for name, t in moments.tensors().items():
        t = t.detach().cpu()
        tensors[name] = t.to(vec_dtype if name.startswith("eigvecs") else value_dtype).contiguous()
    c, h, w = moments.latent_shape
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "structure": moments.structure,
        "latent_shape": f"{c},{h},{w}",
        "channels": str(c),
        "space": moments.space,
        "latent_format": moments.latent_format,
        "count": str(moments.count),
        "rank": str(moments.rank),
        "dtype": dtype,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: str(v) for k, v in moments.metadata.items()},
        **{k: str(v) for k, v in (metadata or {}).items()},
    }
    tmp = path + ".partial"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


def read_header(path: str | os.PathLike) -> dict:
    """The safetensors JSON header, read with bounds checks (no tensor data is loaded)."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise MomentsError(f"{path} is empty or truncated ({size} bytes); it is not a moments file")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 * 2**20):
            raise MomentsError(_not_safetensors(path))
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MomentsError(_not_safetensors(path)) from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise MomentsError(f"{path} is truncated: its header promises {8 + n + end} bytes, the file has {size}; "
                           "copy or download it again")
    return header


def _not_safetensors(path) -> str:
    return (f"{path} is not a safetensors file (a pickle, .pt/.ckpt or a damaged download?); moments are "
            "only read from .safetensors files, which cannot run code. Re-create it with the Estimate Moments "
            "tool or save_moments()")


def load_moments(path: str | os.PathLike) -> GaussianMoments:
    """Read and validate a moments file; raises MomentsError naming the problem and the fix."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MomentsError(f"no moments file at {path}")
    meta = read_header(path).get("__metadata__") or {}
    if meta.get("format") != FORMAT_NAME:
        raise MomentsError(f"{path} is a safetensors file but not a moments file (no '{FORMAT_NAME}' metadata); "
                           "is it a model checkpoint? Pick a file made by Estimate Moments / save_moments()")
    if meta.get("format_version") != FORMAT_VERSION:
        raise MomentsError(f"{path} has moments format version {meta.get('format_version')!r}; this version reads "
                           f"{FORMAT_VERSION!r}. Update the plugin or re-estimate the moments")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise MomentsError(f"{path} could not be read ({exc}); the file is damaged, re-create it") from None
    return moments_from_tensors(tensors, meta, source=path)


def moments_from_tensors(tensors: dict, meta: dict, *, source: str = "moments") -> GaussianMoments:
    """Build and validate moments from a tensor dict and string metadata."""
    structure = meta.get("structure")
    if structure not in STRUCTURES:
        raise MomentsError(f"{source}: unknown structure {structure!r}; expected one of {STRUCTURES}")
    missing = [k for k in _TENSORS[structure] if k not in tensors]
    if missing:
        raise MomentsError(f"{source}: {structure} moments lack tensors {missing}; the file is incomplete")
    try:
        shape = tuple(int(s) for s in meta["latent_shape"].split(","))
        count = int(meta["count"])
    except (KeyError, ValueError):
        raise MomentsError(f"{source}: metadata 'latent_shape' or 'count' is missing or malformed") from None
    space = meta.get("space", "raw")
    if space not in SPACES:
        raise MomentsError(f"{source}: space {space!r} is not one of {SPACES}")
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise MomentsError(f"{source}: tensor '{name}' contains NaN or Inf; the file is corrupt, re-estimate it")
    vec_dtype = tensors["eigvecs" if structure != "stationary" else "eigvecs_real"].dtype
    values = {k: (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v) for k, v in tensors.items()}
    reserved = {"format", "format_version", "structure", "latent_shape", "channels", "space", "latent_format",
                "count", "rank", "dtype"}
    kw = dict(count=count, space=space, latent_format=meta.get("latent_format", "none"),
              metadata={k: v for k, v in meta.items() if k not in reserved})
    mean = values["mean"]
    if tuple(mean.shape) != shape:
        raise MomentsError(f"{source}: mean has shape {tuple(mean.shape)} but metadata says {shape}")
    if structure == "stationary":
        eigvecs = torch.complex(values["eigvecs_real"], values["eigvecs_imag"])
        moments = StationaryMoments(mean, values["eigvals"], eigvecs, **kw)
        expect_vals, expect_vecs = (shape[1], shape[2], shape[0]), (shape[1], shape[2], shape[0], shape[0])
    else:
        d = mean.numel()
        k = values["eigvals"].numel()
        if structure == "dense":
            moments = DenseMoments(mean, values["eigvals"], values["eigvecs"], **kw)
            expect_vals, expect_vecs = (d,), (d, d)
        else:
            moments = LowRankMoments(mean, values["eigvals"], values["eigvecs"], values["residual"], **kw)
            expect_vals, expect_vecs = (k,), (d, k)
            if k > d:
                raise MomentsError(f"{source}: rank {k} exceeds the latent dimension {d}")
            if float(moments.residual) < 0:
                raise MomentsError(f"{source}: residual variance {float(moments.residual)} is negative")
    _check_spectrum(moments, expect_vals, expect_vecs, vec_dtype, source)
    return moments


def _check_spectrum(m, expect_vals, expect_vecs, vec_dtype, source):
    if tuple(m.eigvals.shape) != expect_vals or tuple(m.eigvecs.shape) != expect_vecs:
        raise MomentsError(f"{source}: eigenvalues {tuple(m.eigvals.shape)} / eigenvectors {tuple(m.eigvecs.shape)} "
                           f"do not fit a {m.structure} structure of latent {m.latent_shape} "
                           f"(expected {expect_vals} / {expect_vecs})")
    scale = float(m.eigvals.abs().max()) if m.eigvals.numel() else 0.0
    if m.eigvals.numel() and float(m.eigvals.min()) < -1e-6 * max(scale, 1e-30):
        raise MomentsError(f"{source}: a covariance eigenvalue is negative ({float(m.eigvals.min()):.3g}); "
                           "the file is corrupt, re-estimate it")
    err = orthonormality_error(m.eigvecs)
    tol = ORTHONORMAL_TOL.get(vec_dtype, 1e-3)
    if err > tol:
        raise MomentsError(f"{source}: eigenvectors are not orthonormal (max |QᵀQ − I| = {err:.3g} > {tol}); "
                           "the file is corrupt, re-estimate it")
