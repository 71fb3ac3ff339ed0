"""Training: configs, the resumable sampler, a tiny real run, deterministic resume, the CLI.

The runs train on a synthetic Speech Commands folder in the test-set layout: each
keyword is a tone of its own pitch, ``_unknown_`` is a two-tone chord and
``_silence_`` is faint noise, at 8 kHz, a quarter second per clip.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, tone
from lightning.pytorch.callbacks import Callback

from kws.cli import main
from kws.data.audio import save_audio
from kws.data.speech_commands import SC10, SILENCE, TASKS, UNKNOWN, which_set
from kws.training.checkpoint import load_spotter, read_checkpoint, save_spotter
from kws.training.config import CONFIG_DIR, ConfigError, load_config, parse_set
from kws.training.datamodule import EpochKeyed, EpochSampler, SpeechCommandsDataModule
from kws.training.module import (
    KWSLightningModule,
    build_spotter,
    distillation_loss,
    pooled_logits,
    spec_augment,
    warmup_cosine,
)
from kws.training.train import resolve_precision, train

RATE, SECONDS = 8000, 0.25


def speakers_per_split(n_train: int, n_val: int, n_test: int) -> list[str]:
    """Speaker ids that the data set's own hash puts in each split, in these numbers."""
    want, got, i = {"train": n_train, "val": n_val, "test": n_test}, [], 0
    counts = dict.fromkeys(want, 0)
    while counts != want:
        speaker = f"{i:08x}"
        split = which_set(speaker)
        if counts[split] < want[split]:
            counts[split] += 1
            got.append(speaker)
        i += 1
    return got


def make_speech_commands(root: Path, rate: int = RATE, seconds: float = SECONDS) -> Path:
    """A test-set layout folder: 10 tone keywords, chord _unknown_, noise _silence_."""
    rng = np.random.default_rng(0)
    n = int(rate * seconds)
    speakers = speakers_per_split(6, 2, 2)
    for k, word in enumerate(SC10):
        (root / word).mkdir(parents=True)
        for speaker in speakers:
            pitch = 300 * 1.25**k * (1 + 0.02 * rng.standard_normal())
            audio = tone(pitch, seconds, rate, 0.3) + 0.01 * rng.standard_normal(n)
            save_audio(root / word / f"{speaker}_nohash_0.wav", audio, rate)
    (root / UNKNOWN).mkdir()
    for speaker in speakers:
        audio = tone(350, seconds, rate, 0.2) + tone(1900, seconds, rate, 0.2)
        save_audio(root / UNKNOWN / f"bed_{speaker}_nohash_0.wav", audio, rate)
    (root / SILENCE).mkdir()
    for i in range(20):
        save_audio(root / SILENCE / f"{i:04d}.wav", 0.01 * rng.standard_normal(n), rate)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_speech_commands(tmp_path_factory.mktemp("sc") / "speech_commands_synthetic")


