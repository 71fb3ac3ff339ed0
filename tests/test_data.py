"""Speech Commands layouts, tasks, splits, ClipDataset and stats, on tiny synthetic
folders and (when present) on the real clips in ../shared/data."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tone

from kws.cli import main
from kws.data import cli as data_cli
from kws.data.audio import AudioError
from kws.data.speech_commands import (
    BACKGROUND,
    SC10,
    SILENCE,
    SPLITS,
    TASKS,
    UNKNOWN,
    V1_WORDS,
    V2_ONLY_WORDS,
    ClipDataset,
    SpeechCommands,
    extra_word_clips,
    find_data_root,
    hash_percent,
    speaker_of,
    which_set,
)
from kws.data.stats import dataset_stats

RATE = 16000


def speaker_ids(n: int, band: tuple[float, float] | None = None) -> list[str]:
    """n distinct 8-hex speaker ids, optionally only those whose hash lies in ``band``."""
    out, i = [], 0
    while len(out) < n:
        spk = hashlib.md5(str(i).encode()).hexdigest()[:8]
        i += 1
        if band is None or band[0] <= hash_percent(spk) < band[1]:
            out.append(spk)
    return out


def speakers_per_split(n_each: int) -> dict[str, list[str]]:
    """Speakers that the default 10 % / 10 % rule puts in each split, n_each per split."""
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for spk in speaker_ids(50 * n_each):
        split = which_set(spk)
        if len(out[split]) < n_each:
            out[split].append(spk)
    return out


def write(path: Path, seconds: float = 0.2, freq: float = 440.0, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(freq, seconds, rate), rate)
    return path


def make_full(
    root: Path, words=SC10 + ("bed", "cat", "dog"), speakers=None, lists=False, noise=2,
    empty=(),
) -> Path:
    """A full-archive layout: word/<speaker>_nohash_<n>.wav, optional lists and noise.

    Folders in ``empty`` are made with no clips: a layout check needs only the folder,
    and every file costs time on a slow disk.
    """
    speakers = speakers or [s for group in speakers_per_split(2).values() for s in group]
    for word in empty:
        (root / word).mkdir(parents=True, exist_ok=True)
    for word in words:
        for spk in speakers:
            write(root / word / f"{spk}_nohash_0.wav")
    for k in range(noise):
        write(root / BACKGROUND / f"noise_{k}.wav", seconds=12.0, freq=300.0 + 100 * k)
    if lists:
        (root / "validation_list.txt").write_text(f"yes/{speakers[0]}_nohash_0.wav\n")
        (root / "testing_list.txt").write_text(
            f"yes/{speakers[1]}_nohash_0.wav\nno/{speakers[1]}_nohash_0.wav\n"
        )
    return root


def make_test_set(root: Path, speakers=None, n_silence=20, words=SC10) -> Path:
    """A test-set layout: keywords, _unknown_/<word>_<speaker>_nohash_<n>.wav, _silence_/N.wav.

    Clips are written for ``words`` only; the other keyword folders are left empty.
    """
    speakers = speakers or [s for group in speakers_per_split(2).values() for s in group]
    for word in SC10:
        (root / word).mkdir(parents=True, exist_ok=True)
    for spk in speakers:
        for word in words:
            write(root / word / f"{spk}_nohash_0.wav")
        write(root / UNKNOWN / f"bed_{spk}_nohash_1.wav.wav")
    for k in range(n_silence):
        write(root / SILENCE / f"{1000 + k}.wav", seconds=1.0)
    return root


# -- tasks, names, the hash rule ----------------------------------------------------------


def test_task_label_sets():
    assert TASKS["sc10"] == ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
    assert TASKS["sc12"] == TASKS["sc10"] + ("_unknown_", "_silence_")
    assert len(TASKS["sc30"]) == len(set(TASKS["sc30"])) == 30
    assert len(TASKS["sc35"]) == len(set(TASKS["sc35"])) == 35
    assert set(TASKS["sc35"]) - set(TASKS["sc30"]) == set(V2_ONLY_WORDS)
    assert set(SC10) < set(TASKS["sc30"])
    assert list(TASKS["sc30"]) == sorted(TASKS["sc30"]) and list(TASKS["sc35"]) == sorted(
        TASKS["sc35"]
    )
    assert tuple(TASKS) == data_cli.TASK_NAMES


def test_speaker_of_file_names():
    assert speaker_of("0cb74144_nohash_0.wav") == "0cb74144"
    assert speaker_of("backward_0cb74144_nohash_2.wav.wav") == "0cb74144"
    assert speaker_of("1024.wav") is None


def test_which_set_is_stable_and_hashes_the_speaker():
    for spk in speaker_ids(50):
        split = which_set(spk)
        assert which_set(f"{spk}_nohash_3.wav") == split
        assert which_set(f"{spk}_nohash_0.wav") == split
    # Different percentages move the boundaries only: val grows at test's expense.
    assert which_set("0cb74144", 0, 0) == "train"
    assert which_set("0cb74144", 100, 0) == "val"


def test_which_set_gives_the_asked_percentages():
    splits = Counter(which_set(spk, 15, 5) for spk in speaker_ids(20000))
    assert splits["val"] / 20000 == pytest.approx(0.15, abs=0.01)
    assert splits["test"] / 20000 == pytest.approx(0.05, abs=0.01)


# -- full-archive layout -------------------------------------------------------------------


def test_full_layout_with_official_lists(tmp_path):
    speakers = speaker_ids(6)
    root = make_full(tmp_path / "sc", speakers=speakers, lists=True)
    data = SpeechCommands(root, "sc10")
    assert (data.layout, data.version, data.rule) == ("full", "v0.01", "official_lists")
    by_path = {f"{c.path.parent.name}/{c.path.name}": c.split for c in data.clips()}
    assert by_path[f"yes/{speakers[0]}_nohash_0.wav"] == "val"
    assert by_path[f"yes/{speakers[1]}_nohash_0.wav"] == "test"
    assert by_path[f"no/{speakers[1]}_nohash_0.wav"] == "test"
    # Everything not in a list is train, whatever its hash says.
    assert Counter(by_path.values()) == {"train": len(by_path) - 3, "val": 1, "test": 2}
    assert {c.label for c in data.clips()} == set(SC10)  # bed, cat, dog are not in sc10
    assert "official" in data.describe()


def test_full_layout_without_lists_splits_by_speaker(tmp_path):
    groups = speakers_per_split(3)
    root = make_full(tmp_path / "sc", speakers=[s for g in groups.values() for s in g])
    data = SpeechCommands(root, "sc10")
    assert data.rule == "speaker_hash"
    assert data.speakers() == {s: sorted(groups[s]) for s in SPLITS}
    assert data.speaker_overlap() == []
    for clip in data.clips():
        assert clip.split == which_set(clip.speaker)
        assert TASKS["sc10"][clip.label_index] == clip.label


def test_version_detected_from_word_folders(tmp_path):
    root = make_full(tmp_path / "sc", words=SC10 + ("learn",), noise=0)
    assert SpeechCommands(root, "sc10").version == "v0.02"


def test_sc12_in_full_archive_balances_unknown_and_cuts_silence(tmp_path):
    groups = speakers_per_split(4)
    root = make_full(tmp_path / "sc", words=SC10 + ("bed", "bird", "cat", "dog", "eight"),
                     speakers=[s for g in groups.values() for s in g])
    data = SpeechCommands(root, "sc12", seed=3)
    counts = data.counts()
    for split in SPLITS:
        per_keyword = len(groups[split])  # one clip per speaker and word
        assert counts[split][UNKNOWN] == per_keyword  # the mean keyword count, not 20x it
        assert counts[split][SILENCE] == per_keyword
    cuts = [c for c in data.clips() if c.label == SILENCE]
    noise_frames = 12 * RATE
    for cut in cuts:
        assert cut.num_samples == RATE and cut.speaker is None
        low, high = data.noise_region(cut.split)
        assert low * noise_frames <= cut.offset and cut.offset + RATE <= high * noise_frames
    assert {c.path.name for c in cuts} == {"noise_0.wav", "noise_1.wav"}
    # Seeded: the same seed picks the same clips, another seed others.
    again = SpeechCommands(root, "sc12", seed=3)
    assert again.clips() == data.clips()
    other = SpeechCommands(root, "sc12", seed=4)
    assert other.clips() != data.clips() and other.counts() == counts
    manifest = data.split_manifest()
    assert manifest["sc12"]["noise_regions"]["val"] == [0.8, pytest.approx(0.9)]


def test_load_noise_keeps_to_the_split_region(tmp_path):
    root = make_full(tmp_path / "sc", noise=2)
    data = SpeechCommands(root, "sc10")
    train, test = data.load_noise("train"), data.load_noise("test")
    assert [len(n) for n in train] == [round(0.8 * 12 * RATE)] * 2
    assert [len(n) for n in test] == [round(0.1 * 12 * RATE)] * 2


# -- test-set layout -----------------------------------------------------------------------


def test_test_set_layout_sc12(tmp_path):
    root = make_test_set(tmp_path / "speech_commands_test_set_v0.01")
    data = SpeechCommands(root, "sc12")
    assert (data.layout, data.version, data.rule) == ("test_set", "v0.01", "speaker_hash")
    unknown = [c for c in data.clips() if c.label == UNKNOWN]
    assert unknown and all(c.speaker and c.split == which_set(c.speaker) for c in unknown)
    silence = [c for c in data.clips() if c.label == SILENCE]
    assert len(silence) == 20
    assert all(c.speaker is None and c.split == which_set(c.path.name) for c in silence)
    assert data.speaker_overlap() == []
    assert data.labels[-2:] == (UNKNOWN, SILENCE)
    # sc10 reads only the keyword folders.
    assert {c.label for c in SpeechCommands(root, "sc10").clips()} == set(SC10)
    # Without noise files, augmentation noise comes from the split's own _silence_ clips.
    assert len(data.load_noise("train")) == sum(c.split == "train" for c in silence)


def test_official_test_set_is_split_inside_its_band(tmp_path):
    """All speakers of an official test set hash into [10, 20): stretch that band."""
    speakers = speaker_ids(40, band=(10.0, 20.0))
    assert {which_set(s) for s in speakers} == {"test"}  # the plain rule is useless here
    root = make_test_set(tmp_path / "speech_commands_test_set_v0.02", speakers, words=("yes",))
    data = SpeechCommands(root, "sc10")
    assert data.rule == "speaker_hash_test_band" and data.version == "v0.02"
    n = {s: len(spks) for s, spks in data.speakers().items()}
    assert sum(n.values()) == 40 and n["train"] > n["val"] > 0 and n["test"] > 0
    assert data.speaker_overlap() == []
    assert "stretched" in data.split_manifest()["hash"]


def test_version_of_test_set_from_unknown_words(tmp_path):
    root = make_test_set(tmp_path / "plain")
    write(root / UNKNOWN / "backward_01234567_nohash_0.wav")
    assert SpeechCommands(root, "sc12").version == "v0.02"


# -- extra training folders ----------------------------------------------------------------


def test_extra_word_clips_from_a_full_archive(tmp_path):
    """All words join train: task words as themselves, the rest as _unknown_, no silence,
    and the main folder's held-out speakers are dropped."""
    groups = speakers_per_split(2)
    speakers = [s for group in groups.values() for s in group]
    root = make_full(tmp_path / "v1", words=("yes", "bed", "cat"), speakers=speakers, noise=1)
    held_out = groups["val"] + groups["test"][:1]
    clips, info = extra_word_clips(root, "sc12", exclude_speakers=held_out)
    kept = len(speakers) - len(held_out)
    assert len(clips) == 3 * kept
    assert Counter(c.label for c in clips) == {"yes": kept, UNKNOWN: 2 * kept}
    assert all(c.split == "train" and c.speaker not in held_out for c in clips)
    assert all(c.label_index == TASKS["sc12"].index(c.label) for c in clips)
    assert info["counts"]["yes"] == kept and info["counts"][SILENCE] == 0
    assert info["dropped"] == {"clips": 3 * len(held_out), "speakers": sorted(held_out)}
    assert info["layout"] == "full" and info["outside_task"] == 0
    # A task without _unknown_ skips the other words instead.
    clips, info = extra_word_clips(root, "sc10")
    assert {c.label for c in clips} == {"yes"} and info["outside_task"] == 2 * len(speakers)


