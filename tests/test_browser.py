"""End to end in headless Chromium: fake microphone -> AudioWorklet -> WebSocket -> server -> page.

Chromium plays a WAV built from real dev clips as its microphone; we drive it over
the DevTools protocol (its remote-debugging WebSocket, spoken with the websockets
package), click Start, wait for the page to list the keywords, and save a
screenshot to artifacts/browser_demo.png.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.sync.client import ClientConnection, connect

from kws.data.audio import load_audio
from kws.demo import StandInBackend, default_model, detector_factory
from kws.demo.server import serve_in_thread

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WORDS = ["yes", "stop", "left"]
CAPTURE_RATE = 48000
GAP_S = 1.5

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.sh)"),
]


def keyword_wav(dev_root: Path, path: Path, clips: dict[str, Path] | None = None) -> None:
    """Silence, then each word's clip (default: its first) and a gap, as 48 kHz int16."""
    pieces = [np.zeros(int(0.5 * CAPTURE_RATE), np.float32)]
    for word in WORDS:
        clip = (clips or {}).get(word) or sorted((dev_root / word).glob("*.wav"))[0]
        audio = load_audio(clip, CAPTURE_RATE)
        pieces += [0.5 * audio / np.abs(audio).max(), np.zeros(int(GAP_S * CAPTURE_RATE))]
    sf.write(path, np.concatenate(pieces).astype(np.float32), CAPTURE_RATE, subtype="PCM_16")


def clips_the_model_hears(dev_root: Path, make_detector, tries: int = 10) -> dict[str, Path]:
    """For each word, the first dev clip the detector finds offline, so that the browser
    test asks of the page only what the model can do on a file."""
    chosen = {}
    for word in WORDS:
        for clip in sorted((dev_root / word).glob("*.wav"))[:tries]:
            audio = load_audio(clip, 16000)
            padded = np.concatenate([np.zeros(8000), 0.5 * audio / np.abs(audio).max(),
                                     np.zeros(24000)]).astype(np.float32)
            if [e.keyword for e in make_detector().process(padded)] == [word]:
                chosen[word] = clip
                break
        else:
            raise AssertionError(f"the model finds '{word}' in none of its first {tries} clips")
    return chosen


