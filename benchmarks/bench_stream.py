"""Real-time factor of streaming inference, from the bare onnxruntime call up to the detector.

For every streaming ONNX export in export/ (or the ones given), on 1 and 2 threads,
the same chunks of seeded noise (a step's cost does not depend on what it hears)
go through, side by side:

* ``run``: onnxruntime's ``session.run`` alone, one state copy, the states fed back
  through a dict: what a caller of the plain API pays;
* ``step1``: ``OnnxStepBackend.step`` with one copy: checks, then a call on buffers
  bound once (IOBinding), which converts and allocates less than ``run``;
* ``step2``: the same with two copies, one batched call: what the engine runs;
* ``detector``: ``StreamingDetector.feed`` with its default two-copy reset
  schedule, one chunk per call: what ``kws stream`` and the demo pay;
* ``torch``: ``TorchStepBackend.step``, one copy, PyTorch eager on the checkpoint
  named by the sidecar's ``source_checkpoint`` (or ``--checkpoint``); empty without one.

Each reports the process's CPU time per chunk (all its threads; on a shared
machine wall time also counts the other jobs) and the real-time factor, CPU
seconds per second of audio: 0.02 is 2% of one core. With 2 threads the idle
workers of onnxruntime and torch spin, so at these small steps 2 threads cost more
CPU than 1 (and, on a busy machine, more wall time too). ``nodes`` counts the
graph's nodes after onnxruntime's optimiser: with 1-frame MFCC steps the cost is
mostly per node.

Side by side. On a shared machine the load changes from second to second, so one
model timed after another compares loads, not models. Every (model, column) runs
``--rounds`` times in turn, a block of chunks each, and we keep the median block
(and the fastest): give several exports (say one before and one after a change)
and their ratios are fair. The JSON records the load average before and after.

    .venv/bin/python benchmarks/bench_stream.py [MODEL.onnx ...] [--seconds 5] [--rounds 5]
        [--threads 1,2] [--json results/bench_stream_speed.json]
    .venv/bin/python benchmarks/bench_stream.py --quick    # a few seconds, for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def cpu_name() -> str:
    """The CPU model, for the record (Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


class Timer:
    """One (model, column, threads) under test: a step function and its timed blocks."""

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
        """The row's columns for one timer (see ``summary``)."""
        return [f"{prefix}_{key}" for key in ("cpu_ms", "cpu_ms_min", "wall_ms", "rtf")]

    def summary(self, prefix: str, chunk_s: float) -> dict[str, float]:
        """Median and fastest block's CPU ms per chunk, median wall ms, and the median CPU
        time as a real-time factor."""
        cpu = statistics.median(self.cpu)
        values = (cpu * 1000, min(self.cpu) * 1000, statistics.median(self.wall) * 1000,
                  cpu / chunk_s)
        return dict(zip(self.keys(prefix), values, strict=True))


#: the timed columns, in the order they print
COLUMNS = ("run", "step1", "step2", "detector", "torch")


def session_run(backend: Any) -> Callable[[np.ndarray], Any]:
    """The bare ``session.run`` of ``backend``'s session on one copy, states fed back."""
    spec = backend.spec
    feed = {s.name: s.zeros(1) for s in spec.states}
    names = [spec.logits_output] + [s.output for s in spec.states]
    state_names = [s.name for s in spec.states]
    run = backend.session.run

    def step(chunk: np.ndarray) -> Any:
        feed[spec.audio_input] = chunk[None]
        logits, *states = run(names, feed)
        feed.update(zip(state_names, states, strict=True))
        return logits

    return step


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
        one = OnnxStepBackend(onnx_path, threads=threads)
        two = OnnxStepBackend(onnx_path, threads=threads, copies=2)
        rate, size = one.sample_rate, one.chunk_samples
        rng = np.random.default_rng(seed)
        count = max(10, round(seconds * rate / size))
        chunks = [(0.1 * rng.standard_normal(size)).astype(np.float32) for _ in range(count)]
        detector = StreamingDetector(OnnxStepBackend(onnx_path, threads=threads))
        timers = {
            "run": Timer(session_run(OnnxStepBackend(onnx_path, threads=threads)), chunks),
            "step1": Timer(one.step, chunks),
            "step2": Timer(two.step, chunks),
            "detector": Timer(detector.feed, chunks),
        }
        ckpt = resolve_checkpoint(onnx_path, one.spec, checkpoint)
        if ckpt is not None:
            eager = TorchStepBackend(ckpt, chunk_ms=size / rate * 1000, sample_rate=rate)
            timers["torch"] = Timer(eager.step, chunks)
        entries.append((onnx_path, size / rate, count, ckpt, timers))
    load_before = os.getloadavg()[0]
    for _ in range(rounds):
        for *_, timers in entries:
            for timer in timers.values():
                timer.block()
    load_after = os.getloadavg()[0]

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
            "load_1min": [load_before, load_after],
        }
        for name in COLUMNS:
            if name in timers:
                row.update(timers[name].summary(name, chunk_s))
            else:
                row.update(dict.fromkeys(Timer.keys(name)))
        row["step1_over_run"] = row["step1_cpu_ms"] / row["run_cpu_ms"]
        row["torch_over_step1"] = (
            row["torch_cpu_ms"] / row["step1_cpu_ms"] if "torch" in timers else None
        )
        rows.append(row)
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    def opt(row: dict[str, Any], key: str, fmt: str) -> str:
        return "-" if row.get(key) is None else format(row[key], fmt)

    width = max(28, *(len(r["model"]) for r in rows))
    print(f"CPU ms per chunk (median of {rows[0]['rounds']} blocks), real-time factor in "
          f"parentheses; {rows[0]['threads']} thread(s), 1-min load "
          f"{rows[0]['load_1min'][0]:.2f} -> {rows[0]['load_1min'][1]:.2f}")
    print(f"{'model':<{width}} {'chunk':>6} {'nodes':>5} "
          + " ".join(f"{name:>16}" for name in COLUMNS) + f" {'step1/run':>9}")
    for r in rows:
        cells = [f"{opt(r, f'{name}_cpu_ms', '.3f'):>6} ({opt(r, f'{name}_rtf', '.4f'):>6})"
                 for name in COLUMNS]
        print(f"{r['model']:<{width}} {r['chunk_ms']:>4g}ms {r['nodes']:>5} "
              + " ".join(f"{c:>16}" for c in cells) + f" {r['step1_over_run']:>9.2f}")


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
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the report here (results/bench_stream_speed.json)")
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
        report = {
            "command": " ".join(["benchmarks/bench_stream.py", *(argv or sys.argv[1:])]),
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "seconds": seconds,
            "rounds": rounds,
            "statistic": "median block of CPU time per chunk (process_time, all threads)",
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