def test_extra_word_clips_from_a_test_set_and_errors(tmp_path):
    root = make_test_set(tmp_path / "ts", words=("no",))
    clips, info = extra_word_clips(root, "sc12")
    n = len(speakers_per_split(2)) * 2
    assert Counter(c.label for c in clips) == {"no": n, UNKNOWN: n}  # _silence_ is not taken
    # In sc30 an _unknown_ clip's own word is its label.
    assert {c.label for c in extra_word_clips(root, "sc30")[0]} == {"no", "bed"}
    with pytest.raises(FileNotFoundError, match="nowhere: no such data folder"):
        extra_word_clips(tmp_path / "nowhere", "sc12")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no Speech Commands layout"):
        extra_word_clips(tmp_path / "empty", "sc12")
    everyone = [c.speaker for c in clips]
    with pytest.raises(ValueError, match=r"ts: no usable word clips .* \(12 dropped"):
        extra_word_clips(root, "sc12", exclude_speakers=everyone)


# -- errors --------------------------------------------------------------------------------


def test_task_words_missing_is_a_clear_error(tmp_path):
    root = make_full(tmp_path / "v1", words=("yes",), noise=0, empty=V1_WORDS)
    with pytest.raises(ValueError, match="sc35 needs backward.*v0.01.*use sc30"):
        SpeechCommands(root, "sc35")
    assert len(SpeechCommands(root, "sc30").labels) == 30
    test_set = make_test_set(tmp_path / "ts", words=("yes",), n_silence=1)
    with pytest.raises(ValueError, match="sc30 needs bed.*test-set archive"):
        SpeechCommands(test_set, "sc30")


