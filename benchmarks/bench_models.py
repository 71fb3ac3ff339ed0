"""Model speed: forward + backward of every family on both pipelines, and one S4 layer
against the official S4 code's figures on this CPU.

1. Families: s4, s4d, tcn, lstm, each as ``kws.models.build_model`` makes it for
   the pipeline (raw: 16,000 x 1; MFCC: the frontend's frames x 20), batch 16,
   12 classes; forward + backward of the mean logit, minimum over repeats.
2. One causal S4 layer, H=64, N=64, batch 16 x 16,000, forward + backward. The
   official code (state-spaces/s4, no CUDA extension, no pykeops, this 2-core CPU)
   takes 5.8 s with the NPLR kernel and 3.0 s with the diagonal one, and its
   recurrent step 220-290 us per step per layer at batch 1. We time our whole
   residual block (LayerNorm, SSM, GELU, Linear, GLU), which does more than the
   SSM alone, side by side with the same block using the naive kernel (the
   official algorithm in plain PyTorch), and the step of the SSM layer and of
   the block (K = 1, batch 1).

    python benchmarks/bench_models.py                  # full shapes, a few minutes
    python benchmarks/bench_models.py --quick          # tiny shapes, seconds
    python benchmarks/bench_models.py --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_s4_kernel import best_time  # the sibling script: one timing rule for both

from kws.models import MODEL_FAMILIES, build_model
from kws.models.s4 import S4Block

#: the official S4 code on this CPU (2 threads): one causal layer, H=64, N=64, 16 x 16,000
OFFICIAL_LAYER_S = {"dplr": 5.8, "diag-lin": 3.0}
OFFICIAL_STEP_US = (220.0, 290.0)
#: small models for --quick: every family accepts these
QUICK_OVERRIDES = {
    "s4": {"d_model": 16, "d_state": 16, "n_layers": 2},
    "s4d": {"d_model": 16, "d_state": 16, "n_layers": 2},
    "tcn": {"d_model": 16, "n_blocks": 3},
    "lstm": {"d_model": 16, "n_layers": 1},
}


def mfcc_frames(samples: int) -> int:
    """The MFCC frontend's frame count for a clip (98 for one second if it is not importable)."""
    try:
        from kws.features import FeatureConfig

        return FeatureConfig(kind="mfcc").num_frames(samples)
    except ImportError:
        return 98


def bench_families(quick: bool, repeats: int) -> list[dict[str, Any]]:
    """Forward + backward of each family on each pipeline, batch 16 (2 when quick)."""
    batch, samples = (2, 400) if quick else (16, 16000)
    shapes = {"raw": (samples, 1), "mfcc": (mfcc_frames(samples), 20)}
    rows = []
    for family in MODEL_FAMILIES:
        for pipeline, (L, C) in shapes.items():
            torch.manual_seed(0)
            overrides = QUICK_OVERRIDES[family] if quick else {}
            model = build_model(family, C, 12, pipeline=pipeline, **overrides).train()
            x = torch.randn(batch, L, C)

            def step(model=model, x=x) -> None:
                model.zero_grad(set_to_none=True)
                model(x).mean().backward()

            seconds = best_time(step, repeats)
            rows.append(
                {
                    "family": family,
                    "pipeline": pipeline,
                    "params": model.n_parameters,
                    "batch": batch,
                    "L": L,
                    "C": C,
                    "fwd_bwd_ms": round(1000 * seconds, 1),
                }
            )
            print(
                f"{family:<5} {pipeline:<5} {model.n_parameters:>9,} {batch:>3} x {L:>5} x {C:<2} "
                f"{1000 * seconds:>10.1f} ms",
                flush=True,
            )
    return rows


def bench_layer(quick: bool, repeats: int) -> list[dict[str, Any]]:
    """One S4 block, forward + backward, ours and with the naive kernel; the recurrent step.

    The naive-kernel block is the official algorithm in plain PyTorch (full Cauchy
    or Vandermonde matrices), timed in the same run: its ratio to ours holds even
    when the machine is busy, unlike a comparison with figures taken another day.
    """
    H, N, batch, L = (8, 16, 2, 1000) if quick else (64, 64, 16, 16000)
    steps = 50 if quick else 2000
    rows = []
    for kernel, official in OFFICIAL_LAYER_S.items():
        torch.manual_seed(0)
        block = S4Block(H, 0.0, d_state=N, kernel=kernel)
        x = torch.randn(batch, L, H, requires_grad=True)

        def fwd_bwd(block=block, x=x) -> None:
            block.zero_grad(set_to_none=True)
            x.grad = None
            block(x).sum().backward()

        seconds = best_time(fwd_bwd, repeats)
        block.ssm.kernel = functools.partial(block.ssm.kernel, naive=True)
        naive_seconds = best_time(fwd_bwd, repeats)
        del block.ssm.kernel  # back to the class's method
        block.eval()
        step_us = {}
        for name, fn in (("layer", block.ssm.step), ("block", block.step)):
            run = lambda fn=fn, layer=block.ssm: run_steps(fn, layer, H, steps)  # noqa: E731
            step_us[name] = 1e6 * best_time(run, repeats) / steps
        row = {
            "kernel": kernel,
            "H": H,
            "N": N,
            "batch": batch,
            "L": L,
            "block_fwd_bwd_s": round(seconds, 3),
            "naive_kernel_block_fwd_bwd_s": round(naive_seconds, 3),
            "speedup_vs_naive": round(naive_seconds / seconds, 2),
            "official_layer_fwd_bwd_s": official,
            "speedup_vs_official": round(official / seconds, 2),
            "layer_step_us": round(step_us["layer"], 1),
            "block_step_us": round(step_us["block"], 1),
            "official_step_us": list(OFFICIAL_STEP_US),
            "step_speedup_vs_official": round(OFFICIAL_STEP_US[0] / step_us["block"], 2),
        }
        rows.append(row)
        print(
            f"{kernel:<9} block f+b {seconds:>7.3f} s, naive kernel {naive_seconds:>7.3f} s "
            f"({row['speedup_vs_naive']:.2f}x), official {official:.1f} s "
            f"({row['speedup_vs_official']:.2f}x) | step: layer {step_us['layer']:>6.1f} us, "
            f"block {step_us['block']:>6.1f} us, official {OFFICIAL_STEP_US[0]:.0f}-"
            f"{OFFICIAL_STEP_US[1]:.0f} us ({row['step_speedup_vs_official']:.2f}x)",
            flush=True,
        )
    return rows


@torch.no_grad()
def run_steps(step: Callable, layer: Any, H: int, steps: int) -> None:
    """``steps`` recurrent steps of one time step each at batch 1."""
    u = torch.randn(1, 1, H)
    state = layer.initial_state(1)
    for _ in range(steps):
        _, state = step(u, state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the minimum counts")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--skip-families", action="store_true", help="only the S4 layer part")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, min of {repeats}"
        + (", quick shapes" if args.quick else "")
    )
    families = []
    if not args.skip_families:
        print("\nforward + backward, every family and pipeline")
        print(f"{'model':<5} {'pipe':<5} {'params':>9} {'input':>17} {'time':>13}")
        families = bench_families(args.quick, repeats)
    print("\none causal S4 layer vs the official S4 code on this CPU")
    layer = bench_layer(args.quick, repeats)
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick}
        args.json.write_text(
            json.dumps({**meta, "families": families, "s4_layer": layer}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
