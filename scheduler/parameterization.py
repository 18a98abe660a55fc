"""How a model's noisy latents relate to clean ones, and the one unit rule for hand-off sigmas.

Noisy latents are x = α(σ)·x0 + σ·ε in the sampler's own units:

- ``ve``: α = 1. EPS, v-prediction and EDM models as ComfyUI and A1111/Forge sample them (SD1.x,
  SD2.x, SDXL, …); σ runs from about 14.6 (SD) or 80 (EDM) down to 0.
- ``flow``: α = 1 − t, σ = t ∈ [0, 1]. Rectified-flow models (SD3, Flux, …); t = 1 is pure noise.

The unit rule: a hand-off sigma is a noise level σ/α, the VE sigma, on every model. ``sigma:5``
means the same noise-to-signal ratio on SD1.5, SDXL, SD3 and Flux, so a number calibrated or
recommended on one model family reads the same on another. A flow model's schedule runs on t, and
t = σ/(1 + σ) (σ 5 is t 0.833; t 0.8 is σ 4). Plans, records and reports show both for flow models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def format_sigma(value: float) -> str:
    """A noise level printed so that typing it back replaces the same steps (4 significant digits)."""
    return "∞" if math.isinf(value) else f"{value:.4g}"


@dataclass(frozen=True)
class Parameterization:
    name: str

    @property
    def is_flow(self) -> bool:
        return self.name == "flow"

    def alpha(self, sigma: float) -> float:
        """α(σ) in x = α·x0 + σ·ε, σ in the sampler's units."""
        return 1.0 - float(sigma) if self.is_flow else 1.0

    def schedule_sigma(self, noise_level: float) -> float:
        """The sampler's sigma at a noise level σ/α (the unit of hand-off sigmas): t = σ/(1 + σ) for flow."""
        s = float(noise_level)
        if not self.is_flow:
            return s
        return 1.0 if math.isinf(s) else s / (1.0 + s)

    def noise_level(self, schedule_sigma: float) -> float:
        """σ/α at the sampler's sigma: the hand-off unit (∞ at a flow model's t = 1)."""
        s = float(schedule_sigma)
        if not self.is_flow:
            return s
        return math.inf if s >= 1.0 else s / (1.0 - s)

    def describe_sigma(self, schedule_sigma: float) -> str:
        """'σ 4.5', or for flow models 't 0.8182 (σ 4.5)', for logs and reports."""
        if not self.is_flow:
            return f"σ {float(schedule_sigma):.4g}"
        level = self.noise_level(schedule_sigma)
        return f"t {float(schedule_sigma):.4g} (σ {format_sigma(level)})"

    def check_schedule_range(self, sigmas) -> None:
        """A flow model's sigmas are times t in [0, 1]; anything above is a VE schedule on the wrong model."""
        top = float(sigmas.max())
        if self.is_flow and top > 1.0 + 1e-6:
            raise ValueError(f"a flow model's schedule runs on t in [0, 1], but this one reaches {top:.4g}: it "
                             "looks like a VE schedule (SD-style sigmas) given to a flow model")


VE = Parameterization("ve")
FLOW = Parameterization("flow")
PARAMETERIZATIONS = {"ve": VE, "flow": FLOW}


def parameterization(value: "str | Parameterization") -> Parameterization:
    """A Parameterization from its name ('ve', 'flow') or itself."""
    if isinstance(value, Parameterization):
        return value
    if value not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {tuple(PARAMETERIZATIONS)}, got {value!r}")
    return PARAMETERIZATIONS[value]


def path_alpha(value: "str | Parameterization", sigma: float) -> float:
    """α(σ) for a parameterization name: 1 for VE models, 1 − σ for rectified flow (σ = t)."""
    return parameterization(value).alpha(sigma)
