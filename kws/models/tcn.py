"""Temporal convolutional network baseline (Bai, Kolter & Koltun, 2018).

Residual blocks of two causal dilated convolutions, dilation doubling per block,
so the receptive field grows exponentially with depth. The depth is chosen so the
receptive field covers the whole clip: a TCN cannot see further back than that,
whereas an SSM's memory is unbounded.

It has no step size, so ``rate_factor`` is accepted and ignored: this is the
baseline that shows what a model without S4's sample-rate knob does at 8 kHz.

Streaming keeps, per convolution, a buffer of the last (k-1)*d inputs it saw.
The clip form is the streaming form run once from zero buffers, which is exactly
what left zero-padding means, so both forms share one code path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kws.models.base import KWSModel, State


def receptive_field(kernel_size: int, n_blocks: int) -> int:
    """Steps of input that reach one output: two convs per block, dilation 2**i in block i."""
    return 1 + 2 * (kernel_size - 1) * (2**n_blocks - 1)


def blocks_to_cover(steps: int, kernel_size: int) -> int:
    """The fewest blocks whose receptive field is at least ``steps``."""
    n_blocks = 1
    while receptive_field(kernel_size, n_blocks) < steps:
        n_blocks += 1
    return n_blocks


class TemporalBlock(nn.Module):
    """conv -> LayerNorm -> GELU -> dropout, twice, plus the residual, then GELU.

    LayerNorm normalises each time step over channels alone, so it is the same
    whether the clip arrives whole or in chunks (BatchNorm/GroupNorm would not be).
    All blocks map H -> H (the model's input projection does C -> H), so the
    residual is the identity and needs no 1x1 conv.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.history = (kernel_size - 1) * dilation  # past inputs each conv needs
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.norm1 = nn.LayerNorm(channels)
        self.norm2 = nn.LayerNorm(channels)
        self.dropout = nn.Dropout(dropout)

    def _causal(
        self, conv: nn.Conv1d, norm: nn.LayerNorm, x: Tensor, past: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Convolve [past, x] with no padding: K outputs for K new steps, and the new past."""
        full = torch.cat([past, x], dim=2)
        y = conv(full)
        y = norm(y.transpose(1, 2)).transpose(1, 2)
        return self.dropout(F.gelu(y)), full[:, :, -self.history :]

    def forward(self, x: Tensor, past1: Tensor, past2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, H, K) and the two convs' (B, H, history) buffers -> (B, H, K) and new buffers."""
        h, past1 = self._causal(self.conv1, self.norm1, x, past1)
        h, past2 = self._causal(self.conv2, self.norm2, h, past2)
        return F.gelu(h + x), past1, past2


class TCNClassifier(KWSModel):
    """Input projection C -> H, then residual dilated causal blocks; output length = input length.

    ``n_blocks=None`` picks the depth whose receptive field covers ``cover_seconds``
    of input at ``steps_per_second`` (16,000 on raw audio, 100 on MFCC frames).
    """

    family = "tcn"

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        d_model: int = 64,
        kernel_size: int = 3,
        n_blocks: int | None = None,
        steps_per_second: float = 16000.0,
        cover_seconds: float = 1.0,
        dropout: float = 0.1,
    ):
        super().__init__(in_channels, n_classes, d_model)
        if kernel_size < 2:
            raise ValueError(f"kernel_size must be at least 2 to see the past, got {kernel_size}")
        if n_blocks is None:
            n_blocks = blocks_to_cover(round(cover_seconds * steps_per_second), kernel_size)
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be at least 1, got {n_blocks}")
        self.kernel_size = kernel_size
        self.n_blocks = n_blocks
        self.steps_per_second = steps_per_second
        self.receptive_field = receptive_field(kernel_size, n_blocks)
        self.encoder = nn.Linear(in_channels, d_model)
        self.blocks = nn.ModuleList(
            TemporalBlock(d_model, kernel_size, 2**i, dropout) for i in range(n_blocks)
        )
        self.config = {
            "family": self.family,
            "in_channels": in_channels,
            "n_classes": n_classes,
            "d_model": d_model,
            "kernel_size": kernel_size,
            "n_blocks": n_blocks,
            "steps_per_second": steps_per_second,
            "cover_seconds": cover_seconds,
            "dropout": dropout,
        }

    def features(self, x: Tensor, rate_factor: float = 1.0) -> Tensor:
        """(B, L, C) -> (B, L, H). ``rate_factor`` is ignored: a TCN has no step size."""
        return self.step(x, self.initial_state(x.shape[0], like=x), rate_factor)[0]

    def initial_state(self, batch: int, like: Tensor | None = None) -> State:
        """Zero buffers, two per block (one per conv), each (B, H, (k-1)*dilation)."""
        ref = like if like is not None else self.encoder.weight
        return [
            ref.new_zeros(batch, self.d_model, block.history)
            for block in self.blocks
            for _ in range(2)
        ]

    def step(self, x: Tensor, state: State, rate_factor: float = 1.0) -> tuple[Tensor, State]:
        """(B, K, C) chunk -> (B, K, H); the buffers carry each conv's dilated history."""
        h = self.encoder(x).transpose(1, 2)
        new_state: State = []
        for i, block in enumerate(self.blocks):
            h, past1, past2 = block(h, state[2 * i], state[2 * i + 1])
            new_state += [past1, past2]
        return h.transpose(1, 2), new_state

    def summary(self) -> str:
        seconds = self.receptive_field / self.steps_per_second
        return (
            f"tcn: {self.n_parameters:,} parameters, d_model={self.d_model}, "
            f"{self.n_blocks} blocks of kernel {self.kernel_size}, receptive field "
            f"{self.receptive_field:,} steps ({seconds:.3g} s at {self.steps_per_second:g} steps/s)"
        )
