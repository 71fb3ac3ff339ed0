"""The streaming hot path: what keeps a 10-ms step cheap, checked without timing.

benchmarks/bench_stream.py measures the cost; here we pin down its causes.
``OnnxStepBackend`` runs a step on buffers bound to the session once (no
``session.run``, no new state arrays, no copies of the states), the engine checks
each ``feed`` once rather than each chunk, and neither changes a single number:
the logits equal a plain ``session.run`` caller's bit for bit, on the toy models
and on every shipped streaming export.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from test_streaming import RATE, ScriptedBackend, ToyStep, export_toy

from kws.streaming.backends import OnnxStepBackend
from kws.streaming.engine import StreamingDetector

REPO = Path(__file__).resolve().parents[1]


def shipped_streaming_exports() -> list[Path]:
    found = []
    for path in sorted((REPO / "export").glob("*.onnx")):
        sidecar = path.with_suffix(".json")
        if sidecar.is_file() and json.loads(sidecar.read_text()).get("kind") == "streaming":
            found.append(path)
    return found


@pytest.fixture(scope="module")
def toys(tmp_path_factory) -> dict[str, Path]:
    """The toy step model with a dynamic batch axis (one call for all copies) and without."""
    folder = tmp_path_factory.mktemp("toys")
    return {"batched": export_toy(ToyStep(), folder, "batched"),
            "fixed": export_toy(ToyStep(), folder, "fixed", dynamic=False)}


def buffer_addresses(backend: OnnxStepBackend) -> list[int]:
    """Where the audio, logits and every state buffer of every call live in memory."""
    arrays = [backend._audio, backend._logits]
    arrays += [b for call in backend._calls for buffers in call.buffers for b in buffers]
    return [a.ctypes.data for a in arrays]


@pytest.mark.parametrize("layout", ["batched", "fixed"])
def test_step_runs_bound_buffers_and_never_session_run(toys, layout, rng, monkeypatch):
    backend = OnnxStepBackend(toys[layout], copies=2)
    assert backend.batched == (layout == "batched")
    ran = []
    run_bound = backend.session.run_with_iobinding

    def spy(binding, *args):
        ran.append(binding)
        return run_bound(binding, *args)

    def forbidden(*args, **kwargs):
        raise AssertionError("step must not go through session.run")

    monkeypatch.setattr(backend.session, "run_with_iobinding", spy)
    monkeypatch.setattr(backend.session, "run", forbidden)
    addresses = buffer_addresses(backend)
    bindings = [b for call in backend._calls for b in call.bindings]
    for n in range(7):
        reads = [call.states for call in backend._calls]
        logits = backend.step((0.3 * rng.standard_normal(160)).astype(np.float32))
        # each call read one buffer set and wrote the other, which the next call reads
        for call, before in zip(backend._calls, reads, strict=True):
            assert call.states is call.buffers[(n + 1) % 2] and before is call.buffers[n % 2]
        assert not np.shares_memory(logits, backend._logits)  # the caller may keep it
    assert buffer_addresses(backend) == addresses  # nothing re-allocated
    assert len(ran) == 7 * (1 if layout == "batched" else 2)
    assert all(any(b is made for made in bindings) for b in ran)  # only the bindings made once
    backend.reset(1)  # a scheduled reset writes zeros in place
    assert buffer_addresses(backend) == addresses
    backend.reset()  # a new stream gets new buffers
    assert not set(buffer_addresses(backend)) & set(addresses)


def plain_run_logits(backend: OnnxStepBackend, chunks, copies: int, resets: dict[int, int]):
    """What a caller of plain ``session.run`` gets, one batched call per chunk, states fed back."""
    spec = backend.spec
    states = {s.name: s.zeros(copies) for s in spec.states}
    names = [spec.logits_output] + [s.output for s in spec.states]
    out = []
    for n, chunk in enumerate(chunks):
        if n in resets:
            for s in spec.states:
                np.moveaxis(states[s.name], s.batch_axis, 0)[resets[n]] = 0
        feed = {spec.audio_input: np.tile(chunk, (copies, 1)), **states}
        logits, *nexts = backend.session.run(names, feed)
        states = dict(zip([s.name for s in spec.states], nexts, strict=True))
        out.append(logits)
    return np.array(out), [states[s.name] for s in spec.states]


SHIPPED = shipped_streaming_exports()


@pytest.mark.parametrize("model", SHIPPED or [None], ids=[p.stem for p in SHIPPED] or ["none"])
def test_bound_steps_equal_plain_session_run_bit_for_bit(model, toys, rng):
    """Every shipped streaming export (and the toy): 24 chunks, two copies, resets of each."""
    path = toys["batched"] if model is None else model
    backend = OnnxStepBackend(path, copies=2)
    size = backend.chunk_samples
    chunks = [(0.2 * rng.standard_normal(size)).astype(np.float32) for _ in range(24)]
    resets = {9: 1, 17: 0}
    got = []
    for n, chunk in enumerate(chunks):
        if n in resets:
            backend.reset(resets[n])
        got.append(backend.step(chunk))
    expected, states = plain_run_logits(backend, chunks, 2, resets)
    np.testing.assert_array_equal(np.array(got), expected)
    for mine, theirs in zip(backend.states, states, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert not np.allclose(expected[-1][0], expected[-1][1])  # the copies really differ


def test_fixed_batch_states_come_back_as_one_batch(toys, rng):
    fixed, batched = (OnnxStepBackend(toys[k], copies=3) for k in ("fixed", "batched"))
    for n in range(5):
        if n == 3:
            fixed.reset(2)
            batched.reset(2)
        chunk = (0.3 * rng.standard_normal(160)).astype(np.float32)
        np.testing.assert_array_equal(fixed.step(chunk), batched.step(chunk))
    for a, b in zip(fixed.states, batched.states, strict=True):
        assert a.shape == b.shape and a.shape[0] == 3
        np.testing.assert_array_equal(a, b)
    snapshot = fixed.states
    snapshot[0][...] = 99.0  # a copy: the model's own states are untouched
    assert fixed.states[0].max() < 99.0


def test_shallow_copies_of_a_backend_share_the_session_not_the_buffers(toys, rng):
    """The demo gives each listener ``copy.copy(backend)``: one model, separate streams."""
    original = OnnxStepBackend(toys["batched"], copies=2)
    listener = copy.copy(original)
    listener.set_copies(2)  # what StreamingDetector.reset does
    assert listener.session is original.session
    assert not set(buffer_addresses(listener)) & set(buffer_addresses(original))
    loud, quiet = OnnxStepBackend(toys["batched"], copies=2), OnnxStepBackend(toys["batched"],
                                                                             copies=2)
    for _ in range(5):
        chunk = (0.5 * rng.standard_normal(160)).astype(np.float32)
        np.testing.assert_array_equal(original.step(chunk), loud.step(chunk))
        silent = np.zeros(160, np.float32)
        np.testing.assert_array_equal(listener.step(silent), quiet.step(silent))


class CountingOnnxBackend(OnnxStepBackend):
    checks = 0

    def check_chunk(self, chunk):
        self.checks += 1
        return super().check_chunk(chunk)


class CountingScriptedBackend(ScriptedBackend):
    checks = 0

    def check_chunk(self, chunk):
        self.checks += 1
        return super().check_chunk(chunk)


def test_the_engine_checks_each_feed_once_not_each_chunk(toys):
    backend = CountingOnnxBackend(toys["batched"])
    detector = StreamingDetector(backend)
    detector.feed(np.zeros(RATE, np.float32))  # 100 chunks
    assert detector.chunks_done == 100 and backend.checks == 0
    with pytest.raises(ValueError, match="1 NaN or Inf"):  # the feed's own check
        detector.feed(np.r_[np.zeros(500), np.nan].astype(np.float32))
    backend.step(np.zeros(160, np.float32))  # a direct caller is still checked
    assert backend.checks == 1
    # a backend without its own step_trusted keeps checking inside step
    scripted = CountingScriptedBackend([])
    StreamingDetector(scripted, reset_period_s=None).feed(np.zeros(RATE, np.float32))
    assert scripted.checks == 100
