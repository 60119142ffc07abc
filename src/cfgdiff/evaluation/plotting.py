"""Figures: sample grids per guidance strength w, and the paper's Figure 2 on the exact Gaussian mixture.

Everything renders with ``matplotlib.figure.Figure`` on a ``FigureCanvasAgg`` (no pyplot, no global backend
switch, no display) and writes a PNG. Nothing here prints, parses arguments or touches training code.

* ``save_sample_grid``: one panel per w, each a K×n mosaic of images (rows = classes), upscaled by an integer
  factor with nearest-neighbour so 8×8 digits stay legible.
* ``guided_density_grid``: the exact guided target p̃_w(x | c) ∝ p(x | c) p(c | x)^w of every class of a 2-D
  ``GaussianMixture``, normalised numerically on a grid (Ho & Salimans 2022, Figure 2).
* ``toy_guidance_figure``: one column per w; top row the guided densities of all classes blended in their
  colours, bottom row given samples scattered in the same colours and limits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from cfgdiff.core.toy import GaussianMixture

ArrayLike = np.ndarray | torch.Tensor
Extent = tuple[float, float, float, float]  # (x_min, x_max, y_min, y_max), matplotlib's imshow order

CLASS_COLORS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)  # tab10, reordered so the first three (Figure 2's classes) are blue, red, green

_DPI = 100  # figure pixels per inch: layouts below are computed in pixels
_GRID_PAD = 1  # source pixels of border between and around the images of a mosaic
_GRID_PAD_VALUE = 0.85  # border grey level in [0, 1]
_GRID_MIN_CELL_PX = 48  # images are upscaled by the smallest integer factor reaching this many pixels
_PANEL_GAP_PX = 16  # horizontal gap between panels
_TITLE_PX = 28  # height reserved above a panel for "w = ..."
_SUPTITLE_PX = 30  # extra height reserved for the figure title
_MARGIN_PX = 8  # right and bottom margin
_FONT_PX = 7.0  # rough width of one 10 pt character at _DPI, to size the row-label margin
_DENSITY_DECADES = 3.0  # the density shading fades out at 10^-3 of each class's peak
_DENSITY_LEVELS = (1e-3, 1e-2, 1e-1, 0.5)  # iso-density lines, as fractions of each class's peak


def _to_numpy(a: ArrayLike) -> np.ndarray:
    """A numpy copy of a tensor or array (detached, on the CPU)."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG through its own Agg canvas, creating the parent folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=_DPI)


def _format_w(w: float) -> str:
    return f"w = {float(w):g}"


# -- sample grids -----------------------------------------------------------------------------------------


def _mosaic(images: np.ndarray, pad: int = _GRID_PAD, pad_value: float = _GRID_PAD_VALUE) -> np.ndarray:
    """Tile [K, n, C, H, W] images in [-1, 1] into one [K·H + (K+1)·pad, n·W + (n+1)·pad, C] array in [0, 1].

    Row k, column j of the mosaic is ``images[k, j]``; values are clipped to [-1, 1] and mapped by (v + 1)/2.
    """
    num_rows, num_cols, channels, height, width = images.shape
    mosaic = np.full(
        (num_rows * height + (num_rows + 1) * pad, num_cols * width + (num_cols + 1) * pad, channels),
        pad_value,
        dtype=np.float64,
    )
    pixels = (np.clip(images.astype(np.float64), -1.0, 1.0) + 1.0) / 2.0  # [K, n, C, H, W] in [0, 1]
    for k in range(num_rows):
        top = pad + k * (height + pad)
        for j in range(num_cols):
            left = pad + j * (width + pad)
            mosaic[top : top + height, left : left + width] = pixels[k, j].transpose(1, 2, 0)
    return mosaic


class _GridLayout(NamedTuple):
    scale: int  # screen pixels per source pixel
    size: tuple[int, int]  # figure (width, height) in pixels
    boxes: list[tuple[int, int, int, int]]  # per panel (left, bottom, width, height) in figure pixels


