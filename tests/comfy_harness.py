"""Helpers for the tests that run against a real ComfyUI checkout (GT_COMFYUI_PATH).

ComfyUI imports torchvision, so these tests run under an interpreter where ComfyUI imports:
    GT_COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/test_comfy_host.py
Without GT_COMFYUI_PATH they are skipped. The pack is imported the way ComfyUI imports custom nodes
(nodes.load_custom_node on the repository root), and its own modules are used from there.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = "GT_COMFYUI_PATH"

_state: dict = {}


def comfy_path() -> str | None:
    return os.environ.get(ENV) or None


def require_comfy():
    """Import ComfyUI on CPU from GT_COMFYUI_PATH, or skip."""
    path = comfy_path()
    if path is None:
        pytest.skip(f"{ENV} is not set (path of a ComfyUI checkout)")
    if "comfy" in _state:
        return _state["comfy"]
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        from comfy.cli_args import args
        args.cpu = True
        import comfy.model_management  # noqa: F401  (reads args.cpu at import)
        import comfy.model_patcher, comfy.sample, comfy.samplers, comfy.supported_models  # noqa: E401,F401
        import nodes  # noqa: F401
    except ImportError as exc:
        sys.path.remove(path)
        for name in [m for m in sys.modules if m == "comfy" or m.startswith("comfy.")]:
            del sys.modules[name]
        pytest.skip(f"ComfyUI at {path} does not import in this interpreter ({exc}); run these tests with "
                    f"ComfyUI's own Python")
    _state["comfy"] = sys.modules["comfy"]
    return _state["comfy"]


def load_pack():
    """Import the repository as ComfyUI does (nodes.load_custom_node) and return the pack module."""
    require_comfy()
    if "pack" not in _state:
        import nodes

        ok = asyncio.run(nodes.load_custom_node(REPO, module_parent="custom_nodes"))
        assert ok, "ComfyUI did not load the pack"
        _state["pack"] = sys.modules[REPO.replace(".", "_x_")]
    return _state["pack"]


def pack_module(name: str):
    """A submodule of the pack as ComfyUI loaded it (e.g. 'moments', 'nodes.logic')."""
    return importlib.import_module(load_pack().__name__ + "." + name)


def node_class(node_id: str):
    """A node class as ComfyUI registered it (V3: from the pack's comfy_entrypoint)."""
    import nodes

    load_pack()
    return nodes.NODE_CLASS_MAPPINGS[node_id]


def run_node(node_id: str, **inputs):
    """Execute a V3 node's body directly and return its output values."""
    return node_class(node_id).execute(**inputs).args


# ----------------------------------------------------------------------------
# Tiny models whose denoiser is the exact Gaussian one.


class _NoNet(torch.nn.Module):
    """Stands in for the diffusion network, which the model_function_wrapper replaces."""

    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))


def gaussian_denoiser(mean: torch.Tensor, cov: torch.Tensor, parameterization: str):
    """E[x0 | x] for x = α·x0 + σ·ε from an eigendecomposition of Σ (independent of the pack's operators).

    ``shift`` (one number per sample) moves that sample's mean: a prompt-dependent Gaussian.
    """
    mean = mean.double().flatten()
    lam, u = torch.linalg.eigh(cov.double())

    def denoise(x: torch.Tensor, sigma: torch.Tensor, shift=None) -> torch.Tensor:
        flat = x.double().reshape(x.shape[0], -1)
        s = sigma.double().reshape(-1, 1)
        a = 1.0 - s if parameterization == "flow" else torch.ones_like(s)
        mu = mean if shift is None else mean + shift.double().reshape(-1, 1)
        coeff = (flat - a * mu) @ u * (a * lam / (a * a * lam + s * s))
        return (mu + coeff @ u.T).reshape(x.shape).to(x.dtype)

    return denoise


def tiny_model(family: str, raw_mean: torch.Tensor, raw_cov: torch.Tensor, prompt_shift: bool = False):
    """A ModelPatcher of a ComfyUI SD15 (EPS) or SD3 (flow) model with the Gaussian as its denoiser.

    The Gaussian is converted to the model's space with the latent format's own scale/shift. With
    ``prompt_shift`` each sample's mean moves by the mean of its text conditioning, so the conditional and
    unconditional Gaussians differ (in mean only) and CFG's guided denoiser is the Gaussian of μ_w.
    """
    import comfy.model_patcher
    import comfy.supported_models

    cls = {"SD15": comfy.supported_models.SD15, "SD3": comfy.supported_models.SD3}[family]
    config = cls({"disable_unet_model_creation": True, "in_channels": int(raw_mean.shape[0])})
    model = config.get_model({})
    model.diffusion_model = _NoNet()
    fmt = model.latent_format
    c = raw_mean.shape[0]
    scale = torch.full((c,), float(fmt.scale_factor), dtype=torch.float64)
    shift = torch.full((c,), float(getattr(fmt, "shift_factor", 0.0) or 0.0), dtype=torch.float64)
    a = scale.repeat_interleave(raw_mean[0].numel())
    mean = (raw_mean.double() - shift[:, None, None]) * scale[:, None, None]
    cov = a[:, None] * raw_cov.double() * a[None, :]
    denoise = gaussian_denoiser(mean, cov, "flow" if family == "SD3" else "ve")

    def wrapper(apply_model, args):
        text = args["c"].get("c_crossattn") if prompt_shift else None
        moved = None if text is None else text.flatten(1).mean(1)
        return denoise(args["input"], args["timestep"], moved)

    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"))
    patcher.set_model_unet_function_wrapper(wrapper)
    return patcher


def conditioning(value: float = 0.0):
    return [[torch.full((1, 1, 8), float(value)), {"pooled_output": torch.zeros(1, 8)}]]


def random_gaussian(shape, seed: int, model_scale: float):
    """(mean, covariance) of a raw-space Gaussian whose model-space spread is about 1."""
    gen = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    lam = torch.logspace(0.5, -3, d, dtype=torch.float64) / model_scale**2
    mean = 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64) / model_scale
    return mean, (q * lam) @ q.T
