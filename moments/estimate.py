"""Streaming, mergeable estimation of Gaussian moments in float64.

An accumulator holds sufficient statistics whose size does not grow with the number of samples:
- dense (and low-rank when D is small): the count, Σx and the D×D scatter Σxxᵀ;
- low-rank at large D: Σx, the centred sum of squares and a sketch B (D×m, m ≤ ``sketch``) with
  BBᵀ ≈ Σ(x − x̄)(x − x̄)ᵀ, merged with Chan et al.'s update (the shift between the two means is one
  more column). While the samples number fewer than ``sketch`` the sketch holds them exactly, so the
  eigenpairs come from a thin QR of the N columns (the Gram route, O(N²D)); past that, the smallest
  directions are folded into the isotropic residual, whose total energy is kept exactly;
- stationary: Σx and the per-frequency scatter Σ X(k)X(k)ᴴ of the orthonormal 2-D DFT.
Sums merge exactly (shards, processes); a sketch merges exactly while it is not truncated.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .structures import (STRUCTURES, DenseMoments, GaussianMoments, LowRankMoments, MomentsError,
                         StationaryMoments, _eigh_spectrum, _zero_roundoff)

DENSE_MAX_DIM = 4096  # a float64 D×D scatter of 128 MiB and an eigh that takes seconds


def default_sketch(rank: int) -> int:
    return max(2 * rank, rank + 128)


class MomentAccumulator:
    """Accumulate latents (B, C, H, W) into Gaussian moments of a chosen structure.

    Args:
        structure:    "dense", "lowrank" or "stationary".
        rank:         eigenpairs kept by "lowrank".
        sketch:       columns kept by the low-rank sketch at large D (default max(2·rank, rank + 128)).
        dense_max_dim: largest D for which a D×D scatter is kept ("dense" refuses larger latents).
    """

    def __init__(self, structure: str = "lowrank", *, rank: int = 256, sketch: int | None = None,
                 dense_max_dim: int = DENSE_MAX_DIM):
        if structure not in STRUCTURES:
            raise MomentsError(f"unknown structure {structure!r}; choose one of {STRUCTURES}")
        if rank < 1:
            raise MomentsError(f"rank must be at least 1, got {rank}")
        self.structure = structure
        self.rank = int(rank)
        self.sketch_cols = int(sketch) if sketch is not None else default_sketch(self.rank)
        if self.sketch_cols < self.rank:
            raise MomentsError(f"sketch ({self.sketch_cols}) must be at least the rank ({self.rank})")
        self.dense_max_dim = int(dense_max_dim)
        self.shape: tuple[int, int, int] | None = None
        self.count = 0
        self.sum: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None   # dense D×D, or stationary (H, W, C, C) complex
        self.sketch: torch.Tensor | None = None    # low-rank D×m, centred
        self.m2 = 0.0                              # centred sum of squares (sketch mode)

    # -- bookkeeping ---------------------------------------------------------

    @property
    def dim(self) -> int:
        return 0 if self.shape is None else self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def uses_sketch(self) -> bool:
        return self.structure == "lowrank" and self.dim > self.dense_max_dim

    def _start(self, shape):
        self.shape = tuple(int(s) for s in shape)
        d = self.dim
        if self.structure == "dense" and d > self.dense_max_dim:
            raise MomentsError(
                f"dense moments for a {'×'.join(map(str, self.shape))} latent need a {d}×{d} covariance "
                f"({d * d * 8 / 2**30:.1f} GiB in float64); use 'lowrank' (default) or 'stationary' moments")
        self.sum = torch.zeros(self.shape, dtype=torch.float64)
        if self.structure == "stationary":
            c, h, w = self.shape
            self.scatter = torch.zeros(h, w, c, c, dtype=torch.complex128)
        elif self.uses_sketch:
            self.sketch = torch.zeros(d, 0, dtype=torch.float64)
        else:
            self.scatter = torch.zeros(d, d, dtype=torch.float64)

    def _check_batch(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dim() == 3:
            batch = batch[None]
        if batch.dim() != 4:
            raise MomentsError(f"latents must be (B, C, H, W), got shape {tuple(batch.shape)}")
        if self.shape is None:
            self._start(batch.shape[1:])
        elif tuple(batch.shape[1:]) != self.shape:
            raise MomentsError(
                f"this accumulator holds latents of {'×'.join(map(str, self.shape))} (C×H×W) but got "
                f"{'×'.join(map(str, batch.shape[1:]))}; bring all images to one size before estimating")
        batch = batch.detach().to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(batch).all():
            raise MomentsError("latents contain NaN or Inf values; check the VAE encode (try fp32) or the inputs")
        return batch

    # -- accumulation --------------------------------------------------------

    def add(self, batch: torch.Tensor) -> "MomentAccumulator":
        """Add a batch (B, C, H, W) or one latent (C, H, W)."""
        batch = self._check_batch(batch)
        if self.uses_sketch:
            mean = batch.mean(0)
            centred = (batch - mean).reshape(batch.shape[0], -1)
            self._merge_centred(batch.shape[0], mean, float((centred * centred).sum()), centred.T)
            return self
        self.count += batch.shape[0]
        self.sum += batch.sum(0)
        flat = batch.reshape(batch.shape[0], -1)
        if self.structure == "stationary":
            spec = torch.fft.fft2(batch, norm="ortho").permute(0, 2, 3, 1)  # B, H, W, C
            self.scatter += torch.einsum("bhwi,bhwj->hwij", spec, spec.conj())
        else:
            self.scatter += flat.T @ flat
        return self

    def _merge_centred(self, n_b: int, mean_b: torch.Tensor, m2_b: float, sketch_b: torch.Tensor):
        """Chan et al.'s pairwise update: S = S_a + S_b + (n_a n_b / n) δδᵀ with δ = x̄_b − x̄_a."""
        n_a = self.count
        n = n_a + n_b
        cols = [self.sketch, sketch_b]
        if n_a > 0:
            delta = (mean_b - self.sum / n_a).flatten()
            w = n_a * n_b / n
            cols.append((w ** 0.5) * delta[:, None])
            self.m2 += w * float(delta @ delta)
        self.m2 += m2_b
        self.count = n
        self.sum += mean_b * n_b
        self.sketch = torch.cat(cols, dim=1)
        if self.sketch.shape[1] > self.sketch_cols:
            self.sketch = _truncate_columns(self.sketch, self.sketch_cols)

    def merge(self, other: "MomentAccumulator") -> "MomentAccumulator":
        """Add another accumulator's statistics (same structure and latent shape)."""
        if other.count == 0:
            return self
        if other.structure != self.structure:
            raise MomentsError(f"cannot merge {other.structure} statistics into {self.structure} ones")
        if self.shape is None:
            self._start(other.shape)
        if other.shape != self.shape:
            raise MomentsError(f"cannot merge statistics of latents {other.shape} into {self.shape}")
        if self.uses_sketch:
            self._merge_centred(other.count, other.sum / other.count, other.m2, other.sketch)
            return self
        self.count += other.count
        self.sum += other.sum
        self.scatter += other.scatter
        return self

    def all_reduce(self, group=None) -> "MomentAccumulator":
        """Combine the statistics of every process in a torch.distributed group (in place).

        Sums are all-reduced; a low-rank sketch is all-gathered and re-truncated. Every process ends
        with the same statistics. Works on gloo (CPU) and, with tensors moved to the device, NCCL.
        """
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend(group) == "nccl" else torch.device("cpu")
        shapes = [None] * dist.get_world_size(group)
        dist.all_gather_object(shapes, self.shape, group=group)
        shape = next((s for s in shapes if s is not None), None)
        if shape is None:
            return self
        if any(s is not None and s != shape for s in shapes):
            raise MomentsError(f"processes hold latents of different shapes: {shapes}")
        if self.shape is None:
            self._start(shape)

        def reduce_(t):
            buf = torch.view_as_real(t) if t.is_complex() else t
            buf = buf.to(device)
            dist.all_reduce(buf, group=group)
            return (torch.view_as_complex(buf) if t.is_complex() else buf).cpu()

        if not self.uses_sketch:
            self.count = int(reduce_(torch.tensor([self.count], dtype=torch.float64)).round().item())
            self.sum = reduce_(self.sum)
            self.scatter = reduce_(self.scatter)
            return self
        # Sketches are gathered and merged in process order, so every process gets the same result.
        parts = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, (self.count, self.m2, self.sketch.shape[1]), group=group)
        width = max(p[2] for p in parts)
        packed = torch.zeros(self.dim, width + 1, dtype=torch.float64, device=device)
        packed[:, 0] = self.sum.flatten().to(device)
        packed[:, 1:1 + self.sketch.shape[1]] = self.sketch.to(device)
        gathered = [torch.empty_like(packed) for _ in parts]
        dist.all_gather(gathered, packed, group=group)
        self._start(shape)
        self.count, self.m2 = 0, 0.0
        for (count, m2, cols), g in zip(parts, gathered):
            if count:
                g = g.cpu()
                self._merge_centred(count, g[:, 0].reshape(shape) / count, m2, g[:, 1:1 + cols])
        return self

    @classmethod
    def from_moments(cls, moments: GaussianMoments, *, rank: int | None = None,
                     sketch: int | None = None) -> "MomentAccumulator":
        """Seed an accumulator with existing moments so new latents add to them.

        Dense and stationary moments are sufficient statistics, so this is exact; low-rank moments
        carry their top-k directions and the residual's total energy.
        """
        acc = cls(moments.structure, rank=rank or max(moments.rank, 1), sketch=sketch,
                  dense_max_dim=max(DENSE_MAX_DIM, moments.dim if moments.structure == "dense" else 0))
        acc._start(moments.latent_shape)
        n = moments.count
        if n < 2:
            raise MomentsError("moments estimated from fewer than 2 samples cannot be extended")
        mean = moments.mean.double()
        acc.count, acc.sum = n, mean * n
        if isinstance(moments, StationaryMoments):
            spec = torch.fft.fft2(mean, norm="ortho").permute(1, 2, 0)[..., None]
            acc.scatter = (n - 1) * moments.spectrum() + n * (spec @ spec.mH)
            return acc
        u = moments.eigvecs.double()
        lam = moments.eigvals.double()
        if acc.uses_sketch:
            trace = float(lam.sum()) + float(moments.residual) * (moments.dim - moments.rank)
            acc.sketch = u * ((n - 1) * lam).sqrt()
            acc.m2 = (n - 1) * trace
        else:
            flat = mean.flatten()
            resid = float(moments.residual) * (torch.eye(moments.dim, dtype=torch.float64) - u @ u.T)
            acc.scatter = (n - 1) * ((u * lam) @ u.T + resid) + n * torch.outer(flat, flat)
        return acc

    # -- results -------------------------------------------------------------

    def finalize(self, *, space: str = "raw", latent_format: str = "none", metadata: dict | None = None,
                 dtype: torch.dtype = torch.float32) -> GaussianMoments:
        """The moments of everything added so far (unbiased covariance, n − 1)."""
        if self.count < 2:
            raise MomentsError(f"need at least 2 latents to estimate a covariance, got {self.count}")
        n = self.count
        mean = self.sum / n
        kw = dict(count=n, space=space, latent_format=latent_format,
                  metadata={"estimator": self._estimator_name(), **(metadata or {})})
        if self.structure == "stationary":
            spec = torch.fft.fft2(mean, norm="ortho").permute(1, 2, 0)[..., None]
            cov = (self.scatter - n * (spec @ spec.mH)) / (n - 1)
            eigvals, eigvecs = _eigh_spectrum(cov)
            cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
            return StationaryMoments(mean.to(dtype), eigvals.to(dtype), eigvecs.to(cdtype), **kw)
        if self.uses_sketch:
            eigvals, eigvecs = _eigen_from_sketch(self.sketch, n)
            trace = self.m2 / (n - 1)
        else:
            flat = mean.flatten()
            cov = (self.scatter - n * torch.outer(flat, flat)) / (n - 1)
            eigvals, eigvecs = torch.linalg.eigh(0.5 * (cov + cov.T))
            eigvals, eigvecs = _zero_roundoff(eigvals.flip(0)), eigvecs.flip(1)
            trace = float(eigvals.sum())
        if self.structure == "dense":
            return DenseMoments(mean.to(dtype), eigvals.to(dtype), eigvecs.to(dtype), **kw)
        k = min(self.rank, eigvals.numel(), self.dim)
        residual = 0.0 if k == self.dim else max(trace - float(eigvals[:k].sum()), 0.0) / (self.dim - k)
        return LowRankMoments(mean.to(dtype), eigvals[:k].to(dtype), eigvecs[:, :k].contiguous().to(dtype),
                              residual, **kw)

    def _estimator_name(self) -> str:
        if self.structure == "stationary":
            return "fft2-scatter-float64"
        if self.uses_sketch:
            return f"thin-qr-sketch-float64(m={self.sketch_cols})"
        return "dense-scatter-float64"