def test_sc12_needs_background_noise_in_a_full_archive(tmp_path):
    root = make_full(tmp_path / "sc", noise=0)
    with pytest.raises(ValueError, match="_background_noise_"):
        SpeechCommands(root, "sc12")


def test_bad_arguments(tmp_path):
    root = make_full(tmp_path / "sc", noise=0)
    with pytest.raises(ValueError, match="unknown task 'sc11'"):
        SpeechCommands(root, "sc11")
    with pytest.raises(ValueError, match="sum to less than 100"):
        SpeechCommands(root, "sc10", val_percent=60, test_percent=40)
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        SpeechCommands(tmp_path / "absent", "sc10")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no Speech Commands layout"):
        SpeechCommands(tmp_path / "empty", "sc10")
    make_full(tmp_path / "parent" / "speech_commands_v0.01", words=("yes",), noise=0)
    with pytest.raises(FileNotFoundError, match="holds speech_commands_v0.01: point at"):
        SpeechCommands(tmp_path / "parent", "sc10")
    with pytest.raises(ValueError, match="unknown split"):
        SpeechCommands(root, "sc10").clips("dev")


# -- find_data_root --------------------------------------------------------------------------


def test_find_data_root_order_and_task(tmp_path, monkeypatch):
    base = tmp_path / "data"
    test_set = make_test_set(base / "speech_commands_test_set_v0.02", n_silence=1, words=())
    full = base / "speech_commands_v0.01"
    for word in V1_WORDS:  # empty folders are enough to be found
        (full / word).mkdir(parents=True)
    assert find_data_root(test_set) == test_set
    assert find_data_root(base) == test_set  # name order
    assert find_data_root(base, task="sc30") == full  # the test set lacks the 30 words
    monkeypatch.setenv("KWS_DATA_DIR", str(base))
    assert find_data_root(task="sc30") == full
    monkeypatch.setenv("KWS_DATA_DIR", str(full))
    assert find_data_root() == full


