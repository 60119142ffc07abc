"""Training: one ``Trainer`` for every network cfgdiff trains, and the diffusion model's run.

Files, from the bottom up:

* ``config.py``: ``LoopConfig`` (the loop's knobs, shared), ``TrainConfig`` (the diffusion run's), per-data
  defaults, and what ``--resume`` may change (``RESUME_MAY_CHANGE``/``RESUME_FIXED``);
* ``losses.py``: the loss contract ``loss_fn(model, batch, generator) -> loss`` and the losses: Algorithm 1's
  ``DiffusionLoss``, ``NoisyClassifierLoss``, ``classifier_loss``;
* ``batches.py``: the resumable, shardable ``BatchStream`` (in memory or through a DataLoader);
* ``distributed.py``: joining torchrun's process group;
* ``trainer.py``: the ``Trainer`` (AdamW, warm-up, clipping, EMA, accumulation, DDP, autocast, compile);
* ``rundir.py``: run-directory layout, checks, and kill-safe checkpoint files (``--keep``);
* ``logs.py``: ``loss.jsonl`` and TensorBoard;
* ``loop.py``: ``fit``, the driver (checkpoints, resume, logging, signals), and ``train_or_resume``, the run
  around it that every kind of network shares (run-directory check, resume config, data, torchrun, fit);
* ``denoiser.py``: the diffusion run: ``train``, ``load_model``;
* ``guidance_free.py``: a run trained with ``--objective gft`` as eps_fns at any w (``load_guidance_free``).

A new kind of network trains with::

    trainer = Trainer(build_model, loss_fn, dataset, loop_config, config=my_config, metadata={...})
    fit(trainer, run_dir, layout=RunLayout(checkpoint="mine.safetensors", ...), resume=..., overwrite=...)
"""

from cfgdiff.runtime.distributed import DistContext, init_distributed
from cfgdiff.training.batches import BatchStream, derive_seed
from cfgdiff.training.config import (
    DATA_DEFAULTS,
    RESUME_FIXED,
    RESUME_MAY_CHANGE,
    LoopConfig,
    TrainConfig,
    apply_resume_changes,
    data_spec_of,
    default_config,
    resume_config,
)
from cfgdiff.training.denoiser import DIFFUSION_KIND, diffusion_loss, diffusion_trainer, load_model, make_model, train
from cfgdiff.training.guidance_free import GuidanceFreeModel, GuidanceFreeRangeError, load_guidance_free
from cfgdiff.training.loop import RunPlan, fit, save_run_checkpoint, train_or_resume
from cfgdiff.training.losses import (
    Batch,
    DiffusionLoss,
    GuidanceFreeLoss,
    LossFn,
    NoisyClassifierLoss,
    classifier_loss,
    drop_labels,
)
from cfgdiff.training.rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DIFFUSION_LAYOUT,
    LOSS_FILE,
    RunDirError,
    RunLayout,
    check_run_dir,
    prepare_run_dir,
    read_stored_config,
)
from cfgdiff.training.trainer import Trainer, TrainingDiverged

__all__ = [
    "CHECKPOINT_FILE", "CONFIG_FILE", "DATA_DEFAULTS", "DIFFUSION_KIND", "DIFFUSION_LAYOUT", "LOSS_FILE",
    "RESUME_FIXED", "RESUME_MAY_CHANGE", "Batch", "BatchStream", "DiffusionLoss", "DistContext", "GuidanceFreeLoss",
    "GuidanceFreeModel", "GuidanceFreeRangeError", "LoopConfig", "LossFn", "NoisyClassifierLoss", "RunDirError",
    "RunLayout", "RunPlan", "TrainConfig", "Trainer", "TrainingDiverged", "apply_resume_changes", "check_run_dir",
    "classifier_loss", "data_spec_of", "default_config", "derive_seed", "diffusion_loss", "diffusion_trainer",
    "drop_labels", "fit", "init_distributed", "load_guidance_free", "load_model", "make_model", "prepare_run_dir",
    "read_stored_config", "resume_config", "save_run_checkpoint", "train", "train_or_resume",
]