class DevTools:
    """The few DevTools-protocol calls the test needs, over one page's WebSocket."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.ids = itertools.count(1)
        self.console: list[str] = []

    def call(self, method: str, **params) -> dict:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value")) for a in reply["params"]["args"]))
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str, gesture: bool = False):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True, userGesture=gesture)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        status = self.evaluate("document.querySelector('#status').textContent")
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; page status: "
                             f"{status!r}; console: {self.console[-5:]}")


def start_chromium(audio: Path, profile: Path, scratch: Path) -> subprocess.Popen:
    """Headless Chromium with a fake microphone playing ``audio`` in a loop, on a closed network.

    Its own temporary directories (the singleton socket's) go in ``scratch``, which the
    caller removes: a short path, since a Unix socket's path must fit in 108 bytes.
    """
    return subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--no-default-browser-check", "--disable-quic",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         f"--use-file-for-fake-audio-capture={audio}",
         "--autoplay-policy=no-user-gesture-required", "--window-size=900,1000",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(scratch)},
    )


def page_socket_url(profile: Path, browser: subprocess.Popen, timeout: float = 20) -> str:
    """The page target's DevTools WebSocket, once Chromium has written its port file."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if browser.poll() is not None:
            raise RuntimeError(f"chromium exited: {browser.stderr.read().decode()[-2000:]}")
        if port_file.is_file() and port_file.read_text().strip():
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise RuntimeError("chromium did not open its DevTools port")


@pytest.fixture
def browser_page(tmp_path) -> Iterator[Callable[[str, Path], DevTools]]:
    """``open(url, audio) -> DevTools`` on a fresh headless Chromium; closed afterwards."""
    with contextlib.ExitStack() as cleanup:

        def open_page(url: str, audio: Path) -> DevTools:
            profile = tmp_path / "profile"
            scratch = Path(tempfile.mkdtemp(prefix="kws-chromium-"))
            cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
            browser = start_chromium(audio, profile, scratch)
            cleanup.callback(stop_process, browser)
            ws = cleanup.enter_context(
                connect(page_socket_url(profile, browser), max_size=64 * 2**20)
            )
            tools = DevTools(ws)
            tools.call("Runtime.enable")
            tools.call("Page.enable")
            tools.call("Page.navigate", url=url)
            loaded = "document.readyState === 'complete' && !!document.querySelector('#start')"
            tools.wait_for(loaded, 10, "the page to load")
            return tools

        yield open_page


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_page(tools: DevTools, timeout: float) -> list[tuple[str, float]]:
    """Click Start, wait until every word of WORDS is listed, screenshot; (keyword, end_s)s."""
    tools.evaluate("document.querySelector('#start').click()", gesture=True)
    items = "[...document.querySelectorAll('#events li')]"
    tools.wait_for(f"{json.dumps(WORDS)}.every(w => {items}.some(li => li.dataset.keyword === w))",
                   timeout, f"the page to list {WORDS}")
    time.sleep(0.3)  # let the bars settle for the screenshot
    ARTIFACTS.mkdir(exist_ok=True)
    shot = tools.call("Page.captureScreenshot", format="png")
    (ARTIFACTS / "browser_demo.png").write_bytes(base64.b64decode(shot["data"]))
    shown = tools.evaluate(f"{items}.map(li => [li.dataset.keyword, Number(li.dataset.end)])")
    return [(word, end) for word, end in reversed(shown)]  # oldest first


def test_page_shows_keywords_with_a_stand_in_detector(dev_root, tmp_path, browser_page):
    """The whole browser path today, before a model ships: loud sounds name the next word."""
    audio = tmp_path / "keywords.wav"
    keyword_wav(dev_root, audio)
    make = detector_factory(StandInBackend(WORDS))
    with serve_in_thread(make, port=0) as server:
        tools = browser_page(server.url, audio)
        shown = run_page(tools, timeout=25)
        status = tools.evaluate("document.body.dataset.state")
        info = tools.evaluate("document.querySelector('#info').textContent")
    assert status == "listening"
    assert re.fullmatch(r"microphone \d+ Hz → model 16000 Hz · 5 labels", info), info
    # one event per clip, in the order the clips play (the file loops: the script cycles) ...
    words = [word for word, _ in shown]
    first = next(i for i in range(len(words)) if words[i : i + 3] == WORDS)
    # ... and spaced as the same detector spaces them on the file itself: the page got the
    # audio whole and in order, through the worklet, the socket and two resamplers
    offline = make().process(load_audio(audio, 16000))
    assert [e.keyword for e in offline] == WORDS
    browser_gaps = np.diff([end for _, end in shown[first : first + 3]])
    offline_gaps = np.diff([e.end_s for e in offline])
    print(f"event gaps: browser {browser_gaps}, offline {offline_gaps}")
    np.testing.assert_allclose(browser_gaps, offline_gaps, atol=0.06)


def test_page_shows_keywords_with_the_shipped_model(dev_root, tmp_path, browser_page):
    """The real thing: the shipped streaming MFCC S4 export hears the clips."""
    try:
        model = default_model()
    except FileNotFoundError as err:
        pytest.skip(f"no shipped model yet: {err}")
    from kws.streaming.backends import open_backend

    make = detector_factory(open_backend(model, copies=2), copies=2)
    audio = tmp_path / "keywords.wav"
    keyword_wav(dev_root, audio, clips_the_model_hears(dev_root, make))
    with serve_in_thread(make, port=0) as server:
        shown = run_page(browser_page(server.url, audio), timeout=28)
    assert set(WORDS) <= {word for word, _ in shown}, shown
