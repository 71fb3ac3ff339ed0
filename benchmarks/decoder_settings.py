"""Decoder settings side by side: posterior smoothing and decision hold on one model run.

The detector smooths posteriors with a moving average (``smoothing_ms``) and fires
when a keyword's smoothed posterior crosses its threshold, which on the long-stream
benchmark is a median of 0.2-0.4 s before the word ends. ``hold_ms`` waits that long
after the crossing and fires whichever keyword peaked highest meanwhile. Both act
after the model, so this script runs the model once over one long stream, records
the posteriors, and decodes the same trace with every pair of settings at every
threshold: the settings are compared on identical model outputs (side by side, one
run). It reports, per pair, the best hit rate within each false-alarm budget (over a
sweep of thresholds in steps of 0.005) and the median latency there. Pick settings
on a validation stream (``--split val``) and read them on the test stream.

    .venv/bin/python benchmarks/decoder_settings.py --model export/s4_mfcc_ctx_stream.onnx \\
        --data ../shared/data/speech_commands_test_set_v0.02_dev --minutes 30 --seed 10 \\
        --smoothings 50,100,200,300 --holds 0,100,200,300,500 \\
        --json results/decoder_settings_ctx.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from kws.data.speech_commands import find_data_root
from kws.streaming.backends import open_backend
from kws.streaming.engine import StreamingDetector
from kws.streaming.longstream import (
    CURVE_GRID_TEXT,
    FA_BUDGETS,
    operating_curve,
    record_long_stream,
    stream_summary,
    sweep_thresholds,
)

THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


def numbers(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def curve_cells(curve: list[dict]) -> str:
    """One table row's cells: hit rate and median latency per budget."""
    cells = []
    for point in curve:
        if point["hit_rate"] is None:
            cells.append(f"{'-':>16}")
            continue
        latency = point["latency_median_s"]
        shown = "" if latency is None else f" {latency:+.2f}s"
        cells.append(f"{point['hit_rate']:>9.1%}{shown:>7}")
    return " ".join(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="streaming ONNX, checkpoint, or a,b,c")
    parser.add_argument("--data", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--negatives", action="append", default=[], metavar="DIR",
                        help="more folders of other words for the stream (as kws bench stream)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--smoothings", default="100", help="smoothing_ms values")
    parser.add_argument("--holds", default="0", help="hold_ms values")
    parser.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    parser.add_argument("--refractory-ms", type=float, default=1000.0)
    parser.add_argument("--tolerance", type=float, default=0.25)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    smoothings, holds = numbers(args.smoothings), numbers(args.holds)
    thresholds = numbers(args.thresholds)

    backend = open_backend(args.model, threads=1)
    # the recorded trace is the raw posteriors, before any smoothing
    detector = StreamingDetector(backend, refractory_ms=args.refractory_ms, record=True)
    root = find_data_root(args.data)
    stream, trace, elapsed = record_long_stream(detector, root, args.minutes, args.seed,
                                                args.split, negatives=args.negatives)

    rows = []
    where = (trace, detector.labels, detector.chunk_s, backend.window_s, stream.placements,
             stream.duration_s)
    for smoothing, hold in itertools.product(smoothings, holds):
        timing = {"smoothing_ms": smoothing, "refractory_ms": args.refractory_ms,
                  "hold_ms": hold}
        results = sweep_thresholds(*where, thresholds, args.tolerance, **timing)
        curve = operating_curve(*where, args.tolerance, **timing)
        rows.append({"smoothing_ms": smoothing, "hold_ms": hold, "results": results,
                     "best_within": curve})

    s = stream_summary(stream)
    print(f"{args.model}: {s['duration_s'] / 60:.1f} min stream (seed {args.seed}, "
          f"{args.split}), {s['keywords']} keywords, {s['unknown_words']} other words "
          f"({s['distinct_other_clips']} distinct); "
          f"model run once ({elapsed:.0f} s), decoded per setting")
    print(f"best hit rate within a false-alarm budget (FA/hour; {CURVE_GRID_TEXT}), and the "
          "median latency there")
    print(f"{'smooth ms':>9} {'hold ms':>8} "
          + " ".join(f"{'<= ' + format(b, 'g'):>16}" for b in FA_BUDGETS))
    for row in rows:
        print(f"{row['smoothing_ms']:>9g} {row['hold_ms']:>8g} {curve_cells(row['best_within'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": args.model, "backend": backend.describe(), "data": str(root),
            "split": args.split, "negatives": args.negatives, "stream": s,
            "model_seconds": elapsed,
            "detector": {"refractory_ms": args.refractory_ms,
                         "reset_period_s": detector.reset_period_s, "copies": detector.copies,
                         "tolerance_s": args.tolerance},
            "settings": rows,
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
