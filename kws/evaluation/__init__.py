"""Evaluation: zero-shot accuracy at resampled sample rates, its plots, tables and model cards.

``evaluate`` scores checkpoints (``kws eval``), ``plots`` draws the report,
``report`` turns reports and checkpoint metadata into the results table and
model cards (``kws results``).
"""

from kws.evaluation.evaluate import (
    DEFAULT_RATES,
    MFCC_POLICY,
    RESAMPLERS,
    Evaluand,
    check_resampler,
    confusion_matrix,
    evaluate_checkpoints,
    resample_batch,
    result_at,
    scores,
    select_clips,
    sweep,
)

__all__ = [
    "DEFAULT_RATES",
    "MFCC_POLICY",
    "RESAMPLERS",
    "Evaluand",
    "check_resampler",
    "confusion_matrix",
    "evaluate_checkpoints",
    "resample_batch",
    "result_at",
    "scores",
    "select_clips",
    "sweep",
]
