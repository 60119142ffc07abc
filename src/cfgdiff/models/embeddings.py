"""Conditioning embeddings shared by every denoiser: log-SNR features and the class table with its null row.

The conditioning vector of a denoiser `eps_theta(z, logsnr, labels)` is

    e = MLP(fourier(logsnr / logsnr_scale)) + E[labels],

where `E` has `num_classes + 1` rows and row `num_classes` is the learned null embedding (the unconditional
model of Ho & Salimans 2022, Algorithm 1). The network is fed λ itself, never a step index, and never sees
the guidance weight `w` -- except a guidance-distilled student (Meng et al. 2023, arXiv 2210.03142), built with
`w_embedding=True`, whose conditioning gains one term,

    e = MLP(fourier(logsnr / logsnr_scale)) + E[labels] + MLP_w(fourier(w / w_scale)),

with MLP_w's output layer zero-initialised, so a student copied from its teacher starts as the teacher's
conditional model exactly. Off by default: existing configs and checkpoints build the same modules.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "ClassEmbedding",
    "ConditioningEmbedding",
    "GuidanceWeightEmbedding",
    "LogSNREmbedding",
    "broadcast_conditioning",
    "broadcast_weight",
]


def broadcast_conditioning(
    logsnr: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten `logsnr` and `labels` to shape [B], broadcasting a scalar (or a single entry) to the batch."""
    logsnr = logsnr.reshape(-1).expand(batch_size)  # [B]
    labels = labels.reshape(-1).expand(batch_size)  # [B]
    return logsnr, labels


def broadcast_weight(w: torch.Tensor | float | None, batch_size: int, device: torch.device) -> torch.Tensor | None:
    """A guidance weight (number, scalar or [B]) as a float32 [B] tensor; None stays None."""
    if w is None:
        return None
    return torch.as_tensor(w, dtype=torch.float32, device=device).reshape(-1).expand(batch_size)  # [B]


class LogSNREmbedding(nn.Module):
    """Sinusoidal features of λ followed by Linear-SiLU-Linear.

    u = λ / logsnr_scale (≈ [-1, 1] for λ in [-20, 20]); features = [sin(f_k u), cos(f_k u)] with
    f_k geometrically spaced in [min_freq, max_freq], k = 0 .. num_freqs - 1.
    """

    freqs: torch.Tensor

    def __init__(
        self,
        emb_dim: int,
        num_freqs: int = 32,
        logsnr_scale: float = 20.0,  # λ / logsnr_scale lies in [-1, 1] over the paper's λ range
        min_freq: float = 1.0,  # lowest angular frequency in u: one smooth feature over the whole range
        max_freq: float = 1000.0,  # highest: a change of 0.02 in λ turns the fastest feature by 1 rad
    ) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.num_freqs = num_freqs
        self.logsnr_scale = logsnr_scale
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), num_freqs))
        self.register_buffer("freqs", freqs, persistent=False)  # [F], rebuilt from the constructor
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_freqs, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )

    def features(self, logsnr: torch.Tensor) -> torch.Tensor:
        """Fourier features in float32: [B] -> [B, 2F]."""
        u = logsnr.float() / self.logsnr_scale  # [B]
        angles = u[:, None] * self.freqs[None, :]  # [B, F]
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # [B, 2F]

    def forward(self, logsnr: torch.Tensor) -> torch.Tensor:
        """[B] -> [B, emb_dim]."""
        feats = self.features(logsnr).to(self.mlp[0].weight.dtype)  # [B, 2F]
        return self.mlp(feats)  # [B, D]


class ClassEmbedding(nn.Module):
    """Learned class table of `num_classes + 1` rows; row `num_classes` is the null (unconditional) class."""

    def __init__(self, num_classes: int, emb_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, emb_dim)

    @property
    def null_label(self) -> int:
        """The index of the null class, ∅ = num_classes."""
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """[B] int64 in [0, num_classes] -> [B, emb_dim]."""
        return self.table(labels)  # [B, D]


class GuidanceWeightEmbedding(LogSNREmbedding):
    """Fourier features of the guidance weight w, then Linear-SiLU-Linear with the last Linear zero-initialised.

    u = w / w_scale (u ∈ [0, 1] for w ∈ [0, 4]); features = [sin(f_k u), cos(f_k u)], f_k geometric in
    [min_freq, max_freq]. At initialisation the embedding is exactly 0 for every w (Meng et al. 2023 condition
    their student on w the same way as on the time step).
    """

    def __init__(
        self,
        emb_dim: int,
        num_freqs: int = 16,
        w_scale: float = 4.0,  # w / w_scale lies in [0, 1] over the usual range w ∈ [0, 4]
        min_freq: float = 1.0,  # one smooth feature over the range
        max_freq: float = 100.0,  # a change of 0.04 in w turns the fastest feature by 1 rad
    ) -> None:
        super().__init__(emb_dim, num_freqs=num_freqs, logsnr_scale=w_scale, min_freq=min_freq, max_freq=max_freq)
        nn.init.zeros_(self.mlp[2].weight)  # the student starts as its teacher: MLP_w(·) = 0
        nn.init.zeros_(self.mlp[2].bias)


class ConditioningEmbedding(nn.Module):
    """e = LogSNREmbedding(λ) + ClassEmbedding(c) [+ GuidanceWeightEmbedding(w)]: one vector per batch row.

    With ``w_embedding=False`` (the default) the module holds exactly the λ and class embeddings and takes no w;
    with ``w_embedding=True`` (a guidance-distilled student) every call must pass w.
    """

    def __init__(self, num_classes: int, emb_dim: int, num_freqs: int = 32, w_embedding: bool = False) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.logsnr_emb = LogSNREmbedding(emb_dim, num_freqs=num_freqs)
        self.class_emb = ClassEmbedding(num_classes, emb_dim)
        self.w_emb = GuidanceWeightEmbedding(emb_dim) if w_embedding else None

    def forward(self, logsnr: torch.Tensor, labels: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """([B] float, [B] int64[, [B] float w]) -> [B, emb_dim]."""
        e = self.logsnr_emb(logsnr) + self.class_emb(labels)  # [B, D]
        if self.w_emb is None:
            if w is not None:
                raise ValueError("this network takes no guidance weight w; guidance combines its predictions")
            return e
        if w is None:
            raise ValueError("this network is a guidance-distilled student and needs w (use student.at(w))")
        return e + self.w_emb(w)  # [B, D]; adds exactly 0 at initialisation
