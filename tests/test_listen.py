"""``kws listen``: the microphone path, driven by a recorded file instead of a microphone.

``FileStream`` stands in for sounddevice's ``InputStream``: from its own thread it
calls the very callback PortAudio would call, with (frames, 1) blocks of a file at
44.1 or 48 kHz, int16 or float32. No audio device is needed (CI has none).
"""

from __future__ import annotations

import importlib
import io
import os
import signal
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import soxr
from conftest import tone
from rich.console import Console

import kws.demo.listen as listen_module
from kws.cli import main
from kws.data.audio import load_audio
from kws.demo import (
    DEFAULT_MODEL_FILE,
    AudioPipeline,
    StandInBackend,
    dbfs,
    default_model,
    detector_factory,
)
from kws.demo.listen import MicrophoneQueue, listen
from kws.streaming.engine import StreamingDetector

WORDS = ["yes", "stop", "left"]


class RecordingStandIn(StandInBackend):
    """The stand-in, keeping every chunk the detector hands it."""

    def __init__(self, *args, **kwargs):
        self.chunks: list[np.ndarray] = []
        super().__init__(*args, **kwargs)

    def step(self, chunk):
        self.chunks.append(chunk.copy())
        return super().step(chunk)


class Status:
    """sounddevice.CallbackFlags as the callback sees it."""

    def __init__(self, overflow: bool = False):
        self.input_overflow = overflow

    def __bool__(self) -> bool:
        return self.input_overflow


class FileStream:
    """A fake InputStream: plays ``audio`` through ``callback`` from a thread, as PortAudio does.

    ``speed`` times real time; ``interrupt_after`` blocks, it sends this process SIGINT
    (what Ctrl-C does). ``closed`` tells whether the caller left its ``with`` block.
    """

    def __init__(self, audio: np.ndarray, rate: int, callback, block_ms: float = 20,
                 speed: float = 20.0, interrupt_after: int | None = None):
        self.audio, self.callback = audio, callback
        self.block = round(rate * block_ms / 1000)
        self.pause = block_ms / 1000 / speed
        self.interrupt_after = interrupt_after
        self.active = self.closed = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self):
        self.active = True
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()
        self.active, self.closed = False, True

    def run(self) -> None:
        for i, start in enumerate(range(0, self.audio.size, self.block)):
            if self.stopping.is_set():
                return
            indata = self.audio[start : start + self.block].reshape(-1, 1)
            self.callback(indata, len(indata), None, Status())
            if i == self.interrupt_after:
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(self.pause)
        self.active = False


def tone_bursts(starts: list[float], seconds: float, rate: int) -> np.ndarray:
    audio = np.zeros(int(seconds * rate), dtype=np.float32)
    for start in starts:
        burst = tone(500, 0.4, rate, amp=0.3)
        audio[int(start * rate) : int(start * rate) + burst.size] = burst
    return audio


def as_format(audio: np.ndarray, dtype: str) -> np.ndarray:
    return np.round(audio * 32767).astype(np.int16) if dtype == "int16" else audio


def play(audio: np.ndarray, rate: int, backend, **stream_options):
    """``listen`` on the file through a FileStream; returns (result, stream, screen text)."""
    streams: list[FileStream] = []

    def factory(callback):
        streams.append(FileStream(audio, rate, callback, **stream_options))
        return streams[0]

    screen = io.StringIO()
    detector = StreamingDetector(backend)
    result = listen(detector, factory, rate, console=Console(file=screen, width=100))
    return result, streams[0], screen.getvalue()


@pytest.mark.parametrize(("rate", "dtype"), [(44100, "int16"), (48000, "float32")])
def test_the_callback_path_resamples_and_detects(rate, dtype):
    starts = [0.4, 1.9, 3.3]
    audio = as_format(tone_bursts(starts, 4.5, rate), dtype)
    backend = RecordingStandIn(WORDS)
    result, stream, screen = play(audio, rate, backend)
    assert stream.closed and not result.interrupted
    assert result.dropped == 0 and result.overflows == 0
    assert result.input_s == pytest.approx(4.5, abs=1e-3)
    # the detector got the file resampled to 16 kHz: exactly what soxr gives on the whole file
    heard = np.concatenate(backend.chunks)
    floats = audio.astype(np.float32) / 32768 if dtype == "int16" else audio
    whole = soxr.resample(floats, rate, 16000, "HQ")
    assert 0.98 * whole.size < heard.size <= whole.size
    np.testing.assert_allclose(heard, whole[: heard.size], atol=1e-6)
    # and its events: one per tone, in script order, soon after each onset
    assert [e.keyword for e in result.events] == WORDS
    assert all(0 < e.end_s - s < 0.15 for e, s in zip(result.events, starts, strict=True))
    for word in WORDS:
        assert word in screen
    assert "dBFS" in screen and "4.5 s heard" in screen


