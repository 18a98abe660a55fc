"""Per-channel affine maps from raw VAE latents to a host's model space (process_in).

Model space z' = scale·(z − shift) per channel, i.e. a = scale and b = −scale·shift. The values are
the published VAE statistics the hosts use; moments convert exactly: μ → aμ + b, Σ → AΣA.
A host that exposes its map as a function (ComfyUI's ``latent_format.process_in``) is read off
that function instead (``LatentFormat.from_map``), so formats this table lacks work too.

Video formats (Wan 2.1, Wan 2.2 TI2V, HunyuanVideo, LTX-Video) sit in their own table,
VIDEO_LATENT_FORMATS, beside the image one: every lookup here knows both, while a host path that
lists LATENT_FORMATS as "the image families it can serve" is unchanged. Their latents are
(B, C, T, H, W) with T = (frames − 1) / temporal_compression + 1 (a causal VAE: the first latent
frame encodes one video frame) and H, W = pixels / spatial_compression.
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
    spatial_compression: int = 8       # pixels per latent pixel
    temporal_compression: int = 1      # video frames per latent frame after the first (1: an image format)

    @property
    def is_video(self) -> bool:
        return self.temporal_compression > 1

    def latent_frames(self, frames: int) -> int:
        """Latent frames T for ``frames`` video frames; MomentsError naming the nearest valid counts otherwise."""
        k = self.temporal_compression
        if not self.is_video:
            raise MomentsError(f"{self.name} is an image latent format; it has no frame axis")
        frames = int(frames)
        if frames < 1 or (frames - 1) % k:
            lower = max(1, (frames - 1) // k * k + 1)
            raise MomentsError(f"{self.name} takes {k}·n + 1 video frames (the first latent frame encodes one "
                               f"frame, each other one {k}); got {frames}: use {lower} or {lower + k}")
        return (frames - 1) // k + 1

    def video_frames(self, latent_frames: int) -> int:
        """The video frame count whose latent has ``latent_frames`` frames: (T − 1)·k + 1."""
        return (int(latent_frames) - 1) * self.temporal_compression + 1

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T, H, W) of a clip of ``frames`` × ``height`` × ``width`` pixels; MomentsError naming the fix."""
        s = self.spatial_compression
        for what, v in (("height", height), ("width", width)):
            if int(v) < s or int(v) % s:
                low = max(s, int(v) - int(v) % s)
                raise MomentsError(f"{what} {v} is not a multiple of {s} ({self.name}'s spatial compression); use "
                                   f"{low} or {low + s}")
        return (self.channels, self.latent_frames(frames), int(height) // s, int(width) // s)

    def affine(self):
        """(a, b) per channel of the raw → model map z' = a·z + b."""
        scale = torch.as_tensor(self.scale, dtype=torch.float64)
        shift = torch.as_tensor(self.shift, dtype=torch.float64)
        return affine_vectors(scale, -scale * shift, self.channels)

    @classmethod
    def from_map(cls, name: str, process_in, channels: int) -> "LatentFormat":
        """Read (scale, shift) off a host's raw → model function, and check that it is per-channel affine."""
        def probe(v, dims):
            return process_in(torch.full((1, channels) + (1,) * dims, float(v))).double().reshape(-1)

        dims, first_error = 2, None
        try:
            b = probe(0.0, dims)
        except (RuntimeError, ValueError, TypeError) as exc:
            b, first_error = None, exc
        if b is None or b.numel() != channels:   # a video format's map broadcasts its statistics over (T, H, W)
            try:
                b5 = probe(0.0, 3)
            except (RuntimeError, ValueError, TypeError):
                b5 = None
            if b5 is not None and b5.numel() == channels:
                dims, b = 3, b5
            elif first_error is not None:
                raise first_error
        probe_at = lambda v: probe(v, dims)  # noqa: E731
        a = probe_at(1.0) - b
        if a.numel() != channels:
            raise MomentsError(f"the model's latent format {name} maps {channels} channels to {a.numel()}; "
                               "teleport needs a per-channel latent format")
        if not torch.allclose(probe_at(3.0), 3 * a + b, rtol=1e-4, atol=1e-6) or not torch.all(a != 0):
            raise MomentsError(f"the model's latent format {name} is not a per-channel affine map; teleport cannot "
                               "convert moments into its space")
        scale = a.tolist()
        known = ALL_LATENT_FORMATS.get(name)
        layout = {} if known is None else dict(spatial_compression=known.spatial_compression,
                                                temporal_compression=known.temporal_compression)
        return cls(name, channels, tuple(scale), tuple((-b / a).tolist()), **layout)


LATENT_FORMATS = {
    f.name: f for f in (
        LatentFormat("SD15", 4, 0.18215),
        LatentFormat("SDXL", 4, 0.13025),
        LatentFormat("SD3", 16, 1.5305, 0.0609),
        LatentFormat("Flux", 16, 0.3611, 0.1159),
    )
}


# Video latent formats (B, C, T, H, W). Values are facts read from public sources:
# - Wan 2.1 (16 channels): diffusers AutoencoderKLWan defaults (latents_mean, latents_std,
#   scale_factor_temporal 4, scale_factor_spatial 8); model space (z − mean) / std, as diffusers'
#   WanPipeline and ComfyUI's Wan21 latent format apply it.
# - Wan 2.2 TI2V 5B (48 channels): diffusers scripts/convert_wan_to_diffusers.py vae22 config
#   (latents_mean, latents_std, scale_factor_temporal 4, scale_factor_spatial 16); ComfyUI's Wan22 format.
# - HunyuanVideo (16): diffusers AutoencoderKLHunyuanVideo (scaling_factor 0.476986, temporal 4,
#   spatial 8); ComfyUI's HunyuanVideo format, scale 0.476986 and no shift.
# - LTX-Video (128): diffusers AutoencoderKLLTXVideo / LTXPipeline (spatial 32, temporal 8, scaling
#   1.0). ComfyUI's LTXV format is the identity (its VAE applies the checkpoint's per-channel
#   statistics itself), so raw ComfyUI LTXV latents are already model space; diffusers' raw VAE output
#   is not (LTXPipeline normalizes it with the checkpoint's latents_mean/latents_std buffers).
WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
WAN22_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
              -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
              -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
              -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
              -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
              0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
             0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
             0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
             0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
             0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
             0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)

