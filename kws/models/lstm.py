"""LSTM baseline: an input projection, then a multi-layer unidirectional ``nn.LSTM``.

On raw audio this is a recurrence over 16,000 steps per clip. It runs, but it
learns badly, and that is the S4 paper's point: gated RNNs struggle with such
long dependencies, SSMs do not.

It has no step size, so ``rate_factor`` is accepted and ignored: this is the
baseline that shows what a model without S4's sample-rate knob does at 8 kHz.

Framing (``frame``, the LSTM's counterpart of S4's and the TCN's ``pool``): the
input is cut into non-overlapping frames of ``frame`` steps and the input
projection maps each whole frame to one LSTM step, a learned filterbank with
stride. On raw audio a frame of 16 samples runs the recurrence at 1 kHz, about
20x cheaper to train than one step per sample. Frames count samples at every
rate: at 8 kHz a frame spans 2 ms instead of 1, and nothing tells the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kws.models.base import KWSModel, State


class LSTMClassifier(KWSModel):
    """Linear C -> H, ``n_layers`` of LSTM(H, H), dropout; state is (h, c) of every layer."""

    family = "lstm"

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        d_model: int = 128,
        n_layers: int = 2,
        dropout: float = 0.1,
        frame: int = 1,
    ):
        super().__init__(in_channels, n_classes, d_model)
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 1:
            raise ValueError(f"frame must be an integer >= 1 (input steps per LSTM step), "
                             f"got {frame!r}")
        self.n_layers = n_layers
        self.frame = frame
        self.encoder = nn.Linear(in_channels * frame, d_model)
        # nn.LSTM's own dropout acts between layers only (and warns with one layer).
        self.lstm = nn.LSTM(
            d_model, d_model, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(dropout)
        self._open_forget_gates()
        self.config = {
            "family": self.family,
            "in_channels": in_channels,
            "n_classes": n_classes,
            "d_model": d_model,
            "n_layers": n_layers,
            "dropout": dropout,
        }
        if frame != 1:  # only when set: configs from before framing stay as they were
            self.config["frame"] = frame

    @torch.no_grad()
    def _open_forget_gates(self) -> None:
        """Forget-gate bias 1 (Jozefowicz et al., 2015), so memory starts long, not fading."""
        for layer in range(self.n_layers):
            h = self.d_model
            getattr(self.lstm, f"bias_ih_l{layer}")[h : 2 * h].fill_(1.0)  # gates are i, f, g, o
            getattr(self.lstm, f"bias_hh_l{layer}")[h : 2 * h].zero_()

    @property
    def time_pool(self) -> int:
        """Input steps per LSTM step: the frame (at every rate)."""
        return self.frame

    def features(self, x: Tensor, rate_factor: float = 1.0) -> Tensor:
        """(B, L, C) -> (B, L // frame, H) from a zero state; an incomplete last frame is
        dropped, as pools drop theirs. ``rate_factor`` is ignored: no step size."""
        if x.shape[1] < self.frame:
            raise ValueError(
                f"input of {x.shape[1]} steps is shorter than one frame of {self.frame} steps: "
                f"it would give no LSTM step"
            )
        whole = x.shape[1] // self.frame * self.frame
        return self._run(x[:, :whole], self.initial_state(x.shape[0]))[0]

    def initial_state(self, batch: int) -> State:
        """[h, c], each (n_layers, B, H) zeros, as ``nn.LSTM`` takes them."""
        h = self.encoder.weight.new_zeros(self.n_layers, batch, self.d_model)
        return [h, h.clone()]

    def step(self, x: Tensor, state: State, rate_factor: float = 1.0) -> tuple[Tensor, State]:
        """(B, K, C) chunk -> (B, K // frame, H): the same ``nn.LSTM``, started from the
        carried (h, c). K must be whole frames, so every chunk starts on a frame boundary."""
        if x.shape[1] % self.frame:
            raise ValueError(
                f"a streamed chunk must be a multiple of the model's frame of {self.frame} "
                f"steps, got {x.shape[1]}"
            )
        return self._run(x, state)

    def _run(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The one path of both forms: frames -> projection -> LSTM from (h, c)."""
        if self.frame > 1:  # (B, L, C) -> (B, L / frame, frame * C), time-major in each frame
            # -1 for the batch: the ONNX trace keeps it dynamic (only the batch axis is)
            x = x.reshape(-1, int(x.shape[1]) // self.frame, self.frame * self.in_channels)
        y, (h, c) = self.lstm(self.encoder(x), (state[0], state[1]))
        return self.dropout(y), [h, c]

    def summary(self) -> str:
        return (
            f"lstm: {self.n_parameters:,} parameters, d_model={self.d_model}, "
            f"{self.n_layers} layers, unidirectional"
            + (f", frames of {self.frame} steps (1/{self.frame} rate out)" if self.frame > 1
               else "")
        )
