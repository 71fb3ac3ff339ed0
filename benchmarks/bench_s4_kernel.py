"""S4 kernel speed: our kernels against the naive ones, side by side in one run.

For each kernel, the time to build the (H, L) convolution kernel of one layer,
forward alone and forward + backward, and the ratio naive / ours:

* S4D (diagonal, ZOH): ours splits l = a M + b and sums over modes with one real
  matmul; the naive one materialises the (H, N/2, L) complex Vandermonde matrix.
* S4 (DPLR, bilinear): ours evaluates the Cauchy sums at the roots of unity
  through their Vandermonde/FFT identity; the naive one forms (H, N/2, L/2+1)
  complex Cauchy matrices directly. Both share the Woodbury step and C~.

Shapes: the S4 paper's raw Speech Commands layer (H=128, N=64, L=16,000) and a
small one (H=64). Times are the minimum over repeats.

    python benchmarks/bench_s4_kernel.py            # paper shapes, about a minute
    python benchmarks/bench_s4_kernel.py --quick    # tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kws.models.s4 import S4Layer

#: (name, H, N, L)
SHAPES = [("paper raw", 128, 64, 16000), ("small", 64, 64, 16000)]
QUICK_SHAPES = [("quick", 8, 16, 1000)]
KERNELS = {"s4 (dplr)": "dplr", "s4d (diag-lin)": "diag-lin"}


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Minimum wall time of ``fn`` over ``repeats`` runs, after one untimed warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(label: str, kind: str, H: int, N: int, L: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    layer = S4Layer(H, N, kernel=kind)
    weight = torch.randn(1, H, L)  # a random cotangent, so backward does real work
    row: dict[str, Any] = {"kernel": label, "H": H, "N": N, "L": L}
    results = {}
    for method, naive in (("ours", False), ("naive", True)):
        build = functools.partial(layer.kernel, L, naive=naive)
        results[method] = build().detach()

        def forward(build=build) -> None:
            with torch.no_grad():
                build()

        def forward_backward(build=build) -> None:
            layer.zero_grad(set_to_none=True)
            (build() * weight).sum().backward()

        row[f"{method}_fwd_ms"] = round(1000 * best_time(forward, repeats), 2)
        row[f"{method}_fwd_bwd_ms"] = round(1000 * best_time(forward_backward, repeats), 2)
    ref = results["naive"]
    row["max_rel_diff"] = float((results["ours"] - ref).abs().max() / ref.abs().max())
    row["speedup_fwd"] = round(row["naive_fwd_ms"] / row["ours_fwd_ms"], 2)
    row["speedup_fwd_bwd"] = round(row["naive_fwd_bwd_ms"] / row["ours_fwd_bwd_ms"], 2)
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'kernel':<15} {'H':>4} {'N':>3} {'L':>6} | {'ours fwd':>9} {'naive fwd':>10} "
        f"{'ratio':>6} | {'ours f+b':>9} {'naive f+b':>10} {'ratio':>6} | {'rel diff':>8}"
    )
    for r in rows:
        print(
            f"{r['kernel']:<15} {r['H']:>4} {r['N']:>3} {r['L']:>6} | "
            f"{r['ours_fwd_ms']:>7.1f}ms {r['naive_fwd_ms']:>8.1f}ms {r['speedup_fwd']:>5.1f}x | "
            f"{r['ours_fwd_bwd_ms']:>7.1f}ms {r['naive_fwd_bwd_ms']:>8.1f}ms "
            f"{r['speedup_fwd_bwd']:>5.1f}x | {r['max_rel_diff']:>8.1e}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the minimum counts")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = 1 if args.quick else args.repeats

    print(
        f"S4 kernel, one layer, ours vs naive: torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, min of {repeats}"
    )
    rows = [
        measure(label, kind, H, N, L, repeats)
        for _, H, N, L in shapes
        for label, kind in KERNELS.items()
    ]
    print_table(rows)
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick}
        args.json.write_text(json.dumps({**meta, "results": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
