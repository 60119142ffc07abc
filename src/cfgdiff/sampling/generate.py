"""Many guided samples in chunks: the one chunk loop (``iter_chunks``) under every guided run.

``iter_chunks`` runs a sampler from ``cfgdiff.sampling.solvers.SAMPLERS`` over an already guided eps_fn in chunks
of ``batch_size`` rows, so memory does not grow with the number of samples; ``cfgdiff.sampling.pipeline.GuidedRun``
(what the commands use) and the function API ``iter_samples`` / ``generate_samples`` (a model, a weight and a
``guide``) both sample through it. The samplers see one batch.

Same seed, same samples, whatever the chunk size: sample i draws its initial noise and every later noise from
its own ``torch.Generator`` seeded with ``sample_seed(seed, i)`` (a SplitMix64 hash of the pair), and the
samplers keep rows apart, so a sample never depends on which other samples share its chunk. (Bit for bit with
networks whose rows are independent and whose kernels do not change with the batch size; a CPU or GPU
convolution may choose another algorithm for another batch size, which changes the last bits only.)

Network options: the network's form (``network_form``: fp32 or bf16 autocast, contiguous or channels-last, each
``auto`` for the fastest measured on this machine; ``cfgdiff.runtime.precision``) and an optional
``torch.compile`` (``prepare_eps_fn``). The guidance and the sampler arithmetic stay in ``dtype`` (float32, the
step coefficients float64): the network's output is cast back before they see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from cfgdiff.core.contract import EpsFn, check_labels
from cfgdiff.guidance import GuidanceWeight, cfg
from cfgdiff.runtime.precision import FormCache, NetworkForm, choose_form, enable_compile_cache, network_key, time_call
from cfgdiff.sampling.solvers import SAMPLERS

# Rows per chunk. From benchmarks/sampling.py on 2 CPU cores (reports/sampling_benchmark.md): guided per-image
# time on digits falls steeply up to 64 rows per chunk (10x dearer at 1, 1.5x at 16) and is flat within the
# measurement noise from 64 to 256, while memory keeps growing with the chunk; on a GPU pass a larger one.
DEFAULT_BATCH_SIZE = 64


_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """SplitMix64's output function (Steele et al. 2014): a bijective 64-bit mix."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``'s own noise stream under the run seed ``seed``: a 64-bit hash of the pair."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64))


