"""The main job, ``kws pipeline``: data found -> small model trained -> scored at 16 and 8 kHz.

It trains ``kws/configs/tiny_mfcc.yaml`` (a small S4D on MFCC, a few epochs) on
whatever Speech Commands folder ``find_data_root`` finds, then scores the best
checkpoint on its own speaker-disjoint test split with ``kws.evaluation``: at
16 kHz, and zero-shot at 8 kHz (clips resampled, MFCC windows fixed in ms and
bands in Hz, so the model sees the same kind of features).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

RATES = (16000, 8000)
CONFIG = "tiny_mfcc"


def run_pipeline(
    data: str | Path | None, out: str | Path, minutes: float = 5.0, log=print
) -> dict[str, Any]:
    """Train and evaluate; returns the summary that ``print_table`` shows (also out/summary.json).

    Raises FileNotFoundError (naming ``kws data download``) when no data set is found.
    """
    from kws.data.speech_commands import find_data_root
    from kws.evaluation import evaluate_checkpoints
    from kws.training.config import load_config
    from kws.training.train import train

    started = time.monotonic()
    out = Path(out)
    # The main job prints its own progress; Lightning's start-up notes are noise here.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    config = load_config(CONFIG)
    root = find_data_root(data, task=config["data"]["task"])
    config["data"]["root"] = str(root)
    config["trainer"]["max_minutes"] = minutes
    if "OMP_NUM_THREADS" not in os.environ:
        # Leave a core to each loader worker: on a small machine, compute threads that
        # compete with the workers spin and wait instead of computing.
        workers = config["data"]["num_workers"]
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    log(f"data: {root}")
    log(f"training {CONFIG} ({config['model']['name']} on {config['features']['kind']}) "
        f"for at most {config['trainer']['max_epochs']} epochs or {minutes:g} minutes")
    result = train(config, out, name=CONFIG)
    trained = time.monotonic()

    report = evaluate_checkpoints(
        [result.spotter_path], root, split="test", rates=RATES, resampler="soxr", log=log
    )
    (out / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    entry = report["checkpoints"][0]
    from kws.training.checkpoint import read_checkpoint

    shipped = read_checkpoint(result.spotter_path)
    summary = {
        "data": str(root),
        "out": str(out),
        "checkpoint": str(result.spotter_path),
        "model": entry["model"],
        "pipeline": entry["pipeline"],
        "params": entry["params"],
        "task": entry["task"],
        "epochs": shipped["train"]["epochs"],
        "train_seconds": round(trained - started, 1),
        "eval_seconds": round(time.monotonic() - trained, 1),
        "val_acc": result.metrics.get("val/acc"),
        "test_clips": entry["split"]["n_clips"],
        "test_speakers": entry["split"]["n_speakers"],
        "results": [
            {"sample_rate": r["sample_rate"], "accuracy": r["accuracy"],
             "accuracy_ci95": r.get("accuracy_ci95")} for r in entry["results"]
        ],
        "skipped": entry["skipped"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def print_table(summary: dict[str, Any]) -> None:
    """The result as a small table (test accuracy per rate) with a few lines of context."""
    from rich.console import Console
    from rich.table import Table

    from kws.evaluation.report import format_interval

    val_acc = "n/a" if summary["val_acc"] is None else f"{100 * summary['val_acc']:.1f}%"
    table = Table(title=f"{summary['model']} on {summary['pipeline']}, task {summary['task']}")
    table.add_column("sample rate", justify="right")
    table.add_column("test accuracy", justify="right")
    table.add_column("95% interval (speakers)", justify="right")
    for row in summary["results"]:
        table.add_row(f"{row['sample_rate']} Hz", f"{100 * row['accuracy']:.2f}%",
                      format_interval(row.get("accuracy_ci95")))
    for row in summary["skipped"]:
        table.add_row(f"{row['sample_rate']} Hz", f"skipped: {row['reason']}", "")
    console = Console()
    console.print(table)
    console.print(
        f"{summary['params']:,} parameters, best checkpoint after {summary['epochs']:g} epochs "
        f"(val accuracy {val_acc}); test split: {summary['test_clips']} clips from "
        f"{summary['test_speakers']} speakers not seen in training; 8 kHz is zero-shot "
        f"(trained at 16 kHz only)"
    )
    console.print(f"trained in {summary['train_seconds']:.0f} s, evaluated in "
                  f"{summary['eval_seconds']:.0f} s; model: {summary['checkpoint']}")
