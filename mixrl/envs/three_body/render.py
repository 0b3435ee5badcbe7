"""Rendering of the three-body task: the orbits as trails on an RGB image."""

from __future__ import annotations

import numpy as np

_COLOURS = np.array([[255, 99, 71], [80, 200, 120], [100, 149, 237]], np.uint8)


def render_trails(trail: np.ndarray, size: int = 400) -> np.ndarray:
    """RGB image (size, size, 3) of the orbits: trail (T, 3, 2) in au, bodies as discs at the last point.

    The view is centred on the centre of mass and spans at least +-15 au, growing to fit the trail.
    """
    img = np.full((size, size, 3), 16, np.uint8)
    half = max(15.0, 1.1 * float(np.abs(trail).max()))
    scale = (size - 1) / (2.0 * half)
    pix = (trail * scale + (size - 1) / 2.0).astype(np.float64)
    pix[..., 1] = (size - 1) - pix[..., 1]  # y axis up
    for b in range(trail.shape[1]):
        dim = (_COLOURS[b].astype(np.float64) * 0.6).astype(np.uint8)
        pts = pix[:, b]
        if len(pts) > 1:
            seg = np.diff(pts, axis=0)
            n = np.maximum(np.ceil(np.abs(seg).max(1)).astype(np.int64), 1)
            frac = np.concatenate([np.arange(k) / k for k in n])
            start = np.repeat(pts[:-1], n, axis=0)
            line = start + np.repeat(seg, n, axis=0) * frac[:, None]
            line = np.rint(line).astype(np.int64)
            keep = ((line >= 0) & (line < size)).all(1)
            img[line[keep, 1], line[keep, 0]] = dim
        cx, cy = pts[-1]
        yy, xx = np.ogrid[:size, :size]
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= 16.0] = _COLOURS[b]
    return img
