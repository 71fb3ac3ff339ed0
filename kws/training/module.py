"""The LightningModule: a KeywordSpotter, its loss, accuracies, optimizer and LR schedule.

Lightning's Trainer runs the loop; this file only says what one step is.

* Loss: cross-entropy with optional label smoothing; mean loss and top-1
  accuracy for train/val/test (torchmetrics). The running train metrics are
  saved in checkpoints, so a resumed epoch reports the numbers of an unbroken one.
* Optimizer: AdamW over the model's ``param_groups`` (S4/S4D SSM parameters get
  ``optim.ssm_lr``, passed to the model, and no weight decay), with a linear
  warm-up then a cosine decay to zero, stepped every batch.
* SpecAugment (``spec_augment``, MFCC only, training batches only): random
  log-mel bands and frames are set to the clip's mean level before the DCT, so the
  model cannot lean on any one band or instant -- the usual cure for a small
  speaker pool. Masking MFCC coefficients instead would smear every band.
* Preceding context (``data.augment.context_s``, training batches only): each
  example arrives with that much audio before its clip (``kws.data.augment``); a
  step keeps a random part of it, the same for the batch and a whole number of
  output steps long, and mean-pools over the clip's steps alone. The model so
  learns to classify a window from the state that audio before it left, which is
  what the streaming detector asks of it.
* Distillation (``distill.teachers``, training batches only): frozen trained
  spotters read the same (cropped) audio as the model and pool the same window;
  their posteriors at temperature T are averaged, as ``kws stream`` averages an
  ensemble's, and the model is pulled towards them by a KL term beside the
  cross-entropy. The teachers are kept out of the module's state, so checkpoints
  hold the student alone; validation and test score it by cross-entropy as ever.
  ``train/loss`` is then the mixed objective and ``train/distill_loss`` its KL term.
* Dropout draws from torch's global generator, which Lightning does not restore on
  resume; it is re-seeded from (seed, global step, rank) before every step, so
  dropout masks, like the data order, depend only on where training is.
* Every checkpoint carries the spotter's metadata under ``"kws"``, so
  ``kws.training.checkpoint.load_spotter`` reads a Lightning ``.ckpt`` too; all
  hyper-parameters are JSON-able, so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import inspect
import math
import platform
import shlex
import sys
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from kws.features import FeatureConfig
from kws.models import build_model, model_class
from kws.spotter import KeywordSpotter
from kws.training.checkpoint import (
    LIGHTNING_META_KEY,
    jsonable,
    load_spotter,
    spotter_metadata,
)
from kws.training.config import DEFAULTS

STAGES = ("train", "val", "test")


def build_spotter(config: dict[str, Any], labels: list[str]) -> KeywordSpotter:
    """A fresh spotter from a config's ``features`` and ``model`` sections.

    S4/S4D take their SSM learning rate as a model argument; it comes from
    ``optim.ssm_lr`` so that all learning rates live in one section.
    """
    feature_config = FeatureConfig.from_dict(config["features"])
    overrides = dict(config["model"])
    family = overrides.pop("name")
    if "ssm_lr" in overrides:
        raise ValueError("set the SSM learning rate as optim.ssm_lr, not model.ssm_lr")
    if "ssm_lr" in inspect.signature(model_class(family).__init__).parameters:
        overrides["ssm_lr"] = config["optim"]["ssm_lr"]
    model = build_model(
        family, feature_config.channels, len(labels), pipeline=feature_config.kind, **overrides
    )
    return KeywordSpotter(feature_config, model, labels, config["data"]["clip_seconds"])


def load_teachers(paths: list[str], labels: list[str], sample_rate: int) -> list[KeywordSpotter]:
    """Frozen spotters to distil from; each must score the same labels at the same rate."""
    teachers = []
    for path in paths:
        teacher, _ = load_spotter(path)
        if teacher.labels != list(labels):
            raise ValueError(f"{path}: teacher labels {teacher.labels} differ from the "
                             f"model's {list(labels)}; distillation needs the same classes "
                             "in the same order")
        rate = teacher.frontend.config.sample_rate
        if rate != sample_rate:
            raise ValueError(f"{path}: teacher runs at {rate} Hz, the model at {sample_rate} Hz")
        teachers.append(teacher.eval().requires_grad_(False))
    return teachers


def classify_window(model: nn.Module, features: Tensor, window: int) -> Tensor:
    """(B, L, C) features -> (B, classes) logits from the mean of the last ``window`` steps."""
    return model.classify(model.features(features)[:, -window:].mean(dim=1))


def pooled_logits(spotter: KeywordSpotter, wave: Tensor, clip_samples: int) -> Tensor:
    """(B, context + clip) -> (B, classes): the spotter's logits pooled over the clip's steps.

    With no context this is ``spotter(wave)``; with context the state comes through
    the audio before the clip, as in the streaming detector.
    """
    frontend, model = spotter.frontend, spotter.model
    if wave.shape[1] == clip_samples:
        return spotter(wave)
    window = frontend.config.num_frames(clip_samples) // model.time_pool
    return classify_window(model, frontend(wave), window)


def distillation_loss(logits: Tensor, teacher_logits: list[Tensor], temperature: float) -> Tensor:
    """T^2 * KL(mean teacher posterior || model posterior), both at temperature T.

    T^2 keeps the gradient's size independent of T (Hinton et al., 2015); the teachers'
    posteriors, not their logits, are averaged, as an ensemble detector averages them.
    """
    target = torch.stack([F.softmax(t.float() / temperature, dim=-1) for t in teacher_logits])
    log_student = F.log_softmax(logits.float() / temperature, dim=-1)
    return F.kl_div(log_student, target.mean(dim=0), reduction="batchmean") * temperature**2


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR factor per step: linear from 1/warmup to 1 over ``warmup_steps``, then cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def spec_augment(
    log_mel: Tensor, freq_masks: int, max_bands: int, time_masks: int, max_frames: int
) -> Tensor:
    """(B, L, n_mels) -> a copy with masked bands and frames, each mask drawn per clip.

    A mask has a width drawn from [0, max] and a uniform start; masked cells take the
    clip's mean log energy. Draws come from torch's global generator, which the module
    re-seeds every step, so a resumed run masks the same cells.
    """
    batch, frames, bands = log_mel.shape
    fill = log_mel.mean(dim=(1, 2), keepdim=True).expand_as(log_mel)
    masked = torch.zeros_like(log_mel, dtype=torch.bool)
    for count, widest, size, axis in ((freq_masks, max_bands, bands, 2),
                                      (time_masks, max_frames, frames, 1)):
        positions = torch.arange(size, device=log_mel.device)
        for _ in range(count):
            width = torch.randint(0, min(widest, size) + 1, (batch, 1), device=log_mel.device)
            start = (torch.rand(batch, 1, device=log_mel.device) * (size - width + 1)).long()
            inside = (positions >= start) & (positions < start + width)  # (B, size)
            masked |= inside.unsqueeze(3 - axis)  # bands (B, 1, n_mels), frames (B, L, 1)
    return torch.where(masked, fill, log_mel)


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for the global generator at one optimizer step of one rank."""
    return (seed * 1_000_003 + step * 8191 + rank) % (2**63 - 1)


