"""Training configurations: the loop's knobs (``LoopConfig``), the diffusion run's (``TrainConfig``), the
per-data-set defaults, and what ``--resume`` may change.

``LoopConfig`` holds what every network's training shares (optimizer, schedule, EMA, checkpoints, batches,
distribution, precision); a kind of network extends it with what its loss and its model need (``TrainConfig``
for the diffusion model, ``cfgdiff.training.classifier.ClassifierConfig`` for the noisy classifier). ``batch_size`` is
the GLOBAL batch: the examples of one optimizer step, summed over all processes and accumulation steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from cfgdiff.core.schedule import LOGSNR_MAX, LOGSNR_MIN
from cfgdiff.models.presets import preset_for
from cfgdiff.runtime.precision import check_form_names

LOADERS = ("auto", "memory", "streaming")
OBJECTIVES = ("cfg", "gft")  # the diffusion run's training objectives (TrainConfig.objective)
LEGACY_FORM_SWITCHES = ("autocast", "channels_last")  # old LoopConfig fields, now precision / memory_format
LR_SCHEDULES = ("cosine", "constant")  # after the warm-up: cosine decay to lr_floor · lr at the last step, or flat

# The warm-up a run gets when none is asked for is at most this share of its steps (a preset's 500-step warm-up
# would otherwise outlast a 400-step run, whose learning rate would never reach its value).
WARMUP_FRACTION = 0.1


def warmup_for(steps: int, preset_warmup: int) -> int:
    """The warm-up of a run of ``steps`` steps whose preset asks for ``preset_warmup``:
    min(preset_warmup, floor(WARMUP_FRACTION · steps))."""
    return int(min(preset_warmup, math.floor(WARMUP_FRACTION * steps)))


@dataclass
class LoopConfig:
    """The training loop's knobs, shared by every kind of network (field names are the CLI's flags)."""

    steps: int = 4000  # total optimizer steps
    batch_size: int = 128  # GLOBAL batch: examples per optimizer step over all processes and accumulation steps
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    warmup_steps: int = 200  # linear warm-up of the learning rate
    lr_schedule: str = "cosine"  # after the warm-up: "cosine" (to lr_floor · lr at the last step) or "constant"
    lr_floor: float = 0.05  # the cosine schedule's last learning rate, as a share of lr
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    ema_decay: float = 0.999  # EMA of the weights, with warm-up min(decay, (1+t)/(10+t))
    seed: int = 0  # weights, data order, and every random draw of the loss (per rank, see batches.derive_seed)
    checkpoint_every: int = 500  # steps between checkpoints (and one at the start and at the end)
    log_every: int = 50  # steps between loss-log lines
    device: str = "cpu"  # under torchrun, "cuda" means cuda:LOCAL_RANK
    grad_accum: int = 1  # micro-batches per optimizer step and process (batch_size / (processes * grad_accum) each)
    keep: int = 3  # step-numbered checkpoints kept beside the latest (0: only the latest)
    save_every_minutes: float = 0.0  # also checkpoint when this much wall-clock time has passed (0: off)
    skip_nonfinite: int = 0  # batches with a non-finite loss or gradient skipped (no update) before stopping
    precision: str = "fp32"  # "fp32", "bf16" (autocast of the forward pass and the loss) or "auto" (measured)
    memory_format: str = "contiguous"  # "contiguous", "channels-last" (image networks and batches) or "auto"
    autocast: bool = False  # old switch: True means precision "bf16" (folded in at construction, then False)
    compile: bool = False  # torch.compile the network
    compile_backend: str = "inductor"  # torch.compile backend ("eager" needs no compiler: tests, debugging)
    channels_last: bool = False  # old switch: True means memory_format "channels-last" (folded in, then False)
    tf32: bool = True  # TF32 matmuls and convolutions on CUDA (Ampere and later)
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-exact --resume on CUDA too (slower)
    hflip: bool | None = None  # random horizontal flips (images only); None: the data set's default
    loader: str = "auto"  # "memory" (index a resident tensor), "streaming" (DataLoader), "auto" (by the data set)
    workers: int = 0  # DataLoader worker processes of the streaming loader
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard (needs the tensorboard package)

    def __post_init__(self) -> None:
        """Fold the old switches into the form: ``autocast`` is precision bf16, ``channels_last`` the channels-last
        layout (a config.json written before ``precision`` existed loads as what it trained with)."""
        if self.autocast and self.precision == "fp32":
            self.precision = "bf16"
        if self.channels_last and self.memory_format == "contiguous":
            self.memory_format = "channels-last"
        self.autocast = self.channels_last = False

    def validate(self) -> None:
        """Raise ValueError (one line) for values no run can use."""
        check_form_names(self.precision, self.memory_format)
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "keep", "skip_nonfinite", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not (math.isfinite(self.save_every_minutes) and self.save_every_minutes >= 0):
            raise ValueError(f"save_every_minutes must be >= 0, got {self.save_every_minutes}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
        if not (math.isfinite(self.lr_floor) and 0.0 <= self.lr_floor <= 1.0):
            raise ValueError(f"lr_floor must lie in [0, 1], got {self.lr_floor}")
        if self.loader not in LOADERS:
            raise ValueError(f"unknown loader {self.loader!r}; choose from {', '.join(LOADERS)}")

    def to_json(self) -> dict[str, Any]:
        """Every field but the old switches (folded into ``precision`` / ``memory_format``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in LEGACY_FORM_SWITCHES}

    @classmethod
    def from_json(cls, data: dict[str, Any]):
        """Build from a JSON object, ignoring unknown keys (so configs of other versions load)."""
        known = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in data.items() if k in known})
        if "hflip" not in data:  # written before flips existed: that run never flipped
            config.hflip = False
        if "lr_schedule" not in data:  # written before the cosine schedule existed: that run's lr stayed flat
            config.lr_schedule = "constant"
        return config


