"""Figures: sample grids (exact pixel layout) and the exact guided densities of the paper's Figure 2.

The density checks are derivations, not golden numbers:

* normalisation: ``guided_density_grid`` divides by the grid sum × cell area, so Σ p̃ · area = 1;
* at w = 0 the guided target p(x | c) p(c | x)^0 is the class Gaussian N(μ_c, s_c² I) itself;
* for p̃_w ∝ p(x | c) q(x)^w with q = p(c | x), d/dw E_w[f] = Cov_w(f, log q). With f = q (or log q) this is
  the covariance of q with an increasing function of itself, hence ≥ 0: the expected classifier confidence
  under the guided density never decreases with w. The same holds exactly for the discrete grid distribution.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from cfgdiff.core.toy import GaussianMixture
from cfgdiff.evaluation.plotting import (
    _grid_layout,
    default_extent,
    guided_density_grid,
    save_sample_grid,
    toy_guidance_figure,
)


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return GaussianMixture.three_gaussians()


def _open_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return np.asarray(image.convert("RGB"))


# -- save_sample_grid -------------------------------------------------------------------------------------


def test_sample_grid_pixels_land_where_the_layout_says(tmp_path):
    """Class 0 all white, class 1 all black: each image's centre in the PNG has its class's colour."""
    num_classes, n, size = 2, 3, 8
    images = np.empty((num_classes, n, 1, size, size))
    images[0], images[1] = 5.0, -1.0  # 5 is clipped to 1 (white)
    samples = {0.0: images, 1.0: torch.from_numpy(images)}
    path = tmp_path / "grid.png"
    save_sample_grid(samples, path, class_names=["zero", "one"], title="digits")

    pixels = _open_png(path)  # [H, W, 3], origin top left
    layout = _grid_layout(images.shape, len(samples), ["zero", "one"], has_title=True)
    fig_w, fig_h = layout.size
    assert pixels.shape == (fig_h, fig_w, 3)
    scale = layout.scale
    assert scale * size >= 48  # upscaled to legible cells
    for left, bottom, box_w, box_h in layout.boxes:
        assert (box_w, box_h) == ((n * size + n + 1) * scale, (num_classes * size + num_classes + 1) * scale)
        top = fig_h - bottom - box_h
        for k, expected in ((0, 255), (1, 0)):
            for j in range(n):
                y = top + (1 + k * (size + 1) + size // 2) * scale
                x = left + (1 + j * (size + 1) + size // 2) * scale
                assert np.all(pixels[y, x] == expected), (k, j, pixels[y, x])
    # the second panel sits one panel width plus a fixed gap to the right of the first
    (l0, _, w0, _), (l1, _, _, _) = layout.boxes
    assert l1 > l0 + w0


def test_sample_grid_rgb_colours_and_aspect(tmp_path):
    """C = 3 at 32×32: a pure-red class is drawn red; one panel of 4×5 images is wider than tall."""
    images = -np.ones((4, 5, 3, 32, 32), dtype=np.float32)
    images[0, :, 0] = 1.0  # class 0 red
    images[2, :, 1] = 1.0  # class 2 green
    path = tmp_path / "cifar.png"
    save_sample_grid({2.0: images}, path)
    pixels = _open_png(path)
    layout = _grid_layout(images.shape, 1, ["0", "1", "2", "3"], has_title=False)
    left, bottom, box_w, box_h = layout.boxes[0]
    assert pixels.shape[:2] == layout.size[::-1]
    assert box_w * (4 * 32 + 5) == box_h * (5 * 32 + 6)  # panel aspect = mosaic aspect
    scale, top = layout.scale, layout.size[1] - bottom - box_h
    centre = (1 + 16) * scale
    assert tuple(pixels[top + centre, left + centre]) == (255, 0, 0)
    assert tuple(pixels[top + (1 + 2 * 33 + 16) * scale, left + centre]) == (0, 255, 0)


def test_sample_grid_mnist_size(tmp_path):
    path = tmp_path / "mnist.png"
    save_sample_grid({w: torch.rand(10, 4, 1, 28, 28) * 2 - 1 for w in (0.0, 0.5, 4.0)}, path)
    pixels = _open_png(path)
    assert pixels.shape[1] > pixels.shape[0] > 0
    assert pixels.std() > 0


@pytest.mark.parametrize(
    "shapes",
    [
        [(3, 4, 1, 8, 8), (3, 5, 1, 8, 8)],  # n differs
        [(3, 4, 1, 8, 8), (3, 4, 3, 8, 8)],  # C differs
        [(3, 4, 1, 8, 8), (2, 4, 1, 8, 8)],  # K differs
        [(3, 4, 1, 8, 8), (3, 4, 1, 28, 28)],  # H, W differ
        [(4, 1, 8, 8)],  # not 5-D
        [(3, 4, 2, 8, 8)],  # C not 1 or 3
    ],
)
def test_sample_grid_rejects_bad_shapes(tmp_path, shapes):
    samples = {float(i): np.zeros(shape) for i, shape in enumerate(shapes)}
    with pytest.raises(ValueError):
        save_sample_grid(samples, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_sample_grid_rejects_empty_and_wrong_class_names(tmp_path):
    with pytest.raises(ValueError):
        save_sample_grid({}, tmp_path / "empty.png")
    with pytest.raises(ValueError):
        save_sample_grid({0.0: np.zeros((3, 2, 1, 8, 8))}, tmp_path / "names.png", class_names=["a", "b"])


# -- guided densities -------------------------------------------------------------------------------------


def _grid_points(xs: np.ndarray, ys: np.ndarray) -> torch.Tensor:
    grid_x, grid_y = np.meshgrid(xs, ys)  # [G, G], indexed [iy, ix] like the densities
    return torch.from_numpy(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1))


def test_density_grid_is_normalised(mixture):
    extent = default_extent(mixture)
    for w in (0.0, 3.0):
        xs, ys, densities = guided_density_grid(mixture, w, 64, extent)
        assert xs.shape == ys.shape == (64,)
        assert densities.shape == (mixture.num_classes, 64, 64) and densities.dtype == np.float64
        assert np.all(np.isfinite(densities)) and np.all(densities >= 0)
        cell_area = (xs[1] - xs[0]) * (ys[1] - ys[0])
        np.testing.assert_allclose(np.diff(xs), xs[1] - xs[0], rtol=1e-9)
        assert extent[0] < xs[0] < xs[-1] < extent[1] and extent[2] < ys[0] < ys[-1] < extent[3]
        np.testing.assert_allclose(densities.sum(axis=(1, 2)) * cell_area, 1.0, atol=1e-6)


def test_default_extent_covers_three_gaussians(mixture):
    x_min, x_max, y_min, y_max = default_extent(mixture)
    assert math.isclose(x_max - x_min, y_max - y_min)  # square
    means, std = mixture.means.numpy(), float(mixture.stds.max())
    assert x_min <= means[:, 0].min() - 4 * std and x_max >= means[:, 0].max() + 4 * std
    assert y_min <= means[:, 1].min() - 4 * std and y_max >= means[:, 1].max() + 4 * std
    assert 1.4 < (x_max - x_min) / 2 < 1.8  # about ±1.6


def test_density_at_w0_is_the_class_gaussian(mixture):
    """p(x | c) p(c | x)^0 = N(x; μ_c, s_c² I); the extent holds all but ~1e-6 of its mass."""
    xs, ys, densities = guided_density_grid(mixture, 0.0, 60)
    points = _grid_points(xs, ys).numpy()  # [G², 2]
    for c in range(mixture.num_classes):
        mean, std = mixture.means[c].numpy(), mixture.stds[c].numpy()
        gauss = np.exp(-0.5 * (((points - mean) / std) ** 2).sum(1)) / (2 * math.pi * std.prod())
        np.testing.assert_allclose(densities[c].ravel(), gauss, atol=1e-5 * gauss.max())


def test_guidance_concentrates_mass_where_the_classifier_is_sure(mixture):
    """E_w[p(c | x)] and E_w[log p(c | x)] under the normalised guided density never decrease with w."""
    w_values = (0.0, 1.0, 3.0, 8.0, 30.0)
    extent = default_extent(mixture)
    confidence, log_confidence = [], []
    for w in w_values:
        xs, ys, densities = guided_density_grid(mixture, w, 48, extent)
        cell_area = (xs[1] - xs[0]) * (ys[1] - ys[0])
        log_post = mixture.class_log_prob(_grid_points(xs, ys), 40.0).numpy().T  # [K, G²], data end
        mass = densities.reshape(mixture.num_classes, -1) * cell_area  # [K, G²], rows sum to 1
        confidence.append((mass * np.exp(log_post)).sum(1))
        log_confidence.append((mass * log_post).sum(1))
    confidence, log_confidence = np.array(confidence), np.array(log_confidence)  # [len(w), K]
    assert np.all(np.diff(confidence, axis=0) >= -1e-12)
    assert np.all(np.diff(log_confidence, axis=0) >= -1e-12)
    assert np.all(confidence[-1] > confidence[0] + 0.01)  # strictly: q is not constant on the grid
    assert np.all(confidence[-1] > 0.99)


def test_density_grid_rejects_bad_input(mixture):
    with pytest.raises(ValueError):
        guided_density_grid(GaussianMixture(torch.zeros(2, 3), torch.ones(2)), 1.0, 10)
    with pytest.raises(ValueError):
        guided_density_grid(mixture, 1.0, 10, (1.0, -1.0, -1.0, 1.0))


# -- toy figure -------------------------------------------------------------------------------------------


def _fake_samples(mixture, w_values, n=300, seed=0):
    generator = torch.Generator().manual_seed(seed)
    samples = {}
    for w in w_values:
        labels = mixture.sample_labels(n, generator)
        samples[w] = (mixture.sample(labels, generator), labels)
    return samples


def test_toy_figure_is_written(mixture, tmp_path):
    w_values = (0.0, 1.0, 3.0)
    samples = _fake_samples(mixture, w_values)
    samples[3.0] = tuple(a.numpy() for a in samples[3.0])  # numpy works too
    path = tmp_path / "sub" / "figure2.png"
    toy_guidance_figure(mixture, w_values, samples, path, grid_size=50)
    pixels = _open_png(path)
    assert pixels.shape[1] > pixels.shape[0] > 100  # three columns, two rows
    assert pixels.std() > 10  # not blank
    # the three class colours appear
    colours = pixels.reshape(-1, 3).astype(int)
    assert np.any((colours[:, 2] - colours[:, 0] > 60) & (colours[:, 2] > 150))  # blue
    assert np.any((colours[:, 0] - colours[:, 2] > 60) & (colours[:, 1] < 120))  # red
    assert np.any((colours[:, 1] - colours[:, 0] > 40) & (colours[:, 1] - colours[:, 2] > 40))  # green


def test_toy_figure_rejects_bad_samples(mixture, tmp_path):
    samples = _fake_samples(mixture, (0.0, 1.0), n=20)
    with pytest.raises(ValueError):
        toy_guidance_figure(mixture, (0.0, 1.0, 3.0), samples, tmp_path / "missing.png", grid_size=20)
    x, labels = samples[1.0]
    with pytest.raises(ValueError):
        toy_guidance_figure(mixture, (1.0,), {1.0: (x[:, :1], labels)}, tmp_path / "x.png", grid_size=20)
    with pytest.raises(ValueError):
        toy_guidance_figure(mixture, (1.0,), {1.0: (x, labels + 3)}, tmp_path / "labels.png", grid_size=20)
