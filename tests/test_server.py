"""``kws serve``: the page's files, the WebSocket protocol, and a server that holds up.

Real WebSocket clients on 127.0.0.1 talk to a real server: in a thread of this
process, or (for the concurrency and memory test) ``kws serve`` in a subprocess,
whose VmRSS we read from /proc. The detector is the loudness stand-in, so the
events each client must get are known: the same pipeline run locally on the same
frames gives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from kws.demo import AudioPipeline, StandInBackend, detector_factory
from kws.demo.server import MAX_FRAME_BYTES, serve_in_thread

WORDS = ["yes", "stop", "left"]
STATIC = Path(__file__).resolve().parents[1] / "kws" / "demo" / "static"


def make_detector(chunk_ms: float = 10.0):
    """A private detector, with a backend of its own: the reference a client is held to."""
    return detector_factory(StandInBackend(WORDS, chunk_ms=chunk_ms))()


def shared_factory(chunk_ms: float = 10.0):
    """What `kws serve` does: one backend, a shallow copy of it per client."""
    return detector_factory(StandInBackend(WORDS, chunk_ms=chunk_ms))


def bursts(starts: list[float], seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    """Silence with a 0.4 s tone at each start time: each tone is one stand-in event."""
    t = np.arange(int(seconds * rate)) / rate
    audio = np.zeros(t.size, dtype=np.float32)
    for start in starts:
        on = (t >= start) & (t < start + 0.4)
        audio[on] = 0.3 * np.sin(2 * np.pi * freq * t[on])
    return audio


def frames_of(audio: np.ndarray, rate: int, fmt: str = "f32le", frame_s: float = 0.05):
    pcm = (np.round(audio * 32767).astype("<i2") if fmt == "s16le" else audio.astype("<f4"))
    step = round(frame_s * rate)
    return [pcm[i : i + step].tobytes() for i in range(0, pcm.size, step)]


def expected_events(frames: list[bytes], rate: int, fmt: str = "f32le",
                    chunk_ms: float = 10.0) -> list[dict]:
    """What the server must say: the same pipeline, run here on the same frames."""
    pipeline = AudioPipeline(make_detector(chunk_ms), rate)
    dtype = "<f4" if fmt == "f32le" else "<i2"
    events = []
    for frame in frames:
        samples = np.frombuffer(frame, dtype=dtype)
        audio = samples.astype(np.float32) / (32768.0 if fmt == "s16le" else 1.0)
        events += pipeline.process(audio)
    return [{"keyword": e.keyword, "end_s": round(e.end_s, 4)} for e in events]


def ws_url(server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def stream(url: str, hello, frames: list[bytes], pace_s: float = 0.0,
                 quiet_s: float = 0.5) -> tuple[list[dict], int | None, str | None]:
    """Send the hello and the frames (``pace_s`` apart), read until the server goes quiet.

    Returns the server's messages and, if it closed the socket, its code and reason.
    """
    messages: list[dict] = []
    async with connect(url, max_size=None) as ws:

        async def read() -> None:
            while True:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), quiet_s)))

        reader = asyncio.create_task(read())
        try:
            if hello is not None:
                await ws.send(hello if isinstance(hello, (str, bytes)) else json.dumps(hello))
            for frame in frames:
                await ws.send(frame)
                if pace_s:
                    await asyncio.sleep(pace_s)
        except ConnectionClosed:
            pass
        with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
            await reader
        if ws.state is State.CLOSED:  # the server closed it
            return messages, ws.close_code, ws.close_reason
        return messages, None, None


def events_in(messages: list[dict]) -> list[dict]:
    return [{"keyword": m["keyword"], "end_s": m["end_s"]} for m in messages
            if m["type"] == "event"]


HELLO = {"type": "hello", "sample_rate": 48000, "format": "f32le"}


@pytest.fixture(scope="module")
def server():
    with serve_in_thread(shared_factory(), port=0, hello_timeout_s=0.5) as running:
        yield running


# -- the page -------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def test_serves_the_page_and_its_scripts(server):
    status, kind, body = get(server.url)
    assert status == 200 and kind.startswith("text/html")
    assert b'<script src="app.js">' in body
    for name in ("app.js", "worklet.js"):
        status, kind, body = get(server.url + name)
        assert status == 200 and kind.startswith("text/javascript")
        assert body == (STATIC / name).read_bytes()
    for missing in ("nope.js", "../server.py", "static/app.js", "%2e%2e/cli.py"):
        assert get(server.url + missing)[0] == 404, missing


def test_page_loads_nothing_from_elsewhere():
    """No CDN, no fonts, no analytics: the page works offline on a closed network."""
    for name in ("index.html", "app.js", "worklet.js"):
        text = (STATIC / name).read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), name
        assert not re.search(r"https?://(?!localhost|127\.0\.0\.1)\w", text), name
        assert "@import" not in text and "url(" not in text, name


def test_cross_origin_websocket_is_refused(server):
    async def attempt():
        async with connect(ws_url(server), origin="http://evil.example"):
            pass

    with pytest.raises(Exception, match="403"):
        asyncio.run(attempt())


# -- the protocol ---------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "fmt"), [(48000, "f32le"), (44100, "s16le"), (16000, "f32le")])
def test_a_client_gets_ready_posteriors_and_its_events(server, rate, fmt):
    audio = bursts([0.5, 2.0, 3.4], 4.5, rate)
    frames = frames_of(audio, rate, fmt)
    messages, code, _ = asyncio.run(
        stream(ws_url(server), {"type": "hello", "sample_rate": rate, "format": fmt}, frames)
    )
    assert code is None  # the server kept the connection open
    ready = messages[0]
    assert ready["type"] == "ready" and ready["model_rate"] == 16000
    assert ready["labels"] == ["_unknown_", "_silence_", *WORDS]
    assert ready["thresholds"] == [None, None, 0.8, 0.8, 0.8]
    events = events_in(messages)
    assert [e["keyword"] for e in events] == WORDS
    assert events == expected_events(frames, rate, fmt)
    # each tone fires within 150 ms of its onset (smoothing, resampler delay)
    assert all(0 < e["end_s"] - s < 0.15 for e, s in zip(events, [0.5, 2.0, 3.4], strict=True))
    posteriors = [m for m in messages if m["type"] == "posteriors"]
    times = np.array([m["t"] for m in posteriors])
    assert len(posteriors) >= 20  # on a grid of 0.2 s of stream time
    assert np.all(np.diff(np.floor(times / 0.2 + 1e-9)) == 1), times
    assert all(len(m["values"]) == 5 and abs(sum(m["values"]) - 1) < 0.01 for m in posteriors)
    # the meter: the loudest block since the last message; a 0.3 sine is -13.5 dBFS
    levels = {int(m["t"] / 0.2 + 1e-9): m["level_dbfs"] for m in posteriors}
    assert -14 < levels[3] < -13 and levels[6] == -100.0  # after 0.5-0.9 s; after 1.0-1.2 s


BAD_HELLOS = [
    ("not json", "hello is not JSON"),
    ("[1, 2]", '"type": "hello"'),
    (json.dumps({"type": "hi", "sample_rate": 48000, "format": "f32le"}), '"type": "hello"'),
    (json.dumps({**HELLO, "sample_rate": "48000"}), "sample_rate must be an integer"),
    (json.dumps({**HELLO, "sample_rate": True}), "sample_rate must be an integer"),
    (json.dumps({**HELLO, "sample_rate": 44100.5}), "sample_rate must be an integer"),
    (json.dumps({**HELLO, "sample_rate": 4000}), "out of range"),
    (json.dumps({**HELLO, "sample_rate": 10**9}), "out of range"),
    (json.dumps({**HELLO, "format": "mp3"}), "format must be one of"),
    (json.dumps({"type": "hello", "sample_rate": 48000}), "format must be one of"),
    (np.zeros(480, "<f4").tobytes(), "first send the JSON hello"),
]


@pytest.mark.parametrize(("hello", "reason"), BAD_HELLOS)
def test_a_bad_hello_closes_with_a_policy_code_and_reason(server, hello, reason):
    messages, code, why = asyncio.run(stream(ws_url(server), hello, []))
    assert messages == []
    assert code == 1008 and reason in why


@pytest.mark.parametrize(("fmt", "frame", "reason"), [
    ("s16le", b"\x00\x01\x02", "not a whole number of s16le samples"),
    ("f32le", b"\x00" * 6, "not a whole number of f32le samples"),
    ("f32le", np.array([0.1, np.nan, np.inf], "<f4").tobytes(), "2 NaN or Inf"),
    ("f32le", "hello again", "only binary PCM frames"),
])
def test_a_bad_frame_closes_with_a_policy_code_and_reason(server, fmt, frame, reason):
    good = np.zeros(4800, "<f4" if fmt == "f32le" else "<i2").tobytes()
    messages, code, why = asyncio.run(
        stream(ws_url(server), {**HELLO, "format": fmt}, [good, frame, good])
    )
    assert messages[0]["type"] == "ready"
    assert code == 1008 and reason in why


def test_no_hello_in_time_closes(server):
    started = time.monotonic()
    messages, code, why = asyncio.run(stream(ws_url(server), None, [], quiet_s=3))
    assert code == 1008 and "no hello within 0.5 s" in why
    assert time.monotonic() - started < 2.5


def test_an_oversized_frame_closes_with_message_too_big(server):
    frames = [np.zeros(MAX_FRAME_BYTES // 4, "<f4").tobytes(),  # exactly at the cap: fine
              np.zeros(MAX_FRAME_BYTES // 4 + 1, "<f4").tobytes()]
    messages, code, why = asyncio.run(stream(ws_url(server), HELLO, frames, pace_s=0.3))
    assert [m["type"] for m in messages] == ["ready", "posteriors"]  # the first was heard
    assert code == 1009 and str(MAX_FRAME_BYTES) in why


def test_clients_that_vanish_mid_stream_leave_nothing_behind(server):
    audio_frames = frames_of(bursts([0.2], 1.0, 48000), 48000)

    async def vanish() -> None:
        ws = await connect(ws_url(server))
        await ws.send(json.dumps(HELLO))
        for frame in audio_frames[:10]:
            await ws.send(frame)
        ws.transport.abort()  # no close frame: the peer is simply gone

    async def vanish_many() -> None:
        await asyncio.gather(*(vanish() for _ in range(8)))

    asyncio.run(vanish_many())
    deadline = time.monotonic() + 5
    while server.clients and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.clients
    frames = frames_of(bursts([0.5], 1.5, 48000), 48000)
    messages, code, _ = asyncio.run(stream(ws_url(server), HELLO, frames))
    assert code is None and [e["keyword"] for e in events_in(messages)] == ["yes"]


def test_a_full_server_turns_clients_away():
    with serve_in_thread(make_detector, port=0, max_clients=2) as small:

        async def three() -> list:
            first = await connect(ws_url(small))
            second = await connect(ws_url(small))
            third = await stream(ws_url(small), HELLO, [], quiet_s=2)
            await first.close()
            await second.close()
            return third

        messages, code, why = asyncio.run(three())
    assert messages == [] and code == 1013 and "2 clients" in why


def test_a_client_that_stops_reading_is_closed():
    """Replies pile up unread: the server gives up on the client instead of buffering forever."""
    with serve_in_thread(make_detector, port=0, posterior_interval_s=0.0,
                         send_timeout_s=0.5) as server:
        # small kernel buffers (accepted sockets inherit the listener's), so that unread
        # replies fill them in a second rather than after megabytes
        sock = socket.socket()
        for end in (server.server.sockets[0], sock):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        sock.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket"
                     f"\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        assert b"101 Switching Protocols" in sock.recv(4096)
        sock.sendall(client_frame(1, json.dumps(HELLO).encode()))
        frame = client_frame(2, np.zeros(480, "<f4").tobytes())  # 10 ms: one reply each
        sock.settimeout(20)  # a timeout would cut a frame in two: it fails the test instead
        closed_after = None
        for sent in range(20000):
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                closed_after = sent
                break
        sock.close()
        assert closed_after is not None, "the server kept a client that reads nothing"
        deadline = time.monotonic() + 5
        while server.clients and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.clients


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (all-zero mask), as RFC 6455 requires of clients."""
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    else:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    return header + b"\x00\x00\x00\x00" + payload


