"""How far each S4 layer of a checkpoint is from one continuous-time filter bank.

Zero-shot rate change assumes that a layer trained at one rate, run at another with
dt rescaled, is the same continuous-time filter. That holds near the continuous
limit, not for modes that turn half a cycle or more per step (above Nyquist): the
bilinear map (S4) parks them next to Nyquist and zero-order hold (S4D) folds them,
so they answer at a frequency set by the sample rate, not by the model. This script
measures it. For every S4 layer and every rate it compares the layer's gain
(magnitude response) at that rate (dt as ``pool_plan`` gives it) with the one at
the trained rate, on 1-Hz bins of the bands both carry, octaves below the lower
Nyquist: per band, the median and the largest over channels of
|| |H_rate| - |H_trained| || / ||H_trained||. Gain, not the complex response: a
discretisation delays its output by a fraction of a step, which differs between
rates and is harmless, but would dominate a complex difference. It also counts the modes
above Nyquist at the trained rate, and the ones a band limit cuts (``model.bandlimit``).
Even a layer of slow modes differs by about 20% in the top octave below the lower
Nyquist (near it every discretisation's gain droops, by an amount set by the rate):
that is the floor, and the lower octaves, which have none, tell the most.
No data is needed; it reads the weights only.

    .venv/bin/python benchmarks/rate_consistency.py models/s4_raw_pool.pt --rates 8000,32000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from kws.training.checkpoint import load_spotter

#: bands compared, as fractions of the lower of the two rates' Nyquist frequencies
BANDS = ((0, 1 / 8), (1 / 8, 1 / 4), (1 / 4, 1 / 2), (1 / 2, 1))
#: the length of the impulse response compared, in seconds
SPAN_S = 0.25


def response(layer: Any, rate: float, dt_factor: float) -> torch.Tensor:
    """(H, bins) frequency response on 1-Hz bins from 0 to rate / 2 (kernel over SPAN_S)."""
    length = round(SPAN_S * rate)
    with torch.no_grad():
        kernel = layer.kernel(length, dt_factor).reshape(-1, length).double()
    return torch.fft.rfft(kernel, n=round(rate))  # n = rate samples: bins 1 Hz apart


def band_errors(trained: torch.Tensor, other: torch.Tensor, nyquist: float) -> dict[str, Any]:
    """Per band (octaves below ``nyquist``), median and max over channels of the gain error."""
    out = {}
    for low_part, high_part in BANDS:
        low, high = round(low_part * nyquist), round(high_part * nyquist)
        a, b = trained[:, low:high], other[:, low:high]
        err = (a.abs() - b.abs()).pow(2).sum(-1).sqrt() / a.abs().pow(2).sum(-1).sqrt().clamp_min(
            1e-30)
        out[f"{low:g}-{high:g} Hz"] = {
            "median": round(float(err.median()), 4), "max": round(float(err.max()), 4)}
    return out


def layer_rows(spotter: Any, rates: list[int], name: str = "model") -> list[dict[str, Any]]:
    """One row per S4 layer of a raw-audio ``spotter``: modes above Nyquist, cut modes, and
    ``band_errors`` at each rate where the layer's dt changes."""
    model, path = spotter.model, name
    if getattr(model, "family", None) not in ("s4", "s4d") or spotter.feature_config.kind != "raw":
        raise SystemExit(f"{path}: not a raw-audio S4/S4D model; its layers never see a new dt")
    trained_rate = spotter.sample_rate
    rows, step_rate = [], float(trained_rate)
    for index, block in enumerate(model.blocks):
        layer = block.ssm
        turns = layer.mode_turns()
        cut = int((turns >= layer.bandlimit / 2).sum()) if layer.bandlimit else 0
        row = {"checkpoint": path, "block": index, "step_rate": step_rate,
               "modes": turns.numel(), "above_nyquist": int((turns >= 0.5).sum()),
               "band_limit_cut": cut, "rates": {}}
        base = response(layer, step_rate, 1.0)
        for rate in rates:
            multiplier = model.pool_plan(trained_rate / rate)[index][1]
            if multiplier == 1.0:
                continue  # this block runs as trained at this rate
            other_rate = step_rate / multiplier
            other = response(layer, other_rate, multiplier)
            row["rates"][rate] = band_errors(base, other, min(step_rate, other_rate) / 2)
        rows.append(row)
        step_rate /= model.pool[index]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--rates", default="8000,32000", help="comma-separated Hz")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rates = [int(r) for r in args.rates.split(",")]
    rows = [row for path in args.checkpoints
            for row in layer_rows(load_spotter(path)[0], rates, path)]
    for row in rows:
        if not row["rates"]:
            continue
        print(f"{row['checkpoint']} block {row['block']} ({row['step_rate']:g} steps/s): "
              f"{row['above_nyquist']}/{row['modes']} modes above Nyquist, "
              f"{row['band_limit_cut']} cut by the band limit")
        for rate, bands in row["rates"].items():
            cells = ", ".join(f"{band} {e['median']:.3f} (max {e['max']:.2f})"
                              for band, e in bands.items())
            print(f"  at {rate} Hz: {cells}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "span_s": SPAN_S}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