VIDEO_LATENT_FORMATS = {
    f.name: f for f in (
        LatentFormat("Wan21", 16, tuple(1 / s for s in WAN21_STD), WAN21_MEAN, 8, 4),
        LatentFormat("Wan22", 48, tuple(1 / s for s in WAN22_STD), WAN22_MEAN, 16, 4),
        LatentFormat("HunyuanVideo", 16, 0.476986, 0.0, 8, 4),
        LatentFormat("LTXV", 128, 1.0, 0.0, 32, 8),
    )
}

# The published per-channel statistics of raw latents, for video_moments_from_vae_stats.
VAE_STATS = {"Wan21": (WAN21_MEAN, WAN21_STD), "Wan22": (WAN22_MEAN, WAN22_STD)}

ALL_LATENT_FORMATS = {**LATENT_FORMATS, **VIDEO_LATENT_FORMATS}


def find_latent_format(name_or_format: str | LatentFormat) -> LatentFormat:
    """A LatentFormat from its name in LATENT_FORMATS or VIDEO_LATENT_FORMATS (or the format itself)."""
    if isinstance(name_or_format, LatentFormat):
        return name_or_format
    if name_or_format not in ALL_LATENT_FORMATS:
        raise MomentsError(f"unknown latent format {name_or_format!r}; known: {sorted(ALL_LATENT_FORMATS)}")
    return ALL_LATENT_FORMATS[name_or_format]


def known_format_names() -> list[str]:
    """The names a moments file may be tagged with: "none", the image formats, then the video formats."""
    return [NO_FORMAT, *sorted(LATENT_FORMATS), *sorted(VIDEO_LATENT_FORMATS)]


def check_format_name(name) -> str:
    """``name`` if it is "none" or a known format's exact name; MomentsError naming the valid ones otherwise."""
    if name == NO_FORMAT or name in ALL_LATENT_FORMATS:
        return name
    close = [k for k in ALL_LATENT_FORMATS if isinstance(name, str) and k.lower() == name.strip().lower()]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise MomentsError(f"unknown latent format {name!r}{hint}; choose one of {', '.join(known_format_names())} "
                       "(\"none\" for latents of another family)")


def check_format_channels(name: str, channels: int) -> None:
    """Refuse latents whose channel count does not fit the named format (none fits any)."""
    fmt = ALL_LATENT_FORMATS.get(name)
    if fmt is not None and fmt.channels != channels:
        fits = [k for k, f in sorted(ALL_LATENT_FORMATS.items()) if f.channels == channels]
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
