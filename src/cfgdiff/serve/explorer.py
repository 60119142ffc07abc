"""The explorer's model side: validate a grid request, sample it under a lock, encode the grid.

A request names classes, samples per class n, sampler, steps, guidance method (and its parameters), the paper's
w, an optional guidance interval and the seed. The grid is exactly what ``cfgdiff sample`` draws with the same
options: labels class by class (``classes`` repeated n times each), sample i seeded with
``generate.sample_seed(seed, i)``, so moving w changes the guidance and nothing else, and the same request
always gives the same grid. NFE per sample is counted (a guided step is one call of 2B rows, counted as 2).

Every value is checked as the CLI checks its arguments and a bad one raises ``RequestError`` (a ValueError,
one line, answered 400 by the server), stating the range: w in ``W_RANGE`` ([-10, 50]), seeds in [0, 2^63 - 1];
limits on samples per request and on steps keep one request from occupying the machine for long. One request
samples at a time (a lock): the network and torch's thread pool are shared, and running grids one after another
is as fast as running them together on a CPU.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from cfgdiff.core.contract import EpsFn
from cfgdiff.guidance import GuidanceWeight, compose, uses_null_label
from cfgdiff.guidance.compose import describe_terms, parse_terms
from cfgdiff.sampling.pipeline import GuidedRun
from cfgdiff.sampling.solvers import SAMPLERS
from cfgdiff.serve.images import data_uri, grid_png, scatter_png
from cfgdiff.serve.methods import Method, explorer_methods

MAX_SEED = 2**63 - 1  # seeds lie in [0, MAX_SEED] (cfgdiff.sampling.generate.sample_seed takes 64-bit seeds)
W_RANGE = (-10.0, 50.0)  # the w a request may ask for: past -1 anti-guidance, far beyond any useful strength
PARAM_PREFIX = "p."  # method parameters travel as p.NAME=value
DEFAULT_INTERVAL = (0.28, 5.42)  # Kynkäänniemi et al. 2024's EDM2-XXL interval in σ, the page's starting values
QUERY_KEYS = ("classes", "n", "sampler", "steps", "w", "method", "interval", "seed", "v_interp", "compose")


class RequestError(ValueError):
    """A request the explorer refuses: one line for the page (HTTP 400)."""


class BusyError(RuntimeError):
    """The model stayed busy with other requests for longer than the wait allowed (HTTP 503)."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_samples: int = 100  # classes × n per request (a 10×8 grid is 80)
    max_steps: int = 256  # sampling steps per request (the paper's ancestral sampler runs 128 to 1024)
    wait_seconds: float = 30.0  # how long a request waits for the model before a 503

    def __post_init__(self) -> None:
        if self.max_samples < 1 or self.max_steps < 1:
            raise ValueError(f"limits must be >= 1, got max_samples={self.max_samples}, max_steps={self.max_steps}")


@dataclass(frozen=True)
class GridRequest:
    """One checked request."""

    classes: tuple[int, ...]
    n: int  # samples per class
    sampler: str
    steps: int
    w: float  # the paper's w: ε̃ = (1 + w) ε(z, c) - w ε(z)
    method: str = "cfg"
    params: tuple[tuple[str, float], ...] = ()
    interval: tuple[float, float] | None = None  # (σ_lo, σ_hi]: guide only there
    seed: int = 0
    v_interp: float = 0.3  # the paper's v (ancestral sampler only)
    compose: tuple[tuple[int, float], ...] = ()  # composed conditions (c_i, w_i): one row of n samples, no classes


@dataclass
class GridResult:
    """A drawn grid and how it was drawn."""

    request: GridRequest
    x: np.ndarray = field(repr=False)  # [N, *data_shape]
    labels: np.ndarray = field(repr=False)  # [N]
    png: bytes = field(repr=False)
    nfe_per_sample: float
    network_calls: int
    seconds: float  # sampling
    seconds_encode: float
    seconds_wait: float

    def to_json(self, class_names: Sequence[str]) -> dict[str, Any]:
        """The response body; infinite values (σ_hi = inf, APG's r = inf) as the strings "inf" / "-inf"."""
        r = self.request
        return _json_safe({
            "image": data_uri(self.png), "w": r.w, "classes": list(r.classes),
            "class_names": [class_names[c] for c in r.classes], "n": r.n, "samples": len(self.labels),
            "sampler": r.sampler, "steps": r.steps, "method": r.method, "params": dict(r.params),
            "interval": list(r.interval) if r.interval else None, "seed": r.seed, "v_interp": r.v_interp,
            "compose": describe_terms(r.compose) if r.compose else None,
            "nfe_per_sample": self.nfe_per_sample, "network_calls": self.network_calls,
            "seconds": self.seconds, "seconds_encode": self.seconds_encode, "seconds_wait": self.seconds_wait,
        })


