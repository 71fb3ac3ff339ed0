"""S4 with pooling in time: shapes, the remainder rule, streaming, rate factor, ONNX export."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from kws.export.onnx_export import export_spotter
from kws.export.verify import synthetic_clip
from kws.features import FeatureConfig
from kws.models import build_model, model_from_config
from kws.models.s4 import S4Classifier, area_pool, mean_pool
from kws.spotter import KeywordSpotter
from kws.streaming.step_model import StreamingSpotter, chunk_plan

REPO = Path(__file__).resolve().parents[1]
LABELS = ["yes", "no", "_unknown_", "_silence_"]
TINY = {"d_model": 8, "d_state": 8, "n_layers": 2, "pool": [4, 4]}


def pooled(kernel: str = "dplr", seed: int = 0, **overrides) -> S4Classifier:
    torch.manual_seed(seed)
    return S4Classifier(1, 4, kernel=kernel, **{**TINY, **overrides}).eval()


def rel_err(got, want) -> float:
    return float((got - want).abs().max() / want.abs().max())


def spotter(**overrides) -> KeywordSpotter:
    torch.manual_seed(0)
    model = build_model("s4", 1, len(LABELS), pipeline="raw", **{**TINY, **overrides})
    return KeywordSpotter(FeatureConfig("raw"), model, LABELS).eval()


def test_features_and_step_shapes():
    model = pooled(pool=[4, 2])
    x = torch.randn(3, 800, 1)
    with torch.no_grad():
        assert model.features(x).shape == (3, 100, 8)
        assert model(x).shape == (3, 4)
        y, state = model.step(x[:, :160], model.initial_state(3))
    assert y.shape == (3, 20, 8)
    assert [tuple(s.shape) for s in state] == [(3, 8, 4, 2)] * 2
    assert model.time_pool == 8 and model.config["pool"] == [4, 2]
    assert "pool [4, 2]" in model.summary()


def test_remainder_is_dropped_at_each_stage():
    """pool [3, 2] on 23 steps: 7 groups of 3 (2 dropped), then 3 groups of 2 (1 dropped)."""
    model = pooled(pool=[3, 2])
    x = torch.randn(2, 23, 1)
    with torch.no_grad():
        longer, exact = model.features(x), model.features(x[:, :18])
        assert longer.shape == (2, 3, 8)
        # causal: the dropped tail never reaches an output
        assert rel_err(longer, exact) < 1e-5
        # and a different tail changes nothing either
        other = torch.cat([x[:, :18], 5 * torch.randn(2, 5, 1)], dim=1)
        assert rel_err(model.features(other), exact) < 1e-5
        with pytest.raises(ValueError, match="shorter than the model's pooling 6"):
            model.features(x[:, :5])


def test_pooling_averages_groups():
    """With a single block, pooling is the mean of the unpooled block outputs per group."""
    torch.manual_seed(0)
    flat = S4Classifier(1, 4, d_model=8, d_state=8, n_layers=1).eval()
    grouped = S4Classifier(1, 4, d_model=8, d_state=8, n_layers=1, pool=[5]).eval()
    grouped.load_state_dict(flat.state_dict())
    x = torch.randn(2, 100, 1)
    with torch.no_grad():
        h = flat.blocks[0](flat.encoder(x))
        want = flat.norm(h.reshape(2, 20, 5, 8).mean(2))
        assert rel_err(grouped.features(x), want) < 1e-6


@pytest.mark.parametrize(
    "pool, match",
    [
        ([4], "one factor per layer \\(2\\)"),
        ([4, 0], "integers >= 1"),
        ([4, 2.0], "integers >= 1"),
        ([True, 2], "integers >= 1"),
        (4, "one factor per layer"),
    ],
)
def test_bad_pool_is_refused(pool, match):
    with pytest.raises(ValueError, match=match):
        S4Classifier(1, 4, d_model=8, d_state=8, n_layers=2, pool=pool)


def test_step_needs_whole_groups():
    model = pooled()
    with pytest.raises(ValueError, match="multiple of the model's pooling 16 steps"):
        model.step(torch.randn(1, 24, 1), model.initial_state(1))


@pytest.mark.parametrize("kernel", ["dplr", "diag-lin"])
@pytest.mark.parametrize("rate_factor", [1.0, 2.0])
def test_step_equals_features(kernel, rate_factor):
    model = pooled(kernel, pool=[4, 2])
    x = torch.randn(2, 960, 1)
    with torch.no_grad():
        want = model.features(x, rate_factor)
    for chunk in (8, 40, 160, 320):
        got = model.stream(x, chunk, rate_factor)
        assert got.shape == want.shape
        assert rel_err(got, want) < 1e-4, chunk


def test_pools_span_time_so_8_khz_output_lines_up_with_16_khz():
    """A 16-kHz-trained pooled model on the same sound at 8 kHz (rate_factor 2).

    The first pool takes 2 samples instead of 4, so the pooled sequence has the same
    1-kHz rate as at 16 kHz and only block 1 needs dt doubled; its outputs match the
    16 kHz ones step for step. Without the dt change the error is several times larger.
    """
    model = pooled(d_model=16, d_state=16, pool=[4, 4], dt_min=1e-3, dt_max=2e-2)
    assert model.pool_plan(2.0) == [(2, 2.0), (4, 1.0)]
    assert model.pool_plan(0.5) == [(8, 0.5), (4, 1.0)]  # 32 kHz
    # no pool spans whole samples at 11.025 kHz: the first pools 2.75625 by area
    assert model.pool_plan(16000 / 11025) == [(Fraction(441, 160), 16000 / 11025), (4, 1.0)]
    assert model.pool_plan(16000 / 3000) == [(4, 16000 / 3000)] * 2  # no pool spans a sample
    assert model.time_pool_at(2.0) == 8 and model.time_pool_at(1.0) == 16
    t = torch.arange(16000) / 16000
    wave = 0.4 * torch.sin(2 * torch.pi * 60 * t) + 0.3 * torch.sin(2 * torch.pi * 170 * t + 1)
    x16, x8 = wave.reshape(1, -1, 1), wave[::2].reshape(1, -1, 1)
    with torch.no_grad():
        y16 = model.features(x16, 1.0)
        y8 = model.features(x8, 2.0)
        h = model.encoder(x8)  # the same pools without the dt change
        for block, (factor, _) in zip(model.blocks, model.pool_plan(2.0), strict=True):
            h = mean_pool(block(h, 1.0), factor)
        unscaled = rel_err(model.norm(h), y16)
    assert y16.shape[1] == y8.shape[1] == 1000
    scaled = rel_err(y8, y16)
    assert scaled < 0.08
    assert unscaled > 3 * scaled


def test_config_without_pool_loads_unchanged():
    torch.manual_seed(0)
    old = S4Classifier(1, 4, d_model=8, d_state=8, n_layers=2).eval()
    assert "pool" not in old.config and old.time_pool == 1
    rebuilt = model_from_config(dict(old.config)).eval()
    rebuilt.load_state_dict(old.state_dict())
    x = torch.randn(2, 300, 1)
    with torch.no_grad():
        h = old.encoder(x)
        for block in old.blocks:
            h = block(h)
        assert torch.equal(rebuilt.features(x), old.norm(h))
    with_pool = model_from_config({**old.config, "pool": [2, 2]})
    assert with_pool.time_pool == 4 and with_pool.config["pool"] == [2, 2]


def test_shipped_raw_checkpoint_still_loads():
    from kws.training.checkpoint import load_spotter

    path = REPO / "models" / "s4d_raw.pt"
    if not path.is_file():
        pytest.skip(f"{path} not shipped")
    loaded, _ = load_spotter(path)
    assert "pool" not in loaded.model.config and loaded.model.time_pool == 1
    wave = torch.from_numpy(synthetic_clip(4000, 16000))[None]
    with torch.no_grad():
        assert loaded.model.features(loaded.frontend(wave)).shape[1] == 4000


@pytest.mark.parametrize("rate", [16000, 8000])
def test_streamed_clip_equals_clip_model(rate):
    spot = spotter()
    stream = StreamingSpotter(spot, chunk_ms=10, sample_rate=rate)
    assert stream.window_frames == 1000  # pools span time: one output per ms at any rate
    wave = torch.from_numpy(synthetic_clip(rate, rate))[None].repeat(2, 1)
    wave[1] = wave[1].flip(0)
    with torch.no_grad():
        want = spot(wave, rate)
    assert rel_err(stream.stream_clip(wave), want) < 1e-4


def test_area_pool_is_the_mean_over_each_span_of_time():
    h = torch.randn(2, 100, 3)
    assert torch.equal(area_pool(h, Fraction(4)), mean_pool(h, 4))  # whole samples: the mean
    # span 5/2: output j is the mean over [2.5 j, 2.5 (j + 1)), half of the middle step shared
    got = area_pool(h, Fraction(5, 2))
    assert got.shape == (2, 40, 3)
    want0 = (h[:, 0] + h[:, 1] + 0.5 * h[:, 2]) / 2.5
    want1 = (0.5 * h[:, 2] + h[:, 3] + h[:, 4]) / 2.5
    assert torch.allclose(got[:, 0], want0) and torch.allclose(got[:, 1], want1)
    # the incomplete last span is dropped, as mean_pool drops a partial group
    assert area_pool(h[:, :99], Fraction(5, 2)).shape == (2, 39, 3)
    # a constant stays itself and the integral is kept: sum(out) * span == sum(in)
    ramp = torch.arange(441.0).reshape(1, -1, 1)
    pooled_ramp = area_pool(ramp, Fraction(441, 160))
    assert torch.allclose(area_pool(torch.ones(1, 441, 1), Fraction(441, 160)), torch.ones(1))
    assert torch.isclose(pooled_ramp.sum() * 441 / 160, ramp.sum())


def test_area_pool_lines_up_11_khz_with_16_khz():
    """At 11.025 kHz no pool spans whole samples; the area pool still puts block 2 on
    the trained 4-kHz grid with its trained dt, so the outputs follow the 16 kHz ones,
    closer than pooling by samples with dt rescaled everywhere (the former rule)."""
    model = pooled(d_model=16, d_state=16, pool=[4, 4], dt_min=1e-3, dt_max=2e-2)
    rf = 16000 / 11025
    assert model.pool_group_at(rf) == (441, 40) and model.time_pool_at(rf) == 441
    assert model.output_steps(11025, rf) == 1000 and model.output_steps(11024, rf) == 999
    def tone(rate):
        t = torch.arange(rate) / rate
        wave = 0.4 * torch.sin(2 * torch.pi * 60 * t) + 0.3 * torch.sin(2 * torch.pi * 170 * t + 1)
        return wave.reshape(1, -1, 1)
    with torch.no_grad():
        y16, y11 = model.features(tone(16000)), model.features(tone(11025), rf)
        h = model.encoder(tone(11025))  # the former rule: 4 samples a pool, dt x rf everywhere
        for block in model.blocks:
            h = mean_pool(block(h, rf), 4)
        by_samples = model.norm(h)
    assert y11.shape == y16.shape == (1, 1000, 16) and by_samples.shape[1] == 689
    # compare over the same span of time: 689 by-samples steps cover 0-1 s at 1.45 ms each
    times = (torch.arange(689) + 1) * 16 / 11025  # end of each by-samples step, s
    nearest = y16[:, (times * 1000).long().clamp(max=999) - 1]
    assert rel_err(y11, y16) < 0.03
    assert rel_err(by_samples, nearest) > 2 * rel_err(y11, y16)


@pytest.mark.parametrize("chunk", [441, 882, 2205])
def test_step_equals_features_with_an_area_pool(chunk):
    model = pooled(pool=[4, 4])
    rf = 16000 / 11025
    x = torch.randn(2, 11025, 1)
    with torch.no_grad():
        want = model.features(x, rf)
        got = model.stream(x, chunk, rf)
    assert got.shape == want.shape == (2, 1000, 8)
    assert rel_err(got, want) < 1e-4
    with pytest.raises(ValueError, match="multiple of the model's pooling 441 steps"):
        model.step(torch.randn(1, 160, 1), model.initial_state(1), rf)


def test_chunk_must_hold_whole_groups():
    cfg = FeatureConfig("raw")
    plan = chunk_plan(cfg, 10, 16000, time_pool=32)
    assert (plan["frames_per_chunk"], plan["window_outputs"]) == (160, 500)
    with pytest.raises(ValueError, match="pooling groups of 64 steps; use a chunk of a multiple "
                                         "of 4 ms"):
        chunk_plan(cfg, 10, 16000, time_pool=64)
    with pytest.raises(ValueError, match="pooling groups of 32"):  # [4, 8] at 8 kHz
        StreamingSpotter(spotter(pool=[8, 8]), chunk_ms=10, sample_rate=8000)
    with pytest.raises(ValueError, match="pooling groups of 441 steps; use a chunk of a "
                                         "multiple of 40 ms"):  # an area pool at 11.025 kHz
        StreamingSpotter(spotter(), chunk_ms=1000 / 49, sample_rate=11025)  # 225 samples
    plan = chunk_plan(cfg.at_rate(11025), 40, 11025, time_pool=441, group_outputs=40)
    assert plan["window_outputs"] == 1000


@pytest.mark.parametrize("rate, chunk_ms", [(16000, 10), (8000, 10), (11025, 40)])
def test_streaming_onnx_export_of_a_pooled_raw_model(rate, chunk_ms, tmp_path):
    import onnxruntime as ort

    spot = spotter()
    clip = synthetic_clip(rate, rate)
    spec = export_spotter(
        spot, tmp_path / "pooled.onnx", streaming=True, sample_rate=rate, chunk_ms=chunk_ms,
        check_audio=(clip, "synthetic"),
    )
    assert spec.parity["max_rel_err"] < 1e-4
    assert spec.chunk_samples == rate * chunk_ms // 1000
    assert spec.window_chunks == 1000 // chunk_ms
    assert spec.model_config["pool"] == [4, 4]
    # drive it from the sidecar alone and compare with torch's clip logits
    sess = ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"])
    states = spec.initial_states(1)
    outputs = [spec.logits_output, *[s.output for s in spec.states]]
    for start in range(0, rate, spec.chunk_samples):
        feed = {spec.audio_input: clip[None, start : start + spec.chunk_samples], **states}
        logits, *nexts = sess.run(outputs, feed)
        states = {s.name: v for s, v in zip(spec.states, nexts, strict=True)}
    with torch.no_grad():
        want = spot(torch.from_numpy(clip)[None], rate).numpy()
    assert np.abs(logits - want).max() / np.abs(want).max() < 1e-4


@pytest.mark.parametrize("rate", [8000, 11025])
def test_clip_onnx_export_of_a_pooled_raw_model(rate, tmp_path):
    spec = export_spotter(
        spotter(), tmp_path / "clip.onnx", sample_rate=rate,
        check_audio=(synthetic_clip(rate, rate), "synthetic"),
    )
    assert spec.kind == "clip" and spec.parity["max_rel_err"] < 1e-4
