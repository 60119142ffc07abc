"""Samples to PNG for the explorer, fast: no matplotlib, one numpy mosaic and Pillow's encoder.

Images are sent at their own resolution (one pixel per data pixel, a one-pixel grey border between them) and
the page scales them up with ``image-rendering: pixelated``, so a 10×8 grid of 8×8 digits is a 91×73 PNG of
a few kilobytes. 2-D points are drawn as a scatter plot over the data's square [-x_bound, x_bound]².
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw

PAD = 1  # pixels of border between and around the images
PAD_VALUE = 217  # border grey (0.85 of white), as cfgdiff.evaluation.plotting's grids
SCATTER_SIZE = 360  # pixels of the square scatter image
SCATTER_RADIUS = 2  # point radius in pixels
# tab10 reordered as cfgdiff.evaluation.plotting.CLASS_COLORS (blue, red, green first); kept here so serving needs
# no matplotlib
CLASS_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")


def to_uint8(x: np.ndarray, x_bound: float = 1.0) -> np.ndarray:
    """Pixels in [-x_bound, x_bound] to uint8 [0, 255] (clipped; NaN to 0)."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=-x_bound, posinf=x_bound, neginf=-x_bound)
    return np.round((np.clip(x, -x_bound, x_bound) / x_bound + 1.0) * 127.5).astype(np.uint8)


def mosaic(images: np.ndarray, pad: int = PAD, pad_value: int = PAD_VALUE) -> np.ndarray:
    """[R, Cn, C, H, W] uint8 -> one [R(H+pad)+pad, Cn(W+pad)+pad, C] uint8 image: row r holds images[r]."""
    rows, cols, channels, height, width = images.shape
    out = np.full((rows * (height + pad) + pad, cols * (width + pad) + pad, channels), pad_value, np.uint8)
    for r in range(rows):
        for c in range(cols):
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            out[top:top + height, left:left + width] = images[r, c].transpose(1, 2, 0)
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """[H, W, 1 | 3] uint8 -> PNG bytes."""
    mode = "L" if image.shape[2] == 1 else "RGB"
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if mode == "L" else image, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def grid_png(x: np.ndarray, rows: int, x_bound: float = 1.0) -> bytes:
    """Samples [rows * cols, C, H, W] in [-x_bound, x_bound], row-major (row = class), as one PNG mosaic."""
    n, channels, height, width = x.shape
    images = to_uint8(x, x_bound).reshape(rows, n // rows, channels, height, width)
    return png_bytes(mosaic(images))


def scatter_png(points: np.ndarray, labels: np.ndarray, extent: float, size: int = SCATTER_SIZE) -> bytes:
    """2-D points [N, 2] coloured by class label as a PNG over [-extent, extent]², y up, light axes at 0."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    mid = (size - 1) / 2
    draw.line([(0, mid), (size - 1, mid)], fill="#e3e6ea")
    draw.line([(mid, 0), (mid, size - 1)], fill="#e3e6ea")
    draw.rectangle([(0, 0), (size - 1, size - 1)], outline="#c9ced4")
    pts = np.nan_to_num(np.asarray(points, dtype=np.float64))
    px = (pts[:, 0] / extent + 1.0) * mid
    py = (1.0 - pts[:, 1] / extent) * mid
    for u, v, label in zip(px, py, np.asarray(labels).tolist(), strict=True):
        color = CLASS_COLORS[int(label) % len(CLASS_COLORS)]
        draw.ellipse([(u - SCATTER_RADIUS, v - SCATTER_RADIUS), (u + SCATTER_RADIUS, v + SCATTER_RADIUS)], fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
