"""Real-time factor of streaming inference: onnxruntime against PyTorch eager, 1 and 2 threads.

For every streaming ONNX export in export/ (or the ones given), both backends step
through the same chunks of audio -- seeded noise: the cost of a step does not
depend on what it hears -- and we report, per chunk, wall time and the process's
CPU time, the real-time factor (seconds of compute per second of audio; below 1
keeps up with a microphone) and the PyTorch / onnxruntime ratio. PyTorch runs the
checkpoint named by the sidecar's ``source_checkpoint`` (or ``--checkpoint``);
without one, those columns are empty. ``detector`` is the full StreamingDetector on
onnxruntime with its default two-copy reset schedule: what ``kws stream`` and the
demo pay. ``nodes`` counts the graph's nodes after onnxruntime's optimiser: with
1-frame MFCC steps the cost is mostly per node.

Side by side. On a shared machine the load changes from second to second, so one
model timed after another compares loads, not models. Every (model, backend) runs
``--rounds`` times in turn, a block of chunks each, and keeps its fastest and its
median block: give several exports (say one before and one after a change) and
their ratios are fair. CPU time counts all the process's threads, so with 2
threads on a busy machine it can exceed wall time.

    .venv/bin/python benchmarks/bench_stream.py [MODEL.onnx ...] [--seconds 5] [--json OUT]
    .venv/bin/python benchmarks/bench_stream.py --quick    # a few seconds, for the tests
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def streaming_exports(folder: Path) -> list[Path]:
    """The .onnx files in ``folder`` whose sidecar says they are streaming step models."""
    found = []
    for path in sorted(folder.glob("*.onnx")):
        sidecar = path.with_suffix(".json")
        if sidecar.is_file() and json.loads(sidecar.read_text()).get("kind") == "streaming":
            found.append(path)
    return found


def resolve_checkpoint(onnx_path: Path, spec: Any, given: Path | None) -> Path | None:
    """The checkpoint the export came from: --checkpoint, else the sidecar's, as written or
    relative to the repository or to the export's folder."""
    if given is not None:
        return given
    if not spec.source_checkpoint:
        return None
    name = Path(spec.source_checkpoint)
    for candidate in (name, REPO / name, onnx_path.parent / name):
        if candidate.is_file():
            return candidate
    return None


def display_name(path: Path, models: list[Path]) -> str:
    """The file's name, with its folder when another model has the same name (before/after)."""
    clash = sum(other.name == path.name for other in models) > 1
    return f"{path.parent.name}/{path.name}" if clash else path.name


def optimised_nodes(onnx_path: Path) -> int:
    """Nodes left after onnxruntime's optimiser (default level), as a session would run them."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the optimised file is for counting, not for use
        options.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        return len(onnx.load(options.optimized_model_filepath).graph.node)


class Timer:
    """One (model, backend, threads) under test: a step function and its timed blocks."""

    def __init__(self, step: Callable[[np.ndarray], Any], chunks: list[np.ndarray]):
        self.step, self.chunks = step, chunks
        self.wall: list[float] = []
        self.cpu: list[float] = []
        for chunk in chunks[:5]:  # warm-up: allocations, caches
            step(chunk)

    def block(self) -> None:
        """Step through every chunk once; record seconds per chunk, wall and CPU."""
        wall, cpu = time.perf_counter(), time.process_time()
        for chunk in self.chunks:
            self.step(chunk)
        self.wall.append((time.perf_counter() - wall) / len(self.chunks))
        self.cpu.append((time.process_time() - cpu) / len(self.chunks))

    @staticmethod
    def keys(prefix: str) -> list[str]:
        """The row's columns for one backend (see ``summary``)."""
        return [f"{prefix}_{key}" for key in
                ("ms_per_chunk", "median_ms_per_chunk", "cpu_ms_per_chunk", "rtf", "cpu_rtf")]

    def summary(self, prefix: str, chunk_s: float) -> dict[str, float]:
        """Fastest and median block, in ms per chunk, and the fastest as a real-time factor."""
        wall, cpu = min(self.wall), min(self.cpu)
        values = (wall * 1000, statistics.median(self.wall) * 1000, cpu * 1000,
                  wall / chunk_s, cpu / chunk_s)
        return dict(zip(self.keys(prefix), values, strict=True))


