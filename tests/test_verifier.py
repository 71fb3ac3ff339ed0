"""The two-stage cascade: a clip model verifies each candidate of the streaming detector."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tone
from test_benchmarks import load as load_benchmark
from test_streaming import LABELS, RATE, ScriptedBackend, run_cli, silence, tiny_spotter

from kws.streaming.engine import StreamingDetector, decode_trace
from kws.streaming.verifier import (
    VALIDATED_VERIFIERS,
    ClipScorer,
    OnnxClipScorer,
    TorchClipScorer,
    Verifier,
    open_clip_scorer,
    validated_verifiers,
    verify_offline,
)


class LoudnessScorer(ClipScorer):
    """Every keyword's posterior is the window's peak amplitude: a window that holds the
    (loud) word passes, one of silence does not."""

    name = "loudness"
    sample_rate, clip_samples, labels = RATE, RATE, list(LABELS)

    def __init__(self):
        self.windows: list[np.ndarray] = []

    def posteriors(self, windows: np.ndarray) -> np.ndarray:
        self.windows += list(windows)
        peak = np.abs(windows).max(axis=1)
        out = np.zeros((len(windows), len(self.labels)))
        out[:, :3] = peak[:, None]
        out[:, 3] = 1 - peak
        return out


#: yes and no are spoken (loud tones in the audio), stop is only in the scripted logits
BURSTS = [("yes", 1.0, 1.6), ("stop", 3.5, 4.0), ("no", 6.0, 6.6)]


def spoken_audio(seconds: float = 8.0) -> np.ndarray:
    audio = silence(seconds)
    for start in (1.2, 6.2):
        audio[round(start * RATE) : round((start + 0.3) * RATE)] = tone(500, 0.3, amp=0.9)
    return audio


def cascade(verifier: Verifier, **options) -> StreamingDetector:
    options.setdefault("reset_period_s", None)
    return StreamingDetector(ScriptedBackend(BURSTS), threshold=0.8, smoothing_ms=50,
                             verifier=verifier, **options)


def test_the_verifier_keeps_the_candidates_whose_window_holds_the_word():
    alone = StreamingDetector(ScriptedBackend(BURSTS), threshold=0.8, smoothing_ms=50,
                              reset_period_s=None).process(spoken_audio())
    assert [e.keyword for e in alone] == ["yes", "stop", "no"]
    scorer = LoudnessScorer()
    heard = []
    events = cascade(Verifier(scorer, threshold=0.5, delay_ms=400),
                     on_event=heard.append).process(spoken_audio(), block=777)
    assert [e.keyword for e in events] == ["yes", "no"] and heard == events
    for event, candidate in zip(events, [alone[0], alone[2]], strict=True):
        assert event.end_s == pytest.approx(candidate.end_s + 0.4, abs=1e-9)  # the delay
        assert event.start_s == pytest.approx(event.end_s - 1.0, abs=1e-9)  # its window
        assert event.score == pytest.approx(0.9, abs=1e-3)
        assert event.candidate_score == pytest.approx(candidate.score)
        assert "candidate_score" in event.to_dict()
    assert "candidate_score" not in alone[0].to_dict()
    # each window ended exactly where the event says: its last samples are the audio's there
    audio = spoken_audio()
    assert len(scorer.windows) == 3
    for window, candidate in zip(scorer.windows, alone, strict=True):
        end = round((candidate.end_s + 0.4) * RATE)
        np.testing.assert_array_equal(window, audio[end - RATE : end])
    # a delay shorter than the lead before the word: the window misses it, nothing fires
    assert cascade(Verifier(LoudnessScorer(), 0.5, delay_ms=0)).process(spoken_audio()) == []


@pytest.mark.parametrize("delay_ms", [0.0, 250.0, 400.0, 900.0])
def test_streaming_cascade_equals_the_offline_one(delay_ms):
    """What ``kws bench stream --verifier`` computes from a recorded trace is what the
    detector fires live, in any block size, including windows that run past the end."""
    audio = spoken_audio(6.8)  # "no" fires at 6.04: a 0.9-s delay runs past the end
    verifier = Verifier(LoudnessScorer(), threshold=0.5, delay_ms=delay_ms)
    live = cascade(verifier, record=True)
    events = live.process(audio, block=1013)
    candidates = decode_trace(live.trace(), LABELS, live.chunk_s, 1.0, threshold=0.8,
                              smoothing_ms=50)
    offline = [e for e in verify_offline(candidates, audio, live.chunk_s, live.chunk_samples,
                                         Verifier(LoudnessScorer(), 0.5, delay_ms))
               if e.score >= 0.5]
    assert [(e.keyword, e.start_s, e.end_s, e.score) for e in events] == [
        (e.keyword, e.start_s, e.end_s, e.score) for e in offline]
    # the detector's score: a running mean live, a cumulative sum offline
    np.testing.assert_allclose([e.candidate_score for e in events],
                               [e.candidate_score for e in offline], rtol=1e-12)
    if delay_ms == 900.0:  # decided in flush, the window zero-padded past the end
        assert [e.keyword for e in events] == ["yes", "no"]
        assert events[-1].end_s == pytest.approx(6.94) and audio.size / RATE == 6.8


def test_a_rejected_candidate_still_starts_the_refractory_period():
    bursts = [("stop", 1.0, 1.3), ("yes", 1.5, 2.0)]  # yes rises inside stop's quiet second
    audio = silence(4.0)
    audio[round(1.6 * RATE) : round(1.9 * RATE)] = tone(500, 0.3, amp=0.9)
    detector = StreamingDetector(ScriptedBackend(bursts), threshold=0.8, smoothing_ms=50,
                                 reset_period_s=None,
                                 verifier=Verifier(LoudnessScorer(), 0.95, delay_ms=0))
    # stop's window (ending 1.04 s) is silent: rejected; yes never became a candidate
    assert detector.process(audio) == []


def test_verifier_settings_and_mismatches_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        Verifier(LoudnessScorer(), threshold=0.0)
    with pytest.raises(ValueError, match="delay must be >= 0"):
        Verifier(LoudnessScorer(), delay_ms=-1)
    other = LoudnessScorer()
    other.labels = ["yes", "_unknown_", "_silence_"]
    with pytest.raises(ValueError, match=r"no output for the detector's keyword\(s\) \['no', "
                       r"'stop'\]"):
        cascade(Verifier(other))
    slow = LoudnessScorer()
    slow.sample_rate = 8000
    with pytest.raises(ValueError, match="scores 8000 Hz audio, the detector runs at 16000"):
        cascade(Verifier(slow))
    with pytest.raises(FileNotFoundError, match="none.onnx: no such verifier"):
        open_clip_scorer(tmp_path / "none.onnx", RATE)
    (tmp_path / "v.txt").write_text("x")
    with pytest.raises(ValueError, match="a verifier is an exported clip .onnx"):
        open_clip_scorer(tmp_path / "v.txt", RATE)


def test_validated_names_the_four_from_the_first_folder_that_holds_them_all(tmp_path):
    partial, full = tmp_path / "partial", tmp_path / "full"
    partial.mkdir()
    full.mkdir()
    for name in VALIDATED_VERIFIERS:
        (full / name).write_bytes(b"")
    (partial / VALIDATED_VERIFIERS[0]).write_bytes(b"")
    assert validated_verifiers([partial, full]).split(",") == [
        str(full / name) for name in VALIDATED_VERIFIERS]
    with pytest.raises(FileNotFoundError, match=f"--verifier validated: .* not all in {partial}"):
        validated_verifiers([partial])


@pytest.fixture(scope="module")
def tiny_verifier(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(checkpoint, clip export, streaming export) of one tiny MFCC LSTM."""
    from kws.export.onnx_export import export_spotter
    from kws.training.checkpoint import save_spotter

    folder = tmp_path_factory.mktemp("verifier")
    spotter = tiny_spotter()
    ckpt = save_spotter(folder / "tiny.pt", spotter,
                        {"task": "toy", "split": {}, "train": {}, "metrics": {}})
    for name, streaming in (("clip", False), ("stream", True)):
        export_spotter(spotter, folder / f"{name}.onnx", streaming=streaming, chunk_ms=10.0,
                       source_checkpoint=str(ckpt), check_audio=(tone(seconds=1.0), "tone"))
    return ckpt, folder / "clip.onnx", folder / "stream.onnx"


