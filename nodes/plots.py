"""Small plots drawn with Pillow (ComfyUI ships it), returned as IMAGE tensors (1, H, W, 3).

Pillow's default font has no σ, ×, → or ≤ (they draw as empty boxes), so every label is written in ASCII.
"""

from __future__ import annotations

import math

import numpy as np
import torch

WIDTH, HEIGHT = 640, 400
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 20, 40, 48
NINES = 5        # the EV plot's y axis is −log10(1 − EV): 0 (EV ≤ 0) up to 5 nines (0.99999)
BLUE, GREY, RED, GREEN = (30, 80, 200), (150, 150, 150), (200, 60, 60), (20, 150, 60)


ASCII = {"σ": "sigma", "Σ": "Sigma", "α": "alpha", "λ": "lambda", "μ": "mu", "×": "x", "→": "->", "←": "<-",
         "≤": "<=", "≥": ">=", "≈": "~", "−": "-", "–": "-", "—": "-", "…": "...", "·": "*", "²": "^2", "√": "sqrt",
         "∞": "inf", "’": "'", "‘": "'", "“": '"', "”": '"'}


def ascii_label(text: str) -> str:
    """``text`` in characters every font has: σ → sigma, × → x, → → ->; anything else outside ASCII → '?'."""
    out = "".join(ASCII.get(c, c) for c in str(text))
    return out.encode("ascii", "replace").decode("ascii")


class _Draw:
    """ImageDraw whose text is always ASCII (see the module's docstring)."""

    def __init__(self, draw):
        self._draw = draw

    def text(self, xy, text, **kw):
        self._draw.text(xy, ascii_label(text), **kw)

    def __getattr__(self, name):
        return getattr(self._draw, name)


