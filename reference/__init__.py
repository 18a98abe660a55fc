"""Small reference diffusion models trained by the project, shipped with their Gaussian moments.

``load_reference("digits")`` returns the model (a k-diffusion denoiser), its moments in the
sampler's space and the training record. Shipped models:

- ``digits``: class-conditional (10 classes + a null class for CFG), 8×8 grayscale digits.
- ``patches``: unconditional, 8×8 RGB patches of natural photographs.

Loading needs torch and safetensors only; training and the data sets need scikit-learn.
"""

from __future__ import annotations

if "." not in __name__:  # found as a top-level module on a host's sys.path: not ours (see _isolation.py)
    import os as _os, runpy as _runpy
    _runpy.run_path(_os.path.join(_os.path.dirname(__file__), _os.pardir, "_isolation.py"))["defer"](globals())

import json
import os
from dataclasses import dataclass

from .model import EDMDenoiser, GuidedDenoiser, ModelConfig, load_model, save_model

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
REFERENCE_MODELS = ("digits", "patches")
DEFAULT_MODEL = "digits"


@dataclass
class ReferenceModel:
    name: str
    model: EDMDenoiser
    moments: object            # GaussianMoments in the sampler's space
    record: dict               # training command, data, seed, steps, time

    @property
    def sigma_data(self) -> float:
        return self.model.cfg.sigma_data

    @property
    def shape(self) -> tuple[int, int, int]:
        c = self.model.cfg
        return (c.channels, c.size, c.size)


def reference_paths(name_or_path: str) -> tuple[str, str, str]:
    """(weights, moments, record) paths of a shipped model name or of a ``<stem>.safetensors`` path."""
    if name_or_path in REFERENCE_MODELS:
        stem = os.path.join(WEIGHTS_DIR, name_or_path)
    elif name_or_path.endswith(".safetensors"):
        stem = name_or_path[: -len(".safetensors")]
    else:
        raise ValueError(f"unknown reference model {name_or_path!r}; choose one of {REFERENCE_MODELS} "
                         "or give the path of a weights file written by gaussian_teleport.reference.train")
    return stem + ".safetensors", stem + ".moments.safetensors", stem + ".json"


def load_reference(name_or_path: str = DEFAULT_MODEL, device="cpu") -> ReferenceModel:
    from ..moments import load_moments

    weights, moments_path, record_path = reference_paths(name_or_path)
    model = read_weights(weights, device)
    moments = load_moments(moments_path)
    record = {}
    if os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
    name = name_or_path if name_or_path in REFERENCE_MODELS else os.path.basename(weights)
    return ReferenceModel(name, model, moments, record)


def read_weights(path: str, device) -> EDMDenoiser:
    """load_model, with a file that is not safetensors (a pickle renamed, a damaged download) named as such."""
    from safetensors import SafetensorError

    try:
        return load_model(path, device=device)
    except SafetensorError:
        raise ValueError(f"{path} is not a safetensors file (a pickle, .pt/.ckpt renamed, or a damaged download?); "
                         "reference weights are only read from safetensors files written by "
                         "gaussian_teleport.reference.train (or give digits or patches)") from None


def load_denoiser(spec: str, *, label: int | None = None, cfg: float | None = None):
    """(model, latent_shape, parameterization, extra_args) for a command line's ``--model``.

    ``spec``: a shipped reference model (digits, patches), a weights file from reference.train, or
    ``module:function`` naming a function that returns (model, latent_shape, parameterization) for any
    k-diffusion-form denoiser. ``label``/``cfg`` condition a class-conditional reference model.
    ValueError naming the problem and the fix for a spec that does not load.
    """
    if is_function_spec(spec):
        if label is not None or cfg is not None:
            raise ValueError(f"--label and --cfg condition a reference model; the model of {spec!r} carries its "
                             "own conditioning: drop them (or apply them inside that function)")
        model, shape, param = load_function_model(spec)
        return model, shape, param, {}
    ref = load_reference(spec)
    model, extra_args = condition(ref, label=label, cfg=cfg)
    return model, ref.shape, "ve", extra_args


def load_function_model(spec: str):
    """(model, latent_shape, parameterization) from the function a ``module:function`` spec names."""
    import importlib
    import numbers

    from ..scheduler.parameterization import parameterization

    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name, None)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"--model {spec!r}: module {module!r} cannot be imported ({exc}); give module:function "
                         "of a module Python finds (installed, or its folder on PYTHONPATH)") from None
    if not callable(fn):
        raise ValueError(f"--model {spec!r}: module {module!r} has no function {name!r}; give module:function "
                         "naming a function that returns (model, latent_shape, parameterization)")
    result = fn()
    if not (isinstance(result, (tuple, list)) and len(result) == 3):
        raise ValueError(f"--model {spec!r}: {name}() must return (model, latent_shape, parameterization), "
                         f"got {type(result).__name__} {str(result)[:60]!r}")
    model, shape, param = result
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else shape   # torch.Size is a tuple
    if not callable(model) or not (isinstance(shape, tuple) and len(shape) == 3
                                   and all(isinstance(n, numbers.Integral) and n > 0 for n in shape)):
        raise ValueError(f"--model {spec!r}: {name}() must return (model, latent_shape, parameterization) with a "
                         f"callable k-diffusion denoiser and a latent shape (C, H, W); got "
                         f"({type(model).__name__}, {shape!r}, {param!r})")
    return model, tuple(int(n) for n in shape), parameterization(param)


def is_function_spec(spec: str) -> bool:
    """``module:function`` rather than a reference model or weights file."""
    return ":" in spec and not spec.endswith(".safetensors")


def condition(ref: ReferenceModel, *, label: int | None = None, cfg: float | None = None):
    """(model, extra_args) for a class label and a CFG scale on a reference model."""
    import math

    import torch

    model, extra_args = ref.model, {}
    if cfg is not None and not (isinstance(cfg, (int, float)) and math.isfinite(cfg)):
        raise ValueError(f"the guidance scale (--cfg) must be a finite number, got {cfg!r}")
    if ref.model.cfg.num_classes:
        if cfg is not None:
            model = GuidedDenoiser(ref.model, cfg)
        if label is not None:
            check_label(ref, label)
            extra_args = {"class_labels": torch.tensor([label])}
        elif cfg is not None:
            raise ValueError("guidance needs a class label (--label)")
    elif label is not None or cfg is not None:
        raise ValueError(f"model {ref.name!r} is unconditional: drop --label and --cfg")
    return model, extra_args


def check_label(ref: ReferenceModel, label) -> int:
    """A class label of a class-conditional reference model; ValueError naming the valid range."""
    classes = ref.model.cfg.num_classes
    if not classes:
        raise ValueError(f"model {ref.name!r} is unconditional: drop --label")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < classes:
        raise ValueError(f"label {label!r} is not a class of model {ref.name!r}: give --label 0..{classes - 1}")
    return label


__all__ = ["load_denoiser", "load_function_model", "condition", "check_label", "is_function_spec", "EDMDenoiser", "GuidedDenoiser", "ModelConfig", "load_model", "save_model", "WEIGHTS_DIR",
           "REFERENCE_MODELS", "DEFAULT_MODEL", "ReferenceModel", "reference_paths", "load_reference"]
