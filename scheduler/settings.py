"""What one teleport run is asked to do, and the defaults every host shows (one place for each)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .handoff import MODES, Handoff

MEANS = ("data", "model")
ON_MISMATCH = ("raise", "pass")           # moments that do not fit the latent: stop, or run the sampler unchanged
DEFAULT_HANDOFF = Handoff("sigma", 5.0)   # a noise level; about right for SD-like Karras schedules
DEFAULT_MODE = "save"
DEFAULT_MEAN = "model"                    # chosen from the guidance benchmark: see the README


def check_mean(mean: str) -> str:
    if mean not in MEANS:
        raise ValueError(f"teleport mean must be one of {MEANS}, got {mean!r}")
    return mean


def check_on_mismatch(on_mismatch: str) -> str:
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch must be one of {ON_MISMATCH} (stop, or run the sampler unchanged when the "
                         f"moments do not fit the latent), got {on_mismatch!r}")
    return on_mismatch


@dataclass(frozen=True)
class TeleportSettings:
    """The hand-off, the schedule mode and where the jump's mean comes from.

    ``mean``: "data" jumps with the moments' own mean; "model" takes each sample's mean from one model
    call at the start (prompt-aware under CFG, conditioning and LoRA included; one extra call).
    """

    handoff: Handoff = field(default=DEFAULT_HANDOFF)
    mode: str = DEFAULT_MODE
    mean: str = DEFAULT_MEAN

    def __post_init__(self):
        object.__setattr__(self, "handoff", Handoff.parse(self.handoff))
        if self.mode not in MODES:
            raise ValueError(f"teleport schedule mode must be one of {MODES}, got {self.mode!r}")
        check_mean(self.mean)

    @classmethod
    def from_values(cls, kind: str, value, mode: str = DEFAULT_MODE, mean: str = DEFAULT_MEAN) -> "TeleportSettings":
        """From a host's widgets (unit, number, mode, mean); the number is checked by Handoff's rules."""
        return cls(Handoff(kind, value), mode, mean)

    def describe(self) -> str:
        mean = "mean from the model (one extra call)" if self.mean == "model" else "mean from the moments"
        return f"hand-off {self.handoff}, {self.mode}, {mean}"