def test_blocks_of_any_size_give_the_same_events():
    audio = tone_bursts([0.3, 1.5], 2.5, 48000)
    reference = [(e.keyword, e.end_s) for e in play(audio, 48000, StandInBackend(WORDS))[0].events]
    for block_ms in (3, 50, 170):
        result = play(audio, 48000, StandInBackend(WORDS), block_ms=block_ms)[0]
        assert [(e.keyword, e.end_s) for e in result.events] == reference


def test_ctrl_c_stops_cleanly_and_closes_the_stream():
    audio = tone_bursts([0.3], 60.0, 48000)  # a minute: only Ctrl-C ends this in time
    started = time.monotonic()
    result, stream, _ = play(audio, 48000, StandInBackend(WORDS), speed=5, interrupt_after=50)
    assert result.interrupted and stream.closed and not stream.thread.is_alive()
    assert time.monotonic() - started < 5
    assert 0.9 < result.input_s < 10 and [e.keyword for e in result.events] == ["yes"]


def test_the_callback_never_blocks_and_counts_what_it_loses():
    mic = MicrophoneQueue(max_blocks=2)
    block = np.ones((960, 1), dtype=np.float32)
    started = time.perf_counter()
    for overflow in (False, True, False, False, True):
        mic.callback(block, 960, None, Status(overflow))
    assert time.perf_counter() - started < 0.05
    assert mic.blocks.qsize() == 2 and mic.dropped == 3 and mic.overflows == 2
    block[:] = 0  # the queue holds copies, not PortAudio's buffer
    assert mic.blocks.get_nowait().min() == 1.0


def test_pipeline_mixes_channels_and_meters():
    detector = StreamingDetector(StandInBackend(WORDS))
    pipeline = AudioPipeline(detector, 16000)
    stereo = np.stack([tone(440, 0.5, amp=0.5), np.zeros(8000, np.float32)], axis=1)
    pipeline.process(stereo)
    assert pipeline.level_dbfs == pytest.approx(dbfs(tone(440, 0.5, amp=0.25)), abs=0.01)
    assert pipeline.level_dbfs == pytest.approx(-15.05, abs=0.05)  # a 0.25 sine
    pipeline.process(np.zeros(160, np.int16))
    assert pipeline.level_dbfs == -100.0 and detector.time_s == pytest.approx(0.51)
    with pytest.raises(TypeError, match="int16 or float"):
        pipeline.process(np.zeros(160, np.int32))
    with pytest.raises(ValueError, match="1 NaN"):
        pipeline.process(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="input_rate"):
        AudioPipeline(detector, 0)


# -- the command, with no microphone ----------------------------------------------------------


@pytest.fixture
def no_devices(monkeypatch):
    sd = pytest.importorskip("sounddevice", exc_type=OSError)
    monkeypatch.setattr(sd, "query_devices", lambda *a, **k: [])
    return sd


