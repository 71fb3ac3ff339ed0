"""Shipped checkpoints: round trip, atomic writes, and clear refusals of anything else."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import tone

import kws
from kws.features import FeatureConfig
from kws.models import build_model
from kws.spotter import KeywordSpotter
from kws.training.checkpoint import (
    SPOTTER_KEYS,
    CheckpointError,
    load_spotter,
    read_checkpoint,
    save_spotter,
)
from kws.training.train import AtomicCheckpointIO

LABELS = ["yes", "no", "_unknown_"]
META = {
    "task": "sc12",
    "split": {"rule": "speaker_hash", "val_percent": 10.0, "test_percent": 10.0,
              "speakers": {"train": ["aa"], "val": ["bb"], "test": ["cc"]}},
    "train": {"epochs": 3, "seconds": 1.5, "hardware": {"device": "cpu"}},
    "metrics": {"val/acc": 0.75},
}


def make_spotter(family: str = "tcn") -> KeywordSpotter:
    torch.manual_seed(0)
    cfg = FeatureConfig("mfcc", sample_rate=8000)
    model = build_model(family, cfg.channels, len(LABELS), pipeline="mfcc", d_model=8)
    return KeywordSpotter(cfg, model, LABELS, clip_seconds=0.5)


@pytest.fixture
def shipped(tmp_path: Path) -> tuple[Path, KeywordSpotter]:
    spotter = make_spotter()
    return save_spotter(tmp_path / "model.pt", spotter, META), spotter


def wave() -> torch.Tensor:
    return torch.from_numpy(tone(700.0, 0.5, 8000))[None]


@pytest.mark.parametrize("family", ["tcn", "lstm"])
def test_round_trip_gives_same_logits_and_meta(tmp_path, family):
    spotter = make_spotter(family).eval()
    path = save_spotter(tmp_path / "m.pt", spotter, META)
    loaded, meta = load_spotter(path)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(wave()), spotter(wave()), rtol=0, atol=0)
    assert loaded.labels == LABELS and loaded.clip_seconds == 0.5
    assert meta["format_version"] == kws.FORMAT_VERSION and meta["kws_version"] == kws.__version__
    assert meta["split"] == META["split"] and meta["metrics"] == {"val/acc": 0.75}
    assert meta["train"] == {**META["train"], "clip_seconds": 0.5}
    assert meta["model_config"]["family"] == family
    assert meta["feature_config"] == spotter.feature_config.to_dict()


def test_file_is_plain_data_loadable_weights_only(shipped):
    path, spotter = shipped
    data = torch.load(path, weights_only=True)
    assert tuple(data) == SPOTTER_KEYS
    assert set(data["state_dict"]) == set(spotter.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in data["state_dict"].values())


def test_meta_must_be_complete_and_json_able(tmp_path):
    spotter = make_spotter()
    with pytest.raises(ValueError, match=r"missing \['metrics'\]"):
        save_spotter(tmp_path / "a.pt", spotter, {k: META[k] for k in ("task", "split", "train")})
    with pytest.raises(ValueError, match="meta\\['metrics'\\] must be JSON-able"):
        save_spotter(tmp_path / "b.pt", spotter, {**META, "metrics": {"acc": object()}})
    assert not list(tmp_path.iterdir())


def test_crash_mid_write_keeps_the_old_file(shipped, monkeypatch):
    path, spotter = shipped
    before = path.read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_spotter(path, spotter, META)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_lightning_checkpoint_io_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (f.write(b"xx"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert io.load_checkpoint(path, weights_only=True)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def rewrite(path: Path, **changes) -> Path:
    data = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    torch.save(data, path)
    return path


def test_other_format_version_fails_naming_file_and_versions(shipped):
    path, _ = shipped
    rewrite(path, format_version=99, kws_version="9.0")
    with pytest.raises(CheckpointError) as err:
        load_spotter(path)
    message = str(err.value)
    assert str(path) in message and "format_version 99" in message
    assert "kws 9.0" in message and f"reads format_version {kws.FORMAT_VERSION}" in message


def test_missing_format_version_fails(shipped):
    path, _ = shipped
    rewrite(path, format_version=None)
    with pytest.raises(CheckpointError, match="has no format_version"):
        load_spotter(path)


def test_unknown_or_missing_key_fails(shipped):
    path, _ = shipped
    rewrite(path, optimizer={"lr": 1.0})
    with pytest.raises(CheckpointError, match=r"unknown key\(s\) \['optimizer'\]"):
        load_spotter(path)
    rewrite(path, optimizer=None, labels=None)
    with pytest.raises(CheckpointError, match=r"missing key\(s\) \['labels'\]"):
        load_spotter(path)


def test_weights_that_do_not_fit_the_model_fail(shipped):
    path, _ = shipped
    data = torch.load(path, weights_only=True)
    rewrite(path, model_config={**data["model_config"], "d_model": 12})
    with pytest.raises(CheckpointError, match="does not rebuild into a spotter"):
        load_spotter(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, I am a text file", bytes(range(256)) * 4],
    ids=["empty", "text", "binary"],
)
def test_non_checkpoint_files_fail_clearly(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a torch checkpoint") as err:
        load_spotter(path)
    assert str(path) in str(err.value)


def test_truncated_checkpoint_fails_clearly(shipped):
    path, _ = shipped
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_spotter(path)


class Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle2", "pickle5", "torch"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format_version": kws.FORMAT_VERSION, "labels": Exploit(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(writer[-1])))
    with pytest.raises(CheckpointError) as err:
        load_spotter(path)
    message = str(err.value)
    assert message.startswith(str(path))
    if writer == "pickle5":  # framed pickles stop the safe loader before it meets the object
        assert "safe loader refused" in message
    else:
        assert "refusing to unpickle" in message and "system" in message
    assert not marker.exists()


def test_missing_file_and_non_dict(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_spotter(tmp_path / "nope.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        read_checkpoint(tmp_path / "list.pt")


def test_foreign_lightning_checkpoint_fails_clearly(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="without kws metadata"):
        load_spotter(path)
