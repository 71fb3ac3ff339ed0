"""The live demo: `kws listen` (terminal, listen.py) and `kws serve` (browser, server.py).

What both front ends share lives here: which model to run by default, the
``AudioPipeline`` that takes audio at whatever rate the microphone gives and
feeds a ``StreamingDetector`` at the model's rate, and ``StandInBackend``, a
loudness detector that lets the whole audio path run before a trained model is
shipped.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kws.streaming.backends import NON_KEYWORDS, StepBackend, export_folders
from kws.streaming.engine import Event, StreamingDetector

#: the level meter's floor; anything quieter (digital silence included) reads as this
FLOOR_DBFS = -100.0
#: the demos' model when it is there: MFCC S4 trained with preceding context, 20-ms steps
#: (it detects best on long audio; RESULTS.md, "Training for the stream")
DEFAULT_MODEL_FILE = "s4_mfcc_ctx_stream.onnx"
#: how a default model is recognised in export/ otherwise: MFCC features, S4 (not S4D), streaming
DEFAULT_MODEL_NAME = re.compile(r"(?=.*mfcc)(?=.*s4(?!d))(?=.*stream).*\.onnx$", re.IGNORECASE)

DetectorFactory = Callable[[], StreamingDetector]


def default_model(folders: list[Path] | None = None) -> Path:
    """The shipped streaming MFCC S4 model: ``DEFAULT_MODEL_FILE``, else the first
    ``*mfcc*s4*stream*.onnx``.

    Names are matched case-insensitively in any order of the three parts, S4D is
    not S4, and the first in sorted order wins. ``folders`` defaults to ./export,
    then the export/ folder of the checkout kws runs from; each is searched in turn.
    """
    if folders is None:
        folders = export_folders()
    for folder in folders:
        if (folder / DEFAULT_MODEL_FILE).is_file():
            return folder / DEFAULT_MODEL_FILE
        found = sorted(p for p in folder.glob("*.onnx") if DEFAULT_MODEL_NAME.match(p.name))
        if found:
            return found[0]
    looked = ", ".join(str(f) for f in folders)
    raise FileNotFoundError(
        f"no streaming MFCC S4 model (*mfcc*s4*stream*.onnx) in {looked}; export one with "
        "`kws export models/NAME.pt --streaming --out export/NAME_mfcc_s4_stream.onnx`, "
        "or pass --model"
    )


def dbfs(audio: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS)."""
    if audio.size == 0:
        return FLOOR_DBFS
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return max(FLOOR_DBFS, 20 * math.log10(rms)) if rms > 0 else FLOOR_DBFS


def to_mono_float32(block: Any) -> np.ndarray:
    """(frames,) or (frames, channels) int16/float audio -> (frames,) float32 in [-1, 1]."""
    block = np.asarray(block)
    if block.ndim not in (1, 2):
        raise ValueError(f"audio block must be (frames,) or (frames, channels), got {block.shape}")
    if block.dtype == np.int16:
        block = block.astype(np.float32) / 32768.0
    elif np.issubdtype(block.dtype, np.floating):
        block = block.astype(np.float32, copy=False)
    else:
        raise TypeError(f"audio block must be int16 or float, got dtype {block.dtype}")
    if block.ndim == 2:
        block = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
    return np.ascontiguousarray(block)


