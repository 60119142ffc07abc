"""A distilled student as eps_fns: the w-conditioned network, and ``Student.at(w)``, the eps_fn at one w.

A guidance-distilled network ε_η(z, λ, c, w) (Meng et al. 2023, arXiv 2210.03142) is trained to equal the
teacher's guided prediction ε̃_w = (1 + w) ε_θ(z, c) - w ε_θ(z) in ONE forward pass of B rows. It is not an eps_fn
itself (it takes w); ``Student.at(w)`` binds w and returns a ``GuidedStudent``, an ordinary eps_fn

    eps = student.at(w)(z, logsnr, labels)          # one network call of B rows, at any w

which every sampler takes unchanged. No guidance wrapper is put around it (it is already guided) and nothing
passes w to the network but ``at``. Labels are meant to be classes c < K: the student was trained on guided
predictions, and the guided prediction of the null label is the unconditional one at every w.

Range policy: a student is only trained for w in its range [w_min, w_max] (recorded in its run), and the Fourier
features of w are not built to extrapolate, so ``at(w)`` REFUSES a w outside the range (``WRangeError``, one
line; the CLI exits 2).

A distilled run records ``distillation`` in its checkpoint metadata (see ``distillation_info``): the stage
("guidance" or "progressive"), the w range, the teacher (path, step, SHA-256 of its checkpoint) and, for a
progressive stage, the sampler and steps it was distilled for.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cfgdiff.core.schedule import alpha_sigma

DISTILLATION_KEY = "distillation"  # checkpoint metadata key of a distilled run
STAGE_GUIDANCE = "guidance"  # stage 1: w-conditioned student of a CFG teacher
STAGE_PROGRESSIVE = "progressive"  # stage 2: N/2 DDIM steps of a w-conditioned teacher's N

__all__ = [
    "DISTILLATION_KEY",
    "STAGE_GUIDANCE",
    "STAGE_PROGRESSIVE",
    "GuidedStudent",
    "Student",
    "WRange",
    "WRangeError",
    "distillation_info",
    "file_sha256",
    "load_student",
    "output_to_eps",
    "w_conditioned",
]


class WRangeError(ValueError):
    """A w range that is empty or reversed, or a w outside a student's range (one line)."""