# -- a real ONNX model, one session shared by every client ------------------------------------


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    """An untrained two-layer MFCC LSTM exported for streaming: a real ONNX step model."""
    torch = pytest.importorskip("torch")
    from kws.export.onnx_export import export_spotter
    from kws.features import FeatureConfig
    from kws.models import build_model
    from kws.spotter import KeywordSpotter

    torch.manual_seed(0)
    cfg = FeatureConfig("mfcc")
    labels = ["_unknown_", "_silence_", "yes", "no"]
    model = build_model("lstm", cfg.channels, len(labels), pipeline="mfcc", d_model=16,
                        n_layers=2)
    path = tmp_path_factory.mktemp("export") / "toy_mfcc_lstm_stream.onnx"
    export_spotter(KeywordSpotter(cfg, model, labels).eval(), path, streaming=True)
    return path


def test_clients_sharing_one_onnx_session_keep_their_own_state(onnx_model):
    """Four clients at once on one onnxruntime session: each sees exactly its private run."""
    from kws.streaming.backends import OnnxStepBackend

    make = detector_factory(OnnxStepBackend(onnx_model))
    rng = np.random.default_rng(0)
    plans = []
    for i in range(4):
        audio = bursts([0.3 + 0.4 * i], 2.5, 48000, freq=300 + 200 * i)
        audio += (0.01 * rng.standard_normal(audio.size)).astype(np.float32)
        plans.append(frames_of(audio, 48000))
    with serve_in_thread(make, port=0) as server:

        async def all_at_once():
            return await asyncio.gather(*(stream(ws_url(server), HELLO, frames, quiet_s=1.0)
                                          for frames in plans))

        results = asyncio.run(all_at_once())
    for frames, (messages, code, why) in zip(plans, results, strict=True):
        assert code is None, why
        pipeline = AudioPipeline(make(), 48000)
        private = {}
        for frame in frames:
            pipeline.process(np.frombuffer(frame, "<f4"))
            private[round(pipeline.detector.time_s, 3)] = pipeline.detector.posteriors.copy()
        posteriors = [m for m in messages if m["type"] == "posteriors"]
        assert len(posteriors) >= 10
        for m in posteriors:
            np.testing.assert_allclose(m["values"], private[m["t"]], atol=1e-3)


