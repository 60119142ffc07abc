"""The ``Dataset`` every loader returns and the ``DataSpec`` that names one.

A ``Dataset`` keeps images as they are stored on disk, uint8 [N, C, H, W] (4× less memory than float32), and
converts per batch: x = v · 2/pixel_max - 1 ∈ [-1, 1] (``to_x``). Vector data (the 2-D mixture) is stored as
float32 [N, D] and ``to_x`` is the identity. ``stored`` may be backed by a read-only memory map of the data
cache (``in_memory`` is then False; see ``cfgdiff.data.source`` for the memory budget), in which case training
streams it through a ``torch.utils.data.DataLoader``; never write into such a tensor.

A ``DataSpec`` is the JSON-serialisable description of where the data comes from and how it is read; a run
directory records it, so ``sample`` and ``eval`` need no data argument again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

SPLITS = ("train", "test", "all")


class DataError(ValueError):
    """Data that cannot be read as asked: a missing path, a corrupt file, mismatched counts, ... (exit 2)."""


@dataclass(frozen=True)
class DataSpec:
    """Where a data set comes from and how to read it; ``to_json``/``from_json`` round-trip."""

    source: str  # a built-in name ("digits", "gmm2d"), a path, or "hf:PATH"
    format: str | None = None  # force a format instead of detecting it from the content
    image_size: int | None = None  # resize the shorter side to this, then centre-crop (image folders, zips, hf)
    channels: int | None = None  # 1 (grayscale) or 3 (RGB); None keeps the source's
    class_names: tuple[str, ...] | None = None  # names for formats that carry none
    test_fraction: float = 0.1  # held-out share when the source has no test split (stratified, seeded)
    split_seed: int = 0  # seed of that held-out split
    image_column: str | None = None  # Hugging Face datasets: the image column (None: found from the features)
    label_column: str | None = None  # Hugging Face datasets: the label column (None: found from the features)
    hflip: bool | None = None  # random horizontal flips in training; None: the data's default (on for RGB)

    def validate(self) -> None:
        """Raise ``DataError`` (one line) for values no loader can use."""
        if not isinstance(self.source, str) or not self.source:
            raise DataError("the data source must be a non-empty string (a built-in name or a path)")
        if self.image_size is not None and not (isinstance(self.image_size, int) and self.image_size >= 1):
            raise DataError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.channels not in (None, 1, 3):
            raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        if not (isinstance(self.test_fraction, (int, float)) and 0.0 < self.test_fraction < 1.0):
            raise DataError(f"test_fraction must lie strictly between 0 and 1, got {self.test_fraction!r}")
        if self.class_names is not None:
            if not self.class_names or any(not isinstance(n, str) or not n for n in self.class_names):
                raise DataError("class names must be non-empty strings")
            if len(set(self.class_names)) != len(self.class_names):
                raise DataError(f"class names must be distinct: {', '.join(self.class_names)}")

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.class_names is not None:
            out["class_names"] = list(self.class_names)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> DataSpec:
        if isinstance(data, str):
            return cls(source=data)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("class_names") is not None:
            values["class_names"] = tuple(values["class_names"])
        return cls(**values)


@dataclass(frozen=True)
class Dataset:
    """One split of a labelled data set.

    ``stored``: images uint8 [N, C, H, W] (``pixel_max`` is the stored value of white: 255, or 16 for the
    digits), or vectors float32 [N, D] (``pixel_max`` None). ``labels``: int64 [N] in [0, num_classes).
    """

    name: str  # display name: "digits", "fashion-mnist", "cifar10", a folder's name, ...
    stored: torch.Tensor  # uint8 [N, C, H, W] images or float32 [N, D] vectors, possibly memory-mapped
    labels: torch.Tensor  # int64 [N]
    num_classes: int  # K; label K is the null class of the diffusion model
    class_names: tuple[str, ...]
    x_bound: float  # |x| <= x_bound on the data: the sampler's default clip of x̂
    pixel_max: int | None = None  # images: stored value of a white pixel; None for vectors
    hflip_default: bool = False  # default of random horizontal flips in training (RGB photos: yes)
    in_memory: bool = True  # False when ``stored`` is a memory map (training then streams it)
    source: dict[str, Any] = field(default_factory=dict)  # provenance: spec, format, path, sizes, content hash

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.stored.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.stored.ndim == 4

    def __len__(self) -> int:
        return int(self.stored.shape[0])

    def to_x(self, stored: torch.Tensor) -> torch.Tensor:
        """Stored rows to model inputs: images x = v · 2/pixel_max - 1 in [-1, 1] (float32); vectors unchanged."""
        if self.pixel_max is None:
            return stored.to(torch.float32)
        return stored.to(torch.float32) * (2.0 / self.pixel_max) - 1.0

    @property
    def x(self) -> torch.Tensor:
        """Every example as model input (float32): materialises the whole split; for small sets and statistics."""
        return self.to_x(torch.as_tensor(self.stored))
