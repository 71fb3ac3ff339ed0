"""Features: config, MFCC numbers (librosa parity, absolute level, rate invariance), streaming."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kws.data.audio import load_audio
from kws.features import FeatureConfig, StreamingFrontend, build_frontend
from kws.features.mfcc import REF_DB, SCALE_DB, MFCCFrontend
from kws.features.raw import RAW_GAIN, RawFrontend

MFCC = FeatureConfig("mfcc")
RAW = FeatureConfig("raw")


def tones(rate: int, seconds: float = 1.0, n: int = 300, f_max: float = 3500.0) -> torch.Tensor:
    """A band-limited test sound defined in continuous time, so it can be sampled at any rate.

    Many random tones (dense enough to fill every mel band) under a slow loudness
    swell, so that frames differ from one another.
    """
    rng = np.random.default_rng(1)
    freqs = rng.uniform(60, f_max, n)
    amps = 0.02 * rng.uniform(0.2, 1.0, n)
    phases = rng.uniform(0, 2 * np.pi, n)
    t = np.arange(round(rate * seconds)) / rate
    swell = 0.3 + np.sin(np.pi * t / seconds)
    wave = swell * (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0)
    return torch.from_numpy(wave.astype(np.float32))[None]


# -- FeatureConfig -------------------------------------------------------------------------


def test_config_sizes_at_16k_8k_and_44k():
    assert (MFCC.channels, MFCC.frame_rate) == (20, 100.0)
    assert (MFCC.win_length, MFCC.hop_length, MFCC.n_fft) == (400, 160, 512)
    low = MFCC.at_rate(8000)
    assert (low.win_length, low.hop_length, low.n_fft, low.frame_rate) == (200, 80, 256, 100.0)
    assert (low.win_ms, low.hop_ms, low.f_min, low.f_max) == (25.0, 10.0, 20.0, 4000.0)
    cd = MFCC.at_rate(44100)
    assert (cd.win_length, cd.hop_length, cd.n_fft) == (1102, 441, 2048)
    assert MFCC.num_frames(16000) == 98 and low.num_frames(8000) == 98
    assert MFCC.num_frames(399) == 0 and MFCC.num_frames(400) == 1


def test_raw_config_steps_are_samples():
    assert (RAW.channels, RAW.frame_rate, RAW.win_length, RAW.hop_length) == (1, 16000.0, 1, 1)
    assert RAW.at_rate(8000).frame_rate == 8000.0
    assert RAW.at_rate(4000).sample_rate == 4000  # raw audio has no band limit to keep


def test_mfcc_refuses_rates_below_twice_f_max():
    with pytest.raises(ValueError, match=r"f_max=4000 Hz is above the Nyquist frequency 3000 Hz"):
        MFCC.at_rate(6000)
    with pytest.raises(ValueError, match="whole number"):
        MFCC.at_rate(8000.5)


def test_config_json_round_trip():
    cfg = FeatureConfig("mfcc", n_mfcc=13, hop_ms=12.5)
    again = FeatureConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert FeatureConfig.from_dict({"kind": "raw", "sample_rate": 8000.0}).sample_rate == 8000


@pytest.mark.parametrize(
    "data, message",
    [
        ({"kind": "mfcc", "n_mfc": 20}, r"unknown feature config key\(s\) \['n_mfc'\]"),
        ({"sample_rate": 16000}, "needs 'kind'"),
        ({"kind": "spectrogram"}, "kind must be one of"),
        ({"kind": "mfcc", "n_mels": 40.5}, "'n_mels' must be a int"),
        ({"kind": "mfcc", "win_ms": "25"}, "'win_ms' must be a float"),
        ({"kind": "mfcc", "n_mfcc": 41}, "n_mfcc <= n_mels"),
        ({"kind": "mfcc", "hop_ms": 30.0}, "hop_ms <= win_ms"),
        ({"kind": "mfcc", "f_min": 5000.0}, "f_min < f_max"),
        ({"kind": "mfcc", "sample_rate": 6000}, "Nyquist"),
        ({"kind": "mfcc", "log_floor": 0.0}, "log_floor must be positive"),
    ],
)
def test_config_rejects_bad_values(data, message):
    with pytest.raises(ValueError, match=message):
        FeatureConfig.from_dict(data)


# -- shapes and input checks ----------------------------------------------------------------


def test_frontend_shapes_and_kinds():
    wave = 0.1 * torch.randn(3, 16000)
    raw = build_frontend(RAW)
    assert isinstance(raw, RawFrontend)
    torch.testing.assert_close(raw(wave), RAW_GAIN * wave[..., None])
    mfcc = build_frontend(MFCC)
    assert isinstance(mfcc, MFCCFrontend)
    assert mfcc(wave).shape == (3, 98, 20)
    assert mfcc(wave[:, ::2], 8000).shape == (3, 98, 20)
    # The tables are rebuilt from the config, so checkpoints never carry them.
    assert mfcc.state_dict() == {} and raw.state_dict() == {}


def test_frontend_rejects_bad_waves():
    mfcc = build_frontend(MFCC)
    with pytest.raises(ValueError, match=r"wave must be a float tensor of shape \(B, T\)"):
        mfcc(torch.zeros(16000))
    with pytest.raises(ValueError, match="wave must be a float tensor"):
        mfcc(torch.zeros(1, 16000, dtype=torch.int16))
    with pytest.raises(ValueError, match="wave has 399 samples; mfcc features need at least 400"):
        mfcc(torch.zeros(1, 399))
    with pytest.raises(ValueError, match="Nyquist"):
        mfcc(torch.zeros(1, 6000), 6000)
    with pytest.raises(TypeError, match="chunk must be a torch.Tensor"):
        mfcc.step(np.zeros((1, 160), np.float32), mfcc.initial_state(1))


# -- MFCC numbers ---------------------------------------------------------------------------


def librosa_mfcc_db(wave: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Our MFCC (before the affine map) computed by librosa, in float64: (L, n_mfcc).

    Three things make librosa compute our frames: it centres a short window in
    its n_fft frame, so we pad (n_fft - win) // 2 zeros on the left (and the rest
    on the right); our power scale 1 / (n_fft * sum(w^2)) goes in as sqrt(scale)
    on the samples; and top_db=None so that no frame is clipped relative to the
    loudest one.
    """
    import librosa

    win, n_fft = cfg.win_length, cfg.n_fft
    window = np.hanning(win + 1)[:-1]  # periodic Hann, as librosa's "hann"
    scale = 1.0 / (n_fft * np.sum(window**2))
    left = (n_fft - win) // 2
    padded = np.pad(wave.astype(np.float64) * np.sqrt(scale), (left, n_fft - win - left))
    mel = librosa.feature.melspectrogram(
        y=padded, sr=cfg.sample_rate, n_fft=n_fft, hop_length=cfg.hop_length,
        win_length=win, window="hann", center=False, power=2.0, n_mels=cfg.n_mels,
        fmin=cfg.f_min, fmax=cfg.f_max, htk=False, norm="slaney",
    )
    log_mel = librosa.power_to_db(mel, ref=1.0, amin=cfg.log_floor, top_db=None)
    return librosa.feature.mfcc(
        S=log_mel, n_mfcc=cfg.n_mfcc, dct_type=2, norm="ortho", lifter=0
    ).T


