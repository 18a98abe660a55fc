"""Host-free node descriptions, turned into ComfyUI V3 nodes (v3.py) or classic mappings (classic.py).

One description serves both APIs, so every input's tooltip, bounds and category live in one place
and can be checked without ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

CATEGORY = "Gaussian Teleport"
MOMENTS_TYPE = "GAUSSIAN_MOMENTS"


@dataclass(frozen=True)
class In:
    """One node input. ``kind`` is a ComfyUI type name (MODEL, FLOAT, COMBO, GAUSSIAN_MOMENTS, …)."""

    kind: str
    name: str
    tooltip: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: Any = None            # a list, or a callable returning one (read when the UI asks)
    optional: bool = False
    multiline: bool = False

    def choices(self):
        return self.options() if callable(self.options) else self.options


@dataclass(frozen=True)
class Out:
    kind: str
    name: str
    tooltip: str


@dataclass(frozen=True)
class Result:
    """What a node's run function returns: socket values, plus text/images shown on the node."""

    values: tuple = ()
    text: str | None = None
    images: Any = None


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    display_name: str
    description: str
    inputs: tuple[In, ...]
    outputs: tuple[Out, ...]
    run: Callable[..., Result]
    output_node: bool = False
    input_is_list: bool = False
    category: str = CATEGORY
    extra: dict = field(default_factory=dict)