@dataclass(frozen=True)
class WRange:
    """The closed interval [w_min, w_max] of guidance weights (the paper's w) a student is trained on."""

    w_min: float
    w_max: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.w_min) and math.isfinite(self.w_max)):
            raise WRangeError(f"the w range needs finite ends, got [{self.w_min:g}, {self.w_max:g}]")
        if not self.w_min < self.w_max:
            kind = "empty" if self.w_min == self.w_max else "reversed"
            raise WRangeError(f"the w range [{self.w_min:g}, {self.w_max:g}] is {kind}; give W_MIN,W_MAX with "
                              "W_MIN < W_MAX, e.g. 0,4")

    @classmethod
    def parse(cls, text: str) -> WRange:
        """``"0,4"`` -> WRange(0, 4)."""
        parts = [p.strip() for p in str(text).split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise WRangeError(f"the w range must be two numbers W_MIN,W_MAX, got {text!r}") from None
        if len(values) != 2:
            raise WRangeError(f"the w range must be two numbers W_MIN,W_MAX, got {text!r}")
        return cls(values[0], values[1])

    def to_json(self) -> list[float]:
        return [self.w_min, self.w_max]

    @classmethod
    def from_json(cls, data: Any) -> WRange:
        return cls(float(data[0]), float(data[1]))

    def __contains__(self, w: float) -> bool:
        return self.w_min <= float(w) <= self.w_max

    def contains(self, other: WRange) -> bool:
        """True when ``other`` lies inside this range."""
        return self.w_min <= other.w_min and other.w_max <= self.w_max

    def check(self, w: float) -> float:
        """w itself, or ``WRangeError`` when it lies outside the range (students do not extrapolate)."""
        w = float(w)
        if w not in self:
            raise WRangeError(f"w = {w:g} lies outside this student's training range [{self.w_min:g}, "
                              f"{self.w_max:g}]; a distilled student is refused outside it (it does not "
                              "extrapolate)")
        return w

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        """w ~ U(w_min, w_max), one per row: [n] float32."""
        u = torch.rand(n, generator=generator, device=device)
        return self.w_min + (self.w_max - self.w_min) * u

    def __str__(self) -> str:
        return f"[{self.w_min:g}, {self.w_max:g}]"


def output_to_eps(
    output: torch.Tensor, z: torch.Tensor, logsnr: torch.Tensor, noise_end_logsnr: float | None
) -> torch.Tensor:
    """ε̂ from a student network's output o: o itself (ε-prediction), except at the noise end.

    Where λ < ``noise_end_logsnr`` the output is read as o = z - x̂ (x̂ = z - o), so that

        ε̂ = (z - α x̂)/σ = ((1 - α) z + α o)/σ.

    Why: a DDIM step's x̂ = (z - σ ε̂)/α multiplies an ε-network's error by σ/α = e^{-λ/2} (22026 at λ = -20),
    so an ε-parameterised student cannot express the first step of a few-step sampler (Salimans & Ho 2022, Sec. 4,
    make the same point). Read as z - x̂, the same output is well conditioned there, and a network copied from an
    ε-predicting teacher (o ≈ ε ≈ z at λ = -20) starts at x̂ ≈ 0 instead of at an amplified error. With
    ``noise_end_logsnr`` None (stage-1 students) the output is ε̂ at every λ.
    """
    if noise_end_logsnr is None:
        return output
    alpha, sigma = alpha_sigma(logsnr.to(torch.float64))
    shape = (-1, *([1] * (z.ndim - 1)))
    alpha, sigma = alpha.reshape(shape).to(z.dtype), sigma.reshape(shape).to(z.dtype)
    noise_end = (logsnr < noise_end_logsnr).reshape(shape)
    return torch.where(noise_end, ((1 - alpha) * z + alpha * output.to(z.dtype)) / sigma, output.to(z.dtype))


class GuidedStudent(nn.Module):
    """The eps_fn of a w-conditioned student at one fixed w: ``eps = ε_η(z, λ, c, w)``, one call of B rows.

    Carries the eps_fn attributes (``num_classes``, ``data_shape``, ``class_names``, ``x_bound``) and ``w``;
    ``distilled = True`` tells callers that it is already guided (put no guidance wrapper around it).
    """

    distilled = True

    def __init__(self, network: nn.Module, w: float, noise_end_logsnr: float | None = None) -> None:
        super().__init__()
        self.network = network
        self.w = float(w)
        self.noise_end_logsnr = noise_end_logsnr
        self.num_classes = int(network.num_classes)
        self.data_shape = tuple(network.data_shape)
        self.class_names = tuple(getattr(network, "class_names", ()))
        self.x_bound = float(getattr(network, "x_bound", 1.0))

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ε̃_w(z, λ, c) of the student: z [B, ...], logsnr [B], labels [B] -> [B, ...]."""
        output = self.network(z, logsnr, labels, self.w)
        return output_to_eps(output, z, logsnr.reshape(-1).expand(z.shape[0]), self.noise_end_logsnr)

    def extra_repr(self) -> str:
        return f"w={self.w:g}"


class Student:
    """A distilled, w-conditioned network with its w range; ``at(w)`` is the guided eps_fn at w.

    ``info`` is the run's ``distillation`` record (stage, teacher, w range, sampling for a progressive stage).
    """

    def __init__(self, network: nn.Module, w_range: WRange, info: dict[str, Any] | None = None) -> None:
        if not getattr(network, "w_embedding", False):
            raise ValueError("a Student needs a network built with w_embedding=True")
        self.network = network
        self.w_range = w_range
        self.info = dict(info or {})
        self.num_classes = int(network.num_classes)
        self.data_shape = tuple(network.data_shape)
        self.class_names = tuple(getattr(network, "class_names", ()))
        self.x_bound = float(getattr(network, "x_bound", 1.0))

    def at(self, w: float) -> GuidedStudent:
        """The eps_fn ε̃_w = ε_η(·, ·, ·, w); ``WRangeError`` for w outside the training range."""
        return GuidedStudent(self.network, self.w_range.check(w), self.noise_end_logsnr)

    @property
    def noise_end_logsnr(self) -> float | None:
        """λ below which the network's output is read as z - x̂ (``output_to_eps``); None for stage 1."""
        value = self.info.get("noise_end_logsnr")
        return None if value is None else float(value)

    def w_eps_fn(self):
        """The student as a w-conditioned denoiser f(z, λ, c, w) -> ε̂ (the teacher of a progressive stage)."""
        return w_conditioned(self.network, self.noise_end_logsnr)

    @property
    def stage(self) -> str:
        return str(self.info.get("stage", STAGE_GUIDANCE))

    @property
    def sampling(self) -> dict[str, Any] | None:
        """{"sampler", "steps", "grid", ...} a progressive stage was distilled for; None for stage 1."""
        return self.info.get("sampling")

    def record(self) -> dict[str, Any]:
        """What a sweep's ``meta`` says about the student (``GuidedRun.record``)."""
        return {"distilled": self.describe(), "w_range": self.w_range.to_json()}

    def describe(self) -> str:
        """One line for reports: stage, w range, teacher."""
        teacher = self.info.get("teacher", {})
        text = f"distilled ({self.stage} stage), w range {self.w_range}"
        if self.sampling:
            text += f", {self.sampling['steps']} {self.sampling['sampler']} steps"
        if teacher:
            text += f"; teacher {teacher.get('run_dir')} (step {teacher.get('step')}, " \
                    f"sha256 {str(teacher.get('sha256', ''))[:12]})"
        return text


def w_conditioned(network: nn.Module, noise_end_logsnr: float | None = None):
    """f(z, λ, c, w) = ε̂ of a w-conditioned network (its output through ``output_to_eps``)."""

    def eps_fn(z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logsnr = logsnr.reshape(-1).expand(z.shape[0])
        return output_to_eps(network(z, logsnr, labels, w), z, logsnr, noise_end_logsnr)

    eps_fn.num_classes = int(network.num_classes)  # type: ignore[attr-defined]
    return eps_fn


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (the teacher's content hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_path(run_dir: str | os.PathLike) -> Path:
    from cfgdiff.runtime.checkpoint import resolve_checkpoint

    return resolve_checkpoint(run_dir, "checkpoint.safetensors")


def distillation_info(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``distillation`` record of a run (directory or checkpoint file), or None for an ordinary run.

    Raises ``cfgdiff.runtime.checkpoint.CheckpointError`` for a missing or foreign checkpoint.
    """
    from cfgdiff.runtime.checkpoint import read_metadata

    info = read_metadata(_checkpoint_path(run_dir)).get(DISTILLATION_KEY)
    return dict(info) if info else None


def load_student(run_dir: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu") -> Student:
    """The ``Student`` of a distilled run (EMA weights by default), in eval mode on ``device``."""
    from cfgdiff.training import load_model

    info = distillation_info(run_dir)
    if info is None:
        raise ValueError(f"{run_dir} is not a distilled run (no {DISTILLATION_KEY!r} record in its checkpoint)")
    network = load_model(run_dir, ema=ema, device=device)
    return Student(network, WRange.from_json(info["w_range"]), info)
