"""scripts/gpu_train.py, the one prepared run for a lent GPU, tried here on the CPU.

A GPU comes rarely and for minutes, so the script must work the first time: the
plan fits the budget, every job trains, and the archive holds loadable models.
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import pytest
from test_training import make_speech_commands

from kws.training.checkpoint import load_spotter

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_train.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_fits_the_budget_when_jobs_share_the_device():
    plan = load_script().plan_epochs
    # 2,919 + 0.35 * 413 samples at 100/s: 30.6 s an epoch alone, 91.8 s with three
    # jobs; 0.8 of 10 minutes is 480 s: 5 epochs.
    assert plan(100.0, 2919, 413, 10.0, 3, 40) == 5
    assert plan(100.0, 2919, 413, 10.0, 1, 40) == 15
    assert plan(1e6, 2919, 413, 10.0, 3, 40) == 40  # never past the config's own epochs
    assert plan(1.0, 2919, 413, 10.0, 3, 40) == 1  # at least one


def test_trial_run_on_the_cpu_trains_every_job_and_packs_them(tmp_path, capsys):
    data = make_speech_commands(tmp_path / "speech_commands_synthetic")
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--data", str(data), "--out", str(out), "--work", str(work), "--device", "cpu",
            "--quick-throughput", "--steps", "1", "--minutes", "2",
            "--jobs", "tcn_raw,lstm_raw", "--set", "model.d_model=8",
            "--set", "data.clip_seconds=0.1", "--set", "data.batch_size=16",
            "--set", "trainer.max_epochs=1"]  # the plan never goes past the config's epochs
    assert load_script().main(argv) == 0
    summary = json.loads((out / "gpu_summary.json").read_text())
    assert summary == json.loads(capsys.readouterr().out)
    assert set(summary["jobs"]) == {"tcn_raw", "lstm_raw"}
    for row in summary["jobs"].values():
        assert row["exit_code"] == 0 and row["epochs_planned"] >= 1
        assert row["epochs"] == pytest.approx(row["epochs_planned"])
        assert row["train_clips"] > 0 and 0.0 <= row["metrics"]["test/acc"] <= 1.0
        assert f"trainer.max_epochs={row['epochs_planned']}" in row["command"]
    rows = json.loads((out / "throughput.json").read_text())["results"]
    assert {(r["family"], r["pipeline"]) for r in rows} >= {("tcn", "raw"), ("lstm", "raw")}
    # Only what a device returns: at most 8 files in $OUT, none deeper.
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_runs.tar.gz", "gpu_summary.json", "lstm_raw.log", "tcn_raw.log", "throughput.json"]
    assert "test/acc" in (out / "tcn_raw.log").read_text()  # the job's own output
    unpacked = tmp_path / "back"
    with tarfile.open(out / "gpu_runs.tar.gz") as archive:
        names = archive.getnames()
        archive.extractall(unpacked, filter="data")
    assert "work/tcn_raw/checkpoints/last.ckpt" in names and "work/lstm_raw.log" in names
    assert not [n for n in names if "/best-" in n]  # the .pt holds the best weights
    spotter, meta = load_spotter(unpacked / "work" / "tcn_raw" / "checkpoints" / "tcn_raw.pt")
    assert meta["metrics"] == summary["jobs"]["tcn_raw"]["metrics"]
    assert spotter.sample_rate == 16000


def test_refuses_what_would_waste_the_device(tmp_path, capsys):
    main = load_script().main
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--jobs", "s4_mfcc"])
    assert "unknown s4_mfcc" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert "make it with kws data convert" in capsys.readouterr().err
    (tmp_path / "work" / "old").mkdir(parents=True)
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "o"),
              "--work", str(tmp_path / "work")])
    assert "holds earlier runs" in capsys.readouterr().err


def test_failed_throughput_and_a_hung_job_still_end_with_an_archive(tmp_path, monkeypatch, capsys):
    script = load_script()
    data = make_speech_commands(tmp_path / "speech_commands_synthetic")

    def broken(*args, **kwargs):
        raise script.subprocess.CalledProcessError(1, ["train_throughput.py"])

    started, killed = [], []

    class Job:
        """The first job ends at once, the second hangs past the deadline until killed."""

        def __init__(self, command, **kwargs):
            started.append(command)
            self.index = len(started) - 1
            self.hangs = self.index == 1

        def wait(self, timeout: float | None = None) -> int:
            if self.hangs and timeout is not None:
                assert timeout <= 60 * (4 + 1.5)  # --minutes plus the default grace
                raise script.subprocess.TimeoutExpired("kws train", timeout)
            return -9 if self.hangs else 0

        def kill(self) -> None:
            killed.append(self.index)

    monkeypatch.setattr(script, "run_throughput", broken)
    monkeypatch.setattr(script.subprocess, "Popen", Job)
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"),
            "--device", "cpu", "--jobs", "s4_raw_band,tcn_raw", "--fallback-epochs", "3",
            "--minutes", "4"]
    assert script.main(argv) == 1  # a job failed: the exit code says so
    summary = json.loads((tmp_path / "out" / "gpu_summary.json").read_text())
    assert "train_throughput.py" in summary["throughput_error"]
    assert killed == [1] and summary["jobs"]["tcn_raw"]["killed_at_deadline"]
    assert summary["jobs"]["tcn_raw"]["exit_code"] == -9
    assert summary["jobs"]["s4_raw_band"]["exit_code"] == 0
    assert (tmp_path / "out" / "gpu_runs.tar.gz").is_file()  # packed all the same
    assert [job["epochs_planned"] for job in summary["jobs"].values()] == [3, 3]
    assert len(started) == 2
    for command in started:
        assert "trainer.max_epochs=3" in command and "trainer.max_minutes=4.5" in command
    assert "model.bandlimit=1.0" in started[0] and "data.augment.low_rate_prob=0.5" in started[0]
