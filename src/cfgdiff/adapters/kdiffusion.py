"""k-diffusion's denoiser convention both ways: cfgdiff eps_fns as ``D(x, sigma, **extra)`` and back.

k-diffusion (Karras et al. 2022; crowsonkb/k-diffusion) samples with a denoiser D(x; σ) in the
variance-exploding convention x = x_0 + σ n. cfgdiff's variance-preserving z at log-SNR λ maps onto it by

    x = z / α,   σ_ve = σ/α = e^{-λ/2},   α = 1/sqrt(1 + σ_ve²),   D(x; σ_ve) = x̂ = x - σ_ve ε̂,

so ``KDiffusionDenoiser(eps_fn)`` is a k-diffusion denoiser (its samplers, e.g. ``k_diffusion.sampling
.sample_dpmpp_2m(denoiser, x, sigmas, extra_args={"class_cond": labels})``, run on any cfgdiff model, guided or not:
wrap ``cfg(model, w)``), and ``EpsFnFromDenoiser(D, num_classes)`` is a cfgdiff eps_fn with
ε̂ = (x - D(x; σ_ve)) / σ_ve (cfgdiff's samplers, guidance and evaluation run on any k-diffusion model). The
class labels travel as the keyword ``class_cond`` (k-diffusion's image transformers' name), or another
``label_key``. Guidance stays on cfgdiff's side and in cfgdiff's w (k-diffusion's ``cfg_scale`` is s = w + 1).

Neither wrapper imports k_diffusion. ``kdiffusion_sampling()`` returns ``k_diffusion.sampling`` for running its
samplers; k-diffusion is an optional extra installed without its dependencies
(``pip install --no-deps k-diffusion torchdiffeq torchsde trampoline``), whose package ``__init__`` also imports
torchvision, scikit-image, CLIP and wandb: when that import fails, the sampling module is loaded under a bare
package stub with its one helper from ``k_diffusion.utils`` (``append_dims``) given here.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any

import torch

from cfgdiff.core.contract import EpsFn
from cfgdiff.core.diffusion import logsnr_from_sigma_ve, sigma_ve_from_logsnr
from cfgdiff.core.schedule import alpha_sigma

LABEL_KEY = "class_cond"
KDIFFUSION_INSTALL = "pip install --no-deps k-diffusion torchdiffeq torchsde trampoline"


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] (or a scalar) -> [B, 1, ..., 1] broadcastable over ``like``, in its dtype."""
    values = values.to(like.device, like.dtype)
    if values.ndim == 0:
        values = values.expand(like.shape[0])
    return values.reshape(-1, *([1] * (like.ndim - 1)))


class KDiffusionDenoiser(torch.nn.Module):
    """A cfgdiff eps_fn as a k-diffusion denoiser: D(x, σ_ve, class_cond=labels) = x - σ_ve ε̂(α x, λ, labels)
    with λ = -2 log σ_ve and α = 1/sqrt(1 + σ_ve²). σ_ve must be > 0 (k-diffusion's samplers never evaluate the
    denoiser at σ = 0). ``num_classes`` is passed through (null label K)."""

    def __init__(self, eps_fn: EpsFn, *, label_key: str = LABEL_KEY) -> None:
        super().__init__()
        self.eps_fn = eps_fn
        self.label_key = label_key
        self.num_classes = eps_fn.num_classes
        if hasattr(eps_fn, "data_shape"):
            self.data_shape = tuple(eps_fn.data_shape)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        if self.label_key not in extra:
            raise ValueError(f"the denoiser needs the class labels as the keyword {self.label_key!r} "
                             f"(extra_args={{'{self.label_key}': labels}}; the null label is {self.num_classes})")
        labels = torch.as_tensor(extra[self.label_key], dtype=torch.long, device=x.device)
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.reshape(-1)
        sigma64 = sigma.to(torch.float64)
        logsnr = logsnr_from_sigma_ve(sigma64)  # [B]
        alpha = torch.rsqrt(1.0 + sigma64**2)  # α = 1/sqrt(1 + σ_ve²)
        z = x * _bcast(alpha, x)
        eps = self.eps_fn(z, logsnr.to(x.dtype), labels)
        return x - _bcast(sigma64, x) * eps


