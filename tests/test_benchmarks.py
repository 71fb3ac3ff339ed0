"""The S4 benchmarks still run: both scripts with --quick, their JSON checked."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    """Import a benchmark script the way running it does: its folder on sys.path."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_benchmark_quick(tmp_path, capsys):
    out = tmp_path / "kernel.json"
    assert load("bench_s4_kernel").main(["--quick", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["kernel"] for r in rows] == ["s4 (dplr)", "s4d (diag-lin)"]
    for r in rows:
        assert r["ours_fwd_bwd_ms"] > 0 and r["naive_fwd_bwd_ms"] > 0
        assert r["max_rel_diff"] < 1e-4  # ours and the naive kernel agree
    assert "naive f+b" in capsys.readouterr().out


def test_model_benchmark_quick(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert load("bench_models").main(["--quick", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    pairs = {(r["family"], r["pipeline"]) for r in result["families"]}
    assert pairs == {(f, p) for f in ("s4", "s4d", "tcn", "lstm") for p in ("raw", "mfcc")}
    assert all(r["fwd_bwd_ms"] > 0 for r in result["families"])
    assert [r["kernel"] for r in result["s4_layer"]] == ["dplr", "diag-lin"]
    assert all(r["layer_step_us"] > 0 and r["block_fwd_bwd_s"] > 0 for r in result["s4_layer"])
    assert "official" in capsys.readouterr().out
