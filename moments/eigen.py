"""Eigenpair structures: ``dense`` (every eigenpair) and ``lowrank`` (top-k plus an isotropic rest).

Σ = U diag(λ) Uᵀ + λ_r (I − U Uᵀ) on latents flattened to D = C·H·W. Dense is the complete case
(k = D, λ_r unused). Estimation keeps float64 statistics:

- dense: the count, Σx and the D×D scatter Σxxᵀ;
- low-rank: centred columns B with BBᵀ = Σ(x − x̄)(x − x̄)ᵀ, merged with Chan et al.'s update (the
  shift between two means is one more column). While there are fewer columns than the sketch width
  the eigenpairs come from a thin QR of them (the Gram route, O(N²D), never a D×D matrix). Past the
  width, a small latent (D ≤ SCATTER_MAX_DIM) switches to the exact scatter; a large one keeps the
  strongest directions and folds the rest into the residual, whose total energy is kept exactly
  (``dense_max_dim`` moves that threshold).
"""

from __future__ import annotations

import torch

from .base import (DEFAULT_RANK, GaussianMoments, GaussianOperator, MomentAccumulator, MomentsError,
                   ScatterAccumulator, affine_vectors, log, shape_str, whole_number, zero_roundoff)

DENSE_MAX_DIM = 4096     # a float64 D×D scatter of 128 MiB and an eigh that takes about a minute
SCATTER_MAX_DIM = 1024   # below this a D×D eigh takes well under a second: low-rank stays exact


def default_sketch(rank: int) -> int:
    return max(2 * rank, rank + 128)


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

    def apply_sum(self, vs, fs):
        # One pass through U for every vᵢ and one back: Σᵢ fᵢ(Σ)vᵢ = U Σᵢ (fᵢ(λ) − fᵢ(λ_r)) Uᵀvᵢ + Σᵢ fᵢ(λ_r) vᵢ.
        b = vs[0].shape[0]
        flats = [v.reshape(b, -1) for v in vs]
        coeffs = (torch.cat(flats) @ self.eigvecs).split(b)
        if self.complete:
            combo = sum(c * f(self.eigvals) for c, f in zip(coeffs, fs, strict=True))
            return (combo @ self.eigvecs.T).reshape(vs[0].shape)
        outside = [f(self.residual) for f in fs]
        combo = sum(c * (f(self.eigvals) - o) for c, f, o in zip(coeffs, fs, outside, strict=True))
        out = combo @ self.eigvecs.T
        for flat, o in zip(flats, outside):
            out = out + o * flat
        return out.reshape(vs[0].shape)


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
        self.check_channels(shape)
        if shape != self.latent_shape:
            raise MomentsError(
                f"{self.structure} moments were estimated for latents of {shape_str(self.latent_shape)} "
                f"(C×H×W) but the latent is {shape_str(shape)}; generate at the moments' resolution, or use "
                f"'stationary' moments, which serve any height and width")
        put = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return EigenOperator(put(self.mean), put(self.eigvals), put(self.eigvecs), put(self.residual))

    def affine(self, scale, shift, *, space, latent_format):
        a, b = affine_vectors(scale, shift, self.channels)
        kw = self.kwargs(space=space, latent_format=latent_format)
        mean = self.shifted_mean(a, b)
        if bool(torch.all(a == a[0])):
            s2 = float(a[0]) ** 2
            return self.rebuild(mean, self.eigvals * s2, self.eigvecs, self.residual * s2, kw)
        if self.rank == self.dim:
            return dense_from_covariance(mean, self.scaled_covariance(a), kw)
        raise MomentsError(
            f"latent format {latent_format!r} scales channels unequally ({a.tolist()}); the isotropic residual "
            f"of low-rank moments has no exact image under that map. Estimate the moments in model space, or use "
            f"'stationary' or 'dense' moments, which convert exactly")

    @classmethod
    def rebuild(cls, mean, eigvals, eigvecs, residual, kw):
        return cls(mean, eigvals, eigvecs, residual, **kw)

    def scaled_covariance(self, a):
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
    def rebuild(cls, mean, eigvals, eigvecs, residual, kw):
        return cls(mean, eigvals, eigvecs, **kw)

    def tensors(self):
        return {"mean": self.mean, "eigvals": self.eigvals, "eigvecs": self.eigvecs}


def dense_from_covariance(mean, cov, kw):
    eigvals, eigvecs = descending_eigh(cov.double())
    dt = mean.dtype
    return DenseMoments(mean, eigvals.to(dt), eigvecs.to(dt), **kw)


def descending_eigh(sym: torch.Tensor):
    """Eigenpairs of a symmetric PSD matrix, largest first, round-off negatives set to zero."""
    eigvals, eigvecs = torch.linalg.eigh(0.5 * (sym + sym.T))
    return zero_roundoff(eigvals.flip(0)), eigvecs.flip(1)


