"""Audio file I/O: one place that turns any file soundfile reads into clean mono float32.

Every failure names the file and the problem, because a data set of 100k clips
with one bad file should tell you which one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def resample(
    audio: np.ndarray, orig_rate: int, target_rate: int, method: str = "soxr"
) -> np.ndarray:
    """Resample along the last axis; ``method`` is 'soxr' or 'sinc' (band-limited) or 'decimate'.

    'decimate' keeps every k-th sample with no anti-aliasing filter: that is what the
    S4 reference code does for its zero-shot 8 kHz test, so we offer it to reproduce it.
    'soxr' (high quality) and 'sinc' (polyphase FIR) match librosa's 'soxr_hq' and
    'polyphase', output length ceil(T * target / orig) included, but call soxr and
    scipy directly: the first librosa.resample in a process costs seconds of imports.
    """
    if orig_rate == target_rate:
        return audio.astype(np.float32, copy=False)
    if method == "decimate":
        if orig_rate % target_rate:
            raise ValueError(
                f"decimate needs an integer rate ratio, got {orig_rate} -> {target_rate}"
            )
        return np.ascontiguousarray(audio[..., :: orig_rate // target_rate], dtype=np.float32)
    if method not in ("soxr", "sinc"):
        raise ValueError(f"unknown resampler {method!r}; choose soxr, sinc or decimate")
    audio = np.asarray(audio, dtype=np.float32)
    length = int(np.ceil(audio.shape[-1] * target_rate / orig_rate))
    if method == "soxr":
        import soxr

        rows = audio.reshape(-1, audio.shape[-1]).T  # soxr wants (time, channels)
        out = soxr.resample(rows, orig_rate, target_rate, quality="HQ").T
        out = out.reshape(*audio.shape[:-1], out.shape[-1])
    else:
        from math import gcd

        from scipy.signal import resample_poly

        common = gcd(int(orig_rate), int(target_rate))
        out = resample_poly(audio, target_rate // common, orig_rate // common, axis=-1)
    return np.ascontiguousarray(fix_length(out, length), dtype=np.float32)


def fix_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad at the end or crop to exactly ``length`` samples."""
    if audio.shape[-1] >= length:
        return audio[..., :length]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, length - audio.shape[-1])])


def check_samples(audio: np.ndarray, path: str | Path) -> np.ndarray:
    """Reject audio that would silently poison training: empty, NaN or Inf."""
    if audio.size == 0:
        raise AudioError(path, "file holds no samples (empty audio)")
    if not np.all(np.isfinite(audio)):
        bad = int(np.size(audio) - np.count_nonzero(np.isfinite(audio)))
        raise AudioError(path, f"{bad} samples are NaN or Inf")
    return audio


def load_audio(
    path: str | Path,
    sample_rate: int | None = 16000,
    length: int | None = None,
    resampler: str = "soxr",
    offset: int = 0,
    frames: int | None = None,
) -> np.ndarray:
    """Read ``path`` as mono float32 in [-1, 1], at ``sample_rate`` (None keeps the file's).

    Integer formats are scaled by soundfile; stereo and multi-channel files are
    averaged to mono; ``length`` pads or crops after resampling. ``offset`` and
    ``frames`` (in the file's own samples) read only a segment, so that one-second
    cuts from a minute of background noise do not decode the whole minute.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file")
    if offset < 0 or (frames is not None and frames < 0):
        raise ValueError(f"{path}: offset and frames must be >= 0, got {offset}, {frames}")
    try:
        audio, file_rate = sf.read(
            str(path), dtype="float32", always_2d=True, start=offset,
            frames=-1 if frames is None else frames,
        )
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(path, f"not readable as audio ({err})") from err
    audio = check_samples(audio.mean(axis=1), path)
    if sample_rate is not None and file_rate != sample_rate:
        audio = resample(audio, file_rate, sample_rate, resampler)
    if length is not None:
        audio = fix_length(audio, length)
    return np.ascontiguousarray(audio, dtype=np.float32)


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(frames, sample rate, channels) from the header alone; raises AudioError."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(path, f"not readable as audio ({err})") from err
    return info.frames, info.samplerate, info.channels


def save_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio; the format follows the file's extension (wav, flac, ...)."""
    sf.write(str(path), np.asarray(audio, dtype=np.float32), sample_rate)
