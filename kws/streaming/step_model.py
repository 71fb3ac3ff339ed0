"""The streaming spotter as one torch module: a chunk of audio and the states in, logits out.

``StreamingSpotter.forward(audio (B, chunk_samples), *states)`` runs, per chunk,
the frontend's fixed-chunk step, the model's step and a sliding-window mean of
the model outputs over the last clip (1 s), then the model's head. Every state
is a real float32 tensor of fixed shape that starts at zeros, so the module
exports to ONNX as it is (``kws.export``), and a runtime drives it with nothing
but the list of state names and shapes.

Why the window: the clip model pools by mean over a clip, so logits mean "a
keyword somewhere in the last second". The window keeps the per-chunk sums of
the model outputs over the last ``window_chunks`` chunks (a ring buffer), and
the logits are ``head(window_sum / window_frames)``. Streaming a 1-s clip from
the initial states therefore gives exactly the clip model's logits. Before the
first full second the missing chunks count as zeros.

MFCC framing. A 1-s clip has 98 frames, not 100: frame j covers samples
[j * hop, j * hop + win) (25 ms windows every 10 ms, no centring), so it ends
at 10 j + 25 ms, 5 ms off the 10-ms chunk grid. The stream therefore runs
``delay_samples`` (5 ms) behind: the frontend state holds that many samples
more than the frontend's own win - hop, and every frame ends on a chunk
boundary. The first ``lead_frames`` frames it emits (2 at 10 ms) then start
before the stream did; for the first ``lead_chunks`` chunks a counter state
(``warmup``) holds the model state and the window still, so the model sees
exactly the clip's frames. Where the lead frames are not a whole number of
chunks, a ``delay`` state holds back ``delay_frames`` frames to make them one.
The window is exactly the clip's 98 frames, so a chunk must split them evenly
(10, 20 or 70 ms, not 40 ms, at 10 ms hops).
Raw audio has none of this: one step per sample, no delay, no skipped chunks.

Pooled models. A model that pools in time (S4 or TCN with ``pool``) emits one output per
``time_pool`` steps, so a chunk must be a whole number of its groups (160 raw
samples at 16 kHz and 80 at 8 kHz both split into groups of 16) and the window
divides by the clip's outputs, not its steps. Where a pool spans a fraction of a
sample (an area pool, 11.025 kHz from 16 kHz) a whole group is 441 samples that
give 40 outputs, so chunks are multiples of 40 ms there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from kws.features import FeatureConfig


def chunk_plan(
    cfg: FeatureConfig, chunk_ms: float, clip_samples: int, time_pool: int = 1,
    group_outputs: int = 1,
) -> dict[str, int]:
    """How ``chunk_ms`` chunks line up with ``cfg``'s framing and a clip; ValueError if they cannot.

    Returns chunk_samples, clip_samples, frames_per_chunk (K, the model's step),
    clip_frames, window_chunks, lead_frames (frames before the stream, skipped),
    lead_chunks, delay_samples (extra frontend delay that puts frame ends on chunk
    boundaries), delay_frames (extra feature delay that makes lead_frames a
    whole number of chunks), time_pool (model steps in one whole pooling group,
    which gives ``group_outputs`` outputs: 1, or more for an area pool) and
    window_outputs (model outputs in one clip, what the window's sum divides by).
    """
    rate = cfg.sample_rate
    exact = chunk_ms * rate / 1000
    chunk_samples = round(exact)
    if chunk_samples < 1 or not math.isclose(exact, chunk_samples, abs_tol=1e-6):
        raise ValueError(
            f"chunk_ms={chunk_ms:g} is {exact:g} samples at {rate} Hz; a chunk must be a "
            f"positive whole number of samples"
        )
    hop, win = cfg.hop_length, cfg.win_length
    if chunk_samples % hop:
        raise ValueError(
            f"chunk_ms={chunk_ms:g} ({chunk_samples} samples) is not a whole number of "
            f"{cfg.hop_ms:g} ms hops ({hop} samples at {rate} Hz)"
        )
    frames_per_chunk = chunk_samples // hop
    clip_frames = cfg.num_frames(clip_samples)
    if clip_frames % frames_per_chunk:
        fits = [d * cfg.hop_ms for d in range(1, clip_frames + 1) if clip_frames % d == 0]
        raise ValueError(
            f"chunk_ms={chunk_ms:g} gives {frames_per_chunk} steps per chunk, which does not "
            f"divide the {clip_frames} steps of a {clip_samples / rate:g}-s clip, so the window "
            f"could not be exactly one clip; use chunk_ms in "
            f"{', '.join(f'{ms:g}' for ms in fits[:6])}"
        )
    if frames_per_chunk % time_pool:
        raise ValueError(
            f"chunk_ms={chunk_ms:g} gives {frames_per_chunk} steps per chunk, which is not a "
            f"whole number of the model's pooling groups of {time_pool} steps; use a chunk "
            f"of a multiple of {time_pool * hop * 1000 / rate:g} ms"
        )
    ahead = -(-win // hop)  # hops that one window spans, rounded up
    lead_frames = ahead - 1
    delay_frames = -lead_frames % frames_per_chunk
    return {
        "chunk_samples": chunk_samples,
        "clip_samples": clip_samples,
        "frames_per_chunk": frames_per_chunk,
        "clip_frames": clip_frames,
        "window_chunks": clip_frames // frames_per_chunk,
        "lead_frames": lead_frames + delay_frames,
        "lead_chunks": (lead_frames + delay_frames) // frames_per_chunk,
        "delay_samples": ahead * hop - win,
        "delay_frames": delay_frames,
        "time_pool": time_pool,
        "window_outputs": clip_frames // time_pool * group_outputs,
    }


def batch_axis(one: Tensor, two: Tensor, what: str) -> int:
    """The one axis on which a state made for batch 1 and for batch 2 differ, 1 vs 2."""
    diff = [i for i, (a, b) in enumerate(zip(one.shape, two.shape, strict=True)) if a != b]
    if len(diff) != 1 or (one.shape[diff[0]], two.shape[diff[0]]) != (1, 2):
        raise ValueError(f"{what}: cannot tell its batch axis from shapes {one.shape}, {two.shape}")
    return diff[0]


class StreamingSpotter(nn.Module):
    """A KeywordSpotter as a chunk-in, logits-out recurrent step with explicit states.

    ``sample_rate`` (default: the trained rate) is the rate of the audio it will
    get: raw-audio S4 runs with rate_factor = trained / sample_rate baked in; the
    MFCC frontend computes the same features at the new rate (same ms, same Hz).
    """

    def __init__(self, spotter: Any, chunk_ms: float = 10.0, sample_rate: int | None = None):
        super().__init__()
        if getattr(spotter.model, "bidirectional", False):
            raise ValueError(
                f"this {spotter.model.family} model is bidirectional: each output depends on "
                f"the whole clip, future included, so it has no streaming step. Use it on "
                f"whole clips, or train a causal one (bidirectional: false)"
            )
        trained = spotter.feature_config
        self.trained_rate = trained.sample_rate
        self.sample_rate = int(sample_rate or trained.sample_rate)
        self.feature_config = trained.at_rate(self.sample_rate)  # refuses MFCC below f_max * 2
        self.chunk_ms = float(chunk_ms)
        self.rate_factor = spotter.rate_factor(self.sample_rate)
        self.frontend = spotter.frontend
        self.model = spotter.model
        self.labels = list(spotter.labels)
        plan = chunk_plan(
            self.feature_config,
            chunk_ms,
            spotter.clip_samples(self.sample_rate),
            *self.model.pool_group_at(self.rate_factor),
        )
        self.plan = plan
        self.chunk_samples = plan["chunk_samples"]
        self.clip_samples = plan["clip_samples"]
        self.window_chunks = plan["window_chunks"]
        #: model outputs in one clip: the window's sum divided by this is the clip's mean
        self.window_frames = plan["window_outputs"]
        self.lead_chunks = plan["lead_chunks"]
        self._model_axes = [
            batch_axis(a, b, f"{self.model.family} state {i}")
            for i, (a, b) in enumerate(
                zip(self.model.initial_state(1), self.model.initial_state(2), strict=True)
            )
        ]
        self._frontend_width = (
            self.feature_config.win_length - self.feature_config.hop_length
            + plan["delay_samples"]
        )
        #: S4 keeps a complex state as (re, im) pairs on its last axis; the stream keeps it
        #: as (B, H, 2, N/2), all re then all im (``to_stream``)
        self._split_pairs = self.model.family in ("s4", "s4d")
        self._model_names = [f"model_{i}" for i in range(len(self._model_axes))]
        #: the states, in forward's order, without the "state_" prefix of the ONNX inputs
        self.state_names: list[str] = (
            (["frontend"] if self._frontend_width else [])
            + (["delay"] if plan["delay_frames"] else [])
            + (["warmup"] if self.lead_chunks else [])
            + self._model_names
            + ["window"]
        )
        #: per state, its shape; None is the batch axis, always the first
        self.state_shapes: list[tuple[int | None, ...]] = [
            (None, *s.shape[1:]) for s in self.initial_states(1)
        ]

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def initial_states(self, batch: int = 1) -> list[Tensor]:
        """The states before the first chunk, in ``state_names`` order: zeros, batch first."""
        ref = next(self.model.parameters())
        zeros = ref.new_zeros
        states = []
        if self._frontend_width:
            states.append(zeros(batch, self._frontend_width))
        if self.plan["delay_frames"]:
            states.append(zeros(batch, self.plan["delay_frames"], self.feature_config.channels))
        if self.lead_chunks:
            states.append(zeros(batch, 1))
        states += self.to_stream(self.model.initial_state(batch))
        states.append(zeros(batch, self.window_chunks, self.model.d_model))
        return states

    def forward(self, audio: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        """(B, chunk_samples) audio and the states -> ((B, n_classes) logits, *next states)."""
        if audio.ndim != 2 or audio.shape[1] != self.chunk_samples:
            raise ValueError(
                f"audio must be (B, {self.chunk_samples}) samples ({self.chunk_ms:g} ms at "
                f"{self.sample_rate} Hz), got shape {tuple(audio.shape)}"
            )
        if len(states) != len(self.state_names):
            raise ValueError(
                f"expected {len(self.state_names)} states {self.state_names}, got {len(states)}"
            )
        state = dict(zip(self.state_names, states, strict=True))
        new: dict[str, Tensor] = {}
        if "frontend" in state:
            feats, new["frontend"] = self.frontend.step(audio, state["frontend"], self.sample_rate)
        else:  # raw audio: a step per sample, nothing carried from chunk to chunk
            feats = self.frontend(audio, self.sample_rate)
        if "delay" in state:
            pending = torch.cat([state["delay"], feats], dim=1)
            k = self.plan["frames_per_chunk"]
            feats, new["delay"] = pending[:, :k], pending[:, k:]

        old = [state[name] for name in self._model_names]
        y, states_out = self.model.step(feats, self.to_model(old), self.rate_factor)
        next_model = self.to_stream(states_out)
        chunk_sum = y.sum(dim=1, keepdim=True)  # (B, 1, H)
        if "warmup" in state:  # frames from before the stream: the model and window stand still
            seen = state["warmup"]
            new["warmup"] = torch.clamp(seen + 1, max=float(self.lead_chunks))
            valid = seen >= self.lead_chunks  # (B, 1)
            next_model = [
                torch.where(valid.reshape([-1] + [1] * (s.ndim - 1)), s, s_old)
                for s, s_old in zip(next_model, old, strict=True)
            ]
            chunk_sum = torch.where(valid.unsqueeze(-1), chunk_sum, 0.0)
        new.update(zip(self._model_names, next_model, strict=True))

        new["window"] = torch.cat([state["window"][:, 1:], chunk_sum], dim=1)
        logits = self.model.classify(new["window"].sum(dim=1) / self.window_frames)
        return (logits, *(new[name] for name in self.state_names))

    def to_stream(self, states: list[Tensor]) -> list[Tensor]:
        """The model's states as the stream keeps them: batch first, S4's pairs split.

        Why split: the exported S4 step multiplies the state by a complex diagonal, for
        which it swaps re and im. On (re, im) pairs that is a strided copy of single floats
        (a fifth of a whole 10-ms MFCC step in onnxruntime); on (B, H, 2, N/2) it flips an
        axis of two contiguous blocks. The exported layers work on this layout, and the
        transposes that ``to_model`` and the layer put between them cancel in the graph.
        """
        ref = next(self.model.parameters())
        out = [s.to(ref).movedim(a, 0) for s, a in zip(states, self._model_axes, strict=True)]
        return [s.transpose(-1, -2) for s in out] if self._split_pairs else out

    def to_model(self, states: list[Tensor]) -> list[Tensor]:
        """Inverse of ``to_stream``."""
        if self._split_pairs:
            states = [s.transpose(-1, -2) for s in states]
        return [s.movedim(0, a) for s, a in zip(states, self._model_axes, strict=True)]

    @property
    def clip_chunks(self) -> int:
        """Chunks that stream one clip from the initial states (the clip zero-padded to them)."""
        return self.window_chunks + self.lead_chunks

    @torch.no_grad()
    def run(self, audio: Tensor, states: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        """Stream (B, T) audio, zero-padded to whole chunks -> ((B, chunks, n_classes), states)."""
        if audio.ndim != 2:
            raise ValueError(f"audio must be (B, T), got shape {tuple(audio.shape)}")
        audio = nn.functional.pad(audio, (0, -audio.shape[1] % self.chunk_samples))
        states = states if states is not None else self.initial_states(audio.shape[0])
        logits = []
        for start in range(0, audio.shape[1], self.chunk_samples):
            chunk_logits, *states = self(audio[:, start : start + self.chunk_samples], *states)
            logits.append(chunk_logits)
        return torch.stack(logits, dim=1), states

    def stream_clip(self, clip: Tensor) -> Tensor:
        """(B, clip_samples) -> (B, n_classes): the logits after streaming the clip from zeros.

        Equal to the clip model's logits on the same clip; the clip is zero-padded to
        ``clip_chunks`` chunks, past the end of its last frame, which the result never sees.
        """
        padded = nn.functional.pad(clip, (0, self.clip_chunks * self.chunk_samples - clip.shape[1]))
        return self.run(padded)[0][:, -1]