@pytest.fixture(scope="module")
def config_path(data_root, tmp_path_factory) -> Path:
    config = {
        "seed": 3,
        "data": {"root": str(data_root), "task": "sc12", "clip_seconds": SECONDS,
                 "batch_size": 16, "num_workers": 0,
                 "augment": {"shift_ms": 20.0, "noise_prob": 0.5, "snr_db": [10.0, 20.0]}},
        "features": {"kind": "mfcc", "sample_rate": RATE},
        "spec_augment": {"freq_masks": 1, "max_bands": 4, "time_masks": 1, "max_frames": 5},
        "model": {"name": "tcn", "d_model": 16},
        "optim": {"lr": 0.02, "warmup_epochs": 0.5},
        "trainer": {"max_epochs": 5, "patience": 0, "checkpoint_every_n_steps": 4,
                    "log_every_n_steps": 1, "progress_bar": False},
    }
    path = tmp_path_factory.mktemp("cfg") / "tones.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def reference(config_path, tmp_path_factory) -> Path:
    """An uninterrupted run through the CLI: 5 epochs of 6 batches."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    assert main(["train", "--config", str(config_path), "--out", str(out)]) == 0
    return out


class Crash(Callback):
    """Dies after optimizer step ``step``, like a killed job."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def metrics_rows(out: Path, key: str) -> list[dict[str, str]]:
    """Rows of the latest run's metrics.csv that hold ``key`` (a resume starts a new version)."""
    latest = max((out / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return [r for r in csv.DictReader((latest / "metrics.csv").open()) if r.get(key)]


# -- configs ------------------------------------------------------------------------------


def test_config_defaults_overrides_and_types(config_path):
    config = load_config(config_path, ["optim.lr=0.003", "trainer.devices=[0, 1]",
                                       "data.augment=null", "model.dropout=0.2",
                                       "trainer.max_epochs=7.0"])
    assert config["optim"]["lr"] == 0.003 and config["optim"]["weight_decay"] == 0.05
    assert config["trainer"]["devices"] == [0, 1] and config["trainer"]["max_epochs"] == 7
    assert isinstance(config["trainer"]["max_epochs"], int)
    assert config["data"]["augment"] is None and config["model"]["dropout"] == 0.2
    assert parse_set("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    # YAML reads 1e-3 (no dot) as a string; a number key takes it as the number it is.
    config = load_config(config_path, ["optim.lr=1e-3", "optim.ssm_lr=2.5E-4",
                                       "trainer.max_epochs=1e1"])
    assert config["optim"]["lr"] == 0.001 and config["optim"]["ssm_lr"] == 0.00025
    assert config["trainer"]["max_epochs"] == 10 and isinstance(config["trainer"]["max_epochs"],
                                                                int)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["optim.lrr=0.1"], r"unknown key 'optim.lrr' \(known here: .*lr"),
        (["optim.lr=fast"], r"optim.lr must be a number like 0.02, got 'fast'"),
        (["trainer.max_epochs=2.5"], r"trainer.max_epochs must be a whole number like 5, got 2.5"),
        (["trainer.progress_bar=1"], r"progress_bar must be true or false"),
        (["optim.label_smoothing=1.5"], r"label_smoothing must be in \[0, 1\)"),
        (["optim=3"], r"optim must be a mapping"),
        (["spec_augment.time_masks=-1"], r"spec_augment values must be >= 0"),
        (["features.kind=raw"], r"spec_augment .* needs features.kind: mfcc"),
        (["lr"], r"expected section.key=value"),
        (["distill.teacher=[a.pt]"], r"unknown key 'distill.teacher' \(known here: .*teachers"),
        (["distill.teachers=a.pt"], r"distill.teachers must be a list"),
        (["distill.teachers=[3]"], r"distill.teachers must be a list of checkpoint paths"),
        (["distill.weight=1.5"], r"distill.weight must be in \[0, 1\]"),
        (["distill.temperature=0"], r"distill.temperature > 0"),
        (["data.extra_train=more"], r"data.extra_train must be a list like \[\]"),
        (["data.extra_train=[3]"], r"data.extra_train must be a list of data folders"),
        (["init_from=3"], r"init_from must be a checkpoint path or null"),
    ],
)
def test_config_errors_name_the_key(config_path, sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_path, sets)


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batch_sise: 3\n")
    with pytest.raises(ConfigError, match=rf"{bad}: unknown key 'data.batch_sise'"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="shipped configs: .*tiny_mfcc"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_build_their_spotters():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    expected = {f"{m}_{p}" for m in ("s4", "s4d", "tcn", "lstm") for p in ("raw", "mfcc")}
    assert expected | {"tiny_mfcc", "s4_raw_pool", "tcn_raw_pool", "lstm_raw_frame"} == set(names)
    have_s4 = (REPO / "kws" / "models" / "s4.py").is_file()
    for name in names:
        config = load_config(name)
        if config["model"]["name"].startswith("s4") and not have_s4:
            continue
        spotter = build_spotter(config, list(TASKS[config["data"]["task"]]))
        assert spotter.feature_config.kind == name.split("_")[1]
        assert spotter.model.family == config["model"]["name"]


def test_spec_augment_masks_whole_bands_and_frames_with_the_clip_mean():
    log_mel = torch.randn(4, 98, 40) * 10 - 50
    torch.manual_seed(1)
    masked = spec_augment(log_mel, freq_masks=2, max_bands=8, time_masks=2, max_frames=10)
    torch.manual_seed(1)
    again = spec_augment(log_mel, freq_masks=2, max_bands=8, time_masks=2, max_frames=10)
    assert torch.equal(masked, again)  # the global generator decides: resumable
    changed = masked != log_mel
    assert changed.any()
    for clip in range(4):
        band_cols = changed[clip].all(dim=0)  # bands masked in every frame
        frame_rows = changed[clip].all(dim=1)  # frames masked in every band
        assert int(band_cols.sum()) <= 16 and int(frame_rows.sum()) <= 20
        # every changed cell lies in a masked band or frame and holds the clip's mean
        assert torch.equal(changed[clip], band_cols[None, :] | frame_rows[:, None])
        torch.testing.assert_close(masked[clip][changed[clip]],
                                   log_mel[clip].mean().expand(int(changed[clip].sum())))
    assert torch.equal(spec_augment(log_mel, 0, 8, 0, 10), log_mel)


def test_cepstra_of_the_log_mel_are_the_frontend_features():
    config = load_config(CONFIG_DIR / "s4_mfcc.yaml")
    frontend = build_spotter(config, list(TASKS["sc12"])).frontend
    wave = torch.from_numpy(tone(440.0, 1.0, 16000)).float()[None]
    torch.testing.assert_close(frontend.cepstra(frontend.log_mel(wave)), frontend(wave))


def test_precision_is_32_on_cpu_and_bf16_on_a_bf16_gpu(monkeypatch):
    cfg = {"precision": "auto", "accelerator": "auto"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision(cfg) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision(cfg) == "bf16-mixed"
    assert resolve_precision({**cfg, "accelerator": "cpu"}) == "32-true"
    assert resolve_precision({**cfg, "precision": "16-mixed"}) == "16-mixed"


# -- sampler and schedule -------------------------------------------------------------------


def test_epoch_sampler_depends_on_seed_and_epoch_only():
    sampler = EpochSampler(10, seed=5)
    sampler.set_epoch(2)
    first = list(sampler)
    assert [e for _, e in first] == [2] * 10 and sorted(i for i, _ in first) == list(range(10))
    again = EpochSampler(10, seed=5)
    again.set_epoch(2)
    assert list(again) == first
    sampler.set_epoch(3)
    assert list(sampler) != first


def test_epoch_sampler_resumes_once_and_shards_by_rank():
    sampler = EpochSampler(10, seed=5)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.resume_at(1, 4)
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # the next epoch starts at 0 again
    shards = [list(EpochSampler(10, seed=5, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # padded to equal length, like DDP
    assert {i for s in shards for i, _ in s} == set(range(10))
    with pytest.raises(ValueError, match="outside this epoch"):
        sampler.resume_at(0, 11)


def test_warmup_then_cosine_to_zero():
    factor = warmup_cosine(4, 20)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(12) == pytest.approx(0.5)
    assert factor(20) == pytest.approx(0.0, abs=1e-12) and factor(25) == factor(20)
    assert all(factor(s) >= factor(s + 1) for s in range(4, 24))


def test_datamodule_on_the_real_test_set(dev_root):
    config = load_config("tiny_mfcc", [f"data.root={dev_root}", "data.num_workers=0",
                                       "data.batch_size=8"])
    datamodule = SpeechCommandsDataModule(config)
    datamodule.setup()
    assert datamodule.labels == list(TASKS["sc12"])
    speakers = datamodule.split_manifest()["speakers"]
    assert not set(speakers["train"]) & (set(speakers["val"]) | set(speakers["test"]))
    wave, label = next(iter(datamodule.train_dataloader()))
    assert wave.shape == (8, 16000) and wave.dtype == torch.float32 and label.shape == (8,)
    train = EpochKeyed(datamodule.datasets["train"])  # augmented: same key, same audio
    torch.testing.assert_close(train[(5, 0)][0], train[(5, 0)][0], rtol=0, atol=0)
    assert not torch.equal(train[(5, 0)][0], train[(5, 1)][0])  # a new epoch, a new draw
    assert all(datamodule.datasets[s].augment is None for s in ("val", "test"))


def test_extra_train_folders_join_train_without_held_out_speakers(config_path, data_root,
                                                                  tmp_path):
    """A second folder with the same speakers: only its train speakers' words are added."""
    extra = make_speech_commands(tmp_path / "more")
    plain = SpeechCommandsDataModule(load_config(config_path))
    plain.setup()
    datamodule = SpeechCommandsDataModule(load_config(config_path, [
        f"data.extra_train=[{extra}]"]))
    datamodule.setup()
    words = len(SC10) + 1  # the keywords and one _unknown_ word per speaker
    sizes = {s: len(datamodule.datasets[s]) - len(plain.datasets[s]) for s in ("train", "val",
                                                                                 "test")}
    assert sizes == {"train": 6 * words, "val": 0, "test": 0}
    added = datamodule.datasets["train"].clips[-6 * words:]
    assert {c.path.parent.parent for c in added} == {extra}
    manifest = datamodule.split_manifest()
    assert manifest["counts"] == plain.split_manifest()["counts"]
    (info,) = manifest["extra_train"]
    assert info["root"] == str(extra) and info["counts"][UNKNOWN] == 6
    assert info["dropped"]["clips"] == 4 * words and len(info["dropped"]["speakers"]) == 4
    assert set(info["speakers"]) == set(manifest["speakers"]["train"])
    same = SpeechCommandsDataModule(load_config(config_path, [
        f"data.extra_train=[{data_root}]"]))
    with pytest.raises(ValueError, match="data.extra_train: .* is the main data folder"):
        same.setup()


# -- a real run -----------------------------------------------------------------------------


def test_train_learns_and_writes_checkpoints(reference):
    losses = [float(r["train/loss"]) for r in metrics_rows(reference, "train/loss")]
    assert len(losses) == 5 and losses[-1] < 0.6 * losses[0]
    val_acc = [float(r["val/acc"]) for r in metrics_rows(reference, "val/acc")]
    assert max(val_acc) >= 0.8  # chance is 1/12
    ckpts = reference / "checkpoints"
    best = next(ckpts.glob("best-*.ckpt"))
    assert (ckpts / "last.ckpt").is_file() and (reference / "config.yaml").is_file()
    assert (reference / "logs" / "version_0" / "metrics.csv").is_file()

    spotter, meta = load_spotter(ckpts / "tones.pt")
    from_best, best_meta = load_spotter(best)
    wave = torch.from_numpy(tone(300 * 1.25**3, SECONDS, RATE, 0.3))[None]
    with torch.no_grad():
        torch.testing.assert_close(spotter(wave), from_best(wave), rtol=0, atol=0)
        assert spotter.labels[int(spotter(wave).argmax())] == SC10[3]
    assert meta["task"] == "sc12" and meta["labels"] == list(TASKS["sc12"])
    assert meta["split"]["rule"] == "speaker_hash" and len(meta["split"]["speakers"]["val"]) == 2
    assert meta["train"]["config"]["model"] == {"name": "tcn", "d_model": 16}
    assert meta["train"]["hardware"]["device"] == "cpu"
    assert meta["train"]["epochs"] in (1.0, 2.0, 3.0, 4.0, 5.0)  # best is saved at an epoch end
    assert meta["metrics"]["val/acc"] == best_meta["metrics"]["val/acc"] == max(val_acc)
    (logged,) = metrics_rows(reference, "test/acc")  # the trainer's test of the best weights
    assert meta["metrics"]["test/acc"] == pytest.approx(float(logged["test/acc"]))

    last = torch.load(ckpts / "last.ckpt", weights_only=True)  # all plain data
    assert last["global_step"] == 5 * 6
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0, abs=1e-9)
    groups = last["optimizer_states"][0]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]  # no decay on biases and norms


def test_resume_mid_epoch_matches_uninterrupted_run(reference, config_path, tmp_path, capsys):
    out = tmp_path / "crashed"
    config = load_config(config_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, out, name="tones", callbacks=[Crash(step=11)])
    last = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 8  # saved every 4 steps; the crash at step 11 lost 3
    assert last["SpeechCommandsDataModule"] == {"epoch": 1, "next_sample": 2 * 16}  # mid-epoch
    assert last["kws"]["train"]["epochs"] == pytest.approx(1 + 2 / 6, abs=1e-3)

    assert main(["train", "--config", str(config_path), "--out", str(out),
                 "--resume", "last"]) == 0
    a = read_checkpoint(reference / "checkpoints" / "last.ckpt")
    b = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 30
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=1e-7)
    resumed, unbroken = metrics_rows(out, "train/loss"), metrics_rows(reference, "train/loss")
    assert [r["train/loss"] for r in resumed] == [r["train/loss"] for r in unbroken[1:]]
    shipped_a = read_checkpoint(reference / "checkpoints" / "tones.pt")
    shipped_b = read_checkpoint(out / "checkpoints" / "tones.pt")
    assert shipped_a["metrics"] == shipped_b["metrics"]


def test_init_from_starts_the_run_from_trained_weights(reference, config_path, tmp_path):
    """Fine-tuning: the run begins at the checkpoint's weights, with a fresh schedule."""
    trained = reference / "checkpoints" / "tones.pt"
    before, meta = load_spotter(trained)
    # A learning rate too small to move anything: the run must end where it started.
    still = ["trainer.max_epochs=1", "optim.lr=1e-9", "optim.ssm_lr=1e-9"]
    tuned = train(load_config(config_path, [f"init_from={trained}", *still]),
                  tmp_path / "tuned", name="tones")
    after, _ = load_spotter(tuned.spotter_path)
    for key, value in before.state_dict().items():
        torch.testing.assert_close(after.state_dict()[key], value, rtol=0, atol=1e-6)
    assert tuned.metrics["val/acc"] == pytest.approx(meta["metrics"]["val/acc"])
    assert read_checkpoint(tuned.spotter_path)["train"]["config"]["init_from"] == str(trained)
    scratch = train(load_config(config_path, still), tmp_path / "scratch", name="tones")
    assert scratch.metrics["val/acc"] < 0.5 <= meta["metrics"]["val/acc"]


@pytest.mark.parametrize(
    ("sets", "error", "message"),
    [
        (["model.d_model=8"], ValueError,
         r"does not fit this run's model section \(model.d_model: 16 there, 8 here\)"),
        (["features.n_mfcc=13"], ValueError, r"its features .* differ from this run's"),
        (["data.test_percent=40"], ValueError,
         r"trained on \d+ speaker\(s\) that this run holds out"),
    ],
)
def test_init_from_refuses_another_network_or_held_out_speakers(reference, config_path,
                                                                 tmp_path, sets, error, message):
    trained = reference / "checkpoints" / "tones.pt"
    config = load_config(config_path, [f"init_from={trained}", *sets])
    with pytest.raises(error, match=rf"init_from {trained}: .*{message}"):
        train(config, tmp_path / "run", name="tones")


def test_init_from_a_missing_file_names_it(config_path, tmp_path):
    config = load_config(config_path, [f"init_from={tmp_path / 'nothing.pt'}"])
    with pytest.raises(FileNotFoundError, match="init_from: .*nothing.pt does not exist"):
        train(config, tmp_path / "run", name="tones")


def test_time_limited_run_resumes_only_with_a_larger_limit(config_path, tmp_path, capsys):
    out = tmp_path / "capped"
    argv = ["train", "--config", str(config_path), "--out", str(out)]
    assert main([*argv, "--set", "trainer.max_minutes=0.0001"]) == 0  # stops after a step
    last = read_checkpoint(out / "checkpoints" / "last.ckpt")
    used = last["callbacks"]["Timer"]["time_elapsed"]["train"]
    assert 0.006 <= used < 60 and last["global_step"] < 30
    capsys.readouterr()
    # Lightning counts the limit across resumes: the same limit would stop at once.
    assert main([*argv, "--resume", "last", "--set", "trainer.max_minutes=0.0001"]) == 1
    err = capsys.readouterr().err
    assert "already trained for" in err and "trainer.max_minutes=null" in err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*argv, "--resume", "last", "--set", "trainer.max_minutes=null"]) == 0
    assert not [w for w in caught if "Timer" in str(w.message)]
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 30


