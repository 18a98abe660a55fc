"""Moments files: safetensors with metadata, validated on load; loading never executes code.

Also the facts both hosts share about where files live: the ``models/moments`` folder, safe file
names inside it, listing it, and a cache that reloads a file only when it changed.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import time

import torch

from .base import SPACES, GaussianMoments, MomentsError, orthonormality_error
from .eigen import DenseMoments, LowRankMoments
from .stationary import StationaryMoments
from .video import VIDEO_STRUCTURES, VideoSpatialMoments, VideoStationaryMoments

FORMAT_NAME = "gaussian-teleport-moments"
FORMAT_VERSION = "1"                # image structures (dense, lowrank, stationary)
VIDEO_FORMAT_VERSION = "2"          # video structures: a reader that knows only version 1 asks to be updated
READ_VERSIONS = (FORMAT_VERSION, VIDEO_FORMAT_VERSION)
EXTENSION = ".safetensors"
MOMENTS_FOLDER = "moments"          # under the host's models folder (ComfyUI, A1111, Forge)
ORTHONORMAL_TOL = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}
HEADER_MAX = 100 * 2**20

_TENSORS = {
    "dense": ("mean", "eigvals", "eigvecs"),
    "lowrank": ("mean", "eigvals", "eigvecs", "residual"),
    "stationary": ("mean", "eigvals", "eigvecs_real", "eigvecs_imag"),
    "video_stationary": ("mean", "eigvals", "eigvecs_real", "eigvecs_imag"),
    "video_spatial": ("mean", "eigvals", "eigvecs_real", "eigvecs_imag"),
}
LAYOUTS = {3: "C,H,W", 4: "C,T,H,W"}    # the 'layout' metadata: what latent_shape's numbers are
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}
PRECISION_KEY = "eigvecs_precision"   # the precision the eigenvectors were computed in: their tolerance on load
OLD_FILE_PRECISION = "float32"        # files without PRECISION_KEY: every estimator computed in float32 by default
_RESERVED = {"format", "format_version", "structure", "latent_shape", "channels", "space", "latent_format",
             "count", "rank", "dtype", "layout", PRECISION_KEY}

AUTO_HALF_ABOVE = 2**24  # eigenvector values above which "auto" stores them in float16 (64 MiB in fp32)


def storage_dtype(moments: GaussianMoments, dtype: str = "auto") -> str:
    """The eigenvector storage precision: "auto" keeps float32 unless the eigenvectors are large."""
    if dtype != "auto":
        return dtype
    values = sum(t.numel() for k, t in moments.tensors().items() if k.startswith("eigvecs"))
    return "float16" if values > AUTO_HALF_ABOVE else "float32"


def save_moments(moments: GaussianMoments, path: str | os.PathLike, *, dtype: str = "auto",
                 overwrite: bool = False, metadata: dict | None = None) -> str:
    """Write moments to a .safetensors file and return its path.

    ``dtype`` is the storage precision of the eigenvectors: "float32", "float16" (half the size, about
    5e-4 relative precision, well inside the Gaussian approximation's own error) or "auto": float16
    once the eigenvectors exceed 2²⁴ values (a 16×128×128 latent at rank 256 is then 135 MB instead of
    270 MB). Means and eigenvalues stay float32 or wider. Refuses to replace a file unless ``overwrite``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = os.fspath(path)
    dtype = storage_dtype(moments, dtype)
    if dtype not in _DTYPES:
        raise MomentsError(f"unknown storage dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    check_metadata_keys(metadata or {}, "metadata=")
    check_metadata_keys({k: v for k, v in moments.metadata.items() if k != PRECISION_KEY}, "the moments' metadata")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist; create it first")
    if os.path.isdir(path):     # overwrite=True replaces a file, never a folder (and would fail after the work)
        raise IsADirectoryError(f"cannot write {path}: it is a folder; give a file name such as "
                                f"{os.path.join(path, 'moments.safetensors')}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or pass overwrite=True")
    vec_dtype = _DTYPES[dtype]
    value_dtype = torch.float64 if vec_dtype == torch.float64 else torch.float32
    tensors = {name: t.detach().cpu().to(vec_dtype if name.startswith("eigvecs") else value_dtype).contiguous()
               for name, t in moments.tensors().items()}
    shape = tuple(int(s) for s in moments.latent_shape)
    meta = {
        "format": FORMAT_NAME, "structure": moments.structure,
        "format_version": VIDEO_FORMAT_VERSION if moments.structure in VIDEO_STRUCTURES else FORMAT_VERSION,
        "latent_shape": ",".join(map(str, shape)), "layout": LAYOUTS[len(shape)], "channels": str(shape[0]),
        "space": moments.space,
        "latent_format": moments.latent_format, "count": str(moments.count), "rank": str(moments.rank),
        "dtype": dtype, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: str(v) for k, v in moments.metadata.items()},
        **{k: str(v) for k, v in (metadata or {}).items()},
        PRECISION_KEY: vector_precision(moments),
    }
    tmp = path + ".partial"
    try:
        save_file(tensors, tmp, metadata=meta)
    except (SafetensorError, OSError) as exc:   # a full disk, no write permission
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(f"could not write {path}: {exc}") from None
    os.replace(tmp, path)
    return path


def check_metadata_keys(metadata: dict, where: str) -> None:
    """Refuse metadata that would overwrite a key the file format itself writes."""
    taken = sorted(k for k in metadata if k in _RESERVED)
    if taken:
        raise MomentsError(f"{where} uses the reserved key(s) {taken}, which the moments file format writes itself "
                           f"(reserved: {sorted(_RESERVED)}); rename them, e.g. 'user_{taken[0]}'")


def _precision_name(t: torch.Tensor) -> str:
    dtype = t.real.dtype if t.is_complex() else t.dtype
    return {v: k for k, v in _DTYPES.items()}.get(dtype, "float32")


def vector_precision(moments: GaussianMoments) -> str:
    """The precision the eigenvectors were computed in: their own dtype's, or a coarser one a loaded file recorded."""
    names = [_precision_name(t) for k, t in moments.tensors().items() if k.startswith("eigvecs")]
    carried = moments.metadata.get(PRECISION_KEY)
    return coarser(*names, *([carried] if carried in _DTYPES else []))


def coarser(*names: str) -> str:
    """The least precise of the named dtypes (the one with the loosest orthonormality tolerance)."""
    return max(names, key=lambda name: ORTHONORMAL_TOL[_DTYPES[name]])


# ----------------------------------------------------------------------------
# Reading: the header first, bounds-checked, then the tensors.


def read_header(path: str | os.PathLike) -> dict:
    """The safetensors JSON header, read with bounds and shape checks (no tensor data is loaded)."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise MomentsError(f"{path} is empty or truncated ({size} bytes); it is not a moments file")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise MomentsError(not_safetensors(path))
        if n > HEADER_MAX:
            raise MomentsError(f"{path} has a safetensors header of {n:,} bytes, more than the {HEADER_MAX:,} "
                               "safetensors readers accept (a moments file's header is a few kB): its metadata is too "
                               "large. Re-create it with save_moments() and less metadata")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MomentsError(not_safetensors(path)) from None
    except RecursionError:      # JSON nested deeper than Python's parser recurses: no safetensors writer does that
        raise MomentsError(f"{path} has a malformed safetensors header (JSON nested too deeply to read); the file "
                           "is damaged or was not written by a safetensors library. Re-create it with "
                           "save_moments()") from None
    check_header_shape(header, path)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise MomentsError(f"{path} is truncated: its header promises {8 + n + end} bytes, the file has {size}; "
                           "copy or download it again")
    return header


def check_header_shape(header, path) -> None:
    """A header is a dict of tensor entries {dtype, shape, data_offsets} plus an optional string dict."""
    def bad(what):
        return MomentsError(f"{path} has a malformed safetensors header ({what}); the file is damaged or was "
                            "not written by a safetensors library. Re-create it with save_moments()")

    if not isinstance(header, dict):
        raise bad(f"a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("'__metadata__' is not a mapping of strings")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(f"entry {name!r} is a {type(entry).__name__}")
        offsets, shape = entry.get("data_offsets"), entry.get("shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"entry {name!r} has no valid 'data_offsets'")
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise bad(f"entry {name!r} has no valid 'shape'")
        if not isinstance(entry.get("dtype"), str):
            raise bad(f"entry {name!r} has no 'dtype'")


def not_safetensors(path) -> str:
    return (f"{path} is not a safetensors file (a pickle, .pt/.ckpt or a damaged download?); moments are "
            "only read from .safetensors files, which cannot run code. Re-create it with the Estimate Moments "
            "tool or save_moments()")


def is_moments_file(path: str | os.PathLike) -> bool:
    """True for a safetensors file whose metadata marks it as moments (other files: False, never raises)."""
    try:
        return read_header(path).get("__metadata__", {}).get("format") == FORMAT_NAME
    except (MomentsError, OSError):
        return False


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
    if meta.get("format_version") not in READ_VERSIONS:
        raise MomentsError(f"{path} has moments format version {meta.get('format_version')!r}; this version reads "
                           f"{' and '.join(map(repr, READ_VERSIONS))}. Update the plugin or re-estimate the moments")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise MomentsError(f"{path} could not be read ({exc}); the file is damaged, re-create it") from None
    return moments_from_tensors(tensors, meta, source=path)


def _int_field(meta: dict, key: str, source: str, minimum: int) -> int:
    try:
        value = int(meta[key])
    except (KeyError, ValueError):
        raise MomentsError(f"{source}: metadata '{key}' is missing or not a whole number") from None
    if value < minimum:
        raise MomentsError(f"{source}: metadata '{key}' is {value}; it must be at least {minimum}. The file is "
                           "damaged; re-create it")
    return value


def moments_from_tensors(tensors: dict, meta: dict, *, source: str = "moments") -> GaussianMoments:
    """Build and validate moments from a tensor dict and string metadata."""
    structure = meta.get("structure")
    if structure not in _TENSORS:
        raise MomentsError(f"{source}: unknown structure {structure!r}; expected one of {tuple(_TENSORS)}")
    missing = [k for k in _TENSORS[structure] if k not in tensors]
    if missing:
        raise MomentsError(f"{source}: {structure} moments lack tensors {missing}; the file is incomplete")
    try:
        shape = tuple(int(s) for s in meta["latent_shape"].split(","))
    except (KeyError, ValueError, AttributeError):
        raise MomentsError(f"{source}: metadata 'latent_shape' is missing or malformed") from None
    dims = 4 if structure in VIDEO_STRUCTURES else 3
    if len(shape) != dims or min(shape) < 1:
        raise MomentsError(f"{source}: metadata 'latent_shape' {meta['latent_shape']!r} is not {LAYOUTS[dims]} "
                           f"({structure} moments)")
    if meta.get("layout", LAYOUTS[3]) != LAYOUTS[dims]:
        raise MomentsError(f"{source}: metadata 'layout' is {meta.get('layout')!r} but {structure} moments are "
                           f"{LAYOUTS[dims]}; the file is damaged, re-create it")
    count = _int_field(meta, "count", source, 1)
    if _int_field(meta, "channels", source, 1) != shape[0]:
        raise MomentsError(f"{source}: metadata says {meta['channels']} channels but latent_shape {shape} has "
                           f"{shape[0]}; the file is damaged, re-create it")
    space = meta.get("space", "raw")
    if space not in SPACES:
        raise MomentsError(f"{source}: space {space!r} is not one of {SPACES}")
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise MomentsError(f"{source}: tensor '{name}' holds {t.dtype} values; moments are floating point. "
                               "The file is damaged or not a moments file")
        if not torch.isfinite(t).all():
            raise MomentsError(f"{source}: tensor '{name}' contains NaN or Inf; the file is corrupt, re-estimate it")
    vec_dtype = tensors["eigvecs" if "eigvecs" in _TENSORS[structure] else "eigvecs_real"].dtype
    stored = {v: k for k, v in _DTYPES.items()}.get(vec_dtype)
    if meta.get("dtype") != stored:
        raise MomentsError(f"{source}: metadata says eigenvectors are {meta.get('dtype')!r} but they are stored as "
                           f"{stored}; the file is damaged, re-create it")
    values = {k: (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v) for k, v in tensors.items()}
    precision = meta.get(PRECISION_KEY, OLD_FILE_PRECISION)
    if precision not in _DTYPES:
        raise MomentsError(f"{source}: metadata '{PRECISION_KEY}' is {precision!r}, not one of {sorted(_DTYPES)}; the "
                           "file is damaged, re-create it")
    extra = {k: v for k, v in meta.items() if k not in _RESERVED}
    extra[PRECISION_KEY] = coarser(precision, stored)   # what the loaded vectors hold, carried into a later save
    kw = dict(count=count, space=space, latent_format=meta.get("latent_format", "none"), metadata=extra)
    mean = values["mean"]
    if tuple(mean.shape) != shape:
        raise MomentsError(f"{source}: mean has shape {tuple(mean.shape)} but metadata says {shape}")
    if structure == "stationary":
        eigvecs = torch.complex(values["eigvecs_real"], values["eigvecs_imag"])
        moments = StationaryMoments(mean, values["eigvals"], eigvecs, **kw)
        expect_vals, expect_vecs = (shape[1], shape[2], shape[0]), (shape[1], shape[2], shape[0], shape[0])
    elif structure == "video_stationary":
        eigvecs = torch.complex(values["eigvecs_real"], values["eigvecs_imag"])
        moments = VideoStationaryMoments(mean, values["eigvals"], eigvecs, **kw)
        expect_vals, expect_vecs = (*shape[1:], shape[0]), (*shape[1:], shape[0], shape[0])
    elif structure == "video_spatial":
        eigvecs = torch.complex(values["eigvecs_real"], values["eigvecs_imag"])
        moments = VideoSpatialMoments(mean, values["eigvals"], eigvecs, **kw)
        ct = shape[0] * shape[1]
        expect_vals, expect_vecs = (shape[2], shape[3], ct), (shape[2], shape[3], ct, ct)
    else:
        d, k = mean.numel(), values["eigvals"].numel()
        if structure == "dense":
            moments = DenseMoments(mean, values["eigvals"], values["eigvecs"], **kw)
            expect_vals, expect_vecs = (d,), (d, d)
        else:
            if values["residual"].numel() != 1:
                raise MomentsError(f"{source}: residual must be one number, got shape {tuple(values['residual'].shape)}")
            moments = LowRankMoments(mean, values["eigvals"], values["eigvecs"], values["residual"], **kw)
            expect_vals, expect_vecs = (k,), (d, k)
            if k > d:
                raise MomentsError(f"{source}: rank {k} exceeds the latent dimension {d}")
            if float(moments.residual) < 0:
                raise MomentsError(f"{source}: residual variance {float(moments.residual)} is negative")
    tol = max(ORTHONORMAL_TOL.get(vec_dtype, 1e-3), ORTHONORMAL_TOL[_DTYPES[precision]])
    check_spectrum(moments, expect_vals, expect_vecs, tol, source)
    if _int_field(meta, "rank", source, 1) != moments.rank:
        raise MomentsError(f"{source}: metadata says rank {meta['rank']} but the tensors hold rank {moments.rank}; "
                           "the file is damaged, re-create it")
    return moments


def check_spectrum(m, expect_vals, expect_vecs, tol: float, source):
    """Shapes, non-negative eigenvalues, and eigenvectors orthonormal within ``tol`` (their precision's)."""
    if tuple(m.eigvals.shape) != expect_vals or tuple(m.eigvecs.shape) != expect_vecs:
        raise MomentsError(f"{source}: eigenvalues {tuple(m.eigvals.shape)} / eigenvectors {tuple(m.eigvecs.shape)} "
                           f"do not fit a {m.structure} structure of latent {m.latent_shape} "
                           f"(expected {expect_vals} / {expect_vecs})")
    scale = float(m.eigvals.abs().max()) if m.eigvals.numel() else 0.0
    if m.eigvals.numel() and float(m.eigvals.min()) < -1e-6 * max(scale, 1e-30):
        raise MomentsError(f"{source}: a covariance eigenvalue is negative ({float(m.eigvals.min()):.3g}); "
                           "the file is corrupt, re-estimate it")
    err = orthonormality_error(m.eigvecs)
    if err > tol:
        raise MomentsError(f"{source}: eigenvectors are not orthonormal (max |QᵀQ − I| = {err:.3g} > {tol}); "
                           "the file is corrupt, re-estimate it")


# ----------------------------------------------------------------------------
# The moments folder: safe names, listing, and a cache of loaded files.

_SAFE_PART = re.compile(r"^[\w\-. ]+$")
IF_EXISTS = ("add number", "error", "overwrite")


def safe_relative_name(name: str) -> list[str]:
    """The '/'-separated parts of a file name that stays inside its folder; ValueError otherwise."""
    parts = str(name).strip().replace("\\", "/").split("/")
    if not str(name).strip() or any(p in ("", ".", "..") for p in parts) or not all(_SAFE_PART.match(p) for p in parts):
        raise ValueError(f"file name {name!r} must be a plain name (letters, digits, '-', '_', '.', spaces; "
                         "subfolders with '/'), without '..' or an absolute path")
    return parts


def contained_path(folder: str, name: str) -> str:
    """The real path of the '/'-separated ``name`` in ``folder``; ValueError if it leaves the folder (links too)."""
    base = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(base, *str(name).replace("\\", "/").split("/")))
    if os.path.commonpath([base, path]) != base:
        raise ValueError(f"file name {name!r} points outside the moments folder {folder}")
    return path


def path_inside(folder: str, name: str) -> str:
    """Where a new file named ``name`` goes: a plain name (see safe_relative_name) inside ``folder``."""
    return contained_path(folder, "/".join(safe_relative_name(name)))


def moments_save_path(folder: str, name: str, if_exists: str = "add number") -> str:
    """Where a moments file named ``name`` is written: always inside ``folder``, never silently replacing one.

    ``if_exists``: "add number" (name_00001.safetensors, …), "error", or "overwrite" (explicit only).
    """
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {IF_EXISTS}, got {if_exists!r}")
    name = str(name).strip()
    if name.endswith(EXTENSION):
        name = name[: -len(EXTENSION)]
    path = path_inside(folder, "/".join(safe_relative_name(name)) + EXTENSION)
    if not os.path.exists(path) or if_exists == "overwrite":
        return path
    if if_exists == "error":
        raise FileExistsError(f"{path} already exists; choose another name, or set if_exists to "
                              "'add number' or 'overwrite'")
    stem = path[: -len(EXTENSION)]
    for i in range(1, 100000):
        candidate = f"{stem}_{i:05d}{EXTENSION}"
        if not os.path.exists(candidate):
            return candidate
    raise FileExistsError(f"too many files named {stem}_*; choose another name")


def list_moments_files(folder: str) -> list[str]:
    """Moments files under ``folder`` (sub-folders included) as '/'-separated relative names, sorted."""
    names = []
    for base, _dirs, files in os.walk(folder, followlinks=True):
        for f in files:
            if f.endswith(EXTENSION):
                names.append(os.path.relpath(os.path.join(base, f), folder).replace(os.sep, "/"))
    return sorted(names, key=str.lower)


class MomentsFiles:
    """Loaded moments files by path; a file is read again only when its size or modification time change.

    The same object comes back while the file is unchanged, so conversions cached per moments object
    (see scheduler.binding) are reused across generations.
    """

    def __init__(self, keep: int = 2):
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[tuple, GaussianMoments]] = {}
        self.keep = keep

    def load(self, path: str) -> GaussianMoments:
        stat = os.stat(path)
        real = os.path.realpath(path)
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            hit = self._entries.get(real)
            if hit is not None and hit[0] == key:
                return hit[1]
        moments = load_moments(path)
        with self._lock:
            self._entries.pop(real, None)
            self._entries[real] = (key, moments)
            while len(self._entries) > self.keep:
                self._entries.pop(next(iter(self._entries)))
        return moments

    def clear(self):
        with self._lock:
            self._entries.clear()
