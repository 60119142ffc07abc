"""The one training loop of cfgdiff: a ``Trainer`` holds a run's state and advances it one step at a time.

Every network cfgdiff trains goes through it: the diffusion model, the noisy classifier, and whatever comes
next. What differs between them is three things handed to the constructor:

* ``build_model()``: a factory returning a fresh ``nn.Module`` (called once under ``torch.manual_seed(seed)``,
  so every process starts from the same weights; the EMA copy is a deep copy of it);
* ``loss_fn(model, batch, generator) -> loss``: see ``cfgdiff.training.losses`` for the contract;
* ``dataset``: a ``cfgdiff.data.Dataset`` (the batches come from ``BatchStream``).

One optimizer step (``train_step``), for R processes and K accumulation micro-batches of b = B/(R·K):

    g = (1/(R·K)) Σ_r Σ_m ∇ loss_fn(model, batch_{r,m}, generator_r)   # DDP averages over r, we over m
    stop if the global mean loss or ‖g‖ is not finite (or skip the update, up to ``skip_nonfinite`` times)
    g ← g · min(1, grad_clip/‖g‖);  lr_t = lr_at(t) (linear warm-up, then cosine or flat);  AdamW(β = (0.9, 0.99))
    ema ← ema + (1 - d_t)(θ - ema),  d_t = min(ema_decay, (1+t)/(10+t))

Checkpoint state: weights, EMA, AdamW moments, every rank's generator, the stream's ``consumed``, the step
and the count of skipped batches, so that a resumed run is bit-exact (same process count, same device).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from cfgdiff.runtime.checkpoint import (
    atomic_write_bytes,
    checkpoint_bytes,
    load_checkpoint,
    load_optimizer_tensors,
    optimizer_tensors,
)
from cfgdiff.runtime.distributed import DistContext, all_gather_bytes, all_reduce_sum, local_device
from cfgdiff.runtime.precision import NetworkForm, choose_form, enable_compile_cache, network_key, time_call
from cfgdiff.training.batches import BatchStream, derive_seed
from cfgdiff.training.config import LoopConfig
from cfgdiff.training.losses import Batch, LossFn


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint was left as it was."""


def lr_at(step: int, loop: LoopConfig) -> float:
    """The learning rate of the update at ``step`` (counted from 0) of a run of T = ``loop.steps`` steps:

        warm-up (t + 1 <= W = warmup_steps):  lr_t = lr · (t + 1)/W
        then, cosine:    lr_t = lr · (f + (1 - f) · (1 + cos(π p))/2),  p = (t + 1 - W)/(T - W),  f = lr_floor
              constant:  lr_t = lr

    so a cosine run ends at f · lr at its last step (t = T - 1, p = 1). It depends on (step, loop) only, so a
    resumed run repeats it exactly.
    """
    t, warmup = step + 1, loop.warmup_steps
    if warmup > 0 and t <= warmup:
        return loop.lr * t / warmup
    if loop.lr_schedule == "constant" or loop.steps <= warmup:
        return loop.lr
    p = min(1.0, (t - warmup) / (loop.steps - warmup))
    return loop.lr * (loop.lr_floor + (1.0 - loop.lr_floor) * 0.5 * (1.0 + math.cos(math.pi * p)))


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def make_adamw(params, *, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW (β = (0.9, 0.99)) with the fused kernel where the parameters' device has one (CPU and CUDA in
    torch >= 2.4): one kernel for all parameters instead of a loop over ~150 tensors, about 10x faster an update
    on a CPU for the digits U-Net; else the multi-tensor (foreach) path. All three compute the same update."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99), fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99), foreach=True)


