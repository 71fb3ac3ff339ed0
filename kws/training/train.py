"""One training run: config -> Lightning Trainer -> checkpoints -> a shipped ``.pt``.

Lightning's Trainer runs the loop; ``train`` wires it up and writes, under ``out``:

* ``config.yaml``: the resolved config;
* ``checkpoints/best-*.ckpt`` (best val/acc) and ``checkpoints/last.ckpt`` (every
  ``trainer.checkpoint_every_n_steps`` steps, after each validation and at the end),
  both written atomically, both loadable by ``load_spotter``;
* ``checkpoints/NAME.pt``: the shipped checkpoint, made from the best one, with the
  test-split metrics;
* ``logs/version_N/metrics.csv`` (always) and ``tb/`` (when TensorBoard is installed).

Multi-GPU and multi-node training is Lightning's own: set ``trainer.devices``
(e.g. 4 or [0, 1]), ``trainer.num_nodes`` and ``trainer.strategy`` (``ddp``,
``ddp_spawn``, ``fsdp``, ...). With ``devices: 4`` on one machine, ``kws train``
starts one process per GPU itself; across machines, start the same command on
every node under your cluster launcher (``srun`` on SLURM, or ``torchrun`` /
the MASTER_ADDR, MASTER_PORT, NODE_RANK and WORLD_SIZE variables), as in
Lightning's multi-node guide. Each rank trains on its own shard of every epoch
(``EpochSampler``); ``data.batch_size`` is per GPU, so the effective batch is
batch_size x devices x num_nodes and the LR schedule counts per-rank steps.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import (
    Callback,
    Checkpoint,
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from kws.training.checkpoint import (
    atomic_torch_save,
    load_spotter,
    read_checkpoint,
    save_spotter,
)
from kws.training.config import dump_config
from kws.training.datamodule import SpeechCommandsDataModule
from kws.training.module import KWSLightningModule

LAST = "last.ckpt"
#: config sections that decide the network; a resumed run must not change them
ARCHITECTURE_SECTIONS = ("features", "model")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made crash-safe for local paths.

    Lightning's own writer goes through an fsspec transaction whose temporary file
    lives in the system temp folder; across file systems the final move is a copy,
    and a crash during it leaves a truncated ``last.ckpt``. Remote URLs keep
    Lightning's behaviour.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options for local paths")
        atomic_torch_save(checkpoint, path)


class LastCheckpoint(Checkpoint):
    """Keeps ``last.ckpt`` current for ``--resume last``.

    Lightning's ModelCheckpoint writes ``last`` only when it also writes a top-k
    checkpoint, so after an epoch without a new best it would go stale. As a
    ``Checkpoint`` it runs after the other callbacks (early stopping included), so
    their state in the file is up to date.
    """

    def __init__(self, path: Path, every_n_steps: int = 0):
        self.path, self.every_n_steps = Path(path), every_n_steps
        self._saved_step = -1

    def _save(self, trainer: L.Trainer, again: bool = False) -> None:
        """Write last.ckpt, unless it already holds this step (``again``: rewrite anyway)."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if trainer.global_step == self._saved_step and not again:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._save(trainer, again=True)  # now with this validation's results

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)


class AveragedWeights(EMAWeightAveraging):
    """An exponential moving average of the weights (``optim.ema_decay``), used for
    validation, the best checkpoint, the test and the shipped model.

    With a few thousand clips the weights of one step wander with the batch they
    last saw, and their running average is the usual remedy (on the dev split it
    was within seed noise: RESULTS.md, "Seeds"). Lightning's callback keeps it;
    checkpoints hold the average as ``state_dict`` (so ``load_spotter`` reads it)
    and the raw weights beside it for resuming. One change: outside ``fit``
    (``trainer.test`` on the best checkpoint) the checkpoint is taken as it is, so
    the test scores the average, as the shipped model does, not the raw weights
    saved beside it.
    """

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class EpochSummary(Callback):
    """One line per epoch, so logs that are not a terminal still show progress."""

    def __init__(self, stream=None):
        self.stream = stream
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = "  ".join(
            f"{name} {float(metrics[name]):.4f}"
            for name in ("train/loss", "train/acc", "val/loss", "val/acc")
            if name in metrics
        )
        elapsed = time.monotonic() - self._start
        print(f"epoch {trainer.current_epoch:3d}  step {trainer.global_step:6d}  {shown}  "
              f"({elapsed:.0f} s)", file=self.stream or sys.stdout, flush=True)


