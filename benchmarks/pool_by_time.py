"""Zero-shot rates for a pooled raw S4: pools that count samples or span time.

Counting samples, every pool at 8 kHz spans twice the time it spanned in training,
although every dt is doubled. Spanning time (what kws does, ``pool_plan``), the
first factor is halved at 8 kHz, so the later blocks see their trained rate again
and only the blocks before it need dt doubled. At 11.025, 22.05 and 44.1 kHz no
pool spans whole samples; there the first pool averages by area over its span of
time (``area_pool``: 2.75625 samples at 11.025 kHz). This script scores both
rules on the checkpoint's test split side by side, block by block, at each rate.

    .venv/bin/python benchmarks/pool_by_time.py models/s4_raw_pool_band.pt \\
        --data ../shared/data/speech_commands_test_set_v0.02_dev --rates 8000,11025,22050,44100
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from kws.evaluation.evaluate import load_waveforms, resample_batch, select_clips
from kws.models.s4 import pool_steps
from kws.training.checkpoint import load_spotter


def accuracy(spotter, waves: np.ndarray, rate: int, plan: list[tuple], targets: np.ndarray
             ) -> float:
    """Test accuracy with a per-block plan of (pooling factor, dt multiplier)."""
    model, right = spotter.model, 0
    with torch.no_grad():
        for start in range(0, len(waves), 32):
            x = spotter.frontend(torch.from_numpy(waves[start:start + 32]), rate)
            h = model.encoder(x)
            for block, (pool, factor) in zip(model.blocks, plan, strict=True):
                h = pool_steps(block(h, factor), pool)
            logits = model.classify(model.norm(h).mean(1))
            right += int((logits.argmax(-1).numpy() == targets[start:start + 32]).sum())
    return right / len(waves)


def describe(plan: list[tuple]) -> str:
    return "[" + ", ".join(f"{float(p):g} dt x{m:.3g}" for p, m in plan) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--rates", default="8000,11025,22050,44100")
    parser.add_argument("--resampler", default="soxr")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spotter, meta = load_spotter(args.checkpoint)
    spotter.eval()
    model, trained = spotter.model, spotter.feature_config.sample_rate
    if spotter.feature_config.kind != "raw" or not hasattr(model, "pool_plan"):
        raise SystemExit(f"{args.checkpoint}: not a raw-audio S4 model with pooling")
    clips = select_clips(meta, args.data, "test").clips
    targets = np.array([spotter.labels.index(c.label) for c in clips])
    waves = load_waveforms(clips, trained)
    at_trained = accuracy(spotter, waves, trained, model.pool_plan(1.0), targets)
    print(f"{len(clips)} test clips; {trained} Hz {at_trained:.2%}")
    rows = []
    for rate in (int(r) for r in args.rates.split(",")):
        rf = trained / rate
        moved = resample_batch(waves, trained, rate, args.resampler)
        by_samples = [(p, rf) for p in model.pool]
        by_time = model.pool_plan(rf)
        row = {"rate": rate, "by_samples": accuracy(spotter, moved, rate, by_samples, targets),
               "by_time": accuracy(spotter, moved, rate, by_time, targets)}
        rows.append(row)
        for name, plan in (("by samples", by_samples), ("by time", by_time)):
            acc = row[name.replace(" ", "_")]
            print(f"{rate} Hz, pools {name} {describe(plan)}: {acc:.2%} "
                  f"({acc / at_trained:.3f} of {trained} Hz)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "clips": len(clips),
                       "trained_rate": trained, "at_trained": at_trained,
                       "resampler": args.resampler, "rates": rows}, f, indent=2)


if __name__ == "__main__":
    main()