def _canvas():
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = _Draw(ImageDraw.Draw(img))
    box = (MARGIN_L, MARGIN_T, WIDTH - MARGIN_R, HEIGHT - MARGIN_B)
    draw.rectangle(box, outline=(0, 0, 0))
    return img, draw, box


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 values between lo and hi (decades only when the range spans more than two)."""
    marks = (1,) if math.log10(hi / lo) > 2 else (1, 2, 5)
    return [m * 10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in marks
            if lo <= m * 10.0**e <= hi]


def _tensor(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def _log_x(value, lo, hi, box):
    span = max(math.log(hi) - math.log(lo), 1e-9)
    return box[0] + (math.log(value) - math.log(lo)) / span * (box[2] - box[0])


def plot_change_versus_calls(curve, tolerance: float, calls_plain: int, recommended, title: str) -> torch.Tensor:
    """Change (over the tolerance, log scale) against model calls: plain, each candidate, the recommendation."""
    img, draw, (x0, y0, x1, y1) = _canvas()
    lo_c = min([c.calls for c in curve] + [calls_plain]) - 1
    hi_c = calls_plain + 1
    x_of = lambda calls: x0 + (calls - lo_c) / max(hi_c - lo_c, 1) * (x1 - x0)  # noqa: E731
    ratios = [max(c.change / tolerance, 1e-3) for c in curve] + [1.0]
    lo_r, hi_r = min(ratios) / 2, max(ratios) * 2
    y_of = lambda r: y1 - (math.log(max(r, lo_r)) - math.log(lo_r)) / (math.log(hi_r) - math.log(lo_r)) * (y1 - y0)  # noqa: E731
    for v in _log_ticks(lo_r * tolerance, hi_r * tolerance):        # y-axis values: the change itself
        y = y_of(v / tolerance)
        draw.line([x0 - 4, y, x0, y], fill=(0, 0, 0))
        draw.line([x0 + 1, y, x1 - 1, y], fill=(235, 235, 235))
        draw.text((4, y - 6), f"{v:g}", fill=(0, 0, 0))
    yt = y_of(1.0)
    draw.line([x0, yt, x1, yt], fill=RED)
    draw.text((x0 + 4, yt - 14), f"tolerance {tolerance:g}", fill=RED)
    for calls in range(int(lo_c) + 1, int(hi_c)):
        if calls % 5 == 0:
            draw.line([x_of(calls), y1, x_of(calls), y1 + 4], fill=(0, 0, 0))
            draw.text((x_of(calls) - 6, y1 + 6), str(calls), fill=(0, 0, 0))
    for c in sorted(curve, key=lambda c: c.calls):
        x, y = x_of(c.calls), y_of(c.change / tolerance)
        colour = GREEN if c.passed else RED
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        draw.text((x + 5, y - 6), f"σ {c.sigma:.3g}", fill=colour)
    draw.polygon([(x_of(calls_plain), y1 - 10), (x_of(calls_plain) - 6, y1), (x_of(calls_plain) + 6, y1)], fill=(0, 0, 0))
    draw.text((x_of(calls_plain) - 30, y1 - 24), "plain", fill=(0, 0, 0))
    if recommended is not None:
        xr = x_of(recommended.calls)
        draw.line([xr, y0, xr, y1], fill=GREEN, width=2)
    draw.text((x0, 8), title, fill=(0, 0, 0))
    draw.text((x0, 20), "change of the image (log) against model calls. Green: within the tolerance",
              fill=(80, 80, 80))
    draw.text((4, y0 - 12), "change", fill=(0, 0, 0))
    draw.text(((x0 + x1) // 2 - 30, HEIGHT - 18), "model calls", fill=(0, 0, 0))
    return _tensor(img)


def _nines(ev):
    """−log10(1 − EV), clipped to [0, NINES]: 0.9 → 1, 0.99 → 2, 0.999 → 3."""
    if not math.isfinite(ev) or ev <= 0:
        return 0.0
    return min(-math.log10(max(1.0 - ev, 10.0**-NINES)), NINES)


def plot_explained_variance(sigmas, score_ev, denoiser_ev, recommended: float | None,
                            title: str = "Gaussian denoiser vs the model") -> torch.Tensor:
    """A diagnostic: score EV (blue) and denoiser-output EV (grey) against σ, with the recommended hand-off."""
    img, draw, (x0, y0, x1, y1) = _canvas()
    pts = sorted(zip(sigmas, score_ev, denoiser_ev))
    if not pts:
        draw.text((x0 + 8, y0 + 8), "no explained variance recorded (needs a batch of 2 or more)", fill=(0, 0, 0))
        return _tensor(img)
    lo, hi = pts[0][0], pts[-1][0]
    hi = hi if hi > lo else lo * 10
    y_of = lambda ev: y1 - _nines(ev) / NINES * (y1 - y0)  # noqa: E731
    for ev in (0.0, 0.9, 0.99, 0.999, 0.9999, 0.99999):
        y = y_of(ev)
        draw.line([x0, y, x1, y], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{ev:g}" if ev > 0 else "<= 0", fill=(0, 0, 0))
    for s in _log_ticks(lo, hi):
        x = _log_x(s, lo, hi, (x0, y0, x1, y1))
        draw.line([x, y0, x, y1], fill=(235, 235, 235))
        draw.text((x - 8, y1 + 4), f"{s:g}", fill=(0, 0, 0))
    for column, colour, width in ((2, GREY, 1), (1, BLUE, 3)):
        line = [(_log_x(p[0], lo, hi, (x0, y0, x1, y1)), y_of(p[column])) for p in pts]
        if len(line) > 1:
            draw.line(line, fill=colour, width=width)
        for x, y in line:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    if recommended is not None and lo <= recommended <= hi:
        xr = _log_x(recommended, lo, hi, (x0, y0, x1, y1))
        draw.line([xr, y0, xr, y1], fill=GREEN, width=2)
        draw.text((min(xr + 4, x1 - 150), y1 - 16), f"hand-off sigma {recommended:.3g}", fill=GREEN)
    draw.text((x0, 8), title + "  (explained variance, log scale of 1 - EV; a diagnostic)", fill=(0, 0, 0))
    draw.text((x0, 20), "blue: score EV   grey: denoiser EV", fill=(80, 80, 80))
    draw.text(((x0 + x1) // 2 - 20, HEIGHT - 18), "sigma (log)", fill=(0, 0, 0))
    return _tensor(img)