def test_context_crop_keeps_whole_steps_and_the_window_is_the_clip(config_path):
    config = load_config(config_path, ["data.augment.context_s=0.1"])
    module = KWSLightningModule(config, list(TASKS["sc12"])).eval()
    clip, context = int(RATE * SECONDS), module.context_samples
    assert context == 800  # 0.1 s at 8 kHz: 10 MFCC hops of 80 samples
    wave = 0.1 * torch.randn(3, context + clip)
    frames = module.spotter.frontend.config.num_frames(clip)
    seen = set()
    for step in range(40):
        torch.manual_seed(step)
        cropped, window = module.crop_context(wave)
        kept = cropped.shape[1] - clip
        assert kept % 80 == 0 and 0 <= kept <= context and window == frames
        torch.testing.assert_close(cropped, wave[:, context - kept :], rtol=0, atol=0)
        seen.add(kept)
    assert len(seen) >= 8  # 11 lengths possible, 0 and the whole context among them
    model, frontend = module.spotter.model, module.spotter.frontend
    with torch.no_grad():
        alone, window = module.crop_context(wave, kept=0)
        pooled = model.classify(model.features(frontend(alone))[:, -window:].mean(dim=1))
        torch.testing.assert_close(pooled, module.spotter(wave[:, context:]))
        full, window = module.crop_context(wave, kept=context)
        after = model.classify(model.features(frontend(full))[:, -window:].mean(dim=1))
        assert not torch.allclose(after, pooled, atol=1e-3)  # the context reached the state
    with pytest.raises(ValueError, match="multiple of 80 samples"):
        module.crop_context(wave, kept=40)