def _truncate_columns(b: torch.Tensor, m: int) -> torch.Tensor:
    """Best rank-m approximation of B Bᵀ, returned as D×m factor (thin QR + small SVD)."""
    q, r = torch.linalg.qr(b)
    u, s, _ = torch.linalg.svd(r, full_matrices=False)
    return q @ (u[:, :m] * s[:m])


def _eigen_from_sketch(b: torch.Tensor, n: int):
    """Eigenpairs of BBᵀ/(n − 1) through a thin QR: O(D·m²), never a D×D matrix."""
    q, r = torch.linalg.qr(b)
    small = r @ r.T / (n - 1)
    eigvals, vecs = torch.linalg.eigh(0.5 * (small + small.T))
    return _zero_roundoff(eigvals.flip(0)), q @ vecs.flip(1)


def estimate_moments(batches: Iterable[torch.Tensor], structure: str = "lowrank", *, rank: int = 256,
                     sketch: int | None = None, space: str = "raw", latent_format: str = "none",
                     metadata: dict | None = None, dtype: torch.dtype = torch.float32) -> GaussianMoments:
    """Estimate moments from an iterable of latent batches (B, C, H, W); stored in ``dtype``."""
    acc = MomentAccumulator(structure, rank=rank, sketch=sketch)
    for batch in batches:
        acc.add(batch)
    return acc.finalize(space=space, latent_format=latent_format, metadata=metadata, dtype=dtype)