def test_clip_export_and_checkpoint_verify_alike(tiny_verifier, rng):
    ckpt, clip, stream = tiny_verifier
    windows = (0.3 * rng.standard_normal((5, RATE))).astype(np.float32)
    windows[0] = tone(700, 1.0)
    onnx, torch_ = open_clip_scorer(clip, RATE), open_clip_scorer(ckpt, RATE)
    assert isinstance(onnx, OnnxClipScorer) and isinstance(torch_, TorchClipScorer)
    np.testing.assert_allclose(onnx.posteriors(windows), torch_.posteriors(windows), atol=1e-5)
    both = open_clip_scorer(f"{clip},{ckpt}", RATE)
    np.testing.assert_allclose(both.posteriors(windows), onnx.posteriors(windows), atol=1e-5)
    with pytest.raises(ValueError, match="'streaming' export; a verifier is a clip model"):
        open_clip_scorer(stream, RATE)
    with pytest.raises(ValueError, match="a clip model for 16000 Hz, but the stream runs at "
                       "8000 Hz; export it with --rate 8000"):
        open_clip_scorer(clip, 8000)
    assert open_clip_scorer(ckpt, 8000).clip_samples == 8000  # a checkpoint serves any rate


def bench_verified(stream: Path, dev_root: Path, out: Path, capsys, thresholds: str,
                   verifier: Path, delay_ms: str) -> tuple[int, str, str]:
    """``kws bench stream --verifier`` on the 30-s seed-3 stream, candidates at 0.22 (this
    untrained model's posteriors sit near 0.2)."""
    return run_cli(["bench", "stream", "--model", str(stream), "--data", str(dev_root),
                    "--minutes", "0.5", "--seed", "3", "--thresholds", thresholds,
                    "--candidate-threshold", "0.22", "--verifier", str(verifier),
                    "--verify-delay-ms", delay_ms, "--json", str(out)], capsys)


