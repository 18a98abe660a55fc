"""Moments read off a diffusion model itself, with no image set.

For a Gaussian x0 ~ N(μ, Σ) and x = α·x0 + σ·ε the denoiser's Jacobian is J = ∂D/∂x = αΣ(α²Σ + σ²I)⁻¹:
it has Σ's eigenvectors, and an eigenvalue j of J gives λ = σ²j / (α(1 − αj)). At a noise level where
the model is Gaussian, its own Jacobian therefore gives the covariance it samples from, and one
output D at (x, σ) gives the mean (μ = D + (αΣ/σ²)(αD − x), moments.gaussian.model_implied_mean).

Every model call is one batch: a base point x plus directions x + h·v, so J·v = (D(x + h·v) − D(x)) / h
by forward differences (the model may run under no_grad, in a host's wrappers, in half precision).

- ``lowrank`` / ``dense``: randomized subspace (power) iteration on J, then Rayleigh–Ritz with J·Q
  averaged over fresh noise draws; the isotropic rest from Hutchinson probes restricted to the
  complement of the subspace (lower variance than a trace of the whole J).
- ``stationary``: per draw, one probe per channel with a random-phase white spectrum; the DFT of J·v
  divided by the probe's phase is the column of J's C×C block at every frequency at once.

The defaults (noise level, iterations, draws, step) come from ``python -m gaussian_teleport.bench.run``
(README, "Moments from the model").
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .base import GaussianMoments, MomentsError, log, shape_str
from .eigen import DenseMoments, EigenOperator, LowRankMoments, descending_eigh
from .gaussian import model_implied_mean, variance_from_gain
from .stationary import StationaryMoments, StationaryOperator, eigh_spectrum

DEFAULT_SIGMA = 10.0      # noise level σ/α at which the Jacobian is read (about twice the default hand-off)
DEFAULT_MODEL_RANK = 16   # directions read; the rest is one isotropic variance (more adds noise, not accuracy)
DEFAULT_ITERATIONS = 3    # subspace iterations (one model call each)
DEFAULT_DRAWS = 4         # noise draws J·Q is averaged over (one model call each)
DEFAULT_STEP = 0.05       # finite-difference step per latent element, in units of the noise σ
DEFAULT_PROBES = 8        # Hutchinson probes for the isotropic rest (ride along with the draws)
STRUCTURES_FROM_MODEL = ("lowrank", "dense", "stationary")


class ModelProbe:
    """Calls ``model`` on batches of points at one noise level; counts calls and batch sizes."""

    def __init__(self, model, sigma: float, extra_args: dict, batch_size: int | None, progress, total_calls: int,
                 device=None, dtype: torch.dtype = torch.float32):
        self.model, self.sigma, self.extra_args = model, float(sigma), extra_args
        self.device, self.dtype = device, dtype
        self.batch_size = batch_size
        self.progress = progress
        self.total_calls = total_calls
        self.calls, self.batches = 0, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = self.batch_size or x.shape[0]
        outs = []
        for chunk in x.split(size):
            chunk = chunk.to(device=self.device, dtype=self.dtype)
            sig = self.sigma * chunk.new_ones([chunk.shape[0]])
            out = self.model(chunk, sig, **self.extra_args)
            check_model_output(out, chunk, self.sigma)
            outs.append(out.to(device="cpu", dtype=torch.float64))
            self.calls += 1
            self.batches.append(int(chunk.shape[0]))
            if self.progress is not None:
                self.progress(self.calls, self.total_calls)
        return torch.cat(outs)


def check_model_output(out, x: torch.Tensor, sigma: float) -> None:
    """The model returned a finite x0 prediction of x's shape; MomentsError naming what it returned otherwise."""
    if isinstance(out, (tuple, list)):
        raise MomentsError(f"the model returned a {type(out).__name__}, not a tensor: it must return the x0 "
                           "prediction (B, C, H, W) alone; wrap it, e.g. "
                           "lambda x, sigma, **kw: model(x, sigma, **kw)[0]")
    if not isinstance(out, torch.Tensor):
        raise MomentsError(f"the model returned a {type(out).__name__}, not a tensor: it must return the x0 "
                           "prediction (B, C, H, W)")
    if tuple(out.shape) != tuple(x.shape):
        raise MomentsError(f"the model returned shape {tuple(out.shape)} for latents {tuple(x.shape)}: it must return "
                           "the x0 prediction, of the latents' shape (check latent_shape and the model's wrapper)")
    if not bool(torch.isfinite(out).all()):
        raise MomentsError(f"the model returned NaN or Inf at noise level {sigma:g}: run it in float32 "
                           "(input_dtype=torch.float32; half precision overflows), or read the moments at a lower "
                           "sigma")