def _grid_layout(
    shape: tuple[int, ...], num_panels: int, class_names: Sequence[str], has_title: bool
) -> _GridLayout:
    """Pixel layout of ``save_sample_grid``'s figure for panels of [K, n, C, H, W] images.

    Returns the upscale factor, the figure size in pixels, and each panel's box (left, bottom, width,
    height) in figure pixels with the origin at the bottom left (matplotlib's convention).
    """
    num_rows, num_cols, _, height, width = shape
    scale = max(1, math.ceil(_GRID_MIN_CELL_PX / max(height, width)))
    panel_w = (num_cols * width + (num_cols + 1) * _GRID_PAD) * scale
    panel_h = (num_rows * height + (num_rows + 1) * _GRID_PAD) * scale
    left = int(round(24 + _FONT_PX * max(len(name) for name in class_names)))
    top = _TITLE_PX + (_SUPTITLE_PX if has_title else 0)
    fig_w = left + num_panels * panel_w + (num_panels - 1) * _PANEL_GAP_PX + _MARGIN_PX
    fig_h = top + panel_h + _MARGIN_PX
    boxes = [(left + i * (panel_w + _PANEL_GAP_PX), _MARGIN_PX, panel_w, panel_h) for i in range(num_panels)]
    return _GridLayout(scale=scale, size=(fig_w, fig_h), boxes=boxes)


