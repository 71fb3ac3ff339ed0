"""The streaming engine: audio of any chunk size in, keyword events out.

``StreamingDetector`` is the one engine behind ``kws stream``, the benchmarks and
the microphone demo. Per model chunk it

1. buffers incoming audio (any size, float or int16) into the model's chunk;
2. runs the backend on R state copies and picks one copy (the reset schedule below);
3. turns its logits into posteriors (softmax) and smooths them with a moving
   average over ``smoothing_ms``;
4. fires an event when a keyword's smoothed posterior crosses its threshold from
   below, outside the refractory period of the previous event;
5. with a ``verifier`` (``kws.streaming.verifier``), holds that event as a candidate
   until a clip model has scored the second of audio ending ``delay_ms`` after it,
   and fires it then only if the verifier agrees.

Events
------
An event fires at the moment of the upward crossing (lowest latency). The model
only tells us that its pooling window -- the last ``window_s`` (1 s) -- holds the
keyword, so an event spans that window: ``end_s`` is the detection time and
``start_s = end_s - window_s``. ``score`` is the smoothed posterior at detection.
After an event no keyword fires for ``refractory_ms`` (one utterance, one event,
even when a confusable keyword rises with it), and a keyword fires again only
after its posterior has fallen below its threshold. ``_unknown_`` and
``_silence_`` never fire.

A decision hold (``hold_ms``, default 0) trades latency for fewer wrong
keywords: the upward crossing only opens a candidate, and the event fires
``hold_ms`` later for whichever keyword peaked highest above its threshold in the
meantime. The models fire before a word ends (a median of 0.2-0.4 s early on the
long-stream benchmark), so the first keyword to cross may be a confusable one
that the rest of the word overrules. Measured (``benchmarks/decoder_settings.py``),
that happens at low thresholds only; at the thresholds a spotter runs at, the
confusions are whole-word ones and the hold changes nothing, hence off by default.

Endless streams: the staggered reset schedule
---------------------------------------------
A model trained on one-second clips always starts from the zero state. On a
stream, plain recurrence carries state forever: a stable SSM forgets old audio,
but nothing in training bounds what an hour of input does to an LSTM cell, a
marginally stable SSM mode, or a counter, and the model never saw a state that
old. Resetting the state makes the question moot, but a reset alone leaves the
next second without a full window of context.

So we run R copies of the state (default 2) through the same model -- one batched
call when the exported batch axis is dynamic -- and reset copy i every P seconds at
offset i * P / R. By default P is the shortest valid period (below): twice the
window for two copies, 2 s for a 1-s model at 10 or 20 ms, 2.1 s at 70 ms. At each
moment we read the posteriors of the youngest copy that has seen at least one full
window since its reset. With R = 2, P = 2 s that copy has seen between 1 and 2 s of
audio: its window is fully covered, at most P - window = 1 s of older audio is in
its state, and the state is bounded by construction. The model's behaviour after an
hour is *exactly* its behaviour after a few seconds: it depends only on the audio
since the last reset. A valid schedule needs P * (1 - 1/R) >= window; the price is R
model steps per chunk. ``reset_period_s=None`` turns it off (plain recurrence, one
copy). ``tests/test_streaming.py`` measures both on an hour of noise: the schedule
keeps the state bounded and the posteriors of a keyword identical, while plain
recurrence lets an unbounded state drift.

Measured with ``kws bench stream`` (10-min streams of the dev data's test
speakers, seeds 0, 1, 2) on a small LSTM-MFCC trained for 12 epochs (67% clip
accuracy): at threshold 0.5 the schedule gave 546, 462, 510 false alarms per
hour against 624, 504, 588 for plain recurrence, at 0.8 it gave 258, 156, 162
against 282, 204, 180, with hit rates within 3 points of each other. Over those
six runs it fired on noise alone twice; plain recurrence did so 14 times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kws.streaming.backends import NON_KEYWORDS, StepBackend, softmax

if TYPE_CHECKING:
    from kws.streaming.verifier import Verifier

DEFAULT_THRESHOLD = 0.8
DEFAULT_SMOOTHING_MS = 100.0
DEFAULT_REFRACTORY_MS = 1000.0
DEFAULT_HOLD_MS = 0.0
#: the reset period the detector picks itself: the shortest valid one (``ResetSchedule``)
AUTO = "auto"
DEFAULT_RESET_PERIOD = AUTO
DEFAULT_COPIES = 2


@dataclass(frozen=True)
class Event:
    """A detected keyword: fired at ``end_s``; ``start_s`` is where the model's window began.

    With a verifier (``kws.streaming.verifier``) ``score`` is the verifier's posterior
    and ``candidate_score`` the detector's; without one ``candidate_score`` is None.
    """

    keyword: str
    start_s: float
    end_s: float
    score: float
    candidate_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if v is not None or k != "candidate_score"}


class ResetSchedule:
    """Which state copies to reset before each chunk, and which copy to read after it.

    Copy i resets every ``period`` chunks at offset ``i * period // copies`` (all copies
    also start fresh at chunk 0). ``pick()`` returns the youngest copy whose age (chunks
    since its reset) covers the window; before any copy does, the oldest.
    """

    def __init__(self, copies: int, period_chunks: int | None, window_chunks: int):
        if period_chunks is not None:
            shortest = period_chunks - math.ceil(period_chunks / copies)
            if copies < 2 or shortest < window_chunks:
                raise ValueError(
                    f"a reset period of {period_chunks} chunks with {copies} copies leaves a "
                    f"copy only {max(shortest, 0)} chunks old when it is read, less than the "
                    f"{window_chunks}-chunk window: use copies >= 2 and reset_period_s >= "
                    "window_s * copies / (copies - 1)"
                )
        self.copies, self.period, self.window = copies, period_chunks, window_chunks
        self.offsets = [i * period_chunks // copies for i in range(copies)] if period_chunks else []
        # a list, not an array: with two copies numpy's per-call cost is all there is
        self._ages = [0] * copies
        self.chunk = 0

    @staticmethod
    def shortest_period(copies: int, window_chunks: int) -> int:
        """The fewest chunks between resets that still leave every read copy a full window."""
        if copies < 2:
            raise ValueError(f"a reset schedule needs copies >= 2, got {copies}")
        period = math.ceil(window_chunks * copies / (copies - 1))
        while period - math.ceil(period / copies) < window_chunks:
            period += 1
        return period

    @property
    def ages(self) -> np.ndarray:
        """Chunks since each copy's last reset."""
        return np.array(self._ages, dtype=np.int64)

    def due(self) -> list[int]:
        """Copies to reset before the next chunk (never at chunk 0: all start fresh)."""
        if self.period is None or self.chunk == 0:
            return []
        return [
            i for i, offset in enumerate(self.offsets)
            if self.chunk >= offset and (self.chunk - offset) % self.period == 0
        ]

    def advance(self, reset: Iterable[int]) -> None:
        """Record one chunk processed after resetting the copies in ``reset``."""
        ages = self._ages
        for i in reset:
            ages[i] = 0
        self._ages = [age + 1 for age in ages]
        self.chunk += 1

    def pick(self) -> int:
        ages = self._ages
        covered = [(age, i) for i, age in enumerate(ages) if age >= self.window]
        if not covered:
            return ages.index(max(ages))  # the first oldest
        return min(covered)[1]  # the youngest, the first of equals


