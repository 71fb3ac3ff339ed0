"""What a verifier costs: CPU time per window of each clip export, onnxruntime against PyTorch.

A verifier (``kws.streaming.verifier``) runs once per candidate of the detector, on
one window (a clip, 1 s) at batch 1. For every clip export in export/ (or the ones
given), on each thread count, the same seeded windows go through side by side, in
turn, ``--rounds`` times: onnxruntime (``OnnxClipScorer``) and PyTorch eager on the
checkpoint named by the sidecar (``TorchClipScorer``). It reports the median CPU
milliseconds per window and the real-time factor at ``--per-hour`` candidates an
hour (795 on the hour-long test stream of RESULTS.md at the default candidate threshold).

    .venv/bin/python benchmarks/bench_verifier.py [CLIP.onnx ...] [--windows 20] [--rounds 5]
        [--threads 1,2] [--json results/bench_verifier.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def clip_exports(folder: Path) -> list[Path]:
    """The .onnx files in ``folder`` whose sidecar says they are clip models."""
    return [p for p in sorted(folder.glob("*.onnx")) if p.with_suffix(".json").is_file()
            and json.loads(p.with_suffix(".json").read_text()).get("kind") == "clip"]


def source_checkpoint(onnx_path: Path) -> Path | None:
    name = json.loads(onnx_path.with_suffix(".json").read_text()).get("source_checkpoint")
    for candidate in ([Path(name), REPO / name, onnx_path.parent / name] if name else []):
        if candidate.is_file():
            return candidate
    return None


def timed(scorer: Any, windows: np.ndarray) -> float:
    """CPU seconds per window, one window per call."""
    started = time.process_time()
    for window in windows:
        scorer.posteriors(window[None])
    return (time.process_time() - started) / len(windows)


def bench(models: list[Path], threads: int, windows: int, rounds: int,
          per_hour: float) -> list[dict[str, Any]]:
    import torch

    from kws.streaming.verifier import OnnxClipScorer, TorchClipScorer

    torch.set_num_threads(threads)
    entries = []
    for path in models:
        scorers = {"onnx": OnnxClipScorer(path, threads)}
        checkpoint = source_checkpoint(path)
        if checkpoint is not None:
            scorers["torch"] = TorchClipScorer(checkpoint, scorers["onnx"].sample_rate)
        rng = np.random.default_rng(0)
        audio = (0.1 * rng.standard_normal((windows, scorers["onnx"].clip_samples))
                 ).astype(np.float32)
        for scorer in scorers.values():
            timed(scorer, audio[:2])  # warm-up
        entries.append((path, checkpoint, scorers, audio, {name: [] for name in scorers}))
    load = os.getloadavg()[0]
    for _ in range(rounds):
        for *_, scorers, audio, times in entries:
            for name, scorer in scorers.items():
                times[name].append(timed(scorer, audio))
    rows = []
    for path, checkpoint, _, _, times in entries:
        row: dict[str, Any] = {"model": path.name, "path": str(path), "threads": threads,
                               "checkpoint": None if checkpoint is None else str(checkpoint),
                               "windows": windows, "rounds": rounds, "load_1min": load}
        for name in ("onnx", "torch"):
            ms = 1000 * statistics.median(times[name]) if name in times else None
            row[f"{name}_cpu_ms"] = ms
            row[f"{name}_rtf_at_{per_hour:g}_per_hour"] = (
                None if ms is None else ms / 1000 * per_hour / 3600)
        row["torch_over_onnx"] = (row["torch_cpu_ms"] / row["onnx_cpu_ms"]
                                  if row["torch_cpu_ms"] else None)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path,
                        help="clip .onnx exports (default: every one in export/)")
    parser.add_argument("--export-dir", type=Path, default=REPO / "export")
    parser.add_argument("--windows", type=int, default=20, help="windows per timed block")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--per-hour", type=float, default=795.0,
                        help="candidates an hour, for the real-time factor (default 795)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    models = args.models or clip_exports(args.export_dir)
    if not models:
        print(f"no clip export in {args.export_dir}: `kws export CKPT --out NAME.onnx`")
        return 1
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        rows += bench(models, threads, args.windows, args.rounds, args.per_hour)
    print(f"CPU ms per window at batch 1 (median of {args.rounds} blocks of {args.windows}); "
          f"real-time factor at {args.per_hour:g} candidates an hour")
    print(f"{'model':<32} {'threads':>7} {'onnxruntime':>18} {'torch eager':>18} {'ratio':>6}")
    key = f"_rtf_at_{args.per_hour:g}_per_hour"
    for r in rows:
        cells = ["-" if r[f"{n}_cpu_ms"] is None else
                 f"{r[f'{n}_cpu_ms']:.2f} ({r[f'{n}{key}']:.5f})" for n in ("onnx", "torch")]
        ratio = "-" if r["torch_over_onnx"] is None else f"{r['torch_over_onnx']:.1f}x"
        print(f"{r['model']:<32} {r['threads']:>7} {cells[0]:>18} {cells[1]:>18} {ratio:>6}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"per_hour": args.per_hour, "rows": rows}, indent=1)
                             + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
