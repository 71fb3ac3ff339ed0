"""Evaluation: zero-shot accuracy at resampled sample rates, its plots, tables and model cards.

``evaluate`` scores checkpoints (``kws eval``), ``plots`` draws the report,
``report`` turns reports and checkpoint metadata into the results table and
model cards (``kws results``). Names load on first use, so ``kws --help`` does
not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = (
    "DEFAULT_RATES", "MFCC_POLICY", "RESAMPLERS", "Evaluand", "check_resampler",
    "confusion_matrix", "evaluate_checkpoints", "resample_batch", "result_at", "scores",
    "select_clips", "speaker_bootstrap_ci", "speaker_groups", "sweep",
)
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kws.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module("kws.evaluation.evaluate"), name)
    globals()[name] = value
    return value