class EventDecoder:
    """Smoothing, per-keyword thresholds, the decision hold and the refractory period, one
    posterior at a time."""

    def __init__(
        self,
        labels: list[str],
        chunk_s: float,
        window_s: float = 1.0,
        threshold: float = DEFAULT_THRESHOLD,
        thresholds: Mapping[str, float] | None = None,
        smoothing_ms: float = DEFAULT_SMOOTHING_MS,
        refractory_ms: float = DEFAULT_REFRACTORY_MS,
        ignore: Iterable[str] = NON_KEYWORDS,
        hold_ms: float = DEFAULT_HOLD_MS,
    ):
        self.labels, self.chunk_s, self.window_s = list(labels), chunk_s, window_s
        self.thresholds = threshold_vector(self.labels, threshold, thresholds, ignore)
        if smoothing_ms < 0 or refractory_ms < 0 or hold_ms < 0:
            raise ValueError(
                f"smoothing_ms, refractory_ms and hold_ms must be >= 0, got {smoothing_ms}, "
                f"{refractory_ms}, {hold_ms}"
            )
        self.smoothing_chunks = max(1, round(smoothing_ms / 1000 / chunk_s))
        self.refractory_s = refractory_ms / 1000
        #: chunks between the crossing that opens a candidate and the event (0: fire at once)
        self.hold_chunks = round(hold_ms / 1000 / chunk_s)
        self.reset()

    def reset(self) -> None:
        self.history = np.zeros((self.smoothing_chunks, len(self.labels)))
        self.seen = 0
        self.smoothed = np.zeros(len(self.labels))
        self.armed = np.ones(len(self.labels), dtype=bool)
        self.quiet_until = -math.inf
        #: the held decision: (label index, best smoothed posterior), or None
        self.candidate: tuple[int, float] | None = None
        self.decide_at = 0

    def update(self, posteriors: np.ndarray, time_s: float) -> Event | None:
        """Add the posteriors that end at ``time_s``; return the event that fires, if any."""
        self.history[self.seen % self.smoothing_chunks] = posteriors
        self.seen += 1
        filled = self.history[: min(self.seen, self.smoothing_chunks)]
        # mean(axis=0) bit for bit, without its Python wrapper
        self.smoothed = np.add.reduce(filled, axis=0) / len(filled)
        above = self.smoothed >= self.thresholds
        rising = above & self.armed
        # a keyword that is above its threshold now must fall below before it fires again
        self.armed = ~above
        if self.candidate is not None:  # holding: the highest keyword above threshold wins
            scores = np.where(above, self.smoothed, -1.0)
            k = int(np.argmax(scores))
            if scores[k] > self.candidate[1]:
                self.candidate = (k, float(scores[k]))
            return self.finish(time_s) if self.seen >= self.decide_at else None
        if not rising.any() or time_s < self.quiet_until:
            return None
        k = int(np.argmax(np.where(rising, self.smoothed, -1.0)))
        self.candidate, self.decide_at = (k, float(self.smoothed[k])), self.seen + self.hold_chunks
        return self.finish(time_s) if self.hold_chunks == 0 else None

    def finish(self, time_s: float) -> Event | None:
        """Decide the held candidate now (its hold is over, or the stream ended)."""
        if self.candidate is None:
            return None
        k, score = self.candidate
        self.candidate = None
        self.quiet_until = time_s + self.refractory_s
        return Event(self.labels[k], max(0.0, time_s - self.window_s), time_s, score)


