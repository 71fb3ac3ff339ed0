"""Self-describing checkpoints: everything needed to rebuild a spotter, and nothing executable.

A shipped checkpoint (``models/NAME.pt``) is a plain dict of tensors and JSON-able
values (see ARCHITECTURE.md), read with ``torch.load(weights_only=True)``, so a
hostile file can fail to load but can never run code. ``load_spotter`` also reads
the Lightning ``.ckpt`` files that ``kws train`` writes: the module stores the same
metadata under the ``"kws"`` key of every Lightning checkpoint.

Writes are atomic (temporary file in the same folder, fsync, ``os.replace``): a
crash mid-write leaves the previous file, never a truncated one. Only torch is
imported here, so every stage can read checkpoints without loading Lightning.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

import kws
from kws.features import FeatureConfig
from kws.models import model_from_config

#: the keys of a shipped checkpoint; a file with any other key is from another kws
SPOTTER_KEYS = (
    "format_version",
    "kws_version",
    "task",
    "labels",
    "feature_config",
    "model_config",
    "split",
    "train",
    "metrics",
    "state_dict",
)
#: the caller-supplied part of SPOTTER_KEYS (the rest comes from the spotter itself)
META_KEYS = ("task", "split", "train", "metrics")
#: where KWSLightningModule keeps the same metadata inside a Lightning checkpoint
LIGHTNING_META_KEY = "kws"
#: the prefix of the spotter's weights in a Lightning checkpoint's state_dict
LIGHTNING_PREFIX = "spotter."


class CheckpointError(ValueError):
    """A file that is not a checkpoint this kws can read; the message names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def jsonable(value: Any, what: str) -> Any:
    """``value`` round-tripped through JSON, so it loads under ``weights_only=True`` forever."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be JSON-able (dicts, lists, str, numbers): {err}") from err


def spotter_metadata(spotter: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict without ``state_dict``: what the spotter is and how it was made."""
    missing = [k for k in META_KEYS if k not in meta]
    unknown = sorted(set(meta) - set(META_KEYS))
    if missing or unknown:
        raise ValueError(
            f"checkpoint meta needs exactly the keys {list(META_KEYS)}; "
            f"missing {missing}, unknown {unknown}"
        )
    if not isinstance(meta["train"], dict):
        raise ValueError(f"meta['train'] must be a dict, got {type(meta['train']).__name__}")
    return {
        "format_version": kws.FORMAT_VERSION,
        "kws_version": kws.__version__,
        "task": jsonable(meta["task"], "meta['task']"),
        "labels": [str(label) for label in spotter.labels],
        "feature_config": spotter.feature_config.to_dict(),
        "model_config": jsonable(spotter.model.config, "model.config"),
        "split": jsonable(meta["split"], "meta['split']"),
        "train": {**jsonable(meta["train"], "meta['train']"), "clip_seconds": spotter.clip_seconds},
        "metrics": jsonable(meta["metrics"], "meta['metrics']"),
    }


def save_spotter(path: str | Path, spotter: Any, meta: dict[str, Any]) -> Path:
    """Write ``spotter`` with ``meta`` (task, split, train, metrics) as a shipped checkpoint."""
    payload = spotter_metadata(spotter, meta)
    payload["state_dict"] = {k: v.detach().cpu() for k, v in spotter.state_dict().items()}
    return atomic_torch_save(payload, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw dict of a ``.pt`` or Lightning ``.ckpt``, loaded without executing anything."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:
            raise CheckpointError(
                path,
                f"holds a Python object ({found.group(1)}), not only tensors and plain values; "
                "refusing to unpickle it, since that could run code (kws never writes those)",
            ) from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", str(err))
        raise CheckpointError(
            path,
            "not a torch checkpoint: torch's safe loader refused its pickle data"
            + (f" ({detail.group(1).strip()})" if detail else ""),
        ) from None
    except Exception as err:  # torch raises KeyError, EOFError, RuntimeError... on junk
        raise CheckpointError(
            path, f"not a torch checkpoint, or a truncated one ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120] if str(err) else ''})"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(path, f"holds a {type(data).__name__}, not a kws checkpoint dict")
    return data


def _from_lightning(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """A Lightning checkpoint written by KWSLightningModule, in the shipped layout."""
    if LIGHTNING_META_KEY not in ckpt:
        raise CheckpointError(
            path,
            "is a Lightning checkpoint without kws metadata (no 'kws' key): it was not "
            "written by kws train",
        )
    meta = ckpt[LIGHTNING_META_KEY]
    if not isinstance(meta, dict):
        raise CheckpointError(path, f"its 'kws' entry is a {type(meta).__name__}, not a dict")
    weights = ckpt.get("state_dict", {})
    state = {
        k[len(LIGHTNING_PREFIX) :]: v for k, v in weights.items() if k.startswith(LIGHTNING_PREFIX)
    }
    return {**meta, "state_dict": state}


def check_payload(path: Path, data: dict[str, Any]) -> None:
    """Refuse anything but this kws's format, saying what was found and what is read."""
    found = data.get("format_version")
    if found != kws.FORMAT_VERSION:
        what = "no format_version" if found is None else f"format_version {found!r}"
        made_by = f" (written by kws {data['kws_version']})" if "kws_version" in data else ""
        raise CheckpointError(
            path,
            f"has {what}{made_by}; this kws {kws.__version__} reads format_version "
            f"{kws.FORMAT_VERSION} only. Re-train, or load it with the kws that wrote it",
        )
    missing = [k for k in SPOTTER_KEYS if k not in data]
    unknown = sorted(set(data) - set(SPOTTER_KEYS))
    if missing or unknown:
        raise CheckpointError(
            path,
            f"format_version {found} checkpoint with missing key(s) {missing} and unknown "
            f"key(s) {unknown}; this kws reads exactly {list(SPOTTER_KEYS)}",
        )
    if not isinstance(data["state_dict"], dict) or not all(
        isinstance(v, torch.Tensor) for v in data["state_dict"].values()
    ):
        raise CheckpointError(path, "'state_dict' must map names to tensors")


def clip_seconds(train: Any) -> float:
    """The clip length the spotter was made for: ``train.clip_seconds``, else 1 s."""
    try:
        return float(train["clip_seconds"])
    except (KeyError, TypeError, ValueError):
        return 1.0


def load_spotter(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(KeywordSpotter in eval mode, meta) from a shipped ``.pt`` or a kws Lightning ``.ckpt``.

    ``meta`` is the checkpoint without ``state_dict``: task, labels, feature and
    model configs, split, train and metrics.
    """
    from kws.spotter import KeywordSpotter

    path = Path(path)
    data = read_checkpoint(path)
    if "pytorch-lightning_version" in data:
        data = _from_lightning(path, data)
    check_payload(path, data)
    try:
        feature_config = FeatureConfig.from_dict(data["feature_config"])
        model = model_from_config(dict(data["model_config"]))
        labels = [str(label) for label in data["labels"]]
        spotter = KeywordSpotter(feature_config, model, labels, clip_seconds(data["train"]))
        spotter.load_state_dict(data["state_dict"], strict=True)
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        raise CheckpointError(path, f"does not rebuild into a spotter: {err}") from err
    spotter.eval()
    meta = {k: v for k, v in data.items() if k != "state_dict"}
    return spotter, meta


__all__ = [
    "CheckpointError",
    "SPOTTER_KEYS",
    "atomic_torch_save",
    "load_spotter",
    "read_checkpoint",
    "save_spotter",
    "spotter_metadata",
]
