"""``kws data convert``: a copy in FLAC or Opus keeps the layout, the splits and the audio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone
from test_data import _bad_files, make_full, make_test_set, speaker_ids

from kws.cli import main
from kws.data.audio import AudioError, load_audio
from kws.data.convert import convert_dataset
from kws.data.speech_commands import (
    SC10,
    SPLITS,
    ClipDataset,
    SpeechCommands,
    as_wav_name,
    which_set,
)


def split_table(root: Path, task: str) -> dict[str, list[tuple]]:
    """Each split's clips by folder, WAV name, label and cut, in the order the scan gives."""
    data = SpeechCommands(root, task)
    return {
        split: [(c.path.parent.name, as_wav_name(c.path.name), c.label, c.offset, c.num_samples)
                for c in data.clips(split)]
        for split in SPLITS
    }


def test_wav_name_of_any_audio_format():
    assert as_wav_name("0001.flac") == as_wav_name("0001.OPUS") == "0001.wav"
    assert as_wav_name("bed_ab12_nohash_1.wav") == "bed_ab12_nohash_1.wav"
    assert as_wav_name("validation_list.txt") == "validation_list.txt"
    assert as_wav_name("noext") == "noext"
    names = [f"{k:04d}" for k in range(40)]
    assert [which_set(f"{n}.opus") for n in names] == [which_set(f"{n}.wav") for n in names]


@pytest.mark.parametrize("layout", ["test_set", "full"])
def test_flac_copy_is_lossless_and_splits_as_the_original(layout, tmp_path):
    if layout == "full":  # official lists and background noise (silence cut from it)
        source = make_full(tmp_path / "src", speakers=speaker_ids(6), lists=True)
        task = "sc12"
    else:  # speakerless _silence_ clips hash on their file name
        source = make_test_set(tmp_path / "src")
        task = "sc12"
    report = convert_dataset(source, tmp_path / "flac", "flac")
    summary = report.summary()
    audio_files = [p for p in source.rglob("*") if p.suffix == ".wav"]
    assert report.converted == len(audio_files) and summary["lossless"]
    assert not list((tmp_path / "flac").rglob("*.wav"))
    assert split_table(tmp_path / "flac", task) == split_table(source, task)
    if layout == "full":
        assert SpeechCommands(tmp_path / "flac", task).rule == "official_lists"
        assert (tmp_path / "flac" / "testing_list.txt").read_text() == (
            source / "testing_list.txt").read_text()
    for path in audio_files[:5]:
        copy = (tmp_path / "flac" / path.relative_to(source)).with_suffix(".flac")
        np.testing.assert_array_equal(sf.read(copy)[0], sf.read(path)[0])


def test_opus_copy_is_small_and_close_to_the_source(tmp_path):
    source = tmp_path / "src"
    rng = np.random.default_rng(0)
    for k, word in enumerate(SC10):
        for spk in speaker_ids(3):
            wave = tone(300 * 1.2**k, 1.0, 16000, 0.3) + 0.003 * rng.standard_normal(16000)
            path = source / word / f"{spk}_nohash_0.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wave, 16000)
    summary = convert_dataset(source, tmp_path / "opus", "opus").summary()
    assert summary["converted"] == 30 and not summary["lossless"]
    assert summary["size_ratio"] < 0.3  # about 0.14 on speech; a tone is no harder
    assert summary["snr_db_median"] > 15
    table = split_table(tmp_path / "opus", "sc10")
    assert table == split_table(source, "sc10")
    clip = SpeechCommands(tmp_path / "opus", "sc10").clips("train")[0]
    assert clip.path.suffix == ".opus"
    wave, label = ClipDataset([clip])[0]
    original = load_audio(source / clip.path.parent.name / as_wav_name(clip.path.name))
    assert wave.shape == (16000,) and label == clip.label_index
    assert np.corrcoef(wave.numpy(), original)[0, 1] > 0.95


def test_rerun_resumes_and_partial_files_are_not_clips(tmp_path):
    source = make_test_set(tmp_path / "src", n_silence=4)
    target = tmp_path / "copy"
    first = convert_dataset(source, target, "flac")
    some = next(target.rglob("*.flac"))
    some.unlink()
    (some.parent / f".{some.name}.partial").write_bytes(b"cut short")  # a killed run's leftover
    again = convert_dataset(source, target, "flac")
    assert (again.converted, again.already_there) == (1, first.converted - 1)
    assert some.is_file()
    assert split_table(target, "sc12") == split_table(source, "sc12")


def test_bad_input_names_the_file(tmp_path):
    source = make_full(tmp_path / "src", words=SC10, speakers=speaker_ids(2), noise=0)
    bad = _bad_files(source)
    with pytest.raises(AudioError) as err:
        convert_dataset(source, tmp_path / "a", "flac")
    assert any(name in str(err.value) for name in bad)
    report = convert_dataset(source, tmp_path / "b", "flac", on_error="skip").summary()
    problems = {Path(p["path"]).name: p["problem"] for p in report["problems"]}
    assert problems.keys() == bad.keys()
    for name, problem in bad.items():
        assert problem in problems[name]
    assert not list((tmp_path / "b").rglob("*.partial")) and not list((tmp_path / "b").rglob(".*"))

    with pytest.raises(ValueError, match="must not be inside the source"):
        convert_dataset(source, source / "copy", "flac")
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        convert_dataset(tmp_path / "missing", tmp_path / "c", "flac")
    with pytest.raises(ValueError, match="unknown format 'mp3'"):
        convert_dataset(source, tmp_path / "c", "mp3")
    odd = tmp_path / "odd" / "yes"
    odd.mkdir(parents=True)
    sf.write(odd / "ab12cd34_nohash_0.wav", tone(440, 0.5, 44100), 44100)
    with pytest.raises(AudioError, match=r"_nohash_0.wav: 44100 Hz cannot be stored as Opus"):
        convert_dataset(odd.parent, tmp_path / "d", "opus")


def test_cli_reports_and_fails_on_skipped_files(tmp_path, capsys):
    source = make_test_set(tmp_path / "src", n_silence=2)
    assert main(["data", "convert", str(source), "--out", str(tmp_path / "o"),
                 "--format", "opus", "--json", "--jobs", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["converted"] == len(list(source.rglob("*.wav"))) and report["problems"] == []
    assert 0 < report["size_ratio"] < 1
    (source / "yes" / "zz000000_nohash_0.wav").write_bytes(b"")
    assert main(["data", "convert", str(source), "--out", str(tmp_path / "o"),
                 "--format", "opus", "--on-error", "skip"]) == 1
    captured = capsys.readouterr()
    assert "0 files written" in captured.out and "already there" in captured.out
    assert "zz000000_nohash_0.wav: not readable" in captured.err
