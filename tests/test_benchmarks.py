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


def test_rate_consistency_tells_a_near_continuous_layer_from_one_past_nyquist():
    """Slow modes (dt tiny) keep their gain at 8 kHz; modes past Nyquist do not, and a band
    limit reports them as cut."""
    from test_step_model import make_spotter

    rate_consistency = load("rate_consistency")
    slow = make_spotter("s4", "raw", n_layers=1, d_state=16, dt_min=1e-4, dt_max=1e-3)
    fast = make_spotter("s4", "raw", n_layers=1, d_state=16, dt_min=0.3, dt_max=1.0,
                        bandlimit=1.0)
    (slow_row,) = rate_consistency.layer_rows(slow, [8000, 32000])
    (fast_row,) = rate_consistency.layer_rows(fast, [8000, 32000])
    assert slow_row["above_nyquist"] == 0 and slow_row["band_limit_cut"] == 0
    assert 0 < fast_row["above_nyquist"] == fast_row["band_limit_cut"]
    assert set(slow_row["rates"]) == {8000, 32000}
    for rate in (8000, 32000):
        slow_bands, fast_bands = slow_row["rates"][rate], fast_row["rates"][rate]
        assert list(slow_bands)[-1] in ("2000-4000 Hz", "4000-8000 Hz")
        *lower, top = slow_bands.values()
        # slow modes: one filter at both rates, except near the lower Nyquist, where any
        # discretisation's gain droops by an amount that moves with the rate
        assert all(e["median"] < 0.05 for e in lower) and 0.1 < top["median"] < 0.25
        lowest = next(iter(fast_bands))
        assert fast_bands[lowest]["median"] > 0.1 > 10 * slow_bands[lowest]["median"]


def test_pool_by_time_scores_what_the_model_computes():
    """Its by-time plan is the model's own path: it agrees with the spotter's predictions."""
    import numpy as np
    import torch

    from kws.features import FeatureConfig
    from kws.models import build_model
    from kws.spotter import KeywordSpotter

    bench = load("pool_by_time")
    torch.manual_seed(0)
    labels = ["yes", "no", "_unknown_", "_silence_"]
    model = build_model("s4", 1, 4, pipeline="raw", d_model=8, d_state=8, n_layers=2,
                        pool=[4, 4])
    spotter = KeywordSpotter(FeatureConfig("raw"), model, labels).eval()
    rng = np.random.default_rng(0)
    for rate in (11025, 8000):
        waves = (0.3 * rng.standard_normal((6, rate))).astype(np.float32)
        with torch.no_grad():
            predicted = spotter(torch.from_numpy(waves), rate).argmax(-1).numpy()
        plan = model.pool_plan(16000 / rate)
        assert bench.accuracy(spotter, waves, rate, plan, predicted) == 1.0
        by_samples = [(p, 16000 / rate) for p in model.pool]
        assert bench.describe(by_samples).startswith("[4 dt x")
