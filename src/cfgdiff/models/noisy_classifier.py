"""The noisy classifier p_φ(c | z_λ, λ) of classifier guidance (Dhariwal & Nichol 2021): the network.

The U-Net's down path (``cfgdiff.models.unet.ResBlock`` and ``Downsample``, conditioned on λ through
``LogSNREmbedding`` by adaptive GroupNorm; no class input), then GroupNorm-SiLU, global average pooling and a
linear head to K logits. Its training and its run files: ``cfgdiff.training.classifier``; guidance with it:
``cfgdiff.guidance.classifier_guidance`` through ``log_prob_fn``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cfgdiff.models.embeddings import LogSNREmbedding
from cfgdiff.models.unet import Downsample, ResBlock


class NoisyClassifier(nn.Module):
    """logits = p_φ(· | z_λ, λ): z [B, C, H, W], logsnr [B] -> [B, K]."""

    def __init__(
        self,
        image_shape: Sequence[int],  # (C, H, W)
        num_classes: int,  # K
        base_channels: int = 16,  # width of level 0
        channel_mults: Sequence[int] = (1, 2, 4),  # one entry per resolution level, as the U-Net
        num_res_blocks: int = 1,  # residual blocks per level
        groups: int = 8,  # GroupNorm groups
        emb_dim: int | None = None,  # λ-embedding width; None = 4 * base_channels
    ) -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.base_channels = int(base_channels)
        self.channel_mults = tuple(int(m) for m in channel_mults)
        self.num_res_blocks = int(num_res_blocks)
        self.groups = int(groups)
        self.emb_dim = 4 * self.base_channels if emb_dim is None else int(emb_dim)
        widths = [self.base_channels * m for m in self.channel_mults]
        self.logsnr_emb = LogSNREmbedding(self.emb_dim)
        self.conv_in = nn.Conv2d(self.data_shape[0], widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(self.num_res_blocks):
                self.down.append(ResBlock(ch, width, self.emb_dim, self.groups, 0.0))
                ch = width
            if level != len(widths) - 1:
                self.down.append(Downsample(ch))
        self.norm_out = nn.GroupNorm(self.groups, ch)
        self.head = nn.Linear(ch, self.num_classes)

    def config(self) -> dict[str, Any]:
        return {"image_shape": list(self.data_shape), "num_classes": self.num_classes,
                "base_channels": self.base_channels, "channel_mults": list(self.channel_mults),
                "num_res_blocks": self.num_res_blocks, "groups": self.groups, "emb_dim": self.emb_dim}

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W], [B] -> logits [B, K]."""
        logsnr = logsnr.reshape(-1).expand(z.shape[0])
        emb = F.silu(self.logsnr_emb(logsnr))  # [B, D]
        h = self.conv_in(z.to(self.conv_in.weight.dtype))
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        h = F.silu(self.norm_out(h)).mean(dim=(-2, -1))  # [B, C_last]
        return self.head(h).to(z.dtype)

    def log_prob_fn(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p_φ(labels | z_λ): [B], the form ``classifier_guidance`` takes (differentiable in z)."""
        return torch.log_softmax(self(z, logsnr), dim=1).gather(1, labels.long()[:, None])[:, 0]