@dataclass
class TrainConfig(LoopConfig):
    """Every knob of a diffusion training run; written resolved to ``config.json``."""

    data: str = "digits"  # data source: a built-in name (cfgdiff.data.DATASETS) or a path
    data_spec: dict[str, Any] | None = None  # the full cfgdiff.data.DataSpec as JSON (None: DataSpec(data))
    p_uncond: float = 0.1  # label dropout probability (the paper's best)
    logsnr_schedule: str = "cosine"  # "cosine" (the paper's) or "uniform"
    logsnr_min: float = LOGSNR_MIN
    logsnr_max: float = LOGSNR_MAX
    model: dict[str, Any] = field(default_factory=dict)  # architecture config, see cfgdiff.models
    objective: str = "cfg"  # "cfg": Algorithm 1's label dropout; "gft": guidance-free training (losses.py)
    gft_w_max: float = 4.0  # gft: the largest w learned, β ~ U(1/(1 + gft_w_max), 1) (w = 1/β - 1 ∈ [0, w_max])

    def validate(self) -> None:
        """Raise ValueError for values no run can use."""
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {self.p_uncond}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}")
        if self.objective == "gft":
            if not 0.0 < self.p_uncond < 1.0:  # GFT's target needs the unconditional model and the conditional one
                raise ValueError(f"objective gft needs 0 < p_uncond < 1 (it learns the unconditional model from the "
                                 f"dropped labels), got {self.p_uncond}")
            if not (math.isfinite(self.gft_w_max) and self.gft_w_max > 0):
                raise ValueError(f"gft_w_max must be a positive number, got {self.gft_w_max}")
        super().validate()
        if self.logsnr_schedule not in ("cosine", "uniform"):
            raise ValueError(f"unknown logsnr schedule {self.logsnr_schedule!r}; choose cosine or uniform")
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError("need logsnr_min < logsnr_max")


# Per-data-set defaults: chosen so the digits run gives recognisable digits in about 10 minutes on 2 cores.
DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {
        "steps": 4000,
        "batch_size": 128,
        "lr": 2e-3,
        "model": {"arch": "unet", "base_channels": 16, "channel_mults": [1, 2, 4], "num_res_blocks": 1},
    },
    "gmm2d": {
        "steps": 3000,
        "batch_size": 512,
        "lr": 1e-3,
        "warmup_steps": 100,
        "ema_decay": 0.995,
        "checkpoint_every": 1000,
        "model": {"arch": "mlp", "hidden": 128, "depth": 3},
    },
}


# Defaults for data sets given as a path come from the model presets (``cfgdiff.models.presets``), by shape.
# The shape of each built-in data set, for ``--model SIZE`` on it.
BUILTIN_SHAPES: dict[str, tuple[int, ...]] = {"digits": (1, 8, 8), "gmm2d": (2,)}


def data_spec_of(config: TrainConfig):
    """The ``cfgdiff.data.DataSpec`` a config trains on."""
    from cfgdiff.data import DataSpec

    return DataSpec.from_json(config.data_spec) if config.data_spec else DataSpec(source=config.data)


