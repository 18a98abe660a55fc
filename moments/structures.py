"""Gaussian moments of a latent distribution: a mean and a covariance in one of three structures.

Every structure exposes the same operator: ``apply(v, f)`` computes f(Σ)(v) for a scalar function f
of the eigenvalues, which is all the Gaussian denoiser and the closed-form flow need
(Wang & Vastola, arXiv 2311.10892, eqs. for D_G and the PF-ODE solution).

- ``dense``: every eigenpair (the reference; small latents only).
- ``lowrank``: the top-k eigenpairs plus one isotropic variance for the orthogonal complement.
- ``stationary``: per-frequency C×C channel covariance of the 2-D DFT (a circulant model), which
  resamples to any height and width.
"""

from __future__ import annotations

from typing import Callable

import torch

STRUCTURES = ("dense", "lowrank", "stationary")
SPACES = ("raw", "model")

Spectrum = Callable[[torch.Tensor], torch.Tensor]


class MomentsError(ValueError):
    """Moments that cannot be used as given; the message names the problem and the fix."""


def _shape_str(shape) -> str:
    return "×".join(str(int(s)) for s in shape)


# ----------------------------------------------------------------------------
# Operators bound to one latent shape, device and dtype.


class GaussianOperator:
    """Mean and spectral calculus of one Gaussian at one latent shape (C, H, W)."""

    def __init__(self, mean: torch.Tensor):
        self.mean = mean
        self.shape = tuple(mean.shape)

    def apply(self, v: torch.Tensor, f: Spectrum) -> torch.Tensor:
        """f(Σ) v for a batch v of shape (B, C, H, W)."""
        return self.apply_many(v, [f])[0]

    def apply_many(self, v: torch.Tensor, fs: list[Spectrum]) -> list[torch.Tensor]:
        """[f(Σ) v for f in fs], sharing one projection onto the eigenbasis."""
        raise NotImplementedError


class EigenOperator(GaussianOperator):
    """Σ = U diag(λ) Uᵀ + λ_r (I − U Uᵀ), vectors flattened to D = C·H·W."""

    def __init__(self, mean, eigvals, eigvecs, residual):
        super().__init__(mean)
        self.eigvals, self.eigvecs, self.residual = eigvals, eigvecs, residual
        self.complete = eigvecs.shape[1] == eigvecs.shape[0]

    def apply_many(self, v, fs):
        b = v.shape[0]
        flat = v.reshape(b, -1)
        coeff = flat @ self.eigvecs
        # One pass back through U for every output (and the projection): U is the memory traffic.
        rows = [coeff * f(self.eigvals) for f in fs] + ([] if self.complete else [coeff])
        back = (torch.cat(rows) @ self.eigvecs.T).split(b)
        if self.complete:
            return [o.reshape(v.shape) for o in back]
        outside = flat - back[-1]
        return [(o + f(self.residual) * outside).reshape(v.shape) for o, f in zip(back, fs)]


class StationaryOperator(GaussianOperator):
    """Σ block-diagonal in the orthonormal 2-D DFT: one Hermitian C×C matrix per frequency."""

    def __init__(self, mean, eigvals, eigvecs):
        super().__init__(mean)
        self.eigvals, self.eigvecs = eigvals, eigvecs  # (H, W, C), (H, W, C, C) complex

    def apply_many(self, v, fs):
        spec = torch.fft.fft2(v, norm="ortho").permute(0, 2, 3, 1).unsqueeze(-1)  # B,H,W,C,1
        coeff = self.eigvecs.mH @ spec
        outs = []
        for f in fs:
            scaled = coeff * f(self.eigvals).unsqueeze(-1).to(coeff.dtype)
            out = (self.eigvecs @ scaled).squeeze(-1).permute(0, 3, 1, 2)
            outs.append(torch.fft.ifft2(out, norm="ortho").real)
        return outs


# ----------------------------------------------------------------------------
# Moments: the stored, device-independent description.