def test_no_input_device_is_one_clear_line(no_devices, capsys):
    assert main(["listen"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "no audio input device found" in err
    assert "--list-devices" in err and "kws stream" in err


def test_missing_portaudio_is_one_clear_line(monkeypatch, capsys):
    real_import = importlib.import_module

    def no_portaudio(name, *args):
        if name == "sounddevice":  # what importing it does when libportaudio is missing
            raise OSError("PortAudio library not found")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_portaudio)
    assert main(["listen"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load the PortAudio library" in err
    assert "libportaudio2" in err


def test_list_devices(no_devices, monkeypatch, capsys):
    assert main(["listen", "--list-devices"]) == 0
    assert "no audio input devices found" in capsys.readouterr().out
    devices = [
        {"name": "HDMI out", "max_input_channels": 0, "default_samplerate": 48000.0},
        {"name": "USB Mic", "max_input_channels": 1, "default_samplerate": 44100.0},
    ]
    monkeypatch.setattr(no_devices, "query_devices", lambda *a, **k: devices)
    assert main(["listen", "--list-devices"]) == 0
    out = capsys.readouterr().out
    assert "USB Mic" in out and "44100" in out and "HDMI" not in out
    assert main(["listen", "--device", "webcam", "--stand-in", "yes"]) == 1
    assert "--device 'webcam' matches no input device; inputs are 1: USB Mic" in (
        capsys.readouterr().err
    )


def test_kws_listen_runs_the_microphone_path_and_exits_0_on_ctrl_c(monkeypatch, capsys):
    """The command end to end, with the microphone replaced by a file and Ctrl-C by SIGINT."""
    audio = tone_bursts([0.3, 1.6], 60.0, 44100)
    streams: list[FileStream] = []
    mic = {"index": 3, "name": "Fake Mic", "default_samplerate": 44100.0}

    def fake_open(sd, device):
        assert device is mic

        def factory(callback):
            streams.append(FileStream(audio, 44100, callback, speed=10, interrupt_after=120))
            return streams[0]

        return 44100, factory

    monkeypatch.setattr(listen_module, "import_sounddevice",
                        lambda: types.SimpleNamespace(PortAudioError=OSError))
    monkeypatch.setattr(listen_module, "pick_input_device", lambda sd, name: mic)
    monkeypatch.setattr(listen_module, "open_microphone", fake_open)
    assert main(["listen", "--stand-in", "yes,stop,left"]) == 0
    assert streams[0].closed
    captured = capsys.readouterr()
    assert "Fake Mic at 44100 Hz -> model at 16000 Hz" in captured.out
    assert "yes" in captured.out and "stop" in captured.out
    assert "2 keyword(s), 0 input overflow(s), 0 dropped block(s)" in captured.err


# -- the default model and the real thing -----------------------------------------------------


def test_default_model_is_the_first_streaming_mfcc_s4_export(tmp_path):
    for name in ("kws_mfcc_s4d_stream.onnx", "raw_s4_stream.onnx", "mfcc_s4_clip.onnx",
                 "b_mfcc_s4_stream.onnx", "a_S4_MFCC_streaming.onnx", "mfcc_s4_stream.json"):
        (tmp_path / name).touch()
    assert default_model([tmp_path]) == tmp_path / "a_S4_MFCC_streaming.onnx"
    (tmp_path / DEFAULT_MODEL_FILE).touch()  # the shipped default wins over sorted order
    assert default_model([tmp_path]) == tmp_path / DEFAULT_MODEL_FILE
    (tmp_path / DEFAULT_MODEL_FILE).unlink()
    (tmp_path / "a_S4_MFCC_streaming.onnx").unlink()
    assert default_model([tmp_path / "missing", tmp_path]) == tmp_path / "b_mfcc_s4_stream.onnx"
    (tmp_path / "b_mfcc_s4_stream.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"no streaming MFCC S4 model.*kws export"):
        default_model([tmp_path])


def test_stand_in_rejects_an_empty_script():
    with pytest.raises(ValueError, match="must name keywords"):
        StandInBackend([" ", ""])
    with pytest.raises(ValueError, match="must name keywords"):
        StandInBackend(["_silence_"])


def spoken_keywords(dev_root: Path, rate: int) -> tuple[np.ndarray, list[float]]:
    """yes, stop, left from the dev set, with 1.5 s gaps, at ``rate``; and their onsets."""
    pieces, onsets, t = [np.zeros(rate // 2, np.float32)], [], 0.5
    for word in WORDS:
        clip = load_audio(sorted((dev_root / word).glob("*.wav"))[0], rate)
        pieces += [0.5 * clip / np.abs(clip).max(), np.zeros(int(1.5 * rate), np.float32)]
        onsets.append(t)
        t += clip.size / rate + 1.5
    return np.concatenate(pieces), onsets


def test_spoken_keywords_through_the_callback_with_the_stand_in(dev_root):
    audio, onsets = spoken_keywords(dev_root, 48000)
    result = play(as_format(audio, "int16"), 48000, StandInBackend(WORDS))[0]
    assert [e.keyword for e in result.events] == WORDS
    assert all(0 < e.end_s - s < 1.0 for e, s in zip(result.events, onsets, strict=True))


def test_spoken_keywords_through_the_callback_with_the_shipped_model(dev_root):
    """The microphone path hears what the file path hears, with the real model."""
    try:
        model = default_model()
    except FileNotFoundError as err:
        pytest.skip(f"no shipped model yet: {err}")
    from kws.streaming.backends import open_backend

    make = detector_factory(open_backend(model, copies=2), copies=2)
    audio, _ = spoken_keywords(dev_root, 44100)
    result = listen(make(), lambda cb: FileStream(audio, 44100, cb, speed=5), 44100,
                    console=Console(file=io.StringIO()))
    assert result.dropped == 0
    offline = make().process(soxr.resample(audio, 44100, 16000, "HQ"))
    heard = [(e.keyword, round(e.end_s, 2)) for e in result.events]
    assert len(heard) >= 2 and heard == [(e.keyword, round(e.end_s, 2)) for e in offline]
