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
layer's recurrence in pieces instead (``ScannedSSM``), clip and stream alike,
with its constants built once per layer. Both are checked against torch.

File size. ``do_constant_folding=False``: folding at export time would store
every tensor derived from the weights -- an S4 layer's per-chunk matrices grow
with the chunk length K (a K-by-K Toeplitz matrix per channel grows with K^2)
-- whereas the graph computes them from the parameters and onnxruntime folds
them once, in memory, when it loads the file. The file holds the parameters
and the graph: a 6-layer H=128, N=64 raw S4 (253,580 parameters, 1.01 MB of
float32) streams from a 1.34 MB file at K=160 (10 ms) and a 1.37 MB one at
K=640 (40 ms); its clip graph, which unrolls 63 pieces per layer, is 2.11 MB.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kws.export import verify
from kws.export.sidecar import ExportSpec, StateSpec
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
#: the longest piece of a streamed chunk; its step matrix takes H (N + P)^2 floats per layer
STEP_PIECE = 32


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


def piece_length(steps: int, limit: int = SCAN_PIECE) -> int:
    """The longest piece <= ``limit`` that splits ``steps`` evenly (a stream step must not pad)."""
    return max(d for d in range(1, min(steps, limit) + 1) if steps % d == 0)


class ScannedSSM(nn.Module):
    """An S4 layer as the exported graph runs it: its recurrence, in pieces of P steps.

    It stands in for an ``S4Layer`` in the copy of the model that is exported
    (``exportable``), with the same two forms and the same numbers: ``forward``
    for a clip, ``step`` for a chunk. Why: the torch clip form convolves with an
    FFT kernel built from complex tensors, which ONNX cannot express; and the
    recurrence's constants should be built once per layer in the graph, from the
    parameters, for the runtime to fold once (``S4Layer.step``, traced, rebuilds
    them for every piece). Nothing derived from the parameters is in the file.

    Per piece of P inputs u, with x the state before it (real, per channel):
    y = causal_conv(u, taps) + rows x + D u and x' = dA^P x + cols u, where
    taps = C dA^t dB (H, P), rows = C dA^(t+1) (H, P, N), cols = dA^(P-1-s) dB (H, N, P).
    """

    def __init__(self, layer: S4Layer):
        super().__init__()
        self.layer = layer

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

        A chunk is short: its pieces of P <= STEP_PIECE steps run one after another,
        each one matmul [y; x'] = M [x; u] with the layer's step matrix M
        (``s4_kernels.step_matrix``, (H, P + N, N + P)), built once for all pieces.
        In onnxruntime this is 1.6-2x faster than ``scan`` at batch 1-2.
        """
        K = int(u.shape[1])
        P = piece_length(K, STEP_PIECE)
        matrix = sk.step_matrix(*self.layer.discrete(rate_factor), self.layer.D, P)
        x = state.flatten(-2).unsqueeze(-1)  # (B, H, N, 1): columns for the matmul
        N = int(x.shape[2])
        ys = []
        # split, not slicing: one ONNX node for all pieces, and one per piece's output
        for piece in u.transpose(1, 2).unsqueeze(-1).split(P, dim=2):
            y, x = (matrix @ torch.cat([x, piece], dim=2)).split([P, N], dim=2)
            ys.append(y)
        y = torch.cat(ys, dim=2).squeeze(-1).transpose(1, 2)
        x = nn.functional.hardshrink(x.squeeze(-1), sk.TINY)  # as S4Layer.step: no subnormals
        return y, x.unflatten(-1, state.shape[-2:])

    def initial_state(self, batch: int) -> Tensor:
        return self.layer.initial_state(batch)


def exportable(spotter: Any) -> Any:
    """``spotter`` itself, or for S4 a copy whose SSM layers are ``ScannedSSM``."""
    layers = [name for name, m in spotter.model.named_modules() if isinstance(m, S4Layer)]
    if not layers:
        return spotter
    if getattr(spotter.model, "bidirectional", False):
        raise ValueError(
            "a bidirectional S4 model does not export to ONNX: its kernel needs complex "
            "FFTs, which ONNX lacks, and the recurrent form that stands in for them in a "
            "causal model runs forward in time only. Train a causal one (bidirectional: false)"
        )
    copy = deepcopy(spotter).eval()
    for name in layers:
        parent, _, attr = name.rpartition(".")
        layer = copy.model.get_submodule(name)
        setattr(copy.model.get_submodule(parent), attr, ScannedSSM(layer))
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
    """Map ops that ONNX has but the TorchScript exporter does not (S4D's ZOH uses them)."""
    for name in ("sinh", "cosh"):
        onnx_op = name.capitalize()
        torch.onnx.register_custom_op_symbolic(
            f"aten::{name}", lambda g, x, op=onnx_op: g.op(op, x), opset
        )


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
        traced: nn.Module = StreamingSpotter(exportable(spotter), chunk_ms, rate).eval()
        names = [f"state_{n}" for n in module.state_names]
        input_names = ["audio", *names]
        output_names = ["logits", *[f"next_{n}" for n in names]]
        args = (
            torch.zeros(TRACE_BATCH, module.chunk_samples),
            *module.initial_states(TRACE_BATCH),
        )
    else:
        module = clip_module
        traced = ClipSpotter(exportable(spotter), rate).eval()
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