def test_kws_stream_and_bench_with_a_verifier(tiny_verifier, dev_root, tmp_path, capsys):
    from kws.data.audio import save_audio

    ckpt, clip, stream = tiny_verifier
    wav = tmp_path / "a.wav"
    save_audio(wav, np.concatenate([silence(0.5), tone(300, 0.7), silence(1.0)]), RATE)
    code, out, err = run_cli(["stream", str(stream), str(wav), "--threshold", "0.05",
                              "--verifier", str(clip), "--verify-threshold", "0.01"], capsys)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["keyword", "start_s", "end_s", "score", "candidate"]
    code, alone, err = run_cli(["stream", str(stream), str(wav), "--threshold", "0.05"], capsys)
    assert code == 0, err
    # every candidate passes a 0.01 verifier: as many events as the detector fires alone
    assert len(out.splitlines()) == len(alone.splitlines()) > 1

    # With no delay the cascade fires a subset of the candidates, on their own windows: a
    # verifier threshold every window passes gives back the detector's own score. (This
    # untrained model's posteriors sit near 0.2: candidates at 0.22, verifier cuts above.)
    report_path = tmp_path / "bench.json"
    code, stdout, err = bench_verified(stream, dev_root, report_path, capsys, "0.001,0.22,0.25",
                                       clip, "0")
    assert code == 0, err
    report = json.loads(report_path.read_text())
    verification = report["verifier"]
    assert verification["model"] == str(clip) and verification["candidate_threshold"] == 0.22
    alone = verification["detector_alone"]["results"]
    assert [r["threshold"] for r in alone] == [0.001, 0.22, 0.25]
    assert verification["candidates"] == alone[1]["hits"] + alone[1]["false_alarms"] > 0
    everything, _, strict = report["results"]
    assert (everything["hits"], everything["false_alarms"]) == (alone[1]["hits"],
                                                                alone[1]["false_alarms"])
    assert everything["hits"] > 0
    assert strict["hits"] + strict["false_alarms"] < verification["candidates"]  # it rejects
    for row in report["results"][1:]:
        assert row["hits"] <= everything["hits"]
        assert row["false_alarms"] <= everything["false_alarms"]
    assert "thresholds below are the verifier's" in stdout and "the detector alone" in stdout
    # the same candidates with a delay: whole chunks later, through the checkpoint in PyTorch
    code, _, err = bench_verified(stream, dev_root, report_path, capsys, "0.001", ckpt, "245")
    assert code == 0, err
    delayed = json.loads(report_path.read_text())["verifier"]
    assert delayed["delay_chunks"] == 25  # 245 ms rounds up to whole 10-ms chunks
    assert delayed["candidates"] == verification["candidates"]
    code, _, err = run_cli(["bench", "stream", "--model", str(stream), "--data", str(dev_root),
                            "--verifier", str(clip), "--calibrate", "10"], capsys)
    assert code != 0 and "with --verifier the sweep is over the verifier's" in err


