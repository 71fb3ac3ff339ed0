"""``kws stream`` (keyword events in an audio file) and ``kws bench stream`` (long-stream scores).

Both drive one ``StreamingDetector``; heavy imports wait until a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from kws.cli import UserError

#: seconds of audio read from a file at a time when no resampling is needed
READ_BLOCK_S = 30.0


def reset_period(text: str) -> float | str | None:
    """``--reset-period``: seconds, ``auto``, or 0 for plain recurrence (None)."""
    from kws.streaming import engine

    if text == engine.AUTO:
        return engine.AUTO
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds, 0 or {engine.AUTO!r}, got {text!r}") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return seconds or None


THRESHOLD_HELP = ("posterior threshold of every keyword (default 0.8; with --verifier 0.5, "
                  "and the verifier decides)")


def detector_threshold(args: argparse.Namespace) -> float:
    """``--threshold``, or its default: 0.8 alone, lower when a verifier checks the candidates."""
    from kws.streaming.engine import DEFAULT_THRESHOLD
    from kws.streaming.verifier import DEFAULT_CANDIDATE_THRESHOLD

    if args.threshold is not None:
        return args.threshold
    return DEFAULT_THRESHOLD if args.verifier is None else DEFAULT_CANDIDATE_THRESHOLD


def add_detector_options(parser: argparse.ArgumentParser) -> None:
    """The options shared by every command that runs a StreamingDetector."""
    from kws.streaming import engine, verifier

    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for onnxruntime / torch (default 1)")
    parser.add_argument("--chunk-ms", type=float, default=None,
                        help="model step of a checkpoint (default 10); an ONNX model's is fixed")
    parser.add_argument("--smoothing-ms", type=float, default=engine.DEFAULT_SMOOTHING_MS,
                        help=f"posterior moving average (default {engine.DEFAULT_SMOOTHING_MS:g})")
    parser.add_argument("--refractory-ms", type=float, default=engine.DEFAULT_REFRACTORY_MS,
                        help="quiet time after an event "
                             f"(default {engine.DEFAULT_REFRACTORY_MS:g})")
    parser.add_argument("--hold-ms", type=float, default=engine.DEFAULT_HOLD_MS,
                        help="wait this long after a crossing and fire the keyword that peaked "
                             "highest meanwhile: fewer wrong keywords, later events "
                             f"(default {engine.DEFAULT_HOLD_MS:g})")
    parser.add_argument("--reset-period", type=reset_period, default=engine.DEFAULT_RESET_PERIOD,
                        help="seconds between state resets of each copy; 0 = plain recurrence; "
                             "auto (default) = the shortest that leaves every read copy a "
                             "full window: twice the window with 2 copies")
    parser.add_argument("--copies", type=int, default=engine.DEFAULT_COPIES,
                        help=f"staggered state copies (default {engine.DEFAULT_COPIES})")
    parser.add_argument("--verifier", default=None, metavar="MODEL",
                        help="a second stage: a clip model (a .onnx from `kws export` without "
                        "--streaming, or a .pt; a,b averages several) that scores the window "
                        "after each candidate; the event fires only if its posterior for the "
                        "keyword reaches --verify-threshold. 'validated': the four shipped clip "
                        "models that verify s4_mfcc_ctx best (picked on validation speakers; "
                        "their picks there are --verify-threshold 0.88 for 1 false alarm per "
                        "hour, 0.85 for 4)")
    parser.add_argument("--verify-threshold", type=float,
                        default=verifier.DEFAULT_VERIFY_THRESHOLD,
                        help="the verifier's posterior an event needs "
                        f"(default {verifier.DEFAULT_VERIFY_THRESHOLD:g})")
    parser.add_argument("--verify-delay-ms", type=float,
                        default=verifier.DEFAULT_VERIFY_DELAY_MS,
                        help="the verifier's window ends this long after the candidate; added "
                        f"latency (default {verifier.DEFAULT_VERIFY_DELAY_MS:g})")


def open_verifier(args: argparse.Namespace, sample_rate: int):
    """The ``--verifier`` options as a ``Verifier`` for a stream at ``sample_rate``, or None."""
    from kws.streaming.verifier import VALIDATED, Verifier, open_clip_scorer, validated_verifiers

    if args.verifier is None:
        return None
    models = validated_verifiers() if args.verifier == VALIDATED else args.verifier
    scorer = open_clip_scorer(models, sample_rate, threads=args.threads)
    return Verifier(scorer, args.verify_threshold, args.verify_delay_ms)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from kws.streaming import verifier

    stream = subparsers.add_parser(
        "stream", help="keyword events in an audio file of any length",
        description="Run the streaming detector over an audio file (resampled to the model's "
        "rate) and print its keyword events. MODEL is an exported .onnx (with its .json "
        "sidecar beside it) or a .pt/.ckpt checkpoint, which runs in PyTorch; several "
        "models separated by commas (a.onnx,b.onnx) run as one ensemble that averages their "
        "posteriors.",
    )
    stream.add_argument("model", type=Path, metavar="MODEL")
    stream.add_argument("file", type=Path, metavar="FILE")
    stream.add_argument("--json", action="store_true", help="print one JSON object per event")
    stream.add_argument("--threshold", type=float, default=None,
                        help=THRESHOLD_HELP)
    stream.add_argument("--keyword-threshold", action="append", default=[], metavar="WORD=T",
                        help="a threshold for one keyword, e.g. --keyword-threshold yes=0.9")
    add_thresholds_file_option(stream)
    add_detector_options(stream)
    stream.set_defaults(handler=run_stream)

    bench = bench_commands(subparsers).add_parser(
        "stream", help="hit rate, false alarms per hour and latency on a long stream",
        description="Build a seeded long stream of background noise with keyword and other-word "
        "clips at known times, run the detector once, and score it at each threshold.",
    )
    bench.add_argument("--model", type=Path, required=True,
                       help=".onnx or .pt/.ckpt; a,b,... averages several (an ensemble)")
    bench.add_argument("--data", type=Path, default=None,
                       help="Speech Commands folder (default: found as `kws data stats` does)")
    bench.add_argument("--minutes", type=float, default=10.0, help="stream length (default 10)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--split", default="test", choices=("train", "val", "test"),
                       help="clips and noise of this split (default test: unseen speakers)")
    bench.add_argument("--negatives", type=Path, action="append", default=[], metavar="DIR",
                       help="another Speech Commands folder whose other words join the "
                       "stream's, less speakers of --data's other splits (repeatable)")
    bench.add_argument("--thresholds", default="0.5,0.6,0.7,0.8,0.9,0.95",
                       help="comma-separated thresholds to score (default 0.5,...,0.95)")
    bench.add_argument("--tolerance", type=float, default=0.25,
                       help="seconds by which an event's window may miss its clip and still "
                       "hit (default 0.25)")
    bench.add_argument("--json", type=Path, default=None, metavar="OUT",
                       help="also write the full report here")
    bench.add_argument("--calibrate", type=float, default=None, metavar="FA_PER_HOUR",
                       help="also choose per-keyword thresholds that keep false alarms on this "
                       "stream within FA_PER_HOUR (use --split val, then score the test "
                       "stream with --keyword-thresholds on the --json report)")
    bench.add_argument("--candidate-threshold", type=float,
                       default=verifier.DEFAULT_CANDIDATE_THRESHOLD,
                       help="with --verifier: the detector's threshold, which opens the "
                       "candidates the verifier checks; --thresholds are then the verifier's "
                       f"(default {verifier.DEFAULT_CANDIDATE_THRESHOLD:g})")
    add_thresholds_file_option(bench)
    add_detector_options(bench)
    bench.set_defaults(handler=run_bench_stream)


def add_thresholds_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keyword-thresholds", type=Path, default=None, metavar="FILE",
                        help="per-keyword thresholds from a JSON file: a `kws bench stream "
                        "--calibrate --json` report, or {\"thresholds\": {WORD: T, ...}}")


def read_thresholds_file(path: Path | None) -> dict[str, float]:
    """The per-keyword thresholds of a calibration report or a plain thresholds file."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--keyword-thresholds {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--keyword-thresholds {path}: not a JSON file ({err})") from None
    found = data.get("calibration", data) if isinstance(data, dict) else None
    thresholds = found.get("thresholds") if isinstance(found, dict) else None
    if not isinstance(thresholds, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
        for v in thresholds.values()
    ):
        raise UserError(f"--keyword-thresholds {path}: expected a 'thresholds' mapping of "
                        "keyword to a number in (0, 1] (or a `kws bench stream --calibrate` "
                        "report)")
    return {str(k): float(v) for k, v in thresholds.items()}


