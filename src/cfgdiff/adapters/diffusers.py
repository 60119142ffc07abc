"""diffusers models as cfgdiff eps_fns: DiT (``DiTTransformer2DModel``) and class-conditional ``UNet2DModel``.

A diffusers denoiser is a discrete-time network ``model(z_t, t, class_labels)`` trained at integer timesteps
t = 0 .. T-1 of its scheduler's ᾱ_t (``alphas_cumprod``, from the scheduler config's betas). ``DiffusersEpsFn``
puts it behind cfgdiff's one contract ``eps = eps_fn(z, logsnr, labels)``:

* **time**: λ maps to the fractional timestep t(λ) by linear interpolation in λ between the bracketing
  λ_t = log(ᾱ_t/(1 - ᾱ_t)) (``cfgdiff.adapters.discrete``, as k-diffusion's ``DiscreteSchedule``); at
  λ = λ_t the network sees t itself. The model was trained on [λ_{T-1}, λ_0] only: ``logsnr_min`` /
  ``logsnr_max`` state that range, the CLI clips the samplers' grids to it, and λ outside it is clamped;
* **input**: z is diffusers' z_t as it is (both are variance preserving, z = α x + σ ε with α² = ᾱ_t);
* **output**: a learned-variance output (``out_channels = 2 × in_channels``, DiT) keeps its ε half; ε-,
  v- and x-prediction (the scheduler's ``prediction_type``: epsilon, v_prediction, sample) become ε̂
  (``eps_from_prediction``);
* **labels**: cfgdiff's classes 0 .. K-1 are the model's class ids (all, or the ``classes`` given), and cfgdiff's
  null label K is the model's null class: DiT's is its extra embedding row ``num_embeds_ada_norm`` (class 1000
  for DiT-XL/2, which is exactly cfgdiff's K); a UNet's is the ``null_label`` you name. A model with no null
  class cannot be guided with classifier-free guidance: calling it with the null label raises
  ``NoNullLabelError``.

**Perturbation** (PAG and skip-layer guidance, ``cfgdiff.core.perturbation``): layers are the model's own module
names (``model.named_modules()``). ``attention-identity`` takes any self-attention ``Attention`` module (DiT's
``transformer_blocks.i.attn1``, a UNet's ``mid_block.attentions.0``): for the switched-on rows its processor is
swapped, for the one call, for the identity map (output = to_out(to_v(h)), as diffusers'
``PAGIdentitySelfAttnProcessor2_0``), the other rows keep the model's own processor. ``skip`` takes DiT's
``transformer_blocks.i`` and a UNet's ``mid_block``, its self-attention modules and its resnets whose input and
output shapes agree: for the switched-on rows the module returns its input (a forward hook for the one call).
Defaults: the middle transformer block (its ``attn1`` for PAG) of a DiT, ``mid_block.attentions.0`` of a UNet.

Guidance stays outside the network, as everywhere in cfgdiff: ``cfg(adapter, w)`` makes one batched call of 2B
rows, conditional rows then null rows, exactly the arithmetic of diffusers' ``DiTPipeline`` with its
``guidance_scale`` s = w + 1.

``load_diffusers(DIR)`` reads a local folder in any of the three layouts users have (``folder_layout``):

* ``pipeline``: a pipeline saved with ``save_pretrained`` (``model_index.json``, ``transformer/`` or ``unet/``,
  ``scheduler/``, optional ``vae/``);
* ``components``: the same sub-folders without ``model_index.json``, what a training script's checkpoint folder
  holds (``unet/``, often ``scheduler/``; ``transformer/`` beside ``vae/``);
* ``model``: a bare model folder, ``unet.save_pretrained(DIR)`` (``config.json`` and
  ``diffusion_pytorch_model.safetensors``).

The noise schedule comes from ``scheduler=`` (``--diffusers-scheduler``: a folder holding
``scheduler_config.json``, a folder with a ``scheduler/`` sub-folder, or a diffusers scheduler class name whose
defaults are taken), else from the folder's ``scheduler/``; a pipeline must have one, the other two layouts
without one assume ``DDPMScheduler()``'s defaults (1000 linear betas 1e-4 .. 0.02, epsilon prediction) and say
so in ``DiffusersModel.notes``. Nothing is downloaded (``HF_HUB_OFFLINE=1`` is
set before diffusers is imported) and only safetensors weights are read (nothing is unpickled). A latent
model (DiT with its VAE) samples latents and ``decode`` turns them into images in [-1, 1].

diffusers is an optional dependency: ``pip install 'cfgdiff[diffusers]'``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cfgdiff.adapters.discrete import PREDICTION_TYPES, DiscreteSchedule, eps_from_prediction
from cfgdiff.core.perturbation import ActivePerturbation, active_perturbation, merge_rows, split_rows

INSTALL_HINT = "pip install 'cfgdiff[diffusers]'"
DENOISER_COMPONENTS = ("transformer", "unet")  # model_index.json keys of the denoiser, in the order looked for
SUPPORTED_MODELS = ("DiTTransformer2DModel", "UNet2DModel")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class DiffusersError(ValueError):
    """A diffusers model or folder that cfgdiff cannot use as asked: one line, the CLI's exit status 2."""


