"""Training configs: YAML files in ``kws/configs/``, checked against the defaults below.

A config is a plain nested dict (it is stored in every checkpoint, so it must be
JSON-able). Sections:

* ``data``: where the clips are and how they are batched and augmented;
* ``features``: the FeatureConfig fields (checked by ``FeatureConfig.from_dict``);
* ``spec_augment``: band and frame masks on MFCC training batches (SpecAugment);
* ``model``: ``name`` (the family) plus constructor overrides (checked by ``build_model``);
* ``optim``: AdamW, the S4 SSM learning rate, warm-up, label smoothing, clipping,
  weight averaging (EMA);
* ``distill``: trained checkpoints whose averaged posteriors the model also learns
  (knowledge distillation, e.g. a seed ensemble into one model); no teachers: off;
* ``trainer``: what Lightning's Trainer gets, plus early stopping and checkpointing;
* ``seed``: the one seed that data order, augmentation and dropout derive from.

Keys of ``data``, ``optim``, ``distill`` and ``trainer`` are fixed: a typo fails by name.
Files and ``--set`` update the defaults key by key, also inside ``model``.
``--set section.key=value`` overrides any key; the value is read as YAML, so
``--set trainer.devices=[0,1]`` and ``--set data.root=null`` work.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    # A trained checkpoint (.pt or .ckpt) whose weights the run starts from, with a
    # fresh optimizer and schedule: fine-tuning. Ignored when resuming.
    "init_from": None,
    "data": {
        "root": None,  # None: kws.data.speech_commands.find_data_root()
        "task": "sc12",
        "val_percent": 10.0,
        "test_percent": 10.0,
        "clip_seconds": 1.0,
        "batch_size": 64,
        "num_workers": 2,
        "on_error": "raise",  # or "skip": a clip that fails to load is replaced and logged
        # More Speech Commands folders whose word clips all go to train (not val/test);
        # their speakers that the main folder holds out are dropped.
        "extra_train": [],
        # Augmenter arguments for the train split (None: no augmentation).
        "augment": {"shift_ms": 100.0, "noise_prob": 0.8, "snr_db": [0.0, 20.0], "speed": None},
    },
    "features": {"kind": "mfcc"},
    # SpecAugment on the log-mel bands of MFCC training batches (0 masks: off).
    "spec_augment": {"freq_masks": 0, "max_bands": 8, "time_masks": 0, "max_frames": 10},
    "model": {"name": "s4d"},
    "optim": {
        "lr": 0.01,
        "weight_decay": 0.05,
        "ssm_lr": 0.001,  # S4/S4D kernel parameters (A, B, dt): own lr, no weight decay
        "warmup_epochs": 1.0,  # linear warm-up, then cosine decay to zero, stepped per batch
        "label_smoothing": 0.0,
        "grad_clip": 1.0,  # max gradient norm; 0 turns clipping off
        # Exponential moving average of the weights per optimizer step, used for
        # validation, checkpoints and the shipped model; 0 turns it off. It averages
        # over about 1 / (1 - decay) steps.
        "ema_decay": 0.0,
    },
    "distill": {
        "teachers": [],  # shipped .pt or kws .ckpt files; their posteriors are averaged
        "weight": 0.5,  # loss = (1 - weight) * cross-entropy + weight * T^2 * KL(teacher || model)
        "temperature": 2.0,  # T: both sides' logits are divided by it before the softmax
    },
    "trainer": {
        "max_epochs": 40,
        "max_steps": -1,
        "max_minutes": None,  # wall-clock limit for fit(); None: none
        "accelerator": "auto",
        "devices": "auto",
        "num_nodes": 1,
        "strategy": "auto",
        "precision": "auto",  # bf16-mixed on a GPU that has it, else 32-true
        "patience": 10,  # early stopping on val/acc; 0 turns it off
        "log_every_n_steps": 20,
        "val_check_interval": 1.0,
        "limit_train_batches": 1.0,
        "limit_val_batches": 1.0,
        "checkpoint_every_n_steps": 200,  # also refresh last.ckpt mid-epoch; 0: epoch ends only
        "progress_bar": True,
        "deterministic": False,
    },
}

#: mappings whose keys are checked downstream (FeatureConfig, build_model, Augmenter)
OPEN_SECTIONS = ("features", "model", "data.augment")
#: mappings that may be switched off with null
NULLABLE = ("data.augment",)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""


def resolve_config_path(name: str | Path) -> Path:
    """A path, or the name of a shipped config (``s4d_mfcc`` -> kws/configs/s4d_mfcc.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"{name}: no such config file (shipped configs: {names})")


