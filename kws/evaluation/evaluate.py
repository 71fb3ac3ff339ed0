"""Zero-shot evaluation at resampled rates: one clip set, many sample rates, many checkpoints.

Speech Commands is recorded at 16 kHz. At each rate of the sweep the clips, read
at that native rate, are resampled to the new rate and handed to the spotter
with ``sample_rate=rate``; nothing is retrained or fine-tuned:

* raw-audio S4/S4D gets rate_factor = trained_rate / rate and rescales its step dt;
* TCN and LSTM on raw audio see more (or fewer) samples per second, as they are;
* MFCC pipelines compute their features at the new rate (the MFCC policy below).

MFCC policy: the frontend keeps the analysis window and hop fixed in
milliseconds (25 ms / 10 ms) and the mel band edges fixed in Hz (20 Hz to the
4 kHz upper edge), so at any rate >= 8 kHz it produces 100 frames per second over
the same bands; only the number of samples per window changes. The alternative,
fixed sample counts, would change the frame rate and the bands with the rate and
make every MFCC model fail by construction, which measures nothing about it.

Resamplers: ``sinc`` (librosa's polyphase filter) and ``soxr`` (soxr_hq) are
band-limited and go up or down to any rate. ``decimate`` keeps every k-th sample
with no anti-aliasing filter, as the S4 reference code does for its 8 kHz test;
it exists only for integer ratios below 16 kHz, and the sweep skips (and
records) every other rate instead of inventing a meaning for it.

The report (``kws eval --json``) holds the run (command, data, split, rates,
resampler, mfcc_policy, batch_size, threads, limit, seconds) and one entry per
checkpoint under ``checkpoints``: name, checkpoint, model, pipeline, params, task,
labels, trained_rate, feature_config, rate_policy, split (which clips, by which
rule, speakers checked against the manifest), resampler, command, ``skipped``
(rate, reason) and ``results``, one per rate: sample_rate, rate_factor, accuracy,
accuracy_ci95 (a 95% speaker-bootstrap interval, ``ci_method``),
per_class_accuracy, labels, confusion (rows true, columns predicted, in label
order), n_clips, and seconds (model), feature_seconds (the frontend, shared by
checkpoints with the same feature config) and resample_seconds (shared by all).
An entry alone is what a model card stores as ``metrics.eval`` (see report.py).

Reference (``--reference``). A zero-shot score at 8 kHz mixes two losses: the
information the lower rate removes (everything above 4 kHz) and whatever the
model loses by meeting a new rate (dt rescaled, pools and features at another
step). The reference separates them: the same resampled audio is brought back to
the model's trained rate (by the same resampler; soxr where that is decimate,
which cannot upsample) and scored there, with nothing rescaled. Each result then
also holds ``reference_accuracy`` and ``reference_accuracy_ci95``: what the model
gets from exactly the information the rate carries. Zero-shot accuracy over the
reference is the retention of the zero-shot mechanism itself; the reference over
the trained-rate accuracy is what the band costs this model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kws.data.audio import fix_length, load_audio, resample
from kws.evaluation.options import DEFAULT_RATES, RESAMPLERS, SPLIT_CHOICES

#: Speech Commands' native rate: every swept rate is made from audio read at it
SOURCE_RATE = 16000
MFCC_POLICY = (
    "window and hop fixed in ms (win_ms, hop_ms of the checkpoint's feature_config) and mel "
    "band edges fixed in Hz (f_min to f_max = 4 kHz): at every rate the same 100 frames/s over "
    "the same bands, only the samples per window change"
)

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- rates and resampling -----------------------------------------------------------------


def check_resampler(method: str, orig_rate: int, target_rate: int) -> None:
    """Raise ValueError saying why if ``method`` cannot make ``target_rate`` from ``orig_rate``."""
    if method not in RESAMPLERS:
        raise ValueError(f"unknown resampler {method!r}; choose one of {', '.join(RESAMPLERS)}")
    if method != "decimate" or target_rate == orig_rate:
        return
    if target_rate > orig_rate:
        raise ValueError(
            f"decimate cannot make {target_rate} Hz from {orig_rate} Hz: it only drops "
            "samples; use sinc or soxr to upsample"
        )
    if orig_rate % target_rate:
        raise ValueError(
            f"decimate needs an integer ratio, but {orig_rate}/{target_rate} = "
            f"{orig_rate / target_rate:.4g}; use sinc or soxr for this rate"
        )


def resample_batch(waves: np.ndarray, orig_rate: int, target_rate: int, method: str) -> np.ndarray:
    """(n, T) float32 -> (n, ceil(T * target / orig)) with ``method``; every row independently."""
    check_resampler(method, orig_rate, target_rate)
    if target_rate == orig_rate:
        return np.ascontiguousarray(waves, dtype=np.float32)
    if method == "decimate":
        return np.ascontiguousarray(waves[:, :: orig_rate // target_rate], dtype=np.float32)
    # librosa resamples along the last axis, so a whole batch is one call.
    return np.ascontiguousarray(resample(waves, orig_rate, target_rate, method), dtype=np.float32)


# -- scores -------------------------------------------------------------------------------


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true label, column = predicted label."""
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    if targets.shape != predictions.shape:
        raise ValueError(f"{targets.shape[0]} targets but {predictions.shape[0]} predictions")
    for name, values in (("target", targets), ("prediction", predictions)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"a {name} index is outside 0..{n_classes - 1}")
    flat = np.bincount(targets * n_classes + predictions, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def scores(confusion: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall; None for a class with no clips) and the matrix."""
    per_class = confusion.sum(axis=1)
    total = int(per_class.sum())
    return {
        "accuracy": float(np.trace(confusion) / total) if total else None,
        "per_class_accuracy": {
            label: (float(confusion[i, i] / per_class[i]) if per_class[i] else None)
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion": confusion.astype(int).tolist(),
        "n_clips": total,
    }


#: draws of the speaker bootstrap; its seed is fixed so that a report reproduces exactly
BOOTSTRAP_DRAWS, BOOTSTRAP_SEED = 2000, 0
CI_METHOD = (
    f"95% interval of a speaker bootstrap: {BOOTSTRAP_DRAWS} draws of the test speakers with "
    f"replacement (seed {BOOTSTRAP_SEED}), each scored on all its clips; a clip with no "
    "speaker (_silence_) counts as its own speaker"
)


def speaker_groups(clips: Sequence[Any]) -> np.ndarray:
    """One integer per clip naming its speaker; clips with no speaker get one each."""
    keys = [c.speaker if getattr(c, "speaker", None) else f"#clip{i}" for i, c in enumerate(clips)]
    _, groups = np.unique(keys, return_inverse=True)
    return groups.astype(np.int64)


def speaker_bootstrap_ci(
    correct: np.ndarray, groups: np.ndarray, draws: int = BOOTSTRAP_DRAWS,
    seed: int = BOOTSTRAP_SEED,
) -> list[float] | None:
    """[low, high] 95% interval of accuracy when the speakers, not the clips, are the sample.

    A speaker's clips share a voice and a microphone, so they are not independent:
    with 13 test speakers a clip-level (binomial) interval would be far too narrow.
    Resampling whole speakers says how much the accuracy would move with another
    13. None with fewer than two speakers, where there is nothing to resample.
    """
    correct, groups = np.asarray(correct, dtype=np.float64), np.asarray(groups)
    if correct.shape != groups.shape:
        raise ValueError(f"{correct.shape[0]} answers but {groups.shape[0]} speaker ids")
    n_groups = int(groups.max()) + 1 if groups.size else 0
    if n_groups < 2:
        return None
    hits = np.bincount(groups, weights=correct, minlength=n_groups)
    clips = np.bincount(groups, minlength=n_groups).astype(np.float64)
    picks = np.random.default_rng(seed).integers(0, n_groups, size=(draws, n_groups))
    accuracy = hits[picks].sum(axis=1) / clips[picks].sum(axis=1)
    low, high = np.quantile(accuracy, [0.025, 0.975])
    return [float(low), float(high)]


# -- the sweep ----------------------------------------------------------------------------


@dataclass
class Evaluand:
    """One spotter and the answers it should give for the shared clips."""

    name: str
    #: ``spotter(wave (B, T), sample_rate=rate) -> logits (B, n_classes)``
    spotter: Callable[..., torch.Tensor]
    labels: list[str]
    targets: np.ndarray
    trained_rate: int = SOURCE_RATE
    #: speaker of each clip as an integer (``speaker_groups``), for the accuracy interval
    groups: np.ndarray | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def rate_factor(ev: Evaluand, rate: int) -> float:
    """What the model's dt is multiplied by: the spotter says (1 for MFCC), else trained / rate."""
    spotter_factor = getattr(ev.spotter, "rate_factor", None)
    return float(spotter_factor(rate)) if callable(spotter_factor) else ev.trained_rate / rate


def batch_clips(batch_size: int, rate: int, source_rate: int = SOURCE_RATE) -> int:
    """Clips per batch at ``rate``: ``batch_size`` at the source rate, fewer above it.

    Raw-audio models hold activations per sample, so a batch of 48 kHz clips costs
    three times the memory of 16 kHz ones; shrinking the batch keeps it level.
    """
    return max(1, batch_size * source_rate // max(rate, source_rate))


def frontend_key(spotter: Any) -> Any | None:
    """The feature config of a KeywordSpotter, so spotters that share it share the features.

    MFCC at 44.1 kHz costs several times the model itself; computing it once per
    batch for all MFCC checkpoints of a run divides that cost by their number.
    None for anything that is not frontend + model (it is simply called).
    """
    parts = ("frontend", "model", "feature_config", "rate_factor")
    return spotter.feature_config if all(hasattr(spotter, p) for p in parts) else None


class SharedFeatures:
    """One resampled batch and the features computed from it, per frontend config."""

    def __init__(self, wave: torch.Tensor, rate: int):
        self.wave, self.rate = wave, rate
        self.features: dict[Any, torch.Tensor] = {}
        #: seconds spent in frontends for this batch, in all and per frontend config
        self.seconds = 0.0
        self.seconds_by_key: dict[Any, float] = {}

    @torch.inference_mode()
    def logits(self, spotter: Any) -> torch.Tensor:
        """``spotter(wave, sample_rate=rate)``, reusing features another spotter computed."""
        key = frontend_key(spotter)
        if key is None:
            return spotter(self.wave, sample_rate=self.rate)
        if key not in self.features:
            t0 = time.perf_counter()
            self.features[key] = spotter.frontend(self.wave, self.rate)
            self.seconds_by_key[key] = time.perf_counter() - t0
            self.seconds += self.seconds_by_key[key]
        # KeywordSpotter.forward, split at the features (test_evaluation checks they agree).
        return spotter.model(self.features[key], spotter.rate_factor(self.rate))


def reference_batch(wave: torch.Tensor, rate: int, trained_rate: int, length: int,
                    resampler: str) -> torch.Tensor:
    """``wave`` at ``rate`` brought back to ``trained_rate`` and ``length`` samples (the reference).

    The way back uses ``resampler``, or soxr where that is decimate (it cannot upsample).
    """
    back = "soxr" if resampler == "decimate" and trained_rate > rate else resampler
    out = fix_length(resample_batch(wave.numpy(), rate, trained_rate, back), length)
    return torch.from_numpy(np.ascontiguousarray(out))


def sweep(
    evaluands: Sequence[Evaluand],
    waves: np.ndarray,
    rates: Sequence[int],
    resampler: str,
    batch_size: int = 64,
    source_rate: int = SOURCE_RATE,
    log: Log = _quiet,
    reference: bool = False,
) -> float:
    """Score every evaluand at every rate; results land in ``evaluand.results``/``.skipped``.

    Each batch of clips is resampled once per rate and fed to every evaluand, so
    checkpoints share the resampling (and the features, where their frontends
    agree). With ``reference`` each evaluand is also scored at its trained rate on
    the same audio brought back there (see the module's notes). Returns the total
    resampling seconds.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    n = waves.shape[0]
    for ev in evaluands:
        if len(ev.targets) != n:
            raise ValueError(f"{ev.name}: {len(ev.targets)} targets for {n} clips")
    total_resample = 0.0
    for rate in rates:
        try:
            check_resampler(resampler, source_rate, rate)
        except ValueError as err:
            log(f"{rate} Hz: skipped ({err})")
            for ev in evaluands:
                ev.skipped.append({"sample_rate": rate, "reason": str(err)})
            continue
        active = list(evaluands)
        predictions = {ev.name: [] for ev in evaluands}
        references: dict[str, list[np.ndarray]] = {ev.name: [] for ev in evaluands}
        seconds = dict.fromkeys(predictions, 0.0)
        resample_seconds, feature_seconds = 0.0, {}
        step = batch_clips(batch_size, rate, source_rate)
        for start in range(0, n, step):
            t0 = time.perf_counter()
            chunk = torch.from_numpy(
                resample_batch(waves[start : start + step], source_rate, rate, resampler)
            )
            resample_seconds += time.perf_counter() - t0
            batch = SharedFeatures(chunk, rate)
            for ev in list(active):
                t0, shared_before = time.perf_counter(), batch.seconds
                try:
                    logits = batch.logits(ev.spotter)
                except ValueError as err:  # e.g. MFCC with f_max above this rate's Nyquist
                    log(f"{rate} Hz: {ev.name} skipped ({err})")
                    ev.skipped.append({"sample_rate": rate, "reason": str(err)})
                    active.remove(ev)
                    continue
                predictions[ev.name].append(logits.argmax(dim=-1).cpu().numpy())
                seconds[ev.name] += time.perf_counter() - t0 - (batch.seconds - shared_before)
            for key, spent in batch.seconds_by_key.items():
                feature_seconds[key] = feature_seconds.get(key, 0.0) + spent
            if reference:
                back: dict[int, SharedFeatures] = {}
                for ev in active:
                    if ev.trained_rate == rate:
                        continue
                    if ev.trained_rate not in back:
                        t0 = time.perf_counter()
                        length = round(waves.shape[1] * ev.trained_rate / source_rate)
                        back[ev.trained_rate] = SharedFeatures(
                            reference_batch(chunk, rate, ev.trained_rate, length, resampler),
                            ev.trained_rate,
                        )
                        resample_seconds += time.perf_counter() - t0
                    logits = back[ev.trained_rate].logits(ev.spotter)
                    references[ev.name].append(logits.argmax(dim=-1).cpu().numpy())
        total_resample += resample_seconds
        for ev in active:
            predicted = np.concatenate(predictions[ev.name]) if n else np.zeros(0, dtype=int)
            features = feature_seconds.get(frontend_key(ev.spotter), 0.0)
            result = {
                "sample_rate": rate,
                "rate_factor": rate_factor(ev, rate),
                **scores(confusion_matrix(ev.targets, predicted, len(ev.labels)), ev.labels),
                "accuracy_ci95": None if ev.groups is None else speaker_bootstrap_ci(
                    predicted == ev.targets, ev.groups
                ),
                "seconds": round(seconds[ev.name], 3),
                "feature_seconds": round(features, 3),
                "resample_seconds": round(resample_seconds, 3),
            }
            if reference:
                # at the trained rate the reference is the same audio at the same rate
                same = ev.trained_rate == rate or not n
                hit = predicted == ev.targets if same else (
                    np.concatenate(references[ev.name]) == ev.targets)
                result["reference_accuracy"] = result["accuracy"] if same else float(hit.mean())
                result["reference_accuracy_ci95"] = (
                    result["accuracy_ci95"] if same or ev.groups is None
                    else speaker_bootstrap_ci(hit, ev.groups)
                )
            ev.results.append(result)
            accuracy = result["accuracy"]
            log(
                f"{rate} Hz: {ev.name} "
                + ("no clips" if accuracy is None else f"{100 * accuracy:.2f}%")
                + (f", {100 * result['reference_accuracy']:.2f}% on the same audio at "
                   f"{ev.trained_rate} Hz" if result.get("reference_accuracy") is not None else "")
                + f" ({seconds[ev.name]:.1f} s model, {features:.1f} s features, "
                f"{resample_seconds:.1f} s resampling)"
            )
    return total_resample


# -- clips --------------------------------------------------------------------------------


@dataclass
class ClipSelection:
    """The clips a checkpoint is scored on, and a JSON-able account of how they were chosen."""

    clips: list[Any]
    split: dict[str, Any]

    #: seconds per clip the spotter takes (clips are padded or cut to it)
    clip_seconds: float = 1.0

    @property
    def key(self) -> tuple:
        """Identity of the clip list, so checkpoints with the same clips share the audio."""
        clips = tuple((str(c.path), c.offset, c.num_samples) for c in self.clips)
        return (self.clip_seconds, clips)


def spread(items: Sequence[Any], limit: int | None) -> list[Any]:
    """At most ``limit`` items, evenly spread over ``items`` (label-ordered: every class stays)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    picks = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[i] for i in picks]


def select_clips(
    meta: dict[str, Any], data_root: str | Path, split: str, limit: int | None = None,
    source: str = "checkpoint",
) -> ClipSelection:
    """The clips of ``split`` for a checkpoint whose ``meta`` holds task, labels and manifest.

    'test' / 'val' / 'train' rebuild the checkpoint's own split with the saved rule
    and refuse if any speaker of this folder sits in another split than the manifest
    says. 'all' takes every clip of the task's folders: any held-out set in the
    official test-set layout, in any format soundfile reads.
    """
    from kws.data.speech_commands import SpeechCommands

    if split not in SPLIT_CHOICES:
        raise ValueError(
            f"--split: unknown split {split!r}; choose one of {', '.join(SPLIT_CHOICES)}"
        )
    task, labels = meta.get("task"), [str(x) for x in meta.get("labels", [])]
    manifest = meta.get("split") or {}
    if split == "all":
        data = SpeechCommands(data_root, task)
    else:
        needed = ("task", "val_percent", "test_percent", "seed", "speakers", "rule")
        lacking = [k for k in needed if k not in manifest]
        if lacking:
            raise ValueError(
                f"{source}: its split manifest lacks {', '.join(lacking)}, so its {split} split "
                "cannot be rebuilt; use --split all to score every clip of the folder"
            )
        data = SpeechCommands(
            data_root, manifest["task"], manifest["val_percent"], manifest["test_percent"],
            manifest["seed"],
        )
        saved = {spk: s for s, spks in manifest["speakers"].items() for spk in spks}
        moved = sorted(
            f"{spk} ({saved[spk]} -> {s})" for s, spks in data.speakers().items() for spk in spks
            if saved.get(spk, s) != s
        )
        if moved:
            raise ValueError(
                f"{source}: the split of {data.root} disagrees with the one the model was "
                f"trained with: {len(moved)} speaker(s) changed split, e.g. "
                f"{', '.join(moved[:3])}; scoring them would leak training speakers"
            )
        if data.rule != manifest["rule"]:
            raise ValueError(
                f"{source}: trained on a split by {manifest['rule']}, but {data.root} splits by "
                f"{data.rule}; evaluate on the data it was trained with, or use --split all"
            )
    if list(data.labels) != labels:
        raise ValueError(
            f"{source}: its labels {labels} are not task {task}'s label order {list(data.labels)}"
        )
    chosen = data.clips(None if split == "all" else split)
    clips = spread(chosen, limit)
    speakers = sorted({c.speaker for c in clips if c.speaker is not None})
    described: dict[str, Any] = {
        "name": split,
        "data": str(data.root),
        "layout": data.layout,
        "version": data.version,
        "rule": "every clip of the folder" if split == "all" else data.rule,
        "n_clips": len(clips),
        "n_speakers": len(speakers),
        "limit": limit,
        "counts": {label: sum(c.label == label for c in clips) for label in labels},
    }
    if data.ignored_folders:
        described["ignored_folders"] = data.ignored_folders
    if split != "all":
        saved = set(manifest["speakers"].get(split, []))
        described["speakers_in_manifest"] = sum(s in saved for s in speakers)
        described["same_clips_as_manifest"] = limit is None and (
            data.counts()[split] == manifest.get("counts", {}).get(split)
        )
        described["verified"] = (
            "no speaker of this folder is in another split than in the checkpoint's manifest"
        )
    return ClipSelection(clips, described)


def load_waveforms(
    clips: Sequence[Any], rate: int = SOURCE_RATE, seconds: float = 1.0
) -> np.ndarray:
    """(n, rate * seconds) float32: every clip read at ``rate``, padded or cut to the length."""
    length = round(rate * seconds)
    waves = np.zeros((len(clips), length), dtype=np.float32)
    for i, clip in enumerate(clips):
        waves[i] = load_audio(
            clip.path, rate, length=length, offset=getattr(clip, "offset", 0),
            frames=getattr(clip, "num_samples", None),
        )
    return waves


# -- checkpoints to a report ----------------------------------------------------------------


def checkpoint_name(path: Path, taken: set[str]) -> str:
    """The file's stem, made unique within one report."""
    name, k = path.stem, 2
    while name in taken:
        name, k = f"{path.stem}_{k}", k + 1
    taken.add(name)
    return name


def n_parameters(spotter: Any) -> int:
    model = getattr(spotter, "model", spotter)
    return int(sum(p.numel() for p in model.parameters()))


def eval_command(
    checkpoints: Sequence[str | Path], data: str | Path, split: str, rates: Sequence[int],
    resampler: str, json_path: str | Path | None = None, limit: int | None = None,
    reference: bool = False,
) -> str:
    """The ``kws eval`` command line that reproduces a result."""
    import shlex

    parts = ["kws", "eval", *map(str, checkpoints), "--data", str(data), "--split", split,
             "--rates", ",".join(map(str, rates)), "--resampler", resampler]
    if reference:
        parts.append("--reference")
    if limit is not None:
        parts += ["--limit", str(limit)]
    if json_path is not None:
        parts += ["--json", str(json_path)]
    return shlex.join(parts)


def evaluate_checkpoints(
    checkpoints: Sequence[str | Path],
    data_root: str | Path,
    split: str = "test",
    rates: Sequence[int] = DEFAULT_RATES,
    resampler: str = "soxr",
    batch_size: int = 64,
    limit: int | None = None,
    json_path: str | Path | None = None,
    log: Log = _quiet,
    reference: bool = False,
) -> dict[str, Any]:
    """Load each checkpoint, score it at every rate, and return the report (see the JSON schema).

    Checkpoints whose clip lists coincide (same task and split) share one read of
    the audio and one resampling per rate.
    """
    from kws.training.checkpoint import load_spotter

    started = time.perf_counter()
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise FileNotFoundError(f"--data {data_root}: no such folder")
    rates = list(rates)
    if resampler not in RESAMPLERS:
        raise ValueError(
            f"--resampler: unknown {resampler!r}; choose one of {', '.join(RESAMPLERS)}"
        )
    if not any(_resamplable(resampler, r) for r in rates):
        raise ValueError(
            f"--resampler {resampler} can make none of the rates {rates} from {SOURCE_RATE} Hz "
            "(decimate: integer ratios below it only)"
        )
    entries, groups, taken = [], {}, set()
    for ckpt in checkpoints:
        path = Path(ckpt)
        spotter, meta = load_spotter(path)
        selection = select_clips(meta, data_root, split, limit, source=str(path))
        selection.clip_seconds = float(getattr(spotter, "clip_seconds", 1.0))
        name = checkpoint_name(path, taken)
        trained_rate = int(meta["feature_config"].get("sample_rate", SOURCE_RATE))
        ev = Evaluand(
            name, spotter, list(meta["labels"]),
            np.array([c.label_index for c in selection.clips], dtype=np.int64), trained_rate,
            speaker_groups(selection.clips),
        )
        entry = {
            "name": name,
            "checkpoint": str(path),
            "model": meta["model_config"].get("family"),
            "pipeline": meta["feature_config"].get("kind"),
            "params": n_parameters(spotter),
            "task": meta.get("task"),
            "labels": list(meta["labels"]),
            "trained_rate": trained_rate,
            "feature_config": meta["feature_config"],
            "split": selection.split,
            "resampler": resampler,
            "source_rate": SOURCE_RATE,
            "rate_policy": rate_policy(
                meta["model_config"].get("family"), meta["feature_config"].get("kind"),
                pooled=any(f > 1 for f in meta["model_config"].get("pool") or []),
            ),
            "command": eval_command(
                [path], data_root, split, rates, resampler, json_path, limit, reference
            ),
        }
        entries.append((entry, ev))
        groups.setdefault(selection.key, (selection, []))[1].append(ev)
        log(f"{name}: {entry['model']} on {entry['pipeline']}, {entry['params']:,} parameters, "
            f"{len(selection.clips)} {split} clips")
    resample_seconds = load_seconds = 0.0
    for selection, evaluands in groups.values():
        t0 = time.perf_counter()
        waves = load_waveforms(selection.clips, SOURCE_RATE, selection.clip_seconds)
        load_seconds += time.perf_counter() - t0
        resample_seconds += sweep(
            evaluands, waves, rates, resampler, batch_size, log=log, reference=reference
        )
    for entry, ev in entries:
        entry["results"] = ev.results
        entry["skipped"] = ev.skipped
    import kws

    return {
        "kws_version": kws.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": eval_command(
            checkpoints, data_root, split, rates, resampler, json_path, limit, reference
        ),
        "data": str(data_root),
        "split": split,
        "rates": rates,
        "resampler": resampler,
        "reference": reference,
        "source_rate": SOURCE_RATE,
        "mfcc_policy": MFCC_POLICY,
        "ci_method": CI_METHOD,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "limit": limit,
        "seconds": {
            "total": round(time.perf_counter() - started, 3),
            "load_audio": round(load_seconds, 3),
            "resample": round(resample_seconds, 3),
        },
        "checkpoints": [entry for entry, _ in entries],
    }


def rate_policy(family: str | None, pipeline: str | None, pooled: bool = False) -> str:
    """How this checkpoint meets a new sample rate, in one line for the report."""
    if pipeline == "mfcc":
        return "MFCC at the new rate: " + MFCC_POLICY
    if family in ("s4", "s4d") and pooled:
        return ("raw samples; its pools keep their span of time (area-weighted where that is "
                "not whole samples), and the S4 blocks before the first one that moves the "
                "rate multiply their step dt by trained_rate / rate")
    if family in ("s4", "s4d"):
        return "raw samples; S4 multiplies its step dt by trained_rate / rate"
    pools = ", pools counting samples" if pooled else ""
    return f"raw samples as they are ({family} has no notion of time between samples{pools})"


def _resamplable(method: str, rate: int) -> bool:
    try:
        check_resampler(method, SOURCE_RATE, rate)
    except ValueError:
        return False
    return True


def result_at(entry: dict[str, Any], rate: int) -> dict[str, Any] | None:
    """The result of one checkpoint entry at ``rate``, or None if it was not scored there."""
    for result in entry.get("results", []):
        if result["sample_rate"] == rate:
            return result
    return None