def test_find_data_root_explains_what_to_do(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="kws data download") as err:
        find_data_root(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(err.value)
    make_full(tmp_path / "more" / "speech_commands_v0.01", words=("yes",), noise=0)
    with pytest.raises(FileNotFoundError, match="words of task sc35"):
        find_data_root(tmp_path / "more", task="sc35")
    # A data folder named explicitly is returned as it is: SpeechCommands says what it lacks.
    named = tmp_path / "more" / "speech_commands_v0.01"
    assert find_data_root(named, task="sc35").resolve() == named.resolve()


# -- manifest --------------------------------------------------------------------------------


def test_split_manifest_round_trip(tmp_path):
    root = make_test_set(tmp_path / "ts")
    data = SpeechCommands(root, "sc12", val_percent=10, test_percent=15, seed=5)
    manifest = json.loads(json.dumps(data.split_manifest()))
    assert manifest["rule"] == "speaker_hash" and manifest["test_percent"] == 15
    assert manifest["speakers"] == data.speakers() and manifest["counts"] == data.counts()
    again = SpeechCommands.from_manifest(root, manifest)
    assert again.clips() == data.clips()
    spk = manifest["speakers"]["test"][0]
    manifest["speakers"]["test"].remove(spk)
    manifest["speakers"]["train"].append(spk)
    with pytest.raises(ValueError, match=f"another split.*{spk}"):
        SpeechCommands.from_manifest(root, manifest)
    manifest["labels"] = manifest["labels"][::-1]
    with pytest.raises(ValueError, match="labels differ"):
        SpeechCommands.from_manifest(root, manifest)


# -- ClipDataset -----------------------------------------------------------------------------


def test_clip_dataset_items(tmp_path):
    root = make_full(tmp_path / "sc")
    data = SpeechCommands(root, "sc12")
    dataset = ClipDataset(data.clips("train"))
    for i in range(len(dataset)):
        wave, label = dataset[i]
        assert wave.dtype == torch.float32 and wave.shape == (RATE,)
        assert label == dataset.clips[i].label_index
        if dataset.clips[i].label != SILENCE:  # 0.2 s of tone, zero-padded to 1 s
            assert wave[: int(0.2 * RATE)].abs().max() > 0.4 and not wave[int(0.2 * RATE):].any()
    cut = next(c for c in data.clips("train") if c.label == SILENCE)
    expected = sf.read(cut.path, dtype="float32", start=cut.offset, frames=RATE)[0]
    np.testing.assert_array_equal(ClipDataset([cut]).load(cut), expected)
    assert dataset.targets == [c.label_index for c in dataset.clips]
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    waves, labels = next(iter(loader))
    assert waves.shape == (4, RATE) and labels.dtype == torch.int64
    assert ClipDataset(data.clips("train"), sample_rate=8000, clip_seconds=0.5)[0][0].shape == (
        4000,
    )


def _bad_files(root: Path) -> dict[str, str]:
    """One bad file of each kind in the yes/ folder, with the problem each must report."""
    yes = root / "yes"
    (yes / "aaaaaaa1_nohash_0.wav").write_bytes(b"not audio at all" * 50)
    (yes / "aaaaaaa2_nohash_0.wav").write_bytes(b"")
    sf.write(yes / "aaaaaaa3_nohash_0.wav", np.zeros(0, dtype=np.float32), RATE)
    nan = tone(seconds=0.1)
    nan[5] = np.nan
    sf.write(yes / "aaaaaaa4_nohash_0.wav", nan, RATE, subtype="FLOAT")
    return {
        "aaaaaaa1_nohash_0.wav": "not readable",
        "aaaaaaa2_nohash_0.wav": "not readable",
        "aaaaaaa3_nohash_0.wav": "no samples",
        "aaaaaaa4_nohash_0.wav": "NaN",
    }


def test_formats_in_a_data_folder(tmp_path):
    """Other rates, stereo, 8/24-bit, float and flac clips all load as 1 s at 16 kHz."""
    root = make_full(tmp_path / "sc", words=SC10, speakers=speaker_ids(2), noise=0)
    yes = root / "yes"
    sf.write(yes / "bbbbbbb1_nohash_0.wav", tone(500, 1.0, 8000), 8000)
    sf.write(yes / "bbbbbbb2_nohash_0.wav", np.stack([tone(500), tone(500)], 1), RATE)
    sf.write(yes / "bbbbbbb3_nohash_0.wav", tone(500), RATE, subtype="PCM_U8")
    sf.write(yes / "bbbbbbb4_nohash_0.wav", tone(500), RATE, subtype="PCM_24")
    sf.write(yes / "bbbbbbb5_nohash_0.wav", tone(500), RATE, subtype="FLOAT")
    sf.write(yes / "bbbbbbb6_nohash_0.flac", tone(500), RATE)
    (yes / "notes.txt").write_text("not a clip")
    clips = [c for c in SpeechCommands(root, "sc10").clips() if "bbbbbbb" in c.path.name]
    assert len(clips) == 6
    dataset = ClipDataset(clips)
    for i in range(6):
        wave = dataset[i][0].numpy()
        assert wave.shape == (RATE,)
        np.testing.assert_allclose(wave[1000:15000], tone(500)[1000:15000], atol=0.02)


def test_bad_files_raise_naming_the_file(tmp_path):
    root = make_full(tmp_path / "sc", words=SC10, speakers=speaker_ids(2), noise=0)
    bad = _bad_files(root)
    clips = SpeechCommands(root, "sc10").clips()
    checked = set()
    for clip in clips:
        if clip.path.name in bad:
            with pytest.raises(AudioError, match=bad[clip.path.name]) as err:
                ClipDataset([clip])[0]
            assert clip.path.name in str(err.value)
            checked.add(clip.path.name)
    assert checked == set(bad)  # every bad file was listed and tried


def test_bad_files_skipped_by_substitution_and_by_validation(tmp_path):
    root = make_full(tmp_path / "sc", words=SC10, speakers=speaker_ids(2), noise=0)
    bad = _bad_files(root)
    clips = SpeechCommands(root, "sc10").clips()
    lazy = ClipDataset(clips, on_error="skip")
    items = [lazy[i] for i in range(len(lazy))]
    assert all(w.shape == (RATE,) and torch.isfinite(w).all() for w, _ in items)
    assert lazy.n_skipped == 4 and {Path(p).name for p in lazy.bad} == set(bad)
    first_bad = next(i for i, c in enumerate(clips) if c.path.name in bad)
    nxt = next(i for i in range(first_bad, len(clips)) if clips[i].path.name not in bad)
    assert torch.equal(lazy[first_bad][0], lazy[nxt][0])  # the next good clip stands in
    checked = ClipDataset(clips, on_error="skip", validate=True)
    assert len(checked) == len(clips) - 4 and checked.n_skipped == 4
    for path, problem in checked.bad.items():
        assert bad[Path(path).name].split()[0] in problem
    with pytest.raises(AudioError):
        ClipDataset(clips, validate=True)
    with pytest.raises(ValueError, match="on_error"):
        ClipDataset(clips, on_error="ignore")


def test_stats_reports_bad_files_and_lengths(tmp_path):
    root = make_full(tmp_path / "sc", words=SC10, speakers=speaker_ids(2), noise=0)
    bad = _bad_files(root)
    data = SpeechCommands(root, "sc10")
    with pytest.raises(AudioError):
        dataset_stats(data)
    report = dataset_stats(data, on_error="skip")
    assert report["skipped"] == 4 and len(report["problems"]) == 4
    for problem in report["problems"]:
        name = Path(problem["path"]).name
        assert bad[name].split()[0] in problem["problem"] and problem["label"] == "yes"
    assert report["clips"] == len(data.clips()) - 4
    assert report["length_histogram"] == {"0.2": report["clips"]}
    assert report["speakers_disjoint"] and report["classes"] == 10
    # Header-only stats cannot see NaN samples, but still catch what the header shows.
    quick = dataset_stats(data, on_error="skip", read_samples=False)
    assert quick["skipped"] == 3


def test_stats_cli_json_and_table(tmp_path, capsys):
    root = make_full(tmp_path / "sc")
    manifest = tmp_path / "split.json"
    assert main(["data", "stats", "--root", str(root), "--task", "sc12", "--json",
                 "--manifest", str(manifest)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == 12 and report["layout"] == "full"
    assert [n["name"] for n in report["noise_files"]] == ["noise_0.wav", "noise_1.wav"]
    assert json.loads(manifest.read_text())["task"] == "sc12"
    assert main(["data", "stats", "--root", str(root), "--task", "sc10"]) == 0
    out = capsys.readouterr().out
    assert "full archive v0.01" in out and "Clips per class" in out
    assert main(["data", "stats", "--root", str(root), "--task", "sc35"]) == 1
    assert "sc35 needs" in capsys.readouterr().err


# -- the real clips --------------------------------------------------------------------------


def test_real_test_set_sc12_stats(dev_root, capsys):
    assert main(["data", "stats", "--root", str(dev_root), "--task", "sc12", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["layout"], report["version"]) == ("test_set", "v0.02")
    assert report["clips"] == 3619 and report["classes"] == 12
    assert report["speakers_total"] == 173 and report["speakers_disjoint"]
    assert report["speaker_overlap"] == [] and report["skipped"] == 0
    assert report["class_clips"][UNKNOWN] == 301 and report["class_clips"][SILENCE] == 303
    assert report["length_histogram"] == {"1.0": 3619}
    # The band rule gives a usable split: most speakers train, some val and test.
    assert report["rule"] == "speaker_hash_test_band"
    assert report["speakers"]["train"] > 100 and min(report["speakers"].values()) >= 10


def test_real_v001_sample_sc30(v001_root, capsys):
    assert main(["data", "stats", "--root", str(v001_root), "--task", "sc30", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["layout"], report["version"], report["rule"]) == (
        "full", "v0.01", "official_lists"
    )
    assert report["clips"] == 300 and report["classes"] == 30 and report["skipped"] == 0
    assert len(report["noise_files"]) == 6
    assert {n["name"] for n in report["noise_files"]} >= {"white_noise.wav", "pink_noise.wav"}
    short = sum(n for start, n in report["length_histogram"].items() if float(start) < 1.0)
    assert short > 0 and report["speakers_disjoint"]
    data = SpeechCommands(v001_root, "sc30")
    dataset = ClipDataset(data.clips())
    assert all(dataset[i][0].shape == (RATE,) for i in range(len(dataset)))


def test_which_set_reproduces_the_official_lists(v001_root):
    for name, split in (("validation_list.txt", "val"), ("testing_list.txt", "test")):
        entries = (v001_root / name).read_text().split()
        assert len(entries) > 6000
        assert all(which_set(Path(e).name) == split for e in entries)
    data = SpeechCommands(v001_root, "sc30")
    assert all(c.split == which_set(c.speaker) for c in data.clips())


def test_real_v001_sample_other_tasks(v001_root):
    with pytest.raises(ValueError, match="sc35 needs backward"):
        SpeechCommands(v001_root, "sc35")
    data = SpeechCommands(v001_root, "sc12")
    counts = data.counts()
    for split in SPLITS:
        mean_keyword = round(sum(counts[split][w] for w in SC10) / 10)
        assert counts[split][UNKNOWN] == counts[split][SILENCE] == mean_keyword


def test_real_v001_sample_as_extra_training_data(dev_root, v001_root):
    """The v0.01 sample's words for the dev set's training: only one clip is of a speaker
    that the dev split holds out."""
    data = SpeechCommands(dev_root, "sc12")
    held_out = data.speakers()["val"] + data.speakers()["test"]
    clips, info = extra_word_clips(v001_root, "sc12", exclude_speakers=held_out)
    assert len(clips) == 299 and info["dropped"]["clips"] == 1
    assert info["counts"][UNKNOWN] == 199 and info["counts"]["yes"] == 10
    assert not {c.speaker for c in clips} & set(held_out)
