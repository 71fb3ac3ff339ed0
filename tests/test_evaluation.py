"""kws eval / kws results: scores, resampling, split checks, JSON, plots, tables, cards.

Two spotters whose answers the tests know in advance:

* ``ToneSpotter`` names the class whose frequency is nearest the clip's loudest
  FFT bin, computed with the ``sample_rate`` it is given, so its answers survive
  any correct resampling and break if the rate is passed wrong;
* a real TCN checkpoint whose head is zeroed and biased to one class, so it
  answers that class for every clip, at every rate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, tone
from torch import nn

from kws.cli import main
from kws.data.audio import save_audio
from kws.data.speech_commands import TASKS, which_set
from kws.evaluation.evaluate import (
    Evaluand,
    check_resampler,
    confusion_matrix,
    resample_batch,
    scores,
    select_clips,
    speaker_bootstrap_ci,
    speaker_groups,
    spread,
    sweep,
)
from kws.evaluation.options import parse_rates
from kws.evaluation.report import (
    ModelRecord,
    markdown_table,
    model_card,
    portable,
    streaming_facts,
    table_row,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SC12 = list(TASKS["sc12"])
#: the report's schema: changing it breaks model cards and kws results, so it is pinned here
REPORT_KEYS = {"kws_version", "created", "command", "data", "split", "rates", "resampler",
               "source_rate", "mfcc_policy", "ci_method", "batch_size", "threads", "limit",
               "seconds", "checkpoints", "reference"}
ENTRY_KEYS = {"name", "checkpoint", "model", "pipeline", "params", "task", "labels",
              "trained_rate", "feature_config", "rate_policy", "split", "resampler",
              "source_rate", "command", "results", "skipped"}
RESULT_KEYS = {"sample_rate", "rate_factor", "accuracy", "accuracy_ci95", "per_class_accuracy",
               "labels",
               "confusion", "n_clips", "seconds", "feature_seconds", "resample_seconds"}
#: the class index every clip of the biased checkpoint is given ("no")
BIASED_CLASS = 1


class ToneSpotter(nn.Module):
    """Predicts the class whose tone frequency is nearest the clip's dominant frequency."""

    def __init__(self, freqs: list[float]):
        super().__init__()
        self.freqs = torch.tensor(freqs)
        self.labels = [f"c{i}" for i in range(len(freqs))]
        self.calls: list[tuple[int, tuple[int, ...]]] = []

    def forward(self, wave: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        self.calls.append((sample_rate, tuple(wave.shape)))
        peak = torch.fft.rfft(wave).abs().argmax(dim=-1).float() * sample_rate / wave.shape[-1]
        return -(peak[:, None] - self.freqs[None, :]).abs()


FREQS = [500.0, 1000.0, 1500.0]


def tone_waves(freq_indices: list[int]) -> np.ndarray:
    return np.stack([tone(FREQS[i], rate=16000) for i in freq_indices])


# -- scores and the sweep ------------------------------------------------------------------


def test_confusion_and_scores_by_hand():
    confusion = confusion_matrix(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0]), 4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    got = scores(confusion, ["a", "b", "c", "d"])
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.5, "d": None}
    assert got["n_clips"] == 6 and got["labels"] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="outside 0..3"):
        confusion_matrix(np.array([0]), np.array([4]), 4)


def test_speaker_bootstrap_is_wide_when_speakers_not_clips_carry_the_errors():
    # 20 speakers of 10 clips: half get every clip right, half every clip wrong.
    correct = np.repeat(np.arange(20) % 2 == 0, 10)
    clustered = speaker_bootstrap_ci(correct, np.repeat(np.arange(20), 10))
    independent = speaker_bootstrap_ci(correct, np.arange(200))  # each clip its own speaker
    assert clustered[0] < 0.5 < clustered[1] and independent[0] < 0.5 < independent[1]
    # the standard error of the mean of 20 speaker accuracies (0.11) vs 200 clips (0.035)
    assert clustered[1] - clustered[0] > 0.35 and independent[1] - independent[0] < 0.16
    assert speaker_bootstrap_ci(correct, np.repeat(np.arange(20), 10)) == clustered  # seeded
    assert speaker_bootstrap_ci(np.ones(30, bool), np.arange(30) % 3) == [1.0, 1.0]
    assert speaker_bootstrap_ci(correct[:10], np.zeros(10, int)) is None  # one speaker
    with pytest.raises(ValueError, match="speaker ids"):
        speaker_bootstrap_ci(correct, np.arange(10))


def test_speaker_groups_give_clips_without_a_speaker_one_each():
    clip = type("Clip", (), {})
    clips = []
    for speaker in ["b", "a", None, "b", None]:
        c = clip()
        c.speaker = speaker
        clips.append(c)
    groups = speaker_groups(clips)
    assert groups[0] == groups[3] and len(set(groups.tolist())) == 4


