"""The guided-run pipeline: one object from (model, guidance method and its parameters, interval or w schedule,
sampler, steps, grid, network precision) that draws samples at any w and counts network evaluations once.

Every command that samples goes through it: ``cfgdiff sample`` and ``cfgdiff eval`` (``evaluation.sweep.run_sweep``),
the explorer (``cfgdiff serve``), the benchmarks and the distillation reports. Classifier guidance, autoguidance and
a guidance-distilled student are runs like any other:

* ``method`` names an entry of ``cfgdiff.guidance.GUIDANCE_METHODS`` and ``params`` its keyword arguments; the
  method's further networks (autoguidance's ``guide``) are counted as denoiser rows, its classifiers
  (classifier guidance's ``log_prob_fn``) as classifier evaluations, both by the run's one ``NFECounter``;
* the weight at w is w itself, the guidance-interval schedule around it (``interval = (σ_lo, σ_hi)``: guide only
  where σ = e^{-λ/2} lies in (σ_lo, σ_hi], Kynkäänniemi et al. 2024), or ``schedule(w)`` (any λ -> w map);
* a model that is already guided at every w (``WConditionedEpsFn``: a guidance-distilled student with ``at(w)``)
  is sampled without a guidance wrapper, one network row per step, and recorded as ``method = "distilled"``.

Randomness: sample i draws from its own stream ``sample_seed(seed, i)`` (``cfgdiff.sampling.generate``), so a
sample does not depend on the chunk size or on the number of torchrun processes; every w of a run starts from
the same noise. The network is prepared once (its form: fp32 or bf16, contiguous or channels-last, ``auto`` for the
fastest measured at the run's guided chunk of 2·batch_size rows; ``torch.compile``) and guided per w; ``form``
and ``record()`` say which form it runs in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import torch

from cfgdiff.core.contract import EpsFn, check_labels
from cfgdiff.guidance import GuidanceWeight, GuideFn, guidance_interval_sigma, guidance_method, make_guide
from cfgdiff.guidance.counting import NFECounter
from cfgdiff.runtime.distributed import DistContext
from cfgdiff.runtime.precision import NetworkForm
from cfgdiff.sampling.generate import (
    DEFAULT_BATCH_SIZE,
    _data_shape,
    _run_seed,
    iter_chunks,
    network_form,
    prepare_eps_fn,
    resolve_form_names,
)
from cfgdiff.sampling.sharded import gather_chunks
from cfgdiff.sampling.solvers import SAMPLERS

DISTILLED = "distilled"  # the method name recorded for an already guided (w-conditioned) model
RUN_OPTIONS = ("batch_size", "data_shape", "device", "dtype", "autocast", "channels_last", "compile_network",
               "precision", "memory_format",
               "decode")  # GuidedRun's own keyword arguments; ``from_options`` passes every other one to the sampler


@runtime_checkable
class WConditionedEpsFn(Protocol):
    """A model guided at every w by itself (a guidance-distilled student): ``at(w)`` is its eps_fn at weight w."""

    num_classes: int

    def at(self, w: float) -> EpsFn: ...

    def record(self) -> dict[str, Any]: ...


class GuidedRun:
    """A guided sampling run, built once and sampled at any w (module docstring).

    ``guide(eps_fn, w) -> eps_fn``: a guidance of your own instead of a registered ``method`` (recorded under the
    name ``method``; only the main network's rows are counted).
    ``sampler_options`` go to the sampler (``v_interp``, ``clip_x``, ``grid``, ``eta``, ``logsnr_min``/``max``);
    ``precision`` ("fp32", "bf16", "auto") and ``memory_format`` ("contiguous", "channels-last", "auto") pick the
    network's form (``generate.network_form``; the old ``autocast``/``channels_last`` switches name bf16 and
    channels-last), ``compile_network`` goes to ``generate.prepare_eps_fn``; ``decode`` maps each chunk
    (a latent model's VAE decoder). ``batch_size`` rows per chunk (a guided chunk is one call of 2x rows).
    """

    def __init__(
        self,
        model: EpsFn | WConditionedEpsFn,
        *,
        method: str = "cfg",
        params: Mapping[str, Any] | None = None,
        guide: GuideFn | None = None,
        interval: tuple[float, float] | None = None,
        schedule: Callable[[float], GuidanceWeight] | None = None,
        sampler: str = "ancestral",
        steps: int = 128,
        sampler_options: Mapping[str, Any] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        data_shape: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        autocast: bool = False,
        channels_last: bool = False,
        compile_network: bool | str = False,
        precision: str = "fp32",
        memory_format: str = "contiguous",
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if interval is not None and schedule is not None:
            raise ValueError("give a guidance interval or a weight schedule, not both")
        if interval is not None and not (len(interval) == 2 and 0 <= interval[0] < interval[1]):
            raise ValueError(f"interval takes (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi, got {interval}")
        self.model = model
        self.w_conditioned = isinstance(model, WConditionedEpsFn)
        self.method = DISTILLED if self.w_conditioned else method
        if self.w_conditioned and (method != "cfg" or params or interval is not None or schedule is not None):
            raise ValueError("a distilled student is already guided: guidance methods, parameters, intervals and "
                             "schedules do not apply")
        if guide is not None and params:
            raise ValueError("a guide function of your own takes its parameters itself: give guide or params")
        self.spec = None if self.w_conditioned or guide is not None else guidance_method(method)
        self.params = dict(params or {})
        self.interval = None if interval is None else (float(interval[0]), float(interval[1]))
        self.schedule = schedule
        self.sampler, self.steps = sampler, int(steps)
        self.sampler_options = dict(sampler_options or {})
        self.batch_size = int(batch_size)
        self.data_shape = tuple(data_shape) if data_shape is not None else _data_shape(model)
        self.device, self.dtype = device, dtype
        self.decode = decode
        self.num_classes = int(model.num_classes)
        self.counter = NFECounter()
        self.form_names = resolve_form_names(precision, memory_format, autocast, channels_last)
        self.compile_network = compile_network
        self.form: NetworkForm | None = None  # resolved at the first network prepared
        missing = [name for name in (self.spec.requires if self.spec else ()) if self.params.get(name) is None]
        if self.spec is not None and missing:
            raise ValueError(f"guidance {method} needs {', '.join(missing)} ({self.spec.title})")
        if guide is None and self.spec is not None:  # a registered method, its further networks counted too
            counted = dict(self.params)
            for name in self.spec.networks:
                counted[name] = self.counter.wrap(counted[name], "denoiser")
            for name in self.spec.classifiers:
                counted[name] = self.counter.wrap(counted[name], "classifier")
            guide = make_guide(method, **counted)
        self._guide: GuideFn | None = guide  # None: a w-conditioned model, guided by itself
        self._network: EpsFn | None = (  # prepared (and compiled) once, counted
            None if guide is None else self.counter.wrap(self._prepare(cast(EpsFn, model))))

    @classmethod
    def from_options(cls, model: EpsFn | WConditionedEpsFn, *, sampler: str = "ancestral", steps: int = 128,
                     method: str = "cfg", params: Mapping[str, Any] | None = None, guide: GuideFn | None = None,
                     interval: tuple[float, float] | None = None,
                     schedule: Callable[[float], GuidanceWeight] | None = None, **options: Any) -> GuidedRun:
        """A run from one flat set of keyword arguments: ``RUN_OPTIONS`` are the run's own, every other one goes to
        the sampler (what ``generate.iter_samples`` and the commands' option dicts hold)."""
        run_options = {k: options.pop(k) for k in RUN_OPTIONS if k in options}
        return cls(model, method=method, params=params, guide=guide, interval=interval, schedule=schedule,
                   sampler=sampler, steps=steps, sampler_options=options, **run_options)

    def _prepare(self, eps_fn: EpsFn) -> EpsFn:
        """``eps_fn`` in the run's form (resolved, and for ``auto`` measured, once) and compiled if asked."""
        if self.form is None:
            self.form = network_form(eps_fn, precision=self.form_names["precision"],
                                     memory_format=self.form_names["memory_format"], device=self.device,
                                     rows=2 * self.batch_size, data_shape=self.data_shape)
        return prepare_eps_fn(eps_fn, device=self.device, form=self.form, compile_network=self.compile_network)

    # -- the weight and the guided eps_fn at w ------------------------------------------------------------------

    def weight(self, w: float) -> GuidanceWeight:
        """The guidance weight at w: w, its guidance-interval schedule, or ``schedule(w)``."""
        if self.schedule is not None:
            return self.schedule(float(w))
        if self.interval is not None:
            return guidance_interval_sigma(float(w), sigma_lo=self.interval[0], sigma_hi=self.interval[1])
        return float(w)

    def eps_fn_at(self, w: float) -> EpsFn:
        """The guided eps_fn at w, whose network calls the run counts."""
        if self._guide is None or self._network is None:  # already guided: the student at w, one row per step
            return self.counter.wrap(self._prepare(self.model.at(float(w))))  # type: ignore[union-attr]
        return self._guide(self._network, self.weight(w))

    def check(self, ws: Sequence[float]) -> None:
        """ValueError (one line) for a w or a parameter the method does not take; builds wrappers, calls no network."""
        for w in ws:
            if not math.isfinite(float(w)):
                raise ValueError(f"guidance weight w must be finite, got {w}")
            if self.w_conditioned:
                self.model.at(float(w))  # type: ignore[union-attr]  # a student refuses a w outside its range
            else:
                self.eps_fn_at(float(w))

    # -- sampling ------------------------------------------------------------------------------------------------

    def iter_samples(self, labels: torch.Tensor, w: float, *, seed: int | None = None,
                     generator: torch.Generator | None = None,
                     dist: DistContext | None = None) -> Iterator[torch.Tensor]:
        """Samples for ``labels`` at weight w, chunk by chunk ([<= batch_size, *shape] on the CPU).

        Under torchrun (``dist`` of several processes) each rank runs its chunks and rank 0 yields all of them in
        the one-process order, bit for bit (``cfgdiff.sampling.sharded``); the other ranks yield nothing."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        check_labels(labels, self.num_classes, allow_null=True)
        group = dist if dist is not None and dist.enabled else None
        shard = (group.rank, group.world_size) if group is not None else (0, 1)
        chunks = iter_chunks(self.eps_fn_at(w), labels, sampler=self.sampler, steps=self.steps,
                             batch_size=self.batch_size, seed=_run_seed(seed, generator, shard),
                             data_shape=self.data_shape, device=self.device, dtype=self.dtype, decode=self.decode,
                             shard=shard, **self.sampler_options)
        if group is not None:
            yield from gather_chunks(chunks, num_chunks=math.ceil(len(labels) / self.batch_size), dist=group)
        else:
            yield from chunks

    def samples(self, labels: torch.Tensor, w: float, *, seed: int | None = None,
                generator: torch.Generator | None = None, dist: DistContext | None = None,
                on_chunk: Callable[[int], None] | None = None) -> torch.Tensor:
        """All samples for ``labels`` at w: [N, *shape] on the CPU (on rank 0 under torchrun; other ranks: empty)."""
        out = []
        for x in self.iter_samples(labels, w, seed=seed, generator=generator, dist=dist):
            out.append(x)
            if on_chunk is not None:
                on_chunk(x.shape[0])
        return torch.cat(out) if out else torch.empty(0, *self.data_shape)

    # -- what a record says ----------------------------------------------------------------------------------------

    def denoiser_rows(self) -> int:
        """Denoiser rows evaluated since the last ``counter.reset()`` on this process (a guided step counts 2B)."""
        return self.counter.rows("denoiser")

    def denoiser_calls(self) -> int:
        """Denoiser calls (NFE as network invocations: a batched guided step is one) since the last reset."""
        return sum(c.calls for c in self.counter.counters["denoiser"])

    def classifier_rows(self) -> int:
        """Classifier forward + backward passes since the last reset (classifier guidance; else 0)."""
        return self.counter.rows("classifier")

    def record(self) -> dict[str, Any]:
        """What a sweep's ``meta`` adds about the model: a w-conditioned model's own record, and the network's
        form (``network``: precision, memory format, how chosen; ``compiled``)."""
        record = dict(self.model.record()) if self.w_conditioned else {}  # type: ignore[union-attr]
        if self.form is not None:
            record["network"] = {**self.form.record(), "compiled": bool(self.compile_network)}
        return record

    @property
    def uses_classifier(self) -> bool:
        return bool(self.spec is not None and self.spec.classifiers)

    def __repr__(self) -> str:
        extra = f", interval={self.interval}" if self.interval else ""
        return (f"GuidedRun(method={self.method!r}, sampler={self.sampler!r}, steps={self.steps}, "
                f"batch_size={self.batch_size}{extra})")
