"""How Gaussian a model is at each noise level, and where to hand off to the sampler.

from: Wang & Vastola, arXiv 2311.10892 (Fig. 2, "explained variance of the learned score by the
Gaussian score"). The figure used here is the *score* explained variance at one σ,

    EV(σ) = 1 − Σ‖α·(D_nn − D_G)‖² / Σ‖(α·D_nn − x) − mean_batch(α·D_nn − x)‖²,

the error of the Gaussian denoiser over the spread of the model's score direction α·D_nn − x
(VE models α = 1; flow models x = (1 − t)·x0 + t·ε, α = 1 − t). The denoiser-output figure
(the same error over the spread of D_nn alone) is reported too but is not used to recommend: at high σ
the model's own output barely varies, so its small errors dominate that ratio.

Everything here is host-free; ComfyUI's Calibrate Teleport node is a thin adapter over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..moments.gaussian import gaussian_x0
from ..moments.structures import GaussianMoments
from .teleport import compute_dtype, path_alpha


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


def relative_velocity_error(d_model: torch.Tensor, d_gauss: torch.Tensor, sigma: float,
                            alpha: float = 1.0) -> float:
    """RMS of α(D_nn − D_G)/σ per element: the error the Gaussian puts into the ODE's velocity."""
    diff = alpha * (d_model.double() - d_gauss.double()) / float(sigma)
    return float(diff.pow(2).mean().sqrt())


@dataclass
class Calibration:
    """Explained variance of the Gaussian denoiser along the model's own trajectories."""

    sigmas: list[float] = field(default_factory=list)
    score_ev: list[float] = field(default_factory=list)
    denoiser_ev: list[float] = field(default_factory=list)
    velocity_error: list[float] = field(default_factory=list)
    samples: int = 0

    def add(self, sigma: float, d_model, d_gauss, x, alpha: float):
        self.sigmas.append(float(sigma))
        self.score_ev.append(score_explained_variance(d_model, d_gauss, x, alpha))
        self.denoiser_ev.append(denoiser_explained_variance(d_model, d_gauss))
        self.velocity_error.append(relative_velocity_error(d_model, d_gauss, sigma, alpha))
        self.samples = int(x.shape[0])

    def table(self) -> str:
        rows = ["sigma      score EV   denoiser EV   velocity err"]
        for s, e, d, v in zip(self.sigmas, self.score_ev, self.denoiser_ev, self.velocity_error):
            rows.append(f"{s:<10.4g} {e:<10.5f} {d:<13.4f} {v:.4g}")
        return "\n".join(rows)


def recommend_handoff(sigmas, explained, threshold: float = 0.99):
    """The lowest σ from which the EV stays ≥ threshold at every higher probed σ, or None.

    Reading from the top keeps a dip at high σ (the Gaussian failing there) from being skipped by a
    lucky value lower down. None: even the highest probed σ is below the threshold (do not teleport).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    pairs = sorted(((float(s), float(e)) for s, e in zip(sigmas, explained) if float(s) > 0), reverse=True)
    best = None
    for s, e in pairs:
        if not (e >= threshold):   # NaN counts as a failure
            break
        best = s
    return best


@torch.no_grad()
def sample_calibrate(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                     moments: GaussianMoments, parameterization: str = "ve", record: Calibration):
    """A k-diffusion-form Euler run that also records D_nn against D_G at every sigma it visits.

    The points x are the model's own probability-flow trajectory from the host's start noise, so the
    figure is measured where the sampler actually goes. Returns the final x like any sampler.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    op = moments.operator(x.shape[1:], device=x.device, dtype=compute_dtype(moments))
    for i in range(len(sigmas) - 1):
        sigma = float(sigmas[i])
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        alpha = path_alpha(parameterization, sigma)
        d_gauss = gaussian_x0(op, x.to(op.mean.dtype), sigma, alpha)
        record.add(sigma, denoised.to(op.mean.dtype), d_gauss, x.to(op.mean.dtype), alpha)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        # Euler step; (x − D)/σ is dx/dσ for VE and, with σ = t, dx/dt for flow models alike
        x = x + (x - denoised) / sigma * (sigmas[i + 1] - sigmas[i])
    return x


def calibration_summary(cal: Calibration, threshold: float) -> tuple[float | None, str]:
    """(recommended hand-off σ or None, a report a user can read)."""
    best = recommend_handoff(cal.sigmas, cal.score_ev, threshold)
    if best is None:
        verdict = (f"no probed σ reaches a score EV of {threshold:g} (highest σ {max(cal.sigmas):.4g}: "
                   f"{cal.score_ev[0]:.4f}); teleport is not recommended for this model and moments")
    else:
        verdict = (f"recommended hand-off: sigma {best:.4g} (lowest σ whose score EV ≥ {threshold:g} "
                   f"at every higher probed σ; {cal.samples} noise sample(s))")
    return best, cal.table() + "\n" + verdict

