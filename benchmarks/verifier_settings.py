"""Verifier settings side by side: which clip model, how long after the candidate, from which
detector threshold, on one run of the detector.

A verifier (``kws.streaming.verifier``) acts on the detector's candidates, so this
script runs the detector once over one long stream, records its posteriors, decodes
the candidates at each candidate threshold, and scores each candidate's window with
each verifier at each delay (every distinct window once). Per setting it reports the
best hit rate within each false-alarm budget over a sweep of the verifier's threshold
(steps of 0.005), the detector alone on the same trace first, and ranks the settings
by their mean hit rate within ``--rank-budgets``. Pick a setting on a validation
stream (``--split val``) and read it on the test stream with ``kws bench stream
--verifier``.

    .venv/bin/python benchmarks/verifier_settings.py --model export/s4_mfcc_ctx_stream.onnx \\
        --data ../shared/data/speech_commands_test_set_v0.02_dev --split val --minutes 60 \\
        --seed 1 --verifiers models/s4_mfcc_wide.pt,models/s4_mfcc.pt,models/tcn_mfcc.pt \\
        --delays 0,200,400,600 --candidates 0.5,0.6,0.7,0.8 \\
        --json results/verifier_settings_ctx_val.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from kws.data.speech_commands import find_data_root
from kws.streaming.backends import open_backend
from kws.streaming.engine import StreamingDetector, decode_trace
from kws.streaming.longstream import (
    CURVE_GRID,
    FA_BUDGETS,
    best_within,
    operating_curve,
    record_long_stream,
    stream_summary,
)
from kws.streaming.verifier import (
    Verifier,
    open_clip_scorer,
    verified_results,
    verify_offline,
)


def numbers(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def rank_score(curve: list[dict], budgets: list[float]) -> float:
    """Mean hit rate within ``budgets`` (a budget that nothing keeps to counts as 0)."""
    points = {p["fa_per_hour_at_most"]: p["hit_rate"] or 0.0 for p in curve}
    return sum(points[b] for b in budgets) / len(budgets)


def cells(curve: list[dict]) -> str:
    return " ".join(f"{'-':>7}" if p["hit_rate"] is None else f"{p['hit_rate']:>7.1%}"
                    for p in curve)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the detector: streaming ONNX, "
                        "checkpoint, or a,b,c")
    parser.add_argument("--verifiers", required=True,
                        help="clip models to compare, separated by commas (each one verifier; "
                        "use + to average several into one, a.pt+b.pt)")
    parser.add_argument("--data", default=None)
    parser.add_argument("--split", default="val")
    parser.add_argument("--negatives", action="append", default=[], metavar="DIR")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--delays", default="400", help="verify_delay_ms values")
    parser.add_argument("--candidates", default="0.5", help="detector thresholds")
    parser.add_argument("--rank-budgets", default="1,4,10,20",
                        help="false alarms per hour whose mean hit rate ranks the settings")
    parser.add_argument("--tolerance", type=float, default=0.25)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    delays, candidate_thresholds = numbers(args.delays), numbers(args.candidates)
    budgets = numbers(args.rank_budgets)
    if not set(budgets) <= set(FA_BUDGETS):
        parser.error(f"--rank-budgets must be among {list(FA_BUDGETS)}")

    backend = open_backend(args.model, threads=1)
    detector = StreamingDetector(backend, record=True)
    scorers = {name: open_clip_scorer(name.replace("+", ","), detector.sample_rate)
               for name in args.verifiers.split(",")}
    root = find_data_root(args.data)
    stream, trace, elapsed = record_long_stream(detector, root, args.minutes, args.seed,
                                                args.split, negatives=args.negatives)
    where = (trace, detector.labels, detector.chunk_s, backend.window_s)
    alone = operating_curve(*where, stream.placements, stream.duration_s, args.tolerance)
    candidates = {t: decode_trace(*where, threshold=t) for t in candidate_thresholds}

    rows = []
    started = time.perf_counter()
    for name, delay in itertools.product(scorers, delays):
        verifier = Verifier(scorers[name], delay_ms=delay)
        verifier.check_stream(detector.labels, detector.sample_rate)
        cache: dict = {}  # windows shared by every candidate threshold
        for threshold in candidate_thresholds:
            verified = verify_offline(candidates[threshold], stream.audio, detector.chunk_s,
                                      detector.chunk_samples, verifier, cache)
            curve = best_within(verified_results(verified, stream.placements,
                                                 stream.duration_s, CURVE_GRID, args.tolerance))
            rows.append({"verifier": name, "delay_ms": delay, "candidate_threshold": threshold,
                         "candidates": len(verified), "best_within": curve,
                         "rank_score": rank_score(curve, budgets)})
    verify_seconds = time.perf_counter() - started

    s = stream_summary(stream)
    print(f"{args.model}: {s['duration_s'] / 60:.1f} min stream (seed {args.seed}, "
          f"{args.split}), {s['keywords']} keywords, {s['unknown_words']} other words "
          f"({s['distinct_other_clips']} distinct); detector run once ({elapsed:.0f} s), "
          f"verifiers {verify_seconds:.0f} s")
    print("best hit rate within a false-alarm budget (FA/hour) over the verifier's threshold; "
          f"ranked by the mean within {', '.join(format(b, 'g') for b in budgets)}")
    print(f"{'verifier':<40} {'delay':>6} {'cand.':>5} {'mean':>6} "
          + " ".join(f"{'<=' + format(b, 'g'):>7}" for b in FA_BUDGETS))
    print(f"{'(the detector alone)':<40} {'':>6} {'':>5} {rank_score(alone, budgets):>6.1%} "
          f"{cells(alone)}")
    for row in sorted(rows, key=lambda r: -r["rank_score"]):
        print(f"{row['verifier'][-40:]:<40} {row['delay_ms']:>6g} "
              f"{row['candidate_threshold']:>5g} {row['rank_score']:>6.1%} "
              f"{cells(row['best_within'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": args.model, "backend": backend.describe(), "data": str(root),
            "split": args.split, "negatives": args.negatives, "stream": s,
            "detector_seconds": elapsed, "verifier_seconds": verify_seconds,
            "rank_budgets": budgets,
            "detector_alone": {"best_within": alone, "rank_score": rank_score(alone, budgets)},
            "settings": rows,
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
