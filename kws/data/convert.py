"""``kws data convert``: a Speech Commands folder in another audio format, same layout.

Why: to move the data set where space or transfer is short (a lent GPU machine
takes a 64 MiB working tree). FLAC is lossless and about 46% of the WAV size;
Opus at the default level is about 14% and lossy (median waveform SNR about
24 dB on the dev clips), which suits training with noise augmentation at 0-20 dB
SNR, but test accuracy should be reported on the original files.

The copy keeps the layout, the file stems and every other file (the official
lists, README, LICENSE), and splits exactly as the original does
(``speech_commands.as_wav_name``). Each file is written to a temporary name and
renamed, and a rerun skips files already written, so an interrupted run resumes.
Every written file is read back and checked: same sample rate, same length.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from kws.data.audio import AudioError, check_samples
from kws.data.speech_commands import AUDIO_SUFFIXES

#: format name -> (suffix, soundfile format, subtype, default compression level)
FORMATS: dict[str, tuple[str, str, str, float | None]] = {
    "flac": (".flac", "FLAC", "PCM_16", None),
    "opus": (".opus", "OGG", "OPUS", 0.9),
    "wav": (".wav", "WAV", "PCM_16", None),
}
#: rates the Opus codec takes; Speech Commands is 16 kHz throughout
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


@dataclass
class ConvertReport:
    """What a conversion did; sizes in bytes, SNR in dB of the written audio against the source."""

    source: str
    target: str
    format: str
    converted: int = 0
    already_there: int = 0
    copied: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    snr_db: list[float] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        snr = np.array(self.snr_db, dtype=np.float64)
        finite = snr[np.isfinite(snr)]
        return {
            "source": self.source, "target": self.target, "format": self.format,
            "converted": self.converted, "already_there": self.already_there,
            "copied": self.copied, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "size_ratio": round(self.bytes_out / self.bytes_in, 4) if self.bytes_in else None,
            "lossless": bool(snr.size) and not finite.size,
            "snr_db_median": round(float(np.median(finite)), 2) if finite.size else None,
            "snr_db_worst": round(float(finite.min()), 2) if finite.size else None,
            "problems": self.problems,
        }


def convert_dataset(
    source: str | Path,
    target: str | Path,
    fmt: str = "flac",
    level: float | None = None,
    on_error: str = "raise",
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
) -> ConvertReport:
    """Write every audio file under ``source`` to ``target`` in ``fmt``; copy the other files."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    source, target = Path(source).resolve(), Path(target).resolve()
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such data folder")
    if target == source or source in target.parents:
        raise ValueError(f"{target}: the copy must not be inside the source folder {source}")
    suffix, major, subtype, default_level = FORMATS[fmt]
    level = default_level if level is None else level
    if level is not None and not 0.0 <= level <= 1.0:
        raise ValueError(f"compression level must be in [0, 1], got {level}")

    report = ConvertReport(str(source), str(target), fmt)
    audio, other = [], []
    for path in sorted(source.rglob("*")):
        if path.is_file():
            (audio if path.name.lower().endswith(AUDIO_SUFFIXES) else other).append(path)
    for path in other:
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)
        report.copied += 1

    def one(path: Path) -> tuple[Path, int, int, float | None, str | None]:
        out = (target / path.relative_to(source)).with_suffix(suffix)
        if out.is_file():
            return path, path.stat().st_size, out.stat().st_size, None, "there"
        try:
            snr = write_converted(path, out, major, subtype, level)
        except AudioError as err:
            if on_error == "raise":
                raise
            return path, 0, 0, None, err.problem
        return path, path.stat().st_size, out.stat().st_size, snr, None

    with ThreadPoolExecutor(max(1, jobs)) as pool:  # libsndfile runs without the GIL
        for done, (path, size_in, size_out, snr, problem) in enumerate(pool.map(one, audio), 1):
            if problem == "there":
                report.already_there += 1
            elif problem is not None:
                report.problems.append({"path": str(path), "problem": problem})
                continue
            else:
                report.converted += 1
                report.snr_db.append(float("inf") if snr is None else snr)
            report.bytes_in += size_in
            report.bytes_out += size_out
            if log and done % 1000 == 0:
                log(f"  {done:,} of {len(audio):,} files")
    return report


def write_converted(
    path: Path, out: Path, major: str, subtype: str, level: float | None
) -> float | None:
    """Convert one file atomically and read it back; the SNR in dB if lossy, else None."""
    try:
        source_subtype = sf.info(str(path)).subtype
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(path, f"not readable as audio ({err})") from err
    check_samples(data, path)
    if subtype == "OPUS" and rate not in OPUS_RATES:
        raise AudioError(path, f"{rate} Hz cannot be stored as Opus (it takes "
                         f"{', '.join(map(str, OPUS_RATES))} Hz); use flac")
    if major in ("FLAC", "WAV") and source_subtype in ("PCM_S8", "PCM_U8", "PCM_24"):
        subtype = "PCM_24" if source_subtype == "PCM_24" else "PCM_16"  # keep every bit
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    extra = {} if level is None else {"compression_level": level}
    try:
        with sf.SoundFile(str(partial), "w", rate, data.shape[1], subtype, format=major,
                          **extra) as handle:
            handle.write(data)
        back, back_rate = sf.read(str(partial), dtype="float32", always_2d=True)
        if back_rate != rate or back.shape != data.shape:
            raise AudioError(path, f"the {major} copy read back as {back.shape[0]} samples at "
                             f"{back_rate} Hz, not {data.shape[0]} at {rate} Hz")
        os.replace(partial, out)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(path, f"could not be written as {major} {subtype} ({err})") from err
    finally:
        partial.unlink(missing_ok=True)
    error = float(np.sum((back.astype(np.float64) - data) ** 2))
    if error == 0.0:
        return None
    signal = float(np.sum(data.astype(np.float64) ** 2))
    return 10.0 * np.log10(max(signal, 1e-20) / error)