def save_sample_grid(
    samples_by_w: Mapping[float, ArrayLike],
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Save a PNG of sample mosaics, one panel per guidance strength w, side by side.

    Each value of ``samples_by_w`` is [K, n, C, H, W] with pixels in [-1, 1] (clipped), C = 1 (grayscale) or
    C = 3 (RGB); every panel must have the same shape. Panel i, in the mapping's order, is the K×n mosaic of
    ``samples_by_w[w_i]`` titled "w = {w_i}": row k holds class k's n samples and is labelled
    ``class_names[k]`` (the index k by default) on the left of the first panel. Images are separated by a
    one-pixel grey border and upscaled by an integer factor (to at least 48 screen pixels per image) with
    nearest-neighbour, so every source pixel is a crisp square. ``title``, if given, goes above all panels.

    Raises:
        ValueError: no panels, a value not 5-D, C not 1 or 3, shapes differing between panels, or
            ``class_names`` of the wrong length.
    """
    if len(samples_by_w) == 0:
        raise ValueError("samples_by_w is empty: nothing to draw")
    panels: list[tuple[float, np.ndarray]] = [(float(w), _to_numpy(v)) for w, v in samples_by_w.items()]
    shape = panels[0][1].shape
    for w, images in panels:
        if images.ndim != 5:
            raise ValueError(f"samples for w = {w:g} must be [K, n, C, H, W], got shape {images.shape}")
        if images.shape[2] not in (1, 3):
            raise ValueError(f"samples for w = {w:g} must have C = 1 or 3 channels, got {images.shape[2]}")
        if images.shape != shape:
            raise ValueError(
                f"all panels must share one shape [K, n, C, H, W]: w = {panels[0][0]:g} has {shape}, "
                f"w = {w:g} has {images.shape}"
            )
    num_rows, num_cols, channels, height, width = shape
    if min(num_rows, num_cols, height, width) < 1:
        raise ValueError(f"samples must be non-empty, got shape {shape}")
    names = [str(k) for k in range(num_rows)] if class_names is None else [str(c) for c in class_names]
    if len(names) != num_rows:
        raise ValueError(f"class_names has {len(names)} entries for K = {num_rows} classes")

    layout = _grid_layout(shape, len(panels), names, title is not None)
    fig_w, fig_h = layout.size
    fig = Figure(figsize=(fig_w / _DPI, fig_h / _DPI), dpi=_DPI, facecolor="white")
    row_centres = [_GRID_PAD + k * (height + _GRID_PAD) + (height - 1) / 2 for k in range(num_rows)]
    for i, ((w, images), (left, bottom, box_w, box_h)) in enumerate(zip(panels, layout.boxes, strict=True)):
        ax = fig.add_axes((left / fig_w, bottom / fig_h, box_w / fig_w, box_h / fig_h))
        mosaic = _mosaic(images)  # [Hm, Wm, C] in [0, 1]
        if channels == 1:
            ax.imshow(mosaic[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
        else:
            ax.imshow(mosaic, interpolation="nearest", aspect="auto")
        ax.set_title(_format_w(w), fontsize=11)
        ax.set_xticks([])
        if i == 0:
            ax.set_yticks(row_centres, labels=names, fontsize=10)
            ax.tick_params(axis="y", length=0)
        else:
            ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    if title is not None:
        fig.suptitle(title, y=1.0 - 6 / fig_h, va="top", fontsize=12)
    save_figure(fig, path)


# -- the exact toy: Figure 2 ------------------------------------------------------------------------------


def default_extent(mixture: GaussianMixture) -> Extent:
    """A square view of a 2-D mixture: the means' bounding box, padded by 5 of the largest stds per side.

    Guidance pushes each class outward, so the pad is wider than the ~4 stds the unguided densities need.
    For ``GaussianMixture.three_gaussians()`` this is about ±1.6 around the means' centre.
    """
    if mixture.dim != 2:
        raise ValueError(f"the mixture must be 2-D to draw, got dim = {mixture.dim}")
    means = mixture.means.detach().cpu().numpy()  # [K, 2]
    lo, hi = means.min(axis=0), means.max(axis=0)
    centre = (lo + hi) / 2
    half = float((hi - lo).max() / 2 + 5.0 * mixture.stds.max().item())
    return (centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half)


def guided_density_grid(
    mixture: GaussianMixture,
    w: float,
    grid_size: int = 200,
    extent: Extent | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The guided densities p̃_w(x | c) ∝ p(x | c) p(c | x)^w of every class, normalised on a grid.

    The grid is the centres of grid_size × grid_size equal cells tiling ``extent`` = (x_min, x_max, y_min,
    y_max) (``default_extent`` if None). For each class c, log p̃ = ``mixture.guided_log_density(x, c, w)`` is
    evaluated in float64, and p̃ = exp(log p̃ - max) / (Σ_grid exp(log p̃ - max) · cell area), so that
    Σ_grid p̃ · cell area = 1 (midpoint rule; mass outside ``extent`` is ignored).

    Returns:
        xs: [grid_size] cell-centre x coordinates, ascending.
        ys: [grid_size] cell-centre y coordinates, ascending.
        densities: [K, grid_size, grid_size] float64, indexed [c, iy, ix] (row = y), i.e. the value at
            (xs[ix], ys[iy]); draw with ``imshow(..., origin="lower", extent=extent)``.
    """
    if mixture.dim != 2:
        raise ValueError(f"the mixture must be 2-D to draw, got dim = {mixture.dim}")
    if grid_size < 2:
        raise ValueError(f"grid_size must be at least 2, got {grid_size}")
    x_min, x_max, y_min, y_max = default_extent(mixture) if extent is None else extent
    if not (x_max > x_min and y_max > y_min):
        raise ValueError(f"extent must be (x_min, x_max, y_min, y_max) with min < max, got {extent}")
    dx, dy = (x_max - x_min) / grid_size, (y_max - y_min) / grid_size
    xs = x_min + (np.arange(grid_size) + 0.5) * dx  # [G]
    ys = y_min + (np.arange(grid_size) + 0.5) * dy  # [G]
    grid_x, grid_y = np.meshgrid(xs, ys)  # [G, G] each, indexed [iy, ix]
    points = torch.from_numpy(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1))  # [G², 2] float64
    densities = np.empty((mixture.num_classes, grid_size, grid_size), dtype=np.float64)
    for c in range(mixture.num_classes):
        labels = torch.full((points.shape[0],), c, dtype=torch.long)
        with torch.no_grad():
            log_density = mixture.guided_log_density(points, labels, float(w)).numpy()  # [G²]
        unnorm = np.exp(log_density - log_density.max())
        densities[c] = (unnorm / (unnorm.sum() * dx * dy)).reshape(grid_size, grid_size)
    return xs, ys, densities