_EXPONENT_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _checked(value: Any, default: Any, where: str) -> Any:
    """``value`` if it has the default's type (ints may be written 2.0); else ConfigError.

    None and 'auto' defaults take anything (e.g. trainer.devices: auto, 2 or [0, 1]).
    """
    if default is None or default == "auto":
        return value
    if (isinstance(default, (int, float)) and not isinstance(default, bool)
            and isinstance(value, str) and _EXPONENT_NUMBER.match(value)):
        value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and isinstance(default, int):
            ok = float(value).is_integer()
            value = int(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(
            type(default), f"a {type(default).__name__}"
        )
        raise ConfigError(f"{where} must be {kind} like {default!r}, got {value!r}")
    return value


def merge(base: dict[str, Any], update: dict[str, Any], source: str, prefix: str = "") -> None:
    """Update ``base`` in place from ``update``, key by key, refusing keys the defaults lack."""
    open_here = prefix.rstrip(".") in OPEN_SECTIONS
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base and not open_here:
            known = ", ".join(sorted(base))
            raise ConfigError(f"{source}: unknown key {dotted!r} (known here: {known})")
        current = base.get(key)
        mapping = isinstance(current, dict) or dotted in OPEN_SECTIONS
        if mapping and value is None and dotted in NULLABLE:
            base[key] = None
        elif mapping and not isinstance(value, dict):
            raise ConfigError(f"{source}: {dotted} must be a mapping, got {value!r}")
        elif mapping:
            if not isinstance(current, dict):  # switched off before, switched on again
                base[key] = current = {}
            merge(current, value, source, f"{dotted}.")
        else:
            if not open_here:
                value = _checked(value, current, f"{source}: {dotted}")
            base[key] = copy.deepcopy(value)


def parse_set(assignment: str) -> dict[str, Any]:
    """'a.b=value' -> {'a': {'b': value}}, the value read as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({err})") from err
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The defaults, updated by the YAML file at ``path``, then by each ``--set`` in order."""
    path = resolve_config_path(path)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    config = copy.deepcopy(DEFAULTS)
    merge(config, loaded, str(path))
    for assignment in sets:
        merge(config, parse_set(assignment), f"--set {assignment}")
    check_config(config, str(path))
    return config


def check_config(config: dict[str, Any], source: str) -> None:
    """Cross-field checks that a per-key type check cannot make."""
    if "name" not in config["model"]:
        raise ConfigError(f"{source}: model.name (the family: s4, s4d, tcn or lstm) is required")
    if "kind" not in config["features"]:
        raise ConfigError(f"{source}: features.kind (raw or mfcc) is required")
    data, optim, trainer = config["data"], config["optim"], config["trainer"]
    init = config["init_from"]
    if init is not None and not (isinstance(init, str) and init):
        raise ConfigError(f"{source}: init_from must be a checkpoint path or null, got {init!r}")
    if data["batch_size"] < 1 or data["num_workers"] < 0:
        raise ConfigError(f"{source}: data.batch_size must be >= 1 and data.num_workers >= 0")
    if data["on_error"] not in ("raise", "skip"):
        raise ConfigError(f"{source}: data.on_error must be 'raise' or 'skip'")
    if not all(isinstance(path, str) and path for path in data["extra_train"]):
        raise ConfigError(f"{source}: data.extra_train must be a list of data folders, "
                          f"got {data['extra_train']!r}")
    for key in ("lr", "ssm_lr"):
        if optim[key] <= 0:
            raise ConfigError(f"{source}: optim.{key} must be > 0, got {optim[key]}")
    if optim["weight_decay"] < 0 or optim["warmup_epochs"] < 0 or optim["grad_clip"] < 0:
        raise ConfigError(f"{source}: optim.weight_decay, warmup_epochs, grad_clip must be >= 0")
    if not 0 <= optim["ema_decay"] < 1:
        raise ConfigError(f"{source}: optim.ema_decay must be in [0, 1) (0: off)")
    if not 0 <= optim["label_smoothing"] < 1:
        raise ConfigError(f"{source}: optim.label_smoothing must be in [0, 1)")
    distill = config["distill"]
    if not all(isinstance(path, str) and path for path in distill["teachers"]):
        raise ConfigError(f"{source}: distill.teachers must be a list of checkpoint paths, "
                          f"got {distill['teachers']!r}")
    if not 0 <= distill["weight"] <= 1 or distill["temperature"] <= 0:
        raise ConfigError(f"{source}: distill.weight must be in [0, 1] and distill.temperature "
                          f"> 0, got {distill['weight']} and {distill['temperature']}")
    if trainer["max_epochs"] < 1 and trainer["max_steps"] < 1:
        raise ConfigError(f"{source}: trainer.max_epochs or trainer.max_steps must be >= 1")
    minutes = trainer["max_minutes"]
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))
                                or minutes <= 0):
        raise ConfigError(f"{source}: trainer.max_minutes must be a positive number or null")
    spec = config["spec_augment"]
    if min(spec.values()) < 0:
        raise ConfigError(f"{source}: spec_augment values must be >= 0, got {spec}")
    if (spec["freq_masks"] or spec["time_masks"]) and config["features"]["kind"] != "mfcc":
        raise ConfigError(
            f"{source}: spec_augment masks log-mel bands and frames, so it needs "
            f"features.kind: mfcc (got {config['features']['kind']!r}); set its masks to 0"
        )
    if trainer["patience"] < 0 or trainer["checkpoint_every_n_steps"] < 0:
        raise ConfigError(f"{source}: trainer.patience and checkpoint_every_n_steps must be >= 0")


def dump_config(config: dict[str, Any]) -> str:
    """YAML text of a config, section by section, as ``kws train`` writes it to the run folder."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


__all__ = [
    "CONFIG_DIR",
    "DEFAULTS",
    "ConfigError",
    "dump_config",
    "load_config",
    "parse_set",
    "resolve_config_path",
]