def test_the_detector_threshold_defaults_lower_when_a_verifier_decides():
    from argparse import Namespace

    from kws.streaming.cli import detector_threshold

    assert detector_threshold(Namespace(threshold=None, verifier=None)) == 0.8
    assert detector_threshold(Namespace(threshold=None, verifier="v.onnx")) == 0.5
    assert detector_threshold(Namespace(threshold=0.7, verifier="v.onnx")) == 0.7


def test_verifier_settings_script_matches_kws_bench_stream(tiny_verifier, dev_root, tmp_path,
                                                           capsys):
    ckpt, clip, stream = tiny_verifier
    bench = load_benchmark("verifier_settings")
    out = tmp_path / "settings.json"
    assert bench.main(["--model", str(stream), "--verifiers", f"{clip},{ckpt}+{clip}",
                       "--data", str(dev_root), "--split", "test", "--minutes", "0.5",
                       "--seed", "3", "--delays", "0,400", "--candidates", "0.2,0.22",
                       "--json", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = {(r["verifier"], r["delay_ms"], r["candidate_threshold"]): r
            for r in report["settings"]}
    assert len(rows) == 8 and "(the detector alone)" in table
    # (this untrained model's posteriors sit near 0.2: both thresholds open candidates)
    assert all(row["candidates"] > 0 for row in rows.values())
    # the checkpoint averaged with its own export is the export: the same curve
    for delay, threshold in itertools.product((0.0, 400.0), (0.2, 0.22)):
        assert rows[(str(clip), delay, threshold)]["best_within"] == rows[
            (f"{ckpt}+{clip}", delay, threshold)]["best_within"]
    # one setting, read again by kws bench stream --verifier on the same stream
    code, _, err = bench_verified(stream, dev_root, out, capsys, "0.5", clip, "400")
    assert code == 0, err
    bench_report = json.loads(out.read_text())
    assert bench_report["best_within"] == rows[(str(clip), 400.0, 0.22)]["best_within"]
    assert bench_report["verifier"]["candidates"] == rows[(str(clip), 400.0, 0.22)]["candidates"]
    assert bench_report["verifier"]["detector_alone"]["best_within"] == report[
        "detector_alone"]["best_within"]


def test_the_demos_verify_too(tiny_verifier):
    from kws.cli import UserError, build_parser
    from kws.demo.cli import open_detector_factory

    ckpt, clip, stream = tiny_verifier
    args = build_parser().parse_args(["serve", "--model", str(stream), "--verifier", str(clip),
                                      "--verify-delay-ms", "250"])
    make, name = open_detector_factory(args)
    first, second = make(), make()
    assert name == f"{stream}, verified by {clip}"
    assert first.verifier is second.verifier and first.verifier.delay_ms == 250.0
    assert first.decoder.thresholds[0] == 0.5 and first.verifier.threshold == 0.9
    first.feed(tone(400, 0.3))  # each listener keeps its own audio for the verifier
    assert np.any(first.recent_audio) and not np.any(second.recent_audio)
    args = build_parser().parse_args(["listen", "--stand-in", "yes", "--verifier", str(clip)])
    with pytest.raises(UserError, match="--stand-in runs instead of a model"):
        open_detector_factory(args)


def test_mined_windows_are_a_training_folder_labelled_by_what_plays(tiny_verifier, dev_root,
                                                                    tmp_path, capsys):
    from kws.data.speech_commands import SpeechCommands, extra_word_clips, speaker_of

    _, _, stream = tiny_verifier
    mine = load_benchmark("mine_verifier_windows")
    out = tmp_path / "mined"
    # (this untrained model's posteriors sit near 0.2: a low threshold gives candidates)
    assert mine.main(["--model", str(stream), "--data", str(dev_root), "--minutes", "0.5",
                      "--seeds", "5", "--delays", "0,400", "--candidate-threshold", "0.22",
                      "--out", str(out)]) == 0
    summary = json.loads((out / "mined.json").read_text())
    assert summary["windows"] > 0 and summary["split"] == "train"
    clips, info = extra_word_clips(out, "sc12")
    assert len(clips) == summary["windows"]
    # every window is by a training speaker: validation and test speakers stay unheard
    held_out = {s for split in ("val", "test")
                for s in SpeechCommands(dev_root, "sc12").speakers()[split]}
    assert held_out and not {speaker_of(c.path.name) for c in clips} & held_out
    labels = {c.label for c in clips}
    assert labels <= set(SpeechCommands(dev_root, "sc12").labels)
    # one second each, and the labeller takes the clip that overlaps most
    from kws.data.audio import load_audio
    assert load_audio(clips[0].path, RATE).size == RATE
    from kws.streaming.longstream import Placement
    placements = [Placement("yes", True, 0.0, 1.0, "a/x_nohash_0.wav"),
                  Placement("dog", False, 1.2, 2.2, "b/dog_y_nohash_0.wav")]
    assert mine.label_window(0.5, 1.5, placements).word == "yes"
    assert mine.label_window(1.1, 2.1, placements).word == "dog"
    assert mine.label_window(0.8, 1.25, placements) is None  # 0.2 s of yes: too little
    with pytest.raises(SystemExit):  # never mixes two minings in one folder
        mine.main(["--model", str(stream), "--out", str(out)])
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.parametrize("chunk_samples", [160, 1120, 24000])
def test_the_verifier_ring_holds_the_last_clip_whatever_the_chunk(chunk_samples, rng):
    """1120 samples (70 ms) do not divide a 16000-sample clip: writes wrap mid-chunk."""
    detector = StreamingDetector(ScriptedBackend([], chunk_samples=chunk_samples),
                                 reset_period_s=None, verifier=Verifier(LoudnessScorer()))
    audio = rng.standard_normal(5 * RATE).astype(np.float32) * 0.1
    fed = 0
    for size in (700, 3000, 16001, 9, 40000):
        detector.feed(audio[fed : fed + size])
        fed += size
        heard = detector.chunks_done * chunk_samples
        want = np.concatenate([np.zeros(max(0, RATE - heard), np.float32),
                               audio[max(0, heard - RATE) : heard]])
        np.testing.assert_array_equal(detector.recent_audio, want)


def test_verifier_benchmark_times_both_backends(tiny_verifier, tmp_path, capsys):
    _, clip, stream = tiny_verifier
    bench = load_benchmark("bench_verifier")
    assert bench.clip_exports(clip.parent) == [clip]  # the streaming export is not one
    out = tmp_path / "v.json"
    assert bench.main([str(clip), "--windows", "2", "--rounds", "1", "--threads", "1",
                       "--per-hour", "3600", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["onnx_cpu_ms"] > 0 and row["torch_cpu_ms"] > 0
    # at one candidate a second the real-time factor is the seconds per window
    assert row["onnx_rtf_at_3600_per_hour"] == pytest.approx(row["onnx_cpu_ms"] / 1000)
    assert "tiny.pt" in row["checkpoint"] and "onnxruntime" in capsys.readouterr().out
    assert bench.main(["--export-dir", str(tmp_path)]) == 1  # none there: says so