def assert_librosa_parity(wave: np.ndarray, cfg: FeatureConfig) -> None:
    ours = build_frontend(MFCC).mfcc_db(torch.from_numpy(wave)[None], cfg.sample_rate)[0]
    ref = librosa_mfcc_db(wave, cfg)
    assert ours.shape == ref.shape
    # float32 against float64: measured max 3.3e-4 dB on c0 (about -600 dB), 1e-3 stated.
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_mfcc_matches_librosa_on_synthetic_audio(rate):
    rng = np.random.default_rng(0)
    t = np.arange(rate) / rate
    wave = 0.05 * rng.standard_normal(rate) + 0.3 * np.sin(2 * np.pi * 440 * t)
    wave[rate // 2 : rate // 2 + 2000] = 0.0  # digital silence hits the log floor
    assert_librosa_parity(wave.astype(np.float32), MFCC.at_rate(rate))


def test_mfcc_matches_librosa_on_real_speech(dev_root):
    paths = sorted((dev_root / "yes").glob("*.wav"))[:3]
    assert len(paths) == 3, f"{dev_root / 'yes'}: fewer than 3 WAV clips"
    for path in paths:
        assert_librosa_parity(load_audio(path), MFCC)


def test_log_mel_is_two_sided_power_density_of_white_noise():
    """White noise of variance s^2 at rate r has density s^2 / r in every band: the dB scale."""
    mfcc = build_frontend(MFCC)
    gen = torch.Generator().manual_seed(0)
    for rate in (16000, 8000):
        noise = 0.1 * torch.randn(1, 4 * rate, generator=gen)
        energy = (10 ** (mfcc.log_mel(noise, rate)[0] / 10)).mean(0)
        level = 10 * torch.log10(energy)
        expected = 10 * math.log10(0.1**2 / rate)
        assert level.shape == (40,)
        assert (level - expected).abs().max() < 1.0, (level - expected).abs().max()


def test_same_sound_gives_same_mfcc_at_8k_and_16k():
    mfcc = build_frontend(MFCC)
    at16 = mfcc.mfcc_db(tones(16000))
    at8 = mfcc.mfcc_db(tones(8000), 8000)
    assert at16.shape == at8.shape == (1, 98, 20)
    # Measured max 0.05 dB (c0 spans about 150 dB over the clip).
    assert (at16 - at8).abs().max() < 0.1
    assert at16[0, :, 0].max() - at16[0, :, 0].min() > 50  # the swell is there to be matched
    torch.testing.assert_close(mfcc(tones(8000), 8000), mfcc(tones(16000)), atol=0.005, rtol=0)


def test_bin_width_scaling_makes_48k_agree_too():
    """At 48 kHz n_fft / sr differs from 16 kHz; a density-only scale would move c0 by 7.9 dB."""
    mfcc = build_frontend(MFCC)
    at16 = mfcc.mfcc_db(tones(16000))
    at48 = mfcc.mfcc_db(tones(48000), 48000)
    assert at48.shape == at16.shape
    # Measured max 0.8 dB (the bins sample the narrow mel triangles on another grid).
    assert (at48 - at16).abs().max() < 1.5
    assert (at48 - at16)[..., 0].mean().abs() < 0.2


def test_normalisation_is_the_documented_affine_map():
    mfcc = build_frontend(MFCC)
    wave = tones(16000)
    log_mel = mfcc.log_mel(wave)
    expected = ((log_mel - REF_DB) / SCALE_DB) @ mfcc.dct
    torch.testing.assert_close(mfcc(wave), expected)
    silent = mfcc(torch.zeros(1, 16000))  # digital silence: every band at the floor
    floor_db = 10 * math.log10(MFCC.log_floor)
    assert silent[0, :, 0].allclose(torch.tensor((floor_db - REF_DB) / SCALE_DB * math.sqrt(40)))
    assert silent[0, :, 1:].abs().max() < 1e-4


def test_speech_features_are_order_one(dev_root):
    paths = sorted(dev_root.glob("[a-z]*/*.wav"))[::60]
    waves = torch.from_numpy(np.stack([load_audio(p, length=16000) for p in paths]))
    feats = build_frontend(MFCC)(waves)
    spread = feats.std(dim=(0, 1))
    assert feats[..., 0].mean().abs() < 3 and spread[0] < 10
    assert ((spread[1:] > 0.1) & (spread[1:] < 3)).all(), spread


# -- streaming ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 100, 159, 160, 161, 1000, 1601, 16000])
def test_streaming_any_chunk_equals_whole_clip(chunk):
    mfcc = build_frontend(MFCC)
    wave = tones(16000)
    stream = StreamingFrontend(mfcc)
    parts = [stream.push(wave[:, i : i + chunk]) for i in range(0, wave.shape[1], chunk)]
    torch.testing.assert_close(torch.cat(parts, dim=1), mfcc(wave), atol=1e-5, rtol=0)
    if chunk < 160:
        assert min(p.shape[1] for p in parts) == 0  # most chunks finish no frame


def test_streaming_at_8k_equals_whole_clip():
    mfcc = build_frontend(MFCC)
    wave = tones(8000)
    stream = StreamingFrontend(mfcc, sample_rate=8000)
    parts = [stream.push(wave[0, i : i + 333]) for i in range(0, 8000, 333)]
    torch.testing.assert_close(torch.cat(parts, dim=1), mfcc(wave, 8000), atol=1e-5, rtol=0)


def test_fixed_chunk_step_keeps_state_size_and_ends_frames_at_chunk_edges():
    mfcc = build_frontend(MFCC)
    wave = torch.cat([tones(16000), 0.5 * tones(16000)])  # batch of 2
    state = mfcc.initial_state(2)
    assert state.shape == (2, 240)
    outs = []
    for start in range(0, 16000, 1600):
        features, state = mfcc.step(wave[:, start : start + 1600], state)
        assert features.shape == (2, 10, 20) and state.shape == (2, 240)
        outs.append(features)
    # The zero state is silence before the stream: frame i ends at sample (i + 1) * hop.
    preceded = torch.cat([torch.zeros(2, 240), wave], dim=1)
    torch.testing.assert_close(torch.cat(outs, 1), mfcc(preceded), atol=1e-5, rtol=0)
    stream = StreamingFrontend(mfcc, batch=2, preroll=True)
    torch.testing.assert_close(stream.push(wave), mfcc(preceded), atol=1e-5, rtol=0)


def test_raw_streaming_is_stateless():
    raw = build_frontend(RAW)
    state = raw.initial_state(2)
    assert state.shape == (2, 0)
    chunk = torch.randn(2, 37)
    features, state = raw.step(chunk, state)
    torch.testing.assert_close(features, RAW_GAIN * chunk[..., None])
    assert state.shape == (2, 0)


def test_fixed_chunk_step_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    mfcc = build_frontend(MFCC).eval()

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.frontend = mfcc

        def forward(self, chunk, state):
            return self.frontend.step(chunk, state)

    chunk, state = 0.3 * torch.randn(1, 1600), mfcc.initial_state(1)
    path = tmp_path / "frontend_step.onnx"
    torch.onnx.export(Step().eval(), (chunk, state), str(path), input_names=["chunk", "state"],
                      output_names=["features", "new_state"], dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    features, new_state = session.run(None, {"chunk": chunk.numpy(), "state": state.numpy()})
    expected_features, expected_state = mfcc.step(chunk, state)
    np.testing.assert_allclose(features, expected_features.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(new_state, expected_state.numpy())