def threshold_vector(
    labels: list[str],
    threshold: float,
    thresholds: Mapping[str, float] | None,
    ignore: Iterable[str] = NON_KEYWORDS,
) -> np.ndarray:
    """One threshold per label: the default, overridden per keyword; ignored labels never fire."""
    overrides = dict(thresholds or {})
    unknown = sorted(set(overrides) - set(labels))
    if unknown:
        raise ValueError(f"thresholds for unknown keyword(s) {unknown}; the model's labels are "
                         f"{labels}")
    values = np.array([overrides.get(label, threshold) for label in labels], dtype=np.float64)
    bad = [(lab, v) for lab, v in zip(labels, values, strict=True) if not 0.0 < v <= 1.0]
    if bad:
        raise ValueError(f"thresholds must be in (0, 1], got {bad}")
    ignored = np.isin(labels, list(ignore))
    values[ignored] = np.inf
    if ignored.all():
        raise ValueError(f"no keyword can fire: every label of {labels} is ignored")
    return values


def decode_trace(
    posteriors: np.ndarray,
    labels: list[str],
    chunk_s: float,
    window_s: float = 1.0,
    **decoder_options: Any,
) -> list[Event]:
    """The events a detector would fire on a recorded (T, n_classes) posterior trace.

    Used to sweep thresholds over one model run; identical to streaming, vectorised
    except for the hold and refractory rules, which only visit the upward crossings. A
    candidate still held when the trace ends is decided at its last step, as
    ``StreamingDetector.flush`` does.
    """
    decoder = EventDecoder(labels, chunk_s, window_s, **decoder_options)
    n = decoder.smoothing_chunks
    sums = np.cumsum(np.vstack([np.zeros(len(labels)), posteriors]), axis=0)
    steps = np.arange(1, len(posteriors) + 1)
    counts = np.minimum(steps, n)[:, None]
    smoothed = (sums[steps] - sums[steps - counts[:, 0]]) / counts
    above = smoothed >= decoder.thresholds
    rising = above & np.vstack([np.ones((1, len(labels)), bool), ~above[:-1]])
    held = np.where(above, smoothed, -1.0)
    events, quiet_until, busy_until = [], -math.inf, -1
    for t in np.flatnonzero(rising.any(axis=1)):
        if t <= busy_until or (t + 1) * chunk_s < quiet_until:
            continue
        k = int(np.argmax(np.where(rising[t], smoothed[t], -1.0)))
        score = float(smoothed[t, k])
        decided = min(t + decoder.hold_chunks, len(posteriors) - 1)
        if decided > t:  # the first, highest keyword above threshold after the crossing
            window = held[t + 1 : decided + 1]
            step, label = divmod(int(np.argmax(window)), len(labels))
            if window[step, label] > score:
                k, score = label, float(window[step, label])
        time_s = (decided + 1) * chunk_s
        quiet_until, busy_until = time_s + decoder.refractory_s, decided
        events.append(Event(labels[k], max(0.0, time_s - window_s), time_s, score))
    return events


