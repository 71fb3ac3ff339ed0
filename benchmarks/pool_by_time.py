"""Zero-shot 8 kHz for a pooled raw S4: pools that count samples or span time.

Counting samples, every pool at 8 kHz spans twice the time it spanned in training,
although every dt is doubled. Spanning time (what kws does, ``pool_plan``), the
first factor is halved at 8 kHz, so the later blocks see their trained rate again
and only the blocks before it need dt doubled. This script scores both on the
checkpoint's test split side by side, spelled out block by block.

    .venv/bin/python benchmarks/pool_by_time.py models/s4_raw_pool.pt \\
        --data ../shared/data/speech_commands_test_set_v0.02_dev
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from kws.evaluation.evaluate import load_waveforms, resample_batch, select_clips
from kws.models.s4 import mean_pool
from kws.training.checkpoint import load_spotter


def accuracy(spotter, waves: np.ndarray, rate: int, pools: list[int], factors: list[float],
             targets: np.ndarray) -> float:
    """Test accuracy with per-block pooling factors and dt multipliers."""
    model, right = spotter.model, 0
    with torch.no_grad():
        for start in range(0, len(waves), 32):
            x = spotter.frontend(torch.from_numpy(waves[start:start + 32]), rate)
            h = model.encoder(x)
            for block, pool, factor in zip(model.blocks, pools, factors, strict=True):
                h = mean_pool(block(h, factor), pool)
            logits = model.classify(model.norm(h).mean(1))
            right += int((logits.argmax(-1).numpy() == targets[start:start + 32]).sum())
    return right / len(waves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spotter, meta = load_spotter(args.checkpoint)
    spotter.eval()
    pool = spotter.model.pool
    if pool[0] % 2:
        raise SystemExit(f"{args.checkpoint}: first pool factor {pool[0]} is odd; cannot halve it")
    clips = select_clips(meta, args.data, "test").clips
    targets = np.array([spotter.labels.index(c.label) for c in clips])
    waves16 = load_waveforms(clips, 16000)
    waves8 = resample_batch(waves16, 16000, 8000, "soxr")
    n = len(pool)
    at16 = accuracy(spotter, waves16, 16000, pool, [1.0] * n, targets)
    by_samples = accuracy(spotter, waves8, 8000, pool, [2.0] * n, targets)
    by_time = accuracy(spotter, waves8, 8000, [pool[0] // 2, *pool[1:]], [2.0] + [1.0] * (n - 1),
                       targets)
    print(f"{len(clips)} test clips; 16 kHz {at16:.2%}")
    print(f"8 kHz, pool by samples {pool}, dt x2 everywhere: {by_samples:.2%} "
          f"({by_samples / at16:.3f} of 16 kHz)")
    print(f"8 kHz, pool by time {[pool[0] // 2, *pool[1:]]}, dt x2 in block 1: {by_time:.2%} "
          f"({by_time / at16:.3f} of 16 kHz)")


if __name__ == "__main__":
    main()