def test_sweep_scores_a_spotter_whose_answers_we_know():
    targets = np.array([0, 0, 1, 1, 2, 2])
    spotter = ToneSpotter(FREQS)
    ev = Evaluand("tones", spotter, ["a", "b", "c"], targets, trained_rate=16000)
    sweep([ev], tone_waves([0, 1, 1, 1, 2, 0]), [8000, 16000, 22050], "soxr", batch_size=4)
    assert [r["sample_rate"] for r in ev.results] == [8000, 16000, 22050] and not ev.skipped
    for result in ev.results:
        assert result["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
        assert result["accuracy"] == pytest.approx(4 / 6)
        assert result["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.5}
        assert result["rate_factor"] == pytest.approx(16000 / result["sample_rate"])
    # Every batch reached the spotter at its rate with one second of samples; above
    # 16 kHz batches shrink (4 clips at 16 kHz -> 2 at 22.05 kHz).
    assert {(rate, shape[1]) for rate, shape in spotter.calls} == {
        (8000, 8000), (16000, 16000), (22050, 22050)}
    assert max(s[0] for r, s in spotter.calls if r == 22050) == 2


def test_sweep_with_decimate_skips_and_records_what_it_cannot_make():
    ev = Evaluand("tones", ToneSpotter(FREQS), ["a", "b", "c"], np.array([0, 1, 2]))
    sweep([ev], tone_waves([0, 1, 2]), [8000, 11025, 16000, 32000], "decimate")
    assert [r["sample_rate"] for r in ev.results] == [8000, 16000]
    assert all(r["accuracy"] == 1.0 for r in ev.results)
    reasons = {s["sample_rate"]: s["reason"] for s in ev.skipped}
    assert set(reasons) == {11025, 32000}
    assert "integer ratio" in reasons[11025] and "upsample" in reasons[32000]


class RateBlindSpotter(ToneSpotter):
    """Reads every clip as if it were at 16 kHz: right there, wrong at any other rate."""

    def forward(self, wave: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        return super().forward(wave, 16000)


def test_reference_separates_what_the_band_removes_from_what_the_model_loses():
    freqs = [1000.0, 2500.0, 6000.0]  # 6 kHz is above 8 kHz's Nyquist
    waves = np.stack([tone(f, rate=16000) for f in freqs])
    targets = np.arange(3)
    aware = Evaluand("aware", ToneSpotter(freqs), ["a", "b", "c"], targets, trained_rate=16000)
    blind = Evaluand("blind", RateBlindSpotter(freqs), ["a", "b", "c"], targets,
                     trained_rate=16000)
    sweep([aware, blind], waves, [8000, 16000, 32000], "soxr", reference=True)
    at = {ev.name: {r["sample_rate"]: r for r in ev.results} for ev in (aware, blind)}
    # 8 kHz: the band loses the 6 kHz tone for both; the blind model also misreads the rest
    assert at["aware"][8000]["accuracy"] == at["aware"][8000]["reference_accuracy"] == 2 / 3
    blind_8k = at["blind"][8000]["per_class_accuracy"]
    assert blind_8k["a"] == blind_8k["b"] == 0.0  # the tones the band keeps, misread
    assert at["blind"][8000]["reference_accuracy"] == 2 / 3
    # 32 kHz carries every tone: the reference is perfect, the blind model reads them at half
    assert at["blind"][32000]["reference_accuracy"] == 1.0
    assert at["blind"][32000]["accuracy"] < 1.0
    # at the trained rate the reference is the score itself; the references ran at 16 kHz
    assert all(r["reference_accuracy"] == r["accuracy"] for r in (at["blind"][16000],
                                                                    at["aware"][16000]))
    assert (16000, (3, 16000)) in blind.spotter.calls
    assert sum(1 for rate, _ in aware.spotter.calls if rate == 16000) == 3  # 16k + two trips
    plain = Evaluand("plain", ToneSpotter(freqs), ["a", "b", "c"], targets)
    sweep([plain], waves, [8000], "soxr")
    assert "reference_accuracy" not in plain.results[0]


def test_reference_with_decimate_comes_back_through_soxr():
    ev = Evaluand("tones", ToneSpotter(FREQS), ["a", "b", "c"], np.array([0, 1, 2]))
    sweep([ev], tone_waves([0, 1, 2]), [8000], "decimate", reference=True)
    assert ev.results[0]["reference_accuracy"] == 1.0
    assert (16000, (3, 16000)) in ev.spotter.calls


def small_spotter(family: str, kind: str, seed: int):
    from kws.features import FeatureConfig
    from kws.models import build_model
    from kws.spotter import KeywordSpotter

    torch.manual_seed(seed)
    features = FeatureConfig(kind)
    model = build_model(family, features.channels, 3, pipeline=kind, d_model=8)
    return KeywordSpotter(features, model, ["a", "b", "c"]).eval()


def test_shared_features_give_the_spotters_own_logits():
    from kws.evaluation.evaluate import SharedFeatures

    spotters = [small_spotter("tcn", "mfcc", 0), small_spotter("lstm", "mfcc", 1),
                small_spotter("tcn", "raw", 2)]
    for rate in (8000, 11025):
        wave = torch.from_numpy(resample_batch(tone_waves([0, 2]), 16000, rate, "soxr"))
        batch = SharedFeatures(wave, rate)
        for spotter in spotters:
            with torch.inference_mode():
                expected = spotter(wave, sample_rate=rate)
            torch.testing.assert_close(batch.logits(spotter), expected)
        assert len(batch.features) == 2  # the two MFCC spotters computed their features once
    ev = Evaluand("raw", spotters[2], ["a", "b", "c"], np.array([0, 2]))
    sweep([ev], tone_waves([0, 2]), [8000, 11025], "sinc")
    assert [r["rate_factor"] for r in ev.results] == [2.0, 16000 / 11025]


# -- resampling ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sinc", "soxr"])
@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_band_limited_resamplers_give_one_second_and_keep_the_tone(method, rate):
    waves = np.stack([tone(1000.0), tone(700.0)])
    out = resample_batch(waves, 16000, rate, method)
    assert out.shape == (2, rate) and out.dtype == np.float32
    peak_hz = np.abs(np.fft.rfft(out[0])).argmax() * rate / out.shape[1]
    assert peak_hz == pytest.approx(1000.0, abs=1.5)


def test_decimate_takes_every_kth_sample_and_refuses_other_ratios():
    waves = np.arange(32, dtype=np.float32).reshape(2, 16)
    assert resample_batch(waves, 16000, 8000, "decimate").tolist() == waves[:, ::2].tolist()
    assert resample_batch(waves, 16000, 4000, "decimate").shape == (2, 4)
    with pytest.raises(ValueError, match=r"integer ratio.*16000/11025"):
        check_resampler("decimate", 16000, 11025)
    with pytest.raises(ValueError, match="only drops samples"):
        resample_batch(waves, 16000, 48000, "decimate")
    with pytest.raises(ValueError, match="unknown resampler 'fft'"):
        check_resampler("fft", 16000, 8000)


def test_parse_rates_and_spread():
    assert parse_rates("8000, 16000,44100") == [8000, 16000, 44100]
    for bad, why in [("8k", "not a whole number"), ("0", "not a positive"),
                     ("8000,8000", "twice"), (",", "no sample rate")]:
        with pytest.raises(ValueError, match=why):
            parse_rates(bad)
    assert spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread(list(range(3)), 10) == [0, 1, 2]


# -- a test-set-layout folder of FLAC files, and a real checkpoint --------------------------


def speakers_in(split: str, count: int) -> list[str]:
    """Speaker ids that Speech Commands' hash puts into ``split``."""
    found, k = [], 0
    while len(found) < count:
        speaker = f"{k:08x}"
        if which_set(speaker) == split:
            found.append(speaker)
        k += 1
    return found


def silence_names(split: str, count: int) -> list[str]:
    found, k = [], 0
    while len(found) < count:
        if which_set(f"{k:04d}.flac") == split:
            found.append(f"{k:04d}.flac")
        k += 1
    return found


@pytest.fixture(scope="module")
def flac_root(tmp_path_factory) -> Path:
    """The 12-class test-set layout in FLAC: per class one test and one train clip."""
    root = tmp_path_factory.mktemp("flac") / "speech_commands_test_set_v0.02"
    test_spk, train_spk = speakers_in("test", 12), speakers_in("train", 12)
    silence = dict(zip(("test", "train"), (silence_names("test", 1), silence_names("train", 1)),
                       strict=True))
    for i, label in enumerate(SC12):
        (root / label).mkdir(parents=True)
        for split, speakers in (("test", test_spk), ("train", train_spk)):
            if label == "_silence_":
                name = silence[split][0]
            elif label == "_unknown_":
                name = f"bed_{speakers[i]}_nohash_0.flac"
            else:
                name = f"{speakers[i]}_nohash_0.flac"
            save_audio(root / label / name, tone(300 + 200 * i, amp=0.3), 16000)
    (root / "LICENSE").write_text("not audio")
    return root


def biased_checkpoint(path: Path, data_root: Path) -> Path:
    """A real MFCC TCN spotter that answers SC12[BIASED_CLASS] for every clip."""
    from kws.data.speech_commands import SpeechCommands
    from kws.features import FeatureConfig
    from kws.models import build_model
    from kws.spotter import KeywordSpotter
    from kws.training.checkpoint import save_spotter

    features = FeatureConfig("mfcc")
    model = build_model("tcn", features.channels, len(SC12), pipeline="mfcc", d_model=8)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[BIASED_CLASS] = 1.0
    spotter = KeywordSpotter(features, model, SC12)
    manifest = SpeechCommands(data_root, "sc12").split_manifest()
    meta = {"task": "sc12", "split": manifest, "metrics": {"val/acc": 0.5},
            "train": {"seconds": 75.0, "hardware": {"device": "cpu", "devices": 1}}}
    return save_spotter(path, spotter, meta)


@pytest.fixture(scope="module")
def checkpoint(flac_root, tmp_path_factory) -> Path:
    return biased_checkpoint(tmp_path_factory.mktemp("models") / "tcn_mfcc.pt", flac_root)


def run_kws(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_select_clips_rebuilds_the_checkpoints_test_split(flac_root, checkpoint):
    from kws.training.checkpoint import load_spotter

    _, meta = load_spotter(checkpoint)
    test = select_clips(meta, flac_root, "test")
    assert len(test.clips) == 12 and {c.split for c in test.clips} == {"test"}
    assert [c.label for c in test.clips] == SC12
    assert test.split["speakers_in_manifest"] == test.split["n_speakers"] == 11
    assert test.split["same_clips_as_manifest"] is True
    every = select_clips(meta, flac_root, "all")
    assert len(every.clips) == 24 and all(c.path.suffix == ".flac" for c in every.clips)


def test_select_clips_refuses_a_split_that_moved(flac_root, checkpoint):
    from kws.training.checkpoint import load_spotter

    _, meta = load_spotter(checkpoint)
    speakers = meta["split"]["speakers"]
    leaked = speakers["test"][0]
    speakers["test"].remove(leaked)
    speakers["train"].append(leaked)
    with pytest.raises(ValueError, match=rf"disagrees.*{leaked} \(train -> test\)"):
        select_clips(meta, flac_root, "test", source="model.pt")
    del meta["split"]["speakers"]
    with pytest.raises(ValueError, match="lacks speakers.*--split all"):
        select_clips(meta, flac_root, "test", source="model.pt")


def test_kws_eval_writes_json_and_plots_for_a_flac_folder(flac_root, checkpoint, tmp_path, capsys):
    out = tmp_path / "out" / "eval.json"
    code, stdout, stderr = run_kws(
        ["eval", str(checkpoint), "--data", str(flac_root), "--split", "all", "--rates",
         "8000,16000,44100", "--resampler", "sinc", "--json", str(out), "--batch-size", "8",
         "--threads", "1", "--cards", "--reference"], capsys)
    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert set(report) == REPORT_KEYS and report["reference"] is True
    assert set(report["checkpoints"][0]) == ENTRY_KEYS
    with_reference = RESULT_KEYS | {"reference_accuracy", "reference_accuracy_ci95"}
    assert all(set(r) == with_reference for r in report["checkpoints"][0]["results"])
    assert report["rates"] == [8000, 16000, 44100] and report["resampler"] == "sinc"
    assert report["split"] == "all" and "ms" in report["mfcc_policy"]
    assert set(report["seconds"]) == {"total", "load_audio", "resample"}
    (entry,) = report["checkpoints"]
    assert entry["name"] == "tcn_mfcc" and entry["model"] == "tcn" and entry["pipeline"] == "mfcc"
    assert entry["labels"] == SC12 and entry["trained_rate"] == 16000 and entry["skipped"] == []
    assert entry["split"]["n_clips"] == 24 and entry["split"]["rule"] == "every clip of the folder"
    assert entry["command"].startswith("kws eval ") and "--resampler sinc" in entry["command"]
    assert "--reference" in entry["command"]
    from kws.training.checkpoint import load_spotter

    assert entry["params"] == load_spotter(checkpoint)[0].model.n_parameters > 0
    expected_confusion = [[0] * 12 for _ in range(12)]
    for i in range(12):
        expected_confusion[i][BIASED_CLASS] = 2
    for result in entry["results"]:
        assert result["n_clips"] == 24 and result["labels"] == SC12
        assert result["accuracy"] == pytest.approx(2 / 24)
        assert result["confusion"] == expected_confusion
        assert result["per_class_accuracy"] == {
            label: (1.0 if i == BIASED_CLASS else 0.0) for i, label in enumerate(SC12)}
        assert result["seconds"] > 0 and result["resample_seconds"] >= 0
        low, high = result["accuracy_ci95"]
        assert 0 <= low <= result["accuracy"] <= high <= 1 and high > low
        assert result["reference_accuracy"] == pytest.approx(2 / 24)  # it says "no" to all
    assert re.search(r"\| tcn_mfcc \| 8.33% \| 8.33% \| 8.33% \|", stdout)
    pngs = sorted(p.name for p in out.parent.glob("*.png"))
    assert pngs == ["eval_accuracy_vs_rate.png", "eval_tcn_mfcc_confusion_16000.png",
                    "eval_tcn_mfcc_confusion_8000.png"]
    assert all((out.parent / p).read_bytes().startswith(PNG_MAGIC) for p in pngs)
    card = (checkpoint.parent / "tcn_mfcc.md").read_text()
    assert re.search(r"\| 44100 \| 8.33% \| \d+\.\d–\d+\.\d% \| 8.33% \| \d+\.\d–\d+\.\d% "
                     r"\| 1.000 \| 24 \| 1 \|", card)
    assert "Reference: the same audio, resampled back to 16000 Hz" in card
    assert "1.2 min" in card and "speaker bootstrap" in card
    stored = json.loads((checkpoint.parent / "tcn_mfcc.eval.json").read_text())
    assert stored["metrics"]["eval"]["results"] == entry["results"]
    assert stored["metrics"]["val/acc"] == 0.5

    # The table reads the card that --cards wrote next to the checkpoint.
    code, stdout, _ = run_kws(["results", "--models", str(checkpoint.parent)], capsys)
    assert code == 0
    assert "| tcn_mfcc (tcn) | mfcc |" in stdout
    assert re.search(r"\| 8.33% \| \d+\.\d–\d+\.\d% \| 8.33% \| 1.000 \| 8.33% \|", stdout)


def test_kws_eval_default_split_is_the_checkpoints_test_split(flac_root, checkpoint, tmp_path,
                                                              capsys):
    out = tmp_path / "eval.json"
    code, _, stderr = run_kws(
        ["eval", str(checkpoint), "--data", str(flac_root), "--rates", "8000,11025,16000",
         "--resampler", "decimate", "--json", str(out), "--no-plots"], capsys)
    assert code == 0, stderr
    (entry,) = json.loads(out.read_text())["checkpoints"]
    assert entry["split"]["name"] == "test" and entry["split"]["n_clips"] == 12
    assert [r["sample_rate"] for r in entry["results"]] == [8000, 16000]
    assert entry["skipped"][0]["sample_rate"] == 11025 and "11025 Hz: skipped" in stderr
    assert entry["results"][0]["accuracy"] == pytest.approx(1 / 12)
    assert not list(tmp_path.glob("*.png"))


def test_kws_eval_errors_name_the_file_or_argument(flac_root, checkpoint, tmp_path, capsys):
    code, _, err = run_kws(["eval", str(tmp_path / "nope.pt"), "--data", str(flac_root)], capsys)
    assert code == 1 and "nope.pt: no such checkpoint file" in err
    code, _, err = run_kws(["eval", str(checkpoint), "--data", str(tmp_path / "none")], capsys)
    assert code == 1 and "--data" in err and "no such folder" in err
    code, _, err = run_kws(
        ["eval", str(checkpoint), "--data", str(flac_root), "--rates", "8000,44100",
         "--resampler", "decimate", "--split", "all"], capsys)
    assert code == 0, err  # 44100 is skipped, 8000 is scored
    code, _, err = run_kws(["eval", str(checkpoint), "--data", str(flac_root), "--rates",
                            "44100", "--resampler", "decimate"], capsys)
    assert code == 1 and "can make none of the rates" in err
    broken = tmp_path / "broken"
    for label in SC12:
        (broken / label).mkdir(parents=True)
    (broken / "yes" / "bad_nohash_0.flac").write_bytes(b"not audio at all")
    code, _, err = run_kws(["eval", str(checkpoint), "--data", str(broken), "--split", "all",
                            "--rates", "16000"], capsys)
    assert code == 1 and "bad_nohash_0.flac: not readable as audio" in err


# -- the results table and model cards -----------------------------------------------------


def hand_entry(name: str, accuracies: dict[int, float]) -> dict:
    return {
        "name": name, "checkpoint": f"models/{name}.pt", "model": "s4d", "pipeline": "raw",
        "params": 123456, "labels": ["a", "b"], "trained_rate": 16000, "resampler": "soxr",
        "rate_policy": "raw samples; S4 multiplies its step dt by trained_rate / rate",
        "split": {"name": "test", "data": "/data", "n_clips": 100, "n_speakers": 9,
                  "rule": "speaker_hash"},
        "command": f"kws eval models/{name}.pt --data /data",
        "results": [{"sample_rate": r, "accuracy": a, "n_clips": 100, "rate_factor": 16000 / r}
                    for r, a in accuracies.items()],
        "skipped": [],
    }


def test_results_table_numbers_from_an_eval_report(tmp_path, capsys):
    entry = hand_entry("s4d_raw", {8000: 0.45, 16000: 0.9, 48000: 0.3})
    row = table_row(ModelRecord("s4d_raw", {}, entry))
    assert row["ratio_8k_16k"] == pytest.approx(0.5)
    assert (row["min_acc"], row["min_rate"]) == (0.3, 48000)
    table = markdown_table([row])
    assert ("| s4d_raw (s4d) | raw | 123,456 | 90.00% | – | 45.00% | 0.500 | – | 30.00% @ 48k | "
            "`kws eval models/s4d_raw.pt --data /data` |") in table
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"checkpoints": [entry]}))
    code, stdout, err = run_kws(["results", "--models", str(tmp_path / "none"), "--eval",
                                 str(report)], capsys)
    assert code == 0, err
    assert "| 90.00% | – | 45.00% | 0.500 | – |" in stdout
    code, _, err = run_kws(["results", "--models", str(tmp_path / "none")], capsys)
    assert code == 1 and "no such folder" in err


def test_model_card_lists_every_rate_and_the_commands():
    entry = hand_entry("s4d_raw", {8000: 0.45, 16000: 0.9})
    entry["skipped"] = [{"sample_rate": 11025, "reason": "decimate needs an integer ratio"}]
    meta = {"task": "sc10", "labels": ["a", "b"],
            "split": {"version": "v0.02", "layout": "test_set", "rule": "speaker_hash",
                      "val_percent": 10.0, "test_percent": 10.0, "seed": 0,
                      "counts": {"train": {"a": 8, "b": 7}}, "speakers": {"train": ["x", "y"]}},
            "train": {"seconds": 7200.0, "hardware": {"device": "cuda", "device_name": "H100"},
                      "epochs": 11.0, "config": {"trainer": {"max_epochs": 12}}},
            "metrics": {"val/acc": 0.93}}
    card = model_card(ModelRecord("s4d_raw", meta, entry))
    assert "- epochs: 11 when this checkpoint was saved, of a 12-epoch schedule" in card
    meta["train"]["epochs"] = 12.0  # the schedule's last epoch: the plain number
    assert "- epochs: 12\n" in model_card(ModelRecord("s4d_raw", meta, entry))
    assert card.startswith("# s4d_raw\n")
    assert "123,456 parameters" in card and "task sc10" in card
    assert "- train: 15 clips, 2 speakers" in card
    assert "2.00 h" in card and "device=cuda, device_name=H100" in card
    assert "| 8000 | 45.00% | – | 100 | 2 |" in card and "| 16000 | 90.00% | – | 100 | 1 |" in card
    assert "| 11025 | skipped: decimate needs an integer ratio" in card
    assert "- evaluate: `kws eval models/s4d_raw.pt --data /data`" in card
    assert "val/acc: 0.93" in card
    assert "train also" not in card
    meta["split"]["extra_train"] = [{
        "root": str(REPO.parent / "shared/data/v1"), "layout": "full", "version": "v0.01",
        "counts": {"a": 3, "_unknown_": 9}, "speakers": ["p", "q"],
        "dropped": {"clips": 1, "speakers": ["r"]}, "outside_task": 0}]
    assert ("- train also: 12 word clips (9 of them `_unknown_`), 2 speakers, from "
            "`../shared/data/v1` (full layout v0.01; clips of held-out speakers dropped: 1)"
            ) in model_card(ModelRecord("s4d_raw", meta, entry))
    assert "started from" not in card
    meta["train"]["config"]["init_from"] = str(REPO / "models" / "s4d_raw_first.pt")
    tuned = model_card(ModelRecord("s4d_raw", meta, entry))
    assert ("- started from: `models/s4d_raw_first.pt` (init_from; epochs and time below are "
            "the fine-tuning's)\n- seconds: 2.00 h") in tuned


def test_accuracy_plot_draws_the_speaker_bootstrap_band_where_the_report_has_one():
    from kws.evaluation.plots import accuracy_figure

    banded = hand_entry("a", {8000: 0.8, 16000: 0.9})
    for result, band in zip(banded["results"], ([0.7, 0.88], [0.85, 0.95]), strict=True):
        result["accuracy_ci95"] = band
    plain = hand_entry("b", {8000: 0.5, 16000: 0.6})
    fig = accuracy_figure({"rates": [8000, 16000], "resampler": "soxr", "split": "test",
                           "checkpoints": [banded, plain]})
    (ax,) = fig.axes
    assert len(ax.lines) == 3  # two models and the 16 kHz marker
    (band,) = ax.collections  # only the model with intervals
    lows_highs = band.get_paths()[0].vertices[:, 1]
    assert lows_highs.min() == pytest.approx(70.0) and lows_highs.max() == pytest.approx(95.0)
    assert "95% speaker bootstrap" in ax.get_title()


def test_accuracy_plot_draws_the_reference_dotted_in_the_model_s_colour():
    from kws.evaluation.plots import accuracy_figure

    entry = hand_entry("a", {8000: 0.6, 16000: 0.9})
    for result, ref in zip(entry["results"], (0.7, 0.9), strict=True):
        result["reference_accuracy"] = ref
    fig = accuracy_figure({"rates": [8000, 16000], "resampler": "soxr", "split": "test",
                           "checkpoints": [entry]})
    (ax,) = fig.axes
    model, reference = ax.lines[0], ax.lines[1]
    assert reference.get_linestyle() == ":" and reference.get_color() == model.get_color()
    assert list(reference.get_ydata()) == pytest.approx([70.0, 90.0])
    assert "reference (same audio at 16k)" in reference.get_label()


def test_model_card_lists_the_models_streaming_exports_and_their_measurements(tmp_path):
    for folder in ("models", "export", "results"):
        (tmp_path / folder).mkdir()
    checkpoint = tmp_path / "models" / "m.pt"
    sidecar = {"kind": "streaming", "source_checkpoint": "models/m.pt", "sample_rate": 8000,
               "chunk_samples": 160}
    (tmp_path / "export" / "m_stream_8k.json").write_text(json.dumps(sidecar))
    (tmp_path / "export" / "m_stream_8k.onnx").write_bytes(b"\0" * 250_000)
    other = {**sidecar, "source_checkpoint": "models/other.pt"}  # another model's export
    (tmp_path / "export" / "other_stream.json").write_text(json.dumps(other))
    (tmp_path / "results" / "bench_stream_speed.json").write_text(json.dumps({"rows": [
        {"path": "export/m_stream_8k.onnx", "threads": 1, "step1_rtf": 0.0151,
         "detector_rtf": 0.0249},
        {"path": "export/m_stream_8k.onnx", "threads": 2, "step1_rtf": 0.05,
         "detector_rtf": 0.09},
        {"path": "export/other_stream.onnx", "threads": 1, "step1_rtf": 0.5,
         "detector_rtf": 0.9}]}))
    (tmp_path / "results" / "bench_stream_m.json").write_text(json.dumps({
        "model": "export/m_stream_8k.onnx", "split": "test", "stream": {"duration_s": 600.0},
        "results": [{"threshold": 0.8, "hit_rate": 0.705, "false_alarms_per_hour": 78.0},
                    {"threshold": None, "hit_rate": 0.533, "false_alarms_per_hour": 30.0}],
        "best_within": [{"fa_per_hour_at_most": 0.0, "hit_rate": None},
                        {"fa_per_hour_at_most": 4.0, "hit_rate": 0.521},
                        {"fa_per_hour_at_most": 50.0, "hit_rate": 0.783}]}))
    # an ensemble with this export as one of its members, and one without it
    (tmp_path / "results" / "bench_stream_ens.json").write_text(json.dumps({
        "model": "export/a_stream.onnx,export/m_stream_8k.onnx", "split": "test",
        "stream": {"duration_s": 1800.0},
        "results": [{"threshold": 0.9, "hit_rate": 0.513, "false_alarms_per_hour": 4.0}]}))
    (tmp_path / "results" / "bench_stream_ens_other.json").write_text(json.dumps({
        "model": "export/a_stream.onnx,export/b_stream.onnx", "split": "test",
        "stream": {"duration_s": 1800.0},
        "results": [{"threshold": 0.9, "hit_rate": 0.6, "false_alarms_per_hour": 2.0}]}))
    (tmp_path / "results" / "bench_stream_neg.json").write_text(json.dumps({
        "model": "export/m_stream_8k.onnx", "split": "test", "stream": {"duration_s": 3600.0},
        "negatives": [str(REPO.parent / "shared/data/more")],
        "results": [{"threshold": 0.9, "hit_rate": 0.574, "false_alarms_per_hour": 11.0}]}))
    # a cascade: this export's candidates checked by a clip model (kws bench stream --verifier)
    (tmp_path / "results" / "bench_stream_verified.json").write_text(json.dumps({
        "model": "export/m_stream_8k.onnx", "split": "test", "stream": {"duration_s": 3600.0},
        "verifier": {"model": "export/v_clip.onnx", "candidate_threshold": 0.5,
                     "delay_ms": 400.0},
        "results": [{"threshold": 0.9, "hit_rate": 0.422, "false_alarms_per_hour": 1.0}]}))
    (tmp_path / "results" / "bench_stream_broken.json").write_text("{not json")
    # a clip export of this model (a verifier) and one of another model
    clip = {"kind": "clip", "source_checkpoint": "models/m.pt", "sample_rate": 16000,
            "clip_samples": 16000, "parity": {"max_rel_err": 3.7e-6}}
    (tmp_path / "export" / "m_clip.json").write_text(json.dumps(clip))
    (tmp_path / "export" / "m_clip.onnx").write_bytes(b"\0" * 1_500_000)
    (tmp_path / "export" / "other_clip.json").write_text(
        json.dumps({**clip, "source_checkpoint": "models/other.pt"}))
    # a same-named candidate outside export/ (a study's run) is another model
    (tmp_path / "results" / "bench_stream_candidate.json").write_text(json.dumps({
        "model": "runs/study/m_stream_8k.onnx", "split": "test", "stream": {"duration_s": 1800.0},
        "results": [{"threshold": 0.8, "hit_rate": 0.9, "false_alarms_per_hour": 1.0}],
        "rows": [{"path": "runs/study/m_stream_8k.onnx", "threads": 1, "step1_rtf": 0.1,
                  "detector_rtf": 0.2}]}))

    (fact,) = streaming_facts(checkpoint)
    assert fact["export"] == "export/m_stream_8k.onnx" and fact["chunk_ms"] == 20.0
    assert fact["bytes"] == 250_000 and len(fact["speed"]) == 1 and len(fact["detection"]) == 4
    card = model_card(ModelRecord("m", {}, hand_entry("m", {16000: 0.9}), checkpoint))
    assert ("| `export/m_stream_8k.onnx` | 8000 Hz | 20 ms | 0.25 MB | 0.015 | 0.025 "
            "| results/bench_stream_speed.json |") in card
    assert ("on a 10-min stream of test speakers (results/bench_stream_m.json): 0.8: 70.5% "
            "hits, 78 FA/h; per-keyword: 53.3% hits, 30 FA/h.") in card
    assert ("Best hit rate per false-alarm budget (FA/h; one threshold for all keywords, swept "
            "in steps of 0.005 or finer): 52.1% at <= 4, 78.3% at <= 50.") in card
    # (no point for the budget that no threshold kept to)
    assert ("Detection, `export/m_stream_8k.onnx` averaged with 1 other export(s) "
            "(a_stream.onnx) on a 30-min stream of test speakers (results/bench_stream_ens.json): "
            "0.9: 51.3% hits, 4 FA/h.") in card
    assert "60.0% hits" not in card  # the ensemble without this export
    assert ("on a 60-min stream of test speakers and other words from `../shared/data/more` "
            "(results/bench_stream_neg.json): 0.9: 57.4% hits, 11 FA/h.") in card
    assert ("Detection, `export/m_stream_8k.onnx` opening candidates at 0.5, each verified by "
            "`export/v_clip.onnx` 400 ms later (verifier thresholds) on a 60-min stream of test "
            "speakers (results/bench_stream_verified.json): 0.9: 42.2% hits, 1 FA/h.") in card
    assert ("## Clip exports" in card and "- `export/m_clip.onnx`: 16000 Hz, 16000 samples "
            "per call, 1.50 MB, parity 3.7e-06 against PyTorch" in card)
    assert "other_clip" not in card
    # one row: not the 2-thread measurement, nothing of the other model's export
    assert len([line for line in card.splitlines() if line.startswith("| `export/")]) == 1
    assert streaming_facts(None) == []
    assert "## Streaming" not in model_card(ModelRecord("x", {}, hand_entry("x", {16000: 0.9}),
                                                        tmp_path / "models" / "x.pt"))


# -- real data -----------------------------------------------------------------------------


def test_kws_eval_on_real_test_set_clips(dev_root, tmp_path, capsys):
    """A few real clips from every class at 8 and 48 kHz: the pipeline, not the model."""
    from kws.data.speech_commands import SpeechCommands

    checkpoint = biased_checkpoint(tmp_path / "biased.pt", dev_root)
    manifest = SpeechCommands(dev_root, "sc12").split_manifest()
    out = tmp_path / "eval.json"
    code, _, err = run_kws(["eval", str(checkpoint), "--data", str(dev_root), "--rates",
                            "8000,48000", "--limit", "48", "--json", str(out), "--no-plots"],
                           capsys)
    assert code == 0, err
    (entry,) = json.loads(out.read_text())["checkpoints"]
    assert entry["split"]["n_clips"] == 48 and entry["split"]["speakers_in_manifest"] > 0
    assert all(n > 0 for n in entry["split"]["counts"].values())
    test_speakers = set(manifest["speakers"]["test"])
    assert entry["split"]["n_speakers"] == entry["split"]["speakers_in_manifest"]
    assert entry["split"]["n_speakers"] <= len(test_speakers)
    for result in entry["results"]:
        counts = np.array(result["confusion"])
        assert counts.sum() == 48 and counts[:, BIASED_CLASS].sum() == 48


def test_cards_write_paths_in_and_beside_the_checkout_relative_to_it(tmp_path):
    repo = tmp_path / "kws"
    command = (f"kws eval {repo}/models/a.pt --data {tmp_path}/shared/data/dev "
               f"--json /elsewhere/out.json")
    assert portable(command, repo) == (
        "kws eval models/a.pt --data ../shared/data/dev --json /elsewhere/out.json"
    )
    assert portable(None, repo) is None


def test_rate_policy_says_how_a_pooled_model_meets_a_rate():
    from kws.evaluation.evaluate import rate_policy

    plain = "raw samples; S4 multiplies its step dt by trained_rate / rate"
    assert rate_policy("s4", "raw") == plain
    assert "keep their span of time" in rate_policy("s4", "raw", pooled=True)
    assert "pools counting samples" in rate_policy("tcn", "raw", pooled=True)
    assert rate_policy("tcn", "raw").endswith("between samples)")
    assert rate_policy("s4", "mfcc", pooled=True).startswith("MFCC at the new rate")
