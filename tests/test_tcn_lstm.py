"""TCN and LSTM baselines: streaming equals the clip form, causality, receptive field, export."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from kws.models import build_model
from kws.models.lstm import LSTMClassifier
from kws.models.tcn import TCNClassifier, blocks_to_cover, receptive_field

RAW_TEST_LEN = 4000  # short raw clips keep the tests fast; the slow tests use 16,000
MFCC_LEN = 98  # frames in one second at a 10 ms hop and a 25 ms window, center=False


def small(family: str, pipeline: str) -> torch.nn.Module:
    """Small raw models (a TCN that covers a 4000-step clip); the real presets on MFCC."""
    torch.manual_seed(0)
    if pipeline == "mfcc":
        return build_model(family, 20, 12, pipeline="mfcc").eval()
    overrides = {"d_model": 16}
    if family == "tcn":
        overrides["steps_per_second"] = float(RAW_TEST_LEN)
    return build_model(family, 1, 12, pipeline="raw", **overrides).eval()


def clip(pipeline: str, length: int | None = None, batch: int = 2) -> torch.Tensor:
    """Audio-like raw input or MFCC-scaled features (tens, not unit variance)."""
    gen = torch.Generator().manual_seed(1)
    if pipeline == "raw":
        return 0.3 * torch.randn(batch, length or RAW_TEST_LEN, 1, generator=gen)
    return 10.0 * torch.randn(batch, length or MFCC_LEN, 20, generator=gen)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4):
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= tol * scale, f"max error {err:.3g} > {tol:g} x {scale:.3g}"


def check_streaming(model, x: torch.Tensor, chunk: int):
    with torch.no_grad():
        expected = model.features(x)
        streamed = model.stream(x, chunk)
        assert_rel_close(streamed, expected)
        assert_rel_close(model.classify(streamed.mean(1)), model(x))


@pytest.mark.parametrize("family", ["tcn", "lstm"])
@pytest.mark.parametrize(
    ("pipeline", "chunk"),
    [("raw", 160), ("raw", 999), ("raw", 4000), ("raw", 5000),
     ("mfcc", 1), ("mfcc", 7), ("mfcc", 32), ("mfcc", 98)],
)
def test_streaming_matches_clip_form(family, pipeline, chunk):
    check_streaming(small(family, pipeline), clip(pipeline), chunk)


@pytest.mark.parametrize("family", ["tcn", "lstm"])
def test_streaming_one_step_at_a_time_on_raw(family):
    # K=1 costs one Python call per sample: 256 samples still wrap the short buffers many times.
    check_streaming(small(family, "raw"), clip("raw", length=256), 1)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tcn", "lstm"])
def test_streaming_full_second_raw_preset(family):
    torch.manual_seed(0)
    model = build_model(family, 1, 12, pipeline="raw").eval()
    x = clip("raw", length=16000, batch=1)
    for chunk in (1000, 4001):
        check_streaming(model, x, chunk)


def test_streaming_state_is_real_tensors_of_fixed_shape():
    for family in ("tcn", "lstm"):
        model = small(family, "mfcc")
        state = model.initial_state(3)
        _, new_state = model.step(clip("mfcc", length=5, batch=3), state)
        assert all(isinstance(s, torch.Tensor) and not s.is_complex() for s in new_state)
        assert [s.shape for s in new_state] == [s.shape for s in state]


def test_tcn_state_holds_the_dilated_history():
    model = small("tcn", "mfcc")
    shapes = [tuple(s.shape) for s in model.initial_state(2)]
    # two convs per block, (k-1) * 2**i past inputs each
    expected = [(2, model.d_model, 2 * 2**i) for i in range(model.n_blocks) for _ in range(2)]
    assert shapes == expected


@pytest.mark.parametrize("family", ["tcn", "lstm"])
@pytest.mark.parametrize("pipeline", ["raw", "mfcc"])
def test_causal(family, pipeline):
    model = small(family, pipeline)
    x = clip(pipeline)
    cut = x.shape[1] // 2
    future = x.clone()
    future[:, cut:] += 5.0 * torch.randn_like(future[:, cut:])
    with torch.no_grad():
        before, after = model.features(x), model.features(future)
    assert torch.equal(before[:, :cut], after[:, :cut])
    assert not torch.allclose(before[:, cut:], after[:, cut:])


def _last_output_moves(model, x: torch.Tensor, t: int) -> bool:
    bumped = x.clone()
    bumped[:, t] += 1.0
    with torch.no_grad():
        return not torch.equal(model.features(x)[:, -1], model.features(bumped)[:, -1])


def test_receptive_field_formula_is_exact():
    # Small enough to test both edges: step L-RF reaches the last output, step L-RF-1 does not.
    torch.manual_seed(0)
    model = TCNClassifier(3, 4, d_model=8, kernel_size=3, n_blocks=3).eval()
    assert model.receptive_field == 1 + 2 * 2 * (1 + 2 + 4) == 29
    x = torch.randn(1, 40, 3)
    assert _last_output_moves(model, x, 40 - 29)
    assert not _last_output_moves(model, x, 40 - 30)


def test_blocks_to_cover():
    assert blocks_to_cover(16000, 3) == 12 and receptive_field(3, 12) == 16381
    assert receptive_field(3, 11) < 16000
    assert blocks_to_cover(100, 3) == 5 and receptive_field(3, 5) == 125
    assert blocks_to_cover(100, 5) == 4 and receptive_field(5, 3) < 100


@pytest.mark.parametrize(("pipeline", "channels", "length"), [("mfcc", 20, 100), ("raw", 1, 16000)])
def test_preset_receptive_field_covers_one_second(pipeline, channels, length):
    model = build_model("tcn", channels, 12, pipeline=pipeline).eval()
    assert model.receptive_field >= length
    assert "receptive field" in model.summary() and " s at " in model.summary()
    # Empirically: the very first step of a one-second clip still reaches the last output.
    x = clip(pipeline, length=length, batch=1)
    assert _last_output_moves(model, x, 0)


@pytest.mark.parametrize("family", ["tcn", "lstm"])
def test_rate_factor_is_ignored(family):
    model = small(family, "mfcc")
    x = clip("mfcc")
    with torch.no_grad():
        assert torch.equal(model(x, rate_factor=0.5), model(x, rate_factor=1.0))
        assert torch.equal(model.features(x, 2.0), model.features(x))
        y_half, _ = model.step(x, model.initial_state(2), rate_factor=0.5)
        y_one, _ = model.step(x, model.initial_state(2))
    assert torch.equal(y_half, y_one)


@pytest.mark.parametrize("family", ["tcn", "lstm"])
def test_output_length_and_logits_shape(family):
    model = small(family, "raw")
    x = clip("raw", length=333, batch=3)
    with torch.no_grad():
        assert model.features(x).shape == (3, 333, 16)
        assert model(x).shape == (3, 12)


@pytest.mark.parametrize("family", ["tcn", "lstm"])
def test_trains_on_a_toy_task(family):
    # Label = sign of the clip's first step: only a model whose memory spans the clip can learn it.
    torch.manual_seed(0)
    model = build_model(family, 1, 2, pipeline="raw", d_model=16, dropout=0.0,
                        **({"steps_per_second": 64.0} if family == "tcn" else {}))
    x = 0.1 * torch.randn(32, 64, 1)
    labels = (torch.rand(32) < 0.5).long()
    x[:, 0, 0] = torch.where(labels == 1, 1.0, -1.0)
    opt = torch.optim.Adam(model.param_groups(lr=1e-2, weight_decay=0.0))
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model(x).argmax(1) == labels).float().mean() > 0.95


def test_param_groups_cover_every_parameter_once():
    for family in ("tcn", "lstm"):
        model = small(family, "mfcc")
        groups = model.param_groups(lr=1e-3, weight_decay=0.01)
        ids = [id(p) for g in groups for p in g["params"]]
        assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_summaries_report_size():
    tcn = build_model("tcn", 1, 12, pipeline="raw")
    assert f"{tcn.n_parameters:,} parameters" in tcn.summary()
    assert "16,381 steps (1.02 s at 16000 steps/s)" in tcn.summary()
    lstm = build_model("lstm", 20, 12, pipeline="mfcc")
    assert f"{lstm.n_parameters:,} parameters" in lstm.summary() and "2 layers" in lstm.summary()


def test_bad_hyperparameters_fail_clearly():
    with pytest.raises(ValueError, match="kernel_size"):
        TCNClassifier(1, 2, kernel_size=1)
    with pytest.raises(ValueError, match="n_blocks"):
        TCNClassifier(1, 2, n_blocks=0)
    with pytest.raises(ValueError, match="n_layers"):
        LSTMClassifier(1, 2, n_layers=0)
    with pytest.raises(ValueError, match="pool must be a list of one factor per block, got 4"):
        TCNClassifier(1, 2, pool=4)
    with pytest.raises(ValueError, match=r"one factor per layer \(3\)"):
        TCNClassifier(1, 2, n_blocks=3, pool=[4, 1])
    with pytest.raises(ValueError, match="integers >= 1"):
        TCNClassifier(1, 2, pool=[4, 0])


class _StepModule(torch.nn.Module):
    """step() as a module with flat tensor inputs and outputs, the way ONNX wants it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, *state):
        y, new_state = self.model.step(x, list(state))
        return (y, *new_state)