def test_training_with_preceding_context_learns(config_path, tmp_path):
    config = load_config(config_path, ["data.augment.context_s=0.1"])
    data = SpeechCommandsDataModule(config)
    data.setup()
    wave, _ = next(iter(data.train_dataloader()))
    assert wave.shape == (16, 800 + int(RATE * SECONDS))
    assert next(iter(data.val_dataloader()))[0].shape == (16, int(RATE * SECONDS))
    train(config, tmp_path / "context", name="tones")
    val_acc = [float(r["val/acc"]) for r in metrics_rows(tmp_path / "context", "val/acc")]
    assert len(val_acc) == 5 and max(val_acc) >= 0.6  # chance is 1/12; a harder task than clips


# -- distillation --------------------------------------------------------------------------

NO_MASKS = ["spec_augment.freq_masks=0", "spec_augment.time_masks=0"]
TEACHER_META = {"task": "sc12", "split": {}, "train": {}, "metrics": {}}


def test_distillation_loss_is_the_kl_to_the_mean_teacher_posterior():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.5, 0.5]])
    teachers = [torch.tensor([[1.0, 1.0, 0.0], [3.0, 0.0, 0.0]]),
                torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])]
    for temperature in (1.0, 2.0):
        target = sum(torch.softmax(t / temperature, -1) for t in teachers) / 2
        log_q = torch.log_softmax(student / temperature, -1)
        by_hand = (target * (target.log() - log_q)).sum(-1).mean() * temperature**2
        assert float(distillation_loss(student, teachers, temperature)) == pytest.approx(
            float(by_hand), rel=1e-6)
    same = distillation_loss(teachers[0], [teachers[0], teachers[0]], 2.0)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_distilling_sees_the_models_crop_and_window_and_stays_out_of_checkpoints(
        config_path, tmp_path):
    sets = [*NO_MASKS, "data.augment.context_s=0.1"]
    config = load_config(config_path, sets)
    labels = list(TASKS["sc12"])
    twin = tmp_path / "twin.pt"  # the student's own starting weights
    torch.manual_seed(1)
    save_spotter(twin, KWSLightningModule(config, labels).spotter, TEACHER_META)
    torch.manual_seed(5)
    other = tmp_path / "other.pt"
    save_spotter(other, build_spotter(config, labels), TEACHER_META)

    wave = 0.1 * torch.randn(4, 800 + int(RATE * SECONDS))
    target = torch.tensor([0, 3, 10, 11])
    for teachers, weight in (([twin], 1.0), ([twin, other], 0.25)):
        config = load_config(config_path, [*sets, f"distill.teachers={[str(t) for t in teachers]}",
                                           f"distill.weight={weight}"])
        torch.manual_seed(1)
        module = KWSLightningModule(config, labels).eval()
        assert all(key.startswith(("spotter.", "train_")) for key in module.state_dict())
        torch.manual_seed(9)  # the same crop in both computations
        loss = module._step((wave, target), "train").detach()
        torch.manual_seed(9)
        cropped, window = module.crop_context(wave)
        with torch.no_grad():
            model, frontend = module.spotter.model, module.spotter.frontend
            logits = model.classify(model.features(frontend(cropped))[:, -window:].mean(dim=1))
            outs = [pooled_logits(t, cropped, int(RATE * SECONDS)) for t in module.teachers]
        ce = torch.nn.functional.cross_entropy(logits, target)
        kl = distillation_loss(logits, outs, 2.0)
        assert float(loss) == pytest.approx(float((1 - weight) * ce + weight * kl), rel=1e-5)
        if teachers == [twin]:
            assert float(kl) == pytest.approx(0.0, abs=1e-6)  # itself, on the same crop
        else:
            assert float(kl) > 1e-3


