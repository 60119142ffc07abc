"""The guidance methods the explorer offers, each with the numeric parameters its page shows.

Plain classifier-free guidance (Ho & Salimans 2022), ε̃ = (1 + w) ε(z, c) - w ε(z), is always there. Methods
registered in ``cfgdiff.guidance`` (a mapping ``GUIDANCE_METHODS``, name -> a function
``method(eps_fn, w, *, param=default, ...) -> eps_fn``, or an object carrying such a function as ``.guide``,
``.build``, ``.fn`` or ``.function``) are added by reading their signatures: every keyword parameter with a
numeric default becomes a number field on the page. A method that needs more than numbers (a classifier, a
second model) is left out, since a request can carry numbers only. So a method added to the registry
appears in the explorer without an edit here.

A method's description is the entry's ``title`` and ``formula`` when it has them (``GuidanceMethod``), its
defaults the entry's ``recommended`` values, else the signature's. A parameter named ``bound`` is the data range
(e.g. dynamic thresholding's): the page does not show it, the explorer passes the model's own ``x_bound``. A
boolean parameter becomes a check box.

The guidance interval (Kynkäänniemi et al. 2024) is not a method but a schedule of w, λ -> w or 0, and
composes with every method: the explorer passes ``guidance_interval_sigma(w, ...)`` as the weight.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cfgdiff.core.contract import EpsFn
from cfgdiff.guidance import GuidanceWeight, cfg

Build = Callable[..., EpsFn]  # build(eps_fn, w, params, *, x_bound) -> eps_fn
REGISTRY_NAMES = ("GUIDANCE_METHODS", "METHODS", "REGISTRY")  # where cfgdiff.guidance may keep its registry
CALLABLE_ATTRS = ("guide", "build", "fn", "function", "make")
DATA_RANGE_PARAM = "bound"  # filled with the model's x_bound, not asked for
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Param:
    """A numeric parameter of a guidance method: its default and, when known, its bounds."""

    name: str
    default: float | int | bool
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""
    boolean: bool = False

    def parse(self, text: str) -> float | int | bool:
        """The value of ``text`` for this parameter; ValueError (one line) when it is not a valid one."""
        if self.boolean:
            word = text.strip().lower()
            if word not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError(f"{self.name} must be true or false, got {text!r}")
            return word in TRUE_WORDS
        kind = "an integer" if self.integer else "a number"
        try:
            value: float | int = int(text) if self.integer else float(text)
        except ValueError:
            raise ValueError(f"{self.name} must be {kind}, got {text!r}") from None
        if math.isnan(value):  # ±inf stays: some parameters take it (APG's r = inf: no clamp)
            raise ValueError(f"{self.name} must be a number, got {text!r}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{self.name} must be >= {self.minimum:g}, got {text}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{self.name} must be <= {self.maximum:g}, got {text}")
        return value

    def to_json(self) -> dict[str, Any]:
        default = self.default if not (isinstance(self.default, float) and math.isinf(self.default)) else str(
            self.default)  # JSON has no infinity: "inf" (the number field takes it as text)
        return {"name": self.name, "default": default, "integer": self.integer, "boolean": self.boolean,
                "min": self.minimum, "max": self.maximum, "doc": self.doc}


@dataclass(frozen=True)
class Method:
    """A guidance method as the explorer uses it: ``build(eps_fn, w, params) -> eps_fn``."""

    name: str
    doc: str
    params: tuple[Param, ...]
    build: Build

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "doc": self.doc, "params": [p.to_json() for p in self.params]}


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _cfg_build(eps_fn: EpsFn, w: GuidanceWeight, params: Mapping[str, float], *, x_bound: float = 1.0) -> EpsFn:
    return cfg(eps_fn, w)


CFG = Method("cfg", "classifier-free guidance (Ho & Salimans 2022): ε̃ = (1 + w) ε(z, c) − w ε(z)", (), _cfg_build)


def _function_of(entry: Any) -> Callable[..., Any] | None:
    """The guide function of a registry entry: the entry itself if it is a function, else a callable attribute."""
    for attr in CALLABLE_ATTRS:
        fn = getattr(entry, attr, None)
        if callable(fn) and not isinstance(fn, type):
            return fn
    return entry if callable(entry) else None


def method_from_function(name: str, fn: Callable[..., Any], doc: str = "",
                         defaults: Mapping[str, Any] | None = None) -> Method | None:
    """A ``Method`` for ``fn(eps_fn, w, *, p=default, ...)``, or None when a parameter without a default (a
    classifier, a second model) makes it unusable from a request of numbers. ``defaults`` override the
    signature's (a registry's recommended values)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        return None
    params: list[Param] = []
    takes_bound = False
    for p in list(signature.parameters.values())[2:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name == DATA_RANGE_PARAM:
            takes_bound = True
            continue
        default = (defaults or {}).get(p.name, p.default)
        if default is inspect.Parameter.empty:
            return None  # needs something a request cannot give
        if isinstance(default, bool):
            params.append(Param(p.name, default, boolean=True))
        elif isinstance(default, (int, float)):
            params.append(Param(p.name, default, integer=isinstance(default, int)))
        # any other default (a string option): kept as it is

    def build(eps_fn: EpsFn, w: GuidanceWeight, values: Mapping[str, Any], *, x_bound: float = 1.0) -> EpsFn:
        extra = {DATA_RANGE_PARAM: x_bound} if takes_bound else {}
        return fn(eps_fn, w, **values, **extra)

    return Method(name, doc or _first_line(fn), tuple(params), build)


def registry_methods(module: Any) -> dict[str, Method]:
    """The methods of a guidance registry in ``module`` (see the module docstring), by name."""
    registry = next((getattr(module, n) for n in REGISTRY_NAMES if isinstance(getattr(module, n, None), Mapping)),
                    None)
    methods: dict[str, Method] = {}
    if registry is None:
        return methods
    for name, entry in registry.items():
        fn = _function_of(entry)
        if fn is None:
            continue
        title, formula = getattr(entry, "title", ""), getattr(entry, "formula", "")
        if isinstance(title, str) and title:
            doc = f"{title}: {formula}" if isinstance(formula, str) and formula else title
        else:
            doc = str(getattr(entry, "doc", "") or getattr(entry, "description", "") or _first_line(fn))
        recommended = getattr(entry, "recommended", None)
        method = method_from_function(str(name), fn, doc, recommended if isinstance(recommended, Mapping) else None)
        if method is not None:
            methods[method.name] = method
    return methods


def explorer_methods() -> dict[str, Method]:
    """Plain CFG, then every usable method of ``cfgdiff.guidance``'s registry (if it has one)."""
    import cfgdiff.guidance as guidance

    methods = {CFG.name: CFG}
    for name, method in registry_methods(guidance).items():
        if name != CFG.name:
            methods[name] = method
    return methods
