"""Training augmentation: speed change, band limit, time shift, background noise, context.

Every random choice comes from a generator seeded with (seed, epoch, index), so an
example is augmented the same way in any DataLoader worker, on any run, and
differently from one epoch to the next. ``draw`` makes the choices and ``apply``
carries them out, so a test (or a debugging session) can see what was chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kws.data.audio import fix_length, resample


@dataclass(frozen=True)
class AugmentDraw:
    """The random choices for one example."""

    speed: float | None  #: >1 plays faster (shorter); None: unchanged
    shift: int  #: samples; >0 delays the clip, <0 advances it, zeros fill the gap
    noise_index: int | None  #: which noise recording is mixed in; None: no noise
    noise_offset: int  #: first sample of the noise segment
    snr_db: float  #: signal-to-noise ratio of the mix
    low_rate: int | None = None  #: Hz the clip passes through (band limit); None: unchanged
    #: which clip of the dataset is the preceding word, as a fraction of its length; None: none
    context_word: float | None = None
    context_gap: int = 0  #: samples between the preceding word's end and the clip's start
    context_gain_db: float = 0.0  #: the preceding word's level change


class Augmenter:
    """``augmenter(audio, index)`` -> augmented copy of the same length.

    Steps, in order: speed perturbation (resample by a factor in ``speed``, then
    pad or crop back; off when None), with probability ``low_rate_prob`` a band
    limit (the clip goes down to a rate drawn from ``low_rate``, by default half the
    sample rate to all of it, and back up, as a recording made at that rate and
    upsampled would), a time shift of up to
    ``shift_ms`` either way, and, with probability ``noise_prob``, a random segment
    of one of the ``noise`` recordings scaled to a random SNR in ``snr_db``. SNR is
    signal power over added-noise power, both measured on the clip; an all-zero clip
    gets no noise, as it has no level to be relative to.

    Why the band limit: a raw-audio model trained on 16 kHz clips learns to use what
    lies between 4 and 8 kHz, which 8 kHz audio does not have, so its zero-shot
    accuracy there is capped below its 16 kHz one whatever dt does (``kws eval
    --reference`` measures that cap). Clips that sometimes lack the top band teach it
    not to depend on it. It is still trained at 16 kHz only; MFCC models, whose
    bands end at 4 kHz, gain nothing from it.

    Why preceding context (``context_s`` > 0): the streaming detector reads a state
    copy that has heard between one and two windows of audio since its reset, but a
    clip starts from the zero state, so a stream shows the model states it never saw
    in training. With context on, ``preceding`` builds ``context_s`` seconds of what
    comes before the clip on a stream -- silence and, with probability
    ``context_word_prob``, another word (the caller loads it) ending ``context_gap_s``
    before the clip -- and ``apply(audio, draw, before)`` returns it in front of the
    clip, with the noise running through both at the clip's SNR. The training step
    crops a random part of it and pools over the clip alone (``kws.training.module``).
    """

    def __init__(
        self,
        noise: Sequence[np.ndarray] = (),
        sample_rate: int = 16000,
        seed: int = 0,
        shift_ms: float = 100.0,
        noise_prob: float = 0.8,
        snr_db: tuple[float, float] = (0.0, 20.0),
        speed: tuple[float, float] | None = None,
        low_rate_prob: float = 0.0,
        low_rate: tuple[int, int] | None = None,
        context_s: float = 0.0,
        context_word_prob: float = 0.5,
        context_gap_s: tuple[float, float] = (0.0, 0.5),
        context_gain_db: tuple[float, float] = (-6.0, 6.0),
    ):
        if not 0.0 <= noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {noise_prob}")
        if snr_db[0] > snr_db[1]:
            raise ValueError(f"snr_db must be (low, high) with low <= high, got {snr_db}")
        if speed is not None and not 0.0 < speed[0] <= speed[1]:
            raise ValueError(f"speed must be (low, high) with 0 < low <= high, got {speed}")
        if low_rate is None:  # down to half the rate: at 16 kHz, 8-16 kHz
            low_rate = (sample_rate // 2, sample_rate)
        if not 0.0 <= low_rate_prob <= 1.0:
            raise ValueError(f"low_rate_prob must be in [0, 1], got {low_rate_prob}")
        if not 0 < low_rate[0] <= low_rate[1] <= sample_rate:
            raise ValueError(
                f"low_rate must be (low, high) Hz with 0 < low <= high <= the sample rate "
                f"{sample_rate}, got {low_rate}"
            )
        if shift_ms < 0:
            raise ValueError(f"shift_ms must be >= 0, got {shift_ms}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if context_s < 0:
            raise ValueError(f"context_s must be >= 0, got {context_s}")
        if not 0.0 <= context_word_prob <= 1.0:
            raise ValueError(f"context_word_prob must be in [0, 1], got {context_word_prob}")
        if not 0.0 <= context_gap_s[0] <= context_gap_s[1]:
            raise ValueError(
                f"context_gap_s must be (low, high) with 0 <= low <= high, got {context_gap_s}"
            )
        if context_gain_db[0] > context_gain_db[1]:
            raise ValueError(
                f"context_gain_db must be (low, high) with low <= high, got {context_gain_db}"
            )
        self.noise = [np.asarray(n, dtype=np.float32) for n in noise if len(n)]
        self.sample_rate, self.seed, self.epoch = sample_rate, seed, 0
        self.max_shift = round(shift_ms * sample_rate / 1000)
        self.noise_prob, self.snr_db, self.speed = noise_prob, snr_db, speed
        self.low_rate_prob, self.low_rate = low_rate_prob, (int(low_rate[0]), int(low_rate[1]))
        #: samples of preceding context that ``preceding`` builds (0: off)
        self.context = round(context_s * sample_rate)
        self.context_word_prob = context_word_prob
        self.context_gap_s, self.context_gain_db = context_gap_s, context_gain_db

    def set_epoch(self, epoch: int) -> None:
        """New draws for every epoch; call before the epoch's DataLoader workers start."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def draw(self, index: int, length: int) -> AugmentDraw:
        """The choices for example ``index`` of ``length`` samples at the current epoch.

        Every number is drawn whether or not its step is on, so switching one step
        off leaves the others' choices unchanged.
        """
        # Draws 0-7 are the same as before draws 8-11 existed: old recipes augment as they did.
        u = np.random.default_rng([self.seed, self.epoch, index]).uniform(size=12)
        speed = None
        if self.speed is not None:
            speed = float(self.speed[0] + u[0] * (self.speed[1] - self.speed[0]))
        shift = int(np.floor(u[1] * (2 * self.max_shift + 1))) - self.max_shift
        noise_index = noise_offset = 0
        if self.noise:
            noise_index = min(int(u[3] * len(self.noise)), len(self.noise) - 1)
            noise_offset = int(u[4] * max(len(self.noise[noise_index]) - length + 1, 1))
        use_noise = bool(self.noise) and u[2] < self.noise_prob
        snr_db = float(self.snr_db[0] + u[5] * (self.snr_db[1] - self.snr_db[0]))
        low, high = self.low_rate
        low_rate = None
        if u[6] < self.low_rate_prob:
            low_rate = int(round(low + u[7] * (high - low)))
        if low_rate == self.sample_rate:
            low_rate = None
        gap_low, gap_high = self.context_gap_s
        gain_low, gain_high = self.context_gain_db
        return AugmentDraw(
            speed, shift, noise_index if use_noise else None, noise_offset, snr_db, low_rate,
            context_word=float(u[9]) if self.context and u[8] < self.context_word_prob else None,
            context_gap=round((gap_low + u[10] * (gap_high - gap_low)) * self.sample_rate),
            context_gain_db=float(gain_low + u[11] * (gain_high - gain_low)),
        )

    def preceding(self, draw: AugmentDraw, word: np.ndarray | None) -> np.ndarray:
        """The ``context`` samples before the clip: silence, and ``word`` if the draw has one.

        The word (another clip, loaded by the caller) is scaled by the draw's gain and
        ends ``context_gap`` samples before the clip; what does not fit is cut at the front.
        """
        before = np.zeros(self.context, dtype=np.float32)
        if word is None or draw.context_word is None:
            return before
        end = max(self.context - draw.context_gap, 0)
        take = min(len(word), end)
        if take:
            gain = np.float32(10.0 ** (draw.context_gain_db / 20.0))
            before[end - take : end] = np.asarray(word[len(word) - take :], np.float32) * gain
        return before

    def apply(
        self, audio: np.ndarray, draw: AugmentDraw, before: np.ndarray | None = None
    ) -> np.ndarray:
        """Carry out ``draw`` on a 1-D clip; the result has the clip's length.

        With ``before`` (from ``preceding``) the result is ``before`` then the clip, and
        the noise runs through both at the level that gives the clip its SNR.
        """
        length = audio.shape[-1]
        out = np.asarray(audio, dtype=np.float32)
        if draw.speed is not None and draw.speed != 1.0:
            # Played ``speed`` times faster: treat the clip as recorded at rate * speed.
            out = fix_length(resample(out, round(self.sample_rate * draw.speed),
                                      self.sample_rate), length)
        if draw.low_rate is not None:
            down = resample(out, self.sample_rate, draw.low_rate)
            out = fix_length(resample(down, draw.low_rate, self.sample_rate), length)
        out = time_shift(out, draw.shift)
        if before is not None:
            total = len(before) + length
            full = np.concatenate([np.asarray(before, np.float32), out])
            if draw.noise_index is not None:
                noise = self.noise_segment(draw, total)
                full = full + np.float64(noise_gain(out, noise[-length:], draw.snr_db)) * noise
            return full.astype(np.float32, copy=False)
        if draw.noise_index is not None:
            out = mix_at_snr(out, self.noise_segment(draw, length), draw.snr_db)
        return out.astype(np.float32, copy=False)

    def noise_segment(self, draw: AugmentDraw, length: int) -> np.ndarray:
        """``length`` samples of the drawn recording from its offset, looped where it ends."""
        noise = self.noise[draw.noise_index]
        return np.take(noise, np.arange(draw.noise_offset, draw.noise_offset + length), mode="wrap")

    def __call__(self, audio: np.ndarray, index: int) -> np.ndarray:
        return self.apply(audio, self.draw(index, audio.shape[-1]))


def time_shift(audio: np.ndarray, samples: int) -> np.ndarray:
    """Delay (samples > 0) or advance (< 0) a clip, filling with zeros; same length."""
    out = np.zeros_like(audio)
    if abs(samples) >= len(audio):
        return out
    if samples > 0:
        out[samples:] = audio[: len(audio) - samples]
    elif samples < 0:
        out[:samples] = audio[-samples:]
    else:
        out[:] = audio
    return out


def noise_gain(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> float:
    """The factor that gives power(signal) / power(factor * noise) = ``snr_db`` (0: no level)."""
    signal_power = float(np.mean(np.square(signal, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if signal_power == 0.0 or noise_power == 0.0:
        return 0.0
    return float(np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0))))


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal`` + ``noise`` scaled so that power(signal) / power(scaled noise) is ``snr_db``."""
    gain = noise_gain(signal, noise, snr_db)
    if gain == 0.0:
        return signal
    return (signal + np.float64(gain) * noise).astype(np.float32)