def bench_commands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-commands of ``kws bench``, made here unless another stage made them first."""
    bench = subparsers.choices.get("bench")
    if bench is None:
        bench = subparsers.add_parser("bench", help="benchmarks: `kws bench stream`")
        bench.set_defaults(handler=lambda args: bench.print_help() or 2)
        return bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    for action in bench._actions:  # argparse keeps a parser's sub-commands only here
        if isinstance(action, argparse._SubParsersAction):
            return action
    return bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")


def parse_thresholds(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise UserError(f"--thresholds must be comma-separated numbers, got {text!r}") from err
    if not values or not all(0 < v <= 1 for v in values):
        raise UserError(f"--thresholds must be numbers in (0, 1], got {text!r}")
    return values


def parse_keyword_thresholds(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        word, _, value = item.partition("=")
        try:
            out[word.strip()] = float(value)
        except ValueError as err:
            raise UserError(f"--keyword-threshold must be WORD=NUMBER, got {item!r}") from err
    return out


def make_detector(args: argparse.Namespace, threshold: float, verify: bool = True,
                  **options: Any):
    """Backend and detector from the shared options (with ``--verifier`` unless not ``verify``)."""
    from kws.streaming.backends import open_backend
    from kws.streaming.engine import StreamingDetector

    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    backend = open_backend(args.model, threads=args.threads, chunk_ms=args.chunk_ms,
                           copies=args.copies)
    return StreamingDetector(
        backend, threshold=threshold, smoothing_ms=args.smoothing_ms,
        refractory_ms=args.refractory_ms, reset_period_s=args.reset_period,
        copies=args.copies, hold_ms=args.hold_ms,
        verifier=open_verifier(args, backend.sample_rate) if verify else None, **options,
    )


def file_blocks(path: Path, sample_rate: int):
    """The file as float32 blocks at ``sample_rate``, read in pieces unless it needs resampling."""
    from kws.data.audio import AudioError, audio_info, load_audio

    frames, file_rate, _ = audio_info(path)
    if frames == 0:
        raise AudioError(path, "file holds no samples (empty audio)")
    if file_rate != sample_rate:
        yield load_audio(path, sample_rate)
        return
    block = round(READ_BLOCK_S * file_rate)
    for offset in range(0, frames, block):
        yield load_audio(path, None, offset=offset, frames=min(block, frames - offset))


def run_stream(args: argparse.Namespace) -> int:
    from kws.streaming.engine import Event

    thresholds = read_thresholds_file(args.keyword_thresholds)
    thresholds.update(parse_keyword_thresholds(args.keyword_threshold))
    detector = make_detector(args, detector_threshold(args), thresholds=thresholds)
    if not args.file.is_file():
        raise UserError(f"{args.file}: no such audio file")

    def show(event: Event) -> None:
        if args.json:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in event.to_dict().items()}), flush=True)
        else:
            candidate = "" if event.candidate_score is None else f" {event.candidate_score:9.3f}"
            print(f"{event.keyword:<12} {event.start_s:9.2f} {event.end_s:9.2f} "
                  f"{event.score:6.3f}{candidate}", flush=True)

    if not args.json:
        verified = f" {'candidate':>9}" if detector.verifier is not None else ""
        print(f"{'keyword':<12} {'start_s':>9} {'end_s':>9} {'score':>6}{verified}")
    started = time.perf_counter()
    events = []
    for block in file_blocks(args.file, detector.sample_rate):
        for event in detector.feed(block):
            show(event)
            events.append(event)
    for event in detector.flush():
        show(event)
        events.append(event)
    elapsed = time.perf_counter() - started
    audio_s = detector.time_s
    print(f"{len(events)} events in {audio_s:.1f} s of audio; {elapsed:.2f} s to run "
          f"(real-time factor {elapsed / max(audio_s, 1e-9):.4f}), "
          f"{type(detector.backend).__name__}", file=sys.stderr)
    return 0


def run_bench_stream(args: argparse.Namespace) -> int:
    from kws.data.speech_commands import find_data_root
    from kws.streaming.engine import decode_trace
    from kws.streaming.longstream import (
        CURVE_GRID,
        best_within,
        calibrate_thresholds,
        operating_curve,
        record_long_stream,
        score_events,
        stream_summary,
    )
    from kws.streaming.verifier import verified_results

    thresholds = parse_thresholds(args.thresholds)
    from_file = read_thresholds_file(args.keyword_thresholds)
    if args.calibrate is not None and args.calibrate <= 0:
        raise UserError(f"--calibrate must be a positive number of false alarms per hour, "
                        f"got {args.calibrate:g}")
    if args.verifier is not None and (args.calibrate is not None or from_file):
        raise UserError("--calibrate and --keyword-thresholds set the detector's per-keyword "
                        "thresholds; with --verifier the sweep is over the verifier's "
                        "threshold: pick it on a --split val stream instead")
    if args.verifier is not None and not 0 < args.candidate_threshold <= 1:
        raise UserError(f"--candidate-threshold must be in (0, 1], got "
                        f"{args.candidate_threshold}")
    detector = make_detector(args, thresholds[0], verify=False, record=True)
    backend = detector.backend
    verifier = open_verifier(args, detector.sample_rate)
    if verifier is not None:  # fails now, naming both models, not after the stream has run
        verifier.check_stream(detector.labels, detector.sample_rate)
    unknown = sorted(set(from_file) - set(detector.labels))
    if unknown:  # found now, not after the whole stream has run
        raise UserError(f"--keyword-thresholds {args.keyword_thresholds}: {unknown} are not "
                        f"labels of {args.model} ({detector.labels})")
    root = find_data_root(args.data)
    stream, trace, elapsed = record_long_stream(detector, root, args.minutes, args.seed,
                                                args.split, negatives=args.negatives)
    timing = {"smoothing_ms": args.smoothing_ms, "refractory_ms": args.refractory_ms,
              "hold_ms": args.hold_ms}

    def scored(threshold: float, per_keyword: dict[str, float] | None = None) -> dict[str, Any]:
        events = decode_trace(trace, detector.labels, detector.chunk_s, backend.window_s,
                              threshold=threshold, thresholds=per_keyword, **timing)
        return score_events(events, stream.placements, stream.duration_s, args.tolerance)

    results = [{"threshold": t, **scored(t)} for t in thresholds]
    curve = operating_curve(trace, detector.labels, detector.chunk_s, backend.window_s,
                            stream.placements, stream.duration_s, args.tolerance, **timing)
    verification = None
    if verifier is not None:  # the rows and the curve become the verifier's thresholds
        verification, verified = verify_stream(args, verifier, detector, trace, stream, timing)
        verification["detector_alone"] = {"results": results, "best_within": curve}
        results = verified_results(verified, stream.placements, stream.duration_s, thresholds,
                                   args.tolerance)
        curve = best_within(verified_results(verified, stream.placements, stream.duration_s,
                                             CURVE_GRID, args.tolerance))
    calibration = None
    if from_file:
        results.append({"threshold": None, "thresholds_from": str(args.keyword_thresholds),
                        "thresholds": from_file, **scored(1.0, from_file)})
    if args.calibrate is not None:
        calibration = calibrate_thresholds(
            trace, detector.labels, detector.chunk_s, backend.window_s, stream.placements,
            stream.duration_s, args.calibrate, args.tolerance, **timing,
        )
        results.append({"threshold": None, "thresholds_from": "calibrated on this stream",
                        "thresholds": calibration["thresholds"],
                        **scored(1.0, calibration["thresholds"])})
    report = {
        "model": str(args.model),
        "backend": backend.describe(),
        "threads": args.threads,
        "data": str(root),
        "split": args.split,
        "negatives": [str(path) for path in args.negatives],
        "stream": stream_summary(stream),
        "detector": {
            "smoothing_ms": args.smoothing_ms, "refractory_ms": args.refractory_ms,
            "hold_ms": args.hold_ms, "reset_period_s": detector.reset_period_s,
            "copies": detector.copies,
            "tolerance_s": args.tolerance,
        },
        "elapsed_s": elapsed,
        "real_time_factor": elapsed / stream.duration_s,
        "results": results,
        "best_within": curve,
        "calibration": calibration,
        "verifier": verification,
    }
    print_bench(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def verify_stream(args: argparse.Namespace, verifier: Any, detector: Any, trace: Any,
                  stream: Any, timing: dict[str, float]) -> tuple[dict[str, Any], list[Any]]:
    """The detector's candidates at ``--candidate-threshold`` on the recorded stream, each
    scored by the verifier as the cascade would (``verify_offline``); and what that cost."""
    from kws.streaming.engine import decode_trace
    from kws.streaming.verifier import verify_offline

    candidates = decode_trace(trace, detector.labels, detector.chunk_s, detector.backend.window_s,
                              threshold=args.candidate_threshold, **timing)
    cache: dict[int, Any] = {}
    started = time.perf_counter()
    verified = verify_offline(candidates, stream.audio, detector.chunk_s,
                              detector.chunk_samples, verifier, cache, batch=1)  # as live
    elapsed = time.perf_counter() - started
    return {
        "model": verifier.scorer.name,  # the paths, also for --verifier validated
        "delay_ms": verifier.delay_ms,
        "delay_chunks": verifier.delay_chunks(detector.chunk_s),
        "candidate_threshold": args.candidate_threshold,
        "candidates": len(candidates),
        "elapsed_s": elapsed,
        "windows": len(cache),
        "seconds_per_window": elapsed / max(len(cache), 1),
        "real_time_factor": elapsed / stream.duration_s,
    }, verified


def print_bench(report: dict[str, Any]) -> None:
    from kws.streaming.longstream import CURVE_GRID_TEXT

    s = report["stream"]
    print(f"{report['model']}: {s['duration_s'] / 60:.1f} min stream (seed {s['seed']}), "
          f"{s['keywords']} keywords ({s.get('distinct_keyword_clips', '?')} distinct clips), "
          f"{s['unknown_words']} other words ({s.get('distinct_other_clips', '?')} distinct); "
          f"real-time factor {report['real_time_factor']:.4f} on {report['threads']} thread(s)")
    verification = report.get("verifier")
    if verification:
        print(f"verifier {verification['model']}: {verification['candidates']} candidates of the "
              f"detector at {verification['candidate_threshold']:g}, window ending "
              f"{verification['delay_ms']:g} ms after each; real-time factor "
              f"{verification['real_time_factor']:.4f}. The thresholds below are the verifier's.")
    print(f"{'threshold':>9} {'hit rate':>8} {'FA/hour':>8} {'latency median':>15} {'p90':>6}"
          "   false alarms on: other keyword / same keyword again / other word / noise")
    for r in report["results"]:
        name = f"{r['threshold']:>9g}" if r["threshold"] is not None else "per-keyword"
        median = "-" if r["latency_median_s"] is None else f"{r['latency_median_s']:+.2f} s"
        p90 = "-" if r["latency_p90_s"] is None else f"{r['latency_p90_s']:+.2f}"
        causes = " / ".join(str(n) for n in r["false_alarm_causes"].values())
        print(f"{name:>9} {r['hit_rate']:>8.3f} {r['false_alarms_per_hour']:>8.1f} "
              f"{median:>15} {p90:>6}   {causes}")
    with_alarms = [r for r in report["results"]
                   if r["threshold"] is not None and r["false_alarms"]]
    if with_alarms:  # the ones that survive the highest threshold are what limits the spotter
        top = max(with_alarms, key=lambda r: r["threshold"])
        pairs = sorted(((n, fired, word) for fired, words in top["false_alarm_words"].items()
                        for word, n in words.items()), key=lambda x: (-x[0], x[1], x[2]))
        print(f"false alarms at {top['threshold']:g} (keyword fired <- word heard; "
              f"{top['false_alarms']} on {top.get('false_alarm_clips', '?')} distinct clips): "
              + ", ".join(f"{fired} <- {word} {n}" for n, fired, word in pairs))

    def points(curve: list[dict[str, Any]]) -> str:
        return ", ".join(f"{p['hit_rate']:.1%} at <= {p['fa_per_hour_at_most']:g}"
                         for p in curve if p["hit_rate"] is not None)

    if points(report.get("best_within", [])):
        print(f"best hit rate per false-alarm budget (FA/hour; {CURVE_GRID_TEXT}): "
              + points(report["best_within"]))
    if verification and points(verification["detector_alone"]["best_within"]):
        print("the detector alone, same stream: "
              + points(verification["detector_alone"]["best_within"]))
    for r in report["results"]:
        if r["threshold"] is None:
            shown = " ".join(f"{k}={v:g}" for k, v in r["thresholds"].items())
            print(f"per-keyword ({r['thresholds_from']}): {shown}")
    calibration = report.get("calibration")
    if calibration and not all(calibration["met"].values()):
        missed = [k for k, ok in calibration["met"].items() if not ok]
        print(f"calibration: {', '.join(missed)} exceed their share of "
              f"{calibration['target_fa_per_hour']:g} false alarms/hour even at the top of "
              "the grid")