class GaussianMoments:
    """Base class. ``mean`` has the latent shape (C, H, W) the moments were estimated at."""

    structure = "?"

    def __init__(self, mean: torch.Tensor, *, count: int, space: str = "raw",
                 latent_format: str = "none", metadata: dict | None = None):
        if space not in SPACES:
            raise MomentsError(f"space must be one of {SPACES}, got {space!r}")
        if mean.dim() != 3:
            raise MomentsError(f"mean must have shape (C, H, W), got {tuple(mean.shape)}")
        self.mean = mean
        self.count = int(count)
        self.space = space
        self.latent_format = latent_format
        self.metadata = dict(metadata or {})

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.mean.shape)

    @property
    def channels(self) -> int:
        return self.mean.shape[0]

    @property
    def dim(self) -> int:
        return self.mean.numel()

    @property
    def rank(self) -> int:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def operator(self, shape, device=None, dtype=torch.float64) -> GaussianOperator:
        """The operator for latents of ``shape`` (C, H, W); raises MomentsError if it cannot serve it."""
        raise NotImplementedError

    def affine(self, scale, shift, *, space: str, latent_format: str) -> "GaussianMoments":
        """Moments of a·x + b for a per-channel affine map (a, b of length C or scalars)."""
        raise NotImplementedError

    def variances(self) -> torch.Tensor:
        """Eigenvalues in descending order (for reports); the residual is not repeated."""
        raise NotImplementedError

    def describe(self) -> str:
        return (f"{self.structure} moments, latent {_shape_str(self.latent_shape)}, rank {self.rank}, "
                f"{self.count} samples, {self.space} space ({self.latent_format})")

    def __repr__(self):
        return f"<{type(self).__name__}: {self.describe()}>"

    def _check_channels(self, shape):
        if len(shape) != 3:
            raise MomentsError(f"expected a latent shape (C, H, W), got {tuple(shape)}")
        if shape[0] != self.channels:
            raise MomentsError(
                f"moments have {self.channels} latent channels but the latent has {shape[0]}: "
                f"these moments were made for another model family ({self.latent_format}); "
                f"load or estimate moments for this model's latent space")

    def _affine_vectors(self, scale, shift):
        c = self.channels
        a = torch.as_tensor(scale, dtype=torch.float64).flatten()
        b = torch.as_tensor(shift, dtype=torch.float64).flatten()
        a = a.expand(c) if a.numel() == 1 else a
        b = b.expand(c) if b.numel() == 1 else b
        if a.numel() != c or b.numel() != c:
            raise MomentsError(f"affine map has {a.numel()} scales and {b.numel()} shifts for {c} channels")
        if not torch.all(a != 0):
            raise MomentsError("affine map has a zero scale: it is not invertible")
        return a, b

    def _shifted_mean(self, a, b):
        return (self.mean.double() * a[:, None, None] + b[:, None, None]).to(self.mean.dtype)


def _uniform(a: torch.Tensor) -> bool:
    return bool(torch.all(a == a[0]))