class EpsFnFromDenoiser:
    """A k-diffusion denoiser D(x, σ_ve, **extra) as a cfgdiff eps_fn: ε̂(z, λ, c) = (x - D(x; σ_ve)) / σ_ve with
    x = z/α and σ_ve = e^{-λ/2}; the labels go to D as ``extra[label_key]``. ``num_classes`` is K, the label
    the denoiser was trained with as its null class (k-diffusion's ``cond_dropout_rate`` uses an extra class
    index, like cfgdiff); ``data_shape`` is what its samples look like."""

    def __init__(self, denoiser: Callable[..., torch.Tensor], num_classes: int, *,
                 data_shape: tuple[int, ...] | None = None, label_key: str = LABEL_KEY,
                 extra: dict[str, Any] | None = None) -> None:
        self.denoiser = denoiser
        self.num_classes = int(num_classes)
        self.label_key = label_key
        self.extra = dict(extra or {})
        if data_shape is not None:
            self.data_shape = tuple(data_shape)

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logsnr64 = logsnr.reshape(-1).to(torch.float64)
        sigma = sigma_ve_from_logsnr(logsnr64)  # [B]
        alpha, _ = alpha_sigma(logsnr64)  # α = sqrt(sigmoid(λ))
        x = z / _bcast(alpha, z)
        denoised = self.denoiser(x, sigma.to(z.dtype), **{**self.extra, self.label_key: labels})
        return ((x - denoised.to(z.dtype)) / _bcast(sigma, z)).to(z.dtype)


def to_kdiffusion(eps_fn: EpsFn, *, label_key: str = LABEL_KEY) -> KDiffusionDenoiser:
    """``eps_fn`` (any cfgdiff eps_fn, e.g. ``cfg(model, w)``) as a k-diffusion denoiser D(x, sigma, **extra)."""
    return KDiffusionDenoiser(eps_fn, label_key=label_key)


def from_kdiffusion(denoiser: Callable[..., torch.Tensor], num_classes: int, *,
                    data_shape: tuple[int, ...] | None = None, label_key: str = LABEL_KEY) -> EpsFnFromDenoiser:
    """A k-diffusion denoiser as a cfgdiff eps_fn with null label ``num_classes``."""
    return EpsFnFromDenoiser(denoiser, num_classes, data_shape=data_shape, label_key=label_key)


def sigmas_from_logsnr_grid(grid: torch.Tensor, *, end_at_zero: bool = True) -> torch.Tensor:
    """A cfgdiff λ grid (ascending) as k-diffusion's descending σ_ve list; ``end_at_zero`` replaces its last value
    (the target of the last step, never evaluated) by 0, as k-diffusion's ``append_zero`` grids end."""
    sigmas = sigma_ve_from_logsnr(torch.as_tensor(grid, dtype=torch.float64))
    if end_at_zero:
        sigmas = sigmas.clone()
        sigmas[-1] = 0.0
    return sigmas


def logsnr_grid_from_sigmas(sigmas: torch.Tensor, *, terminal_logsnr: float | None = None) -> torch.Tensor:
    """k-diffusion's descending σ_ve list as a cfgdiff λ grid; a final σ = 0 becomes ``terminal_logsnr``
    (default: the last positive σ's λ + 40, where z/α differs from x̂ by e^{-20} σ_ve)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    positive = sigmas[sigmas > 0]
    grid = logsnr_from_sigma_ve(positive)
    if positive.numel() < sigmas.numel():
        end = float(grid[-1]) + 40.0 if terminal_logsnr is None else float(terminal_logsnr)
        grid = torch.cat([grid, torch.tensor([end], dtype=torch.float64)])
    return grid


def _append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """k_diffusion.utils.append_dims: trailing singleton dimensions up to ``target_dims``."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def kdiffusion_sampling() -> types.ModuleType:
    """``k_diffusion.sampling``, imported normally, or (when the package's ``__init__`` cannot import because of
    torchvision, scikit-image, CLIP, ...) loaded from its file under a bare package stub whose ``utils`` holds
    only ``append_dims``, the one helper the sampling module takes from it. Raises ``ImportError`` when
    k-diffusion or its sampling dependencies (torchdiffeq, torchsde, scipy, tqdm) are missing."""
    try:
        import k_diffusion.sampling as sampling

        return sampling
    except ImportError as err:
        first_error = err
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"k-diffusion is not installed ({first_error}): {KDIFFUSION_INSTALL}") from None
    saved = {name: sys.modules.get(name) for name in ("k_diffusion", "k_diffusion.utils", "k_diffusion.sampling")}
    stub = types.ModuleType("k_diffusion")
    stub.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims
    stub.utils = utils
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = stub, utils
    try:
        path = f"{stub.__path__[0]}/sampling.py"
        module_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", path)
        sampling = importlib.util.module_from_spec(module_spec)
        sys.modules["k_diffusion.sampling"] = sampling
        module_spec.loader.exec_module(sampling)
    except ImportError as err:
        raise ImportError(f"cannot import k_diffusion.sampling ({err}): {KDIFFUSION_INSTALL}") from None
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return sampling
