"""Gaussian moments of a latent distribution: what every covariance structure implements.

from: Wang & Vastola, arXiv 2311.10892. The Gaussian denoiser and the closed-form probability-flow
solution need only f(Σ)v for scalar functions f of Σ's eigenvalues, so a structure is three classes
side by side in its own module (eigen.py: dense and low-rank; stationary.py):

- its moments: the stored, device-independent mean and covariance;
- its operator: the moments bound to one latent shape, device and dtype, with ``apply(v, f) = f(Σ)v``;
- its accumulator: streaming float64 sufficient statistics that finalize into the moments.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import Callable

import torch

SPACES = ("raw", "model")
DEFAULT_RANK = 256          # eigenpairs a low-rank file keeps unless asked otherwise

Spectrum = Callable[[torch.Tensor], torch.Tensor]
log = logging.getLogger("gaussian_teleport")


class MomentsError(ValueError):
    """Moments that cannot be used as given; the message names the problem and the fix."""


# Hosts show an error's type by module path; ComfyUI names a pack's modules after its folder, so the
# user would read a file path. This is the name the package exports it under.
MomentsError.__module__ = "gaussian_teleport"


def shape_str(shape) -> str:
    return "×".join(str(int(s)) for s in shape)


def zero_roundoff(eigvals: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a PSD matrix computed in float64 may come out as -1e-17: they are zeros."""
    tol = 64 * torch.finfo(torch.float64).eps * eigvals.abs().max().clamp_min(1e-300)
    return torch.where(eigvals.abs() <= tol, torch.zeros_like(eigvals), eigvals)


def whole_number(name: str, value, minimum: int) -> int:
    """``value`` as an int if it is a whole number ≥ ``minimum`` (not a bool, not 2.5); MomentsError otherwise."""
    whole = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
             and value == int(value))
    if not whole or value < minimum:
        raise MomentsError(f"{name} must be a whole number ≥ {minimum}, got {value!r}")
    return int(value)


