"""Speech Commands on disk: layouts, tasks with fixed label orders, speaker-disjoint splits.

Two official layouts exist and both are read in place:

* the *full archive* (``speech_commands_v0.0X.tar.gz``): one folder per word,
  ``validation_list.txt`` / ``testing_list.txt`` and ``_background_noise_/``;
* the *test-set archive* (``speech_commands_test_set_v0.0X.tar.gz``): the ten
  keywords plus ``_unknown_`` (files named ``<word>_<speaker>_nohash_<n>.wav``) and
  ``_silence_`` (one-second noise cuts named ``NNNN.wav``).

``SpeechCommands`` detects which one it was given, checks that the task's words are
there and turns the folder into ``Clip`` lists per split. ``ClipDataset`` turns a
clip list into fixed-length float32 waveforms for a DataLoader.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from kws.data.audio import AudioError, audio_info, load_audio

SC10 = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
BACKGROUND = "_background_noise_"
V1_WORDS = (
    "bed", "bird", "cat", "dog", "down", "eight", "five", "four", "go", "happy",
    "house", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "wow", "yes", "zero",
)
V2_ONLY_WORDS = ("backward", "follow", "forward", "learn", "visual")
V2_WORDS = tuple(sorted(V1_WORDS + V2_ONLY_WORDS))

#: Label orders are part of a trained model: never reorder, only add new tasks.
TASKS: dict[str, tuple[str, ...]] = {
    "sc10": SC10,
    "sc12": SC10 + (UNKNOWN, SILENCE),
    "sc30": V1_WORDS,
    "sc35": V2_WORDS,
}
SPLITS = ("train", "val", "test")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".aif", ".aiff", ".mp3")
#: Speech Commands clips are one second; silence is cut from the noise files at that length.
CLIP_SECONDS = 1.0
LAYOUT_NAMES = {"full": "full archive", "test_set": "test-set archive"}

# The data set README's ``which_set``: the 2**27 - 1 constant is its MAX_NUM_WAVS_PER_CLASS.
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1
#: the percentages of the official test split: the test-set archives hold these speakers
OFFICIAL_TEST_BAND = (10.0, 20.0)
_NOHASH = re.compile(r"_nohash_.*$")
_SPEAKER = re.compile(r"(?:^|_)([^_]+)_nohash_")


def speaker_of(file_name: str) -> str | None:
    """The speaker id before ``_nohash_`` (a word prefix is dropped); None if there is none."""
    match = _SPEAKER.search(file_name)
    return match.group(1) if match else None


def as_wav_name(file_name: str) -> str:
    """The data set's own name for a clip, whatever audio format this copy of it is in.

    Splits hash speakerless names (``_silence_/0001.wav``) and the official lists
    name ``.wav`` files, so a FLAC or Opus copy (``kws data convert``) splits as
    the original only if both look at the WAV name.
    """
    stem, dot, suffix = file_name.rpartition(".")
    if dot and f".{suffix.lower()}" in AUDIO_SUFFIXES:
        return f"{stem}.wav"
    return file_name


def hash_percent(name: str) -> float:
    """The data set's stable percentage in [0, 100] for a file name or speaker id.

    The name loses its ``_nohash_...`` tail, is SHA-1 hashed, and the hash taken
    modulo 2**27 and scaled by 100 / (2**27 - 1). The modulus is
    MAX_NUM_WAVS_PER_CLASS + 1, as in the README's code: only that reproduces the
    official v0.01 lists (all 13,633 entries agree; modulo 2**27 - 1 disagrees on
    most of them).
    """
    digest = hashlib.sha1(_NOHASH.sub("", name).encode("utf-8")).hexdigest()
    return (int(digest, 16) % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)


def split_for_percent(percent: float, val_percent: float, test_percent: float) -> str:
    if percent < val_percent:
        return "val"
    if percent < val_percent + test_percent:
        return "test"
    return "train"


def which_set(name: str, val_percent: float = 10.0, test_percent: float = 10.0) -> str:
    """'train', 'val' or 'test' for a file name or speaker id, by the data set's own rule.

    A file name counts as its WAV name, as a scan of a converted copy does.
    """
    return split_for_percent(hash_percent(as_wav_name(name)), val_percent, test_percent)


def percent_in_test_band(speaker: str) -> float:
    """A speaker's percentage for splitting *inside* an official test-set archive.

    Those archives hold the speakers that ``which_set`` (10 % / 10 %) put in test,
    whose percentage lies in [10, 20): the plain rule would put all of them in test
    again. Stretching that band to [0, 100) gives a percentage that is again
    uniform and stable.
    """
    low, high = OFFICIAL_TEST_BAND
    return (hash_percent(speaker) - low) * 100.0 / (high - low)


@dataclass(frozen=True)
class Clip:
    """One example: a file (or a cut of one) with its label and split."""

    path: Path
    label: str
    label_index: int
    speaker: str | None
    split: str
    #: first sample of a cut, in the file's own samples (silence cut from a noise file)
    offset: int = 0
    #: length of the cut in the file's own samples; None means the whole file
    num_samples: int | None = None


def audio_files(folder: Path) -> list[Path]:
    """Audio files in ``folder`` by name, so every scan lists clips in the same order."""
    if not folder.is_dir():
        return []
    return sorted(
        (Path(entry.path) for entry in os.scandir(folder)
         if entry.is_file() and entry.name.lower().endswith(AUDIO_SUFFIXES)),
        key=lambda p: p.name,
    )


def detect_layout(root: Path) -> str | None:
    """'test_set' (has _unknown_ or _silence_), 'full' (has word folders), or None."""
    if (root / UNKNOWN).is_dir() or (root / SILENCE).is_dir():
        return "test_set"
    if any((root / word).is_dir() for word in V2_WORDS):
        return "full"
    return None


def detect_version(root: Path, layout: str) -> str:
    """'v0.02' when a word only v0.02 has is present (as a folder or an _unknown_ prefix)."""
    if any((root / word).is_dir() for word in V2_ONLY_WORDS):
        return "v0.02"
    if layout == "test_set":
        prefixes = {f.name.split("_", 1)[0] for f in audio_files(root / UNKNOWN)}
        if prefixes & set(V2_ONLY_WORDS):
            return "v0.02"
        # The v0.01 and v0.02 test sets share their keywords: the folder name decides.
        if "v0.02" in root.name:
            return "v0.02"
    return "v0.01"


def missing_for_task(root: Path, task: str, layout: str) -> list[str]:
    """Folders the task needs that ``root`` lacks (empty when the task can be built)."""
    needed = [w for w in TASKS[task] if w not in (UNKNOWN, SILENCE)]
    if layout == "test_set" and task == "sc12":
        needed += [UNKNOWN, SILENCE]
    missing = [w for w in needed if not (root / w).is_dir()]
    if layout == "full" and task == "sc12" and not audio_files(root / BACKGROUND):
        missing.append(f"{BACKGROUND} (sc12 cuts {SILENCE} from it)")
    return missing


class SpeechCommands:
    """A Speech Commands folder read for one task, split into train / val / test.

    Splits (``rule``): ``official_lists`` -- the ``validation_list.txt`` /
    ``testing_list.txt`` of a full archive, files in neither are train;
    ``speaker_hash`` -- ``which_set`` on the speaker id with ``val_percent`` /
    ``test_percent``, so no speaker is in two splits; ``speaker_hash_test_band`` --
    the same on an official test-set archive, whose speakers all hash into the test
    band, so the band is stretched first (``percent_in_test_band``). Files with no
    speaker (``_silence_/NNNN.wav``) hash on their name. ``seed`` only drives the
    sc12 balancing below; the hash split never depends on it.

    sc12 in a full archive: every word outside SC10 is a candidate ``_unknown_``
    clip. Each split keeps as many unknown clips as its mean keyword count (drawn
    without replacement, seeded), and gets the same number of ``_silence_`` clips:
    one-second cuts at seeded offsets into the noise files. Each noise file is
    divided in time (first train, then val, then test, by the split percentages) so
    that no stretch of noise serves two splits.
    """

    def __init__(
        self,
        root: str | Path,
        task: str = "sc12",
        val_percent: float = 10.0,
        test_percent: float = 10.0,
        seed: int = 0,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such data folder")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if min(val_percent, test_percent) < 0 or val_percent + test_percent >= 100:
            raise ValueError(
                f"val_percent={val_percent} and test_percent={test_percent} must be >= 0 "
                "and sum to less than 100"
            )
        layout = detect_layout(self.root)
        if layout is None:
            inside = sorted(p.name for p in self.root.glob("speech_commands*") if p.is_dir())
            hint = f"; it holds {', '.join(inside)}: point at one of those" if inside else ""
            raise FileNotFoundError(
                f"{self.root}: no Speech Commands layout found (expected word folders such as "
                f"yes/ and no/, or the test set's {UNKNOWN}/ and {SILENCE}/ folders){hint}"
            )
        self.task, self.labels = task, TASKS[task]
        self.layout, self.version = layout, detect_version(self.root, layout)
        self.val_percent, self.test_percent = float(val_percent), float(test_percent)
        self.seed = seed
        missing = missing_for_task(self.root, task, layout)
        if missing:
            hint = " (sc35 is the v0.02 word set; use sc30 for v0.01)" if task == "sc35" else ""
            raise ValueError(
                f"{self.root}: task {task} needs {', '.join(missing)}, not found in this "
                f"{LAYOUT_NAMES[layout]} ({self.version}){hint}"
            )
        self.noise_files = audio_files(self.root / BACKGROUND)
        known = set(V2_WORDS) | {UNKNOWN, SILENCE, BACKGROUND}
        #: folders that are not part of Speech Commands and were not read
        self.ignored_folders = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and p.name not in known
        )
        lists = [self.root / "validation_list.txt", self.root / "testing_list.txt"]
        if layout == "full":
            self.rule = "official_lists" if all(p.is_file() for p in lists) else "speaker_hash"
        else:
            self.rule = "speaker_hash_test_band" if self._in_test_band() else "speaker_hash"
        self._official = {}
        if self.rule == "official_lists":
            for split, path in zip(("val", "test"), lists, strict=True):
                for line in path.read_text().splitlines():
                    if line.strip():
                        self._official[line.strip()] = split
        self._noise_frames: dict[Path, tuple[int, int]] = {}
        self._clips = self._scan_full() if layout == "full" else self._scan_test_set()

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(self._clips[s])}" for s in SPLITS)
        return (
            f"SpeechCommands({str(self.root)!r}, task={self.task!r}: {LAYOUT_NAMES[self.layout]} "
            f"{self.version}, {self.rule}, {counts})"
        )

    def describe(self) -> str:
        """One line naming the layout found, for logs."""
        return f"{self.root}: {LAYOUT_NAMES[self.layout]} {self.version}, split by {self.rule}"

    def clips(self, split: str | None = None) -> list[Clip]:
        """The clips of one split, or of all splits when ``split`` is None."""
        if split is None:
            return [c for s in SPLITS for c in self._clips[s]]
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return list(self._clips[split])

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {label: clips}} in label order."""
        out = {}
        for split in SPLITS:
            per_label = Counter(c.label for c in self._clips[split])
            out[split] = {label: per_label.get(label, 0) for label in self.labels}
        return out

    def speakers(self) -> dict[str, list[str]]:
        """{split: sorted speaker ids}; clips without a speaker (silence) are left out."""
        return {
            s: sorted({c.speaker for c in self._clips[s] if c.speaker is not None}) for s in SPLITS
        }

    def speaker_overlap(self) -> list[str]:
        """Speakers found in more than one split: empty for a sound split."""
        seen = Counter(spk for spks in self.speakers().values() for spk in spks)
        return sorted(spk for spk, n in seen.items() if n > 1)

    def split_manifest(self) -> dict[str, Any]:
        """Everything needed to rebuild and check this split; JSON-able, saved with a model."""
        manifest: dict[str, Any] = {
            "task": self.task,
            "labels": list(self.labels),
            "layout": self.layout,
            "version": self.version,
            "rule": self.rule,
            "val_percent": self.val_percent,
            "test_percent": self.test_percent,
            "seed": self.seed,
            "counts": self.counts(),
            "speakers": self.speakers(),
        }
        if self.rule != "official_lists":
            manifest["hash"] = (
                "p = sha1(speaker id, or the file name as .wav if none) mod 2**27 * 100 "
                "/ (2**27 - 1); "
                + ("for speakers p = (p - 10) * 10 (the official test band stretched); "
                   if self.rule == "speaker_hash_test_band" else "")
                + "p < val_percent -> val, < val_percent + test_percent -> test, else train"
            )
        if self.layout == "full" and self.task == "sc12":
            manifest["sc12"] = {
                "unknown": "per split, as many as the mean keyword count, seeded",
                "silence": f"same count, {CLIP_SECONDS:g} s cuts at seeded offsets",
                "noise_regions": {s: list(self.noise_region(s)) for s in SPLITS},
            }
        return manifest

    @classmethod
    def from_manifest(cls, root: str | Path, manifest: dict[str, Any]) -> SpeechCommands:
        """Rebuild a saved split on ``root`` and fail if any speaker changed split."""
        data = cls(
            root, manifest["task"], manifest["val_percent"], manifest["test_percent"],
            manifest["seed"],
        )
        if list(data.labels) != list(manifest["labels"]):
            raise ValueError(f"{data.root}: the manifest's labels differ from task {data.task}'s")
        saved = {spk: s for s, spks in manifest["speakers"].items() for spk in spks}
        moved = sorted(
            spk for s, spks in data.speakers().items() for spk in spks
            if saved.get(spk, s) != s
        )
        if moved:
            raise ValueError(
                f"{data.root}: {len(moved)} speakers are in another split than in the saved "
                f"manifest (e.g. {', '.join(moved[:5])}); the split rule or the data changed"
            )
        return data

    def noise_region(self, split: str) -> tuple[float, float]:
        """The part of every noise file (as fractions of its length) that ``split`` may use."""
        train_end = 1.0 - (self.val_percent + self.test_percent) / 100.0
        val_end = train_end + self.val_percent / 100.0
        bounds = {"train": (0.0, train_end), "val": (train_end, val_end), "test": (val_end, 1.0)}
        return bounds[split]

    def load_noise(self, split: str = "train", sample_rate: int = 16000) -> list[np.ndarray]:
        """Background noise for augmentation, drawn only from what ``split`` may see.

        With ``_background_noise_``: this split's region of each file. Without it
        (the test-set layout): the ``_silence_`` clips that hash into this split.
        """
        if self.noise_files:
            out = []
            for path in self.noise_files:
                frames, _ = self._noise_info(path)
                start, end = (round(f * frames) for f in self.noise_region(split))
                if end > start:
                    out.append(load_audio(path, sample_rate, offset=start, frames=end - start))
            return out
        return [
            load_audio(f, sample_rate) for f in audio_files(self.root / SILENCE)
            if self._split_of_hash(f.name) == split
        ]

    # -- scanning ---------------------------------------------------------------------

    def _split_of_hash(self, file_name: str) -> str:
        speaker = speaker_of(file_name)
        if speaker is None:
            percent = hash_percent(as_wav_name(file_name))
        elif self.rule == "speaker_hash_test_band":
            percent = percent_in_test_band(speaker)
        else:
            percent = hash_percent(speaker)
        return split_for_percent(percent, self.val_percent, self.test_percent)

    def _in_test_band(self) -> bool:
        """True when every speaker hashes into the official test band: an official test set."""
        low, high = OFFICIAL_TEST_BAND
        names = [f.name for label in self.labels for f in audio_files(self.root / label)]
        speakers = {speaker_of(name) for name in names} - {None}
        return bool(speakers) and all(low <= hash_percent(spk) < high for spk in speakers)

    def _clip(self, path: Path, label: str, split: str, **cut: int) -> Clip:
        return Clip(path, label, self.labels.index(label), speaker_of(path.name), split, **cut)

    def _scan_test_set(self) -> dict[str, list[Clip]]:
        clips: dict[str, list[Clip]] = {s: [] for s in SPLITS}
        for label in self.labels:
            for path in audio_files(self.root / label):
                split = self._split_of_hash(path.name)
                clips[split].append(self._clip(path, label, split))
        return clips

    def _scan_full(self) -> dict[str, list[Clip]]:
        clips: dict[str, list[Clip]] = {s: [] for s in SPLITS}
        unknown: dict[str, list[Clip]] = {s: [] for s in SPLITS}
        for word in V2_WORDS:
            if word in self.labels:
                label, into = word, clips
            elif self.task == "sc12":
                label, into = UNKNOWN, unknown
            else:
                continue
            for path in audio_files(self.root / word):
                if self.rule == "official_lists":
                    split = self._official.get(f"{word}/{as_wav_name(path.name)}", "train")
                else:
                    split = self._split_of_hash(path.name)
                into[split].append(self._clip(path, label, split))
        if self.task == "sc12":
            for index, split in enumerate(SPLITS):
                target = round(len(clips[split]) / len(SC10))
                rng = np.random.default_rng([self.seed, index])
                pool = unknown[split]
                keep = sorted(rng.choice(len(pool), min(target, len(pool)), replace=False))
                clips[split] += [pool[i] for i in keep]
                clips[split] += self._silence_cuts(split, target, rng)
        return clips

    def _noise_info(self, path: Path) -> tuple[int, int]:
        if path not in self._noise_frames:
            frames, rate, _ = audio_info(path)
            self._noise_frames[path] = (frames, rate)
        return self._noise_frames[path]

    def _silence_cuts(self, split: str, count: int, rng: np.random.Generator) -> list[Clip]:
        """``count`` one-second cuts, round-robin over the noise files, in the split's region."""
        regions = []
        for path in self.noise_files:
            frames, rate = self._noise_info(path)
            start, end = (round(f * frames) for f in self.noise_region(split))
            cut = round(CLIP_SECONDS * rate)
            if end - start >= cut:
                regions.append((path, start, end - cut, cut))
        if count and not regions:
            raise ValueError(
                f"{self.root / BACKGROUND}: no noise file has {CLIP_SECONDS:g} s of audio in the "
                f"{split} region {self.noise_region(split)}; cannot cut {SILENCE} clips"
            )
        cuts = []
        for k in range(count):
            path, first, last, cut = regions[k % len(regions)]
            offset = int(rng.integers(first, last + 1))
            cuts.append(self._clip(path, SILENCE, split, offset=offset, num_samples=cut))
        return cuts


