"""Decision hold: fire at the crossing, or wait and fire the keyword that peaked highest.

The detector fires when a keyword's smoothed posterior crosses its threshold, which
on the long-stream benchmark is a median of 0.2-0.4 s before the word ends: part of
a word decides. ``hold_ms`` waits that long after the crossing and fires whichever
keyword peaked highest meanwhile. This script runs the model once over one long
stream, records the posteriors, and decodes the same trace with each hold at every
threshold, so the holds are compared on identical model outputs (side by side, one
run). It reports, per hold, the best hit rate within each false-alarm budget (over
a sweep of thresholds in steps of 0.005) and the median latency there.

    .venv/bin/python benchmarks/decision_hold.py --model export/s4_mfcc_ctx_stream.onnx \\
        --data ../shared/data/speech_commands_test_set_v0.02_dev --minutes 30 --seed 10 \\
        --holds 0,100,200,300,500 --json results/decision_hold.json
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="streaming ONNX, checkpoint, or a,b,c")
    parser.add_argument("--data", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--holds", default="0,100,200,300,500", help="hold_ms values")
    parser.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    parser.add_argument("--smoothing-ms", type=float, default=100.0)
    parser.add_argument("--refractory-ms", type=float, default=1000.0)
    parser.add_argument("--tolerance", type=float, default=0.25)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    holds, thresholds = numbers(args.holds), numbers(args.thresholds)

    backend = open_backend(args.model, threads=1)
    detector = StreamingDetector(backend, smoothing_ms=args.smoothing_ms,
                                 refractory_ms=args.refractory_ms, record=True)
    root = find_data_root(args.data)
    stream, trace, elapsed = record_long_stream(detector, root, args.minutes, args.seed,
                                                args.split)

    rows = []
    for hold in holds:
        timing = {"smoothing_ms": args.smoothing_ms, "refractory_ms": args.refractory_ms,
                  "hold_ms": hold}
        where = (trace, detector.labels, detector.chunk_s, backend.window_s,
                 stream.placements, stream.duration_s)
        results = sweep_thresholds(*where, thresholds, args.tolerance, **timing)
        curve = operating_curve(*where, args.tolerance, **timing)
        rows.append({"hold_ms": hold, "results": results, "best_within": curve})

    s = stream_summary(stream)
    print(f"{args.model}: {s['duration_s'] / 60:.1f} min stream (seed {args.seed}, "
          f"{args.split}), {s['keywords']} keywords, {s['unknown_words']} other words; "
          f"model run once ({elapsed:.0f} s), decoded per hold")
    print(f"best hit rate within a false-alarm budget (FA/hour; {CURVE_GRID_TEXT}), and the "
          "median latency there")
    print(f"{'hold ms':>8} " + " ".join(f"{'<= ' + format(b, 'g'):>16}" for b in FA_BUDGETS))
    for row in rows:
        cells = []
        for point in row["best_within"]:
            if point["hit_rate"] is None:
                cells.append(f"{'-':>16}")
                continue
            latency = point["latency_median_s"]
            shown = "" if latency is None else f" {latency:+.2f}s"
            cells.append(f"{point['hit_rate']:>9.1%}{shown:>7}")
        print(f"{row['hold_ms']:>8g} " + " ".join(cells))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": args.model, "backend": backend.describe(), "data": str(root),
            "stream": s, "model_seconds": elapsed,
            "detector": {"smoothing_ms": args.smoothing_ms, "refractory_ms": args.refractory_ms,
                         "reset_period_s": detector.reset_period_s, "copies": detector.copies,
                         "tolerance_s": args.tolerance},
            "holds": rows,
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