# -- many clients, through `kws serve` --------------------------------------------------------


def vm_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


def start_kws_serve(*options: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "kws.cli", "serve", "--stand-in", ",".join(WORDS), "--port", "0",
         *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    for line in process.stdout:
        found = re.search(r"open http://127\.0\.0\.1:(\d+)/", line)
        if found:
            return process, int(found.group(1))
    raise AssertionError(f"kws serve did not start: {process.stderr.read()[-2000:]}")


def many_clients(port: int, pid: int, clients: int, seconds: float, speed: float,
                 frame_s: float = 0.05):
    """``clients`` clients, each with its own tones, streaming at ``speed`` x real time at once.

    Returns each client's (tone starts, frames, messages, close code, reason), and the
    VmRSS of process ``pid`` in KiB, sampled every 0.25 s while they stream.
    """
    url = f"ws://127.0.0.1:{port}/ws"
    rate = 48000
    plans = []
    for i in range(clients):
        starts = list(np.arange(0.3 + 0.07 * i, seconds - 0.6, 1.6 + 0.1 * (i % 5)))
        audio = bursts(starts, seconds, rate, 300 + 25 * i)
        plans.append((starts, frames_of(audio, rate, frame_s=frame_s)))
    # warm up with one client, so that lazy imports and first allocations are behind us
    asyncio.run(stream(url, HELLO, frames_of(bursts([0.2], 1, rate), rate)))
    rss: list[int] = []

    async def sample_memory() -> None:
        while True:
            rss.append(vm_rss_kib(pid))
            await asyncio.sleep(0.25)

    async def main():
        sampler = asyncio.create_task(sample_memory())
        results = await asyncio.gather(*(
            stream(url, HELLO, frames, pace_s=frame_s / speed, quiet_s=1.0) for _, frames in plans
        ))
        sampler.cancel()
        return results

    results = asyncio.run(main())
    return [(*plan, *result) for plan, result in zip(plans, results, strict=True)], rss


def check_own_events(starts: list[float], messages: list[dict]) -> None:
    """One event per tone of this client, in script order, within 200 ms of its onset."""
    events = events_in(messages)
    assert [e["keyword"] for e in events] == [WORDS[i % 3] for i in range(len(starts))]
    assert all(0 < e["end_s"] - s < 0.2 for e, s in zip(events, starts, strict=True))


def check_bounded(rss: list[int], what: str, limit_mib: float = 16) -> None:
    """Once every client streams (after the first fifth), memory stays within ``limit_mib``."""
    steady = rss[len(rss) // 5 :]
    growth_mib = (max(steady) - steady[0]) / 1024
    print(f"{what}: VmRSS {rss[0] / 1024:.0f} -> {max(rss) / 1024:.0f} MiB, "
          f"growth while streaming {growth_mib:.1f} MiB")
    assert growth_mib < limit_mib


def test_twenty_clients_stream_at_once_each_getting_only_its_own_events():
    """In this process (its VmRSS includes the clients): 20 x 6 s of audio at 2x real time.

    The stand-in steps every 40 ms here to spare the CPU: this tests the server, not the model.
    """
    with serve_in_thread(shared_factory(40.0), port=0) as server:
        results, rss = many_clients(server.port, os.getpid(), clients=20, seconds=6.0, speed=2.0)
        deadline = time.monotonic() + 5
        while server.clients and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.clients and server.served == 21
    for starts, frames, messages, code, why in results:
        assert code is None, why
        check_own_events(starts, messages)
        # exactly the events of a private pipeline on the same frames: no cross-talk
        assert events_in(messages) == expected_events(frames, 48000, chunk_ms=40.0)
    check_bounded(rss, "20 clients x 6 s at 2x, in process")


@pytest.mark.slow
def test_kws_serve_holds_twenty_clients_for_a_minute_of_audio_each():
    """`kws serve` in a subprocess (VmRSS of the server alone); Ctrl-C ends it cleanly."""
    process, port = start_kws_serve("--chunk-ms", "40")
    try:
        results, rss = many_clients(port, process.pid, clients=20, seconds=60.0, speed=6.0,
                                    frame_s=0.1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
    for starts, _, messages, code, why in results:
        assert code is None, why
        check_own_events(starts, messages)
    check_bounded(rss, "kws serve, 20 clients x 60 s at 6x")
