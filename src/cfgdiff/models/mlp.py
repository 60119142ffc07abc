"""A residual MLP ε-predictor for low-dimensional toy data (e.g. the 2-D Gaussian mixture).

eps = MLPDenoiser(...)(z, logsnr, labels), z: [B, dim]. The input layer sees [z, SiLU(e)] concatenated, with
e = MLP(fourier(λ)) + E[c] the conditioning vector of `embeddings.py`, and every residual block is modulated
by e as well (LayerNorm scale-shift), so conditioning reaches all depths. ``w_embedding=True`` adds the
guidance-weight embedding of a distilled student (see `embeddings.py`), called as ``model(z, logsnr, labels, w)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cfgdiff.models.embeddings import ConditioningEmbedding, broadcast_conditioning, broadcast_weight

__all__ = ["MLPBlock", "MLPDenoiser"]


class MLPBlock(nn.Module):
    """h + Linear(SiLU(LN(h) * (1 + s) + b)), with [s, b] = Linear(SiLU(e)).

    One hidden Linear per block keeps a batch-512 train step cheap on a CPU; depth comes from stacking.
    """

    def __init__(self, hidden: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)  # affine part comes from emb_proj
        self.emb_proj = nn.Linear(emb_dim, 2 * hidden)  # -> [scale, shift]
        self.fc = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """h: [B, hidden], emb: SiLU(e) [B, D] -> [B, hidden]."""
        scale, shift = self.emb_proj(emb).chunk(2, dim=1)  # 2 x [B, hidden]
        a = torch.addcmul(shift, self.norm(h), 1 + scale)  # [B, hidden]
        return h + self.fc(F.silu(a))


class MLPDenoiser(nn.Module):
    """Class-conditional ε-prediction MLP for vectors: `eps = model(z, logsnr, labels)`, z: [B, dim].

    labels are int64 in [0, num_classes]; `num_classes` is the null label ∅. Returns eps with z's shape
    and dtype. The output layer is zero-initialised, so the untrained network predicts eps = 0.
    """

    def __init__(
        self,
        dim: int,  # dimension of one sample
        num_classes: int,  # K; label K is the null class
        hidden: int = 256,  # width of the residual stream
        depth: int = 4,  # number of residual blocks
        emb_dim: int = 128,  # conditioning width
        w_embedding: bool = False,  # add an embedding of the guidance weight w (a distilled student)
    ) -> None:
        super().__init__()
        self.data_shape: tuple[int, ...] = (int(dim),)
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.hidden = int(hidden)
        self.depth = int(depth)
        self.emb_dim = int(emb_dim)
        self.w_embedding = bool(w_embedding)

        self.cond = ConditioningEmbedding(num_classes, emb_dim, w_embedding=self.w_embedding)
        self.fc_in = nn.Linear(dim + emb_dim, hidden)
        self.blocks = nn.ModuleList([MLPBlock(hidden, emb_dim) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(hidden)
        self.fc_out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc_out.weight)  # eps = 0 at initialisation
        nn.init.zeros_(self.fc_out.bias)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor kwargs plus "arch"; `build_model(config)` rebuilds this network."""
        return {
            "arch": "mlp",
            "dim": self.dim,
            "num_classes": self.num_classes,
            "hidden": self.hidden,
            "depth": self.depth,
            "emb_dim": self.emb_dim,
            **({"w_embedding": True} if self.w_embedding else {}),  # absent for ordinary networks
        }

    def forward(
        self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, w: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """eps_theta(z, λ, c): z [B, dim], logsnr [B], labels [B] -> eps [B, dim].

        ``w`` ([B] or a number) only for a network built with ``w_embedding=True``, which requires it.
        """
        logsnr, labels = broadcast_conditioning(logsnr, labels, z.shape[0])
        w = broadcast_weight(w, z.shape[0], z.device)
        emb = F.silu(self.cond(logsnr, labels, w))  # [B, D], SiLU(e) once; each block projects it
        h = self.fc_in(torch.cat([z.to(emb.dtype), emb], dim=1))  # [B, hidden]
        for block in self.blocks:
            h = block(h, emb)  # [B, hidden]
        eps = self.fc_out(F.silu(self.norm_out(h)))  # [B, dim]
        return eps.to(z.dtype)
