"""StreamingSpotter: chunks in, logits out; a clip streamed from rest equals the clip model."""

from __future__ import annotations

import pytest
import torch

from kws.features import FeatureConfig
from kws.models import build_model
from kws.spotter import KeywordSpotter
from kws.streaming.step_model import StreamingSpotter, chunk_plan

LABELS = ["yes", "no", "_unknown_", "_silence_"]
#: tiny models (H = 16) that keep every family's structure
SMALL = {
    "tcn": {"d_model": 16, "n_blocks": 3},
    "lstm": {"d_model": 16, "n_layers": 2},
    "s4": {"d_model": 16, "d_state": 8, "n_layers": 2},
    "s4d": {"d_model": 16, "d_state": 8, "n_layers": 2},
}
FAMILIES = ["tcn", "lstm", "s4", "s4d"]
#: streaming vs clip logits, relative to the logits' scale (float32 over 16,000 steps)
TOL = 1e-4


def make_spotter(family: str, kind: str, seed: int = 0, **overrides) -> KeywordSpotter:
    if family in ("s4", "s4d"):
        pytest.importorskip("kws.models.s4")
    torch.manual_seed(seed)
    cfg = FeatureConfig(kind)
    model = build_model(
        family, cfg.channels, len(LABELS), pipeline=kind, **{**SMALL[family], **overrides}
    )
    return KeywordSpotter(cfg, model, LABELS).eval()


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def speechy(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    """Noise with a loud middle, so that features vary over the clip."""
    g = torch.Generator().manual_seed(seed)
    envelope = torch.exp(-0.5 * ((torch.arange(samples) / samples - 0.5) / 0.15) ** 2)
    return 0.02 * torch.randn(batch, samples, generator=g) * (1 + 10 * envelope)


@pytest.mark.parametrize("kind", ["raw", "mfcc"])
@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_clip_equals_clip_model(family, kind):
    spotter = make_spotter(family, kind)
    stream = StreamingSpotter(spotter, chunk_ms=10)
    wave = speechy(2, 16000)
    with torch.no_grad():
        clip_logits = spotter(wave)
    got = stream.stream_clip(wave)
    assert got.shape == (2, len(LABELS))
    assert rel_err(got, clip_logits) < TOL


def test_chunk_plan_lines_up_mfcc_frames():
    """98 frames per 1-s clip, ending 5 ms off the 10-ms grid; 2 frames start before the stream."""
    cfg = FeatureConfig("mfcc")
    p10 = chunk_plan(cfg, 10, 16000)
    assert (p10["chunk_samples"], p10["frames_per_chunk"], p10["clip_frames"]) == (160, 1, 98)
    assert (p10["window_chunks"], p10["lead_chunks"], p10["delay_samples"]) == (98, 2, 80)
    p20 = chunk_plan(cfg, 20, 16000)
    assert (p20["window_chunks"], p20["lead_chunks"], p20["delay_frames"]) == (49, 1, 0)
    p8k = chunk_plan(cfg.at_rate(8000), 10, 8000)
    assert (p8k["chunk_samples"], p8k["clip_frames"], p8k["delay_samples"]) == (80, 98, 40)
    raw = chunk_plan(FeatureConfig("raw"), 40, 16000)
    assert (raw["chunk_samples"], raw["window_chunks"], raw["lead_chunks"]) == (640, 25, 0)
    assert raw["delay_samples"] == 0


@pytest.mark.parametrize(
    ("chunk_ms", "message"),
    [(40, "does not divide the 98 steps"), (15, "whole number of 10 ms hops"), (10.3, "164.8")],
)
def test_chunks_that_cannot_line_up_are_refused(chunk_ms, message):
    with pytest.raises(ValueError, match=message):
        StreamingSpotter(make_spotter("lstm", "mfcc"), chunk_ms=chunk_ms)


def test_seventy_ms_chunks_use_a_feature_delay_and_still_match():
    """7 frames per chunk: 2 early frames + 5 delayed ones make one skipped chunk."""
    spotter = make_spotter("lstm", "mfcc")
    stream = StreamingSpotter(spotter, chunk_ms=70)
    assert stream.state_names[:3] == ["frontend", "delay", "warmup"]
    assert stream.state_shapes[1] == (None, 5, 20)
    assert (stream.window_chunks, stream.lead_chunks, stream.clip_chunks) == (14, 1, 15)
    wave = speechy(1, 16000)
    with torch.no_grad():
        assert rel_err(stream.stream_clip(wave), spotter(wave)) < TOL


@pytest.mark.parametrize("kind", ["raw", "mfcc"])
def test_states_are_batch_first_zeros_with_documented_shapes(kind):
    stream = StreamingSpotter(make_spotter("lstm", kind), chunk_ms=20)
    states = stream.initial_states(3)
    assert len(states) == len(stream.state_names) == len(stream.state_shapes)
    for state, shape in zip(states, stream.state_shapes, strict=True):
        assert shape[0] is None and state.shape == (3, *shape[1:])
        assert state.dtype == torch.float32 and not state.any()
    # nn.LSTM keeps (layers, B, H); the module shows it batch first.
    window = (None, 50 if kind == "raw" else 49, 16)
    assert stream.state_shapes[-3:] == [(None, 2, 16), (None, 2, 16), window]
    logits, *next_states = stream(torch.zeros(3, stream.chunk_samples), *states)
    assert logits.shape == (3, len(LABELS))
    assert [s.shape for s in next_states] == [s.shape for s in states]


@pytest.mark.parametrize("kind", ["raw", "mfcc"])
def test_window_is_the_mean_of_the_last_clip_of_outputs(kind):
    """Past the first second the window slides: logits = head(mean of the last W frames)."""
    spotter = make_spotter("tcn", kind)
    stream = StreamingSpotter(spotter, chunk_ms=20)
    wave = speechy(1, 24000, seed=3)  # 1.5 s: the ring buffer has wrapped
    logits, _ = stream.run(wave)
    with torch.no_grad():
        outputs = spotter.model.features(spotter.frontend(wave))  # (1, L, H), causal
    k = stream.plan["frames_per_chunk"]
    n_chunks = logits.shape[1]
    for chunks in (n_chunks, stream.clip_chunks - 10):  # wrapped, and still filling
        frames = (chunks - stream.lead_chunks) * k  # frames the model has seen
        window = outputs[:, max(0, frames - stream.window_frames) : frames]
        with torch.no_grad():
            want = spotter.model.classify(window.sum(1) / stream.window_frames)
        assert rel_err(logits[:, chunks - 1], want) < TOL


def test_mfcc_skips_the_frames_before_the_stream():
    """During the lead chunks the model state and the window stay at zero."""
    stream = StreamingSpotter(make_spotter("lstm", "mfcc"), chunk_ms=10)
    states = stream.initial_states(1)
    for _ in range(stream.lead_chunks):
        _, *states = stream(speechy(1, 160), *states)
    named = dict(zip(stream.state_names, states, strict=True))
    assert named["warmup"].item() == stream.lead_chunks
    assert not named["model_0"].any() and not named["window"].any()
    _, *states = stream(speechy(1, 160), *states)
    named = dict(zip(stream.state_names, states, strict=True))
    assert named["model_0"].abs().sum() > 0 and named["window"][:, -1].abs().sum() > 0
    assert named["warmup"].item() == stream.lead_chunks  # saturates, never grows


def test_mfcc_at_8khz_streams_the_same_features():
    spotter = make_spotter("lstm", "mfcc")
    stream = StreamingSpotter(spotter, chunk_ms=10, sample_rate=8000)
    assert (stream.chunk_samples, stream.rate_factor, stream.window_chunks) == (80, 1.0, 98)
    wave = speechy(1, 8000)
    with torch.no_grad():
        assert rel_err(stream.stream_clip(wave), spotter(wave, 8000)) < TOL


def test_raw_s4_at_8khz_bakes_rate_factor_two():
    spotter = make_spotter("s4d", "raw")
    stream = StreamingSpotter(spotter, chunk_ms=10, sample_rate=8000)
    assert (stream.chunk_samples, stream.rate_factor, stream.window_chunks) == (80, 2.0, 100)
    wave = speechy(1, 8000)
    with torch.no_grad():
        want = spotter.model(spotter.frontend(wave), rate_factor=2.0)
        assert rel_err(stream.stream_clip(wave), want) < TOL
        # and it is not the 16 kHz model: dt matters
        assert rel_err(spotter.model(spotter.frontend(wave), rate_factor=1.0), want) > 1e-3


def test_bad_audio_shape_is_named():
    stream = StreamingSpotter(make_spotter("lstm", "raw"), chunk_ms=10)
    with pytest.raises(ValueError, match=r"audio must be \(B, 160\)"):
        stream(torch.zeros(1, 100), *stream.initial_states(1))
    with pytest.raises(ValueError, match="expected 3 states"):
        stream(torch.zeros(1, 160))


def test_mfcc_below_its_band_is_refused():
    with pytest.raises(ValueError, match="Nyquist"):
        StreamingSpotter(make_spotter("lstm", "mfcc"), sample_rate=6000)
