"""The shape of the exported streaming graphs: what makes them fast, checked without timing.

Speed itself is measured by benchmarks/bench_stream.py; here we pin down its causes:
onnxruntime folds every constant, a 10-ms MFCC step is elementwise work and a handful
of matmuls, the pieces of a raw chunk stay few, and the export-time rewrites
(``FoldedMFCC``, ``recurrence_factors``, ``upper_toeplitz``) compute the same numbers.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_step_model import make_spotter, rel_err, speechy

from kws.export.onnx_export import (
    FoldedMFCC,
    chunk_piece,
    export_spotter,
    recurrence_factors,
    upper_toeplitz,
)
from kws.features import FeatureConfig, build_frontend

pytest.importorskip("kws.models.s4")
from kws.models.s4 import S4Layer  # noqa: E402


def optimised(path, tmp_path) -> onnx.ModelProto:
    """The graph as onnxruntime runs it: after its default optimisations."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


def constant_only_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes whose inputs are all initializers or outputs of such nodes: work done per call
    that a load-time fold would have done once."""
    known = {t.name for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type != "Constant" and inputs and all(name in known for name in inputs):
            found.append(f"{node.op_type} {node.name}")
            known.update(node.output)
    return found


@pytest.mark.parametrize(("family", "kind"), [("s4", "raw"), ("s4d", "raw"), ("s4", "mfcc")])
def test_onnxruntime_folds_every_constant(tmp_path, family, kind):
    """The chunk matrices are built in the graph from the parameters; none is left per call."""
    spotter = make_spotter(family, kind, n_layers=1)
    spec = export_spotter(spotter, tmp_path / "x.onnx", streaming=True)
    graph = onnx.load(spec.onnx_path)
    assert constant_only_nodes(graph)  # the file does hold work to fold (S4's matrices) ...
    assert constant_only_nodes(optimised(spec.onnx_path, tmp_path)) == []  # ... all folded


@pytest.mark.parametrize(("family", "chunk_ms"), [("s4", 10), ("s4d", 10), ("s4", 20)])
def test_short_mfcc_steps_are_elementwise(tmp_path, family, chunk_ms):
    """One or two MFCC frames per step: each S4 layer is its O(N) recurrence, no matmul.

    The only matmuls are the frontend's three tables, the encoder, each block's output
    layer and the head; no Transpose survives (the stream's state layout is the one the
    recurrence works in); and the node count stays near 30 per layer and frame.
    """
    layers, frames = 3, chunk_ms // 10
    spotter = make_spotter(family, "mfcc", n_layers=layers)
    spec = export_spotter(spotter, tmp_path / "x.onnx", streaming=True, chunk_ms=chunk_ms)
    graph = optimised(spec.onnx_path, tmp_path)
    ops = collections.Counter(node.op_type for node in graph.graph.node)
    assert ops["MatMul"] + ops["Gemm"] + ops["FusedMatMul"] == 3 + 1 + layers + 1
    assert ops["Transpose"] == 0
    assert len(graph.graph.node) < 30 * layers * frames + 30
    state_shapes = {s.name: s.shape for s in spec.states}
    assert state_shapes["state_model_0"] == [None, 16, 2, 4]  # (B, H, 2, N/2): re, then im


def test_raw_chunks_are_cut_into_few_pieces():
    """Pieces of at least 16 (S4D) or 32 (S4) steps, at most 10 of them, dividing the chunk."""
    assert chunk_piece(160, 16) == 16 and chunk_piece(160, 32) == 32  # 10-ms raw chunks
    assert chunk_piece(640, 16) == 64 and chunk_piece(640, 32) == 64  # 40 ms: 10 pieces
    assert chunk_piece(80, 32) == 40  # 10 ms at 8 kHz
    assert chunk_piece(1, 32) == 1 and chunk_piece(7, 16) == 7  # MFCC: the whole chunk
    assert chunk_piece(97, 16) == 97  # a prime: one piece


def test_upper_toeplitz_is_the_causal_convolution():
    taps = torch.randn(3, 5)
    T = upper_toeplitz(taps)
    s, t = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    want = torch.where(t >= s, taps[:, (t - s).clamp(min=0)], torch.zeros(()))
    assert torch.equal(T, want)
    u = torch.randn(5)
    assert torch.allclose(u @ T[0], torch.stack([taps[0, : j + 1].flip(0) @ u[: j + 1]
                                                 for j in range(5)]), atol=1e-6)


@pytest.mark.parametrize(("kernel", "rate_factor"), [("dplr", 1.0), ("diag-lin", 1.0),
                                                     ("dplr", 2.0), ("diag-inv", 0.5)])
def test_recurrence_factors_step_like_the_layer(kernel, rate_factor):
    """x' = G x + a (r . x) + b u and y = c . x + d u reproduce S4Layer.step, state and output."""
    torch.manual_seed(0)
    layer = S4Layer(8, 16, kernel).eval()
    factors = recurrence_factors(layer, rate_factor)
    assert factors is not None and ("a" in factors) == (kernel == "dplr")
    assert factors["g1"].shape == (8, 2, 8) and factors["d"].shape == (8, 1, 1)
    state = torch.randn(3, 8, 8, 2)
    u = torch.randn(3, 1, 8)
    with torch.no_grad():
        want_y, want_state = layer.step(u, state, rate_factor)
    x = state.transpose(-1, -2)  # (B, H, 2, N/2)
    v = u.reshape(3, 8, 1, 1)
    new = x * factors["g1"] + x.flip(2) * factors["g2"] + v * factors["b"]
    if "a" in factors:
        new = new + (x * factors["r"]).sum((2, 3), keepdim=True) * factors["a"]
    y = (x * factors["c"]).sum((2, 3), keepdim=True) + v * factors["d"]
    assert rel_err(new.transpose(-1, -2), want_state) < 1e-5
    assert rel_err(y.reshape(3, 1, 8), want_y) < 1e-5


