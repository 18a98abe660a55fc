"""Host-free logic behind the ComfyUI nodes: everything here runs and is tested without ComfyUI."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..moments.structures import GaussianMoments, MomentsError
from ..scheduler.handoff import Handoff

MOMENTS_FOLDER = "moments"
MOMENTS_EXTENSION = ".safetensors"
ATTACHMENT_KEY = "gaussian_teleport"
TELEPORT_SAMPLERS = ("euler", "heun", "dpmpp_2m")   # inner samplers offered in the KSampler dropdown
TELEPORT_PREFIX = "teleport_"

# ComfyUI's model_sampling mix-ins, by class name (they are combined into one class per model).
VE_KINDS = ("EDM", "V_PREDICTION", "EPS")            # x = x0 + σ·ε as the samplers see it
FLOW_KINDS = ("CONST",)                              # x = (1 − t)·x0 + t·ε
REFUSED_KINDS = ("IMG_TO_IMG", "X0", "COSMOS_RFLOW")  # checked first: X0 derives from EPS


# ----------------------------------------------------------------------------
# Model introspection (duck-typed over ComfyUI's objects).


def model_parameterization(model_sampling) -> str:
    """'ve' or 'flow' for a ComfyUI model_sampling object; MomentsError naming anything else."""
    names = [c.__name__ for c in type(model_sampling).__mro__]
    for name in REFUSED_KINDS:
        if name in names:
            raise MomentsError(f"Gaussian teleport does not support {name} models ({type(model_sampling).__name__}); "
                               "it works with EPS, v-prediction, EDM and flow (CONST: SD3, Flux) models")
    if any(n in names for n in FLOW_KINDS):
        return "flow"
    if any(n in names for n in VE_KINDS):
        return "ve"
    raise MomentsError(f"unknown model sampling type {type(model_sampling).__name__} (bases {names[1:4]}); "
                       "Gaussian teleport supports EPS, v-prediction, EDM and flow (CONST) models")


def latent_affine(process_in, channels: int, dtype=torch.float32):
    """(a, b) per channel with process_in(z) = a·z + b, read off the host's own map and checked."""
    probe = lambda v: process_in(torch.full((1, channels, 1, 1), float(v), dtype=dtype)).double().reshape(-1)
    b = probe(0.0)
    a = probe(1.0) - b
    if a.numel() != channels:
        raise MomentsError(f"the model's latent format maps {channels} channels to {a.numel()}; "
                           "teleport needs a per-channel latent format")
    if not torch.allclose(probe(3.0), 3 * a + b, rtol=1e-4, atol=1e-6) or not torch.all(a != 0):
        raise MomentsError("the model's latent format is not a per-channel affine map; teleport cannot convert "
                           "moments into its space")
    return a, b


def moments_in_model_space(moments: GaussianMoments, a: torch.Tensor, b: torch.Tensor,
                           format_name: str) -> GaussianMoments:
    """Raw VAE-space moments → the model's sampling space (exact per-channel affine map)."""
    if moments.space == "model":
        if moments.latent_format not in ("none", format_name):
            raise MomentsError(f"these moments are in the model space of {moments.latent_format}, but the model "
                               f"uses {format_name}; estimate raw moments (Estimate Moments) for this VAE")
        return moments
    if moments.channels != a.numel():
        raise MomentsError(f"moments have {moments.channels} latent channels but the model's latents have "
                           f"{a.numel()}: they were made for another model family; estimate moments with this "
                           "model's VAE")
    return moments.affine(a, b, space="model", latent_format=format_name)


def check_latent(x: torch.Tensor, moments: GaussianMoments):
    """A 4-D (B, C, H, W) latent the moments can serve, or MomentsError naming what differs."""
    if x.dim() != 4:
        raise MomentsError(f"teleport works on image latents (B, C, H, W); got a latent of shape {tuple(x.shape)} "
                           "(video or audio models are not supported)")
    # the structure raises with its own explanation; same device and dtype, so nothing is copied
    moments.operator(tuple(x.shape[1:]), device=moments.mean.device, dtype=moments.mean.dtype)


def find_on_chain(model, attr: str, depth: int = 6):
    """The first object on the ``.inner_model`` chain that has ``attr`` (sampler → guider → model)."""
    obj = model
    for _ in range(depth):
        if obj is None:
            break
        if hasattr(obj, attr):
            return obj
        obj = getattr(obj, "inner_model", None)
    return None


# ----------------------------------------------------------------------------
# Teleport settings carried on a MODEL (ModelPatcher attachment: shared by reference on clone).


@dataclass(frozen=True)
class TeleportSettings:
    moments: GaussianMoments
    handoff: Handoff
    mode: str = "save"

    def describe(self) -> str:
        return f"{self.moments.describe()}; hand-off {self.handoff}, {self.mode}"


def make_handoff(kind: str, value: float) -> Handoff:
    """A Handoff from node inputs; the steps kind takes whole numbers."""
    if kind == "steps":
        if float(value) != int(value):
            raise ValueError(f"hand-off steps must be a whole number, got {value}")
        value = int(value)
    return Handoff(kind, value)