STEP_ROUNDING = 0.5   # the largest relative change rounding the inputs may make to a finite-difference step


def check_step_survives(x: torch.Tensor, h: float, dtype: torch.dtype) -> None:
    """Refuse a finite-difference step lost when x (base point, then base + h·directions) is rounded to ``dtype``."""
    rounded = x.to(dtype).double()
    steps = (rounded[1:] - rounded[0]) - (x[1:] - x[0])
    lost = float(steps.flatten(1).norm(dim=1).max()) / h
    if lost > STEP_ROUNDING:
        raise MomentsError(f"the finite-difference step ({h / math.sqrt(x[0].numel()):.3g} per latent element) is "
                           f"lost to rounding in {dtype} model inputs (changed by {lost:.0%}): raise step (default "
                           f"{DEFAULT_STEP:g}, in units of the noise σ), or pass input_dtype=torch.float64")


def _directional(probe: ModelProbe, base: torch.Tensor, dirs: torch.Tensor, h: float):
    """(D(base), J·dirs) for unit-norm directions dirs (n, C, H, W), in one batch with the base point."""
    x = torch.cat([base[None], base[None] + h * dirs])
    check_step_survives(x, h, probe.dtype)
    out = probe(x)
    return out[0], (out[1:] - out[0]) / h


def check_some_variance(variances: torch.Tensor, residual: float, sigma: float) -> None:
    """Refuse an all-zero covariance: the model's Jacobian had no positive direction at this noise level."""
    if float(variances.max()) <= 0 and residual <= 0:
        raise MomentsError(f"the model's Jacobian at noise level {sigma:g} has no positive eigenvalue, so the moments "
                           "would be all zero: the model does not denoise towards data there (it ignores x, or it "
                           "returns eps, v or −x0 instead of the x0 prediction). Check that it returns x0 in the "
                           "sampler's space with the right parameterization, and that its output varies with x")


def _unit(v: torch.Tensor):
    norms = v.flatten(1).norm(dim=1).clamp_min(1e-300)
    return v / norms.view(-1, *([1] * (v.dim() - 1))), norms


MAX_GAIN = 0.99   # α·j at or above this (λ ≥ 99 σ²/α²): the model is not Gaussian there; capped and reported


def _gains_to_variances(gains: torch.Tensor, sigma: float, alpha: float, report: dict) -> torch.Tensor:
    """λ = σ²j / (α(1 − αj)) from Jacobian eigenvalues j. A gain at or above 1/α would be an infinite variance:
    the model is not Gaussian at this noise level (or is not trained); it is capped and counted in ``report``."""
    over = gains * alpha >= MAX_GAIN
    if bool(over.any()):
        report["capped"] = report.get("capped", 0) + int(over.sum())
    return variance_from_gain(gains.clamp(0.0, MAX_GAIN / alpha), sigma, alpha)


