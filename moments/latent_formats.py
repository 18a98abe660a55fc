"""Per-channel affine maps from raw VAE latents to a host's model space (process_in).

Model space z' = scale·(z − shift) per channel, i.e. a = scale and b = −scale·shift. The values are
the published VAE statistics the hosts use; moments convert exactly: μ → aμ + b, Σ → AΣA.
A host that exposes its map as a function (ComfyUI's ``latent_format.process_in``) is read off
that function instead (``LatentFormat.from_map``), so formats this table lacks work too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import GaussianMoments, MomentsError, affine_vectors

NO_FORMAT = "none"    # moments whose space needs no conversion (or whose family is unknown)


@dataclass(frozen=True)
class LatentFormat:
    """A model family's latent space: its name, channel count and raw → model map."""

    name: str
    channels: int
    scale: tuple[float, ...] | float
    shift: tuple[float, ...] | float = 0.0

    def affine(self):
        """(a, b) per channel of the raw → model map z' = a·z + b."""
        scale = torch.as_tensor(self.scale, dtype=torch.float64)
        shift = torch.as_tensor(self.shift, dtype=torch.float64)
        return affine_vectors(scale, -scale * shift, self.channels)

    @classmethod
    def from_map(cls, name: str, process_in, channels: int) -> "LatentFormat":
        """Read (scale, shift) off a host's raw → model function, and check that it is per-channel affine."""
        probe = lambda v: process_in(torch.full((1, channels, 1, 1), float(v))).double().reshape(-1)  # noqa: E731
        b = probe(0.0)
        a = probe(1.0) - b
        if a.numel() != channels:
            raise MomentsError(f"the model's latent format {name} maps {channels} channels to {a.numel()}; "
                               "teleport needs a per-channel latent format")
        if not torch.allclose(probe(3.0), 3 * a + b, rtol=1e-4, atol=1e-6) or not torch.all(a != 0):
            raise MomentsError(f"the model's latent format {name} is not a per-channel affine map; teleport cannot "
                               "convert moments into its space")
        scale = a.tolist()
        return cls(name, channels, tuple(scale), tuple((-b / a).tolist()))


LATENT_FORMATS = {
    f.name: f for f in (
        LatentFormat("SD15", 4, 0.18215),
        LatentFormat("SDXL", 4, 0.13025),
        LatentFormat("SD3", 16, 1.5305, 0.0609),
        LatentFormat("Flux", 16, 0.3611, 0.1159),
    )
}


def find_latent_format(name_or_format: str | LatentFormat) -> LatentFormat:
    """A LatentFormat from its name in LATENT_FORMATS (or the format itself)."""
    if isinstance(name_or_format, LatentFormat):
        return name_or_format
    if name_or_format not in LATENT_FORMATS:
        raise MomentsError(f"unknown latent format {name_or_format!r}; known: {sorted(LATENT_FORMATS)}")
    return LATENT_FORMATS[name_or_format]


def known_format_names() -> list[str]:
    """The names a moments file may be tagged with: "none" and the formats in LATENT_FORMATS."""
    return [NO_FORMAT, *sorted(LATENT_FORMATS)]


def check_format_name(name) -> str:
    """``name`` if it is "none" or a known format's exact name; MomentsError naming the valid ones otherwise."""
    if name == NO_FORMAT or name in LATENT_FORMATS:
        return name
    close = [k for k in LATENT_FORMATS if isinstance(name, str) and k.lower() == name.strip().lower()]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise MomentsError(f"unknown latent format {name!r}{hint}; choose one of {', '.join(known_format_names())} "
                       "(\"none\" for latents of another family)")


def check_format_channels(name: str, channels: int) -> None:
    """Refuse latents whose channel count does not fit the named format (none fits any)."""
    fmt = LATENT_FORMATS.get(name)
    if fmt is not None and fmt.channels != channels:
        fits = [k for k, f in sorted(LATENT_FORMATS.items()) if f.channels == channels]
        raise MomentsError(f"{name} latents have {fmt.channels} channels but these latents have {channels}: choose "
                           f"the latent format of the VAE that made them ({', '.join(fits) or 'none fits'}), "
                           "or \"none\"")


def to_model_space(moments: GaussianMoments, fmt: "str | LatentFormat | float", shift=None, *,
                   latent_format: str | None = None) -> GaussianMoments:
    """The moments in ``fmt``'s model space: raw ones converted exactly, model-space ones checked.

    ``fmt`` is a LatentFormat or a name in LATENT_FORMATS; or, for a format the table lacks, the
    per-channel ``scale`` of z' = scale·(z − shift) with ``shift`` and the format's name in
    ``latent_format``. Moments tagged for another family are refused with both names; so are moments
    whose channel count differs from the format's.
    """
    if not isinstance(fmt, (str, LatentFormat)):
        if latent_format is None:
            raise MomentsError("give the format's name (latent_format=...) with a scale and shift")
        fmt = LatentFormat(latent_format, moments.channels, fmt, 0.0 if shift is None else shift)
    fmt = find_latent_format(fmt)
    if moments.latent_format not in (NO_FORMAT, fmt.name):
        if str(moments.latent_format).lower() == fmt.name.lower():     # an unchecked tag from an older estimate
            raise MomentsError(f"these moments are tagged {moments.latent_format!r}, which is not a format name "
                               f"(the model's is {fmt.name!r}; names are exact); estimate them again with "
                               f"latent_format={fmt.name!r}")
        raise MomentsError(f"these moments were made for {moments.latent_format} latents but the model uses "
                           f"{fmt.name}; load or estimate moments for this model family")
    if moments.channels != fmt.channels:
        raise MomentsError(f"moments have {moments.channels} latent channels but {fmt.name} latents have "
                           f"{fmt.channels}: they were made for another model family; estimate moments with this "
                           "model's VAE (or from the model itself)")
    if moments.space == "model":
        return moments
    a, b = fmt.affine()
    return moments.affine(a, b, space="model", latent_format=fmt.name)


def to_model_space_named(moments: GaussianMoments, name: str) -> GaussianMoments:
    """Convert raw moments with one of the known formats in LATENT_FORMATS."""
    return to_model_space(moments, name)