def as_float32(audio: Any, what: str = "audio") -> np.ndarray:
    """Mono audio as float32 in [-1, 1]: int16 is scaled by 1/32768, floats are cast."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"{what} must be mono, shape (samples,), got shape {audio.shape}")
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    if audio.dtype != np.float32:  # float32, the common case, skips the slower dtype test
        if not np.issubdtype(audio.dtype, np.floating):
            raise TypeError(
                f"{what} must be float32/float64 in [-1, 1] or int16 PCM, got dtype {audio.dtype}"
            )
        audio = audio.astype(np.float32)
    if not np.isfinite(audio).all():
        raise ValueError(f"{what} holds {int(np.sum(~np.isfinite(audio)))} NaN or Inf samples")
    return audio


class StreamingDetector:
    """Keyword events from an endless stream of audio chunks of any size.

    ``feed(chunk)`` returns the events that fired in it (and calls ``on_event`` for
    each); ``posteriors`` and ``top(k)`` give the current smoothed posteriors for a
    live display; ``flush()`` pads and runs the last partial chunk at the end of a
    file. With ``record=True`` the raw posteriors of every chunk are kept (``trace()``)
    so that a benchmark can re-decode them at other thresholds.
    """

    def __init__(
        self,
        backend: StepBackend,
        threshold: float = DEFAULT_THRESHOLD,
        thresholds: Mapping[str, float] | None = None,
        smoothing_ms: float = DEFAULT_SMOOTHING_MS,
        refractory_ms: float = DEFAULT_REFRACTORY_MS,
        reset_period_s: float | str | None = DEFAULT_RESET_PERIOD,
        copies: int = DEFAULT_COPIES,
        ignore: Iterable[str] = NON_KEYWORDS,
        on_event: Callable[[Event], None] | None = None,
        record: bool = False,
        hold_ms: float = DEFAULT_HOLD_MS,
        verifier: Verifier | None = None,
    ):
        self.backend = backend
        self.labels = list(backend.labels)
        self.chunk_samples, self.sample_rate = backend.chunk_samples, backend.sample_rate
        self.chunk_s = backend.chunk_s
        self.window_chunks = max(1, round(backend.window_s / self.chunk_s))
        self.decoder = EventDecoder(
            self.labels, self.chunk_s, backend.window_s, threshold, thresholds, smoothing_ms,
            refractory_ms, ignore, hold_ms,
        )
        if reset_period_s is None:
            copies, period = 1, None
        elif reset_period_s == AUTO:
            period = ResetSchedule.shortest_period(copies, self.window_chunks)
        else:
            if reset_period_s <= 0:
                raise ValueError(
                    f"reset_period_s must be > 0, {AUTO!r} or None, got {reset_period_s}"
                )
            period = max(1, round(reset_period_s / self.chunk_s))
        self.copies, self._period = copies, period
        #: seconds between resets of each copy, None for plain recurrence
        self.reset_period_s = None if period is None else period * self.chunk_s
        try:  # validate before touching the backend
            ResetSchedule(copies, period, self.window_chunks)
        except ValueError as err:
            if copies < 2:
                raise
            shortest = ResetSchedule.shortest_period(copies, self.window_chunks) * self.chunk_s
            raise ValueError(f"{err}; for this model that is {shortest:g} s or more, which "
                             f"reset_period_s={AUTO!r} picks") from None
        self.on_event, self.record = on_event, record
        #: the second stage that checks each candidate (``kws.streaming.verifier``), or None
        self.verifier = verifier
        if verifier is not None:
            verifier.check_stream(self.labels, self.sample_rate)
            self._delay_chunks = verifier.delay_chunks(self.chunk_s)
        self.reset()

    def reset(self) -> None:
        """Start a new stream: fresh states, empty buffers, no history."""
        self.backend.set_copies(self.copies)
        self.schedule = ResetSchedule(self.copies, self._period, self.window_chunks)
        self.decoder.reset()
        self.pending = np.zeros(0, dtype=np.float32)
        self.raw_posteriors = np.zeros(len(self.labels))
        self.chunks_done = 0
        self._trace: list[np.ndarray] = []
        #: candidates awaiting the verifier: (event, chunk at which its window ends)
        self._waiting: list[tuple[Event, int]] = []
        #: a ring of the last clip of audio for the verifier's window (zeros before the
        #: stream); ``_ring_at`` is where the next sample goes, so the oldest one is there
        self._ring = np.zeros(self.verifier.scorer.clip_samples if self.verifier else 0,
                              np.float32)
        self._ring_at = 0

    @property
    def time_s(self) -> float:
        """Stream time at the end of the last processed chunk."""
        return self.chunks_done * self.chunk_s

    @property
    def posteriors(self) -> np.ndarray:
        """Current smoothed posteriors, one per label."""
        return self.decoder.smoothed

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The k labels with the highest smoothed posterior, best first, for a live display."""
        order = np.argsort(-self.posteriors)[:k]
        return [(self.labels[i], float(self.posteriors[i])) for i in order]

    def feed(self, audio: Any) -> list[Event]:
        """Buffer ``audio`` (any length, float or int16), run every full chunk, return events."""
        audio = as_float32(audio)
        if self.pending.size:
            audio = np.concatenate([self.pending, audio])
        events = []
        usable = audio.size - audio.size % self.chunk_samples
        for start in range(0, usable, self.chunk_samples):
            event = self._step(audio[start : start + self.chunk_samples])
            if event is not None:
                events.append(event)
        self.pending = audio[usable:].copy()
        return events

    def flush(self) -> list[Event]:
        """End of a file: zero-pad the buffered remainder to a full chunk and run it, then
        decide a candidate that is still held."""
        events = []
        if self.pending.size:
            events = self.feed(np.zeros(self.chunk_samples - self.pending.size, np.float32))
        last = self.decoder.finish(self.time_s)
        if last is not None and self.verifier is not None:
            self._waiting.append((last, self.chunks_done + self._delay_chunks))
            last = None
        if last is not None:
            if self.on_event is not None:
                self.on_event(last)
            events.append(last)
        while self._waiting:  # windows that run past the end are zero-padded
            verified = self._verify_next()
            if verified is not None:
                events.append(verified)
        return events

    def process(self, audio: Any, block: int | None = None) -> list[Event]:
        """All events of a whole recording, fed in ``block``-sample pieces (default: at once)."""
        audio = as_float32(audio)
        block = block or max(audio.size, 1)
        events = []
        for start in range(0, audio.size, block):
            events += self.feed(audio[start : start + block])
        return events + self.flush()

    def trace(self) -> np.ndarray:
        """(chunks, n_classes) raw posteriors recorded so far (``record=True``)."""
        if not self.record:
            raise RuntimeError("this detector was made with record=False; nothing was kept")
        return np.array(self._trace).reshape(-1, len(self.labels))

    def _step(self, chunk: np.ndarray) -> Event | None:
        """One model chunk; ``feed`` has checked the audio, so the backend need not."""
        due = self.schedule.due()
        for copy in due:
            self.backend.reset(copy)
        logits = self.backend.step_trusted(chunk)
        self.schedule.advance(due)
        self.raw_posteriors = softmax(logits[self.schedule.pick()].astype(np.float64))
        if self.record:
            self._trace.append(self.raw_posteriors)
        self.chunks_done += 1
        event = self.decoder.update(self.raw_posteriors, self.time_s)
        if self.verifier is not None:
            self._remember(chunk)
            if event is not None:
                self._waiting.append((event, self.chunks_done + self._delay_chunks))
            # candidates are whole chunks apart, so at most one is due per chunk
            if not self._waiting or self._waiting[0][1] > self.chunks_done:
                return None
            return self._verify_next()
        if event is not None and self.on_event is not None:
            self.on_event(event)
        return event

    def _remember(self, chunk: np.ndarray) -> None:
        """Write ``chunk`` into the ring (two slice copies at most: no per-chunk allocation)."""
        ring, at = self._ring, self._ring_at
        if chunk.size >= ring.size:
            ring[:] = chunk[-ring.size :]
            self._ring_at = 0
            return
        first = min(chunk.size, ring.size - at)
        ring[at : at + first] = chunk[:first]
        ring[: chunk.size - first] = chunk[first:]
        self._ring_at = (at + chunk.size) % ring.size

    @property
    def recent_audio(self) -> np.ndarray:
        """The last clip of audio the detector heard, oldest sample first (verifier only)."""
        return np.concatenate([self._ring[self._ring_at :], self._ring[: self._ring_at]])

    def _verify_next(self) -> Event | None:
        """Score the oldest waiting candidate; the verified event, or None if rejected."""
        candidate, end_chunk = self._waiting.pop(0)
        verifier = self.verifier
        recent = self.recent_audio
        ahead = (end_chunk - self.chunks_done) * self.chunk_samples  # > 0 only in flush
        window = verifier.window(recent, recent.size + ahead)
        score = verifier.keyword_score(verifier.posteriors(window[None])[0], candidate.keyword)
        if score < verifier.threshold:
            return None
        event = verifier.verified(candidate, score, end_chunk, self.chunk_s)
        if self.on_event is not None:
            self.on_event(event)
        return event
