"""Conditioning embeddings shared by every denoiser: log-SNR features and the class table with its null row.

The conditioning vector of a denoiser `eps_theta(z, logsnr, labels)` is

    e = MLP(fourier(logsnr / logsnr_scale)) + E[labels],

where `E` has `num_classes + 1` rows and row `num_classes` is the learned null embedding (the unconditional
model of Ho & Salimans 2022, Algorithm 1). The network is fed λ itself, never a step index, and never sees
the guidance weight `w`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ClassEmbedding", "ConditioningEmbedding", "LogSNREmbedding", "broadcast_conditioning"]


def broadcast_conditioning(
    logsnr: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten `logsnr` and `labels` to shape [B], broadcasting a scalar (or a single entry) to the batch."""
    logsnr = logsnr.reshape(-1).expand(batch_size)  # [B]
    labels = labels.reshape(-1).expand(batch_size)  # [B]
    return logsnr, labels


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


class ConditioningEmbedding(nn.Module):
    """e = LogSNREmbedding(λ) + ClassEmbedding(c): one conditioning vector per batch row."""

    def __init__(self, num_classes: int, emb_dim: int, num_freqs: int = 32) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.logsnr_emb = LogSNREmbedding(emb_dim, num_freqs=num_freqs)
        self.class_emb = ClassEmbedding(num_classes, emb_dim)

    def forward(self, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """([B] float, [B] int64) -> [B, emb_dim]."""
        return self.logsnr_emb(logsnr) + self.class_emb(labels)  # [B, D]