class KWSLightningModule(L.LightningModule):
    """Trains a KeywordSpotter built from ``config`` for ``labels``.

    ``task`` and ``split`` (the data's ``split_manifest()``) are not used for
    training; they travel into every checkpoint so that a shipped model says what
    it was trained on.
    """

    def __init__(
        self,
        config: dict[str, Any],
        labels: list[str],
        task: str = "",
        split: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(
            {
                "config": jsonable(config, "config"),
                "labels": list(labels),
                "task": task,
                "split": jsonable(split or {}, "split"),
            }
        )
        self.config = self.hparams["config"]
        self.spotter = build_spotter(self.config, list(labels))
        optim = self.config["optim"]
        self.criterion = nn.CrossEntropyLoss(label_smoothing=optim["label_smoothing"])
        # Configs saved before distillation existed have no such section.
        distill = {**DEFAULTS["distill"], **(self.config.get("distill") or {})}
        # A plain list, not a ModuleList: the teachers stay out of state_dict and checkpoints.
        self.teachers: list[KeywordSpotter] = load_teachers(
            distill["teachers"], list(labels), self.spotter.frontend.config.sample_rate
        )
        self.distill_weight = float(distill["weight"]) if self.teachers else 0.0
        self.distill_temperature = float(distill["temperature"])
        n = len(labels)
        for stage in STAGES:  # train_acc, train_loss, val_acc, ...
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes=n, average="micro"))
            setattr(self, f"{stage}_loss", MeanMetric())
        # Saved with the weights, so a resumed epoch's train numbers match an unbroken one.
        self.train_acc.persistent(True)
        self.train_loss.persistent(True)
        #: seconds spent in fit() over all runs of this training (kept across resumes)
        self.train_seconds = 0.0
        #: val/acc and val/loss of the latest validation (not the sanity check)
        self.val_metrics: dict[str, float] = {}
        self._fit_started: float | None = None

    def forward(self, wave: Tensor, sample_rate: int | None = None) -> Tensor:
        return self.spotter(wave, sample_rate)

    # -- steps --------------------------------------------------------------------------

    @property
    def context_samples(self) -> int:
        """Samples of preceding context in each training example (0: none)."""
        seconds = (self.config["data"].get("augment") or {}).get("context_s") or 0.0
        return round(float(seconds) * self.spotter.frontend.config.sample_rate)

    def crop_context(self, wave: Tensor, kept: int | None = None) -> tuple[Tensor, int]:
        """(B, context + clip) -> (B, kept + clip), and the model output steps of the clip.

        ``kept`` (None: drawn) is uniform over whole output steps in [0, context], drawn
        from the global generator (re-seeded every step), so a resume crops the same way.
        """
        context = self.context_samples
        clip = wave.shape[1] - context
        model, config = self.spotter.model, self.spotter.frontend.config
        unit = config.hop_length * model.time_pool
        if kept is None:
            kept = int(torch.randint(0, context // unit + 1, ())) * unit
        if kept % unit or not 0 <= kept <= context:
            raise ValueError(f"kept must be a multiple of {unit} samples in [0, {context}], "
                             f"got {kept}")
        return wave[:, context - kept :], config.num_frames(clip) // model.time_pool

    def _logits(self, wave: Tensor, stage: str, window: int | None = None) -> Tensor:
        """Logits of (possibly cropped) ``wave``; ``window``: pool the last steps only."""
        spec = self.config.get("spec_augment") or {}
        masks = stage == "train" and bool(spec.get("freq_masks") or spec.get("time_masks"))
        if not masks and window is None:
            return self.spotter(wave)
        frontend, model = self.spotter.frontend, self.spotter.model
        if masks:
            features = frontend.cepstra(spec_augment(frontend.log_mel(wave), **spec))
        else:
            features = frontend(wave)
        if window is None:
            return model(features)
        return classify_window(model, features, window)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        wave, target = batch
        clip_samples = wave.shape[1] - (self.context_samples if stage == "train" else 0)
        window = None
        if stage == "train" and self.context_samples:
            wave, window = self.crop_context(wave)
        logits = self._logits(wave, stage, window)
        loss = self.criterion(logits.float(), target)
        if stage == "train" and self.distill_weight:
            with torch.no_grad():
                teacher_logits = [pooled_logits(t, wave, clip_samples) for t in self.teachers]
            distill = distillation_loss(logits, teacher_logits, self.distill_temperature)
            self.log("train/distill_loss", distill.detach(), on_step=False, on_epoch=True,
                     batch_size=len(target))
            loss = (1 - self.distill_weight) * loss + self.distill_weight * distill
        mean_loss, accuracy = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        mean_loss(loss.detach(), len(target))
        accuracy(logits.detach(), target)
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, batch_size=len(target))
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(target))
        if stage == "train":
            self.log("train/loss_step", loss.detach(), prog_bar=True, batch_size=len(target))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_metrics = {"val/acc": float(self.val_acc.compute()),
                                "val/loss": float(self.val_loss.compute())}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.config["seed"], self.global_step, self.global_rank))

    # -- optimizer ----------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, worked out without loading data.

        ``trainer.estimated_stepping_batches`` would set up the train loader before a
        checkpoint is restored, and the loader would then miss its resume position.
        """
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "batches_per_epoch"):
            epochs = max(trainer.max_epochs or 1, 1)
            return max(1, int(trainer.estimated_stepping_batches) // epochs)
        batches = datamodule.batches_per_epoch(trainer.world_size)
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches))

    def configure_optimizers(self):
        optim = self.config["optim"]
        model = self.spotter.model
        groups = [g for g in model.param_groups(optim["lr"], optim["weight_decay"]) if g["params"]]
        in_model = {id(p) for p in model.parameters()}
        rest = [p for p in self.spotter.parameters() if p.requires_grad and id(p) not in in_model]
        if rest:  # e.g. a learnable frontend
            groups.append({"params": rest, "lr": optim["lr"], "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=optim["lr"], weight_decay=optim["weight_decay"])
        per_epoch = self.steps_per_epoch()
        total = per_epoch * max(self.trainer.max_epochs or 1, 1)
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            total = self.trainer.max_steps if self.trainer.max_epochs in (None, -1) else min(
                total, self.trainer.max_steps
            )
        warmup = min(round(optim["warmup_epochs"] * per_epoch), total)
        scheduler = LambdaLR(optimizer, warmup_cosine(warmup, total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # -- checkpoint metadata ------------------------------------------------------------

    def on_fit_start(self) -> None:
        self._fit_started = time.monotonic()
        for teacher in self.teachers:
            teacher.to(self.device)

    def on_fit_end(self) -> None:
        self.train_seconds = self.elapsed_seconds()
        self._fit_started = None

    def elapsed_seconds(self) -> float:
        running = time.monotonic() - self._fit_started if self._fit_started else 0.0
        return self.train_seconds + running

    def hardware(self) -> dict[str, Any]:
        """What trained this model, for the checkpoint's ``train`` entry."""
        trainer = self.trainer
        device = self.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
            platform.processor() or platform.machine()
        )
        return {
            "device": device.type,
            "device_name": name,
            "devices": trainer.num_devices,
            "num_nodes": trainer.num_nodes,
            "precision": str(trainer.precision),
            "strategy": type(trainer.strategy).__name__,
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
        }

    def epochs_done(self) -> float:
        """Training epochs completed, with the fraction of the current one (e.g. 3.25)."""
        trainer = self.trainer
        batches = trainer.num_training_batches
        if not batches or math.isinf(batches):
            return float(trainer.current_epoch)
        done = min(trainer.fit_loop.epoch_loop.batch_idx + 1, batches)
        return round(trainer.current_epoch + done / batches, 3)

    def kws_meta(self) -> dict[str, Any]:
        """task, split, train and metrics: the caller-supplied part of a shipped checkpoint."""
        trainer = self.trainer
        return {
            "task": self.hparams["task"],
            "split": self.hparams["split"],
            "train": {
                "config": self.config,
                "epochs": self.epochs_done(),
                "global_step": trainer.global_step,
                "seconds": round(self.elapsed_seconds(), 3),
                "hardware": self.hardware(),
                # How this run was started, so a model card can say how to reproduce it.
                "command": shlex.join(["kws", *sys.argv[1:]]),
            },
            "metrics": dict(self.val_metrics),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[LIGHTNING_META_KEY] = spotter_metadata(self.spotter, self.kws_meta())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(LIGHTNING_META_KEY) or {}
        self.train_seconds = float(meta.get("train", {}).get("seconds", 0.0))
        self.val_metrics = dict(meta.get("metrics", {}))


__all__ = [
    "KWSLightningModule",
    "build_spotter",
    "classify_window",
    "distillation_loss",
    "load_teachers",
    "pooled_logits",
    "spec_augment",
    "step_seed",
    "warmup_cosine",
]