def test_teacher_with_other_labels_or_rate_fails_by_name(config_path, tmp_path):
    config = load_config(config_path, NO_MASKS)
    labels = list(TASKS["sc12"])
    swapped = tmp_path / "swapped.pt"
    save_spotter(swapped, build_spotter(config, labels[::-1]), TEACHER_META)
    faster = tmp_path / "faster.pt"
    save_spotter(faster, build_spotter(load_config(config_path, [*NO_MASKS,
                 "features.sample_rate=16000"]), labels), TEACHER_META)
    for path, problem in ((swapped, "teacher labels"),
                          (faster, "teacher runs at 16000 Hz, the model at 8000")):
        config = load_config(config_path, [*NO_MASKS, f"distill.teachers=[{path}]"])
        with pytest.raises(ValueError, match=rf"{path.name}: {problem}"):
            KWSLightningModule(config, labels)
    config = load_config(config_path, [f"distill.teachers=[{tmp_path / 'gone.pt'}]"])
    with pytest.raises(FileNotFoundError, match="gone.pt"):
        KWSLightningModule(config, labels)


def test_training_with_a_teacher_learns_and_ships_the_student_alone(reference, config_path,
                                                                     tmp_path):
    teacher = reference / "checkpoints" / "tones.pt"
    config = load_config(config_path, [f"distill.teachers=[{teacher}]", "seed=4"])
    result = train(config, tmp_path / "student", name="tones")
    rows = metrics_rows(tmp_path / "student", "train/distill_loss")
    distill = [float(r["train/distill_loss"]) for r in rows]
    assert len(distill) == 5 and distill[-1] < 0.5 * distill[0]
    val_acc = [float(r["val/acc"]) for r in metrics_rows(tmp_path / "student", "val/acc")]
    assert max(val_acc) >= 0.6  # chance is 1/12; seed 4 alone reaches 0.75 in 5 epochs
    spotter, meta = load_spotter(result.spotter_path)  # strict: the student's weights only
    assert meta["train"]["config"]["distill"]["teachers"] == [str(teacher)]
    assert sum(p.numel() for p in spotter.parameters()) == sum(
        p.numel() for p in load_spotter(teacher)[0].parameters())