# ----------------------------------------------------------------------------
# Accumulators.


class DenseAccumulator(ScatterAccumulator, structure="dense"):
    """Count, Σx and the D×D scatter Σxxᵀ in float64."""

    def __init__(self, structure=None, *, rank=1, dense_max_dim: int = DENSE_MAX_DIM, **kw):
        super().__init__(structure, rank=max(int(rank), 1))
        self.dense_max_dim = int(dense_max_dim)
        self.scatter: torch.Tensor | None = None

    def start(self, shape):
        super().start(shape)
        d = self.dim
        if d > self.dense_max_dim:
            raise MomentsError(
                f"dense moments for a {shape_str(self.shape)} latent need a {d}×{d} covariance "
                f"({d * d * 8 / 2**30:.1f} GiB in float64); use 'lowrank' (default) or 'stationary' moments")
        self.scatter = torch.zeros(d, d, dtype=torch.float64)

    def scatter_of(self, batch):
        flat = batch.reshape(batch.shape[0], -1)
        return flat.T @ flat

    def seed(self, moments):
        n, u, lam = moments.count, moments.eigvecs.double(), moments.eigvals.double()
        flat = moments.mean.double().flatten()
        resid = float(moments.residual) * (torch.eye(moments.dim, dtype=torch.float64) - u @ u.T)
        self.scatter = (n - 1) * ((u * lam) @ u.T + resid) + n * torch.outer(flat, flat)

    def covariance(self, mean) -> torch.Tensor:
        flat = mean.flatten()
        return (self.scatter - self.count * torch.outer(flat, flat)) / (self.count - 1)

    def finalize_checked(self, mean, kw, dtype, progress):
        if self.dim > SCATTER_MAX_DIM:
            progress(f"eigendecomposition of the {self.dim}×{self.dim} covariance")
        eigvals, eigvecs = descending_eigh(self.covariance(mean))
        return DenseMoments(mean.to(dtype), eigvals.to(dtype), eigvecs.to(dtype), **kw)

    def estimator_name(self):
        return "dense-scatter-float64"


