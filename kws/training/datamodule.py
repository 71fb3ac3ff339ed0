"""Speech Commands as a LightningDataModule, with data order that survives a crash.

The train order and the augmentation of every example depend only on
(seed, epoch, index): ``EpochSampler`` yields ``(index, epoch)`` keys, shuffled by a
generator seeded with (seed, epoch), and the dataset hands the epoch to the
``Augmenter`` with each key, so any DataLoader worker, on any run, makes the same
batch. The module's ``state_dict`` (saved in every Lightning checkpoint) records
which example comes next; on resume the sampler starts its first epoch there, so a
run killed mid-epoch and resumed sees exactly the batches of an uninterrupted run.

Multi-GPU: the sampler shards each epoch's order across ranks itself (like
DistributedSampler: padded to equal length), so the Trainer runs with
``use_distributed_sampler=False``. Validation and test are not sharded: every
rank scores the whole split, which keeps metrics exact at the cost of repeats.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from kws.data.augment import Augmenter
from kws.data.speech_commands import (
    ClipDataset,
    SpeechCommands,
    extra_word_clips,
    find_data_root,
)


class EpochSampler(Sampler):
    """Yields ``(index, epoch)`` for this rank's share of the epoch, optionally shuffled.

    ``resume_at(epoch, start)`` makes the next iteration that epoch, beginning at
    position ``start`` of this rank's list; iterations after it start at 0 again.
    """

    def __init__(
        self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ):
        if size < 1:
            raise ValueError(f"EpochSampler needs at least one example, got size={size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._start = 0

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at every epoch start."""
        self.epoch = epoch

    def resume_at(self, epoch: int, start: int) -> None:
        if not 0 <= start <= len(self):
            raise ValueError(f"resume position {start} is outside this epoch's {len(self)} items")
        self.epoch, self._start = epoch, start

    def order(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``: every world_size-th of the padded permutation."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        else:
            order = np.arange(self.size)
        padded = np.resize(order, len(self) * self.world_size)  # repeats the head, like DDP
        return padded[self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self._start
        self._start = 0
        for index in self.order(epoch)[start:]:
            yield index, epoch


class EpochKeyed(Dataset):
    """Looks up ``(index, epoch)`` keys: tells the augmenter the epoch, then loads the clip.

    The epoch travels with each key instead of being set on the dataset before an
    epoch, so worker processes, prefetching and resumes cannot see a stale epoch.
    """

    def __init__(self, clips: ClipDataset):
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        self.clips.set_epoch(epoch)
        return self.clips[index]


class SpeechCommandsDataModule(L.LightningDataModule):
    """Train/val/test DataLoaders over one Speech Commands folder, from a kws config.

    ``setup()`` finds the data (``data.root``, else ``find_data_root``), makes the
    speaker-disjoint split and builds the datasets; augmentation (``data.augment``,
    seeded with the config's ``seed``) is applied to train only. The word clips of
    ``data.extra_train`` folders join train (``extra_word_clips``), less the speakers
    that the main folder's val and test splits hold.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config
        self.data_config = config["data"]
        self.seed = int(config["seed"])
        self.sample_rate = int(config["features"].get("sample_rate", 16000))
        self.speech_commands: SpeechCommands | None = None
        self.datasets: dict[str, ClipDataset] = {}
        self.train_sampler: EpochSampler | None = None
        self._resume: tuple[int, int] | None = None
        self.extra_train: list[dict[str, Any]] = []

    # -- data ---------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.speech_commands is not None:
            return
        cfg = self.data_config
        root = find_data_root(cfg["root"], task=cfg["task"])
        data = SpeechCommands(
            root, cfg["task"], cfg["val_percent"], cfg["test_percent"], seed=self.seed
        )
        augment = None
        if cfg["augment"] is not None:
            args = dict(cfg["augment"])
            for key in ("snr_db", "speed", "low_rate"):
                if isinstance(args.get(key), list):
                    args[key] = tuple(args[key])
            try:
                augment = Augmenter(
                    noise=data.load_noise("train", self.sample_rate),
                    sample_rate=self.sample_rate, seed=self.seed, **args,
                )
            except TypeError as err:
                raise ValueError(f"data.augment: {err}") from err
        clips = {split: data.clips(split) for split in ("train", "val", "test")}
        held_out = sorted(set(data.speakers()["val"]) | set(data.speakers()["test"]))
        self.extra_train = []
        for extra_root in cfg["extra_train"]:
            if Path(extra_root).resolve() == data.root.resolve():
                raise ValueError(f"data.extra_train: {extra_root} is the main data folder; its "
                                 "train clips are already in train")
            extra, info = extra_word_clips(extra_root, cfg["task"], exclude_speakers=held_out)
            clips["train"] += extra
            self.extra_train.append(info)
        for split in ("train", "val", "test"):
            self.datasets[split] = ClipDataset(
                clips[split], self.sample_rate, cfg["clip_seconds"],
                augment=augment if split == "train" else None, on_error=cfg["on_error"],
            )
        for split in ("train", "val"):
            if not len(self.datasets[split]):
                raise ValueError(
                    f"{root}: the {split} split is empty with val_percent={cfg['val_percent']} "
                    f"and test_percent={cfg['test_percent']} ({data!r})"
                )
        self.speech_commands = data

    @property
    def labels(self) -> list[str]:
        return list(self._data().labels)

    def split_manifest(self) -> dict[str, Any]:
        """The main folder's split, plus what each ``data.extra_train`` folder added to train."""
        manifest = self._data().split_manifest()
        if self.extra_train:
            manifest["extra_train"] = self.extra_train
        return manifest

    def _data(self) -> SpeechCommands:
        if self.speech_commands is None:
            raise RuntimeError("call setup() first: the data module has not read its folder yet")
        return self.speech_commands

    def batches_per_epoch(self, world_size: int = 1) -> int:
        """Train batches each rank runs per epoch (the LR schedule's unit)."""
        per_rank = math.ceil(len(self.datasets["train"]) / world_size)
        return math.ceil(per_rank / self.data_config["batch_size"])

    # -- loaders ------------------------------------------------------------------------

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        workers = self.data_config["num_workers"]
        return DataLoader(
            dataset, batch_size=self.data_config["batch_size"], sampler=sampler, shuffle=False,
            num_workers=workers, persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        self.train_sampler = EpochSampler(
            len(self.datasets["train"]), self.seed, shuffle=True, rank=rank, world_size=world
        )
        if self._resume is not None:
            self.train_sampler.resume_at(*self._resume)
            self._resume = None
        return self._loader(EpochKeyed(self.datasets["train"]), self.train_sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"])

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["test"])

    # -- resume -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the train order continues: the epoch and this rank's next example in it.

        Read from Lightning's loop counters (which it restores on resume) when the
        checkpoint is written: after a train batch, after validation or at an epoch end.
        Counted in examples, so a resumed run may even change the batch size.
        """
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        epoch = trainer.current_epoch
        next_batch = trainer.fit_loop.epoch_loop.batch_idx + 1
        if next_batch >= trainer.num_training_batches:
            epoch, next_batch = epoch + 1, 0
        next_sample = next_batch * self.data_config["batch_size"]
        return {"epoch": int(epoch), "next_sample": int(next_sample)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._resume = (int(state["epoch"]), int(state["next_sample"]))


__all__ = ["EpochKeyed", "EpochSampler", "SpeechCommandsDataModule"]
