"""Figures of an evaluation report: accuracy against sample rate, and confusion matrices.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never through
pyplot, so no display or global backend is touched (headless CI, servers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kws.evaluation.evaluate import SOURCE_RATE, result_at


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _khz(rate: float) -> str:
    return f"{rate / 1000:g}k"


def model_label(entry: dict[str, Any]) -> str:
    """Legend name: the checkpoint name and what it is."""
    return f"{entry['name']} ({entry.get('model')}, {entry.get('pipeline')})"


def plot_accuracy_vs_rate(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``accuracy_figure(report)`` to ``path``."""
    return _save(accuracy_figure(report), Path(path))


def accuracy_figure(report: dict[str, Any]) -> Figure:
    """Accuracy (%) against sample rate on a log axis, one line per checkpoint, 16 kHz marked.

    Where the report has speaker-bootstrap intervals, each line gets its 95% band; where
    it has references (``--reference``), a dotted line of the same colour.
    """
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    rates = sorted(set(report["rates"]))
    for entry in report["checkpoints"]:
        results = sorted((r for r in entry["results"] if r["accuracy"] is not None),
                         key=lambda r: r["sample_rate"])
        if results:
            x = [r["sample_rate"] for r in results]
            (line,) = ax.plot(x, [100 * r["accuracy"] for r in results], marker="o",
                              label=model_label(entry))
            bands = [r.get("accuracy_ci95") for r in results]
            if all(bands):
                ax.fill_between(x, [100 * b[0] for b in bands], [100 * b[1] for b in bands],
                                color=line.get_color(), alpha=0.12, linewidth=0)
            if all(r.get("reference_accuracy") is not None for r in results):
                ax.plot(x, [100 * r["reference_accuracy"] for r in results], linestyle=":",
                        color=line.get_color(), label=f"{entry['name']}: reference "
                        f"(same audio at {_khz(entry.get('trained_rate', SOURCE_RATE))})")
    ax.axvline(SOURCE_RATE, color="0.5", linestyle="--", linewidth=1)
    ax.text(SOURCE_RATE, 0.97, " 16 kHz (native)", transform=ax.get_xaxis_transform(),
            color="0.4", fontsize=8, va="top")
    ax.set_xscale("log")
    ax.set_xticks(rates)
    ax.set_xticklabels([_khz(r) for r in rates], rotation=45, ha="right")
    ax.minorticks_off()
    ax.set_xlabel("sample rate (Hz, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    banded = any(r.get("accuracy_ci95") for e in report["checkpoints"] for r in e["results"])
    ax.set_title(f"Zero-shot accuracy at resampled rates (resampler {report['resampler']}, "
                 f"split {report['split']})" + ("\nbands: 95% speaker bootstrap" if banded else ""))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return fig


def plot_confusion(
    confusion: Sequence[Sequence[int]], labels: Sequence[str], title: str, path: str | Path
) -> Path:
    """Row-normalised confusion matrix (rows: true label) with the counts written in."""
    counts = np.asarray(confusion, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = 2.5 + 0.45 * len(labels)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 40:
        for i, j in zip(*np.nonzero(counts), strict=True):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    return _save(fig, Path(path))


def write_plots(report: dict[str, Any], json_path: str | Path) -> list[Path]:
    """All figures of ``report`` next to its JSON: ``STEM_accuracy_vs_rate.png`` and, per
    checkpoint, ``STEM_NAME_confusion_RATE.png`` at its training rate and at 8 kHz."""
    json_path = Path(json_path)
    stem, folder = json_path.stem, json_path.parent
    written = [plot_accuracy_vs_rate(report, folder / f"{stem}_accuracy_vs_rate.png")]
    for entry in report["checkpoints"]:
        for rate in dict.fromkeys([entry["trained_rate"], 8000]):
            result = result_at(entry, rate)
            if result is None or not result["n_clips"]:
                continue
            title = (f"{entry['name']} at {_khz(rate)}Hz: "
                     f"{100 * result['accuracy']:.1f}% of {result['n_clips']} clips")
            written.append(plot_confusion(
                result["confusion"], result["labels"], title,
                folder / f"{stem}_{entry['name']}_confusion_{rate}.png",
            ))
    return written