def bench_threads(
    models: list[Path], seconds: float, threads: int, rounds: int, checkpoint: Path | None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time every model on ``threads`` threads, all in turn, round after round."""
    import torch

    from kws.streaming.backends import OnnxStepBackend, TorchStepBackend
    from kws.streaming.engine import StreamingDetector

    torch.set_num_threads(threads)
    entries = []
    for onnx_path in models:
        onnx = OnnxStepBackend(onnx_path, threads=threads)
        rate, size = onnx.sample_rate, onnx.chunk_samples
        rng = np.random.default_rng(seed)
        count = max(10, round(seconds * rate / size))
        chunks = [(0.1 * rng.standard_normal(size)).astype(np.float32) for _ in range(count)]
        detector = StreamingDetector(OnnxStepBackend(onnx_path, threads=threads))
        timers = {
            "onnx": Timer(onnx.step, chunks),
            "detector": Timer(lambda chunk, d=detector: d.feed(chunk), chunks),
        }
        ckpt = resolve_checkpoint(onnx_path, onnx.spec, checkpoint)
        if ckpt is not None:
            eager = TorchStepBackend(ckpt, chunk_ms=size / rate * 1000, sample_rate=rate)
            timers["torch"] = Timer(eager.step, chunks)
        entries.append((onnx_path, size / rate, count, ckpt, timers))
    for _ in range(rounds):
        for *_, timers in entries:
            for timer in timers.values():
                timer.block()

    rows = []
    for onnx_path, chunk_s, count, ckpt, timers in entries:
        row: dict[str, Any] = {
            "model": display_name(onnx_path, models),
            "path": str(onnx_path),
            "threads": threads,
            "chunk_ms": chunk_s * 1000,
            "chunks": count,
            "rounds": rounds,
            "nodes": optimised_nodes(onnx_path),
            "checkpoint": None if ckpt is None else str(ckpt),
        }
        for name in ("onnx", "detector", "torch"):
            if name in timers:
                row.update(timers[name].summary(name, chunk_s))
            else:
                row.update(dict.fromkeys(Timer.keys(name)))
        has_torch = "torch" in timers
        row["torch_over_onnx"] = (
            row["torch_ms_per_chunk"] / row["onnx_ms_per_chunk"] if has_torch else None
        )
        row["torch_over_onnx_cpu"] = (
            row["torch_cpu_ms_per_chunk"] / row["onnx_cpu_ms_per_chunk"] if has_torch else None
        )
        rows.append(row)
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    def opt(row: dict[str, Any], key: str, fmt: str) -> str:
        return "-" if row.get(key) is None else format(row[key], fmt)

    width = max(28, *(len(r["model"]) for r in rows))
    print(f"{'model':<{width}} {'thr':>3} {'chunk':>6} {'nodes':>5} {'onnx ms':>8} {'cpu ms':>8} "
          f"{'RTF':>7} {'cpu RTF':>7} {'detector':>8} {'torch ms':>9} {'cpu ms':>8} "
          f"{'torch/onnx':>10} {'cpu':>6}")
    for r in rows:
        print(f"{r['model']:<{width}} {r['threads']:>3} {r['chunk_ms']:>4g}ms {r['nodes']:>5} "
              f"{r['onnx_ms_per_chunk']:>8.3f} {r['onnx_cpu_ms_per_chunk']:>8.3f} "
              f"{r['onnx_rtf']:>7.4f} {r['onnx_cpu_rtf']:>7.4f} {r['detector_rtf']:>8.4f} "
              f"{opt(r, 'torch_ms_per_chunk', '.3f'):>9} "
              f"{opt(r, 'torch_cpu_ms_per_chunk', '.3f'):>8} "
              f"{opt(r, 'torch_over_onnx', '.2f'):>10} {opt(r, 'torch_over_onnx_cpu', '.2f'):>6}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path,
                        help="streaming .onnx exports (default: every one in export/)")
    parser.add_argument("--export-dir", type=Path, default=REPO / "export")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the checkpoint for the PyTorch column (default: the sidecar's)")
    parser.add_argument("--seconds", type=float, default=5.0, help="audio per timed block")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed blocks per model and backend, taken in turn (default 5)")
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--quick", action="store_true",
                        help="0.5 s of audio, 2 rounds: a smoke test")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    models = args.models or streaming_exports(args.export_dir)
    if not models:
        print(f"no streaming ONNX exports in {args.export_dir}; make one with "
              "`kws export CKPT --streaming --out export/NAME.onnx`", file=sys.stderr)
        return 1
    threads = [int(t) for t in args.threads.split(",")]
    seconds, rounds = (0.5, 2) if args.quick else (args.seconds, args.rounds)
    rows = []
    for n in threads:  # each thread count's table as soon as it is done
        rows += bench_threads(models, seconds, n, rounds, args.checkpoint)
        print_rows([row for row in rows if row["threads"] == n])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