@pytest.mark.parametrize("family", ["tcn", "lstm"])
def test_step_exports_to_onnx(family):
    ort = pytest.importorskip("onnxruntime")
    model = small(family, "raw")
    chunk = 160
    state = model.initial_state(1)
    names = [f"state_{i}" for i in range(len(state))]
    wrapper = _StepModule(model).eval()  # export restores the wrapper's mode, so it must be eval
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter (fast, enough here) warns it is legacy
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (torch.zeros(1, chunk, 1), *state), buffer, opset_version=17,
                          dynamo=False, input_names=["x", *names])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    onnx_state = [s.numpy() for s in state]
    x = clip("raw", length=3 * chunk, batch=1)
    with torch.no_grad():
        for start in range(0, x.shape[1], chunk):
            piece = x[:, start : start + chunk]
            y, state = model.step(piece, state)
            y_onnx, *onnx_state = session.run(
                None, {"x": piece.numpy(), **dict(zip(names, onnx_state, strict=True))}
            )
            np.testing.assert_allclose(y_onnx, y.numpy(), rtol=1e-4, atol=1e-4 * y.abs().max())


def pooled_tcn(pool=(1, 4, 1, 2, 1), seed: int = 0) -> TCNClassifier:
    torch.manual_seed(seed)
    return TCNClassifier(1, 4, d_model=8, kernel_size=3, pool=list(pool)).eval()