def test_weight_averaging_ships_the_average_and_resumes_exactly(config_path, tmp_path):
    config = load_config(config_path, ["optim.ema_decay=0.8"])
    result = train(config, tmp_path / "ema", name="tones")
    best = read_checkpoint(result.best_checkpoint)
    averaged, raw = best["state_dict"], best["current_model_state"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged)  # an average, not a copy

    spotter, meta = load_spotter(result.spotter_path)  # the shipped model is the average
    for key, value in spotter.state_dict().items():
        torch.testing.assert_close(value, averaged[f"spotter.{key}"], rtol=0, atol=0)
    data = SpeechCommandsDataModule(config)
    data.setup("test")
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config["optim"]["label_smoothing"],
                                          reduction="sum")
    loss = hits = total = 0.0
    with torch.no_grad():
        for wave, target in data.test_dataloader():
            logits = spotter(wave)
            loss += float(criterion(logits, target))
            hits += int((logits.argmax(-1) == target).sum())
            total += len(target)
    # The test scored the average (its loss tells it from the raw weights', which ties may not).
    assert meta["metrics"]["test/loss"] == pytest.approx(loss / total, rel=1e-5)
    assert meta["metrics"]["test/acc"] == pytest.approx(hits / total)

    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, out, name="tones", callbacks=[Crash(step=11)])
    train(config, out, resume="last", name="tones")
    a = read_checkpoint(result.last_checkpoint)
    b = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert int(a["averaging_state"]["n_averaged"]) == int(b["averaging_state"]["n_averaged"]) == 30
    for part in ("state_dict", "current_model_state"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=1e-7)


