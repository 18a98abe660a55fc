"""Moments of video latents (C, T, H, W per sample; batches B×C×T×H×W).

Two structures, both sized by a C×C (or (T·C)×(T·C)) matrix per frequency rather than by the latent:

- ``video_stationary``: stationary in time and space. Σ is block-diagonal in the orthonormal 3-D DFT
  over (T, H, W): one Hermitian C×C matrix per spatio-temporal frequency. The spectrum is resampled
  in cycles per latent frame and per latent pixel (the autocovariance at each lag is kept), so one
  file serves any frame count and resolution, the way the image ``stationary`` moments serve any
  resolution. Stored at 1×1×1 it is white in time and space with a C×C channel covariance: the
  per-channel diagonal Gaussian of a VAE's published ``latents_mean`` / ``latents_std``
  (``video_moments_from_vae_stats``) is that case, and its operator is a channel map, no FFT.
- ``video_spatial``: stationary in space only, dense across frames: one (T·C)×(T·C) matrix per
  spatial frequency. It models what differs from frame to frame (a causal VAE's first latent frame
  encodes one image, the others four frames each), so it serves any resolution but only its own
  frame count; another frame count is refused, naming the fix.

The mean is a (C, T, H, W) tensor, resized (antialiased bilinear in space, linear in time) where the
stationary moments serve another size. Estimation keeps float64 sums that merge exactly.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from .base import (SPACES, GaussianMoments, GaussianOperator, MomentsError, ScatterAccumulator, affine_vectors,
                   check_value_dtype, shape_str, zero_roundoff)
from .stationary import StationaryMoments, _periodic_lerp_indices, mean_spectrum

VIDEO_STRUCTURES = ("video_stationary", "video_spatial")
FFT_DIMS = (-3, -2, -1)


def is_video_moments(moments) -> bool:
    """True for moments of video latents (C, T, H, W)."""
    return isinstance(moments, VideoMoments)


def latent_kind(shape) -> str:
    """'image' for a per-sample (C, H, W) shape, 'video' for (C, T, H, W)."""
    return {3: "image", 4: "video"}.get(len(tuple(shape)), f"{len(tuple(shape)) + 1}-D")


# ----------------------------------------------------------------------------
# The shared base: a (C, T, H, W) mean and the bookkeeping of GaussianMoments.


class VideoMoments(GaussianMoments):
    """Base of the video structures. ``mean`` has the latent shape (C, T, H, W) the moments were estimated at."""

    mean_axes = "C, T, H, W"

    @property
    def frames(self) -> int:
        return self.mean.shape[1]

    def check_channels(self, shape):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4:
            raise MomentsError(
                f"these are video moments ({self.structure}, latent {shape_str(self.latent_shape)} C×T×H×W) but the "
                f"latent is {latent_kind(shape)} ({shape_str(shape)}): load or estimate image moments for an image "
                "model, or give a single-frame video latent its frame axis (B, C, 1, H, W)")
        if shape[0] != self.channels:
            raise MomentsError(
                f"moments have {self.channels} latent channels but the video latent has {shape[0]} "
                f"({shape_str(shape)}): these moments were made for another model family ({self.latent_format}); "
                "load or estimate video moments for this model's latent space")
        if min(shape) < 1:
            raise MomentsError(f"the video latent {shape_str(shape)} is empty")

    def describe(self) -> str:
        if self.metadata.get("source") != "vae_stats":
            return super().describe()
        return (f"{self.structure} moments, per-channel diagonal from the VAE's published statistics, "
                f"{self.space} space ({self.latent_format})")

    def shifted_mean(self, a, b):
        return (self.mean.double() * a[:, None, None, None] + b[:, None, None, None]).to(self.mean.dtype)


def resample_video_mean(mean: torch.Tensor, size) -> torch.Tensor:
    """A (C, T, H, W) mean at (T', H', W'): antialiased bilinear per frame, then linear in time."""
    size = tuple(int(s) for s in size)
    c, t, h, w = mean.shape
    out = mean
    if (h, w) != size[1:]:
        shrink = size[1] < h or size[2] < w
        out = F.interpolate(out.permute(1, 0, 2, 3), size=size[1:], mode="bilinear", align_corners=False,
                            antialias=shrink).permute(1, 0, 2, 3)
    if t != size[0]:
        hh, ww = out.shape[-2:]
        flat = out.permute(0, 2, 3, 1).reshape(1, c * hh * ww, t)
        flat = F.interpolate(flat, size=size[0], mode="linear", align_corners=False)
        out = flat.reshape(c, hh, ww, size[0]).permute(0, 3, 1, 2)
    return out.contiguous()


# ----------------------------------------------------------------------------
# video_stationary: one C×C matrix per spatio-temporal frequency.


class VideoStationaryOperator(GaussianOperator):
    """Σ block-diagonal in the orthonormal 3-D DFT over (T, H, W).

    The latent is real, so only the half spectrum of the last axis is kept (rfftn): eigvals
    (T, H, W//2+1, C), eigvecs (T, H, W//2+1, C, C) complex.
    """

    def __init__(self, mean, eigvals, eigvecs, width: int):
        super().__init__(mean)
        self.eigvals, self.eigvecs, self.width = eigvals, eigvecs, int(width)

    def apply_many(self, v, fs):
        size = tuple(v.shape[-3:])
        spec = torch.fft.rfftn(v, dim=FFT_DIMS, norm="ortho").permute(0, 2, 3, 4, 1).unsqueeze(-1)  # B,T,H,Wr,C,1
        coeff = self.eigvecs.mH @ spec
        outs = []
        for f in fs:
            scaled = coeff * f(self.eigvals).unsqueeze(-1).to(coeff.dtype)
            out = (self.eigvecs @ scaled).squeeze(-1).permute(0, 4, 1, 2, 3)
            outs.append(torch.fft.irfftn(out, s=size, dim=FFT_DIMS, norm="ortho"))
        return outs

    def apply_sum(self, vs, fs):
        # Every vᵢ through one FFT and one product per frequency, the weighted sum back through one of each.
        b, n, size = vs[0].shape[0], len(vs), tuple(vs[0].shape[-3:])
        spec = torch.fft.rfftn(torch.cat(vs), dim=FFT_DIMS, norm="ortho").permute(2, 3, 4, 1, 0)  # T,H,Wr,C,n·B
        coeff = (self.eigvecs.mH @ spec).unflatten(-1, (n, b))
        gains = torch.stack([f(self.eigvals) for f in fs], -1).to(coeff.dtype)                    # T,H,Wr,C,n
        combo = (coeff * gains.unsqueeze(-1)).sum(-2)                                             # T,H,Wr,C,B
        return torch.fft.irfftn((self.eigvecs @ combo).permute(4, 3, 0, 1, 2), s=size, dim=FFT_DIMS, norm="ortho")


class VideoWhiteOperator(GaussianOperator):
    """Σ = I ⊗ P: white in time and space, one real C×C channel covariance P = V diag(λ) Vᵀ.

    ``eigvecs`` None: P is diagonal (a VAE's per-channel statistics), λ its diagonal, applied elementwise.
    """

    def __init__(self, mean, eigvals, eigvecs=None):
        super().__init__(mean)
        self.eigvals, self.eigvecs = eigvals, eigvecs  # (C,), (C, C) real or None

    def apply_many(self, v, fs):
        tail = (1,) * (v.dim() - 2)
        if self.eigvecs is None:
            return [v * f(self.eigvals).view(-1, *tail) for f in fs]
        flat = v.reshape(v.shape[0], v.shape[1], -1)                   # B, C, N: channel products as one GEMM
        coeff = self.eigvecs.T @ flat
        return [(self.eigvecs @ (coeff * f(self.eigvals)[:, None])).reshape(v.shape) for f in fs]


class VideoStationaryMoments(VideoMoments):
    """Per spatio-temporal frequency C×C covariance: eigvals (T, H, W, C), eigvecs (T, H, W, C, C) complex."""

    structure = "video_stationary"

    def __init__(self, mean, eigvals, eigvecs, **kw):
        super().__init__(mean, **kw)
        self.eigvals = eigvals
        self.eigvecs = eigvecs

    @property
    def rank(self):
        return self.channels

    @property
    def white(self) -> bool:
        """Stored at one frequency: white in time and space (a channel covariance only)."""
        return tuple(self.latent_shape[1:]) == (1, 1, 1)

    def tensors(self):
        return {"mean": self.mean, "eigvals": self.eigvals,
                "eigvecs_real": self.eigvecs.real.contiguous(), "eigvecs_imag": self.eigvecs.imag.contiguous()}

    def spectrum(self) -> torch.Tensor:
        """P(k) = V diag(λ) Vᴴ, (T, H, W, C, C) complex128."""
        v = self.eigvecs.to(torch.complex128)
        return (v * self.eigvals.double().unsqueeze(-2)) @ v.mH

    def operator(self, shape, device=None, dtype=torch.float64):
        shape = tuple(int(s) for s in shape)
        self.check_channels(shape)
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        size = shape[1:]
        mean = self.mean.double() if self.white else resample_video_mean(self.mean.double(), size)
        mean = mean.expand(shape).contiguous().to(device=device, dtype=dtype)
        if self.white:
            p = self.spectrum()[0, 0, 0].real
            if torch.count_nonzero(p - torch.diag(torch.diagonal(p))) == 0:
                return VideoWhiteOperator(mean, torch.diagonal(p).to(device=device, dtype=dtype))
            eigvals, eigvecs = eigh_spectrum(p)
            return VideoWhiteOperator(mean, eigvals.to(device=device, dtype=dtype),
                                      eigvecs.to(device=device, dtype=dtype))
        half = size[2] // 2 + 1
        if size == tuple(self.latent_shape[1:]):
            eigvals, eigvecs = self.eigvals[:, :, :half], self.eigvecs[:, :, :half]
        else:
            eigvals, eigvecs = resampled_eigh(self.spectrum(), size, half, dtype=dtype, cdtype=cdtype, device=device)
        return VideoStationaryOperator(mean, eigvals.to(device=device, dtype=dtype),
                                       eigvecs.to(device=device, dtype=cdtype), size[2])

    def affine(self, scale, shift, *, space, latent_format):
        a, b = affine_vectors(scale, shift, self.channels)
        # The channel map commutes with the DFT: P(k) -> A P(k) A at every frequency.
        scaled = a.to(torch.complex128)[:, None] * self.eigvecs.to(torch.complex128)
        eigvals, eigvecs = eigh_spectrum((scaled * self.eigvals.double().unsqueeze(-2)) @ scaled.mH)
        return VideoStationaryMoments(self.shifted_mean(a, b), eigvals.to(self.eigvals.dtype),
                                      eigvecs.to(self.eigvecs.dtype),
                                      **self.kwargs(space=space, latent_format=latent_format))

    def variances(self):
        return self.eigvals.flatten().sort(descending=True).values


def eigh_spectrum(cov: torch.Tensor):
    """Eigenpairs of a batch of Hermitian matrices (ascending, round-off zeroed)."""
    cov = 0.5 * (cov + cov.mH)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    return zero_roundoff(eigvals), eigvecs


def hermitian_symmetric(spec: torch.Tensor) -> torch.Tensor:
    """(P(k) + conj P(−k)) / 2 over the three frequency axes of a (T, H, W, C, C) spectrum: a real process's."""
    neg = [(-torch.arange(n)) % n for n in spec.shape[:3]]
    return 0.5 * (spec + spec[neg[0]][:, neg[1]][:, :, neg[2]].conj())


def _lerp_axis(spec: torch.Tensor, axis: int, n_new: int, keep: int | None = None) -> torch.Tensor:
    lo, hi, t = _periodic_lerp_indices(spec.shape[axis], n_new)
    lo, hi, t = lo[:keep], hi[:keep], t[:keep]
    t = t.to(spec.real.dtype).view(*([1] * axis), -1, *([1] * (spec.dim() - axis - 1)))
    return spec.index_select(axis, lo) * (1 - t) + spec.index_select(axis, hi) * t


def resampled_eigh(spec: torch.Tensor, size, half: int, *, dtype=torch.float64, cdtype=torch.complex128, device=None,
                   chunk: int = 4):
    """Eigenpairs of a (T, H, W, C, C) spectrum resampled to ``size`` in normalized frequency (cycles per
    latent frame and pixel), for the first ``half`` bins of the last axis (the rfft layout).

    Trilinear on the frequency torus of the Hermitian-symmetric source, which keeps P(−k) = conj P(k)
    (a real latent stays real) and PSD matrices PSD. Done in space first, then a few output frames at a
    time, so the full-size spectrum never exists at once.
    """
    mid = _lerp_axis(_lerp_axis(hermitian_symmetric(spec), 1, size[1]), 2, size[2], keep=half)
    lo, hi, t = _periodic_lerp_indices(mid.shape[0], size[0])
    vals, vecs = [], []
    for start in range(0, size[0], chunk):
        sl = slice(start, start + chunk)
        w = t[sl].to(mid.real.dtype).view(-1, 1, 1, 1, 1)
        ev, evec = eigh_spectrum(mid[lo[sl]] * (1 - w) + mid[hi[sl]] * w)
        vals.append(ev.to(device=device, dtype=dtype))
        vecs.append(evec.to(device=device, dtype=cdtype))   # each chunk in its final precision and place
    return torch.cat(vals), torch.cat(vecs)


def mean_spectrum_3d(mean: torch.Tensor) -> torch.Tensor:
    """The orthonormal 3-D DFT of a (C, T, H, W) mean as (T, H, W, C, 1) columns."""
    return torch.fft.fftn(mean, dim=FFT_DIMS, norm="ortho").permute(1, 2, 3, 0)[..., None]


# ----------------------------------------------------------------------------
# video_spatial: stationary in space, dense across frames (a fixed frame count).


class VideoSpatialOperator(GaussianOperator):
    """The image stationary operator on the (C·T)-channel view of a (B, C, T, H, W) latent."""

    def __init__(self, mean, inner: GaussianOperator):
        super().__init__(mean)
        self.inner = inner

    def apply_many(self, v, fs):
        b, c, t, h, w = v.shape
        return [o.reshape(b, c, t, h, w) for o in self.inner.apply_many(v.reshape(b, c * t, h, w), fs)]

    def apply_sum(self, vs, fs):
        b, c, t, h, w = vs[0].shape
        return self.inner.apply_sum([v.reshape(b, c * t, h, w) for v in vs], fs).reshape(b, c, t, h, w)


class VideoSpatialMoments(VideoMoments):
    """Per spatial frequency (T·C)×(T·C) covariance (channel-major: index c·T + t).

    eigvals (H, W, C·T), eigvecs (H, W, C·T, C·T) complex: the image stationary structure over the
    frames-times-channels view, so it resamples in space and keeps its frame count.
    """

    structure = "video_spatial"

    def __init__(self, mean, eigvals, eigvecs, **kw):
        super().__init__(mean, **kw)
        self.eigvals = eigvals
        self.eigvecs = eigvecs

    @property
    def rank(self):
        return self.channels * self.frames

    def tensors(self):
        return {"mean": self.mean, "eigvals": self.eigvals,
                "eigvecs_real": self.eigvecs.real.contiguous(), "eigvecs_imag": self.eigvecs.imag.contiguous()}

    def as_image(self) -> StationaryMoments:
        """The same Gaussian as image stationary moments of C·T channels."""
        c, t, h, w = self.latent_shape
        return StationaryMoments(self.mean.reshape(c * t, h, w), self.eigvals, self.eigvecs,
                                 **self.kwargs(metadata={}))

    def spectrum(self) -> torch.Tensor:
        return self.as_image().spectrum()

    def check_channels(self, shape):
        super().check_channels(shape)
        frames = int(shape[1])
        if frames != self.frames:
            raise MomentsError(
                f"these video moments are stationary in space but not in time ({self.structure}: each of their "
                f"{self.frames} latent frames has its own statistics) and serve {self.frames} latent frames only, "
                f"but the latent has {frames} ({shape_str(shape)}): sample {self.frames} latent frames "
                f"({frames_hint(self.latent_format, self.frames)}), or estimate video_stationary moments, which "
                "serve any frame count")

    def operator(self, shape, device=None, dtype=torch.float64):
        shape = tuple(int(s) for s in shape)
        self.check_channels(shape)
        c, t, h, w = shape
        inner = self.as_image().operator((c * t, h, w), device, dtype)
        return VideoSpatialOperator(inner.mean.reshape(c, t, h, w), inner)

    def affine(self, scale, shift, *, space, latent_format):
        a, b = affine_vectors(scale, shift, self.channels)
        img = self.as_image().affine(a.repeat_interleave(self.frames), b.repeat_interleave(self.frames),
                                     space=space, latent_format=latent_format)
        return VideoSpatialMoments(img.mean.reshape(self.latent_shape), img.eigvals, img.eigvecs,
                                   **self.kwargs(space=space, latent_format=latent_format))

    def variances(self):
        return self.eigvals.flatten().sort(descending=True).values


def frames_hint(latent_format: str, frames: int) -> str:
    """'81 video frames for Wan21' where the format's temporal compression is known, else 'the same frame count'."""
    from .latent_formats import ALL_LATENT_FORMATS

    fmt = ALL_LATENT_FORMATS.get(latent_format)
    if fmt is None or fmt.temporal_compression <= 1:
        return "the frame count they were estimated at"
    return f"{fmt.video_frames(frames)} video frames for {fmt.name}"


# ----------------------------------------------------------------------------
# Accumulators: float64 sums over (B, C, T, H, W) batches.


def check_video_batch(batch, shape) -> torch.Tensor:
    """A float (B, C, T, H, W) batch as CPU float64; MomentsError naming the fix.

    A 4-D tensor is refused rather than taken for one clip: it is as likely an image batch (B, C, H, W).
    """
    if not isinstance(batch, torch.Tensor):
        raise MomentsError(f"video latents must be a tensor (B, C, T, H, W), got {type(batch).__name__}")
    if batch.dim() != 5:
        raise MomentsError(f"video latents must be (B, C, T, H, W), got shape {tuple(batch.shape)}; image latents "
                           "(B, C, H, W) are estimated with estimate_moments, and one clip (C, T, H, W) is "
                           "added as clip[None]")
    if not batch.is_floating_point():
        raise MomentsError(f"latents must be floating point, got {batch.dtype}; pass the VAE's float output")
    if shape is not None and tuple(batch.shape[1:]) != tuple(shape):
        raise MomentsError(f"this accumulator holds video latents of {shape_str(shape)} (C×T×H×W) but got "
                           f"{shape_str(batch.shape[1:])}; bring all clips to one frame count and size before "
                           "estimating")
    batch = batch.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(batch).all():
        raise MomentsError("latents contain NaN or Inf values; check the VAE encode (try fp32) or the inputs")
    return batch


class VideoScatterAccumulator(ScatterAccumulator):
    """Σx and a per-frequency complex scatter in float64 over clips of one (C, T, H, W) shape."""

    def __init__(self, structure=None, *, rank=1, **kw):
        super().__init__(structure, rank=max(int(rank), 1))
        self.scatter: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return 0 if self.shape is None else int(torch.Size(self.shape).numel())

    def scatter_shape(self, c, t, h, w) -> tuple:
        raise NotImplementedError

    def start(self, shape):
        self.shape = tuple(int(s) for s in shape)
        self.sum = torch.zeros(self.shape, dtype=torch.float64)
        self.scatter = torch.zeros(self.scatter_shape(*self.shape), dtype=torch.complex128)

    def check_batch(self, batch):
        batch = check_video_batch(batch, self.shape)
        if self.shape is None:
            self.start(batch.shape[1:])
        return batch


class VideoStationaryAccumulator(VideoScatterAccumulator):
    """Σx and the per-frequency scatter Σ X(k)X(k)ᴴ of the orthonormal 3-D DFT, in float64."""

    structure = "video_stationary"   # set here, not registered: the image structures' list stays as it is

    def scatter_shape(self, c, t, h, w):
        return (t, h, w, c, c)

    def scatter_of(self, batch):
        spec = torch.fft.fftn(batch, dim=FFT_DIMS, norm="ortho").permute(0, 2, 3, 4, 1)  # B, T, H, W, C
        return torch.einsum("bthwi,bthwj->thwij", spec, spec.conj())

    def seed(self, moments):
        spec = mean_spectrum_3d(moments.mean.double())
        self.scatter = (moments.count - 1) * moments.spectrum() + moments.count * (spec @ spec.mH)

    def finalize_checked(self, mean, kw, dtype, progress):
        spec = mean_spectrum_3d(mean)
        cov = (self.scatter - self.count * (spec @ spec.mH)) / (self.count - 1)
        eigvals, eigvecs = eigh_spectrum(cov)
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        return VideoStationaryMoments(mean.to(dtype), eigvals.to(dtype), eigvecs.to(cdtype), **kw)

    def estimator_name(self):
        return "fftn3-scatter-float64"


class VideoSpatialAccumulator(VideoScatterAccumulator):
    """Σx and, per spatial frequency, the scatter of the (C·T)-channel view of each clip (2-D DFT), in float64."""

    structure = "video_spatial"

    def scatter_shape(self, c, t, h, w):
        return (h, w, c * t, c * t)

    def scatter_of(self, batch):
        b, c, t, h, w = batch.shape
        spec = torch.fft.fft2(batch.reshape(b, c * t, h, w), norm="ortho").permute(0, 2, 3, 1)  # B, H, W, CT
        return torch.einsum("bhwi,bhwj->hwij", spec, spec.conj())

    def _mean_spec(self, mean):
        c, t, h, w = self.shape
        return mean_spectrum(mean.reshape(c * t, h, w))

    def seed(self, moments):
        spec = self._mean_spec(moments.mean.double())
        self.scatter = (moments.count - 1) * moments.spectrum() + moments.count * (spec @ spec.mH)

    def finalize_checked(self, mean, kw, dtype, progress):
        spec = self._mean_spec(mean)
        cov = (self.scatter - self.count * (spec @ spec.mH)) / (self.count - 1)
        eigvals, eigvecs = eigh_spectrum(cov)
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        return VideoSpatialMoments(mean.to(dtype), eigvals.to(dtype), eigvecs.to(cdtype), **kw)

    def estimator_name(self):
        return "fft2-frames-scatter-float64"


_ACCUMULATORS = {"video_stationary": VideoStationaryAccumulator, "video_spatial": VideoSpatialAccumulator}


def video_accumulator(structure: str = "video_stationary", add_to: VideoMoments | None = None):
    """A fresh accumulator for video latents, or one continuing from raw video moments ``add_to``."""
    if structure not in _ACCUMULATORS:
        raise MomentsError(f"unknown video structure {structure!r}; choose one of {VIDEO_STRUCTURES}")
    acc = _ACCUMULATORS[structure]()
    if add_to is None:
        return acc
    if not is_video_moments(add_to) or add_to.structure != structure:
        raise MomentsError(f"the moments to add to are {add_to.structure}, but the structure asked for is "
                           f"{structure}; set the structure to {add_to.structure} to keep accumulating")
    if add_to.space != "raw":
        raise MomentsError("only raw (VAE-space) moments can be extended with more latents; these are in "
                           f"the model space of {add_to.latent_format}")
    if add_to.count < 2 or getattr(add_to, "white", False):
        raise MomentsError("these moments were not estimated from at least 2 clips (or hold only published VAE "
                           "statistics); estimate new moments instead of extending them")
    acc.start(add_to.latent_shape)
    acc.count = add_to.count
    acc.sum = add_to.mean.double() * add_to.count
    acc.seed(add_to)
    return acc


def estimate_video_moments(batches: Iterable[torch.Tensor], structure: str = "video_stationary", *,
                           space: str = "raw", latent_format: str = "none", metadata: dict | None = None,
                           dtype: torch.dtype = torch.float32, add_to: VideoMoments | None = None,
                           progress: Callable[[str], None] | None = None) -> VideoMoments:
    """Estimate video moments from an iterable of latent batches (B, C, T, H, W); stored in ``dtype``.

    ``structure``: "video_stationary" (any frame count and size) or "video_spatial" (any size, this
    frame count). ``latent_format`` is "none" or a known format name whose channel count the latents
    must have (checked on the first batch).
    """
    from .latent_formats import check_format_channels, check_format_name

    check_format_name(latent_format)
    check_value_dtype(dtype)
    acc = video_accumulator(structure, add_to)
    for batch in batches:
        acc.add(batch)
        if acc.shape is not None:
            check_format_channels(latent_format, acc.shape[0])
    return acc.finalize(space=space, latent_format=latent_format, metadata=metadata, dtype=dtype,
                        progress=progress)


def video_moments_from_vae_stats(mean, std, latent_format: str = "none", *, space: str = "raw",
                                 metadata: dict | None = None, dtype: torch.dtype = torch.float32
                                 ) -> VideoStationaryMoments:
    """The per-channel diagonal Gaussian N(mean_c, std_c²), white in time and space, from a VAE's statistics.

    ``mean`` / ``std``: the C values a VAE publishes (diffusers' ``latents_mean`` / ``latents_std`` in the
    VAE config), of raw VAE latents. Serves any frame count and size. For a format whose model space is
    exactly (z − mean)/std (Wan 2.1, Wan 2.2) this is N(0, I) in model space: the free starting point.
    """
    from .latent_formats import check_format_channels, check_format_name

    check_format_name(latent_format)
    check_value_dtype(dtype)
    m = torch.as_tensor(mean, dtype=torch.float64).flatten()
    s = torch.as_tensor(std, dtype=torch.float64).flatten()
    if m.numel() != s.numel() or m.numel() == 0:
        raise MomentsError(f"the VAE statistics have {m.numel()} means and {s.numel()} standard deviations; give "
                           "one of each per latent channel (latents_mean, latents_std)")
    if not (torch.isfinite(m).all() and torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise MomentsError("the VAE's latents_std must be finite and positive, and latents_mean finite; check the "
                           "values copied from the VAE config")
    c = m.numel()
    check_format_channels(latent_format, c)
    eigvals = (s ** 2)[None, None, None, :]
    eigvecs = torch.eye(c, dtype=torch.complex128)[None, None, None]
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    return VideoStationaryMoments(m.view(c, 1, 1, 1).to(dtype), eigvals.to(dtype), eigvecs.to(cdtype), count=1,
                                  space=space, latent_format=latent_format,
                                  metadata={"source": "vae_stats", **(metadata or {})})
