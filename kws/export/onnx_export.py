"""Export a KeywordSpotter to ONNX, as a clip model or a streaming step model, and prove it.

``export_spotter`` writes ``NAME.onnx`` and its sidecar ``NAME.json`` (see
``kws.export.sidecar``), but only after onnxruntime has reproduced torch on the
file (``kws.export.verify``): an export that fails the check leaves nothing behind.

Exporter choice. torch 2.14's ``torch.onnx.export`` defaults to the
torch.export-based ("dynamo") exporter. We pass ``dynamo=False`` and use the
TorchScript tracer, which is deprecated but simpler here: the step is
straight-line code over fixed shapes (only the batch axis is dynamic), exactly
what tracing handles, and the verification, run at a batch size other than the
traced one and on real audio, catches anything the trace got wrong. So its
deprecation and tracer warnings are silenced here rather than shown on every
export. (The dynamo exporter fails on S4's clip form anyway: complex tensors.)

S4 graphs. The torch clip model convolves with an FFT kernel built from
complex tensors, which ONNX cannot express; the exported graphs run each S4
layer's recurrence instead (``ScannedSSM``), in real arithmetic, and are checked
against torch. The graph is what ``exportable`` makes of a copy of the spotter.

Speed (streaming). onnxruntime does fold the constants built from the
parameters when it loads a file (no node is left that depends on initializers
only), so they cost nothing per call. What costs is the work per call, and, with
one MFCC frame per 10-ms step, the number of nodes (1-2 us each here).
``benchmarks/bench_stream.py``, one thread, side by side on the shared 2-core
machine, CPU ms per 10-ms chunk through ``OnnxStepBackend`` (untrained models;
measured before the backend bound its buffers once; it now adds nothing):

=================================  ======  =====
model                              before  after
=================================  ======  =====
MFCC S4 (DPLR), H=64 N=64 4 layers   0.49   0.27
MFCC S4D,       H=64 N=64 4 layers   0.48   0.24
raw S4D,       H=128 N=64 6 layers   7.5    3.7
raw S4 (DPLR), H=128 N=64 6 layers   7.9    7.1
raw S4D,        H=64 N=32 4 layers   1.27   0.97
=================================  ======  =====

* MFCC: a 10- or 20-ms chunk runs each S4 layer as its O(N) recurrence
  (``recurrence_factors``): elementwise ops on (B, H, 2, N/2) states instead of
  an (N + 1)^2 matmul per channel; ``FoldedMFCC`` halves the DFT table, the
  largest constant of the model, and folds log, affine map and DCT.
* Raw audio: a chunk runs in pieces, two batched matmuls for all of them and only
  the state passed from piece to piece (``ScannedSSM.chunk``). S4D passes it
  elementwise; S4's DPLR state matrix is dense (its eigenvectors have condition
  number ~2e9 at N=64, so it cannot be diagonalised in float32), and passing the
  state costs an N x N matmul per channel and piece. The raw models are bound by
  memory: a raw S4 reads ~28 MB of folded constants per chunk (as much as the
  (N + P)^2 step matrices before), S4D ~7.5 MB.

File size. ``do_constant_folding=False``: folding at export time would store
every tensor derived from the weights -- an S4 layer's per-chunk matrices grow
with the chunk length K -- whereas the graph computes them from the parameters
and onnxruntime folds them once, in memory, when it loads the file. The file
holds the parameters and the graph: a 6-layer H=128, N=64 raw S4 (253,580
parameters, 1.01 MB of float32) streams from a 1.24 MB file at K=160 (10 ms) and
a 1.25 MB one at K=640 (40 ms); its clip graph is 1.90 MB. The exceptions are
small: the MFCC tables (406 KB at 16 kHz) and the one-step recurrence factors,
6 H N floats per S4 layer (the 4-layer H=64 MFCC S4: 393 KB, file 1.01 MB).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.onnx.symbolic_helper import parse_args

from kws.export import verify
from kws.export.sidecar import ExportSpec, StateSpec
from kws.features import FeatureConfig, Frontend
from kws.features.mfcc import REF_DB, SCALE_DB, MFCCFrontend, mfcc_tables
from kws.models import s4_kernels as sk
from kws.models.s4 import S4Layer
from kws.streaming.step_model import StreamingSpotter

#: the lowest opset we export to: LayerNormalization is one op from 17 on
MIN_OPSET = 17
#: the batch size the graph is traced at; verification runs another one
TRACE_BATCH = 2
#: the longest piece of a clip an exported S4 layer runs at once; the state passes between
#: pieces (63 for a 1-s raw clip); the piece constants take 2 H N P floats per layer
SCAN_PIECE = 256
#: the longest piece of a streamed chunk (S4); see ``ScannedSSM.chunk``
STEP_PIECE = 32
#: the same for S4D, whose state passes from piece to piece elementwise
DIAGONAL_PIECE = 16
#: the most pieces a streamed chunk is cut into (40-ms raw chunks get longer pieces)
MAX_PIECES = 10
#: the longest chunk an S4 layer streams step by step, by its O(N) recurrence
MAX_RECURRENT = 2


class ClipSpotter(nn.Module):
    """A spotter at one sample rate: (B, clip_samples) audio -> (B, n_classes) logits."""

    def __init__(self, spotter: Any, sample_rate: int | None = None):
        super().__init__()
        self.spotter = spotter
        self.sample_rate = int(sample_rate or spotter.sample_rate)
        self.rate_factor = spotter.rate_factor(self.sample_rate)  # refuses rates it cannot serve
        self.clip_samples = spotter.clip_samples(self.sample_rate)

    def forward(self, audio: Tensor) -> Tensor:
        return self.spotter(audio, self.sample_rate)


class FoldedMFCC(Frontend):
    """The MFCC frontend as the exported graph computes it, at one sample rate; same numbers.

    ``MFCCFrontend`` under trace computes a frame as DFT matmul, two halves squared and
    added, mel matmul, clamp, log10, affine map, DCT, and a (win, 2 (n_fft/2 + 1)) table
    that a 10-ms step reads whole (822 KB at 16 kHz, the largest constant of an MFCC
    model): with the buffering, 18 nodes per step. Here the DFT keeps only the bins some
    mel band weighs (127 of 257 at 16 kHz), cos and sin side by side, so the power is one
    square and a matmul with the mel table stacked twice; 10 log10, the affine map and
    the DCT fold into one matrix and a bias: 11 nodes, half the table.
    """

    def __init__(self, config: FeatureConfig):
        super().__init__(config)
        dft, mel, dct = (t.double() for t in mfcc_tables(config))
        n_bins = mel.shape[0]
        used = (mel.abs().sum(1) > 0).nonzero().flatten()
        keep = torch.arange(int(used.min()), int(used.max()) + 1)
        self.register_buffer("dft", torch.cat([dft[:, keep], dft[:, n_bins + keep]], 1).float())
        self.register_buffer("mel", torch.cat([mel[keep], mel[keep]]).float())
        # (10 log10(e) - REF_DB) / SCALE_DB @ dct == ln(e) @ dct_ln + bias
        self.register_buffer("dct", (dct * (10 / math.log(10) / SCALE_DB)).float())
        self.register_buffer("bias", (-REF_DB / SCALE_DB * dct.sum(0)).float())

    def compute(self, wave: Tensor, cfg: FeatureConfig) -> Tensor:
        if int(wave.shape[1]) == cfg.win_length:  # one frame: no unfold (three nodes)
            frames = wave.unsqueeze(1)
        else:
            frames = wave.unfold(1, cfg.win_length, cfg.hop_length)
        spectrum = frames @ self.dft
        energy = (spectrum * spectrum) @ self.mel
        return torch.log(torch.clamp(energy, min=cfg.log_floor)) @ self.dct + self.bias


def chunk_piece(steps: int, shortest: int) -> int:
    """The piece length for a streamed chunk of ``steps``: its shortest divisor that is at least
    ``shortest`` and leaves at most MAX_PIECES pieces (each is a few nodes of the graph), or
    the whole chunk when it is shorter."""
    floor = max(shortest, -(-steps // MAX_PIECES))
    return min((d for d in range(floor, steps + 1) if steps % d == 0), default=steps)


def upper_toeplitz(taps: Tensor) -> Tensor:
    """(H, P) taps -> (H, P, P) with [s, t] = taps[t - s] for t >= s, else 0.

    Built by tiling [taps, 0 x P] and reading it with a row stride of 2P - 1, which
    steps back one tap per row: no P x P index table in the file, unlike a gather.
    """
    H, P = int(taps.shape[0]), int(taps.shape[1])
    padded = nn.functional.pad(taps, (0, P))  # (H, 2P)
    return padded.repeat(1, P)[:, : P * (2 * P - 1)].reshape(H, P, 2 * P - 1)[..., :P]


def deinterleave(n_state: int) -> Tensor:
    """Indices that put an interleaved state (re_0, im_0, re_1, ...) in the order (re..., im...).

    In that order a diagonal complex multiply is two real ones: re and im swap by
    flipping an axis of two contiguous blocks, where swapping within pairs is a strided
    copy of single floats (several times slower in onnxruntime).
    """
    return torch.cat([torch.arange(0, n_state, 2), torch.arange(1, n_state, 2)])


def recurrence_factors(layer: S4Layer, rate_factor: float) -> dict[str, Tensor] | None:
    """The one-step recurrence of ``layer`` in O(N) per channel, or None where it has none.

    dA is block-diagonal in (re, im) pairs (S4D), or block-diagonal plus rank one (S4's
    bilinear DPLR: dA = 2 (I - dt/2 A)^-1 - I with A = Lambda - 2 w w^T, and the inverse is
    Sherman-Morrison). With G that block-diagonal part, x the state and u the input,
        x' = G x + a (r . x) + b u,    y = c . x + d u,
    where c = C dA and d = C dB + D; G x = g1 x + g2 swap(x), swap exchanging re and im.
    Found in float64 from ``layer.discrete`` and checked: if dA - G is not rank one to
    1e-9 (a changed discretisation), this returns None and the caller falls back to the
    general chunk step. Returned as float32 in the stream's state layout (re..., im...),
    each (H, 2, N/2) but d (H, 1, 1); ``a`` and ``r`` are absent for S4D.
    """
    with torch.no_grad():
        wide = deepcopy(layer).double()
        dA, dB, C = wide.discrete(rate_factor)
        n_state = dA.shape[-1]
        order = deinterleave(n_state)
        dA, dB, C = dA[:, order][:, :, order], dB[:, order], C[:, order]
        index = torch.arange(n_state)
        partner = (index + n_state // 2) % n_state  # re_k <-> im_k
        if layer.P is None:
            g1, g2 = dA[:, index, index], dA[:, index, partner]
        else:
            lam = torch.view_as_complex(wide._lambda_pairs())
            half = wide._dt(rate_factor).unsqueeze(-1) / 2
            g = (1 + half * lam) / (1 - half * lam)  # the bilinear map of the diagonal part
            g1 = torch.cat([g.real, g.real], dim=-1)
            g2 = torch.cat([-g.imag, g.imag], dim=-1)
        G = torch.zeros_like(dA)
        G[:, index, index] = g1
        G[:, index, partner] = g2
        rest = dA - G
        factors = {"g1": g1, "g2": g2, "b": dB}
        if layer.P is not None:
            U, S, Vh = torch.linalg.svd(rest)
            a, r = U[..., 0] * S[..., :1], Vh[..., 0, :]
            rest = rest - a.unsqueeze(-1) * r.unsqueeze(-2)
            factors.update(a=a, r=r)
        if not rest.abs().amax() <= 1e-9 * dA.abs().amax():
            return None
        factors["c"] = (C.unsqueeze(-2) @ dA).squeeze(-2)
        shaped = {k: v.unflatten(-1, (2, n_state // 2)).float() for k, v in factors.items()}
        shaped["d"] = ((C * dB).sum(-1) + wide.D).reshape(-1, 1, 1).float()
        return shaped


class ScannedSSM(nn.Module):
    """An S4 layer as the exported graph runs it: real arithmetic, shaped for onnxruntime.

    It stands in for an ``S4Layer`` in the copy of the model that is exported
    (``exportable``), with the same two forms and the same numbers: ``forward`` for a
    clip, ``step`` for a chunk. Why: the torch clip form convolves with an FFT kernel
    built from complex tensors, which ONNX cannot express; and what is fast in
    onnxruntime differs from torch (see ``step``).

    Constants. A chunk's matrices are built in the graph from the parameters, and
    onnxruntime folds them once when it loads the file, so the file holds only the
    parameters (measured: after onnxruntime's optimiser no node is left that depends on
    initializers alone). The exception is the one-step recurrence (``recurrence_factors``),
    which needs a float64 SVD: its 6 H N floats per layer are stored.

    Per piece of P inputs u, with x the state before it (real, per channel):
    y = causal_conv(u, taps) + rows x + D u and x' = dA^P x + cols u, where
    taps = C dA^t dB (H, P), rows = C dA^(t+1) (H, P, N), cols = dA^(P-1-s) dB (H, N, P).
    """

    def __init__(self, layer: S4Layer, rate_factor: float | None = None, chunk_steps: int = 0):
        super().__init__()
        self.layer = layer
        self.rate_factor = rate_factor
        dA = layer.discrete(rate_factor or 1.0)[0].detach()
        blocks = sk.complex_blocks(torch.ones(dA.shape[-1] // 2), torch.ones(dA.shape[-1] // 2))
        #: dA is (re, im)-block-diagonal (S4D): the chunk step's state update is elementwise
        self.diagonal = bool((dA * (blocks == 0)).eq(0).all())
        recurrent = 0 < chunk_steps <= MAX_RECURRENT
        factors = recurrence_factors(layer, rate_factor) if recurrent else None
        self.recurrent = factors is not None
        for name, value in (factors or {}).items():
            self.register_buffer(name, value)

    def constants(self, P: int, rate_factor: float) -> tuple[Tensor, ...]:
        """(taps, rows, cols, dA^P, D) for pieces of P steps."""
        dA, dB, C = self.layer.discrete(rate_factor)
        taps, rows, cols = sk.krylov(dA, dB, C, P)
        return taps, rows, cols.flip(-1), sk.matrix_power(dA, P), self.layer.D

    def scan(self, u: Tensor, x: Tensor, P: int, rate_factor: float) -> tuple[Tensor, Tensor]:
        """u (B, L, H) with L a multiple of P, state x (B, H, N) -> (y (B, L, H), last state).

        For a clip, which is long: every piece's conv (a depthwise conv1d whose
        weight is the taps, nothing P x P), rows and cols at once; only the state
        passes from piece to piece, one (N, N) matmul per channel each.
        Memory: 2 H N P + H N^2 floats per layer.
        """
        taps, rows, cols, power, D = self.constants(P, rate_factor)
        batch, length, H = u.shape[0], int(u.shape[1]), u.shape[2]
        n = length // P
        pieces = u.transpose(1, 2).reshape(batch, H, n, P)
        # Batched matmuls over channels, (H, ., .) @ (H, ., B n): einsum is slow in onnxruntime.
        columns = pieces.permute(1, 3, 0, 2).reshape(H, P, -1)  # (H, P, B n)
        to_state = (cols @ columns).reshape(H, -1, batch, n)  # (H, N, B, n)
        states = [x.permute(1, 2, 0)]  # (H, N, B)
        for c in range(n):
            states.append(power @ states[-1] + to_state[..., c])
        start = torch.stack(states[:-1], dim=-1).reshape(H, -1, batch * n)  # before each piece
        from_state = (rows @ start).reshape(H, P, batch, n).permute(2, 0, 3, 1)  # (B, H, n, P)
        within = nn.functional.conv1d(
            nn.functional.pad(pieces.transpose(1, 2).reshape(batch * n, H, P), (P - 1, 0)),
            taps.flip(-1).unsqueeze(1),
            groups=H,
        )
        within = within.reshape(batch, n, H, P).transpose(1, 2)
        y = within + from_state + D[:, None, None] * pieces
        last = nn.functional.hardshrink(states[-1].permute(2, 0, 1), sk.TINY)  # as S4Layer.step
        return y.reshape(batch, H, length).transpose(1, 2), last

    def forward(self, u: Tensor, rate_factor: float = 1.0) -> Tensor:
        """(B, L, H) clip -> (B, L, H), zero-padded to whole pieces (causal: the pad is unseen)."""
        length = int(u.shape[1])  # plain ints keep the graph's shapes static
        P = min(SCAN_PIECE, length)
        padded = nn.functional.pad(u, (0, 0, 0, -length % P))
        x = u.new_zeros(u.shape[0], self.layer.d_model, self.layer.d_state)
        return self.scan(padded, x, P, rate_factor)[0][:, :length]

    def step(self, u: Tensor, state: Tensor, rate_factor: float = 1.0) -> tuple[Tensor, Tensor]:
        """(B, K, H) chunk and (B, H, N/2, 2) state -> outputs and state, as ``S4Layer.step``.

        Chunks of up to MAX_RECURRENT steps (10- and 20-ms MFCC chunks) run the O(N)
        recurrence step by step, ``recur``: ~16 small elementwise ops per layer and step.
        Longer chunks (raw audio) run in pieces, ``chunk``.
        """
        if self.recurrent and int(u.shape[1]) <= MAX_RECURRENT:
            if rate_factor != self.rate_factor:
                raise ValueError(
                    f"this layer's recurrence was built for rate_factor {self.rate_factor:g}, "
                    f"got {rate_factor:g}"
                )
            return self.recur(u, state)
        return self.chunk(u, state, rate_factor)

    def recur(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Step by step: x' = G x + a (r . x) + b u, y = c . x + d u (``recurrence_factors``).

        It works on the state as the stream keeps it, (B, H, 2, N/2): the transposes here
        cancel those of ``StreamingSpotter.to_model`` in the graph. No subnormal flush
        (``S4Layer.step`` has one): it cost 4 us a layer, and a state decays towards
        subnormals only after minutes of input that is exactly zero, which LayerNorm,
        the layer's input, does not give.
        """
        H = self.layer.d_model
        x = state.transpose(-1, -2)
        ys = []
        for v in u.split(1, dim=1):
            v = v.reshape(-1, H, 1, 1)
            new = x * self.g1 + x.flip(2) * self.g2 + v * self.b
            if "a" in self._buffers:
                new = new + (x * self.r).sum((2, 3), keepdim=True) * self.a
            ys.append(((x * self.c).sum((2, 3), keepdim=True) + v * self.d).reshape(-1, 1, H))
            x = new
        return torch.cat(ys, dim=1) if len(ys) > 1 else ys[0], x.transpose(-1, -2)

    def chunk_constants(self, P: int, rate_factor: float) -> tuple[Tensor, Tensor, Any]:
        """(into (H, P, N), top (H, N + P, P), chain) for pieces of P steps, states (re..., im...).

        Row vectors throughout (a piece's inputs, a state): share = inputs @ into is
        what the piece adds to the state, [state, inputs] @ top its outputs, and the
        state before the next piece is state @ chain + share, where chain is dA^P
        transposed, or for a diagonal dA the pair (g1, g2) of ``recur``.
        """
        dA, dB, C = self.layer.discrete(rate_factor)
        n_state = int(dA.shape[-1])
        order = deinterleave(n_state)
        taps, rows, cols = sk.krylov(dA, dB, C, P)
        taps = torch.cat([taps[:, :1] + self.layer.D.unsqueeze(-1), taps[:, 1:]], dim=-1)
        top = torch.cat([rows[..., order].transpose(-1, -2), upper_toeplitz(taps)], dim=-2)
        into = cols.flip(-1)[:, order].transpose(-1, -2)
        power = sk.matrix_power(dA, P)
        if not self.diagonal:
            return into, top, power[:, order][:, :, order].transpose(-1, -2)
        flat = power.flatten(-2)
        index = order * n_state
        g1 = flat[:, index + order].reshape(-1, 1, 2, n_state // 2)
        g2 = flat[:, index + (order ^ 1)].reshape(-1, 1, 2, n_state // 2)
        return into, top, (g1, g2)

    def chunk(self, u: Tensor, state: Tensor, rate_factor: float) -> tuple[Tensor, Tensor]:
        """A chunk in pieces (``chunk_piece``), channels leading and pieces as matrix rows.

        All pieces' inputs go through two batched matmuls (their shares of the state, then
        their outputs from [state before the piece, inputs]); only the state passes from
        piece to piece: one (N, N) matmul per channel for S4, elementwise for S4D.
        Rows = pieces is the fast layout in onnxruntime: the constants are the right-hand
        operands, read once per chunk for all pieces (constants on the left, with a few
        columns of data, ran 1.5x slower). No subnormal flush, as in ``recur``.
        """
        H, N, K = self.layer.d_model, self.layer.d_state, int(u.shape[1])
        P = chunk_piece(K, DIAGONAL_PIECE if self.diagonal else STEP_PIECE)
        into, top, chain = self.chunk_constants(P, rate_factor)
        pieces = u.permute(2, 0, 1).reshape(H, -1, P)  # (H, B K/P, P), batch-major rows
        shares = pieces @ into  # (H, B K/P, N): what each piece adds to the state
        x = state.permute(1, 0, 3, 2)  # (H, B, 2, N/2): re then im
        starts = []
        if self.diagonal:
            for share in shares.reshape(H, -1, 2 * K // P, N // 2).split(2, dim=2):
                starts.append(x)
                x = x * chain[0] + x.flip(2) * chain[1] + share
            start = torch.cat(starts, dim=2).reshape(H, -1, N)  # (H, B K/P, N)
        else:
            x = x.reshape(H, -1, N)
            for share in shares.reshape(H, -1, K // P * N).split(N, dim=-1):
                starts.append(x)
                x = x @ chain + share
            start = torch.cat(starts, dim=-1).reshape(H, -1, N)
        y = (torch.cat([start, pieces], dim=-1) @ top).reshape(H, -1, K).permute(1, 2, 0)
        return y, x.reshape(H, -1, 2, N // 2).permute(1, 0, 3, 2)

    def initial_state(self, batch: int) -> Tensor:
        return self.layer.initial_state(batch)


def exportable(spotter: Any, sample_rate: int | None = None, chunk_steps: int = 0) -> Any:
    """A copy of ``spotter`` as the graph should compute it for audio at ``sample_rate``.

    MFCC features come from a ``FoldedMFCC``, S4 layers are ``ScannedSSM``; ``chunk_steps``
    (model steps per streamed chunk) up to MAX_RECURRENT gives each its O(N) recurrence.
    """
    if getattr(spotter.model, "bidirectional", False) and any(
        isinstance(m, S4Layer) for m in spotter.model.modules()
    ):
        raise ValueError(
            "a bidirectional S4 model does not export to ONNX: its kernel needs complex "
            "FFTs, which ONNX lacks, and the recurrent form that stands in for them in a "
            "causal model runs forward in time only. Train a causal one (bidirectional: false)"
        )
    copy = deepcopy(spotter).eval()
    rate = int(sample_rate or spotter.sample_rate)
    if isinstance(copy.frontend, MFCCFrontend):
        copy.frontend = FoldedMFCC(copy.feature_config.at_rate(rate))
    rate_factor = spotter.rate_factor(rate)
    for name in [name for name, m in copy.model.named_modules() if isinstance(m, S4Layer)]:
        parent, _, attr = name.rpartition(".")
        layer = ScannedSSM(copy.model.get_submodule(name), rate_factor, chunk_steps)
        setattr(copy.model.get_submodule(parent), attr, layer)
    return copy


@contextlib.contextmanager
def quiet_tracer() -> Iterator[None]:
    """Hide the legacy exporter's deprecation notices and the tracer's per-op warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=r".*feature will be removed")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1")
        # We pass LSTM states as graph inputs, which is what this warning asks for.
        warnings.filterwarnings("ignore", message=r"Exporting a model to ONNX with a batch_size")
        yield


def register_missing_symbolics(opset: int) -> None:
    """Map ops that ONNX has but the TorchScript exporter does not use (sinh and cosh: S4D's
    ZOH; hardshrink, which it writes as five nodes, is ONNX's Shrink)."""
    for name in ("sinh", "cosh"):
        onnx_op = name.capitalize()
        torch.onnx.register_custom_op_symbolic(
            f"aten::{name}", lambda g, x, op=onnx_op: g.op(op, x), opset
        )
    torch.onnx.register_custom_op_symbolic("aten::hardshrink", _shrink, opset)


@parse_args("v", "f")
def _shrink(g: Any, x: Any, lambd: float) -> Any:
    return g.op("Shrink", x, lambd_f=lambd)


def trace_to_onnx(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int,
) -> None:
    """torch.onnx.export with the batch axis (axis 0 of every input and output) dynamic."""
    dynamic = {name: {0: "batch"} for name in input_names + output_names}
    with quiet_tracer(), torch.no_grad():
        register_missing_symbolics(opset)
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic,
            do_constant_folding=False,
        )


def export_spotter(
    spotter: Any,
    out: str | Path,
    *,
    streaming: bool = False,
    chunk_ms: float = 10.0,
    sample_rate: int | None = None,
    opset: int = MIN_OPSET,
    tolerance: float = verify.TOLERANCE,
    source_checkpoint: str | None = None,
    check_audio: tuple[Any, str] | None = None,
) -> ExportSpec:
    """Write ``out`` (NAME.onnx) and NAME.json; returns the sidecar. Raises ParityError.

    ``sample_rate`` is the rate of the audio the export will get (default: the
    trained rate); a raw-audio S4 model gets its dt rescaled for it. ``check_audio``
    is (float32 samples at that rate, description) for the real-input check; by
    default the first keyword clip of the Speech Commands data, else a synthetic clip.
    """
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out must name a .onnx file, got {out}")
    if opset < MIN_OPSET:
        raise ValueError(f"--opset must be at least {MIN_OPSET}, got {opset}")
    spotter.eval()
    # The torch references, and the same spotter as the graph computes it (S4: ScannedSSM).
    clip_module = ClipSpotter(spotter, sample_rate).eval()
    rate = clip_module.sample_rate
    if streaming:
        module: nn.Module = StreamingSpotter(spotter, chunk_ms, rate).eval()
        steps = module.plan["frames_per_chunk"]
        traced: nn.Module = StreamingSpotter(exportable(spotter, rate, steps), chunk_ms, rate)
        traced.eval()
        names = [f"state_{n}" for n in module.state_names]
        input_names = ["audio", *names]
        output_names = ["logits", *[f"next_{n}" for n in names]]
        args = (
            torch.zeros(TRACE_BATCH, module.chunk_samples),
            *module.initial_states(TRACE_BATCH),
        )
    else:
        module = clip_module
        traced = ClipSpotter(exportable(spotter, rate), rate).eval()
        input_names, output_names = ["audio"], ["logits"]
        args = (torch.zeros(TRACE_BATCH, clip_module.clip_samples),)

    if check_audio is None:
        check_audio = verify.find_real_clip(rate, clip_module.clip_samples) or (
            verify.synthetic_clip(clip_module.clip_samples, rate),
            "synthetic clip (no Speech Commands data found)",
        )
    audio, audio_name = check_audio

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".onnx", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        trace_to_onnx(traced, args, tmp, input_names, output_names, opset)
        if streaming:
            errs = verify.check_streaming(module, clip_module, tmp, audio)
        else:
            errs = verify.check_clip(clip_module, tmp, audio)
        parity = verify.judge(errs, tolerance, str(out))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    parity["audio"] = audio_name
    if streaming:  # the window plus the chunks of frames from before the stream (MFCC)
        parity["clip_chunks"] = module.clip_chunks

    shapes = module.state_shapes if streaming else []
    states = [
        StateSpec(name, f"next_{name}", list(shape))
        for name, shape in zip(input_names[1:], shapes, strict=True)
    ]
    spec = ExportSpec(
        kind="streaming" if streaming else "clip",
        sample_rate=rate,
        labels=list(spotter.labels),
        feature_config=spotter.feature_config.to_dict(),
        model_config=dict(spotter.model.config),
        rate_factor=clip_module.rate_factor,
        trained_rate=spotter.sample_rate,
        onnx_file=out.name,
        chunk_samples=module.chunk_samples if streaming else None,
        clip_samples=None if streaming else clip_module.clip_samples,
        states=states,
        window_chunks=module.window_chunks if streaming else None,
        source_checkpoint=source_checkpoint,
        parity=parity,
        n_parameters=sum(p.numel() for p in spotter.parameters()),
        file_bytes=out.stat().st_size,
    )
    return spec.save(out.with_suffix(".json"))