def sample_generators(
    seed: int, start: int, stop: int, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One ``torch.Generator`` per sample i in [start, stop), seeded with ``sample_seed(seed, i)``."""
    return [torch.Generator(device=device).manual_seed(sample_seed(seed, i)) for i in range(start, stop)]


def _run_seed(seed: int | None, generator: torch.Generator | None, shard: tuple[int, int] = (0, 1)) -> int:
    """The run's seed: ``seed`` itself, else one 63-bit draw from ``generator`` (or torch's global generator).
    Sharded sampling needs ``seed``: every rank must derive the same per-sample noise streams."""
    if seed is not None:
        return int(seed)
    if shard[1] > 1:
        raise ValueError("sharded sampling needs a seed: every rank must derive the same per-sample noise streams")
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device))


class PreparedEpsFn:
    """An eps_fn that runs the network in the chosen form and returns ε̂ in z's dtype.

    ``form.precision == "bf16"``: the forward pass under ``torch.autocast(device, bfloat16)`` (convolutions and
    matrix products in bf16, normalisations in fp32), its output cast back to z's dtype (float32) before the
    guidance and the solver see it; ``form.memory_format == "channels-last"``: images ([B, C, H, W]) in
    channels_last memory format (the module's weights are converted once, in place).
    """

    def __init__(self, eps_fn: EpsFn, network: Callable[..., torch.Tensor], *, device_type: str,
                 form: NetworkForm) -> None:
        self.eps_fn = eps_fn
        self.network = network
        self.num_classes = eps_fn.num_classes
        self.device_type = device_type
        self.form = form
        self.autocast = form.bf16
        self.channels_last = form.channels_last
        if hasattr(eps_fn, "data_shape"):
            self.data_shape = eps_fn.data_shape

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z_in = z.contiguous(memory_format=torch.channels_last) if self.channels_last and z.ndim == 4 else z
        if self.autocast:
            with torch.autocast(self.device_type, dtype=torch.bfloat16):
                eps = self.network(z_in, logsnr, labels)
        else:
            eps = self.network(z_in, logsnr, labels)
        return eps.to(z.dtype)


def legacy_form(autocast: bool = False, channels_last: bool = False) -> NetworkForm:
    """The form the old switches name: ``autocast`` is bf16, ``channels_last`` the channels-last layout."""
    return NetworkForm("bf16" if autocast else "fp32", "channels-last" if channels_last else "contiguous")


def resolve_form_names(precision: str, memory_format: str, autocast: bool = False,
                       channels_last: bool = False) -> dict[str, str]:
    """``precision`` / ``memory_format`` with the old switches folded in: ``autocast`` turns the default fp32
    into bf16, ``channels_last`` the default contiguous into channels-last."""
    return {"precision": "bf16" if autocast and precision == "fp32" else precision,
            "memory_format": "channels-last" if channels_last and memory_format == "contiguous" else memory_format}


def _set_layout(eps_fn: Any, form: NetworkForm) -> None:
    if isinstance(eps_fn, torch.nn.Module):
        layout = torch.channels_last if form.channels_last else torch.contiguous_format
        eps_fn.to(memory_format=layout)  # type: ignore[call-overload]  # torch stubs: no memory_format


def prepare_eps_fn(
    eps_fn: EpsFn,
    *,
    device: torch.device | str = "cpu",
    autocast: bool = False,
    channels_last: bool = False,
    compile_network: bool | str = False,
    form: NetworkForm | None = None,
) -> EpsFn:
    """``eps_fn`` itself when it runs as it is (fp32, contiguous, not compiled), else a ``PreparedEpsFn``
    around it. ``form`` (``network_form``; default: the one ``autocast``/``channels_last`` name).

    ``compile_network``: True for ``torch.compile(eps_fn)`` with the default backend, or a backend name
    (e.g. "eager" to check the plumbing without a C++ compiler); needs an ``nn.Module``. Inductor's on-disk
    cache goes under cfgdiff's cache directory (``runtime.precision.enable_compile_cache``).
    """
    form = form if form is not None else legacy_form(autocast, channels_last)
    if not (form.bf16 or form.channels_last or compile_network):
        return eps_fn
    network: Callable[..., torch.Tensor] = eps_fn
    if form.channels_last:
        if not isinstance(eps_fn, torch.nn.Module):
            raise ValueError("channels_last needs an nn.Module network")
        _set_layout(eps_fn, form)
    if compile_network:
        if not isinstance(eps_fn, torch.nn.Module):
            raise ValueError("compile_network needs an nn.Module network")
        enable_compile_cache()
        backend = compile_network if isinstance(compile_network, str) else "inductor"
        network = torch.compile(eps_fn, backend=backend)
    return PreparedEpsFn(eps_fn, network, device_type=torch.device(device).type, form=form)


def _network_of(eps_fn: Any) -> Any:
    """The ``nn.Module`` under ``eps_fn`` (itself, or what a wrapper's ``model`` / ``eps_fn`` holds), else
    ``eps_fn``: what the cache key names."""
    seen = eps_fn
    while seen is not None and not isinstance(seen, torch.nn.Module):
        seen = getattr(seen, "model", None) or getattr(seen, "eps_fn", None)
    return seen if seen is not None else eps_fn


def network_form(
    eps_fn: EpsFn,
    *,
    precision: str = "fp32",
    memory_format: str = "contiguous",
    device: torch.device | str = "cpu",
    rows: int,
    data_shape: tuple[int, ...],
    cache: FormCache | None = None,
) -> NetworkForm:
    """The form ``eps_fn`` samples in: as asked, or, for ``auto``, the fastest candidate
    (``runtime.precision.choose_form``) timed over forward passes at the sampling shape [rows, *data_shape]
    (``rows``: a guided chunk's 2B), cached per machine and network. ``auto`` is fp32 where
    ``runtime.precision.bf16_supported(device)`` is false. The module is left in the chosen layout."""
    images = len(data_shape) == 3
    module = isinstance(eps_fn, torch.nn.Module)
    if memory_format == "auto" and not module:
        memory_format = "contiguous"  # a layout needs a module's weights to convert
    generator = torch.Generator(device=device).manual_seed(0)
    z = torch.randn((rows, *data_shape), generator=generator, device=device)  # [rows, *data_shape]
    logsnr = torch.zeros(rows, device=device)  # mid-way through the schedule
    labels = torch.arange(rows, device=device) % (eps_fn.num_classes + 1)  # null labels too, as a guided call

    def measure(candidate: NetworkForm) -> float:
        _set_layout(eps_fn, candidate)
        prepared = prepare_eps_fn(eps_fn, device=device, form=candidate)
        with torch.no_grad():
            return time_call(lambda: prepared(z, logsnr, labels), device=device)

    key = network_key(_network_of(eps_fn), z.shape, purpose="sampling") if module else None
    form = choose_form(precision, memory_format, device=device, images=images and module, measure=measure,
                       key=key, cache=cache)
    if module and images:
        _set_layout(eps_fn, form)
    return form


def _data_shape(eps_fn: Any) -> tuple[int, ...]:
    """``data_shape`` of the eps_fn, or of the one it wraps (``CountingEpsFn``, guidance wrappers)."""
    while eps_fn is not None:
        if hasattr(eps_fn, "data_shape"):
            return tuple(eps_fn.data_shape)
        eps_fn = getattr(eps_fn, "eps_fn", None)
    raise ValueError("the eps_fn has no data_shape; pass data_shape=")


def iter_samples(
    eps_fn: EpsFn,
    labels: torch.Tensor,
    *,
    w: GuidanceWeight = 0.0,
    sampler: str = "ancestral",
    steps: int = 128,
    batch_size: int = DEFAULT_BATCH_SIZE,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    data_shape: tuple[int, ...] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    guide: Callable[[EpsFn, GuidanceWeight], EpsFn] = cfg,
    autocast: bool = False,
    channels_last: bool = False,
    compile_network: bool | str = False,
    precision: str = "fp32",
    memory_format: str = "contiguous",
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shard: tuple[int, int] = (0, 1),
    **sampler_kwargs: Any,
) -> Iterator[torch.Tensor]:
    """Samples for ``labels`` chunk by chunk: yields [<= batch_size, *data_shape] on the CPU, one chunk held at
    a time; the chunks concatenated are the same for any ``batch_size``.

    ``guide(eps_fn, w)`` wraps the denoiser (classifier-free guidance by default, w in the paper's convention,
    a number or a schedule λ -> w such as ``guidance_interval``; any method by name:
    ``cfgdiff.guidance.make_guide("apg", eta=0.0)``; stateful methods get fresh state in every chunk);
    ``sampler_kwargs`` go to the sampler (``v_interp``, ``clip_x``, ``grid``, ``eta``, ...). Randomness:
    sample i uses its own stream seeded with ``sample_seed(seed, i)``; without ``seed``, the run seed is one draw
    from ``generator`` (or from torch's global generator). ``precision`` ("fp32", "bf16", "auto") and
    ``memory_format`` ("contiguous", "channels-last", "auto") pick the network's form (``network_form``, at a
    guided chunk's 2·batch_size rows; the old ``autocast`` / ``channels_last`` switches name bf16 and
    channels-last), ``compile_network`` goes to ``prepare_eps_fn``.
    To count network evaluations, pass a ``cfgdiff.guidance.counting.CountingEpsFn``, or sample through a
    ``cfgdiff.sampling.pipeline.GuidedRun``, which counts them itself. ``decode(x)`` maps each chunk before it is
    yielded (a latent model's VAE decoder; ``cfgdiff.adapters.diffusers``).

    ``shard = (rank, world_size)``: run only the chunks j ≡ rank (mod world_size) of the schedule above (chunk j
    holds samples [j·batch_size, (j+1)·batch_size)), each with the very rows and noise streams it has in one
    process; ``cfgdiff.sampling.sharded`` gathers them back into the one-process order. Needs ``seed``
    when world_size > 1 (every rank must derive the same run seed).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    check_labels(labels, eps_fn.num_classes, allow_null=True)
    data_shape = tuple(data_shape if data_shape is not None else _data_shape(eps_fn))
    names = resolve_form_names(precision, memory_format, autocast, channels_last)
    form = network_form(eps_fn, precision=names["precision"], memory_format=names["memory_format"], device=device,
                        rows=2 * batch_size, data_shape=data_shape)
    network = prepare_eps_fn(eps_fn, device=device, form=form, compile_network=compile_network)
    yield from iter_chunks(guide(network, w), labels, sampler=sampler, steps=steps, batch_size=batch_size,
                           seed=_run_seed(seed, generator, shard), data_shape=data_shape, device=device, dtype=dtype,
                           decode=decode, shard=shard, **sampler_kwargs)


def iter_chunks(
    guided: EpsFn,
    labels: torch.Tensor,
    *,
    sampler: str,
    steps: int,
    batch_size: int,
    seed: int,
    data_shape: tuple[int, ...],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shard: tuple[int, int] = (0, 1),
    **sampler_kwargs: Any,
) -> Iterator[torch.Tensor]:
    """The one chunk loop: ``sampler`` over the already guided eps_fn ``guided``, chunk j holding samples
    [j·batch_size, (j+1)·batch_size), sample i drawing from its own stream ``sample_seed(seed, i)``; yields each
    chunk on the CPU (after ``decode``). ``shard = (rank, world_size)`` runs the chunks j ≡ rank (mod world_size)
    only (``cfgdiff.sampling.sharded`` gathers them). ``iter_samples`` and ``cfgdiff.sampling.pipeline.GuidedRun``
    both sample through it."""
    rank, world_size = shard
    if not 0 <= rank < world_size:
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sample_fn = SAMPLERS[sampler]
    for start in range(rank * batch_size, labels.shape[0], world_size * batch_size):
        chunk = labels[start:start + batch_size].to(device)
        stop = start + chunk.shape[0]
        x = sample_fn(guided, (chunk.shape[0], *data_shape), chunk, steps=steps,
                      generator=sample_generators(seed, start, stop, device), device=device, dtype=dtype,
                      **sampler_kwargs)
        if decode is not None:
            x = decode(x)
        yield x.to("cpu")


def generate_samples(
    eps_fn: EpsFn,
    labels: torch.Tensor,
    *,
    on_chunk: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """x for every label: [N, *data_shape] on the CPU, the same for any ``batch_size``.

    Takes the keyword arguments of ``iter_samples`` (w, sampler, steps, batch_size, seed, guide, ...);
    ``on_chunk(rows)`` is called after each chunk (a progress bar).
    """
    out = []
    for x in iter_samples(eps_fn, labels, **kwargs):
        out.append(x)
        if on_chunk is not None:
            on_chunk(x.shape[0])
    if out:
        return torch.cat(out)
    data_shape = kwargs.get("data_shape") or _data_shape(eps_fn)
    return torch.empty(0, *data_shape)
