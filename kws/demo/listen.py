"""``kws listen``: keyword spotting on the microphone, shown live in the terminal.

Two threads, one rule: PortAudio's audio thread runs ``MicrophoneQueue.callback``,
which only copies the block into a bounded queue (it never blocks, never computes;
when the queue is full it drops the block and counts it). The main thread takes
blocks off the queue and runs ``kws.demo.AudioPipeline`` -- mono, float32, a streaming
soxr resampler from the device's native rate to the model's, a level meter, the
``StreamingDetector`` -- and redraws a rich ``Live`` view. The browser server runs the
same pipeline per client, so both front ends hear the same thing.
"""

from __future__ import annotations

import importlib
import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kws.cli import UserError
from kws.demo import AudioPipeline
from kws.streaming.engine import Event, StreamingDetector

#: the level meter spans this many dB below full scale
METER_SPAN_DB = 60.0
#: audio per PortAudio callback; small enough for a responsive meter, large enough to be cheap
BLOCK_MS = 20
#: blocks the queue holds before the callback starts dropping (5 s at BLOCK_MS)
QUEUE_BLOCKS = 250

NO_DEVICE_HINT = (
    "plug in a microphone, or check `kws listen --list-devices`; "
    "to try the detector on a file use `kws stream MODEL FILE`"
)


class MicrophoneQueue:
    """The audio callback's side: copy the block into a bounded queue and return at once.

    ``overflows`` counts blocks PortAudio reported as overflowed (audio lost before
    us); ``dropped`` counts blocks we threw away because the main thread fell behind.
    """

    def __init__(self, max_blocks: int = QUEUE_BLOCKS):
        self.blocks: queue.Queue[np.ndarray] = queue.Queue(maxsize=max_blocks)
        self.overflows = 0
        self.dropped = 0

    def callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status and getattr(status, "input_overflow", False):
            self.overflows += 1
        try:
            self.blocks.put_nowait(indata.copy())
        except queue.Full:
            self.dropped += 1


class InputStream(Protocol):
    """What ``listen`` needs of a sounddevice ``InputStream`` (and of a test's fake one)."""

    active: bool

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...


# -- sounddevice ------------------------------------------------------------------------------


def import_sounddevice() -> ModuleType:
    """sounddevice, or a UserError: importing it raises OSError when PortAudio is missing."""
    try:
        return importlib.import_module("sounddevice")
    except OSError as err:
        raise UserError(
            f"cannot load the PortAudio library ({err}); install it (Debian/Ubuntu: "
            "apt-get install libportaudio2); to try the detector on a file use "
            "`kws stream MODEL FILE`"
        ) from err
    except Exception as err:  # sounddevice starts PortAudio on import: PortAudioError
        raise UserError(f"PortAudio failed to start ({err}); {NO_DEVICE_HINT}") from err


def input_devices(sd: ModuleType) -> list[dict[str, Any]]:
    """Every device with at least one input channel, each with its PortAudio index."""
    try:
        devices = sd.query_devices()
    except sd.PortAudioError as err:
        raise UserError(f"PortAudio cannot list audio devices ({err}); {NO_DEVICE_HINT}") from err
    return [dict(d, index=i) for i, d in enumerate(devices) if d.get("max_input_channels", 0) > 0]


def pick_input_device(sd: ModuleType, device: str | None) -> dict[str, Any]:
    """The input device named by ``--device`` (index or part of its name), else the default."""
    devices = input_devices(sd)
    if not devices:
        raise UserError(f"no audio input device found; {NO_DEVICE_HINT}")
    if device is None:
        default = sd.default.device[0] if hasattr(sd.default.device, "__getitem__") else -1
        matches = [d for d in devices if d["index"] == default] or devices[:1]
    elif device.strip().lstrip("-").isdigit():
        matches = [d for d in devices if d["index"] == int(device)]
    else:
        matches = [d for d in devices if device.lower() in d["name"].lower()]
    if len(matches) != 1:
        known = ", ".join(f"{d['index']}: {d['name']}" for d in devices)
        problem = "matches no" if not matches else "matches more than one"
        raise UserError(f"--device {device!r} {problem} input device; inputs are {known}")
    return matches[0]


