"""Small EDM-preconditioned denoisers for the reference models.

from: Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM,
arXiv 2206.00364), Table 1 (preconditioning) and §5 (loss).

The raw network is a residual MLP over the flattened image with FiLM conditioning on the noise
level and, optionally, on a class label. It is small on purpose: it trains in minutes on a CPU and
the benchmark runs it hundreds of thousands of times. Class-conditional models reserve one extra
label (``num_classes``) as the null class, used with label dropout during training, so the same
network is also the unconditional model that classifier-free guidance needs.

The wrapped model speaks the k-diffusion denoiser contract: ``model(x, sigma, class_labels=None)``
with ``sigma`` of shape (B,) returns the x0 prediction.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    channels: int                # image channels C
    size: int                    # image height = width
    sigma_data: float            # expected standard deviation of the training data
    num_classes: int = 0         # 0: unconditional; else labels 0..num_classes-1, num_classes = null
    width: int = 320             # hidden width of the residual MLP
    depth: int = 3               # residual blocks
    emb_dim: int = 128           # Fourier features of the noise level

    @property
    def dim(self) -> int:
        return self.channels * self.size * self.size


# ----------------------------------------------------------------------------
# Raw network.


class FourierEmbedding(nn.Module):
    """Fixed random Fourier features of c_noise (EDM uses them for its NCSN++ networks)."""

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2, generator=torch.Generator().manual_seed(0)) * scale)

    def forward(self, t):
        angle = t[:, None].float() * self.freqs[None, :] * (2 * math.pi)
        return torch.cat([angle.cos(), angle.sin()], dim=1)


class ResBlock(nn.Module):
    """LayerNorm → FiLM(noise, class) → SiLU → Linear, twice, with a residual connection."""

    def __init__(self, width: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.film = nn.Linear(width, 2 * width)
        self.fc1 = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc2 = nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h, emb):
        scale, shift = self.film(emb).chunk(2, dim=1)
        y = self.fc1(nn.functional.silu(self.norm1(h) * (1 + scale) + shift))
        y = self.fc2(nn.functional.silu(self.norm2(y)))
        return h + y


class ResidualMLP(nn.Module):
    """F(c_in·x, c_noise, label): the network EDM's preconditioning wraps."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.fourier = FourierEmbedding(cfg.emb_dim)
        self.emb = nn.Sequential(nn.Linear(cfg.emb_dim, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.label = nn.Embedding(cfg.num_classes + 1, cfg.width) if cfg.num_classes else None
        self.inp = nn.Linear(cfg.dim, cfg.width)
        self.blocks = nn.ModuleList(ResBlock(cfg.width) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, cfg.dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, c_noise, labels=None):
        emb = self.emb(self.fourier(c_noise))
        if self.label is not None:
            emb = emb + self.label(labels)
        emb = nn.functional.silu(emb)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.out_norm(h))).view_as(x)


# ----------------------------------------------------------------------------
# EDM preconditioning (Table 1).


class EDMDenoiser(nn.Module):
    """D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise): the x0 prediction."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.net = ResidualMLP(cfg)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def labels_for(self, class_labels, batch: int, device) -> torch.Tensor | None:
        """Class labels as a (B,) long tensor; None means the null (unconditional) class."""
        if not self.cfg.num_classes:
            if class_labels is not None:
                raise ValueError("this model is unconditional; call it without class_labels")
            return None
        if class_labels is None:
            return torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        labels = torch.as_tensor(class_labels, device=device).long().reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(batch)
        if labels.numel() != batch or labels.min() < 0 or labels.max() > self.null_class:
            raise ValueError(f"class_labels must be {batch} labels in 0..{self.null_class} "
                             f"({self.null_class} = unconditional)")
        return labels

    def forward(self, x, sigma, class_labels=None):
        sd = self.cfg.sigma_data
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        s = sigma.view(-1, 1, 1, 1)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        labels = self.labels_for(class_labels, x.shape[0], x.device)
        xf = x.float()
        out = c_skip * xf + c_out * self.net(c_in * xf, c_noise, labels)
        return out.to(x.dtype)


class GuidedDenoiser(nn.Module):
    """Classifier-free guidance: D_w = D_u + w·(D_c − D_u), both halves in one batched call."""

    def __init__(self, model: EDMDenoiser, scale: float):
        super().__init__()
        if not model.cfg.num_classes:
            raise ValueError("classifier-free guidance needs a class-conditional model")
        self.model, self.scale = model, float(scale)

    def forward(self, x, sigma, class_labels=None):
        if class_labels is None:
            raise ValueError("guidance needs class_labels (one per sample)")
        b = x.shape[0]
        labels = self.model.labels_for(class_labels, b, x.device)
        null = torch.full_like(labels, self.model.null_class)
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(b)
        both = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([labels, null]))
        cond, uncond = both[:b], both[b:]
        return uncond + self.scale * (cond - uncond)


# ----------------------------------------------------------------------------
# Weights on disk: safetensors with the config in the metadata.


def save_model(model: EDMDenoiser, path: str | os.PathLike, extra_metadata: dict | None = None):
    from safetensors.torch import save_file

    meta = {"format": "gaussian_teleport.reference", "config": json.dumps(asdict(model.cfg))}
    meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=meta)


def load_model(path: str | os.PathLike, device="cpu") -> EDMDenoiser:
    """Load a reference model saved by ``save_model`` (safetensors only, never pickle)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model weights at {path}; train one with "
                                "`python -m gaussian_teleport.reference.train` or pick a shipped model")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "gaussian_teleport.reference" or "config" not in meta:
        raise ValueError(f"{path} is not a reference-model file (missing its config metadata)")
    model = EDMDenoiser(read_config(path, meta["config"]))
    state = load_file(path, device=str(device))
    check_state(path, state, model.state_dict())
    model.load_state_dict(state)
    return model.eval().to(device)


def check_state(path: str, state: dict, expected: dict) -> None:
    """The file's tensors are the model's, by name and shape (in one line, not load_state_dict's long report)."""
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or wrong:
        example = (missing + extra + wrong)[0]
        raise ValueError(f"{path}: its weights do not match the model its config describes ({len(missing)} missing, "
                         f"{len(extra)} unexpected, {len(wrong)} mis-shaped tensors, e.g. {example!r}); the file is "
                         "damaged: train it again with gaussian_teleport.reference.train")


def read_config(path: str, text: str) -> ModelConfig:
    """The ModelConfig a weights file's metadata holds; ValueError (not a parser's or dataclass's error) if damaged."""
    try:
        fields = json.loads(text)
        return ModelConfig(**fields)
    except (ValueError, TypeError, RecursionError):    # not JSON, nested too deep, not a mapping, unknown fields
        raise ValueError(f"{path} is not a usable reference-model file: its config metadata is damaged; train it "
                         "again with gaussian_teleport.reference.train (or give digits or patches)") from None
