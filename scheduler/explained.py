"""How Gaussian a model is at each noise level: explained variance of the Gaussian denoiser (a diagnostic).

from: Wang & Vastola, arXiv 2311.10892 (Fig. 2, "explained variance of the learned score by the
Gaussian score"). The figure used is the *score* explained variance at one σ,

    EV(σ) = 1 − Σ‖α·(D_nn − D_G)‖² / Σ‖(α·D_nn − x) − mean_batch(α·D_nn − x)‖²,

the error of the Gaussian denoiser over the spread of the model's score direction α·D_nn − x.
The denoiser-output figure (the same error over the spread of D_nn alone) is reported beside it; at
high σ the model's own output barely varies, so its small errors dominate that ratio. Neither picks a
safe hand-off across models (README, "What the measurements say"): calibrate.py measures the image instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .binding import ModelGaussian


def score_explained_variance(d_model: torch.Tensor, d_gauss: torch.Tensor, x: torch.Tensor,
                             alpha: float = 1.0) -> float:
    """Score EV at one σ over a batch (B, ...): 1 − ‖α(D_nn − D_G)‖² / ‖(αD_nn − x) − mean(αD_nn − x)‖²."""
    d_model, d_gauss, x = (t.double() for t in (d_model, d_gauss, x))
    error = float(((alpha * (d_model - d_gauss)) ** 2).sum())
    direction = alpha * d_model - x
    spread = float(((direction - direction.mean(0, keepdim=True)) ** 2).sum())
    return 1.0 - error / spread if spread > 0 else float("nan")


def denoiser_explained_variance(d_model: torch.Tensor, d_gauss: torch.Tensor) -> float:
    """Denoiser-output EV: 1 − ‖D_nn − D_G‖² / ‖D_nn − mean(D_nn)‖² (for reference only)."""
    d_model, d_gauss = d_model.double(), d_gauss.double()
    error = float(((d_model - d_gauss) ** 2).sum())
    spread = float(((d_model - d_model.mean(0, keepdim=True)) ** 2).sum())
    return 1.0 - error / spread if spread > 0 else float("nan")


@dataclass
class ExplainedVariance:
    """Score and denoiser EV of the Gaussian at every σ where the model was called (noise levels σ/α)."""

    sigmas: list[float] = field(default_factory=list)
    score_ev: list[float] = field(default_factory=list)
    denoiser_ev: list[float] = field(default_factory=list)

    def add(self, level: float, d_model, d_gauss, x, alpha: float):
        self.sigmas.append(float(level))
        self.score_ev.append(score_explained_variance(d_model, d_gauss, x, alpha))
        self.denoiser_ev.append(denoiser_explained_variance(d_model, d_gauss))

    def table(self) -> str:
        rows = ["sigma      score EV   denoiser EV"]
        for s, e, d in sorted(zip(self.sigmas, self.score_ev, self.denoiser_ev), reverse=True):
            rows.append(f"{s:<10.4g} {e:<10.5f} {d:.4f}")
        return "\n".join(rows)


class RecordingModel:
    """Wraps a k-diffusion denoiser; at every call records the Gaussian's explained variance (no extra calls)."""

    def __init__(self, model, gauss: ModelGaussian, record: ExplainedVariance):
        self.model, self.gauss, self.record = model, gauss, record

    def __call__(self, x, sigma, **extra_args):
        denoised = self.model(x, sigma, **extra_args)
        s = float(sigma.reshape(-1)[0])
        param = self.gauss.parameterization
        # the spread over the batch needs two samples; at a flow model's t = 1 (σ ∞) there is no data term
        if x.shape[0] > 1 and param.alpha(s) > 0:
            xc = x.to(self.gauss.dtype)
            d_gauss = self.gauss.denoise(xc, s)
            self.record.add(param.noise_level(s), denoised.to(xc.dtype), d_gauss, xc, param.alpha(s))
        return denoised
