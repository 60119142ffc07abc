"""A small conditional UNet ε-predictor for images: `eps = UNet(...)(z, logsnr, labels)`.

Layout (Ho et al. 2020 / Dhariwal & Nichol 2021, scaled down): a 3x3 input conv; per resolution level
`num_res_blocks` residual blocks (optionally followed by self-attention) and a stride-2 conv; a middle
block res-attn-res at the lowest resolution; the mirrored up path with `num_res_blocks + 1` blocks per
level, each fed the concatenated skip tensor, and nearest upsampling + 3x3 conv to the skip's exact
size (so 28 -> 14 -> 7 -> 14 -> 28 and odd sizes round-trip); GroupNorm-SiLU and a zero-initialised
3x3 output conv, so the untrained network predicts eps = 0.

The conditioning vector e = MLP(fourier(λ)) + E[c] (see `embeddings.py`) enters every residual block as
an adaptive GroupNorm: h <- GroupNorm(h) * (1 + s(e)) + b(e). GroupNorm normalises each batch row alone,
so output row i depends only on input row i.

Perturbation (``cfgdiff.core.perturbation``, for PAG and skip-layer guidance): the blocks are named ``down.i``,
``mid.i``, ``up.i`` (their index in ``down`` / ``mid`` / ``up``). Rows switched on for ``attention-identity`` go
through the named blocks' self-attention with the map replaced by the identity (output = V); rows switched on for
``skip`` skip the named blocks (output = input; only blocks whose input and output shapes agree). The default is
the middle block ``mid.0``, the bottleneck's self-attention (PAG's choice of the mid-block for Stable Diffusion).

``w_embedding=True`` builds a guidance-distilled student (``cfgdiff.distillation``): the same network plus a
zero-initialised embedding of the guidance weight w added to e, called as ``model(z, logsnr, labels, w)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cfgdiff.core.perturbation import ActivePerturbation, active_perturbation, merge_rows, split_rows
from cfgdiff.models.embeddings import ConditioningEmbedding, broadcast_conditioning, broadcast_weight

__all__ = ["AttentionBlock", "ResBlock", "UNet"]


class ResBlock(nn.Module):
    """Residual block with adaptive GroupNorm (scale-shift) conditioning.

    h = conv1(SiLU(GN(x))); h = GN'(h) * (1 + s) + b with [s, b] = Linear(SiLU(e));
    out = skip(x) + conv2(Dropout(SiLU(h))).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)  # -> [scale, shift]
        self.norm2 = nn.GroupNorm(groups, out_ch, affine=False)  # the affine part comes from emb_proj
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: [B, C_in, H, W], emb: SiLU(e) [B, D] -> [B, C_out, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))  # [B, C_out, H, W]
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)  # 2 x [B, C_out, 1, 1]
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # [B, C_out, H, W]
        h = self.conv2(self.dropout(F.silu(h)))  # [B, C_out, H, W]
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions of each image, with a residual connection."""

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels={channels} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, identity_rows: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, H, W]; rows where ``identity_rows`` [B] is True take softmax(QKᵀ/√d) = I, so
        their attention output is V (perturbed-attention guidance, Ahn et al. 2024)."""
        b, c, height, width = x.shape
        qkv = self.qkv(self.norm(x))  # [B, 3C, H, W]
        qkv = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, height * width)  # [B, 3, h, d, HW]
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # 3 x [B, h, HW, d]
        if identity_rows is None:
            out = F.scaled_dot_product_attention(q, k, v)  # [B, h, HW, d]
        else:
            keep, switched = split_rows(identity_rows)
            out = merge_rows(F.scaled_dot_product_attention(q[keep], k[keep], v[keep]), v[switched], identity_rows)
        out = out.transpose(-1, -2).reshape(b, c, height, width)  # [B, C, H, W]
        return x + self.proj(out)


