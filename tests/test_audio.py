"""kws.data.audio: every format soundfile writes reads back as clean mono float32."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import tone

from kws.data.audio import (
    AudioError,
    audio_info,
    check_samples,
    fix_length,
    load_audio,
    resample,
    save_audio,
)


def peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * rate / len(audio))


@pytest.mark.parametrize(
    ("ext", "subtype", "tolerance"),
    [
        ("wav", "PCM_U8", 1 / 64),
        ("wav", "PCM_16", 1e-4),
        ("wav", "PCM_24", 1e-6),
        ("wav", "PCM_32", 1e-6),
        ("wav", "FLOAT", 0.0),
        ("wav", "DOUBLE", 1e-7),
        ("flac", "PCM_16", 1e-4),
        ("flac", "PCM_24", 1e-6),
    ],
)
def test_formats_read_back_as_float32(tmp_path, ext, subtype, tolerance):
    clean = tone(440, seconds=0.25)
    path = tmp_path / f"clip.{ext}"
    sf.write(path, clean, 16000, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.shape == clean.shape
    assert np.max(np.abs(audio - clean)) <= tolerance


def test_ogg_vorbis_is_lossy_but_loads(tmp_path):
    path = tmp_path / "clip.ogg"
    sf.write(path, tone(440, seconds=0.5), 16000, format="OGG", subtype="VORBIS")
    audio = load_audio(path, length=8000)
    assert audio.shape == (8000,)
    assert abs(peak_hz(audio, 16000) - 440) < 5


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = tone(440, 0.1, amp=0.6), tone(440, 0.1, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    audio = load_audio(path)
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-7)
    assert audio_info(path) == (1600, 16000, 2)


@pytest.mark.parametrize("file_rate", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled(tmp_path, file_rate):
    path = tmp_path / "clip.wav"
    sf.write(path, tone(1000, seconds=0.5, rate=file_rate), file_rate)
    audio = load_audio(path, sample_rate=16000)
    assert abs(len(audio) - 8000) <= 1
    assert abs(peak_hz(audio, 16000) - 1000) < 5
    kept = load_audio(path, sample_rate=None)
    assert len(kept) == file_rate // 2


def test_length_pads_short_and_crops_long(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, tone(seconds=0.5), 16000)
    padded = load_audio(path, length=16000)
    assert padded.shape == (16000,) and not padded[8000:].any() and padded[:8000].any()
    assert load_audio(path, length=100).shape == (100,)


def test_segment_reads_only_the_cut(tmp_path):
    ramp = np.linspace(-1, 1, 10000, dtype=np.float32)
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, offset=1234, frames=500), ramp[1234:1734])
    # A cut past the end is padded to its length like any short clip.
    tail = load_audio(path, offset=9900, frames=500, length=500)
    np.testing.assert_array_equal(tail[:100], ramp[9900:])
    assert not tail[100:].any()
    with pytest.raises(ValueError, match="offset"):
        load_audio(path, offset=-1)


def test_corrupt_bytes_name_the_file(tmp_path):
    path = tmp_path / "yes" / "garbage.wav"
    path.parent.mkdir()
    path.write_bytes(b"RIFF\x00\x01garbage that is no wave file" * 20)
    with pytest.raises(AudioError, match="not readable as audio") as err:
        load_audio(path)
    assert err.value.path == str(path) and str(path) in str(err.value)
    with pytest.raises(AudioError, match="garbage.wav"):
        audio_info(path)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav: not readable"):
        load_audio(path)


def test_zero_length_audio_is_an_error(tmp_path):
    path = tmp_path / "nothing.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    assert audio_info(path)[0] == 0
    with pytest.raises(AudioError, match="no samples"):
        load_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_samples_are_errors(tmp_path, bad):
    audio = tone(seconds=0.1)
    audio[[10, 20, 30]] = bad
    path = tmp_path / "bad.wav"
    sf.write(path, audio, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="3 samples are NaN or Inf"):
        load_audio(path)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "absent.wav")


def test_check_samples_passes_clean_audio():
    audio = tone(seconds=0.01)
    assert check_samples(audio, "x.wav") is audio


def test_fix_length_works_on_batches():
    batch = np.ones((2, 5), dtype=np.float32)
    assert fix_length(batch, 3).shape == (2, 3)
    padded = fix_length(batch, 7)
    assert padded.shape == (2, 7) and padded[:, 5:].sum() == 0


def test_resample_methods():
    audio = tone(1000, seconds=0.5)
    np.testing.assert_array_equal(resample(audio, 16000, 8000, "decimate"), audio[::2])
    assert resample(audio, 16000, 16000) is audio
    for method in ("soxr", "sinc"):
        out = resample(audio, 16000, 8000, method)
        assert len(out) == 4000 and abs(peak_hz(out, 8000) - 1000) < 5
    batch = np.stack([audio, 0.5 * audio])  # (B, T): each row resampled on its own
    for method in ("soxr", "sinc", "decimate"):
        rows = resample(batch, 16000, 8000, method)
        assert rows.shape == (2, 4000)
        np.testing.assert_allclose(rows[1], resample(0.5 * audio, 16000, 8000, method), atol=1e-6)
    assert len(resample(audio[:1001], 16000, 11025)) == 690  # ceil(1001 * 11025 / 16000)
    with pytest.raises(ValueError, match="integer rate ratio"):
        resample(audio, 16000, 11025, "decimate")
    with pytest.raises(ValueError, match="unknown resampler"):
        resample(audio, 16000, 8000, "linear")


def test_save_audio_follows_the_extension(tmp_path):
    audio = tone(seconds=0.1)
    save_audio(tmp_path / "a.flac", audio, 16000)
    assert sf.info(tmp_path / "a.flac").format == "FLAC"
    np.testing.assert_allclose(load_audio(tmp_path / "a.flac"), audio, atol=1e-4)