class NoNullLabelError(DiffusersError):
    """Classifier-free guidance asked of a model that has no null (unconditional) class."""


def import_diffusers():
    """The ``diffusers`` module, imported offline (``HF_HUB_OFFLINE=1``), or a one-line ``DiffusersError``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded, whatever a config asks for
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        import diffusers
    except ImportError as err:
        raise DiffusersError(f"the diffusers adapter needs the optional package diffusers ({err}): {INSTALL_HINT}"
                             ) from None
    return diffusers


def _model_class_name(model: nn.Module) -> str:
    return type(model).__name__


def _label_embedding_rows(model: nn.Module) -> tuple[str, int, int | None]:
    """(kind, rows of the class-embedding table, the model's own null row or None) of a supported model."""
    config = getattr(model, "config", {})
    name = _model_class_name(model)
    if name == "DiTTransformer2DModel" or (config.get("norm_type") == "ada_norm_zero"
                                           and config.get("num_embeds_ada_norm") is not None):
        table = next((m for m in model.modules() if hasattr(m, "embedding_table") and hasattr(m, "num_classes")),
                     None)
        if table is None:
            raise DiffusersError(f"{name}: no class-label embedding found (num_embeds_ada_norm is not set)")
        rows = int(table.embedding_table.num_embeddings)
        n = int(table.num_classes)  # num_embeds_ada_norm; the row after the classes is DiT's null label
        return "dit", rows, (n if rows > n else None)
    if name == "UNet2DModel":
        if config.get("time_embedding_type", "positional") != "positional":
            raise DiffusersError(f"UNet2DModel with time_embedding_type={config.get('time_embedding_type')!r} is not "
                                 "a discrete-time DDPM network; cfgdiff adapts the positional time embedding only")
        if config.get("num_class_embeds") is None or config.get("class_embed_type") is not None:
            raise DiffusersError("this UNet2DModel has no class conditioning (num_class_embeds is not set): "
                                 "cfgdiff samples class-conditional models, and guidance needs class labels")
        return "unet", int(config["num_class_embeds"]), None
    raise DiffusersError(f"unsupported model class {name}: cfgdiff adapts {' and '.join(SUPPORTED_MODELS)}")


def _data_shape(model: nn.Module) -> tuple[int, int, int]:
    config = model.config
    size = config.get("sample_size")
    if size is None:
        raise DiffusersError(f"{_model_class_name(model)} has no sample_size in its config: the image size is unknown")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(config["in_channels"]), int(h), int(w)


class DiffusersEpsFn(nn.Module):
    """A diffusers DiT or class-conditional UNet2DModel as an eps_fn ε̂ = eps_fn(z, logsnr, labels).

    ``alphas_cumprod``: the scheduler's ᾱ_t; ``prediction_type``: the scheduler's (epsilon, v_prediction,
    sample). ``null_label``: the model's class id used as cfgdiff's null label K; "auto" takes DiT's own null row
    and no null for a UNet; None means no null (guidance refused). ``classes``: the model's class ids exposed as
    cfgdiff's classes 0 .. K-1 (default: all ids but the null). ``id2label``: the model's class names.

    The model is put in eval mode: DiT's label embedding drops labels at random in training mode.
    Attributes of the contract: ``num_classes`` (K), ``data_shape`` ([C, H, W] the network works on, latent for a
    latent model), ``class_names``, ``x_bound``, and ``logsnr_min`` / ``logsnr_max``, the trained λ range.
    """

    def __init__(
        self,
        model: nn.Module,
        alphas_cumprod: torch.Tensor | Sequence[float],
        *,
        prediction_type: str = "epsilon",
        null_label: int | str | None = "auto",
        classes: Sequence[int] | None = None,
        id2label: dict[int, str] | None = None,
        x_bound: float | None = 1.0,
    ) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise DiffusersError(f"unknown prediction_type {prediction_type!r}: cfgdiff converts "
                                 f"{', '.join(PREDICTION_TYPES)} to eps")
        self.model = model.eval()
        self.kind, rows, own_null = _label_embedding_rows(model)
        self.schedule = DiscreteSchedule(alphas_cumprod)
        self.prediction_type = prediction_type
        self.data_shape = _data_shape(model)
        in_ch, out_ch = int(model.config["in_channels"]), int(model.config.get("out_channels") or model.config[
            "in_channels"])
        if out_ch not in (in_ch, 2 * in_ch):
            raise DiffusersError(f"{_model_class_name(model)} maps {in_ch} channels to {out_ch}: expected the same "
                                 f"number, or twice as many for a learned variance")
        self.learned_variance = out_ch == 2 * in_ch
        self.in_channels = in_ch
        if null_label == "auto":
            null_label = own_null
        if null_label is not None and not 0 <= int(null_label) < rows:
            raise DiffusersError(f"null label {null_label} outside the model's {rows} class embeddings [0, {rows})")
        self.model_null_label = None if null_label is None else int(null_label)
        if classes is None:
            classes = [c for c in range(rows) if c != self.model_null_label]
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c < rows or c == self.model_null_label]
        if bad:
            raise DiffusersError(f"class id {bad[0]} is not one of the model's classes [0, {rows}) "
                                 f"(null label {self.model_null_label})")
        if not classes:
            raise DiffusersError("no classes left to sample")
        self.model_classes = tuple(classes)
        self.num_classes = len(classes)
        self.has_null_label = self.model_null_label is not None
        table = list(classes) + ([self.model_null_label] if self.has_null_label else [])
        device = next(model.parameters()).device
        self.register_buffer("label_map", torch.tensor(table, dtype=torch.long, device=device), persistent=False)
        self.class_aliases: dict[str, int] = {}
        names = []
        for index, c in enumerate(classes):
            text = (id2label or {}).get(c)
            synonyms = [s.strip() for s in str(text).split(",") if s.strip()] if text else []
            names.append(synonyms[0] if synonyms else str(c))
            for s in synonyms:
                self.class_aliases.setdefault(s.lower(), index)
        self.class_names = tuple(names)
        self.x_bound = x_bound

    @property
    def logsnr_min(self) -> float:
        return self.schedule.logsnr_min

    @property
    def logsnr_max(self) -> float:
        return self.schedule.logsnr_max

    def model_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """cfgdiff labels [0, K] -> the model's class ids (K -> the model's null label)."""
        if not self.has_null_label and bool((labels >= self.num_classes).any()):
            raise NoNullLabelError(
                "this model has no null (unconditional) class, so it cannot be guided with classifier-free guidance "
                "(use w = 0, or name the class embedding trained as the null label with --null-label N)")
        return self.label_map[labels.to(self.label_map.device)]

    def network(self, z: torch.Tensor, t: torch.Tensor, model_labels: torch.Tensor) -> torch.Tensor:
        """The raw diffusers output at (fractional) timesteps t [B] and model class ids, variance half dropped."""
        z_in = z.to(next(self.model.parameters()).dtype)  # under autocast the model casts further itself
        if self.kind == "dit":
            out = self.model(z_in, timestep=t, class_labels=model_labels, return_dict=False)[0]
        else:
            out = self.model(z_in, t, class_labels=model_labels, return_dict=False)[0]
        return out[:, : self.in_channels] if self.learned_variance else out

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ε̂(z, λ, c): the network at t(λ) with λ clamped to the trained range, converted to ε; rows switched on by
        ``cfgdiff.core.perturbation`` go through the perturbed layers."""
        logsnr = self.schedule.clamp_logsnr(logsnr.reshape(-1))
        t = self.schedule.t_from_logsnr(logsnr).to(torch.float32)  # [B] fractional timesteps
        active = active_perturbation(z.shape[0])
        with nullcontext() if active is None else self._perturbed(active):
            out = self.network(z, t, self.model_labels(labels))
        return eps_from_prediction(out, z, logsnr, self.prediction_type)

    # -- perturbation (PAG, skip-layer guidance) ---------------------------------------------------------------

    def perturbable_layers(self, kind: str) -> tuple[str, ...]:
        """The model's module names that ``kind`` can perturb (module docstring)."""
        attention = _attention_class()
        names: list[str] = []
        for name, module in self.model.named_modules():
            if kind == "attention-identity":
                if isinstance(module, attention) and not module.is_cross_attention:
                    names.append(name)
            elif kind == "skip":
                if self.kind == "dit":
                    if re.fullmatch(r"transformer_blocks\.\d+", name):
                        names.append(name)
                elif name == "mid_block" or (isinstance(module, attention) and not module.is_cross_attention
                                             and module.residual_connection) or _same_shape_resnet(module):
                    names.append(name)
        return tuple(names)

    def default_perturbed_layers(self, kind: str) -> tuple[str, ...]:
        """DiT: its middle transformer block (``attn1`` for PAG); UNet: ``mid_block.attentions.0`` (else the middle
        one of the available layers). Not yet chosen by a measurement."""
        available = self.perturbable_layers(kind)
        if not available:
            return ()
        if self.kind == "dit":
            blocks = len(getattr(self.model, "transformer_blocks", ()))
            name = f"transformer_blocks.{blocks // 2}" + (".attn1" if kind == "attention-identity" else "")
            if name in available:
                return (name,)
        elif "mid_block.attentions.0" in available:
            return ("mid_block.attentions.0",)
        return (available[len(available) // 2],)

    @contextmanager
    def _perturbed(self, active: ActivePerturbation):
        """The model's named layers perturbed for ``active.rows`` during one call, restored afterwards."""
        modules = dict(self.model.named_modules())
        kind, rows = active.perturbation.kind, active.rows.to(next(self.model.parameters()).device)
        missing = [name for name in active.perturbation.layers if name not in modules]
        if missing:
            raise DiffusersError(f"{_model_class_name(self.model)} has no module {missing[0]!r}")
        swapped, hooks = [], []
        try:
            for name in active.perturbation.layers:
                module = modules[name]
                if kind == "attention-identity":
                    swapped.append((module, module.processor))
                    module.processor = RowIdentityAttnProcessor(rows, module.processor)
                else:
                    hooks.append(module.register_forward_hook(_skip_rows_hook(rows), with_kwargs=True))
            yield
        finally:
            for module, processor in swapped:
                module.processor = processor
            for hook in hooks:
                hook.remove()


def _attention_class() -> type:
    from diffusers.models.attention_processor import Attention

    return Attention


def _same_shape_resnet(module: nn.Module) -> bool:
    """A diffusers ResnetBlock2D that neither resamples nor changes the channel count (it can return its input)."""
    return (type(module).__name__ == "ResnetBlock2D" and module.in_channels == module.out_channels
            and not module.up and not module.down)


def _skip_rows_hook(rows: torch.Tensor):
    """A forward hook that gives the switched-on rows the module's input as its output (the module skipped)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        inputs = args[0] if args else kwargs["hidden_states"]
        tensor = output[0] if isinstance(output, tuple) else output
        if tensor.shape != inputs.shape:
            raise DiffusersError(f"{type(module).__name__} changes the shape {tuple(inputs.shape)} -> "
                                 f"{tuple(tensor.shape)}: it cannot be skipped")
        mask = rows.reshape(-1, *([1] * (tensor.ndim - 1)))
        skipped = torch.where(mask, inputs.to(tensor.dtype), tensor)
        return (skipped, *output[1:]) if isinstance(output, tuple) else skipped

    return hook


class RowIdentityAttnProcessor:
    """An attention processor whose switched-on rows take the identity attention map, softmax(QKᵀ/√d) -> I, so the
    attention's output is to_out(to_v(h)) (PAG, Ahn et al. 2024; diffusers' ``PAGIdentitySelfAttnProcessor2_0``
    for those rows); the other rows go through ``base``, the module's own processor."""

    def __init__(self, rows: torch.Tensor, base: Any) -> None:
        self.rows, self.base = rows, base

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        keep, switched = split_rows(self.rows)

        def rows_of(x: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
            return x[index] if x is not None and x.shape[0] == self.rows.numel() else x

        perturbed = self.identity(attn, hidden_states[switched], rows_of(temb, switched))
        if keep.numel() == 0:
            return perturbed
        plain = self.base(attn, hidden_states[keep], rows_of(encoder_hidden_states, keep),
                          rows_of(attention_mask, keep), **({"temb": temb[keep]} if temb is not None else {}))
        return merge_rows(plain, perturbed, self.rows)

    @staticmethod
    def identity(attn: nn.Module, hidden_states: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """The self-attention with the identity map: residual + to_out(to_v(norm(h))), rescaled as diffusers does."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape = hidden_states.shape
        if hidden_states.ndim == 4:  # [B, C, H, W] -> [B, HW, C]
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        hidden_states = attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states)))  # V, projected; dropout
        if len(shape) == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


# -- loading a saved pipeline --------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DiffusersError(f"{path}: not a readable JSON file ({err})") from None


DEFAULT_SCHEDULER = "DDPMScheduler"  # assumed where a folder has no scheduler and none is named
DEFAULT_SCHEDULER_NOTE = ("{where} has no scheduler: assuming DDPMScheduler's defaults (1000 timesteps, linear "
                          "betas 1e-4 .. 0.02, epsilon prediction); name another with --diffusers-scheduler "
                          "DIR_OR_CLASS")
LAYOUTS = ("pipeline", "components", "model")


def folder_layout(folder: Path) -> str | None:
    """``pipeline`` (model_index.json), ``components`` (a ``transformer/`` or ``unet/`` sub-folder with a
    config.json, no model_index.json: a training checkpoint), ``model`` (config.json of a model class, a bare
    ``save_pretrained`` of the network), or None."""
    if (folder / "model_index.json").is_file():
        return "pipeline"
    if any((folder / c / "config.json").is_file() for c in DENOISER_COMPONENTS):
        return "components"
    if (folder / "config.json").is_file():
        return "model"
    return None


def check_local_folder(path: str | os.PathLike) -> Path:
    """``path`` as a local folder in one of ``LAYOUTS``, or a one-line ``DiffusersError`` (a hub id gets the
    save-first hint)."""
    text = str(path)
    folder = Path(text).expanduser()
    if not folder.exists():
        if _HUB_ID.match(text):
            raise DiffusersError(
                f"{text} is not a local folder, and cfgdiff downloads nothing: if it is a Hugging Face Hub id, save "
                f"the pipeline locally first, e.g. python -c \"from diffusers import DiffusionPipeline; "
                f"DiffusionPipeline.from_pretrained('{text}').save_pretrained('DIR')\", and pass DIR")
        raise DiffusersError(f"no folder at {text}")
    if not folder.is_dir():
        raise DiffusersError(f"{text} is a file, not a folder saved with a diffusers pipeline's save_pretrained")
    if folder_layout(folder) is None:
        raise DiffusersError(f"{text} is not a saved diffusers pipeline, model or training checkpoint (no "
                             "model_index.json, no unet/ or transformer/ with a config.json, no config.json): save "
                             "one with pipeline.save_pretrained(DIR) or unet.save_pretrained(DIR)")
    return folder


def _component_dir(folder: Path, index: dict[str, Any], name: str) -> Path | None:
    if name not in index or index[name] is None or (isinstance(index[name], list) and index[name][-1] is None):
        return None
    sub = folder / name
    if not sub.is_dir():
        raise DiffusersError(f"{folder}: model_index.json names a {name} but there is no {name}/ folder")
    return sub


def _check_safetensors(sub: Path) -> None:
    if any(sub.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in sub.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled:
        raise DiffusersError(f"{sub}: only pickled weights ({pickled[0]}); cfgdiff never unpickles files: re-save "
                             "the pipeline with save_pretrained(DIR, safe_serialization=True)")
    raise DiffusersError(f"{sub}: no weights (*.safetensors)")


@contextmanager
def _quiet_diffusers(diffusers):
    """diffusers' logger at error level while loading (unexpected-config-key notices are not ours to print)."""
    logging = diffusers.utils.logging
    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)


def _load_model(diffusers, sub: Path) -> nn.Module:
    config = _read_json(sub / "config.json")
    name = config.get("_class_name", "")
    if name == "Transformer2DModel" and config.get("norm_type") == "ada_norm_zero":
        name = "DiTTransformer2DModel"  # DiT checkpoints published before the class was split off
    if name not in SUPPORTED_MODELS:
        raise DiffusersError(f"{sub}: unsupported model class {name or '(none)'}; cfgdiff adapts "
                             f"{' and '.join(SUPPORTED_MODELS)}")
    _check_safetensors(sub)
    try:
        return getattr(diffusers, name).from_pretrained(str(sub), use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DiffusersError(f"{sub}: cannot load the {name} ({first})") from None


def _load_scheduler(diffusers, sub: Path | None, name: str | None = None):
    """The scheduler of ``sub/scheduler_config.json``, or (``sub`` None) the class ``name`` with its defaults."""
    if sub is None:
        config: dict[str, Any] = {}
        where = f"--diffusers-scheduler {name}"
    else:
        config_path = sub / "scheduler_config.json"
        if not config_path.is_file():
            raise DiffusersError(f"{sub}: no scheduler_config.json")
        config = _read_json(config_path)
        name, where = config.get("_class_name", DEFAULT_SCHEDULER), str(config_path)
    cls = getattr(diffusers, str(name), None)
    if cls is None or not (isinstance(cls, type) and str(name).endswith("Scheduler")):
        raise DiffusersError(f"{where}: unknown scheduler class {name} (e.g. DDPMScheduler, DDIMScheduler)")
    try:
        scheduler = cls.from_config(config) if config else cls()
    except (ValueError, TypeError, NotImplementedError) as err:
        raise DiffusersError(f"{where}: cannot build the {name} ({err})") from None
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise DiffusersError(f"{name} has no alphas_cumprod: cfgdiff adapts discrete-time (DDPM-family) schedules")
    return scheduler


def _read_id2label(index: dict[str, Any], model: nn.Module) -> dict[int, str] | None:
    raw = index.get("id2label") or model.config.get("id2label")
    if not raw:
        return None
    try:
        return {int(k): str(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError):
        raise DiffusersError("id2label must map class ids to names") from None


class DiffusersModel:
    """A loaded diffusers pipeline: the eps_fn, its scheduler and, for a latent model, the VAE and ``decode``.

    ``eps_fn``: a ``DiffusersEpsFn`` (the contract's attributes, the λ range); ``scheduler``: the pipeline's own
    diffusers scheduler (for comparisons); ``vae`` or None; ``image_shape``: what ``decode`` returns per sample
    ([C, H, W]; the eps_fn's ``data_shape`` for a pixel model).
    """

    def __init__(self, eps_fn: DiffusersEpsFn, scheduler: Any, vae: nn.Module | None, path: Path | None = None,
                 decode_batch_size: int = 64) -> None:
        self.eps_fn = eps_fn
        self.scheduler = scheduler
        self.vae = vae.eval() if vae is not None else None
        self.path = path
        self.decode_batch_size = decode_batch_size
        self.notes: list[str] = []  # what was assumed while loading (a default schedule), one line each
        self.layout = "pipeline"  # which of LAYOUTS the folder had
        if vae is None:
            self.image_shape = tuple(eps_fn.data_shape)
        else:
            factor = 2 ** (len(vae.config["block_out_channels"]) - 1)
            c, h, w = eps_fn.data_shape
            if int(vae.config["latent_channels"]) != c:
                raise DiffusersError(f"the VAE's {vae.config['latent_channels']} latent channels do not match the "
                                     f"denoiser's {c} input channels")
            self.image_shape = (int(vae.config["out_channels"]), h * factor, w * factor)

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    def to(self, device: torch.device | str) -> DiffusersModel:
        self.eps_fn.to(device)
        if self.vae is not None:
            self.vae.to(device)
        return self

    def decode(self, z: torch.Tensor, *, autocast: bool = False) -> torch.Tensor:
        """Latents [B, C, h, w] -> images [B, C', H, W] in [-1, 1], in chunks of ``decode_batch_size`` rows:
        x = VAE.decode(z / scaling_factor + shift_factor), clamped as diffusers' pipelines do."""
        if self.vae is None:
            return z
        scale = float(self.vae.config.get("scaling_factor") or 1.0)
        shift = float(self.vae.config.get("shift_factor") or 0.0)
        device = next(self.vae.parameters()).device
        dtype = next(self.vae.parameters()).dtype
        out = []
        context = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else nullcontext()
        with torch.inference_mode(), context:
            for chunk in z.split(self.decode_batch_size):
                latents = chunk.to(device, dtype) / scale + shift
                out.append(self.vae.decode(latents, return_dict=False)[0].float().clamp(-1.0, 1.0))
        return torch.cat(out).to(z.device)


def _scheduler_source(scheduler: str | os.PathLike) -> tuple[Path | None, str | None]:
    """``--diffusers-scheduler``: (the folder holding scheduler_config.json, None) or (None, a class name)."""
    path = Path(str(scheduler)).expanduser()
    if path.is_dir():
        for sub in (path, path / "scheduler"):
            if (sub / "scheduler_config.json").is_file():
                return sub, None
        raise DiffusersError(f"{scheduler}: no scheduler_config.json here or in scheduler/")
    if path.is_file() and path.name == "scheduler_config.json":
        return path.parent, None
    text = str(scheduler)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", text):
        raise DiffusersError(f"--diffusers-scheduler {text}: neither a folder with scheduler_config.json nor a "
                             "diffusers scheduler class name (e.g. DDPMScheduler)")
    return None, text


def load_diffusers(
    path: str | os.PathLike,
    *,
    null_label: int | None = None,
    classes: Sequence[int] | None = None,
    scheduler: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DiffusersModel:
    """A local folder (a saved pipeline, a training checkpoint's sub-folders, or a bare model; module docstring)
    as a ``DiffusersModel``; nothing is downloaded.

    ``null_label``: the model's class id trained as the null label (DiT's own is used when not given; a UNet
    without one cannot be guided). ``classes``: the model's class ids to expose as cfgdiff's 0 .. K-1.
    ``scheduler``: a folder with scheduler_config.json (or a scheduler/ sub-folder), or a diffusers scheduler class
    name (its defaults), instead of the folder's own. ``id2label`` (class names) is read from
    ``model_index.json`` or from the denoiser's ``config.json``.
    """
    folder = check_local_folder(path)
    layout = folder_layout(folder)
    diffusers = import_diffusers()
    if layout == "pipeline":
        index = _read_json(folder / "model_index.json")
        comp = next((c for c in DENOISER_COMPONENTS if _component_dir(folder, index, c) is not None), None)
        if comp is None:
            raise DiffusersError(f"{folder}: model_index.json has no transformer or unet component")
        if scheduler is None and _component_dir(folder, index, "scheduler") is None:
            raise DiffusersError(f"{folder}: model_index.json has no scheduler (the timesteps' alphas_cumprod); "
                                 "name one with --diffusers-scheduler DIR_OR_CLASS")
        model_dir: Path = folder / comp
        has_vae = _component_dir(folder, index, "vae") is not None
        own_scheduler: Path | None = folder / "scheduler"
    else:
        index = {}
        if layout == "components":
            model_dir = folder / next(c for c in DENOISER_COMPONENTS if (folder / c / "config.json").is_file())
        else:
            model_dir = folder
        has_vae = layout == "components" and (folder / "vae" / "config.json").is_file()
        own_scheduler = folder / "scheduler" if (folder / "scheduler" / "scheduler_config.json").is_file() else None
    notes: list[str] = []
    if scheduler is not None:
        scheduler_dir, scheduler_name = _scheduler_source(scheduler)
    elif own_scheduler is not None:
        scheduler_dir, scheduler_name = own_scheduler, None
    else:
        scheduler_dir, scheduler_name = None, DEFAULT_SCHEDULER
        kind = "a bare model folder" if layout == "model" else "a training checkpoint, no model_index.json"
        notes.append(DEFAULT_SCHEDULER_NOTE.format(where=f"{folder} ({kind})"))
    with _quiet_diffusers(diffusers):
        model = _load_model(diffusers, model_dir)
        noise_scheduler = _load_scheduler(diffusers, scheduler_dir, scheduler_name)
        vae = None
        if has_vae:
            _check_safetensors(folder / "vae")
            vae_name = _read_json(folder / "vae" / "config.json").get("_class_name", "AutoencoderKL")
            if vae_name != "AutoencoderKL":
                raise DiffusersError(f"{folder / 'vae'}: unsupported VAE class {vae_name}; cfgdiff decodes with "
                                     "AutoencoderKL")
            try:
                vae = diffusers.AutoencoderKL.from_pretrained(str(folder / "vae"), use_safetensors=True,
                                                              local_files_only=True)
            except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
                raise DiffusersError(f"{folder / 'vae'}: cannot load the AutoencoderKL ({err})") from None
        model = model.to(device) if dtype == next(model.parameters()).dtype else model.to(device, dtype)
        if vae is not None:
            vae = vae.to(device) if dtype == next(vae.parameters()).dtype else vae.to(device, dtype)
    model.requires_grad_(False)
    prediction_type = noise_scheduler.config.get("prediction_type", "epsilon")
    eps_fn = DiffusersEpsFn(
        model, noise_scheduler.alphas_cumprod, prediction_type=prediction_type,
        null_label="auto" if null_label is None else null_label, classes=classes,
        id2label=_read_id2label(index, model), x_bound=None if vae is not None else 1.0,
    )
    if vae is not None:
        vae.requires_grad_(False)
    loaded = DiffusersModel(eps_fn, noise_scheduler, vae, folder)
    loaded.layout, loaded.notes = str(layout), notes
    return loaded