def resolve_precision(trainer_config: dict[str, Any]) -> str:
    """'auto' -> bf16-mixed on a GPU that supports it (16-mixed on older ones), else 32-true."""
    precision = trainer_config["precision"]
    if precision != "auto":
        return str(precision)
    accelerator = str(trainer_config["accelerator"])
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def build_trainer(
    config: dict[str, Any],
    out_dir: Path,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Trainer for ``config`` writing under ``out_dir``, and its best-val/acc checkpointer."""
    cfg = config["trainer"]
    ckpt_dir = out_dir / "checkpoints"
    best = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best-epoch{epoch:02d}-acc{val/acc:.4f}",
        auto_insert_metric_name=False, monitor="val/acc", mode="max", save_top_k=1,
    )
    all_callbacks: list[Callback] = [
        best, LastCheckpoint(ckpt_dir / LAST, cfg["checkpoint_every_n_steps"]), *callbacks
    ]
    if config["optim"]["ema_decay"] > 0:
        # Before the checkpointers in the list, so the files they write hold the average.
        all_callbacks.insert(0, AveragedWeights(decay=config["optim"]["ema_decay"]))
    if cfg["patience"] > 0:
        all_callbacks.append(EarlyStopping(monitor="val/acc", mode="max", patience=cfg["patience"]))
    show_bar = bool(cfg["progress_bar"]) and sys.stdout.isatty()
    if show_bar:
        from lightning.pytorch.callbacks import RichProgressBar

        all_callbacks.append(RichProgressBar())
    else:
        all_callbacks.append(EpochSummary())
    loggers: list[Any] = [CSVLogger(out_dir, name="logs")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(out_dir, name="tb", default_hp_metric=False))
    trainer = L.Trainer(
        accelerator=cfg["accelerator"],
        devices=cfg["devices"],
        num_nodes=cfg["num_nodes"],
        strategy=cfg["strategy"],
        precision=resolve_precision(cfg),
        max_epochs=cfg["max_epochs"],
        max_steps=cfg["max_steps"],
        max_time=timedelta(minutes=cfg["max_minutes"]) if cfg["max_minutes"] else None,
        gradient_clip_val=config["optim"]["grad_clip"] or None,
        log_every_n_steps=cfg["log_every_n_steps"],
        val_check_interval=cfg["val_check_interval"],
        limit_train_batches=cfg["limit_train_batches"],
        limit_val_batches=cfg["limit_val_batches"],
        deterministic=cfg["deterministic"],
        callbacks=all_callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=show_bar,
        enable_model_summary=show_bar,
        use_distributed_sampler=False,  # EpochSampler shards by rank itself
        default_root_dir=out_dir,
    )
    return trainer, best


@dataclass
class TrainResult:
    """Where a run left its files, and its metrics (val at the best epoch, and test)."""

    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    spotter_path: Path
    metrics: dict[str, float]


def resume_path(out_dir: Path, resume: str | None) -> Path | None:
    """``--resume``: None, 'last' (out/checkpoints/last.ckpt) or a checkpoint path."""
    if resume is None:
        return None
    path = out_dir / "checkpoints" / LAST if resume == "last" else Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: {path} does not exist")
    return path


def check_resume_config(path: Path, config: dict[str, Any]) -> None:
    """A resumed run may change epochs, learning rates or its time limit, not its network."""
    checkpoint = read_checkpoint(path)
    saved = checkpoint.get("hyper_parameters", {}).get("config")
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: not a checkpoint written by kws train (no config inside)")
    for section in ARCHITECTURE_SECTIONS:
        if saved.get(section) != config[section]:
            raise ValueError(
                f"--resume {path}: its {section} section {saved.get(section)} differs from the "
                f"config's {config[section]}; resume with the config it was trained with"
            )
    limit = config["trainer"]["max_minutes"]
    trained_s = trained_seconds(checkpoint)
    if limit is not None and trained_s >= 60 * limit:
        # Lightning's max_time counts across resumes, so this run would stop at once.
        raise ValueError(
            f"--resume {path}: the run has already trained for {trained_s / 60:.0f} min, "
            f"its trainer.max_minutes is {limit:g} and the limit counts across resumes; "
            "to continue it pass --set trainer.max_minutes=null or a larger limit"
        )


def trained_seconds(checkpoint: dict[str, Any]) -> float:
    """Training time a checkpoint's run has used so far, as Lightning's time limit counts it."""
    timer = checkpoint.get("callbacks", {}).get("Timer", {})
    return float(timer.get("time_elapsed", {}).get("train", 0.0))


def init_weights(module: KWSLightningModule, path: str | Path,
                 split_manifest: dict[str, Any]) -> None:
    """Start ``module`` from a trained checkpoint's weights (``init_from``): fine-tuning.

    The checkpoint must be the same network (labels, features, model) and must not
    have trained on speakers that this run holds out: its scores on them would be
    no test of the fine-tuned model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from: {path} does not exist")
    spotter, meta = load_spotter(path)
    mine = module.spotter
    if list(spotter.labels) != list(mine.labels):
        raise ValueError(f"init_from {path}: its labels {list(spotter.labels)} are not this "
                         f"run's {list(mine.labels)}")
    if spotter.frontend.config != mine.frontend.config:
        raise ValueError(f"init_from {path}: its features {spotter.frontend.config} differ "
                         f"from this run's {mine.frontend.config}")
    trained_on = set((meta.get("split") or {}).get("speakers", {}).get("train", []))
    leaked = sorted(trained_on & {spk for split in ("val", "test")
                                  for spk in split_manifest.get("speakers", {}).get(split, [])})
    if leaked:
        raise ValueError(
            f"init_from {path}: it trained on {len(leaked)} speaker(s) that this run holds out "
            f"for validation or test (e.g. {leaked[0]}); fine-tune on the split it was trained "
            "with"
        )
    try:
        mine.load_state_dict(spotter.state_dict(), strict=True)
    except RuntimeError as err:
        theirs, ours = dict(meta.get("model_config") or {}), dict(mine.model.config)
        differ = [f"model.{key}: {theirs.get(key)!r} there, {ours.get(key)!r} here"
                  for key in sorted(set(theirs) | set(ours))
                  if key not in ("dropout", "ssm_lr") and theirs.get(key) != ours.get(key)]
        raise ValueError(f"init_from {path}: its model does not fit this run's model section ("
                         + ("; ".join(differ) or str(err).splitlines()[0])
                         + "); set the same with --set") from err


def quiet_known_warnings(resuming: bool) -> None:
    """Silence warnings that are expected here and would only confuse a reader of the log."""
    # Lightning 2.6 on torch 2.14 warns about its own use of torch's pytree API.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")
    if resuming:
        # The data module restores the loader's position (Lightning cannot tell), and
        # the checkpoint folder is expected to hold this run's own files.
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
        warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")
        # A time-limited run resumed without a limit: its Timer state is rightly unused.
        warnings.filterwarnings(
            "ignore", message=r"Be aware that when using `ckpt_path`.*: \['Timer'\]\.$"
        )


def train(
    config: dict[str, Any],
    out_dir: str | Path,
    resume: str | None = None,
    name: str = "model",
    callbacks: list[Callback] | tuple[Callback, ...] = (),
) -> TrainResult:
    """Train ``config`` into ``out_dir`` (or continue it with ``resume``); see the module doc."""
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_path = resume_path(out_dir, resume)
    if ckpt_path is not None:
        check_resume_config(ckpt_path, config)
    elif ckpt_dir.is_dir() and any(ckpt_dir.glob("*.ckpt")):
        raise FileExistsError(
            f"{ckpt_dir} holds checkpoints of an earlier run; pass --resume last to continue "
            "it, or choose another --out"
        )
    L.seed_everything(config["seed"], workers=True, verbose=False)
    datamodule = SpeechCommandsDataModule(config)
    datamodule.setup("fit")
    manifest = datamodule.split_manifest()
    module = KWSLightningModule(config, datamodule.labels, config["data"]["task"], manifest)
    if config["init_from"] is not None and ckpt_path is None:
        init_weights(module, config["init_from"], manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_config(config))
    trainer, best_callback = build_trainer(config, out_dir, callbacks)
    with warnings.catch_warnings():
        quiet_known_warnings(resuming=ckpt_path is not None)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        best = Path(best_callback.best_model_path or ckpt_dir / LAST)
        spotter, meta = load_spotter(best)
        metrics = dict(meta["metrics"])
        if len(datamodule.datasets["test"]):
            tested = trainer.test(module, datamodule=datamodule, ckpt_path=str(best),
                                  weights_only=True, verbose=False)
            metrics.update({k: float(v) for k, v in tested[0].items()})
    meta = {k: meta[k] for k in ("task", "split", "train")} | {"metrics": metrics}
    spotter_path = ckpt_dir / f"{name}.pt"
    if trainer.is_global_zero:
        save_spotter(spotter_path, spotter, meta)
    return TrainResult(out_dir, best, ckpt_dir / LAST, spotter_path, metrics)


def seed_summary(metrics: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Mean, sample standard deviation and range of each metric over runs that differ by seed.

    On a small test set one run says little: on the 13 dev test speakers the seed
    alone moved MFCC S4 by 9 points (RESULTS.md, "Seeds"), so a recipe is judged by this.
    """
    seeds = list(metrics)
    keys = [k for k in metrics[seeds[0]] if all(k in metrics[s] for s in seeds)]
    out: dict[str, Any] = {"seeds": seeds, "metrics": {}}
    for key in sorted(keys):
        values = [float(metrics[s][key]) for s in seeds]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        out["metrics"][key] = {"values": values, "mean": statistics.fmean(values), "sd": sd,
                               "min": min(values), "max": max(values)}
    return out


__all__ = [
    "AtomicCheckpointIO",
    "AveragedWeights",
    "EpochSummary",
    "LastCheckpoint",
    "TrainResult",
    "build_trainer",
    "init_weights",
    "resolve_precision",
    "seed_summary",
    "train",
]
