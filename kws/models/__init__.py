"""The model registry: one name per family, per-pipeline defaults, rebuild from a config.

The defaults put every family within about 30% of the S4 model's parameter count
on the same pipeline, so a comparison between families is one of architecture,
not of size. S4 is imported only when asked for, so TCN and LSTM work without it.
"""

from __future__ import annotations

import inspect
from typing import Any

from kws.models.base import KWSModel, State

MODEL_FAMILIES = ("s4", "s4d", "tcn", "lstm")
PIPELINES = ("raw", "mfcc")

# Per (family, pipeline) constructor arguments; build_model's overrides go on top.
# Raw audio has 16,000 steps per second and MFCC 100 frames per second; the TCN
# uses that to pick the depth whose receptive field covers a one-second clip
# (raw: 12 blocks, 16,381 steps; MFCC: 5 blocks, 125 frames).
DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "s4": {
        "raw": {"d_model": 128, "d_state": 64, "n_layers": 6, "kernel": "dplr"},
        "mfcc": {"d_model": 128, "d_state": 64, "n_layers": 4, "kernel": "dplr"},
    },
    "s4d": {
        "raw": {"d_model": 128, "d_state": 64, "n_layers": 6, "kernel": "diag-lin"},
        "mfcc": {"d_model": 128, "d_state": 64, "n_layers": 4, "kernel": "diag-lin"},
    },
    "tcn": {
        "raw": {"d_model": 56, "kernel_size": 3, "steps_per_second": 16000.0},
        "mfcc": {"d_model": 72, "kernel_size": 3, "steps_per_second": 100.0},
    },
    "lstm": {
        "raw": {"d_model": 128, "n_layers": 2},
        "mfcc": {"d_model": 104, "n_layers": 2},
    },
}


def model_class(family: str) -> type[KWSModel]:
    """The class behind a family name, imported on demand."""
    if family in ("s4", "s4d"):
        from kws.models.s4 import S4Classifier

        return S4Classifier
    if family == "tcn":
        from kws.models.tcn import TCNClassifier

        return TCNClassifier
    if family == "lstm":
        from kws.models.lstm import LSTMClassifier

        return LSTMClassifier
    raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(MODEL_FAMILIES)}")


def _construct(family: str, kwargs: dict[str, Any], where: str) -> KWSModel:
    """Check every key against the constructor before calling it, so typos fail by name."""
    cls = model_class(family)
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self")
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(
            f"{where}: unknown {family} argument(s) {', '.join(unknown)}; "
            f"valid ones are {', '.join(params)}"
        )
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise ValueError(f"{where}: {family} needs {', '.join(missing)}")
    model = cls(**kwargs)
    if model.family != family:  # e.g. s4d asked for with the DPLR kernel
        raise ValueError(
            f"{where}: these arguments build a {model.family!r} model, not {family!r} "
            f"(the kernel decides between s4 and s4d)"
        )
    return model


def build_model(
    name: str, in_channels: int, n_classes: int, pipeline: str = "raw", **overrides: Any
) -> KWSModel:
    """A new model of family ``name`` with the pipeline's defaults, updated by ``overrides``."""
    if name not in MODEL_FAMILIES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_FAMILIES)}")
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(PIPELINES)}")
    if pipeline == "raw" and in_channels != 1:
        raise ValueError(f"the raw pipeline has one input channel, got in_channels={in_channels}")
    kwargs = {**DEFAULTS[name][pipeline], **overrides}
    kwargs.update(in_channels=in_channels, n_classes=n_classes)
    return _construct(name, kwargs, f"build_model({name!r})")


def model_from_config(cfg: dict[str, Any]) -> KWSModel:
    """Rebuild a model (fresh weights) from its ``config``; load the state_dict afterwards."""
    if not isinstance(cfg, dict) or "family" not in cfg:
        raise ValueError(
            f"model config must be a dict with a 'family' key (one of {', '.join(MODEL_FAMILIES)})"
        )
    kwargs = dict(cfg)
    family = kwargs.pop("family")
    if family not in MODEL_FAMILIES:
        raise ValueError(
            f"model config: unknown family {family!r}; choose one of {', '.join(MODEL_FAMILIES)}"
        )
    return _construct(family, kwargs, "model config")


__all__ = [
    "DEFAULTS",
    "MODEL_FAMILIES",
    "PIPELINES",
    "KWSModel",
    "State",
    "build_model",
    "model_class",
    "model_from_config",
]