# ----------------------------------------------------------------------------
# Image preparation for moment estimation.


def fit_images(images: torch.Tensor, width: int, height: int, fit: str = "crop") -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) in [0, 1] → (B, H', W', 3) at width × height.

    ``crop`` scales to cover and cuts the centre (no distortion); ``stretch`` resizes directly.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {tuple(images.shape)}")
    x = images[..., :3].movedim(-1, 1).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    if (h, w) != (height, width):
        if fit == "crop":
            scale = max(height / h, width / w)
            nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
            top, left = (nh - height) // 2, (nw - width) // 2
            x = x[..., top:top + height, left:left + width]
        elif fit == "stretch":
            x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        else:
            raise ValueError(f"fit must be 'crop' or 'stretch', got {fit!r}")
    return x.clamp(0, 1).movedim(1, -1)


def target_size(images: list[torch.Tensor], width: int, height: int, multiple: int) -> tuple[int, int]:
    """The size all images are brought to: the given one, or the first image's (0 = keep)."""
    width = width or int(images[0].shape[2])
    height = height or int(images[0].shape[1])
    for name, v in (("width", width), ("height", height)):
        if v % multiple:
            raise ValueError(f"{name} {v} is not a multiple of {multiple} (the VAE's downscale factor); "
                             f"set {name} to {v - v % multiple} or {v - v % multiple + multiple}")
    return width, height


def batches(total: int, size: int):
    """(start, stop) index pairs covering range(total) in chunks of ``size``."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return [(i, min(i + size, total)) for i in range(0, total, size)]


# ----------------------------------------------------------------------------
# The moments model folder and file names.


def merge_model_folder(folders: dict, name: str, default_path: str, extensions=(MOMENTS_EXTENSION,)):
    """Add ``default_path`` to folder_paths' entry ``name`` in place, keeping any user-declared paths.

    A folder declared in extra_model_paths.yaml is loaded before custom nodes; replacing its entry
    would drop the user's paths, so paths and extensions are merged instead.
    """
    if name not in folders:
        folders[name] = ([default_path], set(extensions))
        return folders[name]
    paths, exts = folders[name]
    if default_path not in paths:
        paths.append(default_path)
    if isinstance(exts, set):
        exts.update(extensions)
    elif isinstance(exts, list):
        exts.extend(e for e in extensions if e not in exts)
    else:
        folders[name] = (paths, set(exts) | set(extensions))
    return folders[name]


_SAFE_NAME = re.compile(r"^[\w\-. ]+$")


def moments_save_path(folder: str, name: str, if_exists: str = "add number") -> str:
    """The path a Save Moments node writes to: always inside ``folder``, never silently replacing a file.

    ``if_exists``: "add number" (name_00001.safetensors, …), "error", or "overwrite" (explicit only).
    """
    name = name.strip()
    if name.endswith(MOMENTS_EXTENSION):
        name = name[: -len(MOMENTS_EXTENSION)]
    parts = name.replace("\\", "/").split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or not all(_SAFE_NAME.match(p) for p in parts):
        raise ValueError(f"file name {name!r} must be a plain name (letters, digits, '-', '_', '.', spaces; "
                         "subfolders with '/'), without '..' or an absolute path")
    base = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(base, *parts) + MOMENTS_EXTENSION)
    if os.path.commonpath([base, path]) != base:
        raise ValueError(f"file name {name!r} points outside the moments folder {folder}")
    if not os.path.exists(path) or if_exists == "overwrite":
        return path
    if if_exists == "error":
        raise FileExistsError(f"{path} already exists; choose another name, or set if_exists to "
                              "'add number' or 'overwrite'")
    if if_exists != "add number":
        raise ValueError(f"if_exists must be 'add number', 'error' or 'overwrite', got {if_exists!r}")
    stem = path[: -len(MOMENTS_EXTENSION)]
    for i in range(1, 100000):
        candidate = f"{stem}_{i:05d}{MOMENTS_EXTENSION}"
        if not os.path.exists(candidate):
            return candidate
    raise FileExistsError(f"too many files named {stem}_*; choose another name")


# ----------------------------------------------------------------------------
# Accumulating over several runs.


def start_accumulator(structure: str, rank: int, existing: GaussianMoments | None = None):
    """A fresh accumulator, or one seeded with ``existing`` moments so new latents add to them."""
    from ..moments.estimate import MomentAccumulator

    if existing is None:
        return MomentAccumulator(structure, rank=rank)
    if existing.space != "raw":
        raise MomentsError("only raw (VAE-space) moments can be extended; these are in a model's space")
    if existing.structure != structure:
        raise MomentsError(f"the moments to add to are {existing.structure}, but structure is set to {structure}; "
                           f"set structure to {existing.structure} to keep accumulating")
    return MomentAccumulator.from_moments(existing, rank=rank if structure == "lowrank" else None)