def spoken_word_clips(root: str | Path, purpose: str) -> tuple[str, list[tuple[Path, str]]]:
    """(layout, [(path, spoken word)]) of every word clip in a Speech Commands folder.

    Silence and background noise are left out. ``purpose`` names the option that
    asked, for the error when ``root`` is not a Speech Commands folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder ({purpose})")
    layout = detect_layout(root)
    if layout is None:
        raise FileNotFoundError(
            f"{root}: no Speech Commands layout found for {purpose} (expected word "
            f"folders such as yes/ and no/, or the test set's {UNKNOWN}/ folder)"
        )
    if layout == "full":
        sources = [(w, root / w) for w in V2_WORDS]
    else:
        sources = [(w, root / w) for w in SC10] + [(None, root / UNKNOWN)]
    return layout, [(path, word or path.name.split("_", 1)[0])
                    for word, folder in sources for path in audio_files(folder)]


def extra_word_clips(
    root: str | Path, task: str, exclude_speakers: Sequence[str] = ()
) -> tuple[list[Clip], dict[str, Any]]:
    """Every spoken-word clip of another Speech Commands folder, labelled for ``task``.

    For ``data.extra_train``: more training words than the main folder holds (above
    all more other words for ``_unknown_``, the class a stream meets most) while the
    main folder's val and test splits stay as they are. Clips of ``exclude_speakers``
    (the main folder's val and test speakers) are dropped, so held-out speakers stay
    unheard. Words outside the task become ``_unknown_`` where the task has it and
    are skipped where not; all are kept, not balanced. Silence and background noise
    are not taken: a test set's ``_silence_`` clips may be cut from the same noise
    recordings as another folder's ``_background_noise_``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    root = Path(root)
    layout, spoken = spoken_word_clips(root, "data.extra_train")
    labels = TASKS[task]
    excluded = set(exclude_speakers)
    clips, dropped, skipped = [], Counter(), 0
    for path, word in spoken:
        label = word if word in labels else UNKNOWN if UNKNOWN in labels else None
        speaker = speaker_of(path.name)
        if label is None:
            skipped += 1
        elif speaker is None or speaker in excluded:
            dropped[speaker or "(no speaker id)"] += 1
        else:
            clips.append(Clip(path, label, labels.index(label), speaker, "train"))
    if not clips:
        raise ValueError(
            f"{root}: no usable word clips for task {task} in this {LAYOUT_NAMES[layout]} "
            f"({sum(dropped.values())} dropped as held-out or unknown speakers, {skipped} "
            "words outside the task)"
        )
    per_label = Counter(c.label for c in clips)
    info = {
        "root": str(root),
        "layout": layout,
        "version": detect_version(root, layout),
        "counts": {label: per_label.get(label, 0) for label in labels},
        "speakers": sorted({c.speaker for c in clips if c.speaker is not None}),
        "dropped": {"clips": sum(dropped.values()), "speakers": sorted(dropped)},
        "outside_task": skipped,
    }
    return clips, info


def _is_data_root(path: Path, task: str | None) -> bool:
    layout = detect_layout(path) if path.is_dir() else None
    return layout is not None and (task is None or not missing_for_task(path, task, layout))


def find_data_root(explicit: str | Path | None = None, task: str | None = None) -> Path:
    """The Speech Commands folder to use, and the places looked at when there is none.

    Order: ``explicit``; ``$KWS_DATA_DIR``; ``data/`` in the repository; ``../shared/data``
    beside it. Each place may be a data folder itself or hold ``speech_commands*``
    folders (taken in name order). With ``task``, a folder found by searching that
    lacks the task's words is passed over; an explicit data folder is always taken.
    """
    repo = Path(__file__).resolve().parents[2]
    if explicit is not None:
        places = [Path(explicit)]
    else:
        places = [Path(os.environ["KWS_DATA_DIR"])] if os.environ.get("KWS_DATA_DIR") else []
        places += [repo / "data", repo.parent / "shared" / "data"]
    if explicit is not None and _is_data_root(places[0], None):
        return places[0]  # named by the user: SpeechCommands will say what it lacks
    for place in places:
        candidates = [place] + (sorted(place.glob("speech_commands*")) if place.is_dir() else [])
        for candidate in candidates:
            if _is_data_root(candidate, task):
                return candidate
    what = f"with the words of task {task} " if task else ""
    raise FileNotFoundError(
        f"no Speech Commands folder {what}found (looked in {', '.join(map(str, places))}). "
        "Get one with `kws data download --version v0.02 --root data/`, or point "
        "$KWS_DATA_DIR or --root at an unpacked archive"
    )


class Augment(Protocol):
    def __call__(self, audio: np.ndarray, index: int) -> np.ndarray: ...


class ClipDataset(Dataset):
    """Clips as ``(waveform (T,) float32 tensor, label_index)`` of exactly ``clip_seconds``.

    ``on_error="skip"``: a clip that fails to load is recorded in ``bad`` and the next
    clip (index + 1, wrapping) is returned in its place, so the substitute depends only
    on which files are bad. ``validate=True`` loads every clip once up front and drops
    the bad ones, so that indices stay meaningful and ``bad`` is complete from the start
    (a few seconds per 10k clips). With DataLoader workers each worker fills its own
    copy of ``bad``; validate for a count that holds in the main process.
    ``augment(audio, index)`` runs on the loaded clip. An augmenter with preceding
    context (``augment.context`` > 0 samples, see ``kws.data.augment.Augmenter``) gets
    the other clip its draw names, and the example is then that context followed by
    the clip (``augment.context`` + the clip's samples).
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        sample_rate: int = 16000,
        clip_seconds: float = CLIP_SECONDS,
        augment: Augment | None = None,
        on_error: str = "raise",
        validate: bool = False,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if sample_rate <= 0 or clip_seconds <= 0:
            raise ValueError(f"sample_rate and clip_seconds must be > 0, got {sample_rate}, "
                             f"{clip_seconds}")
        self.clips = list(clips)
        self.sample_rate, self.length = sample_rate, round(sample_rate * clip_seconds)
        self.augment, self.on_error = augment, on_error
        #: path -> problem for every clip that failed to load
        self.bad: dict[str, str] = {}
        if validate:
            good = []
            for clip in self.clips:
                try:
                    self.load(clip)
                    good.append(clip)
                except AudioError as err:
                    if on_error == "raise":
                        raise
                    self.bad[err.path] = err.problem
            self.clips = good

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def n_skipped(self) -> int:
        return len(self.bad)

    @property
    def targets(self) -> list[int]:
        """Label index per clip, for samplers and class weights."""
        return [c.label_index for c in self.clips]

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to the augmenter (its draws depend on seed, epoch and index)."""
        if hasattr(self.augment, "set_epoch"):
            self.augment.set_epoch(epoch)

    def load(self, clip: Clip) -> np.ndarray:
        """The clip's audio at the dataset's rate and length, without augmentation."""
        return load_audio(
            clip.path, self.sample_rate, length=self.length, offset=clip.offset,
            frames=clip.num_samples,
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.clips)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} clips")
        index %= n
        for attempt in range(n):
            clip = self.clips[(index + attempt) % n]
            try:
                audio = self.load(clip)
            except AudioError as err:
                if self.on_error == "raise":
                    raise
                self.bad[err.path] = err.problem
                continue
            if getattr(self.augment, "context", 0):
                audio = self.with_context(audio, index)
            elif self.augment is not None:
                audio = self.augment(audio, index)
            return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), clip.label_index
        raise AudioError(self.clips[index].path, f"no clip of the {n} in this dataset loads")

    def with_context(self, audio: np.ndarray, index: int) -> np.ndarray:
        """The augmented clip behind the preceding context that its draw asks for."""
        augment = self.augment
        draw = augment.draw(index, audio.shape[-1])
        word = None
        if draw.context_word is not None:
            other = self.clips[min(int(draw.context_word * len(self.clips)), len(self.clips) - 1)]
            try:
                word = self.load(other)
            except AudioError as err:  # the clip itself is fine: it goes without the word
                if self.on_error == "raise":
                    raise
                self.bad[err.path] = err.problem
        return augment.apply(audio, draw, augment.preceding(draw, word))
