"""Augmenter: deterministic in (seed, epoch, index), and each step does what it says."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import tone

from kws.data.audio import AudioError
from kws.data.augment import Augmenter, mix_at_snr, time_shift
from kws.data.speech_commands import ClipDataset, SpeechCommands

RATE = 16000


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    added = noisy.astype(np.float64) - clean
    return float(10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(added**2)))


@pytest.fixture
def noise(rng) -> list[np.ndarray]:
    return [rng.normal(0, 0.1, 3 * RATE).astype(np.float32),
            rng.uniform(-0.3, 0.3, 2 * RATE).astype(np.float32)]


def test_same_seed_same_output_different_seed_epoch_index_differ(noise):
    clip = tone(440)
    aug = Augmenter(noise, seed=7, speed=(0.9, 1.1))
    first = aug(clip, 3)
    np.testing.assert_array_equal(Augmenter(noise, seed=7, speed=(0.9, 1.1))(clip, 3), first)
    assert not np.array_equal(Augmenter(noise, seed=8, speed=(0.9, 1.1))(clip, 3), first)
    assert not np.array_equal(aug(clip, 4), first)
    aug.set_epoch(1)
    assert not np.array_equal(aug(clip, 3), first)
    aug.set_epoch(0)
    np.testing.assert_array_equal(aug(clip, 3), first)  # no hidden state carried over
    assert first.dtype == np.float32 and first.shape == clip.shape


def test_snr_is_what_was_asked(noise):
    clip = tone(440, amp=0.3)
    fixed = Augmenter(noise, shift_ms=0, noise_prob=1.0, snr_db=(12.0, 12.0))
    for index in range(5):
        assert snr_db(clip, fixed(clip, index)) == pytest.approx(12.0, abs=1e-3)
    drawn = Augmenter(noise, shift_ms=0, noise_prob=1.0, snr_db=(0.0, 20.0))
    asked = []
    for index in range(20):
        draw = drawn.draw(index, len(clip))
        asked.append(draw.snr_db)
        assert snr_db(clip, drawn.apply(clip, draw)) == pytest.approx(draw.snr_db, abs=1e-3)
    assert 0 <= min(asked) < 5 and 15 < max(asked) <= 20


def test_noise_probability(noise):
    clip = tone(440)
    mixed = sum(Augmenter(noise, noise_prob=0.5).draw(i, RATE).noise_index is not None
                for i in range(400))
    assert 160 < mixed < 240
    never = Augmenter(noise, noise_prob=0.0, shift_ms=0)
    assert all(np.array_equal(never(clip, i), clip) for i in range(10))
    without_noise = Augmenter((), noise_prob=1.0, shift_ms=0)
    assert np.array_equal(without_noise(clip, 0), clip)


def test_time_shift_is_within_range_and_zero_filled():
    clip = tone(440) + 0.1
    aug = Augmenter(shift_ms=100)
    shifts = []
    for index in range(200):
        draw = aug.draw(index, RATE)
        shifts.append(draw.shift)
        out = aug.apply(clip, draw)
        np.testing.assert_array_equal(out, time_shift(clip, draw.shift))
    assert max(map(abs, shifts)) <= 1600 and min(shifts) < -1000 and max(shifts) > 1000
    delayed = time_shift(clip, 100)
    assert not delayed[:100].any() and np.array_equal(delayed[100:], clip[:-100])
    advanced = time_shift(clip, -100)
    assert not advanced[-100:].any() and np.array_equal(advanced[:-100], clip[100:])
    assert not time_shift(clip[:50], 80).any()


def test_speed_perturbation_scales_pitch_and_keeps_length():
    clip = tone(400)
    faster = Augmenter(shift_ms=0, speed=(1.1, 1.1))(clip, 0)
    assert faster.shape == clip.shape
    spectrum = np.abs(np.fft.rfft(faster[:14000] * np.hanning(14000)))
    assert np.argmax(spectrum) * RATE / 14000 == pytest.approx(440, abs=3)
    assert not faster[-1000:].any()  # a faster clip is shorter: padded back with zeros


def test_draws_do_not_depend_on_other_steps(noise):
    """Switching speed on leaves the shift and noise choices of every index as they were."""
    plain, fast = Augmenter(noise), Augmenter(noise, speed=(0.9, 1.1))
    for index in range(10):
        a, b = plain.draw(index, RATE), fast.draw(index, RATE)
        assert (a.shift, a.noise_index, a.noise_offset, a.snr_db) == (
            b.shift, b.noise_index, b.noise_offset, b.snr_db
        )


def test_silent_clip_gets_no_noise(noise):
    silent = np.zeros(RATE, dtype=np.float32)
    assert not Augmenter(noise, noise_prob=1.0)(silent, 0).any()
    np.testing.assert_array_equal(mix_at_snr(tone(), np.zeros(RATE), 10.0), tone())


def test_short_noise_is_looped(noise):
    short = [noise[0][:1000]]
    out = Augmenter(short, shift_ms=0, noise_prob=1.0, snr_db=(6.0, 6.0))(tone(), 0)
    assert snr_db(tone(), out) == pytest.approx(6.0, abs=1e-3)


def test_bad_settings():
    with pytest.raises(ValueError, match="noise_prob"):
        Augmenter(noise_prob=1.5)
    with pytest.raises(ValueError, match="snr_db"):
        Augmenter(snr_db=(10, 0))
    with pytest.raises(ValueError, match="speed"):
        Augmenter(speed=(0.0, 1.1))
    with pytest.raises(ValueError, match="epoch"):
        Augmenter().set_epoch(-1)


def test_dataset_with_noise_from_the_train_region(tmp_path):
    """End to end: train-region noise from _background_noise_, through ClipDataset."""
    root = tmp_path / "sc"
    for word in ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"):
        (root / word).mkdir(parents=True)
        sf.write(root / word / "0cb74144_nohash_0.wav", tone(500), RATE)
    (root / "_background_noise_").mkdir()
    sf.write(root / "_background_noise_" / "hum.wav", tone(60, seconds=10.0), RATE)
    data = SpeechCommands(root, "sc10")
    noise = data.load_noise("train")
    assert [len(n) for n in noise] == [8 * RATE]
    aug = Augmenter(noise, seed=1, noise_prob=1.0)
    dataset = ClipDataset(data.clips(), augment=aug)
    first = dataset[0][0].clone()
    assert np.array_equal(dataset[0][0].numpy(), first.numpy())
    assert not np.array_equal(first.numpy(), ClipDataset(data.clips())[0][0].numpy())
    dataset.set_epoch(1)
    assert not np.array_equal(dataset[0][0].numpy(), first.numpy())


def band_energy(audio: np.ndarray, low_hz: float, high_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / RATE)
    return float(spectrum[(freqs >= low_hz) & (freqs < high_hz)].sum())


def test_low_rate_removes_the_band_above_its_nyquist_and_keeps_the_rest():
    clip = tone(1000, amp=0.3) + tone(6000, amp=0.3)
    aug = Augmenter(shift_ms=0, noise_prob=0.0, low_rate_prob=1.0, low_rate=(8000, 8000))
    draw = aug.draw(0, len(clip))
    assert draw.low_rate == 8000
    out = aug.apply(clip, draw)
    assert out.shape == clip.shape and out.dtype == np.float32
    # 6 kHz is above 8 kHz's Nyquist: gone (less than 0.1% left); 1 kHz passes within 1%
    assert band_energy(out, 5500, 6500) < 1e-3 * band_energy(clip, 5500, 6500)
    assert band_energy(out, 500, 1500) == pytest.approx(band_energy(clip, 500, 1500), rel=0.01)


def test_low_rate_probability_and_range_leave_the_other_draws_alone(noise):
    plain = Augmenter(noise, speed=(0.9, 1.1))
    limited = Augmenter(noise, speed=(0.9, 1.1), low_rate_prob=0.5, low_rate=(8000, 12000))
    rates = []
    for index in range(400):
        before, after = plain.draw(index, RATE), limited.draw(index, RATE)
        assert before.low_rate is None
        # the band limit has draws of its own: switching it on changes no other choice
        assert (after.speed, after.shift, after.noise_index, after.snr_db) == (
            before.speed, before.shift, before.noise_index, before.snr_db)
        if after.low_rate is not None:
            rates.append(after.low_rate)
    assert 160 < len(rates) < 240
    assert 8000 <= min(rates) < 8500 and 11500 < max(rates) <= 12000


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"low_rate_prob": 1.5}, r"low_rate_prob must be in \[0, 1\]"),
    ({"low_rate": (8000, 22050)}, r"low_rate must be .* <= the sample rate 16000"),
    ({"low_rate": (12000, 8000)}, r"low_rate must be \(low, high\)"),
])
def test_low_rate_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Augmenter(**kwargs)


def test_low_rate_defaults_to_half_the_sample_rate_and_up():
    assert Augmenter().low_rate == (8000, 16000)
    assert Augmenter(sample_rate=8000).low_rate == (4000, 8000)


# -- preceding context --------------------------------------------------------------------


def context_augmenter(noise=(), **kwargs) -> Augmenter:
    settings = {"shift_ms": 0.0, "noise_prob": 0.0, "context_s": 0.5, "context_word_prob": 1.0,
                "context_gap_s": (0.1, 0.1), "context_gain_db": (-6.0, -6.0)}
    return Augmenter(noise, **{**settings, **kwargs})


def test_context_is_silence_then_the_other_word_ending_a_gap_before_the_clip():
    aug, clip, word = context_augmenter(), tone(440, amp=0.3), tone(300, amp=0.5)
    draw = aug.draw(0, RATE)
    assert aug.context == RATE // 2 and draw.context_gap == RATE // 10
    before = aug.preceding(draw, word)
    gap, kept = RATE // 10, RATE // 2 - RATE // 10  # the word's last 0.4 s fit
    assert before.shape == (RATE // 2,) and not before[-gap:].any()
    np.testing.assert_allclose(before[:kept], word[-kept:] * 10 ** (-6 / 20), rtol=1e-6)
    out = aug.apply(clip, draw, before)
    assert out.dtype == np.float32 and out.shape == (RATE + RATE // 2,)
    np.testing.assert_array_equal(out[: RATE // 2], before)
    np.testing.assert_array_equal(out[RATE // 2 :], clip)  # no noise asked: the clip as it was
    assert not aug.preceding(draw, None).any()  # no word loaded: silence


def test_context_noise_runs_through_at_the_clip_snr(noise):
    aug = context_augmenter(noise, noise_prob=1.0, snr_db=(12.0, 12.0), context_word_prob=0.0)
    clip = tone(440, amp=0.3)
    for index in range(5):
        draw = aug.draw(index, RATE)
        assert draw.context_word is None
        out = aug.apply(clip, draw, aug.preceding(draw, tone(300)))
        assert snr_db(clip, out[RATE // 2 :]) == pytest.approx(12.0, abs=1e-3)
        added = out.astype(np.float64) - np.concatenate([np.zeros(RATE // 2), clip])
        # one stretch of one recording, at one level, across the boundary
        recording = noise[draw.noise_index]
        stretch = np.take(recording, np.arange(draw.noise_offset,
                                               draw.noise_offset + len(out)), mode="wrap")
        tail = stretch[RATE // 2 :]
        gain = added[RATE // 2 :] @ tail / (tail @ tail)
        np.testing.assert_allclose(added, gain * stretch, atol=1e-6)


def test_context_draws_leave_the_other_draws_alone(noise):
    plain = Augmenter(noise, speed=(0.9, 1.1), low_rate_prob=0.5)
    context = Augmenter(noise, speed=(0.9, 1.1), low_rate_prob=0.5, context_s=1.0,
                        context_word_prob=0.5)
    words, gaps = 0, []
    for index in range(400):
        before, after = plain.draw(index, RATE), context.draw(index, RATE)
        assert before.context_word is None
        assert (after.speed, after.shift, after.noise_index, after.noise_offset, after.snr_db,
                after.low_rate) == (before.speed, before.shift, before.noise_index,
                                    before.noise_offset, before.snr_db, before.low_rate)
        words += after.context_word is not None
        gaps.append(after.context_gap)
    assert 160 < words < 240
    assert 0 <= min(gaps) < 0.05 * RATE and 0.45 * RATE < max(gaps) <= 0.5 * RATE


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"context_s": -1.0}, r"context_s must be >= 0"),
    ({"context_word_prob": 2.0}, r"context_word_prob must be in \[0, 1\]"),
    ({"context_gap_s": (0.5, 0.1)}, r"context_gap_s must be \(low, high\)"),
    ({"context_gain_db": (6.0, -6.0)}, r"context_gain_db must be \(low, high\)"),
])
def test_context_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Augmenter(**kwargs)


def test_dataset_puts_another_clip_before_each_clip(tmp_path):
    root = tmp_path / "sc"
    words = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
    for k, word in enumerate(words):
        (root / word).mkdir(parents=True)
        sf.write(root / word / "0cb74144_nohash_0.wav", tone(300 + 100 * k), RATE)
    clips = SpeechCommands(root, "sc10").clips()
    aug = context_augmenter(context_gap_s=(0.0, 0.0), context_gain_db=(0.0, 0.0))
    dataset = ClipDataset(clips, augment=aug)
    plain = ClipDataset(clips)
    for index in range(len(clips)):
        wave, label = dataset[index]
        assert wave.shape == (RATE + RATE // 2,) and label == clips[index].label_index
        np.testing.assert_array_equal(wave[RATE // 2 :].numpy(), plain[index][0].numpy())
        draw = aug.draw(index, RATE)
        other = plain[min(int(draw.context_word * len(clips)), len(clips) - 1)][0].numpy()
        np.testing.assert_allclose(wave[: RATE // 2].numpy(), other[-RATE // 2 :], atol=1e-7)
    np.testing.assert_array_equal(dataset[3][0].numpy(), dataset[3][0].numpy())


def test_dataset_context_word_that_fails_to_load(tmp_path):
    root = tmp_path / "sc"
    for word in ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"):
        (root / word).mkdir(parents=True)
        sf.write(root / word / "0cb74144_nohash_0.wav", tone(500), RATE)
    broken = root / "no" / "0cb74144_nohash_0.wav"
    broken.write_bytes(b"not audio")
    every = SpeechCommands(root, "sc10").clips()
    clips = [c for c in every if c.path == broken] + [c for c in every if "yes" in c.path.parts]
    aug = context_augmenter()
    # an epoch whose draw for the good clip (index 1) names the broken one as its word
    epoch = next(e for e in range(100) if aug.set_epoch(e) or aug.draw(1, RATE).context_word < 0.5)
    with pytest.raises(AudioError, match="0cb74144_nohash_0.wav"):
        ClipDataset(clips, augment=aug).with_context(tone(500), 1)
    skipping = ClipDataset(clips, augment=aug, on_error="skip")
    skipping.set_epoch(epoch)
    wave, label = skipping[1]
    assert label == clips[1].label_index and not wave[: RATE // 2].any()  # no word, no noise
    assert list(skipping.bad) == [str(broken)]
