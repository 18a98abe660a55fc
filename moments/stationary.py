"""The ``stationary`` structure: Σ block-diagonal in the orthonormal 2-D DFT, one C×C matrix per frequency.

A circulant (translation-invariant) covariance. Its spectrum is resampled in cycles per latent pixel,
which keeps the autocovariance at each pixel lag, so one file serves any height and width.
Estimation keeps Σx and the per-frequency scatter Σ X(k)X(k)ᴴ in float64; sums merge exactly.
"""

from __future__ import annotations

import torch

from .base import GaussianMoments, GaussianOperator, ScatterAccumulator, affine_vectors, zero_roundoff


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

    def apply_sum(self, vs, fs):
        # Every vᵢ through one FFT and one product per frequency (the vᵢ as columns: one C×C by C×n·B product,
        # not n·B matrix-vector ones), the weighted sum back through one of each.
        b, n = vs[0].shape[0], len(vs)
        spec = torch.fft.fft2(torch.cat(vs), norm="ortho").permute(2, 3, 1, 0).contiguous()   # H, W, C, n·B
        coeff = (self.eigvecs.mH @ spec).unflatten(-1, (n, b))
        gains = torch.stack([f(self.eigvals) for f in fs], -1).to(coeff.dtype)               # H, W, C, n
        combo = (coeff * gains.unsqueeze(-1)).sum(-2)                                        # H, W, C, B
        return torch.fft.ifft2((self.eigvecs @ combo).permute(3, 2, 0, 1), norm="ortho").real


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
        self.check_channels(shape)
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        if shape == self.latent_shape:
            eigvals, eigvecs, mean = self.eigvals, self.eigvecs, self.mean
        else:
            eigvals, eigvecs = eigh_spectrum(resample_spectrum(self.spectrum(), shape[1:]))
            mean = resample_mean(self.mean.double(), shape[1:])
        return StationaryOperator(mean.to(device=device, dtype=dtype), eigvals.to(device=device, dtype=dtype),
                                  eigvecs.to(device=device, dtype=cdtype))

    def affine(self, scale, shift, *, space, latent_format):
        a, b = affine_vectors(scale, shift, self.channels)
        # The channel map commutes with the DFT: P(k) -> A P(k) A at every frequency.
        v = self.eigvecs.to(torch.complex128)
        scaled = a.to(torch.complex128)[:, None] * v
        cov = (scaled * self.eigvals.double().unsqueeze(-2)) @ scaled.mH
        eigvals, eigvecs = eigh_spectrum(cov)
        return StationaryMoments(self.shifted_mean(a, b), eigvals.to(self.eigvals.dtype),
                                 eigvecs.to(self.eigvecs.dtype), **self.kwargs(space=space,
                                                                                latent_format=latent_format))

    def variances(self):
        return self.eigvals.flatten().sort(descending=True).values


def eigh_spectrum(cov: torch.Tensor):
    """Per-frequency eigenpairs of a (H, W, C, C) Hermitian spectrum (ascending, round-off zeroed)."""
    cov = 0.5 * (cov + cov.mH)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    return zero_roundoff(eigvals), eigvecs


def mean_spectrum(mean: torch.Tensor) -> torch.Tensor:
    """The orthonormal DFT of a (C, H, W) mean as (H, W, C, 1) columns."""
    return torch.fft.fft2(mean, norm="ortho").permute(1, 2, 0)[..., None]


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


class StationaryAccumulator(ScatterAccumulator, structure="stationary"):
    """Σx and the per-frequency scatter Σ X(k)X(k)ᴴ of the orthonormal 2-D DFT, in float64."""

    def __init__(self, structure=None, *, rank=1, **kw):
        super().__init__(structure, rank=max(int(rank), 1))
        self.scatter: torch.Tensor | None = None

    def start(self, shape):
        super().start(shape)
        c, h, w = self.shape
        self.scatter = torch.zeros(h, w, c, c, dtype=torch.complex128)

    def scatter_of(self, batch):
        spec = torch.fft.fft2(batch, norm="ortho").permute(0, 2, 3, 1)  # B, H, W, C
        return torch.einsum("bhwi,bhwj->hwij", spec, spec.conj())

    def seed(self, moments):
        spec = mean_spectrum(moments.mean.double())
        self.scatter = (moments.count - 1) * moments.spectrum() + moments.count * (spec @ spec.mH)

    def finalize_checked(self, mean, kw, dtype, progress):
        spec = mean_spectrum(mean)
        cov = (self.scatter - self.count * (spec @ spec.mH)) / (self.count - 1)
        eigvals, eigvecs = eigh_spectrum(cov)
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        return StationaryMoments(mean.to(dtype), eigvals.to(dtype), eigvecs.to(cdtype), **kw)

    def estimator_name(self):
        return "fft2-scatter-float64"