def preset_defaults(data: str, *, data_shape: tuple[int, ...] | None = None, size: str | None = None,
                    device: str = "cpu") -> dict[str, Any]:
    """The training defaults of a data set before any override (see ``default_config``)."""
    if data in DATA_DEFAULTS and size is None:
        return DATA_DEFAULTS[data]
    if data in BUILTIN_SHAPES or data_shape is not None:
        shape = BUILTIN_SHAPES[data] if data in BUILTIN_SHAPES else tuple(data_shape)
        return preset_for(shape, size, device=device)
    raise ValueError(f"unknown data set {data!r}; choose from {', '.join(sorted(DATA_DEFAULTS))} or a path")


def default_config(data: str, *, data_shape: tuple[int, ...] | None = None, size: str | None = None,
                   **overrides: Any) -> TrainConfig:
    """The defaults for a data set, with ``overrides`` (None values ignored) on top.

    A warm-up not in ``overrides`` is the preset's cut to ``WARMUP_FRACTION`` of the steps (``warmup_for``).

    A built-in name without ``size`` gets its own defaults (``DATA_DEFAULTS``); otherwise the model preset
    ``preset_for(shape, size, device=overrides["device"])`` of the data's shape (``data_shape`` for a path)
    gives the architecture and the training defaults (``size`` None: the device's default size).
    """
    defaults = preset_defaults(data, data_shape=data_shape, size=size, device=str(overrides.get("device") or "cpu"))
    values: dict[str, Any] = {"data": data, **json.loads(json.dumps(defaults))}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("warmup_steps") is None:  # not asked for: the preset's, cut to WARMUP_FRACTION of the run
        preset_warmup = values.get("warmup_steps", LoopConfig.warmup_steps)
        values["warmup_steps"] = warmup_for(int(values.get("steps", LoopConfig.steps)), int(preset_warmup))
    config = TrainConfig(**values)
    config.validate()
    return config


# What ``--resume`` may change. A resumed run continues the same experiment: flags that only steer the
# optimisation, the bookkeeping or the speed may change (and the change is recorded in config.json and
# loss.jsonl); flags that define what is learned (data, flips, label dropout, λ distribution, architecture,
# seed) may not.
RESUME_MAY_CHANGE = frozenset({
    "steps", "device", "lr", "lr_schedule", "lr_floor", "batch_size", "warmup_steps", "grad_clip", "ema_decay",
    "weight_decay", "checkpoint_every", "log_every", "grad_accum", "keep", "save_every_minutes", "skip_nonfinite",
    "autocast", "compile", "compile_backend", "channels_last", "precision", "memory_format", "tf32", "deterministic",
    "loader", "workers", "tensorboard",
})
RESUME_FIXED = frozenset({"data", "p_uncond", "logsnr_schedule", "logsnr_min", "logsnr_max", "seed", "model",
                          "hflip", "objective", "gft_w_max"})


def apply_resume_changes(stored: LoopConfig, changes: dict[str, Any], *, step: int, may_change: frozenset[str],
                         fixed: frozenset[str]):
    """``stored`` with the explicitly asked ``changes`` applied, for any ``LoopConfig`` subclass.

    Returns (config, changed) where ``changed`` maps each changed field to [old, new]. Raises ``RunDirError``
    for a change of a field in ``fixed`` (or unknown) and when nothing is left to train.
    """
    from cfgdiff.training.rundir import RunDirError

    values = stored.to_json()
    changed: dict[str, Any] = {}
    for name, new in changes.items():
        if new is None or values.get(name) == new:
            continue
        if name in fixed:
            flag = "--" + name.replace("_", "-")
            raise RunDirError(f"{flag} cannot change on --resume (this run was trained with {values.get(name)!r}, "
                              f"asked for {new!r}); start a new run with --run-dir or --overwrite")
        if name not in may_change:
            raise RunDirError(f"unknown training option {name!r}")
        changed[name] = [values.get(name), new]
        values[name] = new
    config = type(stored).from_json(values)
    config.validate()
    if config.steps <= step:
        raise RunDirError(f"nothing left to train: the run is at step {step} and its total is {config.steps}; "
                          f"pass --steps N with N > {step} to train further")
    return config, changed


def resume_config(stored: TrainConfig, changes: dict[str, Any], *, step: int) -> tuple[TrainConfig, dict[str, Any]]:
    """The config of a resumed run: ``stored`` with the explicitly asked ``changes`` applied.

    Returns (config, changed) where ``changed`` maps each changed field to [old, new]. Raises ``RunDirError``
    for a change of a field in ``RESUME_FIXED`` and when nothing is left to train (the total ``steps`` is not
    above the checkpoint's ``step``).
    """
    return apply_resume_changes(stored, changes, step=step, may_change=RESUME_MAY_CHANGE, fixed=RESUME_FIXED)