def _json_safe(value: Any) -> Any:
    """JSON has no infinity or NaN: such floats become their text ("inf", "-inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _int(name: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise RequestError(f"{name} must be an integer, got {text!r}") from None
    if not lo <= value <= hi:
        bound = f"[{lo}, 2^63 - 1]" if hi == MAX_SEED else f"[{lo}, {hi}]"
        raise RequestError(f"{name} must lie in {bound}, got {value}")
    return value


def _float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RequestError(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {text!r}")
    return value


class Explorer:
    """Grids on demand from one eps_fn (a trained model): ``parse`` a query, ``render`` it."""

    def __init__(
        self,
        eps_fn: EpsFn,
        *,
        data_shape: Sequence[int],
        image_shape: Sequence[int] | None = None,
        name: str = "model",
        class_names: Sequence[str] = (),
        x_bound: float | None = 1.0,
        limits: Limits | None = None,
        device: torch.device | str = "cpu",
        methods: Mapping[str, Method] | None = None,
        default_sampler: str = "dpmpp_2m",
        default_steps: int = 10,
        sampler_options: Callable[[str], Mapping[str, Any]] | None = None,
        has_null_label: bool = True,
    ) -> None:
        """``data_shape``: what the sampler draws; ``image_shape``: what a sample looks like after the
        ``decode`` that ``sampler_options(sampler)`` may return (a latent model's VAE; default: data_shape).
        ``sampler_options(sampler)``: further keyword arguments for the ``GuidedRun`` (a diffusers model's
        trained log-SNR range, ``decode``, autocast). ``x_bound``: clip x̂ to [-x_bound, x_bound] (None: no
        clipping, e.g. latents; decoded images are taken to lie in [-1, 1]). ``has_null_label=False``: a model
        without an unconditional class, which only w = 0 can sample."""
        self.eps_fn = eps_fn
        self.num_classes = int(eps_fn.num_classes)
        self.data_shape = tuple(int(d) for d in data_shape)
        self.image_shape = tuple(int(d) for d in image_shape) if image_shape is not None else self.data_shape
        is_image = len(self.image_shape) == 3 and self.image_shape[0] in (1, 3)
        if not (is_image or self.image_shape == (2,)):
            raise ValueError(f"the explorer draws images [C, H, W] with C = 1 or 3, or 2-D points; this model "
                             f"makes {list(self.image_shape)}")
        self.is_image = is_image
        self.sampler_options = sampler_options
        self.has_null_label = has_null_label
        self.name = name
        names = [str(c) for c in class_names] if class_names else [str(k) for k in range(self.num_classes)]
        if len(names) != self.num_classes:
            names = [str(k) for k in range(self.num_classes)]
        self.class_names = names
        self.x_bound = float(x_bound) if x_bound is not None else None
        self.limits = limits or Limits()
        self.device = device
        self.methods = dict(methods) if methods is not None else explorer_methods()
        self.default_sampler = default_sampler if default_sampler in SAMPLERS else next(iter(SAMPLERS))
        self.default_steps = min(default_steps, self.limits.max_steps)
        # the page's first grid: every class (as many as the limit allows), up to 8 samples each
        self.default_n = max(1, min(8, self.limits.max_samples // self.num_classes))
        self.default_classes = list(range(min(self.num_classes, self.limits.max_samples // self.default_n)))
        self.lock = threading.Lock()

    # -- the page's options ------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the page needs to build its controls: classes, samplers, methods, limits, defaults."""
        return {
            "name": self.name, "num_classes": self.num_classes, "class_names": self.class_names,
            "data_shape": list(self.image_shape), "is_image": self.is_image, "samplers": list(SAMPLERS),
            "methods": [m.to_json() for m in self.methods.values()],
            "limits": {"max_samples": self.limits.max_samples, "max_steps": self.limits.max_steps,
                       "w": list(W_RANGE), "seed": [0, MAX_SEED]},
            "defaults": {"classes": self.default_classes, "n": self.default_n, "sampler": self.default_sampler,
                         "steps": self.default_steps,
                         "w": 1.0, "method": "cfg", "interval": list(DEFAULT_INTERVAL), "seed": 0,
                         "v_interp": 0.3},
        }

    # -- checking a request ------------------------------------------------------------------------------

    def _class(self, token: str) -> int:
        token = token.strip()
        try:
            c = int(token)
        except ValueError:
            if token in self.class_names:
                return self.class_names.index(token)
            raise RequestError(f"unknown class {token!r}; classes are 0..{self.num_classes - 1} or their names "
                               f"({', '.join(self.class_names[:12])}{', ...' if self.num_classes > 12 else ''})"
                               ) from None
        if not 0 <= c < self.num_classes:
            raise RequestError(f"class {c} outside [0, {self.num_classes}) for this model")
        return c

    def parse(self, query: Mapping[str, str]) -> GridRequest:
        """A checked ``GridRequest`` from query values (strings); ``RequestError`` names the first bad one."""
        method_name = query.get("method", "cfg")
        if method_name not in self.methods:
            raise RequestError(f"unknown guidance method {method_name!r}; choose from {', '.join(self.methods)}")
        method = self.methods[method_name]
        known_params = {f"{PARAM_PREFIX}{p.name}": p for p in method.params}
        for key in query:
            if key not in QUERY_KEYS and key not in known_params:
                if key.startswith(PARAM_PREFIX):
                    raise RequestError(f"method {method_name} has no parameter {key[len(PARAM_PREFIX):]!r}"
                                       + (f"; it takes {', '.join(p.name for p in method.params)}"
                                          if method.params else ""))
                raise RequestError(f"unknown parameter {key!r}; known: {', '.join(QUERY_KEYS)}")
        compose_text = query.get("compose", "").strip()
        terms: tuple[tuple[int, float], ...] = ()
        if compose_text:  # composed conditions: every sample gets them, one row of n samples, classes unused
            if method_name != "cfg":
                raise RequestError(f"compose is its own guidance method, not {method_name}")
            if not self.has_null_label:
                raise RequestError("this model has no null (unconditional) class, so it cannot compose conditions")
            try:
                terms = parse_terms(compose_text, self.class_names, num_classes=self.num_classes)
            except ValueError as err:
                raise RequestError(str(err)) from None
            method_name = "compose"
        text = "" if terms else query.get("classes", "")
        tokens = [t for t in text.split(",") if t.strip()] if text.strip() else []
        if "classes" in query and not tokens:
            raise RequestError("classes: pick at least one class")
        classes = [self._class(t) for t in tokens] if tokens else ([] if terms else list(self.default_classes))
        duplicate = next((c for i, c in enumerate(classes) if c in classes[:i]), None)
        if duplicate is not None:
            raise RequestError(f"class {duplicate} is given twice")
        n = _int("n (samples per class)", query.get("n", str(self.default_n)), 1, self.limits.max_samples)
        if max(1, len(classes)) * n > self.limits.max_samples:
            raise RequestError(f"{len(classes)} classes x {n} samples = {len(classes) * n} samples; this server "
                               f"draws at most {self.limits.max_samples} per request")
        sampler = query.get("sampler", self.default_sampler)
        if sampler not in SAMPLERS:
            raise RequestError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
        steps = _int("steps", query.get("steps", str(self.default_steps)), 1, self.limits.max_steps)
        if "w" not in query:
            raise RequestError("w is required (the paper's guidance weight: 0 = conditional, -1 = unconditional)")
        w = _float("w", query["w"])
        if not W_RANGE[0] <= w <= W_RANGE[1]:
            raise RequestError(f"w must lie in [{W_RANGE[0]:g}, {W_RANGE[1]:g}] (the paper's guidance weight: "
                               f"0 = conditional, -1 = unconditional), got {w:g}")
        if not self.has_null_label and w != 0.0 and uses_null_label(method_name):
            raise RequestError("this model has no null (unconditional) class, so it cannot be guided: use w = 0")
        interval = None
        if query.get("interval", "").strip():
            parts = query["interval"].split(",")
            if len(parts) != 2:
                raise RequestError(f"interval takes SIGMA_LO,SIGMA_HI, got {query['interval']!r}")
            lo, hi = (_float("interval", p) if p.strip().lower() not in ("inf", "infinity") else math.inf
                      for p in parts)
            if not 0 <= lo < hi:
                raise RequestError(f"interval takes SIGMA_LO,SIGMA_HI with 0 <= SIGMA_LO < SIGMA_HI, got {lo:g},{hi:g}")
            interval = (lo, hi)
        seed = _int("seed", query.get("seed", "0"), 0, MAX_SEED)
        v_interp = _float("v_interp", query.get("v_interp", "0.3"))
        if not 0 <= v_interp <= 1:
            raise RequestError(f"v_interp must lie in [0, 1], got {v_interp:g}")
        params = []
        for key, param in known_params.items():
            if key in query:
                try:
                    params.append((param.name, param.parse(query[key])))
                except ValueError as err:
                    raise RequestError(f"{method_name}: {err}") from None
        if not terms:
            try:  # builds the wrapper, calls no network: a value the method refuses (γ > 1, r <= 0) is one line here
                method.build(self.eps_fn, w, dict(params), x_bound=self.x_bound)
            except ValueError as err:
                raise RequestError(f"{method_name}: {err}") from None
        return GridRequest(tuple(classes), n, sampler, steps, w, method_name, tuple(params), interval, seed,
                           v_interp, terms)

    # -- drawing -----------------------------------------------------------------------------------------

    def render(self, request: GridRequest) -> GridResult:
        """Sample the request's grid (one request at a time) and encode it as PNG."""
        t_wait = time.perf_counter()
        if not self.lock.acquire(timeout=self.limits.wait_seconds):
            raise BusyError(f"the model was busy for {self.limits.wait_seconds:g} s; try again")
        try:
            seconds_wait = time.perf_counter() - t_wait
            labels = torch.tensor(request.classes, dtype=torch.long).repeat_interleave(request.n)
            params = dict(request.params)
            if request.compose:  # the rows' labels are not read: the null label
                labels = torch.full((request.n,), self.num_classes, dtype=torch.long)

                def guide(network: EpsFn, weight: GuidanceWeight) -> EpsFn:
                    return compose(network, weight, terms=request.compose)
            else:
                method = self.methods[request.method]

                def guide(network: EpsFn, weight: GuidanceWeight) -> EpsFn:
                    return method.build(network, weight, params, x_bound=self.x_bound)

            kwargs: dict[str, Any] = {"clip_x": self.x_bound if self.x_bound is not None else False}
            if request.sampler == "ancestral":
                kwargs["v_interp"] = request.v_interp
            if self.sampler_options is not None:
                kwargs.update(self.sampler_options(request.sampler))
            run = GuidedRun.from_options(self.eps_fn, sampler=request.sampler, steps=request.steps,
                                         method=request.method, guide=guide, interval=request.interval,
                                         batch_size=max(1, labels.shape[0]), device=self.device,
                                         data_shape=self.data_shape, **kwargs)
            t0 = time.perf_counter()
            x = run.samples(labels, request.w, seed=request.seed)
            if tuple(x.shape[1:]) != self.image_shape:
                raise RuntimeError(f"samples of shape {tuple(x.shape[1:])}, expected {self.image_shape}")
            seconds = time.perf_counter() - t0
        finally:
            self.lock.release()
        t1 = time.perf_counter()
        x_np = x.numpy()
        bound = self.x_bound if self.x_bound is not None else 1.0
        if self.is_image:
            png = grid_png(x_np, max(1, len(request.classes)), bound)
        else:
            png = scatter_png(x_np, labels.numpy(), extent=bound * 1.05)
        seconds_encode = time.perf_counter() - t1
        return GridResult(request, x_np, labels.numpy(), png, run.denoiser_rows() / labels.shape[0],
                          run.denoiser_calls(), seconds, seconds_encode, seconds_wait)


def request_as_query(request: GridRequest) -> dict[str, str]:
    """The query values that ``Explorer.parse`` turns back into ``request`` (a round trip)."""
    d = asdict(request)
    query = {"classes": ",".join(str(c) for c in request.classes), "n": str(request.n), "sampler": request.sampler,
             "steps": str(request.steps), "w": repr(request.w), "method": request.method, "seed": str(request.seed),
             "v_interp": repr(request.v_interp)}
    if d["interval"] is not None:
        query["interval"] = ",".join(repr(v) for v in request.interval)
    for name, value in request.params:
        query[f"{PARAM_PREFIX}{name}"] = repr(value)
    if request.compose:
        query["compose"] = describe_terms(request.compose)
        query["method"] = "cfg"
        del query["classes"]
    return query