class LowRankAccumulator(DenseAccumulator, structure="lowrank"):
    """Centred columns (Gram route) while they are few; then the exact scatter (small D) or a sketch."""

    def __init__(self, structure=None, *, rank: int = DEFAULT_RANK, sketch: int | None = None,
                 dense_max_dim: int = SCATTER_MAX_DIM, **kw):
        MomentAccumulator.__init__(self, structure, rank=rank)
        self.scatter_max_dim = min(int(dense_max_dim), DENSE_MAX_DIM)   # exact scatter up to this D
        self.sketch_cols = whole_number("sketch", sketch, 1) if sketch is not None else default_sketch(self.rank)
        if self.sketch_cols < self.rank:
            raise MomentsError(f"sketch ({self.sketch_cols}) must be at least the rank ({self.rank})")
        self.columns: torch.Tensor | None = None   # D×m centred columns; None once switched to the scatter
        self.scatter = None
        self.m2 = 0.0                              # centred sum of squares, kept exactly

    def start(self, shape):
        MomentAccumulator.start(self, shape)
        self.columns = torch.zeros(self.dim, 0, dtype=torch.float64)

    @property
    def exact_scatter(self) -> bool:
        return self.columns is None

    def add_checked(self, batch):
        if self.exact_scatter:
            return super().add_checked(batch)
        mean = batch.mean(0)
        centred = (batch - mean).reshape(batch.shape[0], -1)
        self.merge_centred(batch.shape[0], mean, float((centred * centred).sum()), centred.T)

    def merge_centred(self, n_b: int, mean_b: torch.Tensor, m2_b: float, cols_b: torch.Tensor):
        """Chan et al.'s pairwise update: S = S_a + S_b + (n_a n_b / n) δδᵀ with δ = x̄_b − x̄_a."""
        n_a = self.count
        n = n_a + n_b
        cols = [self.columns, cols_b]
        if n_a > 0:
            delta = (mean_b - self.sum / n_a).flatten()
            w = n_a * n_b / n
            cols.append((w ** 0.5) * delta[:, None])
            self.m2 += w * float(delta @ delta)
        self.m2 += m2_b
        self.count = n
        self.sum += mean_b * n_b
        self.columns = torch.cat(cols, dim=1)
        if self.columns.shape[1] > self.sketch_cols:
            if self.dim <= self.scatter_max_dim:
                self.switch_to_scatter()
            else:
                self.columns = truncate_columns(self.columns, self.sketch_cols)

    def switch_to_scatter(self):
        """Σxxᵀ = BBᵀ + n x̄x̄ᵀ: exact, since columns are only truncated above SCATTER_MAX_DIM."""
        flat = (self.sum / max(self.count, 1)).flatten()
        self.scatter = self.columns @ self.columns.T + self.count * torch.outer(flat, flat)
        self.columns = None

    def merge_checked(self, other):
        if other.exact_scatter and not self.exact_scatter:
            self.switch_to_scatter()
        if self.exact_scatter:
            if not other.exact_scatter:
                other = _scatter_copy(other)
            return super().merge_checked(other)
        self.merge_centred(other.count, other.sum / other.count, other.m2, other.columns)

    def all_reduce_checked(self, group, device):
        import torch.distributed as dist

        if self.dim <= self.scatter_max_dim:   # exact: everyone sums scatters
            if not self.exact_scatter:
                self.switch_to_scatter()
            return super().all_reduce_checked(group, device)
        # Column sets are gathered and merged in process order, so every process gets the same result.
        parts = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, (self.count, self.m2, self.columns.shape[1]), group=group)
        width = max(p[2] for p in parts)
        packed = torch.zeros(self.dim, width + 1, dtype=torch.float64, device=device)
        packed[:, 0] = self.sum.flatten().to(device)
        packed[:, 1:1 + self.columns.shape[1]] = self.columns.to(device)
        gathered = [torch.empty_like(packed) for _ in parts]
        dist.all_gather(gathered, packed, group=group)
        self.start(self.shape)
        self.count, self.m2 = 0, 0.0
        for (count, m2, cols), g in zip(parts, gathered):
            if count:
                g = g.cpu()
                self.merge_centred(count, g[:, 0].reshape(self.shape) / count, m2, g[:, 1:1 + cols])

    def seed(self, moments):
        n, u, lam = moments.count, moments.eigvecs.double(), moments.eigvals.double()
        if self.dim <= self.scatter_max_dim:
            self.columns = None
            return super().seed(moments)
        trace = float(lam.sum()) + float(moments.residual) * (moments.dim - moments.rank)
        self.columns = u * ((n - 1) * lam).sqrt()
        self.m2 = (n - 1) * trace

    def finalize_checked(self, mean, kw, dtype, progress):
        n = self.count
        if self.exact_scatter:
            eigvals, eigvecs = descending_eigh(self.covariance(mean))
            trace = float(eigvals.sum())
        else:
            if self.dim * self.columns.shape[1] ** 2 > 1e10:
                progress(f"thin QR of the {self.dim}×{self.columns.shape[1]} centred sketch")
            eigvals, eigvecs = eigen_from_columns(self.columns, n)
            trace = self.m2 / (n - 1)
        k = min(self.rank, eigvals.numel(), self.dim)
        limit = n - 1   # a covariance of n samples has at most n − 1 non-zero eigenvalues
        if k > limit:
            log.warning("Gaussian Teleport: rank %d asked, but %d samples give at most %d directions; keeping %d "
                        "(add more samples for a higher rank)", self.rank, n, limit, limit)
            kw["metadata"] = {**kw["metadata"], "rank_requested": str(self.rank)}
            k = limit
        residual = 0.0 if k == self.dim else max(trace - float(eigvals[:k].sum()), 0.0) / (self.dim - k)
        return LowRankMoments(mean.to(dtype), eigvals[:k].to(dtype), eigvecs[:, :k].contiguous().to(dtype),
                              residual, **kw)

    def estimator_name(self):
        if self.exact_scatter:
            return "dense-scatter-float64"
        if self.dim <= self.scatter_max_dim:
            return "thin-qr-gram-float64"
        return f"thin-qr-sketch-float64(m={self.sketch_cols})"


def _scatter_copy(acc: LowRankAccumulator) -> LowRankAccumulator:
    other = LowRankAccumulator(rank=acc.rank, sketch=acc.sketch_cols, dense_max_dim=acc.scatter_max_dim)
    other.start(acc.shape)
    other.count, other.sum, other.m2, other.columns = acc.count, acc.sum.clone(), acc.m2, acc.columns
    other.switch_to_scatter()
    return other


def truncate_columns(b: torch.Tensor, m: int) -> torch.Tensor:
    """Best rank-m approximation of B Bᵀ, returned as a D×m factor (thin QR + small SVD)."""
    q, r = torch.linalg.qr(b)
    u, s, _ = torch.linalg.svd(r, full_matrices=False)
    return q @ (u[:, :m] * s[:m])


def eigen_from_columns(b: torch.Tensor, n: int):
    """Eigenpairs of BBᵀ/(n − 1) through a thin QR: O(D·m²), never a D×D matrix."""
    q, r = torch.linalg.qr(b)
    small = r @ r.T / (n - 1)
    eigvals, vecs = descending_eigh(small)
    return eigvals, q @ vecs