@pytest.mark.parametrize("rate", [16000, 8000])
def test_folded_mfcc_computes_the_frontend_s_features(rate):
    """Half the DFT table, log/affine/DCT folded: the same MFCC, one frame or a clip."""
    cfg = FeatureConfig("mfcc").at_rate(rate)
    folded = FoldedMFCC(cfg)
    assert folded.dft.shape == (cfg.win_length, 2 * 127)  # bins 1..127 carry the 40 bands
    wave = speechy(2, rate)
    with torch.no_grad():
        want = build_frontend(FeatureConfig("mfcc"))(wave, rate)
        assert rel_err(folded(wave), want) < 1e-5
        one = wave[:, : cfg.win_length]
        assert rel_err(folded(one), want[:, :1]) < 1e-5


@pytest.mark.parametrize("chunk_ms", [10, 20])
def test_streamed_logits_survive_an_s4_recurrence_export(tmp_path, chunk_ms):
    """The recurrent graph keeps the export's promise on a longer stream than the check's."""
    spotter = make_spotter("s4", "mfcc", n_layers=2)
    spec = export_spotter(spotter, tmp_path / "x.onnx", streaming=True, chunk_ms=chunk_ms)
    sess = ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"])
    from kws.streaming.step_model import StreamingSpotter

    stream = StreamingSpotter(spotter, chunk_ms=chunk_ms)
    wave = speechy(2, 40000, seed=5)  # 2.5 s: the window has wrapped
    want, _ = stream.run(wave)
    states = spec.initial_states(2)
    outputs = [spec.logits_output, *[s.output for s in spec.states]]
    got = []
    size = spec.chunk_samples
    for start in range(0, 40000, size):
        logits, *nexts = sess.run(outputs, {"audio": wave[:, start : start + size].numpy(),
                                            **states})
        states = {s.name: v for s, v in zip(spec.states, nexts, strict=True)}
        got.append(logits)
    assert rel_err(torch.from_numpy(np.stack(got, 1)), want) < 1e-4