def _blend_densities(
    densities: np.ndarray, colors: Sequence[str], decades: float = _DENSITY_DECADES
) -> np.ndarray:
    """An RGB image [G, G, 3] of K densities [K, G, G] over white, each class in its own colour.

    Class c has opacity a_c = 0.9 · clip(1 + log10(p̃_c / max p̃_c) / decades, 0, 1): log-scaled, so the tails
    that guidance reshapes stay visible. The colour is the a-weighted mean of the class colours and the
    total opacity 1 - Π_c (1 - a_c), so the result does not depend on the order of the classes.
    """
    peak = densities.reshape(len(densities), -1).max(axis=1)[:, None, None]  # [K, 1, 1]
    with np.errstate(divide="ignore"):
        log_rel = np.log10(densities / peak)  # [K, G, G], <= 0
    alpha = 0.9 * np.clip(1.0 + log_rel / decades, 0.0, 1.0)  # [K, G, G]
    rgb = np.array([to_rgb(c) for c in colors])  # [K, 3]
    mean_color = np.einsum("kyx,kc->yxc", alpha, rgb) / np.maximum(alpha.sum(0), 1e-12)[..., None]
    opacity = 1.0 - np.prod(1.0 - alpha, axis=0)  # [G, G]
    return opacity[..., None] * mean_color + (1.0 - opacity[..., None]) * np.ones(3)


def toy_guidance_figure(
    mixture: GaussianMixture,
    w_values: Sequence[float],
    samples_by_w: Mapping[float, tuple[ArrayLike, ArrayLike]],
    path: str | os.PathLike,
    *,
    grid_size: int = 200,
    extent: Extent | None = None,
) -> None:
    """Save a PNG in the manner of the paper's Figure 2: one column per w in ``w_values``, in that order.

    Top row: the exact guided densities p̃_w(x | c) ∝ p(x | c) p(c | x)^w of every class (from
    ``guided_density_grid``), each class in its own colour with opacity growing with its log density over
    three decades below its peak, blended over white, plus iso-density lines at 10^-3, 10^-2, 10^-1 and
    0.5 of each class's peak (guidance acts on the tails, where p(c | x) < 1, so these show it best);
    the class means are marked with black crosses. Bottom row: ``samples_by_w[w] = (x [N, 2], labels [N])``
    as a scatter coloured by label, with the same colours, means and axis limits (``extent``,
    ``default_extent(mixture)`` if None).

    Raises:
        ValueError: a 2-D mixture is required; every w in ``w_values`` needs samples; x must be [N, 2] and
            labels [N] with values in [0, K).
    """
    if mixture.dim != 2:
        raise ValueError(f"the mixture must be 2-D to draw, got dim = {mixture.dim}")
    if len(w_values) == 0:
        raise ValueError("w_values is empty: nothing to draw")
    num_classes = mixture.num_classes
    if num_classes > len(CLASS_COLORS):
        raise ValueError(f"at most {len(CLASS_COLORS)} classes can be coloured, got {num_classes}")
    colors = CLASS_COLORS[:num_classes]
    extent = default_extent(mixture) if extent is None else tuple(float(e) for e in extent)
    means = mixture.means.detach().cpu().numpy()  # [K, 2]

    samples: list[tuple[np.ndarray, np.ndarray]] = []
    for w in w_values:
        if w not in samples_by_w:
            raise ValueError(f"samples_by_w has no samples for w = {w:g}")
        x, labels = (_to_numpy(a) for a in samples_by_w[w])
        if x.ndim != 2 or x.shape[1] != 2 or labels.shape != (x.shape[0],):
            raise ValueError(
                f"samples for w = {w:g} must be x [N, 2], labels [N]; got {x.shape}, {labels.shape}"
            )
        labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels for w = {w:g} must lie in [0, {num_classes - 1}]")
        samples.append((x, labels))

    num_cols = len(w_values)
    fig = Figure(figsize=(2.8 * num_cols + 0.6, 6.0), dpi=_DPI, facecolor="white", layout="constrained")
    axes = fig.subplots(2, num_cols, squeeze=False, sharex=True, sharey=True)
    for j, (w, (x, labels)) in enumerate(zip(w_values, samples, strict=True)):
        xs, ys, densities = guided_density_grid(mixture, w, grid_size, extent)
        ax_density, ax_samples = axes[0, j], axes[1, j]
        ax_density.imshow(
            _blend_densities(densities, colors), origin="lower", extent=extent, interpolation="bilinear"
        )
        for c in range(num_classes):
            peak = densities[c].max()
            ax_density.contour(
                xs,
                ys,
                densities[c],
                levels=peak * np.array(_DENSITY_LEVELS),
                colors=[colors[c]],
                linewidths=0.7,
            )
        ax_density.set_title(_format_w(w), fontsize=11)
        for c in range(num_classes):
            chosen = labels == c
            ax_samples.scatter(
                x[chosen, 0], x[chosen, 1], s=4, color=colors[c], alpha=0.6, linewidths=0, label=f"class {c}"
            )
        for ax in (ax_density, ax_samples):
            ax.scatter(means[:, 0], means[:, 1], marker="x", s=30, color="black", linewidths=1.2)
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            ax.set_aspect("equal")
            ax.tick_params(labelsize=8)
    axes[0, 0].set_ylabel("exact guided density\np(x|c) p(c|x)^w", fontsize=10)
    axes[1, 0].set_ylabel("samples", fontsize=10)
    axes[1, 0].legend(loc="lower left", fontsize=7, markerscale=3, framealpha=0.8)
    save_figure(fig, path)