class Trainer:
    """A run's state (model, EMA, optimizer, generator, batch stream, step) and one optimizer step at a time.

    ``model`` is the bare network (its ``state_dict`` is what checkpoints hold); ``net`` is what the loss
    calls (``model`` wrapped in DistributedDataParallel and/or ``torch.compile`` when those are on). The
    driver that adds run directories, logging, checkpoints and signals is ``cfgdiff.training.fit``.
    """

    def __init__(
        self,
        build_model: Callable[[], nn.Module],
        loss_fn: LossFn,
        dataset,  # cfgdiff.data.Dataset
        loop: LoopConfig,
        *,
        config: Any = None,  # the kind's own config (TrainConfig, ClassifierConfig, ...); default ``loop``
        metadata: Mapping[str, Any] | None = None,  # extra checkpoint metadata (kind, model_config, data, ...)
        dist: DistContext | None = None,  # this process's place in a torchrun group; default: one process
    ) -> None:
        loop.validate()
        self.loop = loop
        self.config = config if config is not None else loop
        self.dataset = dataset
        self.loss_fn = loss_fn
        self.dist = dist if dist is not None else DistContext()
        self.device = local_device(loop.device, self.dist.local_rank)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = loop.tf32
            torch.backends.cudnn.allow_tf32 = loop.tf32
        if loop.deterministic:  # (process-wide; cuBLAS needs the workspace setting for it)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(loop.seed)  # weight init: the same on every rank
        model = build_model().to(self.device)
        if loop.hflip and not dataset.is_image:
            raise ValueError("random horizontal flips (--hflip) need image data; this data set holds vectors")
        hflip = loop.hflip if loop.hflip is not None else bool(getattr(dataset, "hflip_default", False))
        self.stream = BatchStream(
            dataset, batch_size=loop.batch_size, micro_batches=loop.grad_accum, rank=self.dist.rank,
            world_size=self.dist.world_size, seed=loop.seed, hflip=hflip and dataset.is_image, device=self.device,
            loader=loop.loader, workers=loop.workers,
        )
        self.form = self._choose_form(model)  # the precision and layout the steps run in (auto: measured)
        if self.form.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.stream.channels_last = self.form.channels_last and dataset.is_image
        self.model = model
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.optimizer = make_adamw(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
        self._ddp: nn.Module | None = None
        self._ema_pairs: tuple[list[torch.Tensor], ...] | None = None
        self.net = self._wrap(model)
        self.generator = torch.Generator(device=self.device).manual_seed(self.rank_seed())
        self.step = 0  # optimizer steps taken (skipped non-finite batches count as steps)
        self.skipped = 0  # non-finite batches skipped so far
        self.last_skipped: str | None = None  # why the last step was skipped, or None
        self.metadata_extra: dict[str, Any] = dict(metadata or {})
        self.resumed_world_size: int | None = None  # the process count of the checkpoint restored, if any
        # stop/save requests: set locally (signal handler, wall clock), agreed over ranks in train_step
        self.stop_requested = False
        self.save_requested = False
        self.stop_agreed = False
        self.save_agreed = False

    # -- setup ---------------------------------------------------------------------------------------------

    def rank_seed(self, *extra: int | str) -> int:
        """The seed of this rank's generator: derive_seed(seed, "rank", rank, *extra)."""
        return derive_seed(self.loop.seed, "rank", self.dist.rank, *extra)

    def _choose_form(self, model: nn.Module) -> NetworkForm:
        """``loop.precision`` / ``loop.memory_format``, ``auto`` resolved by timing forward + backward of the loss
        at this process's micro-batch in each candidate form (``runtime.precision.choose_form``; cached per
        machine and network; fp32 where the device has no fast bf16). Draws no random number of the run (its
        own generator, the network in eval mode); under torchrun rank 0's choice is every rank's."""
        loop, dataset = self.loop, self.dataset
        if loop.precision != "auto" and loop.memory_format != "auto":
            return choose_form(loop.precision, loop.memory_format, device=self.device, images=dataset.is_image,
                               measure=lambda form: 0.0)
        generator = torch.Generator(device=self.device).manual_seed(0)
        size = self.stream.size
        x = torch.randn((size, *dataset.data_shape), generator=generator, device=self.device).clamp(-1, 1)
        labels = torch.randint(0, dataset.num_classes, (size,), generator=generator, device=self.device)

        def measure(form: NetworkForm) -> float:
            layout = torch.channels_last if form.channels_last else torch.contiguous_format
            model.to(memory_format=layout)  # type: ignore[call-overload]  # torch stubs: no memory_format
            batch = Batch(x=x.contiguous(memory_format=layout) if x.ndim == 4 else x, labels=labels)
            context = (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) if form.bf16
                       else contextlib.nullcontext())

            def step() -> None:
                with context:
                    loss = self.loss_fn(model, batch, torch.Generator(device=self.device).manual_seed(0))
                loss.float().backward()
                model.zero_grad(set_to_none=True)

            return time_call(step, device=self.device)

        was_training = model.training
        model.eval()
        try:
            form = choose_form(loop.precision, loop.memory_format, device=self.device, images=dataset.is_image,
                               measure=measure, key=network_key(model, x.shape, purpose="training"))
        finally:
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
            model.train(was_training)
        if self.dist.enabled:  # every rank runs rank 0's choice
            import torch.distributed as torch_dist

            shared = [form]
            torch_dist.broadcast_object_list(shared, src=0)
            form = shared[0]
        return form

    def _wrap(self, model: nn.Module) -> nn.Module:
        net = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = net = DistributedDataParallel(model, device_ids=ids)
        if self.loop.compile:
            enable_compile_cache()  # inductor's on-disk caches under cfgdiff's: a second run compiles faster
            net = torch.compile(net, backend=self.loop.compile_backend)
        return net

    def autocast(self):
        """bf16 autocast on the training device when the form is bf16 (a null context otherwise)."""
        if not self.form.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # -- one step ------------------------------------------------------------------------------------------

    def loss_on_batch(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of one micro-batch: ``loss_fn(net, Batch(x, labels), generator)``, under autocast if on."""
        with self.autocast():
            return self.loss_fn(self.net, Batch(x=x, labels=labels), self.generator)

    def train_step(self) -> float:
        """One optimizer step over the global batch; returns its mean loss (over all processes).

        A non-finite loss or gradient norm raises ``TrainingDiverged`` naming the step, before the weights are
        touched, unless fewer than ``skip_nonfinite`` batches were skipped so far: then the update is skipped
        (``last_skipped`` says why) and the step still counts.
        """
        self.net.train()
        micro = self.stream.next_step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for m, batch in enumerate(micro):
            last = m == len(micro) - 1
            with contextlib.nullcontext() if (last or self._ddp is None) else self._ddp.no_sync():
                loss = self.loss_on_batch(batch.x, batch.labels).float()
                (loss / len(micro)).backward()
            loss_sum += loss.detach()
        loss_value = self._agree(loss_sum / len(micro))
        self.last_skipped = None
        if not math.isfinite(loss_value):
            return self._nonfinite(f"loss is {loss_value} at step {self.step + 1}", loss_value)
        clip = self.loop.grad_clip if self.loop.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(grad_norm):
            return self._nonfinite(f"gradient norm is {grad_norm} at step {self.step + 1}", loss_value)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.loop)
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        return loss_value

    def _agree(self, mean_loss: torch.Tensor) -> float:
        """The mean loss over processes, and the stop/save requests any process made (one all-reduce)."""
        if not self.dist.enabled:
            self.stop_agreed, self.save_agreed = self.stop_requested, self.save_requested
            return float(mean_loss)
        packed = torch.stack([mean_loss, torch.tensor(float(self.stop_requested), device=self.device),
                              torch.tensor(float(self.save_requested), device=self.device)])
        all_reduce_sum(packed, self.dist)
        values = packed.tolist()
        self.stop_agreed, self.save_agreed = values[1] > 0, values[2] > 0
        return values[0] / self.dist.world_size

    def _nonfinite(self, reason: str, loss_value: float) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        if self.skipped < self.loop.skip_nonfinite:
            self.skipped += 1
            self.step += 1
            self.last_skipped = reason
            return loss_value
        if self.loop.skip_nonfinite:
            reason += f" (the {self.skipped} non-finite batches --skip-nonfinite allows were already skipped)"
        raise TrainingDiverged(reason)

    @torch.no_grad()
    def _update_ema(self) -> None:
        """θ_EMA ← θ_EMA + (1 − d)(θ − θ_EMA), d = min(ema_decay, (1 + step)/(10 + step)); buffers copied."""
        if self._ema_pairs is None:  # the parameter lists, built once (walking the modules each step costs)
            self._ema_pairs = (list(self.ema.parameters()), list(self.model.parameters()),
                               list(self.ema.buffers()), list(self.model.buffers()))
        ema_params, params, ema_bufs, bufs = self._ema_pairs
        decay = min(self.loop.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        if bufs:
            torch._foreach_copy_(ema_bufs, bufs)

    # -- checkpoints ---------------------------------------------------------------------------------------

    def config_json(self) -> dict[str, Any]:
        to_json = getattr(self.config, "to_json", None)
        return to_json() if to_json is not None else dict(self.config)

    def metadata(self) -> dict[str, Any]:
        """The checkpoint's JSON metadata: the caller's ``metadata`` plus the loop's state."""
        return {
            **self.metadata_extra,
            "step": self.step,
            "train_config": self.config_json(),
            "world_size": self.dist.world_size,
            "network_form": {**self.form.record(), "compiled": bool(self.loop.compile)},  # what the steps ran in
            "data_consumed": self.stream.consumed,
            "skipped_nonfinite": self.skipped,
            "data_source": _json_safe(getattr(self.dataset, "source", {})),
        }

    def state_bytes(self) -> bytes | None:
        """The checkpoint as safetensors bytes on rank 0 (None elsewhere). Collective: call on every rank."""
        comm = self.device if self.device.type == "cuda" else torch.device("cpu")
        states = all_gather_bytes(self.generator.get_state(), self.dist, comm)
        if not self.dist.is_main:
            return None
        rng = {"generator": states[0], **{f"generator_rank{r}": s for r, s in enumerate(states) if r}}
        return checkpoint_bytes(model=self.model.state_dict(), ema=self.ema.state_dict(),
                                optim=optimizer_tensors(self.optimizer), rng=rng, metadata=self.metadata())

    def save(self, path: str | os.PathLike) -> None:
        """Write the checkpoint to one file, atomically (rank 0; collective)."""
        data = self.state_bytes()
        if data is not None:
            atomic_write_bytes(path, data, pause="save")

    def restore(self, path: str | os.PathLike) -> dict[str, Any]:
        """Load a checkpoint (format 1 or 2) into this trainer; returns its metadata.

        Same process count and device type: bit-exact continuation. Another process count (or a generator
        state of another device type): every rank's generator is re-seeded from (seed, rank, step), the rest
        (weights, EMA, optimizer, data position) carries over. Format-1 checkpoints (cfgdiff 0.1) continue
        at data position step · batch_size of the new stream.
        """
        groups, meta = load_checkpoint(path)
        self.model.load_state_dict(groups["model"])
        self.ema.load_state_dict(groups["ema"] or groups["model"])
        if groups["optim"]:
            load_optimizer_tensors(self.optimizer, groups["optim"])
        self.step = int(meta["step"])
        self.skipped = int(meta.get("skipped_nonfinite", 0))
        self.resumed_world_size = int(meta.get("world_size", 1))
        key = "generator" if self.dist.rank == 0 else f"generator_rank{self.dist.rank}"
        state = groups["rng"].get(key)
        restored = False
        if state is not None and self.resumed_world_size == self.dist.world_size:
            try:
                self.generator.set_state(state)
                restored = True
            except (RuntimeError, ValueError):  # a state of another device type's generator
                restored = False
        if not restored:
            self.generator.manual_seed(self.rank_seed("step", self.step))
        consumed = meta.get("data_consumed")
        if consumed is None:  # format 1: its own data order is not reproduced; continue the new stream
            consumed = self.step * int(meta.get("train_config", {}).get("batch_size", self.loop.batch_size))
        self.stream.load_state(int(consumed))
        return meta
