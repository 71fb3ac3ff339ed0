"""``kws serve``: a local web page that streams the microphone to the detector running here.

The page (``static/``) captures the microphone with getUserMedia and an AudioWorklet
and sends raw PCM over a WebSocket; this server runs the same ``StreamingDetector``
as ``kws stream`` and ``kws listen`` (onnxruntime) and sends back posteriors and
events. We run the model here rather than in the page with onnxruntime-web: one
engine for every front end, so a threshold tuned on files holds in the browser; no
multi-megabyte WASM runtime for the page to download; and it all works offline.

Protocol: one WebSocket per microphone, at ``/ws``
--------------------------------------------------
Client to server:

1. one text frame, the hello: ``{"type": "hello", "sample_rate": 48000, "format": "f32le"}``;
   ``sample_rate`` is an integer in [8000, 192000] Hz, ``format`` is ``"f32le"``
   (float32 in [-1, 1]) or ``"s16le"`` (int16), mono, little-endian;
2. then binary frames of PCM in that format: at most 64 KiB each, whole samples.

Server to client, JSON text frames:

* ``{"type": "ready", "labels": [...], "thresholds": [...], "model_rate": 16000,
  "max_frame_bytes": 65536}`` after the hello (a threshold of null: never fires);
* ``{"type": "posteriors", "t": 3.2, "level_dbfs": -31.5, "values": [...]}`` every
  ``POSTERIOR_INTERVAL_S`` of audio: smoothed posteriors, one per label; ``t`` is
  seconds of audio the model has heard; ``level_dbfs`` the loudest block since the
  last such message;
* ``{"type": "event", "keyword": "yes", "start_s": 1.1, "end_s": 2.1, "score": 0.97}``.

A protocol error (no hello within 10 s included) closes the socket with code 1008
(policy violation) and a reason that names the problem; a frame over 64 KiB with
1009 (message too big); a full server with 1013 (try again later).

Every client has its own detector, resampler and state, so it only ever gets its
own events. Memory per client is bounded: websockets buffers at most ``MAX_QUEUE``
incoming frames of 64 KiB (then TCP pushes back on the client), the handler works on
one frame at a time, and a client that leaves our replies unread for
``SEND_TIMEOUT_S`` is dropped. The model runs in a thread pool so that one busy
client never stalls the event loop that serves the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from kws.demo import AudioPipeline, DetectorFactory

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
MAX_FRAME_BYTES = 64 * 1024
#: incoming frames websockets buffers per client before it stops reading the socket
MAX_QUEUE = 8
FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}
MIN_RATE, MAX_RATE = 8000, 192000
HELLO_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 2.0
POSTERIOR_INTERVAL_S = 0.2
#: longest close reason the protocol allows (125-byte payload less the 2-byte code)
MAX_REASON_BYTES = 123


class ProtocolError(Exception):
    """A client broke the protocol; the message is the close reason it gets."""


class StalledClient(Exception):
    """A client stopped reading: it would never take a close frame off the socket either."""


@dataclass(frozen=True)
class Hello:
    sample_rate: int
    format: str


def parse_hello(message: str | bytes) -> Hello:
    """The client's first message, checked field by field."""
    if not isinstance(message, str):
        raise ProtocolError("first send the JSON hello as a text frame, then binary PCM")
    try:
        hello = json.loads(message)
    except json.JSONDecodeError as err:
        raise ProtocolError(f"hello is not JSON ({err.msg} at char {err.pos})") from err
    if not isinstance(hello, dict) or hello.get("type") != "hello":
        raise ProtocolError('hello must be a JSON object with "type": "hello"')
    rate, fmt = hello.get("sample_rate"), hello.get("format")
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise ProtocolError(f"hello sample_rate must be an integer of Hz, got {rate!r}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(f"hello sample_rate {rate} Hz is out of range [{MIN_RATE}, {MAX_RATE}]")
    if fmt not in FORMATS:
        raise ProtocolError(f"hello format must be one of {sorted(FORMATS)}, got {fmt!r}")
    return Hello(rate, fmt)


def decode_pcm(frame: bytes, fmt: str) -> np.ndarray:
    """A binary frame as float32 samples; a partial sample or NaN/Inf is a protocol error."""
    dtype = FORMATS[fmt]
    if len(frame) % dtype.itemsize:
        raise ProtocolError(f"binary frame of {len(frame)} bytes is not a whole number of "
                            f"{fmt} samples ({dtype.itemsize} bytes each)")
    samples = np.frombuffer(frame, dtype=dtype)
    if fmt == "s16le":
        return samples.astype(np.float32) / 32768.0
    audio = samples.astype(np.float32)
    if not np.all(np.isfinite(audio)):
        raise ProtocolError(f"binary frame holds {int(np.sum(~np.isfinite(audio)))} NaN or "
                            "Inf samples")
    return audio


def close_reason(text: str) -> str:
    """``text`` cut to fit a close frame."""
    data = text.encode()
    if len(data) <= MAX_REASON_BYTES:
        return text
    return data[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


def rounded(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


class DemoServer:
    """The page's HTTP files and the ``/ws`` detector endpoint on one port.

    ``await start()`` binds (``port=0`` picks a free port, see ``port``), ``await
    close()`` stops. ``make_detector`` is called once per client.
    """

    def __init__(
        self,
        make_detector: DetectorFactory,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_clients: int = 32,
        workers: int | None = None,
        posterior_interval_s: float = POSTERIOR_INTERVAL_S,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
        send_timeout_s: float = SEND_TIMEOUT_S,
    ):
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients}")
        self.make_detector = make_detector
        self.host, self.requested_port = host, port
        self.max_clients = max_clients
        self.posterior_interval_s = posterior_interval_s
        self.hello_timeout_s, self.send_timeout_s = hello_timeout_s, send_timeout_s
        self.pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1),
                                       thread_name_prefix="kws-detector")
        self.clients: set[ServerConnection] = set()
        #: clients served so far, for logs and tests
        self.served = 0
        self.server: Server | None = None

    async def start(self) -> None:
        self.server = await serve(
            self.handle, self.host, self.requested_port, process_request=self.http,
            max_size=MAX_FRAME_BYTES, max_queue=MAX_QUEUE, close_timeout=CLOSE_TIMEOUT_S,
        )

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("the server is not started")
        return self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """The page's address; a wildcard bind is shown as loopback, which browsers trust."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Serve the page's files; let only same-origin (or non-browser) WebSockets through."""
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            origin = request.headers.get("Origin")
            host = request.headers.get("Host", "")
            if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
                return connection.respond(403, f"cross-origin WebSocket from {origin} refused\n")
            return None
        name = "index.html" if path == "/" else path.lstrip("/")
        file = STATIC / name
        if "/" in name or file.suffix not in CONTENT_TYPES or not file.is_file():
            return connection.respond(404, f"{path}: not found\n")
        body = file.read_bytes()
        headers = Headers([
            ("Content-Type", CONTENT_TYPES[file.suffix]),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ])
        return Response(200, "OK", headers, body)

    async def handle(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        if len(self.clients) >= self.max_clients:
            await self.hang_up(ws, CloseCode.TRY_AGAIN_LATER,
                               f"server busy: {self.max_clients} clients already connected")
            return
        self.clients.add(ws)
        self.served += 1
        try:
            await self.session(ws)
            log.info("client %s left", peer)
        except ProtocolError as err:
            log.info("client %s broke the protocol: %s", peer, err)
            await self.hang_up(ws, CloseCode.POLICY_VIOLATION, close_reason(str(err)))
        except StalledClient as err:
            log.info("client %s dropped: %s", peer, err)
            ws.transport.abort()
        except ConnectionClosed:
            log.info("client %s went away", peer)
        finally:
            self.clients.discard(ws)

    async def hang_up(self, ws: ServerConnection, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason``; drop the TCP connection if the close is stuck
        (websockets waits for its write buffer to drain, with no time limit)."""
        try:
            await asyncio.wait_for(ws.close(code, reason), CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            ws.transport.abort()

    async def session(self, ws: ServerConnection) -> None:
        try:
            first = await asyncio.wait_for(ws.recv(), self.hello_timeout_s)
        except asyncio.TimeoutError as err:
            raise ProtocolError(f"no hello within {self.hello_timeout_s:g} s") from err
        hello = parse_hello(first)
        loop = asyncio.get_running_loop()
        detector = await loop.run_in_executor(self.pool, self.make_detector)
        pipeline = AudioPipeline(detector, hello.sample_rate)
        thresholds = [None if math.isinf(t) else float(t) for t in detector.decoder.thresholds]
        await self.send(ws, {
            "type": "ready", "labels": detector.labels, "thresholds": thresholds,
            "model_rate": detector.sample_rate, "max_frame_bytes": MAX_FRAME_BYTES,
        })
        log.info("client %s connected: %d Hz %s (%d connected)", ws.remote_address,
                 hello.sample_rate, hello.format, len(self.clients))
        interval = self.posterior_interval_s
        next_posteriors, loudest = interval, -math.inf
        async for message in ws:
            if isinstance(message, str):
                raise ProtocolError("after the hello, send only binary PCM frames")
            audio = decode_pcm(message, hello.format)
            events = await loop.run_in_executor(self.pool, pipeline.process, audio)
            loudest = max(loudest, pipeline.level_dbfs)  # the meter shows the peak in between
            for event in events:
                await self.send(ws, {"type": "event", "keyword": event.keyword,
                                     "start_s": rounded(event.start_s),
                                     "end_s": rounded(event.end_s),
                                     "score": rounded(event.score)})
            if detector.time_s >= next_posteriors:
                # on a fixed grid of stream time, so the rate does not depend on frame sizes
                next_posteriors = (math.floor(detector.time_s / interval) + 1) * interval \
                    if interval > 0 else detector.time_s
                await self.send(ws, {
                    "type": "posteriors", "t": rounded(detector.time_s, 3),
                    "level_dbfs": rounded(loudest, 1),
                    "values": [rounded(p, 3) for p in detector.posteriors],
                })
                loudest = -math.inf

    async def send(self, ws: ServerConnection, message: dict[str, Any]) -> None:
        """Send, or give up on a client that has stopped reading (its buffer stays full)."""
        try:
            await asyncio.wait_for(ws.send(json.dumps(message)), self.send_timeout_s)
        except asyncio.TimeoutError as err:
            raise StalledClient(f"read nothing for {self.send_timeout_s:g} s") from err


async def serve_until_cancelled(
    server: DemoServer, on_ready: Callable[[DemoServer], None] | None = None
) -> None:
    """Run ``server`` until this task is cancelled (Ctrl-C under ``asyncio.run``)."""
    await server.start()
    try:
        if on_ready is not None:
            on_ready(server)
        await asyncio.Future()
    finally:
        await server.close()


@contextlib.contextmanager
def serve_in_thread(make_detector: DetectorFactory, **options: Any) -> Iterator[DemoServer]:
    """A running ``DemoServer`` on its own event-loop thread, for tests and notebooks."""
    server = DemoServer(make_detector, **options)
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    task: asyncio.Task[None] | None = None
    errors: list[BaseException] = []

    def run() -> None:
        nonlocal task
        asyncio.set_event_loop(loop)
        task = loop.create_task(serve_until_cancelled(server, lambda _: ready.set()))
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            errors.append(err)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="kws-demo-server", daemon=True)
    thread.start()
    ready.wait()
    if errors:
        raise errors[0]
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=10)