# -- FID / IS trade-off curves ----------------------------------------------------------------------------

Curve = tuple[Sequence[float], Sequence[float], Sequence[float]]  # (ws, fids, inception scores)


def tradeoff_plot(
    curves: Mapping[str, Curve],
    path: str | os.PathLike,
    *,
    fid_label: str = "FID",
    is_label: str = "IS",
    fid_floor: float | None = None,
    title: str | None = None,
) -> None:
    """FID against IS, one line per curve (e.g. classifier-free vs classifier guidance), points labelled by w.

    The paper's trade-off: as w grows IS rises (right) and FID first falls then rises (up). A dashed line marks
    the FID floor (test split against training split) when given.
    """
    if not curves:
        raise ValueError("no curves to draw")
    fig = Figure(figsize=(6.4, 4.8), dpi=_DPI, facecolor="white")
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, (ws, fids, scores)) in enumerate(curves.items()):
        color = CLASS_COLORS[i % len(CLASS_COLORS)]
        ax.plot(scores, fids, "-o", color=color, markersize=4, label=name)
        for w, fid, score in zip(ws, fids, scores, strict=True):
            ax.annotate(f"{float(w):g}", (score, fid), textcoords="offset points", xytext=(4, 4), fontsize=8,
                        color=color)
    if fid_floor is not None:
        ax.axhline(fid_floor, color="gray", linestyle="--", linewidth=1, label=f"floor (test vs train) {fid_floor:.2f}")
    ax.set_xlabel(is_label)
    ax.set_ylabel(fid_label)
    ax.set_title(title or "FID / IS trade-off (points labelled by w)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def metrics_vs_w_plot(
    curves: Mapping[str, Curve],
    path: str | os.PathLike,
    *,
    fid_label: str = "FID",
    is_label: str = "IS",
    fid_floor: float | None = None,
    title: str | None = None,
    x_label: str = "guidance weight w",
    x_scale: str = "symlog",
) -> None:
    """Two panels: FID and IS against the curves' x values, by default w on a symlog axis (so 0 and 0.1 stay
    apart). Another sweep variable works the same, e.g. ``x_label="sampling steps T", x_scale="log2"``."""
    if not curves:
        raise ValueError("no curves to draw")
    fig = Figure(figsize=(10, 4), dpi=_DPI, facecolor="white")
    ax_fid, ax_is = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, (name, (ws, fids, scores)) in enumerate(curves.items()):
        color = CLASS_COLORS[i % len(CLASS_COLORS)]
        ax_fid.plot(ws, fids, "-o", color=color, markersize=4, label=name)
        ax_is.plot(ws, scores, "-o", color=color, markersize=4, label=name)
    if fid_floor is not None:
        ax_fid.axhline(fid_floor, color="gray", linestyle="--", linewidth=1, label="floor (test vs train)")
    scale_kwargs = {"symlog": ("symlog", {"linthresh": 0.1}), "log2": ("log", {"base": 2}),
                    "linear": ("linear", {})}
    if x_scale not in scale_kwargs:
        raise ValueError(f"x_scale must be one of {sorted(scale_kwargs)}, got {x_scale!r}")
    scale, kwargs = scale_kwargs[x_scale]
    for ax, label in ((ax_fid, fid_label), (ax_is, is_label)):
        ax.set_xscale(scale, **kwargs)
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
