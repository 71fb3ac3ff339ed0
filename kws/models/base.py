"""The contract every sequence classifier in kws keeps.

A model sees features of shape (B, L, C) -- B batch, L time steps, C input
channels (1 for raw audio, the MFCC count for MFCC) -- and has two forms that
share weights:

* the convolution/parallel form, ``features(x)``, used for training, and
* the streaming form, ``step(chunk, state)``, that consumes K steps at a time and
  carries a list of real tensors as state (complex state is stored as real/imag
  pairs so that the step exports to ONNX).

Concatenating ``step`` outputs over a clip equals ``features`` on the clip. A
model that pools in time (``time_pool`` > 1) emits one output per ``time_pool``
steps and streams in chunks that are whole multiples of it.
Clip logits are ``classify(features(x).mean(1))``: mean pooling over time, as
in the S4 paper; the streaming engine pools over a sliding window instead.

``rate_factor`` is trained_rate / input_rate. Continuous-time models (S4)
multiply their step size dt by it; TCN and LSTM accept it and ignore it.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor, nn

State = list[Tensor]


class KWSModel(nn.Module):
    """Base class: subclasses implement ``features``, ``initial_state`` and ``step``."""

    #: the family name used by the registry ("s4", "s4d", "tcn", "lstm")
    family: str = ""

    def __init__(self, in_channels: int, n_classes: int, d_model: int):
        super().__init__()
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.d_model = d_model
        self.head = nn.Linear(d_model, n_classes)
        # Everything needed to rebuild this model; subclasses extend it.
        self.config: dict[str, Any] = {}

    def features(self, x: Tensor, rate_factor: float = 1.0) -> Tensor:
        """(B, L, C) -> (B, L // time_pool, H), causal unless the model says otherwise."""
        raise NotImplementedError

    def initial_state(self, batch: int) -> State:
        """The state before the first step: real tensors only."""
        raise NotImplementedError

    def step(self, x: Tensor, state: State, rate_factor: float = 1.0) -> tuple[Tensor, State]:
        """(B, K, C) chunk and state -> ((B, K, H) outputs, new state)."""
        raise NotImplementedError

    def classify(self, pooled: Tensor) -> Tensor:
        """(B, H) pooled features -> (B, n_classes) logits."""
        return self.head(pooled)

    def forward(self, x: Tensor, rate_factor: float = 1.0) -> Tensor:
        return self.classify(self.features(x, rate_factor).mean(dim=1))

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups; S4 overrides this to give SSM parameters their own lr and no decay."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or name.endswith("bias") else decay).append(p)
        return [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]

    @property
    def time_pool(self) -> int:
        """Input steps per output step; models that pool in time override it."""
        return 1

    def time_pool_at(self, rate_factor: float = 1.0) -> int:
        """Input steps per output step for input at trained_rate / rate_factor."""
        return self.time_pool

    def pool_group_at(self, rate_factor: float = 1.0) -> tuple[int, int]:
        """(input steps, outputs) of the smallest chunk that a stream can move in."""
        return self.time_pool_at(rate_factor), 1

    def output_steps(self, length: int, rate_factor: float = 1.0) -> int:
        """Outputs for ``length`` input steps (whole groups only)."""
        return length // self.time_pool_at(rate_factor)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        """One line: family, size and anything a reader must know (e.g. receptive field)."""
        return f"{self.family}: {self.n_parameters:,} parameters, d_model={self.d_model}"

    @torch.no_grad()
    def stream(self, x: Tensor, chunk: int, rate_factor: float = 1.0) -> Tensor:
        """Run ``step`` over ``x`` in chunks of ``chunk`` steps; the last may be shorter."""
        state = self.initial_state(x.shape[0])
        outs = []
        for start in range(0, x.shape[1], chunk):
            y, state = self.step(x[:, start : start + chunk], state, rate_factor)
            outs.append(y)
        return torch.cat(outs, dim=1)


def check_pool(pool: list[int] | None, n_layers: int) -> None:
    """``pool`` is None or one integer factor >= 1 per layer."""
    if pool is None:
        return
    if not isinstance(pool, (list, tuple)) or len(pool) != n_layers:
        raise ValueError(
            f"pool must be a list of one factor per layer ({n_layers}), got {pool!r}"
        )
    for factor in pool:
        if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
            raise ValueError(f"pool factors must be integers >= 1, got {pool!r}")


def mean_pool(h: Tensor, factor: int) -> Tensor:
    """(B, L, H) -> (B, L // factor, H): the mean of each whole group of ``factor`` steps."""
    if factor == 1:
        return h
    groups, channels = int(h.shape[1]) // factor, int(h.shape[2])
    # -1 for the batch: the ONNX trace keeps it dynamic (only the batch axis is)
    return h[:, : groups * factor].reshape(-1, groups, factor, channels).mean(dim=2)
