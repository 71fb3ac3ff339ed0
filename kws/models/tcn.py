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

Pooling in time (``pool``, as for S4): after block i the sequence is mean-pooled
over groups of pool[i] steps and the dilations start again from 1, so a raw TCN
can run most of its blocks at 1 kHz and train on a CPU. Pools count samples at
every rate: the TCN knows nothing of the rate, which is the point of the baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kws.models.base import KWSModel, State, check_pool, mean_pool


def receptive_field(kernel_size: int, n_blocks: int) -> int:
    """Steps of input that reach one output: two convs per block, dilation 2**i in block i."""
    return 1 + 2 * (kernel_size - 1) * (2**n_blocks - 1)


def dilations(pool: list[int]) -> list[int]:
    """Per block, 2**(blocks since the last pool): the doubling starts again at each new rate."""
    out, run = [], 0
    for factor in pool:
        out.append(2**run)
        run = 0 if factor > 1 else run + 1
    return out


def pooled_receptive_field(kernel_size: int, pool: list[int]) -> int:
    """Input steps that reach one output of a TCN that pools: each step of a later stage
    spans the product of the pools before it, and a pool of p adds p - 1 of its steps."""
    field, span = 1, 1
    for dilation, factor in zip(dilations(pool), pool, strict=True):
        field += 2 * (kernel_size - 1) * dilation * span
        field += (factor - 1) * span
        span *= factor
    return field


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
        pool: list[int] | None = None,
    ):
        super().__init__(in_channels, n_classes, d_model)
        if kernel_size < 2:
            raise ValueError(f"kernel_size must be at least 2 to see the past, got {kernel_size}")
        if pool is not None and not isinstance(pool, (list, tuple)):
            raise ValueError(f"pool must be a list of one factor per block, got {pool!r}")
        if pool is not None and n_blocks is None:
            n_blocks = len(pool)
        if n_blocks is None:
            n_blocks = blocks_to_cover(round(cover_seconds * steps_per_second), kernel_size)
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be at least 1, got {n_blocks}")
        check_pool(pool, n_blocks)
        #: per block, the mean-pooling factor applied after it (1: none)
        self.pool = [int(p) for p in pool] if pool is not None else [1] * n_blocks
        self.kernel_size = kernel_size
        self.n_blocks = n_blocks
        self.steps_per_second = steps_per_second
        self.receptive_field = pooled_receptive_field(kernel_size, self.pool)
        self.encoder = nn.Linear(in_channels, d_model)
        self.blocks = nn.ModuleList(
            TemporalBlock(d_model, kernel_size, dilation, dropout)
            for dilation in dilations(self.pool)
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
        if pool is not None:  # only when set: configs from before pooling stay as they were
            self.config["pool"] = list(self.pool)

    @property
    def time_pool(self) -> int:
        """Input steps per output step: the product of the pools (at every rate)."""
        return math.prod(self.pool)

    def features(self, x: Tensor, rate_factor: float = 1.0) -> Tensor:
        """(B, L, C) -> (B, L // time_pool, H). ``rate_factor`` is ignored: a TCN has no
        step size. Each pool drops its incomplete last group, as S4's does."""
        if x.shape[1] < self.time_pool:
            raise ValueError(
                f"input of {x.shape[1]} steps is shorter than the model's pooling "
                f"{self.time_pool} (pool={self.pool}): it would give no output step"
            )
        return self._run(x, self.initial_state(x.shape[0], like=x))[0]

    def initial_state(self, batch: int, like: Tensor | None = None) -> State:
        """Zero buffers, two per block (one per conv), each (B, H, (k-1)*dilation)."""
        ref = like if like is not None else self.encoder.weight
        return [
            ref.new_zeros(batch, self.d_model, block.history)
            for block in self.blocks
            for _ in range(2)
        ]

    def step(self, x: Tensor, state: State, rate_factor: float = 1.0) -> tuple[Tensor, State]:
        """(B, K, C) chunk -> (B, K // time_pool, H); the buffers carry each conv's dilated
        history. With pooling K must be a multiple of ``time_pool``, so that every chunk
        starts on a group boundary at every stage."""
        if x.shape[1] % self.time_pool:
            raise ValueError(
                f"a streamed chunk must be a multiple of the model's pooling {self.time_pool} "
                f"steps (pool={self.pool}), got {x.shape[1]}"
            )
        return self._run(x, state)

    def _run(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The one path of both forms: blocks, each followed by its pool."""
        h = self.encoder(x).transpose(1, 2)
        new_state: State = []
        for i, (block, factor) in enumerate(zip(self.blocks, self.pool, strict=True)):
            h, past1, past2 = block(h, state[2 * i], state[2 * i + 1])
            if factor > 1:
                h = mean_pool(h.transpose(1, 2), factor).transpose(1, 2)
            new_state += [past1, past2]
        return h.transpose(1, 2), new_state

    def summary(self) -> str:
        seconds = self.receptive_field / self.steps_per_second
        return (
            f"tcn: {self.n_parameters:,} parameters, d_model={self.d_model}, "
            f"{self.n_blocks} blocks of kernel {self.kernel_size}, receptive field "
            f"{self.receptive_field:,} steps ({seconds:.3g} s at {self.steps_per_second:g} steps/s)"
            + (f", pool {self.pool} (1/{self.time_pool} rate out)" if "pool" in self.config
               else "")
        )