class UNetBlock(nn.Module):
    """A ResBlock, optionally followed by self-attention."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float, attn: bool, num_heads: int
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, groups, dropout)
        self.attn = AttentionBlock(out_ch, num_heads, groups) if attn else None
        self.skippable = in_ch == out_ch  # the block can return its input (skip-layer guidance)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, *, identity_rows: torch.Tensor | None = None,
                skip_rows: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C_in, H, W], [B, D] -> [B, C_out, H, W]; rows in ``skip_rows`` return x (the block skipped), rows in
        ``identity_rows`` take the identity attention map."""
        if skip_rows is not None:
            keep, _ = split_rows(skip_rows)
            rows = None if identity_rows is None else identity_rows[keep]
            return merge_rows(self.forward(x[keep], emb[keep], identity_rows=rows), x[skip_rows], skip_rows)
        h = self.res(x, emb)
        if self.attn is None:
            return h
        return self.attn(h, identity_rows if identity_rows is not None and bool(identity_rows.any()) else None)


class Downsample(nn.Module):
    """Stride-2 3x3 conv: [B, C, H, W] -> [B, C, ceil(H/2), ceil(W/2)]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest upsampling to an exact spatial size, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """[B, C, h, w] -> [B, C, *size]."""
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class UNet(nn.Module):
    """Class-conditional ε-prediction UNet in continuous log-SNR time.

    Contract: `eps = model(z, logsnr, labels)`, z: [B, C, H, W], logsnr: [B] (λ = log α²/σ²), labels: [B]
    int64 in [0, num_classes], where `num_classes` is the null label ∅. Returns eps with z's shape and dtype.

    The defaults (widths 16/32/64 at 8x8/4x4/2x2 for digits, one res block per level down, two up, attention
    at the lowest level) give 0.72M parameters for (1, 8, 8) with 10 classes, sized for a 2-core CPU
    training step of about 0.15 s at batch 128.
    """

    def __init__(
        self,
        image_shape: Sequence[int],  # (C, H, W) of one sample
        num_classes: int,  # K; label K is the null class
        base_channels: int = 16,  # width of level 0; level i has base_channels * channel_mults[i]
        channel_mults: Sequence[int] = (1, 2, 4),  # one entry per resolution level
        num_res_blocks: int = 1,  # residual blocks per level on the down path (up path: one more)
        attn_levels: Sequence[int] | None = None,  # levels with self-attention; None = the lowest only
        num_heads: int = 4,  # attention heads
        dropout: float = 0.0,  # dropout inside residual blocks
        groups: int = 8,  # GroupNorm groups; every level width must be divisible by it
        emb_dim: int | None = None,  # conditioning width; None = 4 * base_channels
        w_embedding: bool = False,  # add an embedding of the guidance weight w (a distilled student)
    ) -> None:
        super().__init__()
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        channel_mults = tuple(int(m) for m in channel_mults)
        num_levels = len(channel_mults)
        if num_levels < 1:
            raise ValueError("channel_mults must have at least one level")
        attn_levels = (num_levels - 1,) if attn_levels is None else tuple(int(i) for i in attn_levels)
        if any(not 0 <= i < num_levels for i in attn_levels):
            raise ValueError(f"attn_levels {attn_levels} out of range for {num_levels} levels")
        widths = [base_channels * m for m in channel_mults]
        if any(w % groups != 0 for w in widths):
            raise ValueError(f"level widths {widths} must all be divisible by groups={groups}")
        emb_dim = 4 * base_channels if emb_dim is None else int(emb_dim)

        self.data_shape: tuple[int, ...] = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.base_channels = int(base_channels)
        self.channel_mults = channel_mults
        self.num_res_blocks = int(num_res_blocks)
        self.attn_levels = attn_levels
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.groups = int(groups)
        self.emb_dim = emb_dim
        self.w_embedding = bool(w_embedding)

        in_ch = self.data_shape[0]
        block_kw: dict[str, Any] = dict(emb_dim=emb_dim, groups=groups, dropout=dropout, num_heads=num_heads)

        self.cond = ConditioningEmbedding(num_classes, emb_dim, w_embedding=self.w_embedding)
        self.conv_in = nn.Conv2d(in_ch, widths[0], 3, padding=1)

        # Down path: every module's output is a skip tensor.
        ch = widths[0]
        skip_chs = [ch]
        self.down = nn.ModuleList()
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(UNetBlock(ch, width, attn=level in attn_levels, **block_kw))
                ch = width
                skip_chs.append(ch)
            if level != num_levels - 1:
                self.down.append(Downsample(ch))
                skip_chs.append(ch)

        mid_attn = (num_levels - 1) in attn_levels
        self.mid = nn.ModuleList(
            [UNetBlock(ch, ch, attn=mid_attn, **block_kw), UNetBlock(ch, ch, attn=False, **block_kw)]
        )

        # Up path: each block consumes one skip tensor; Upsample matches the next skip's size.
        self.up = nn.ModuleList()
        for level in reversed(range(num_levels)):
            width = widths[level]
            for _ in range(num_res_blocks + 1):
                self.up.append(UNetBlock(ch + skip_chs.pop(), width, attn=level in attn_levels, **block_kw))
                ch = width
            if level != 0:
                self.up.append(Upsample(ch))
        assert not skip_chs

        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, in_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # eps = 0 at initialisation
        nn.init.zeros_(self.conv_out.bias)

    def named_blocks(self) -> list[tuple[str, UNetBlock]]:
        """(name, block) of every UNetBlock, in the order of the forward pass: ``down.i``, ``mid.i``, ``up.i``."""
        return [(f"{part}.{i}", block) for part in ("down", "mid", "up")
                for i, block in enumerate(getattr(self, part)) if isinstance(block, UNetBlock)]

    def perturbable_layers(self, kind: str) -> tuple[str, ...]:
        """The blocks that ``kind`` can perturb: those with self-attention (``attention-identity``), those whose
        input and output shapes agree (``skip``)."""
        if kind == "attention-identity":
            return tuple(name for name, block in self.named_blocks() if block.attn is not None)
        if kind == "skip":
            return tuple(name for name, block in self.named_blocks() if block.skippable)
        return ()

    def default_perturbed_layers(self, kind: str) -> tuple[str, ...]:
        """``mid.0``, the bottleneck block (with its self-attention), where it can be perturbed; else the middle one
        of the available layers. Not yet chosen by a measurement (docs/guidance.md)."""
        available = self.perturbable_layers(kind)
        if not available:
            return ()
        return ("mid.0",) if "mid.0" in available else (available[len(available) // 2],)

    def _block_rows(self, active: ActivePerturbation | None, name: str) -> dict[str, torch.Tensor | None]:
        if active is None:
            return {}
        return {"identity_rows": active.rows_for(name, "attention-identity"),
                "skip_rows": active.rows_for(name, "skip")}

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor kwargs plus "arch"; `build_model(config)` rebuilds this network."""
        return {
            "arch": "unet",
            "image_shape": list(self.data_shape),
            "num_classes": self.num_classes,
            "base_channels": self.base_channels,
            "channel_mults": list(self.channel_mults),
            "num_res_blocks": self.num_res_blocks,
            "attn_levels": list(self.attn_levels),
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "groups": self.groups,
            "emb_dim": self.emb_dim,
            **({"w_embedding": True} if self.w_embedding else {}),  # absent for ordinary networks
        }

    def forward(
        self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, w: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """eps_theta(z, λ, c): z [B, C, H, W], logsnr [B], labels [B] -> eps [B, C, H, W].

        ``w`` ([B] or a number) only for a network built with ``w_embedding=True``, which requires it.
        """
        logsnr, labels = broadcast_conditioning(logsnr, labels, z.shape[0])
        w = broadcast_weight(w, z.shape[0], z.device)
        emb = F.silu(self.cond(logsnr, labels, w))  # [B, D], SiLU(e) once; each block projects it
        active = active_perturbation(z.shape[0])  # the per-row switch of PAG / skip-layer guidance, or None
        h = self.conv_in(z.to(self.conv_in.weight.dtype))  # [B, C0, H, W]
        skips = [h]
        for i, layer in enumerate(self.down):
            h = layer(h, emb, **self._block_rows(active, f"down.{i}")) if isinstance(layer, UNetBlock) else layer(h)
            skips.append(h)
        for i, block in enumerate(self.mid):
            h = block(h, emb, **self._block_rows(active, f"mid.{i}"))  # [B, C_last, H_low, W_low]
        for i, layer in enumerate(self.up):
            if isinstance(layer, Upsample):
                h = layer(h, skips[-1].shape[-2:])
            else:
                h = layer(torch.cat([h, skips.pop()], dim=1), emb, **self._block_rows(active, f"up.{i}"))
        eps = self.conv_out(F.silu(self.norm_out(h)))  # [B, C, H, W]
        return eps.to(z.dtype)