@torch.no_grad()
def estimate_moments_from_model(model, latent_shape, *, sigma: float = DEFAULT_SIGMA, rank: int = DEFAULT_MODEL_RANK,
                                iterations: int = DEFAULT_ITERATIONS, parameterization="ve",
                                extra_args: dict | None = None, batch_size: int | None = None,
                                generator: torch.Generator | None = None,
                                progress: Callable[[int, int], None] | None = None, structure: str = "lowrank",
                                draws: int = DEFAULT_DRAWS, step: float = DEFAULT_STEP, probes: int = DEFAULT_PROBES,
                                latent_format: str = "none", metadata: dict | None = None, device=None,
                                input_dtype: torch.dtype = torch.float32,
                                dtype: torch.dtype = torch.float32,
                                capped_advice: str = "Read the moments at a higher sigma") -> GaussianMoments:
    """Gaussian moments of the distribution a k-diffusion-form denoiser samples, from its own Jacobian.

    ``model(x, σ·ones[B], **extra_args)`` returns the x0 prediction in the sampler's space;
    ``latent_shape`` is (C, H, W); ``sigma`` a noise level σ/α (the hand-off unit). The result is in
    model space (``space="model"``) and says in its metadata how it was made, how many model calls
    it took and their batch sizes. ``progress(calls_done, calls_total)`` is told after every call (raise
    from it to cancel). ``batch_size`` caps the batch of one call (larger batches are split). The model
    gets ``input_dtype`` latents on ``device``; the estimate itself runs in float64 on the CPU.
    ``capped_advice`` ends the warning given when some directions reach 1/α (a host words it for its controls).
    """
    from ..scheduler.parameterization import parameterization as as_parameterization

    shape = tuple(int(s) for s in latent_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise MomentsError(f"latent_shape must be (C, H, W), got {latent_shape}")
    if structure not in STRUCTURES_FROM_MODEL:
        raise MomentsError(f"structure must be one of {STRUCTURES_FROM_MODEL}, got {structure!r}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise MomentsError(f"sigma must be a finite noise level > 0, got {sigma}")
    for name, value, low in (("iterations", iterations, 1), ("draws", draws, 1), ("rank", rank, 1),
                             ("probes", probes, 0)):
        if int(value) != value or value < low:
            raise MomentsError(f"{name} must be a whole number ≥ {low}, got {value}")
    if batch_size is not None and batch_size < 1:
        raise MomentsError(f"batch_size must be at least 1, got {batch_size}")
    if not step > 0:
        raise MomentsError(f"step must be > 0, got {step}")
    param = as_parameterization(parameterization)
    s = param.schedule_sigma(sigma)
    alpha = param.alpha(s)
    if alpha <= 0:
        raise MomentsError(f"sigma {sigma} is pure noise for this model (α = 0): nothing of the data is visible")
    d = shape[0] * shape[1] * shape[2]
    gen = generator or torch.Generator().manual_seed(0)
    h = step * s * math.sqrt(d)          # unit directions: step·σ per element on average
    extra_args = extra_args or {}
    noise = lambda *size: torch.randn(*size, generator=gen, dtype=torch.float64)  # noqa: E731

    total = cost_in_calls(structure, iterations, draws, rank, shape, probes)["calls"]
    probe = ModelProbe(model, s, extra_args, batch_size, progress, total, device, input_dtype)
    report: dict = {}
    if structure == "stationary":
        result = _stationary(probe, shape, s, alpha, h, draws, noise, report)
    else:
        result = _eigen(probe, shape, s, alpha, h, _rank(structure, rank, d), iterations, draws, probes, noise,
                        report)
    if report.get("capped"):
        log.warning("Gaussian Teleport: %d direction(s) of the model's Jacobian at noise level %g reached 1/α: the "
                    "model is not Gaussian there (or not trained); their variances are capped at %g σ². %s",
                    report["capped"], sigma, MAX_GAIN / (1 - MAX_GAIN), capped_advice)
    mean, kind, tensors = result
    check_some_variance(tensors[0], float(tensors[2]) if kind != "stationary" else 0.0, sigma)
    info = {"source": "model", "sigma": f"{sigma:g}", "structure_from_model": structure, "iterations": iterations,
            "draws": draws, "step": f"{step:g}", "model_calls": probe.calls,
            "batch_sizes": ",".join(str(b) for b in sorted(set(probe.batches))),
            "evaluations": sum(probe.batches), **({"capped_directions": report["capped"]} if report.get("capped")
                                                   else {}), **(metadata or {})}
    kw = dict(count=draws, space="model", latent_format=latent_format, metadata=info)
    if kind == "stationary":
        eigvals, eigvecs = tensors
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        return StationaryMoments(mean.to(dtype), eigvals.to(dtype), eigvecs.to(cdtype), **kw)
    eigvals, eigvecs, residual = tensors
    if kind == "dense":
        return DenseMoments(mean.to(dtype), eigvals.to(dtype), eigvecs.to(dtype), **kw)
    return LowRankMoments(mean.to(dtype), eigvals.to(dtype), eigvecs.contiguous().to(dtype), residual, **kw)


def _base_point(mean_guess, shape, s, alpha, noise):
    return alpha * mean_guess + s * noise(*shape)


def _eigen(probe, shape, s, alpha, h, k, iterations, draws, probes, noise, report):
    """Subspace iteration on J, Rayleigh–Ritz on J·Q averaged over draws, Hutchinson for the rest."""
    d = shape[0] * shape[1] * shape[2]
    block = _block(k, d)
    mean_guess = torch.zeros(shape, dtype=torch.float64)
    bases, outputs = [], []
    q = noise(block, *shape)                              # Gaussian start (its first pass is not used for λ)
    for _ in range(iterations):
        base = _base_point(mean_guess, shape, s, alpha, noise)
        dirs, norms = _unit(q)
        out, jq = _directional(probe, base, dirs, h)
        bases.append(base), outputs.append(out)
        mean_guess = out                                  # D ≈ μ at high noise: a better centre for the next draw
        q, _ = torch.linalg.qr(jq.flatten(1).T)
        q = q.T.reshape(block, *shape)
    # Rayleigh–Ritz on the converged basis, J·Q averaged over fresh draws; complement probes ride along.
    basis = q.flatten(1).T                                # D × block, orthonormal
    complement = d - block
    m = probes if complement > 0 else 0
    jq_sum = torch.zeros(d, block, dtype=torch.float64)
    trace_num, trace_den = 0.0, 0.0
    for _ in range(draws):
        base = _base_point(mean_guess, shape, s, alpha, noise)
        g = noise(m, d) if m else torch.zeros(0, d, dtype=torch.float64)
        g = g - (g @ basis) @ basis.T                     # Hutchinson probes in the complement of the basis
        dirs = torch.cat([basis.T, g]).reshape(-1, *shape)
        unit, norms = _unit(dirs)
        out, jv = _directional(probe, base, unit, h)
        jv = (jv * norms.view(-1, 1, 1, 1)).flatten(1)
        bases.append(base), outputs.append(out)
        jq_sum += jv[:block].T
        if m:
            trace_num += float((jv[block:] * g).sum())
            trace_den += float((g * g).sum())
    small = basis.T @ (jq_sum / draws)
    gains, vecs = descending_eigh(small)   # it symmetrises
    eigvecs = basis @ vecs
    variances = _gains_to_variances(gains, s, alpha, report)
    if k == d:
        residual = torch.tensor(0.0, dtype=torch.float64)
    else:
        dropped = float(gains[k:].clamp_min(0).sum())     # oversampled directions beyond k join the rest
        rest_gain = ((trace_num / trace_den) * complement + dropped) / (d - k) if m else dropped / max(d - k, 1)
        residual = _gains_to_variances(torch.tensor([max(rest_gain, 0.0)], dtype=torch.float64), s, alpha, report)[0]
    lam, u = variances[:k], eigvecs[:, :k]
    op = EigenOperator(torch.zeros(shape, dtype=torch.float64), lam, u, residual)
    kind = "dense" if k == d else "lowrank"
    return _implied_mean(op, bases, outputs, s, alpha), kind, (lam, u, residual)


def _implied_mean(op, bases, outputs, s, alpha):
    """The mean the model implies at every base point it was called at, averaged."""
    return model_implied_mean(op, torch.stack(bases), torch.stack(outputs), s, alpha).mean(0)


def _stationary(probe, shape, s, alpha, h, draws, noise, report):
    """Per draw one probe per channel with a random-phase white spectrum; J's C×C block per frequency."""
    c, hgt, wid = shape
    blocks = torch.zeros(hgt, wid, c, c, dtype=torch.complex128)
    bases, outputs = [], []
    mean_guess = torch.zeros(shape, dtype=torch.float64)
    for _ in range(draws):
        white = torch.fft.fft2(noise(hgt, wid), norm="ortho")
        phase = white / white.abs().clamp_min(1e-300)     # unit modulus, Hermitian: the probe stays real
        pattern = torch.fft.ifft2(phase, norm="ortho").real
        dirs = torch.zeros(c, c, hgt, wid, dtype=torch.float64)
        for ch in range(c):
            dirs[ch, ch] = pattern
        unit, norms = _unit(dirs)
        base = _base_point(mean_guess, shape, s, alpha, noise)
        out, jv = _directional(probe, base, unit, h)
        jv = jv * norms.view(-1, 1, 1, 1)                 # (probe channel, C, H, W)
        spec = torch.fft.fft2(jv, norm="ortho") * phase.conj()   # column ch of J_k at every k
        blocks += spec.permute(2, 3, 1, 0)                # (H, W, output channel, probe channel)
        bases.append(base), outputs.append(out)
        mean_guess = out
    gains, vecs = eigh_spectrum(blocks / draws)
    variances = _gains_to_variances(gains, s, alpha, report)
    op = StationaryOperator(torch.zeros(shape, dtype=torch.float64), variances, vecs)
    return _implied_mean(op, bases, outputs, s, alpha), "stationary", (variances, vecs)


def cost_in_calls(structure: str, iterations: int = DEFAULT_ITERATIONS, draws: int = DEFAULT_DRAWS,
                  rank: int = DEFAULT_MODEL_RANK, latent_shape=(4, 64, 64), probes: int = DEFAULT_PROBES) -> dict:
    """Model calls and evaluations (samples) an estimate takes, without running it (for reports)."""
    c, h, w = latent_shape
    d = c * h * w
    if structure == "stationary":
        return {"calls": draws, "evaluations": draws * (c + 1), "latent": shape_str(latent_shape)}
    block = _block(_rank(structure, rank, d), d)
    m = probes if d > block else 0
    return {"calls": iterations + draws, "evaluations": iterations * (block + 1) + draws * (block + m + 1),
            "latent": shape_str(latent_shape)}


def _rank(structure: str, rank: int, d: int) -> int:
    return d if structure == "dense" else min(int(rank), d)


def _block(k: int, d: int) -> int:
    """Directions iterated for the top k: a little oversampling."""
    return min(d, k + min(max(k // 4, 4), 16))
