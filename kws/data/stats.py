"""What is in a Speech Commands folder, and what is wrong with it, before training on it.

Lengths come from the file headers; each file is then decoded once to find what a
header cannot show (no samples, NaN or Inf). One second clips decode at a few
thousand per second, so a 3.6k-clip folder takes a second or two.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kws.data.audio import AudioError, audio_info, load_audio
from kws.data.speech_commands import SPLITS, Clip, SpeechCommands


def _check(clip: Clip, read_samples: bool) -> tuple[int, int]:
    """(frames, rate) of the clip; raises AudioError for anything that would not load."""
    frames, rate, _ = audio_info(clip.path)
    if clip.num_samples is not None:
        frames = min(clip.num_samples, max(frames - clip.offset, 0))
    if frames == 0:
        raise AudioError(clip.path, "zero-length audio (the header holds no samples)")
    if read_samples:
        load_audio(clip.path, None, offset=clip.offset, frames=clip.num_samples)
    return frames, rate


def dataset_stats(
    data: SpeechCommands, on_error: str = "raise", read_samples: bool = True
) -> dict[str, Any]:
    """A JSON-able report: counts, speakers, lengths, problems and noise files.

    ``on_error="raise"`` stops at the first bad file; ``"skip"`` lists every bad file
    under ``problems`` and leaves it out of the counts. ``read_samples=False`` trusts
    the headers (faster, but cannot see NaN samples).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    counts = {s: Counter() for s in SPLITS}
    speakers: dict[str, set[str]] = {s: set() for s in SPLITS}
    lengths: Counter[int] = Counter()
    rates: Counter[int] = Counter()
    problems = []
    for clip in data.clips():
        try:
            frames, rate = _check(clip, read_samples)
        except AudioError as err:
            if on_error == "raise":
                raise
            problems.append({"path": err.path, "label": clip.label, "problem": err.problem})
            continue
        counts[clip.split][clip.label] += 1
        if clip.speaker is not None:
            speakers[clip.split].add(clip.speaker)
        lengths[frames * 10 // rate] += 1  # 0.1 s bins, exact in integers
        rates[rate] += 1
    seen = Counter(spk for spks in speakers.values() for spk in spks)
    overlap = sorted(spk for spk, n in seen.items() if n > 1)
    noise = []
    for path in data.noise_files:
        try:
            frames, rate, _ = audio_info(path)
            noise.append({"name": path.name, "seconds": round(frames / rate, 2),
                          "sample_rate": rate})
        except AudioError as err:
            if on_error == "raise":
                raise
            problems.append({"path": err.path, "label": "noise", "problem": err.problem})
    per_split = {s: {label: counts[s][label] for label in data.labels} for s in SPLITS}
    per_class = {label: sum(per_split[s][label] for s in SPLITS) for label in data.labels}
    return {
        "root": str(data.root),
        "layout": data.layout,
        "version": data.version,
        "task": data.task,
        "labels": list(data.labels),
        "rule": data.rule,
        "val_percent": data.val_percent,
        "test_percent": data.test_percent,
        "seed": data.seed,
        "clips": sum(per_class.values()),
        "classes": sum(1 for n in per_class.values() if n),
        "split_clips": {s: sum(per_split[s].values()) for s in SPLITS},
        "counts": per_split,
        "class_clips": per_class,
        "speakers": {s: len(speakers[s]) for s in SPLITS},
        "speakers_total": len(seen),
        "speaker_overlap": overlap,
        "speakers_disjoint": not overlap,
        "sample_rates": {str(r): n for r, n in sorted(rates.items())},
        # bin start in seconds -> clips of [start, start + 0.1) s
        "length_histogram": {f"{b / 10:.1f}": lengths[b] for b in sorted(lengths)},
        "problems": problems,
        "skipped": len(problems),
        "noise_files": noise,
        "ignored_folders": data.ignored_folders,
    }