def check_value_dtype(dtype) -> torch.dtype:
    """A floating-point torch dtype to store moments in; MomentsError naming the choices otherwise."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise MomentsError(f"dtype must be a floating-point torch dtype (torch.float32, torch.float64, torch.float16 "
                           f"or torch.bfloat16), got {dtype!r}")
    return dtype


def check_finite_moments(moments: "GaussianMoments", dtype: torch.dtype) -> None:
    """Refuse moments whose statistics overflowed (or were never finite) in ``dtype``."""
    for name, t in moments.tensors().items():
        if not torch.isfinite(t).all():
            raise MomentsError(
                f"the moments' {name} overflow {dtype} (the largest {dtype} is {torch.finfo(dtype).max:.3g}); the "
                "latents' values are far too large for VAE latents (typically within ±10): check the inputs, or "
                "scale them before estimating")


def orthonormality_error(q: torch.Tensor) -> float:
    """Largest deviation of QᴴQ from the identity (batched over leading dims)."""
    q = q.to(torch.complex128 if q.is_complex() else torch.float64)
    gram = q.mH @ q
    eye = torch.eye(q.shape[-1], dtype=gram.dtype)
    return float((gram - eye).abs().max()) if q.numel() else 0.0


def affine_vectors(scale, shift, channels: int):
    """Per-channel (a, b) of length C from scalars or sequences; refuses a non-invertible map."""
    a = torch.as_tensor(scale, dtype=torch.float64).flatten()
    b = torch.as_tensor(shift, dtype=torch.float64).flatten()
    a = a.expand(channels) if a.numel() == 1 else a
    b = b.expand(channels) if b.numel() == 1 else b
    if a.numel() != channels or b.numel() != channels:
        raise MomentsError(f"affine map has {a.numel()} scales and {b.numel()} shifts for {channels} channels")
    if not torch.all(a != 0):
        raise MomentsError("affine map has a zero scale: it is not invertible")
    return a, b


# ----------------------------------------------------------------------------
# Operators: moments bound to one latent shape, device and dtype.


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

    def apply_sum(self, vs: list[torch.Tensor], fs: list[Spectrum]) -> torch.Tensor:
        """f₁(Σ)v₁ + … + fₙ(Σ)vₙ for batches vᵢ of one shape (a solver step's terms). Structures that can
        project every vᵢ in one pass and come back once override this; the default applies each."""
        out = None
        for v, f in zip(vs, fs, strict=True):
            term = self.apply(v, f)
            out = term if out is None else out + term
        return out

    @property
    def dtype(self) -> torch.dtype:
        return self.mean.dtype


# ----------------------------------------------------------------------------
# Moments: the stored, device-independent description.


class GaussianMoments:
    """Base class. ``mean`` has the latent shape (C, H, W) the moments were estimated at."""

    structure = "?"
    mean_axes = "C, H, W"    # the mean's layout; video moments have (C, T, H, W)

    def __init__(self, mean: torch.Tensor, *, count: int, space: str = "raw",
                 latent_format: str = "none", metadata: dict | None = None):
        if space not in SPACES:
            raise MomentsError(f"space must be one of {SPACES}, got {space!r}")
        if not isinstance(mean, torch.Tensor) or mean.dim() != len(self.mean_axes.split(", ")):
            shape = tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__
            raise MomentsError(f"mean must have shape ({self.mean_axes}), got {shape}")
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
        source = self.metadata.get("source")
        origin = f", {self.count} samples" if source != "model" else f" from the model at σ {self.metadata.get('sigma')}"
        if self.metadata.get("capped_directions"):
            origin += f" ({self.metadata['capped_directions']} direction(s) capped: read at a higher sigma)"
        return (f"{self.structure} moments, latent {shape_str(self.latent_shape)}, rank {self.rank}{origin}, "
                f"{self.space} space ({self.latent_format})")

    def __repr__(self):
        return f"<{type(self).__name__}: {self.describe()}>"

    def check_channels(self, shape):
        if len(shape) != 3:
            raise MomentsError(f"expected a latent shape (C, H, W), got {tuple(shape)}")
        if shape[0] != self.channels:
            raise MomentsError(
                f"moments have {self.channels} latent channels but the latent has {shape[0]}: "
                f"these moments were made for another model family ({self.latent_format}); "
                f"load or estimate moments for this model's latent space")

    def kwargs(self, **changes) -> dict:
        """The keyword arguments that rebuild these moments' bookkeeping (count, space, format, metadata)."""
        kw = dict(count=self.count, space=self.space, latent_format=self.latent_format, metadata=self.metadata)
        kw.update(changes)
        return kw

    def shifted_mean(self, a, b):
        return (self.mean.double() * a[:, None, None] + b[:, None, None]).to(self.mean.dtype)


# ----------------------------------------------------------------------------
# Accumulators: streaming float64 statistics, one subclass per structure.


class MomentAccumulator:
    """Accumulate latents (B, C, H, W) into Gaussian moments of a chosen structure.

    ``MomentAccumulator("lowrank", rank=256)`` returns the accumulator of that structure (each lives
    beside its moments class). All of them stream batches of any size in float64 with memory that does
    not grow with the number of latents, ``merge`` another accumulator, ``all_reduce`` across
    torch.distributed processes, and continue from saved moments (``from_moments``).

    Args:
        structure:     "dense", "lowrank" or "stationary".
        rank:          eigenpairs kept by "lowrank".
        sketch:        columns kept by the low-rank sketch at large D (default max(2·rank, rank + 128)).
        dense_max_dim: largest D a dense accumulator accepts.
    """

    structure = "?"
    _by_structure: dict[str, type] = {}

    def __init_subclass__(cls, structure: str | None = None, **kw):
        super().__init_subclass__(**kw)
        if structure is not None:
            cls.structure = structure
            MomentAccumulator._by_structure[structure] = cls

    def __new__(cls, structure: str = "lowrank", *args, **kwargs):
        if cls is MomentAccumulator:
            if structure not in cls._by_structure:
                raise MomentsError(f"unknown structure {structure!r}; choose one of {tuple(cls._by_structure)}")
            cls = cls._by_structure[structure]
        return super().__new__(cls)

    def __init__(self, structure: str | None = None, *, rank: int = DEFAULT_RANK, **_):
        self.rank = whole_number("rank", rank, 1)
        self.shape: tuple[int, int, int] | None = None
        self.count = 0
        self.sum: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return 0 if self.shape is None else self.shape[0] * self.shape[1] * self.shape[2]

    def start(self, shape):
        """Fix the latent shape and allocate the statistics (called by the first batch)."""
        self.shape = tuple(int(s) for s in shape)
        self.sum = torch.zeros(self.shape, dtype=torch.float64)

    def check_batch(self, batch: torch.Tensor) -> torch.Tensor:
        if not isinstance(batch, torch.Tensor):
            raise MomentsError(f"latents must be a tensor (B, C, H, W), got {type(batch).__name__}")
        if batch.dim() == 3:
            batch = batch[None]
        if batch.dim() != 4:
            raise MomentsError(f"latents must be (B, C, H, W), got shape {tuple(batch.shape)}")
        if not batch.is_floating_point():
            raise MomentsError(f"latents must be floating point, got {batch.dtype}; pass the VAE's float output")
        if self.shape is None:
            self.start(batch.shape[1:])
        elif tuple(batch.shape[1:]) != self.shape:
            raise MomentsError(
                f"this accumulator holds latents of {shape_str(self.shape)} (C×H×W) but got "
                f"{shape_str(batch.shape[1:])}; bring all images to one size before estimating")
        batch = batch.detach().to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(batch).all():
            raise MomentsError("latents contain NaN or Inf values; check the VAE encode (try fp32) or the inputs")
        return batch

    def add(self, batch: torch.Tensor) -> "MomentAccumulator":
        """Add a batch (B, C, H, W) or one latent (C, H, W). An empty batch adds nothing."""
        batch = self.check_batch(batch)
        if batch.shape[0]:
            self.add_checked(batch)
        return self

    def add_checked(self, batch: torch.Tensor):
        raise NotImplementedError

    def merge(self, other: "MomentAccumulator") -> "MomentAccumulator":
        """Add another accumulator's statistics (same structure and latent shape)."""
        if other.count == 0:
            return self
        if other.structure != self.structure:
            raise MomentsError(f"cannot merge {other.structure} statistics into {self.structure} ones")
        if self.shape is None:
            self.start(other.shape)
        if other.shape != self.shape:
            raise MomentsError(f"cannot merge statistics of latents {other.shape} into {self.shape}")
        self.merge_checked(other)
        return self

    def merge_checked(self, other):
        raise NotImplementedError

    def all_reduce(self, group=None) -> "MomentAccumulator":
        """Combine the statistics of every process in a torch.distributed group (in place).

        Every process ends with the same statistics. Works on gloo (CPU) and, with tensors moved to
        the device, NCCL.
        """
        import torch.distributed as dist

        shapes = [None] * dist.get_world_size(group)
        dist.all_gather_object(shapes, self.shape, group=group)
        shape = next((s for s in shapes if s is not None), None)
        if shape is None:
            return self
        if any(s is not None and s != shape for s in shapes):
            raise MomentsError(f"processes hold latents of different shapes: {shapes}")
        if self.shape is None:
            self.start(shape)
        device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend(group) == "nccl" else torch.device("cpu")
        self.all_reduce_checked(group, device)
        return self

    def all_reduce_checked(self, group, device):
        raise NotImplementedError

    @staticmethod
    def reduce_sum(t: torch.Tensor, group, device) -> torch.Tensor:
        """All-reduce (sum) one tensor, complex ones as their real view."""
        import torch.distributed as dist

        buf = (torch.view_as_real(t) if t.is_complex() else t).to(device)
        dist.all_reduce(buf, group=group)
        return (torch.view_as_complex(buf) if t.is_complex() else buf).cpu()

    @classmethod
    def from_moments(cls, moments: GaussianMoments, *, structure: str | None = None, rank: int | None = None,
                     sketch: int | None = None) -> "MomentAccumulator":
        """Seed an accumulator with existing raw moments so new latents add to them.

        Dense and stationary moments are sufficient statistics, so this is exact; low-rank moments
        carry their top-k directions and the residual's total energy.
        """
        if moments.space != "raw":
            raise MomentsError("only raw (VAE-space) moments can be extended with more latents; these are in "
                               f"the model space of {moments.latent_format}")
        if structure is not None and structure != moments.structure:
            raise MomentsError(f"the moments to add to are {moments.structure}, but the structure asked for is "
                               f"{structure}; set the structure to {moments.structure} to keep accumulating")
        if moments.count < 2:
            raise MomentsError("moments estimated from fewer than 2 samples cannot be extended")
        size = {"dense_max_dim": moments.dim} if moments.structure == "dense" else {}
        acc = MomentAccumulator(moments.structure, rank=rank or max(moments.rank, 1), sketch=sketch, **size)
        acc.start(moments.latent_shape)
        acc.count = moments.count
        acc.sum = moments.mean.double() * moments.count
        acc.seed(moments)
        return acc

    def seed(self, moments: GaussianMoments):
        raise NotImplementedError

    def finalize(self, *, space: str = "raw", latent_format: str = "none", metadata: dict | None = None,
                 dtype: torch.dtype = torch.float32, progress: Callable[[str], None] | None = None
                 ) -> GaussianMoments:
        """The moments of everything added so far (unbiased covariance, n − 1).

        ``progress(message)`` is told before a final step that may take long (a large eigendecomposition).
        """
        check_value_dtype(dtype)
        if self.count < 2:
            raise MomentsError(f"need at least 2 latents to estimate a covariance, got {self.count}")
        kw = dict(count=self.count, space=space, latent_format=latent_format,
                  metadata={"estimator": self.estimator_name(), **(metadata or {})})
        try:
            moments = self.finalize_checked(self.sum / self.count, kw, dtype, progress or (lambda message: None))
        except torch.linalg.LinAlgError:
            raise MomentsError("the covariance of these latents cannot be decomposed: its values overflow float64 "
                               "(latents far too large for VAE latents, typically within ±10); check the inputs, "
                               "or scale them before estimating") from None
        check_finite_moments(moments, dtype)
        return moments

    def finalize_checked(self, mean, kw, dtype, progress) -> GaussianMoments:
        raise NotImplementedError

    def estimator_name(self) -> str:
        raise NotImplementedError


class ScatterAccumulator(MomentAccumulator):
    """Sufficient statistics that are plain sums: the count, Σx and a scatter (dense D×D or per frequency).

    Subclasses say how a batch adds to the scatter (``scatter_of``); sums merge and all-reduce exactly.
    """

    scatter: torch.Tensor | None = None

    def scatter_of(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def add_checked(self, batch):
        self.count += batch.shape[0]
        self.sum += batch.sum(0)
        self.scatter += self.scatter_of(batch)

    def merge_checked(self, other):
        self.count += other.count
        self.sum += other.sum
        self.scatter += other.scatter

    def all_reduce_checked(self, group, device):
        count = self.reduce_sum(torch.tensor([float(self.count)], dtype=torch.float64), group, device)
        self.count = int(count.round().item())
        self.sum = self.reduce_sum(self.sum, group, device)
        self.scatter = self.reduce_sum(self.scatter, group, device)


def structures() -> tuple[str, ...]:
    """The structure names, in the order the accumulators registered (dense, lowrank, stationary)."""
    return tuple(MomentAccumulator._by_structure)