def test_pooled_tcn_restarts_its_dilations_at_each_pool():
    from kws.models.tcn import dilations

    assert dilations([1, 4, 1, 2, 1]) == [1, 2, 1, 2, 1]
    assert dilations([1] * 4) == [1, 2, 4, 8]  # no pool: the plain TCN's 2**i
    model = pooled_tcn()
    assert model.n_blocks == 5 and model.time_pool == 8 and model.config["pool"] == [1, 4, 1, 2, 1]
    assert [b.history for b in model.blocks] == [2, 4, 2, 4, 2]
    assert "pool [1, 4, 1, 2, 1] (1/8 rate out)" in model.summary()
    # a config without pool builds the model it always did
    plain = TCNClassifier(1, 4, d_model=8, n_blocks=3)
    assert "pool" not in plain.config and plain.receptive_field == receptive_field(3, 3)


def test_pooled_receptive_field_formula_is_exact():
    """Gradient of the last output: the input steps that reach it are exactly the field."""
    model = pooled_tcn()
    # 1 + 2*2*(1 + 2) = 13; pool 4 adds 3 -> 16; span 4: + 2*2*(1 + 2)*4 = 64; pool 2
    # adds 1*4 -> 68; span 8: + 2*2*1*8 -> 100
    assert model.receptive_field == 100
    x = torch.randn(1, 160, 1, requires_grad=True)
    model.features(x)[0, -1].sum().backward()
    reached = torch.nonzero(x.grad[0, :, 0]).flatten()
    assert int(reached[-1]) == 159 and 160 - int(reached[0]) == model.receptive_field