def test_train_seeds_reports_the_spread_and_reuses_finished_seeds(config_path, tmp_path, capsys):
    out = tmp_path / "seeds"
    argv = ["train", "--config", str(config_path), "--out", str(out), "--name", "tones",
            "--seeds", "3,4", "--set", "trainer.max_epochs=2"]
    assert main(argv) == 0
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [3, 4]
    shipped = [read_checkpoint(out / f"seed_{s}" / "checkpoints" / "tones.pt") for s in (3, 4)]
    assert [c["train"]["config"]["seed"] for c in shipped] == [3, 4]
    weights = [c["state_dict"] for c in shipped]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    for key in ("val/acc", "test/acc", "test/loss"):
        values = [c["metrics"][key] for c in shipped]
        stats = summary["metrics"][key]
        assert stats["values"] == pytest.approx(values)
        assert stats["mean"] == pytest.approx(np.mean(values))
        assert stats["sd"] == pytest.approx(np.std(values, ddof=1))
    assert "seeds.json" in capsys.readouterr().out
    # Run again with one more seed: the finished ones are read, not retrained.
    stamp = (out / "seed_3" / "checkpoints" / "tones.pt").stat().st_mtime_ns
    assert main([*argv[:-3], "3,4,5", "--set", "trainer.max_epochs=2"]) == 0
    assert (out / "seed_3" / "checkpoints" / "tones.pt").stat().st_mtime_ns == stamp
    assert "seed 3: trained earlier" in capsys.readouterr().out
    assert json.loads((out / "seeds.json").read_text())["seeds"] == [3, 4, 5]
    assert main([*argv, "--resume", "some.ckpt"]) == 1
    assert "--resume takes only 'last'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv[:-3], "1,1"])


