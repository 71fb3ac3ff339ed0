"""Long-audio detection benchmark: a seeded stream with keywords at known times, and its score.

A keyword spotter that scores 95% on one-second clips can still fire every few
seconds on real audio, so the number that matters for a product is the trade-off
between hits and false alarms per hour on a long stream. ``build_long_stream``
makes one from a Speech Commands folder:

* a background-noise bed: random stretches of ``_background_noise_`` (or, in the
  test-set layout, of the ``_silence_`` clips), each at a random level of
  ``noise_dbfs`` RMS, with 10-ms fades between stretches;
* speech at random gaps of ``gap_s``: keyword clips (the model's keywords, in
  turn, from the chosen split, so test speakers by default) and, a fraction
  ``unknown_fraction`` of the time, clips of other words (the split's, plus those of
  any ``negatives`` folders), each at its recorded level.

A keyword's true interval is its clip's [start, end]. An event says "my window,
[start_s, end_s], holds this keyword", so ``score_events`` counts it as a hit when
its label is right and its window overlaps the true interval widened by
``tolerance_s`` on both sides; each true keyword takes one event. A model may
fire late, while the word is still in its window: that is a hit, and the latency
(event time ``end_s`` minus the clip's end; negative when it fires before the
clip is over) tells how late. Every other event -- a wrong label, a fire on an
unknown word or on noise, a second event for one keyword -- is a false alarm.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kws.data.audio import load_audio
from kws.data.speech_commands import (
    SILENCE,
    UNKNOWN,
    SpeechCommands,
    detect_layout,
    detect_version,
    speaker_of,
    spoken_word_clips,
)
from kws.streaming.backends import NON_KEYWORDS
from kws.streaming.engine import Event, StreamingDetector, decode_trace

FADE_S = 0.01
#: what ``score_events`` says was heard when a false alarm fired on background noise alone
NOISE_WORD = "(noise)"


@dataclass(frozen=True)
class Placement:
    """One clip in the stream: its word, whether the model should fire, and where it is."""

    word: str
    keyword: bool
    start_s: float
    end_s: float
    path: str


@dataclass
class LongStream:
    audio: np.ndarray
    sample_rate: int
    placements: list[Placement]
    seed: int

    @property
    def duration_s(self) -> float:
        return self.audio.size / self.sample_rate

    @property
    def keywords(self) -> list[Placement]:
        return [p for p in self.placements if p.keyword]


def word_of(path: Path, label: str) -> str:
    """The spoken word: the folder name, or the file-name prefix inside ``_unknown_``."""
    return path.name.split("_", 1)[0] if label == UNKNOWN else label


def speech_pools(
    root: str | Path, keywords: Sequence[str], split: str = "test"
) -> tuple[SpeechCommands, dict[str, list[Path]], list[tuple[Path, str]]]:
    """(data, keyword -> clip paths, (path, word) of the other words' clips) of ``split``.

    The whole vocabulary is read (the task with every word of the layout), so that
    words the model does not know are there as distractors.
    """
    root = Path(root)
    layout = detect_layout(root) if root.is_dir() else None
    if layout == "test_set":
        task = "sc12"
    else:
        task = "sc35" if layout and detect_version(root, layout) == "v0.02" else "sc30"
    data = SpeechCommands(root, task)
    by_keyword: dict[str, list[Path]] = {k: [] for k in keywords}
    others = []
    for clip in data.clips(split):
        if clip.label == SILENCE:
            continue
        word = word_of(clip.path, clip.label)
        if word in by_keyword:
            by_keyword[word].append(clip.path)
        else:
            others.append((clip.path, word))
    absent = [k for k, paths in by_keyword.items() if not paths]
    if len(absent) == len(by_keyword):
        raise ValueError(
            f"{root}: none of the model's keywords {list(keywords)} has a clip in the "
            f"{split} split"
        )
    return data, {k: v for k, v in by_keyword.items() if v}, others


def negative_clips(
    roots: Sequence[str | Path], keywords: Sequence[str], exclude_speakers: Sequence[str] = ()
) -> list[tuple[Path, str]]:
    """(path, word) of the clips in more Speech Commands folders whose word is no keyword.

    A test split holds few other words (the dev set's 13 test speakers: 18 clips on a
    30-minute stream), so each is placed many times and one clip that a model takes
    for a keyword makes most of its false alarms. More folders give the stream more
    distinct negatives. Clips of ``exclude_speakers`` (those the model may have
    heard: the main folder's other splits) are left out.
    """
    excluded, out = set(exclude_speakers), []
    for root in roots:
        _, spoken = spoken_word_clips(root, "--negatives")
        found = [(path, word) for path, word in spoken if word not in keywords]
        if not found:
            raise ValueError(f"{root}: no clip of a word other than {list(keywords)} "
                             "(--negatives)")
        kept = [(path, word) for path, word in found if speaker_of(path.name) not in excluded]
        if not kept:
            raise ValueError(f"{root}: no clip of a word other than {list(keywords)} by a "
                             f"speaker the model has not heard ({len(found)} such clips, all "
                             "of speakers in the main data's other splits)")
        out += kept
    return out


def noise_bed(
    noises: list[np.ndarray], samples: int, rate: int, rng: np.random.Generator,
    noise_dbfs: tuple[float, float], stretch_s: tuple[float, float] = (2.0, 8.0),
) -> np.ndarray:
    """``samples`` of background noise: random stretches at random levels, faded together."""
    usable = [n for n in noises if n.size > FADE_S * rate * 4 and np.any(n)]
    if not usable:
        raise ValueError("no background noise with any signal to build the stream from")
    bed = np.zeros(samples, np.float32)
    fade = round(FADE_S * rate)
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    pos = 0
    while pos < samples:
        source = usable[int(rng.integers(len(usable)))]
        length = min(round(rng.uniform(*stretch_s) * rate), source.size, samples - pos)
        offset = int(rng.integers(source.size - length + 1))
        piece = source[offset : offset + length].astype(np.float32)
        rms = float(np.sqrt(np.mean(piece.astype(np.float64) ** 2)))
        if rms > 0:
            piece = piece * (10 ** (rng.uniform(*noise_dbfs) / 20) / rms)
        if length > 2 * fade:
            piece[:fade] *= ramp
            piece[-fade:] *= ramp[::-1]
        bed[pos : pos + length] = piece
        pos += length
    return bed


def build_long_stream(
    root: str | Path,
    keywords: Sequence[str],
    minutes: float,
    seed: int = 0,
    split: str = "test",
    sample_rate: int = 16000,
    gap_s: tuple[float, float] = (1.0, 4.0),
    unknown_fraction: float = 0.3,
    noise_dbfs: tuple[float, float] = (-50.0, -30.0),
    negatives: Sequence[str | Path] = (),
) -> LongStream:
    """A ``minutes``-long stream of noise with clips at known times; see the module docstring.

    ``negatives``: more folders whose other words join the split's (``negative_clips``).
    """
    if not minutes > 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    if not 0 <= unknown_fraction < 1:
        raise ValueError(f"unknown_fraction must be in [0, 1), got {unknown_fraction}")
    if not 0 <= gap_s[0] <= gap_s[1]:
        raise ValueError(f"gap_s must be (low, high) with 0 <= low <= high, got {gap_s}")
    rng = np.random.default_rng(seed)
    data, by_keyword, others = speech_pools(root, keywords, split)
    if negatives:
        if any(Path(folder).resolve() == data.root.resolve() for folder in negatives):
            raise ValueError(f"--negatives: {root} is the stream's own data folder; its "
                             f"{split} split's other words are already in the stream")
        heard = [spk for other, spks in data.speakers().items() if other != split for spk in spks]
        others = others + negative_clips(negatives, keywords, heard)
    samples = round(minutes * 60 * sample_rate)
    audio = noise_bed(data.load_noise(split, sample_rate), samples, sample_rate, rng, noise_dbfs)
    queues: dict[str, list[Path]] = {}
    order = list(by_keyword)
    placements = []
    t = rng.uniform(*gap_s)
    turn = int(rng.integers(len(order)))
    while True:
        if others and rng.random() < unknown_fraction:
            path, word = others[int(rng.integers(len(others)))]
            keyword = False
        else:
            word, keyword = order[turn % len(order)], True
            turn += 1
            if not queues.get(word):  # every clip once, in a fresh order, before any repeats
                queues[word] = [by_keyword[word][i] for i in rng.permutation(len(by_keyword[word]))]
            path = queues[word].pop()
        clip = load_audio(path, sample_rate)
        start = round(t * sample_rate)
        if start + clip.size > samples:
            break
        audio[start : start + clip.size] += clip
        placements.append(Placement(word, keyword, start / sample_rate,
                                    (start + clip.size) / sample_rate, str(path)))
        t = (start + clip.size) / sample_rate + rng.uniform(*gap_s)
    np.clip(audio, -1.0, 1.0, out=audio)
    return LongStream(audio, sample_rate, placements, seed)


def record_long_stream(
    detector: StreamingDetector, root: Path, minutes: float, seed: int, split: str = "test",
    negatives: Sequence[str | Path] = (),
) -> tuple[LongStream, np.ndarray, float]:
    """Build the stream for ``detector``'s keywords, run it once and keep the posteriors:
    (stream, trace, seconds the model took). Every sweep decodes this one trace."""
    if not detector.record:
        raise ValueError("record_long_stream needs a detector made with record=True")
    keywords = [label for label, t in zip(detector.labels, detector.decoder.thresholds,
                                          strict=True) if t <= 1]
    stream = build_long_stream(root, keywords, minutes, seed, split, detector.sample_rate,
                               negatives=negatives)
    started = time.perf_counter()
    detector.process(stream.audio, block=detector.chunk_samples)
    return stream, detector.trace(), time.perf_counter() - started


def score_events(
    events: Sequence[Event],
    placements: Sequence[Placement],
    duration_s: float,
    tolerance_s: float = 0.25,
) -> dict[str, Any]:
    """Hit rate, false alarms per hour and latency of ``events`` against the true keywords.

    False alarms are also split by what was playing when they fired: another
    keyword (``wrong_keyword``), the same keyword already hit (``repeat``), a word
    the model should ignore (``other_word``), or only noise (``noise``); and, in
    ``false_alarm_words``, by the keyword fired and the word heard (the one of that
    kind that overlaps the event's window most, or ``NOISE_WORD``), which says what
    more negative data or a better model has to tell apart. ``false_alarm_clips``
    counts the distinct clips they fired on: a stream places each clip many times.
    """
    truths = sorted((p for p in placements if p.keyword), key=lambda p: p.start_s)
    matched = [False] * len(truths)
    latencies = []
    causes = {"wrong_keyword": 0, "repeat": 0, "other_word": 0, "noise": 0}
    heard: dict[str, Counter[str]] = {}
    alarm_clips: set[str] = set()

    def overlaps(p: Placement, event: Event) -> bool:
        return event.start_s <= p.end_s + tolerance_s and event.end_s >= p.start_s - tolerance_s

    def most_overlapping(candidates: list[Placement], event: Event) -> Placement:
        return max(candidates, key=lambda p: min(p.end_s, event.end_s)
                   - max(p.start_s, event.start_s))

    for event in sorted(events, key=lambda e: e.end_s):
        hit = next((i for i, truth in enumerate(truths) if not matched[i]
                    and truth.word == event.keyword and overlaps(truth, event)), None)
        if hit is not None:
            matched[hit] = True
            latencies.append(event.end_s - truths[hit].end_s)
            continue
        playing = [p for p in placements if overlaps(p, event)]
        keywords_playing = [p for p in playing if p.keyword]
        if any(p.word == event.keyword for p in keywords_playing):
            cause, source = "repeat", next(p for p in keywords_playing
                                           if p.word == event.keyword)
        elif keywords_playing:
            cause, source = "wrong_keyword", most_overlapping(keywords_playing, event)
        elif playing:
            cause, source = "other_word", most_overlapping(playing, event)
        else:
            cause, source = "noise", None
        word = NOISE_WORD if source is None else source.word
        if source is not None:
            alarm_clips.add(source.path)
        causes[cause] += 1
        heard.setdefault(event.keyword, Counter())[word] += 1
    hours = duration_s / 3600
    per_word: dict[str, list[int]] = {}
    for truth, hit in zip(truths, matched, strict=True):
        counts = per_word.setdefault(truth.word, [0, 0])
        counts[0] += hit
        counts[1] += 1
    false_alarms = sum(causes.values())
    return {
        "keywords": len(truths),
        "hits": int(sum(matched)),
        "hit_rate": float(np.mean(matched)) if truths else float("nan"),
        "false_alarms": false_alarms,
        "false_alarms_per_hour": false_alarms / hours if hours else float("nan"),
        "false_alarm_causes": causes,
        "false_alarm_words": {kw: dict(words.most_common()) for kw, words in sorted(heard.items())},
        "false_alarm_clips": len(alarm_clips),
        "latency_median_s": float(np.median(latencies)) if latencies else None,
        "latency_p90_s": float(np.percentile(latencies, 90)) if latencies else None,
        "hit_rate_per_keyword": {w: h / n for w, (h, n) in sorted(per_word.items())},
    }


#: false alarms per hour at which ``best_within`` reads a threshold sweep
FA_BUDGETS = (0.0, 1.0, 4.0, 10.0, 20.0, 50.0)


def best_within(results: Sequence[dict[str, Any]], budgets: Sequence[float] = FA_BUDGETS
                ) -> list[dict[str, Any]]:
    """Per false-alarm budget, the swept threshold with the most hits within it (on ties the
    fewest false alarms, then the lowest threshold), or None where no threshold keeps to
    the budget. This is how a sweep on the test stream reads as a curve; it picks the
    threshold by looking at the test, so it bounds what a deployed spotter gets (see
    ``calibrate_thresholds``)."""
    swept = [r for r in results if r.get("threshold") is not None]
    out = []
    for budget in budgets:
        within = [r for r in swept if r["false_alarms_per_hour"] <= budget]
        best = max(within, default=None, key=lambda r: (
            r["hit_rate"], -r["false_alarms_per_hour"], -r["threshold"]))
        out.append({"fa_per_hour_at_most": budget,
                    "threshold": None if best is None else best["threshold"],
                    "hit_rate": None if best is None else best["hit_rate"],
                    "false_alarms_per_hour": None if best is None
                    else best["false_alarms_per_hour"],
                    "latency_median_s": None if best is None else best.get("latency_median_s")})
    return out


#: thresholds tried by ``calibrate_thresholds`` and ``operating_curve``, low to high
CALIBRATION_GRID = tuple(np.round(np.arange(0.30, 0.995, 0.005), 3)) + (0.995, 0.999)
#: ``operating_curve``'s thresholds: the calibration grid, then on towards 1 in steps of a
#: quarter decade of 1 - threshold, for models trained without label smoothing, whose
#: confident posteriors come within 1e-4 of it
CURVE_GRID = tuple(sorted(set(CALIBRATION_GRID) | {
    round(1 - 10 ** (-k / 4), 6) for k in range(10, 21)}))
#: how reports describe CURVE_GRID
CURVE_GRID_TEXT = ("one threshold for all keywords, 0.3 to 0.99 in steps of 0.005, then up to "
                   "0.99999")


def operating_curve(
    trace: np.ndarray,
    labels: Sequence[str],
    chunk_s: float,
    window_s: float,
    placements: Sequence[Placement],
    duration_s: float,
    tolerance_s: float = 0.25,
    grid: Sequence[float] = CURVE_GRID,
    budgets: Sequence[float] = FA_BUDGETS,
    **decoder_options: Any,
) -> list[dict[str, Any]]:
    """``best_within`` over one threshold for all keywords swept over ``CURVE_GRID``.

    A coarse sweep misreads the curve: with label smoothing 0.1 over 12 classes a
    confident posterior sits near 0.908, so most keywords and false alarms peak
    between 0.85 and 0.95, and the whole trade-off lives in a few hundredths.
    """
    return best_within(sweep_thresholds(trace, labels, chunk_s, window_s, placements,
                                        duration_s, grid, tolerance_s, **decoder_options),
                       budgets)


def sweep_thresholds(
    trace: np.ndarray,
    labels: Sequence[str],
    chunk_s: float,
    window_s: float,
    placements: Sequence[Placement],
    duration_s: float,
    thresholds: Sequence[float],
    tolerance_s: float = 0.25,
    **decoder_options: Any,
) -> list[dict[str, Any]]:
    """``score_events`` of the trace decoded at each threshold (one for all keywords)."""
    results = []
    for threshold in thresholds:
        events = decode_trace(trace, list(labels), chunk_s, window_s, threshold=threshold,
                              **decoder_options)
        results.append({"threshold": float(threshold),
                        **score_events(events, placements, duration_s, tolerance_s)})
    return results


def calibrate_thresholds(
    trace: np.ndarray,
    labels: Sequence[str],
    chunk_s: float,
    window_s: float,
    placements: Sequence[Placement],
    duration_s: float,
    target_fa_per_hour: float,
    tolerance_s: float = 0.25,
    grid: Sequence[float] = CALIBRATION_GRID,
    **decoder_options: Any,
) -> dict[str, Any]:
    """Per-keyword thresholds that keep false alarms within a budget on a recorded stream.

    Run it on a stream of held-out speakers that are not the test speakers (``--split
    val``), then score the test stream at the thresholds it returns: one operating
    point chosen without looking at the test, which is what a deployed spotter has.
    The budget is shared equally: each of the K keywords may cause
    ``target_fa_per_hour / K``; a keyword's false alarms are its own events that hit
    nothing, counted with the other keywords switched off. Each keyword gets the
    lowest threshold of ``grid`` within its share (the most hits), or the top of the
    grid, flagged ``met: False``, when none is. The stream's length bounds what can
    be measured: one false alarm in T hours is 1/T per hour.
    """
    if target_fa_per_hour <= 0:
        raise ValueError(f"the false-alarm target must be > 0 per hour, got {target_fa_per_hour}")
    keywords = [label for label in labels if label not in NON_KEYWORDS]
    share = target_fa_per_hour / len(keywords)
    hours = duration_s / 3600
    thresholds, met, false_alarms = {}, {}, {}
    for keyword in keywords:
        others = [label for label in labels if label != keyword]
        for threshold in grid:
            events = decode_trace(trace, list(labels), chunk_s, window_s, threshold=threshold,
                                  ignore=others, **decoder_options)
            score = score_events(events, placements, duration_s, tolerance_s)
            if score["false_alarms"] / hours <= share:
                break
        thresholds[keyword] = float(threshold)
        met[keyword] = bool(score["false_alarms"] / hours <= share)
        false_alarms[keyword] = int(score["false_alarms"])
    return {
        "target_fa_per_hour": target_fa_per_hour,
        "per_keyword_fa_per_hour": share,
        "stream_hours": hours,
        "thresholds": thresholds,
        "met": met,
        "false_alarms": false_alarms,
    }


def stream_summary(stream: LongStream) -> dict[str, Any]:
    """What the stream holds, for the benchmark's JSON."""
    words = [p.word for p in stream.keywords]
    others = [p for p in stream.placements if not p.keyword]
    return {
        "duration_s": stream.duration_s,
        "seed": stream.seed,
        "keywords": len(words),
        "unknown_words": len(others),
        "distinct_keyword_clips": len({p.path for p in stream.keywords}),
        "distinct_other_clips": len({p.path for p in others}),
        "per_keyword": {w: words.count(w) for w in sorted(set(words))},
    }


def placement_dicts(stream: LongStream) -> list[dict[str, Any]]:
    return [asdict(p) for p in stream.placements]
