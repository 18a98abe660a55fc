"""What one generation asks of the teleport samplers, and how it is written to and read from infotext.

Host-free: the A1111/Forge script fills a ``TeleportSettings`` from its controls (or from the
Settings defaults when an API call leaves them out) and attaches it to the processing object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..scheduler.handoff import KINDS, MODES, Handoff

NO_MOMENTS = "None"
MOMENTS_FOLDER = "moments"          # under the host's models/ folder, as in ComfyUI

# Infotext keys (generation parameters written under the image).
KEY_HANDOFF = "Teleport"            # "sigma:5", or "off" when a teleport sampler ran with the switch off
KEY_MOMENTS = "Teleport moments"
KEY_MODE = "Teleport mode"          # written only when not "save"
KEY_RESULT = "Teleport result"      # what the first pass did
KEY_HIRES_RESULT = "Hires teleport result"

ATTRIBUTE = "gaussian_teleport"     # where the settings ride on the processing object p

# Settings section: option key -> (default, label). The UI module turns these into host options.
OPTIONS = {
    "gaussian_teleport_enabled": (True, "Teleport samplers jump by default (the accordion's switch)"),
    "gaussian_teleport_moments": (NO_MOMENTS, "Default moments file"),
    "gaussian_teleport_handoff_kind": ("sigma", "Default hand-off unit"),
    "gaussian_teleport_handoff_value": (5.0, "Default hand-off value"),
    "gaussian_teleport_mode": ("save", "Default schedule mode"),
    "gaussian_teleport_keep_loaded": (True, "Keep the last moments file in memory between generations"),
}


@dataclass(frozen=True)
class TeleportSettings:
    """One generation's teleport request. ``handoff`` sigma values are in VE units (x = x0 + σ·ε)."""

    enabled: bool = True
    moments: str = NO_MOMENTS
    handoff: Handoff = Handoff("sigma", 5.0)
    mode: str = "save"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"teleport schedule mode must be one of {MODES}, got {self.mode!r}")

    @classmethod
    def from_controls(cls, enabled, moments, kind, value, mode) -> "TeleportSettings":
        """From the UI's values (also what the API passes as the script's args)."""
        if kind not in KINDS:
            raise ValueError(f"teleport hand-off unit must be one of {KINDS}, got {kind!r}")
        value = float(value)
        if kind == "steps" and math.isfinite(value):
            value = float(round(value))  # a Number widget may send 4.0 or "4"
        return cls(bool(enabled), str(moments or NO_MOMENTS), Handoff(kind, value), str(mode))

    @classmethod
    def from_options(cls, opts) -> "TeleportSettings":
        """The Settings defaults; ``opts`` is the host's shared.opts (or anything with those attributes)."""
        get = lambda key: getattr(opts, key, OPTIONS[key][0])  # noqa: E731
        return cls.from_controls(get("gaussian_teleport_enabled"), get("gaussian_teleport_moments"),
                                 get("gaussian_teleport_handoff_kind"), get("gaussian_teleport_handoff_value"),
                                 get("gaussian_teleport_mode"))

    def with_handoff(self, text: str) -> "TeleportSettings":
        """A copy with the hand-off parsed from 'sigma:5', 'steps:4', 'fraction:0.25' or a bare sigma."""
        return replace(self, handoff=parse_handoff(text))

    def infotext(self) -> dict:
        """Generation parameters for a run of a teleport sampler (the result is added when it runs)."""
        if not self.enabled:
            return {KEY_HANDOFF: "off"}
        params = {KEY_HANDOFF: str(self.handoff), KEY_MOMENTS: self.moments}
        if self.mode != "save":
            params[KEY_MODE] = self.mode
        return params


def parse_handoff(text) -> Handoff:
    """'sigma:5', 'steps:4', 'fraction:0.25', or a bare number meaning a sigma."""
    text = str(text).strip()
    if ":" not in text:
        try:
            return Handoff("sigma", float(text))
        except ValueError:
            raise ValueError(f"teleport hand-off {text!r} must be a sigma such as 5, or look like "
                             "'sigma:5', 'steps:4' or 'fraction:0.25'") from None
    return Handoff.parse(text)


def settings_from_infotext(params: dict, defaults: TeleportSettings) -> TeleportSettings | None:
    """The settings an image was made with, or None if its infotext has no teleport entry."""
    text = params.get(KEY_HANDOFF)
    if text is None:
        return None
    if str(text).strip() == "off":
        return replace(defaults, enabled=False)
    return TeleportSettings(True, str(params.get(KEY_MOMENTS, defaults.moments)), parse_handoff(text),
                            str(params.get(KEY_MODE, "save")))