def test_existing_run_needs_resume_and_same_network(reference, config_path, tmp_path, capsys):
    assert main(["train", "--config", str(config_path), "--out", str(reference)]) == 1
    assert "pass --resume last to continue" in capsys.readouterr().err
    last = reference / "checkpoints" / "last.ckpt"
    argv = ["train", "--config", str(config_path), "--out", str(tmp_path / "x"),
            "--resume", str(last), "--set", "model.d_model=32"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "its model section" in err and "Traceback" not in err
    assert main(["train", "--config", str(config_path), "--out", str(tmp_path / "y"),
                 "--resume", "last"]) == 1
    assert "last.ckpt does not exist" in capsys.readouterr().err


# -- the main job ---------------------------------------------------------------------------


def test_pipeline_without_data_says_where_to_get_it(tmp_path, capsys):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    assert main(["pipeline", "--data", str(empty), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "no Speech Commands folder" in err and "kws data download" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_pipeline_trains_and_scores_at_16_and_8_khz(tmp_path, capsys):
    pytest.importorskip("kws.models.s4")
    root = make_speech_commands(tmp_path / "speech_commands_16k", rate=16000, seconds=1.0)
    out = tmp_path / "pipeline"
    assert main(["pipeline", "--data", str(root), "--out", str(out), "--minutes", "0.1"]) == 0
    printed = capsys.readouterr().out
    assert "16000 Hz" in printed and "8000 Hz" in printed
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert [r["sample_rate"] for r in summary["results"]] == [16000, 8000]
    for r in summary["results"]:
        low, high = r["accuracy_ci95"]
        assert low <= r["accuracy"] <= high
    assert "95% interval (speakers)" in printed
    assert summary["model"] == "s4d" and summary["test_clips"] > 0
    assert (out / "checkpoints" / "tiny_mfcc.pt").is_file()
    groups = read_checkpoint(out / "checkpoints" / "last.ckpt")["optimizer_states"][0]
    # S4D: weights with decay, biases and norms without, SSM parameters at ssm_lr without
    assert [(g["initial_lr"], g["weight_decay"]) for g in groups["param_groups"]] == [
        (0.01, 0.05), (0.01, 0.0), (0.001, 0.0)
    ]


# -- the throughput benchmark -----------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_quick_runs_every_family_and_pipeline(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "train_throughput", REPO / "benchmarks" / "train_throughput.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {(r["family"], r["pipeline"]) for r in rows} == {
        (f, p) for f in ("s4", "s4d", "tcn", "lstm") for p in ("raw", "mfcc")
    }
    assert all(r["samples_per_second"] > 0 and r["device"] == "cpu" for r in rows)
    assert {r["time_steps"] for r in rows if r["pipeline"] == "raw"} == {1600}  # 0.1 s, 16 kHz
    printed = capsys.readouterr().out
    assert "cpu samples/s" in printed and printed.count("\n") >= 10
