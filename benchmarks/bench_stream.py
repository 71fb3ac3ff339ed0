"""Real-time factor of streaming inference: onnxruntime against PyTorch eager, 1 and 2 threads.

For every streaming ONNX export in export/ (or the ones given), both backends step
through the same chunks of audio -- seeded noise: the cost of a step does not
depend on what it hears -- and we report wall time per chunk, the real-time factor
(seconds of compute per second of audio; below 1 keeps up with a microphone) and
the PyTorch / onnxruntime ratio. PyTorch runs the checkpoint named by the
sidecar's ``source_checkpoint`` (or ``--checkpoint``); without one, that column
is empty. ``detector`` is the full StreamingDetector on onnxruntime with its
default two-copy reset schedule: what ``kws stream`` and the demo pay.

    .venv/bin/python benchmarks/bench_stream.py [MODEL.onnx ...] [--seconds 20] [--json OUT]
    .venv/bin/python benchmarks/bench_stream.py --quick    # a few seconds, for the tests
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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


def time_steps(step, chunks: list[np.ndarray], warmup: int = 5) -> float:
    """Seconds per chunk of ``step`` over ``chunks``, after a few warm-up calls."""
    for chunk in chunks[:warmup]:
        step(chunk)
    started = time.perf_counter()
    for chunk in chunks:
        step(chunk)
    return (time.perf_counter() - started) / len(chunks)


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


def bench_model(
    onnx_path: Path, seconds: float, threads: list[int], checkpoint: Path | None, seed: int = 0
) -> list[dict[str, Any]]:
    import torch

    from kws.streaming.backends import OnnxStepBackend, TorchStepBackend
    from kws.streaming.engine import StreamingDetector

    probe = OnnxStepBackend(onnx_path)
    rate, size = probe.sample_rate, probe.chunk_samples
    rng = np.random.default_rng(seed)
    count = max(10, round(seconds * rate / size))
    chunks = [(0.1 * rng.standard_normal(size)).astype(np.float32) for _ in range(count)]
    audio = np.concatenate(chunks)
    chunk_s = size / rate
    ckpt = resolve_checkpoint(onnx_path, probe.spec, checkpoint)
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        onnx = OnnxStepBackend(onnx_path, threads=n)
        onnx_s = time_steps(onnx.step, chunks)
        detector = StreamingDetector(OnnxStepBackend(onnx_path, threads=n))
        started = time.perf_counter()
        detector.process(audio, block=size)
        detector_s = (time.perf_counter() - started) / count
        torch_s = None
        if ckpt is not None:
            eager = TorchStepBackend(ckpt, chunk_ms=chunk_s * 1000, sample_rate=rate, threads=n)
            torch_s = time_steps(eager.step, chunks)
        rows.append({
            "model": onnx_path.name,
            "threads": n,
            "chunk_ms": chunk_s * 1000,
            "chunks": count,
            "onnx_ms_per_chunk": onnx_s * 1000,
            "onnx_rtf": onnx_s / chunk_s,
            "detector_rtf": detector_s / chunk_s,
            "torch_ms_per_chunk": None if torch_s is None else torch_s * 1000,
            "torch_rtf": None if torch_s is None else torch_s / chunk_s,
            "torch_over_onnx": None if torch_s is None else torch_s / onnx_s,
            "checkpoint": None if ckpt is None else str(ckpt),
        })
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"{'model':<28} {'thr':>3} {'chunk':>6} {'onnx ms':>8} {'onnx RTF':>9} "
          f"{'detector RTF':>12} {'torch ms':>9} {'torch RTF':>9} {'torch/onnx':>10}")
    def opt(row: dict[str, Any], key: str, fmt: str) -> str:
        return "-" if row[key] is None else format(row[key], fmt)

    for r in rows:
        print(f"{r['model']:<28} {r['threads']:>3} {r['chunk_ms']:>4g}ms "
              f"{r['onnx_ms_per_chunk']:>8.3f} {r['onnx_rtf']:>9.4f} {r['detector_rtf']:>12.4f} "
              f"{opt(r, 'torch_ms_per_chunk', '.3f'):>9} {opt(r, 'torch_rtf', '.4f'):>9} "
              f"{opt(r, 'torch_over_onnx', '.2f'):>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path,
                        help="streaming .onnx exports (default: every one in export/)")
    parser.add_argument("--export-dir", type=Path, default=REPO / "export")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the checkpoint for the PyTorch column (default: the sidecar's)")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per measurement")
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--quick", action="store_true", help="1 s of audio: a smoke test")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    models = args.models or streaming_exports(args.export_dir)
    if not models:
        print(f"no streaming ONNX exports in {args.export_dir}; make one with "
              "`kws export CKPT --streaming --out export/NAME.onnx`", file=sys.stderr)
        return 1
    threads = [int(t) for t in args.threads.split(",")]
    seconds = 1.0 if args.quick else args.seconds
    rows = [row for m in models for row in bench_model(m, seconds, threads, args.checkpoint)]
    print_rows(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