class AudioPipeline:
    """Audio at the source's rate in, keyword events out: mono, resample, meter, detect.

    The resampler is soxr's ``ResampleStream`` (soxr comes with librosa): it keeps its
    filter state between blocks, so blocks of any size give exactly the samples of
    resampling the whole recording at once, only ``resampler.delay()`` later.
    """

    def __init__(self, detector: StreamingDetector, input_rate: int):
        if isinstance(input_rate, bool) or not isinstance(input_rate, int) or input_rate <= 0:
            raise ValueError(f"input_rate must be a positive integer of Hz, got {input_rate!r}")
        self.detector = detector
        self.input_rate = input_rate
        self.resampler = None
        if input_rate != detector.sample_rate:
            import soxr

            self.resampler = soxr.ResampleStream(
                input_rate, detector.sample_rate, 1, dtype="float32", quality="HQ"
            )
        self.level_dbfs = FLOOR_DBFS
        self.input_samples = 0

    @property
    def input_s(self) -> float:
        """Seconds of audio received so far."""
        return self.input_samples / self.input_rate

    def process(self, block: Any) -> list[Event]:
        audio = to_mono_float32(block)
        if not np.all(np.isfinite(audio)):
            raise ValueError(f"audio block holds {int(np.sum(~np.isfinite(audio)))} NaN or Inf "
                             "samples")
        self.input_samples += audio.size
        self.level_dbfs = dbfs(audio)
        if self.resampler is not None:
            audio = self.resampler.resample_chunk(audio)
        return self.detector.feed(audio)


def detector_factory(backend: StepBackend, **detector_options: Any) -> DetectorFactory:
    """A fresh detector per listener, all sharing ``backend``'s loaded model.

    Each detector gets a shallow copy of the backend: the model (an onnxruntime
    session, whose ``run`` is thread-safe, or a torch module) is shared, and the
    detector's ``reset`` gives the copy its own state arrays, so listeners never see
    each other's audio.
    """
    StreamingDetector(copy.copy(backend), **detector_options)  # bad options fail here, once

    def make() -> StreamingDetector:
        return StreamingDetector(copy.copy(backend), **detector_options)

    return make


class StandInBackend(StepBackend):
    """No model: each loud sound is taken for the next word of a script.

    A stand-in for a trained model, so that the demo's whole audio path (capture,
    resampling, transport, display) runs, and its tests can predict the events: a
    chunk at or above ``loud_dbfs`` starts a sound, ``hang_ms`` below it ends one,
    and during a sound the logits name the current script word (else ``_silence_``).
    The script cycles. ``kws listen/serve --stand-in yes,stop,left`` selects it.
    """

    def __init__(
        self,
        script: list[str],
        sample_rate: int = 16000,
        chunk_ms: float = 10.0,
        loud_dbfs: float = -35.0,
        hang_ms: float = 250.0,
    ):
        words = [w.strip() for w in script if w.strip()]
        if not words or any(w in NON_KEYWORDS for w in words):
            raise ValueError(f"the stand-in's script must name keywords (not {NON_KEYWORDS}), "
                             f"got {script!r}")
        if not chunk_ms > 0:
            raise ValueError(f"the stand-in's chunk_ms must be positive, got {chunk_ms}")
        self.script = words
        self.labels = [*NON_KEYWORDS, *dict.fromkeys(words)]
        self.sample_rate = sample_rate
        self.chunk_samples = round(sample_rate * chunk_ms / 1000)
        self.window_s = 1.0
        self.loud_dbfs = loud_dbfs
        self.hang_chunks = max(1, round(hang_ms / chunk_ms))
        self.set_copies(1)

    def reset(self, copy: int | None = None) -> None:
        # One state serves every copy: a copy's scheduled reset must not restart the script.
        self._check_copy(copy)
        if copy is None:
            self.word, self.loud, self.quiet_chunks = 0, False, 0

    def step(self, chunk: np.ndarray) -> np.ndarray:
        chunk = self.check_chunk(chunk)
        if dbfs(chunk) >= self.loud_dbfs:
            self.loud, self.quiet_chunks = True, 0
        elif self.loud:
            self.quiet_chunks += 1
            if self.quiet_chunks >= self.hang_chunks:
                self.loud = False
                self.word = (self.word + 1) % len(self.script)
        label = self.script[self.word] if self.loud else "_silence_"
        logits = np.zeros((self.copies, len(self.labels)), dtype=np.float32)
        logits[:, self.labels.index(label)] = 10.0
        return logits