def describe_devices(sd: ModuleType) -> str:
    devices = input_devices(sd)
    if not devices:
        return f"no audio input devices found; {NO_DEVICE_HINT}"
    lines = [f"{'index':>5}  {'rate':>6}  {'channels':>8}  name"]
    for d in devices:
        lines.append(f"{d['index']:>5}  {d['default_samplerate']:>6.0f}  "
                     f"{d['max_input_channels']:>8}  {d['name']}")
    return "\n".join(lines)


def open_microphone(sd: ModuleType, device: dict[str, Any]) -> tuple[int, Callable[..., Any]]:
    """The device's native rate and a factory ``callback -> InputStream`` at that rate."""
    rate = int(round(device["default_samplerate"]))

    def factory(callback: Callable[..., None]) -> Any:
        try:
            return sd.InputStream(
                device=device["index"], samplerate=rate, channels=1, dtype="float32",
                blocksize=rate * BLOCK_MS // 1000, callback=callback,
            )
        except sd.PortAudioError as err:
            raise UserError(f"cannot open input device {device['index']} "
                            f"({device['name']}) at {rate} Hz: {err}") from err

    return rate, factory


# -- the live view ----------------------------------------------------------------------------


@dataclass
class ListenResult:
    """What a listening session heard; ``interrupted`` is True when it ended with Ctrl-C."""

    events: list[Event] = field(default_factory=list)
    interrupted: bool = False
    input_s: float = 0.0
    overflows: int = 0
    dropped: int = 0


def bar(fraction: float, width: int) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "·" * (width - filled)


def render(
    title: str, pipeline: AudioPipeline, mic: MicrophoneQueue,
    recent: deque[tuple[float, Event]], top_k: int = 4,
) -> Group:
    """One frame of the live view: level meter, top posteriors, recent keywords."""
    detector = pipeline.detector
    level = pipeline.level_dbfs
    meter = Text.assemble(
        ("level  ", "bold"),
        (bar((level + METER_SPAN_DB) / METER_SPAN_DB, 40),
         "green" if level < -12 else "yellow" if level < -3 else "red"),
        f"  {level:6.1f} dBFS",
    )
    posteriors = Table.grid(padding=(0, 2))
    for label, p in detector.top(top_k):
        posteriors.add_row(f"{label:>10}", Text(bar(p, 30), style="cyan"), f"{p:.2f}")
    events = Table("time", "stream s", "keyword", "score", box=None, header_style="bold")
    for wall, event in reversed(recent):
        events.add_row(time.strftime("%H:%M:%S", time.localtime(wall)), f"{event.end_s:8.2f}",
                       Text(event.keyword, style="bold magenta"), f"{event.score:.2f}")
    status = Text(
        f"{pipeline.input_s:7.1f} s heard   overflows {mic.overflows}   dropped {mic.dropped}"
        "   Ctrl-C to stop", style="dim",
    )
    return Group(Text(title, style="bold"), meter, posteriors,
                 events if recent else Text("no keyword yet", style="dim"), status)


def listen(
    detector: StreamingDetector,
    stream_factory: Callable[[Callable[..., None]], InputStream],
    input_rate: int,
    console: Console | None = None,
    title: str = "kws listen",
    refresh_hz: float = 10.0,
    keep_events: int = 8,
) -> ListenResult:
    """Run the detector on a live input stream until it stops or Ctrl-C; the stream is closed.

    ``stream_factory(callback)`` makes the stream that will drive ``callback`` -- a
    sounddevice ``InputStream``, or in tests a fake that plays a file through it.
    """
    mic = MicrophoneQueue()
    pipeline = AudioPipeline(detector, input_rate)
    result = ListenResult()
    recent: deque[tuple[float, Event]] = deque(maxlen=keep_events)
    next_draw = 0.0
    stream = stream_factory(mic.callback)
    try:
        with stream, Live(render(title, pipeline, mic, recent), console=console,
                          auto_refresh=False, transient=False) as live:
            while stream.active or not mic.blocks.empty():
                try:
                    block = mic.blocks.get(timeout=0.05)
                except queue.Empty:
                    continue
                for event in pipeline.process(block):
                    result.events.append(event)
                    recent.append((time.time(), event))
                    next_draw = 0.0
                if time.monotonic() >= next_draw:
                    live.update(render(title, pipeline, mic, recent), refresh=True)
                    next_draw = time.monotonic() + 1 / refresh_hz
            live.update(render(title, pipeline, mic, recent), refresh=True)
    except KeyboardInterrupt:
        result.interrupted = True
    result.input_s, result.overflows, result.dropped = pipeline.input_s, mic.overflows, mic.dropped
    return result