@pytest.mark.parametrize("chunk", [8, 40, 160, 800])
def test_pooled_tcn_streams_like_its_clip_form(chunk):
    model = pooled_tcn()
    x = clip("raw", length=800)
    with torch.no_grad():
        want = model.features(x)
        assert want.shape == (2, 100, 8)
        assert_rel_close(model.stream(x, chunk), want)
    with pytest.raises(ValueError, match="multiple of the model's pooling 8 steps"):
        model.step(x[:, :12], model.initial_state(2))
    with pytest.raises(ValueError, match="shorter than the model's pooling 8"):
        model.features(x[:, :7])


def test_pooled_tcn_ignores_the_rate_and_exports(tmp_path):
    """At 8 kHz its pools still count samples (no knob), and the streaming export holds."""
    from kws.export.onnx_export import export_spotter
    from kws.export.verify import synthetic_clip
    from kws.features import FeatureConfig
    from kws.spotter import KeywordSpotter

    torch.manual_seed(0)
    model = build_model("tcn", 1, 4, pipeline="raw", d_model=8, pool=[4, 1, 4, 1, 1])
    spot = KeywordSpotter(FeatureConfig("raw"), model, ["yes", "no", "_unknown_", "_silence_"])
    spot.eval()
    assert model.time_pool_at(2.0) == 16 and model.output_steps(8000, 2.0) == 500
    spec = export_spotter(spot, tmp_path / "tcn_pool.onnx", streaming=True, sample_rate=8000,
                          check_audio=(synthetic_clip(8000, 8000), "synthetic"))
    assert spec.parity["max_rel_err"] < 1e-4 and spec.chunk_samples == 80


def framed_lstm(frame: int = 16, seed: int = 0) -> LSTMClassifier:
    torch.manual_seed(seed)
    return LSTMClassifier(1, 4, d_model=8, n_layers=2, frame=frame).eval()


def test_framed_lstm_maps_each_frame_to_one_step():
    """Frame f of the input, and nothing after it, decides LSTM step f."""
    model = framed_lstm()
    assert model.time_pool == 16 and model.config["frame"] == 16
    assert model.encoder.in_features == 16
    assert "frames of 16 steps (1/16 rate out)" in model.summary()
    x = clip("raw", length=16 * 10 + 5, batch=1)  # an incomplete last frame is dropped
    with torch.no_grad():
        base = model.features(x)
        assert base.shape == (1, 10, 8)
        poked = x.clone()
        poked[0, 16 * 6 + 3] += 1.0  # inside frame 6
        moved = (model.features(poked) - base).abs().amax(dim=2)[0]
    assert torch.all(moved[:6] == 0) and torch.all(moved[6:] > 0)
    # a config without frame builds the model it always did, one step per input step
    plain = LSTMClassifier(1, 4, d_model=8)
    assert "frame" not in plain.config and plain.time_pool == 1


@pytest.mark.parametrize("chunk", [16, 48, 160, 800])
def test_framed_lstm_streams_like_its_clip_form(chunk):
    model = framed_lstm()
    x = clip("raw", length=800)
    with torch.no_grad():
        assert_rel_close(model.stream(x, chunk), model.features(x))
    with pytest.raises(ValueError, match="multiple of the model's frame of 16 steps, got 20"):
        model.step(x[:, :20], model.initial_state(2))
    with pytest.raises(ValueError, match="shorter than one frame of 16 steps"):
        model.features(x[:, :15])
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="frame must be an integer >= 1"):
            LSTMClassifier(1, 4, frame=bad)


def test_framed_lstm_ignores_the_rate_and_exports(tmp_path):
    """At 8 kHz a frame still counts 16 samples (no knob), and the streaming export holds."""
    from kws.export.onnx_export import export_spotter
    from kws.export.verify import synthetic_clip
    from kws.features import FeatureConfig
    from kws.spotter import KeywordSpotter

    torch.manual_seed(0)
    model = build_model("lstm", 1, 4, pipeline="raw", d_model=8, frame=16)
    spot = KeywordSpotter(FeatureConfig("raw"), model, ["yes", "no", "_unknown_", "_silence_"])
    spot.eval()
    assert model.time_pool_at(2.0) == 16 and model.output_steps(8000, 2.0) == 500
    spec = export_spotter(spot, tmp_path / "lstm_frame.onnx", streaming=True, sample_rate=8000,
                          check_audio=(synthetic_clip(8000, 8000), "synthetic"))
    assert spec.parity["max_rel_err"] < 1e-4 and spec.chunk_samples == 80
