"""Per-channel affine maps from raw VAE latents to a host's model space (process_in).

Model space z' = scale·(z − shift) per channel, i.e. a = scale and b = −scale·shift. The values are
the published VAE statistics the hosts use; moments convert exactly: μ → aμ + b, Σ → AΣA.
"""

from __future__ import annotations

from dataclasses import dataclass

from .structures import GaussianMoments, MomentsError


@dataclass(frozen=True)
class LatentFormat:
    name: str
    channels: int
    scale: tuple[float, ...] | float
    shift: tuple[float, ...] | float = 0.0

    def affine(self):
        """(a, b) of the raw → model map."""
        import torch

        scale = torch.as_tensor(self.scale, dtype=torch.float64)
        shift = torch.as_tensor(self.shift, dtype=torch.float64)
        return scale, -scale * shift


LATENT_FORMATS = {
    f.name: f for f in (
        LatentFormat("SD15", 4, 0.18215),
        LatentFormat("SDXL", 4, 0.13025),
        LatentFormat("SD3", 16, 1.5305, 0.0609),
        LatentFormat("Flux", 16, 0.3611, 0.1159),
    )
}


def to_model_space(moments: GaussianMoments, scale, shift=0.0, *, latent_format: str) -> GaussianMoments:
    """Convert raw-VAE-space moments with the per-channel map z' = scale·(z − shift)."""
    import torch

    if moments.space == "model":
        if moments.latent_format not in ("none", latent_format):
            raise MomentsError(f"moments are in the model space of {moments.latent_format}, not {latent_format}; "
                               "load moments made for this model")
        return moments
    scale = torch.as_tensor(scale, dtype=torch.float64)
    shift = torch.as_tensor(shift, dtype=torch.float64)
    return moments.affine(scale, -scale * shift, space="model", latent_format=latent_format)


def to_model_space_named(moments: GaussianMoments, name: str) -> GaussianMoments:
    """Convert raw moments with one of the known formats in LATENT_FORMATS."""
    if name not in LATENT_FORMATS:
        raise MomentsError(f"unknown latent format {name!r}; known: {sorted(LATENT_FORMATS)}")
    fmt = LATENT_FORMATS[name]
    if fmt.channels != moments.channels:
        raise MomentsError(f"{name} latents have {fmt.channels} channels; the moments have {moments.channels}")
    return to_model_space(moments, fmt.scale, fmt.shift, latent_format=name)
