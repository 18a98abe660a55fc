"""A small explained-variance plot drawn with Pillow (ComfyUI ships it), returned as an IMAGE tensor."""

from __future__ import annotations

import math

import numpy as np
import torch

WIDTH, HEIGHT = 640, 400
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 20, 40, 48
NINES = 5        # the y axis is −log10(1 − EV): 0 (EV ≤ 0) up to 5 nines (0.99999)


def _x_of(sigma, lo, hi):
    span = max(math.log(hi) - math.log(lo), 1e-9)
    return MARGIN_L + (math.log(sigma) - math.log(lo)) / span * (WIDTH - MARGIN_L - MARGIN_R)


def _nines(ev):
    """−log10(1 − EV), clipped to [0, NINES]: 0.9 → 1, 0.99 → 2, 0.999 → 3."""
    if not math.isfinite(ev) or ev <= 0:
        return 0.0
    return min(-math.log10(max(1.0 - ev, 10.0**-NINES)), NINES)


def _y_of(ev):
    return HEIGHT - MARGIN_B - _nines(ev) / NINES * (HEIGHT - MARGIN_T - MARGIN_B)


def plot_explained_variance(sigmas, score_ev, denoiser_ev, threshold: float, recommended: float | None,
                            title: str = "Gaussian denoiser vs the model") -> torch.Tensor:
    """(1, H, W, 3) float image: score EV (solid), denoiser EV (grey), threshold and the recommendation."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    pts = sorted(zip(sigmas, score_ev, denoiser_ev))
    lo, hi = pts[0][0], pts[-1][0]
    if hi <= lo:
        hi = lo * 10
    x0, x1, y0, y1 = MARGIN_L, WIDTH - MARGIN_R, MARGIN_T, HEIGHT - MARGIN_B
    draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
    for ev in (0.0, 0.9, 0.99, 0.999, 0.9999, 0.99999):
        y = _y_of(ev)
        draw.line([x0, y, x1, y], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{ev:g}" if ev > 0 else "<= 0", fill=(0, 0, 0))
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            s = m * 10.0**e
            if lo <= s <= hi:
                x = _x_of(s, lo, hi)
                draw.line([x, y0, x, y1], fill=(235, 235, 235))
                draw.text((x - 8, y1 + 4), f"{s:g}", fill=(0, 0, 0))
    yt = _y_of(threshold)
    draw.line([x0, yt, x1, yt], fill=(200, 60, 60))
    draw.text((x1 - 120, yt - 14), f"threshold {threshold:g}", fill=(200, 60, 60))
    for values, colour, width in ((2, (150, 150, 150), 1), (1, (30, 80, 200), 3)):
        line = [(_x_of(p[0], lo, hi), _y_of(p[values])) for p in pts]
        draw.line(line, fill=colour, width=width)
        for x, y in line:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    if recommended is not None:
        xr = _x_of(recommended, lo, hi)
        draw.line([xr, y0, xr, y1], fill=(20, 150, 60), width=2)
        draw.text((min(xr + 4, x1 - 150), y1 - 16), f"hand-off sigma {recommended:.3g}", fill=(20, 150, 60))
    draw.text((x0, 8), title + "  (explained variance, log scale of 1 - EV)", fill=(0, 0, 0))
    draw.text((x0, 20), "blue: score EV (used)   grey: denoiser EV (reference)", fill=(80, 80, 80))
    draw.text(((x0 + x1) // 2 - 20, HEIGHT - 18), "sigma (log)", fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