class LowRankMoments(GaussianMoments):
    """Top-k eigenpairs (eigvecs D×k, orthonormal columns) plus an isotropic residual variance."""

    structure = "lowrank"

    def __init__(self, mean, eigvals, eigvecs, residual, **kw):
        super().__init__(mean, **kw)
        self.eigvals = eigvals
        self.eigvecs = eigvecs
        self.residual = torch.as_tensor(residual, dtype=eigvals.dtype).reshape(())

    @property
    def rank(self):
        return self.eigvals.numel()

    def tensors(self):
        return {"mean": self.mean, "eigvals": self.eigvals, "eigvecs": self.eigvecs,
                "residual": self.residual.reshape(1)}

    def operator(self, shape, device=None, dtype=torch.float64):
        shape = tuple(int(s) for s in shape)
        self._check_channels(shape)
        if shape != self.latent_shape:
            raise MomentsError(
                f"{self.structure} moments were estimated for latents of {_shape_str(self.latent_shape)} "
                f"(C×H×W) but the latent is {_shape_str(shape)}; generate at the moments' resolution, or use "
                f"'stationary' moments, which serve any height and width")
        put = lambda t: t.to(device=device, dtype=dtype)
        return EigenOperator(put(self.mean), put(self.eigvals), put(self.eigvecs), put(self.residual))

    def affine(self, scale, shift, *, space, latent_format):
        a, b = self._affine_vectors(scale, shift)
        mean = self._shifted_mean(a, b)
        kw = dict(count=self.count, space=space, latent_format=latent_format, metadata=self.metadata)
        if _uniform(a):
            s2 = float(a[0]) ** 2
            return type(self)._rebuild(mean, self.eigvals * s2, self.eigvecs, self.residual * s2, kw)
        if self.rank == self.dim:
            return _dense_from_covariance(mean, self._scaled_covariance(a), kw)
        raise MomentsError(
            f"latent format {latent_format!r} scales channels unequally ({a.tolist()}); the isotropic residual "
            f"of low-rank moments has no exact image under that map. Estimate the moments in model space, or use "
            f"'stationary' or 'dense' moments, which convert exactly")

    @classmethod
    def _rebuild(cls, mean, eigvals, eigvecs, residual, kw):
        return cls(mean, eigvals, eigvecs, residual, **kw)

    def _scaled_covariance(self, a):
        d = a.repeat_interleave(self.dim // self.channels).to(self.eigvecs.dtype)
        u = self.eigvecs * d[:, None]
        return (u * self.eigvals) @ u.T

    def variances(self):
        return self.eigvals


class DenseMoments(LowRankMoments):
    """All D eigenpairs: Σ = U diag(λ) Uᵀ exactly."""

    structure = "dense"

    def __init__(self, mean, eigvals, eigvecs, residual=0.0, **kw):
        super().__init__(mean, eigvals, eigvecs, residual, **kw)

    @classmethod
    def _rebuild(cls, mean, eigvals, eigvecs, residual, kw):
        return cls(mean, eigvals, eigvecs, **kw)

    def tensors(self):
        return {"mean": self.mean, "eigvals": self.eigvals, "eigvecs": self.eigvecs}


def _dense_from_covariance(mean, cov, kw):
    eigvals, eigvecs = torch.linalg.eigh(cov.double())
    eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
    eigvals = _zero_roundoff(eigvals)
    dt = mean.dtype
    return DenseMoments(mean, eigvals.to(dt), eigvecs.to(dt), **kw)


def _zero_roundoff(eigvals: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a PSD matrix computed in float64 may come out as -1e-17: they are zeros."""
    tol = 64 * torch.finfo(torch.float64).eps * eigvals.abs().max().clamp_min(1e-300)
    return torch.where(eigvals.abs() <= tol, torch.zeros_like(eigvals), eigvals)


class StationaryMoments(GaussianMoments):
    """Per-frequency C×C covariance: eigvals (H, W, C), eigvecs (H, W, C, C) complex (columns)."""

    structure = "stationary"

    def __init__(self, mean, eigvals, eigvecs, **kw):
        super().__init__(mean, **kw)
        self.eigvals = eigvals
        self.eigvecs = eigvecs

    @property
    def rank(self):
        return self.channels

    def tensors(self):
        return {"mean": self.mean, "eigvals": self.eigvals,
                "eigvecs_real": self.eigvecs.real.contiguous(), "eigvecs_imag": self.eigvecs.imag.contiguous()}

    def spectrum(self) -> torch.Tensor:
        """P(k) = V diag(λ) Vᴴ, (H, W, C, C) complex."""
        v = self.eigvecs.to(torch.complex128)
        return (v * self.eigvals.double().unsqueeze(-2)) @ v.mH

    def operator(self, shape, device=None, dtype=torch.float64):
        shape = tuple(int(s) for s in shape)
        self._check_channels(shape)
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        if shape == self.latent_shape:
            eigvals, eigvecs, mean = self.eigvals, self.eigvecs, self.mean
        else:
            eigvals, eigvecs = _eigh_spectrum(resample_spectrum(self.spectrum(), shape[1:]))
            mean = resample_mean(self.mean.double(), shape[1:])
        return StationaryOperator(mean.to(device=device, dtype=dtype), eigvals.to(device=device, dtype=dtype),
                                  eigvecs.to(device=device, dtype=cdtype))

    def affine(self, scale, shift, *, space, latent_format):
        a, b = self._affine_vectors(scale, shift)
        # The channel map commutes with the DFT: P(k) -> A P(k) A at every frequency.
        v = self.eigvecs.to(torch.complex128)
        scaled = a.to(torch.complex128)[:, None] * v
        cov = (scaled * self.eigvals.double().unsqueeze(-2)) @ scaled.mH
        eigvals, eigvecs = _eigh_spectrum(cov)
        return StationaryMoments(self._shifted_mean(a, b), eigvals.to(self.eigvals.dtype),
                                 eigvecs.to(self.eigvecs.dtype), count=self.count, space=space,
                                 latent_format=latent_format, metadata=self.metadata)

    def variances(self):
        return self.eigvals.flatten().sort(descending=True).values


def _eigh_spectrum(cov: torch.Tensor):
    cov = 0.5 * (cov + cov.mH)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    return _zero_roundoff(eigvals), eigvecs


def _periodic_lerp_indices(n_old: int, n_new: int):
    """Bilinear weights on the frequency circle: new bin j sits at fftfreq(n_new)[j]·n_old old bins."""
    pos = torch.fft.fftfreq(n_new, dtype=torch.float64) * n_old
    lo = torch.floor(pos)
    t = pos - lo
    lo = lo.long() % n_old
    return lo, (lo + 1) % n_old, t


def resample_spectrum(spec: torch.Tensor, size) -> torch.Tensor:
    """Resample a (H, W, C, C) spectrum in normalized frequency (cycles per latent pixel).

    This keeps the autocovariance at each pixel lag: the same local statistics at any size. Linear
    interpolation of PSD matrices stays PSD and keeps P(-k) = conj(P(k)), so outputs stay real.
    """
    h_lo, h_hi, th = _periodic_lerp_indices(spec.shape[0], size[0])
    w_lo, w_hi, tw = _periodic_lerp_indices(spec.shape[1], size[1])
    th = th.to(spec.dtype)[:, None, None, None]
    tw = tw.to(spec.dtype)[None, :, None, None]
    rows = spec[h_lo] * (1 - th) + spec[h_hi] * th
    return rows[:, w_lo] * (1 - tw) + rows[:, w_hi] * tw


def resample_mean(mean: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of the (C, H, W) mean image, antialiased when shrinking."""
    size = tuple(int(s) for s in size)
    if tuple(mean.shape[1:]) == size:
        return mean
    shrink = size[0] < mean.shape[1] or size[1] < mean.shape[2]
    return torch.nn.functional.interpolate(mean[None], size=size, mode="bilinear", align_corners=False,
                                           antialias=shrink)[0]


def orthonormality_error(q: torch.Tensor) -> float:
    """Largest deviation of QᴴQ from the identity (batched over leading dims)."""
    q = q.to(torch.complex128 if q.is_complex() else torch.float64)
    gram = q.mH @ q
    eye = torch.eye(q.shape[-1], dtype=gram.dtype)
    return float((gram - eye).abs().max()) if q.numel() else 0.0


__all__ = ["GaussianMoments", "LowRankMoments", "DenseMoments", "StationaryMoments", "GaussianOperator",
           "MomentsError", "STRUCTURES", "SPACES", "resample_spectrum", "resample_mean"]
