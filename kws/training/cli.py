"""``kws train`` (one config, Lightning does the loop) and ``kws pipeline`` (the main job).

Heavy imports (torch, Lightning) wait until a command runs, so ``kws --help`` stays quick.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kws.cli import UserError


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers like 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds like 0,1,2, got {text!r}")
    return seeds


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train a spotter from a YAML config (Lightning)",
        description="Train a spotter from a YAML config with Lightning's Trainer. Multi-GPU: "
        "--set trainer.devices=4 (one process per GPU, DDP); multi-node: also "
        "trainer.num_nodes and start the command on every node (srun, torchrun).",
    )
    train.add_argument("--config", required=True, metavar="PATH",
                       help="a YAML file, or a shipped config name such as s4d_mfcc")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set optim.lr=0.003 (repeatable)")
    train.add_argument("--resume", metavar="PATH|last",
                       help="continue from a Lightning checkpoint; 'last' is OUT/checkpoints/"
                       "last.ckpt")
    train.add_argument("--out", type=Path, metavar="DIR",
                       help="run folder (default runs/CONFIG_NAME)")
    train.add_argument("--name", help="name of the shipped .pt (default: the config's name)")
    train.add_argument("--seeds", type=_seed_list, metavar="S,S,...",
                       help="train once per seed, into OUT/seed_S, and write the mean and "
                       "spread of the metrics to OUT/seeds.json; seeds already trained there "
                       "are read, not retrained (with --resume last, unfinished ones continue)")
    train.set_defaults(handler=run_train)

    pipe = subparsers.add_parser(
        "pipeline", help="the main job: train a small model, evaluate it at 16 and 8 kHz",
        description="Find Speech Commands, train the tiny_mfcc config (a small S4D on MFCC), "
        "score it on its test split at 16 kHz and 8 kHz, and print the table.",
    )
    pipe.add_argument("--data", type=Path, metavar="DIR",
                      help="Speech Commands folder (default: $KWS_DATA_DIR, data/, "
                      "../shared/data)")
    pipe.add_argument("--out", type=Path, metavar="DIR",
                      help="run folder (default runs/pipeline-TIMESTAMP)")
    pipe.add_argument("--minutes", type=_positive_float, default=5.0,
                      help="training time limit in minutes (default 5); evaluation follows")
    pipe.set_defaults(handler=run_pipeline_command)


def _lightning_errors() -> tuple[type[Exception], ...]:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return (MisconfigurationException, FileExistsError)


def run_train(args: argparse.Namespace) -> int:
    from kws.training.config import load_config, resolve_config_path
    from kws.training.train import train

    name = args.name or resolve_config_path(args.config).stem
    config = load_config(args.config, args.set)
    out = args.out or Path("runs") / name
    if args.seeds:
        return run_seeds(config, out, name, args.seeds, args.resume)
    try:
        result = train(config, out, resume=args.resume, name=name)
    except _lightning_errors() as err:
        raise UserError(str(err)) from err
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"last checkpoint: {result.last_checkpoint}")
    print(f"shipped model:   {result.spotter_path}")
    for key, value in sorted(result.metrics.items()):
        print(f"  {key:10s} {value:.4f}")
    return 0


def run_seeds(config: dict, out: Path, name: str, seeds: list[int], resume: str | None) -> int:
    """``kws train --seeds``: one run per seed, then the spread of their metrics."""
    import json

    from kws.training.checkpoint import read_checkpoint
    from kws.training.train import seed_summary, train

    if resume not in (None, "last"):
        raise UserError("with --seeds, --resume takes only 'last' (each seed resumes its own)")
    metrics = {}
    for seed in seeds:
        run_dir = out / f"seed_{seed}"
        shipped = run_dir / "checkpoints" / f"{name}.pt"
        if shipped.is_file():
            metrics[seed] = {k: float(v) for k, v in read_checkpoint(shipped)["metrics"].items()
                             if isinstance(v, (int, float))}
            print(f"seed {seed}: trained earlier, read {shipped}")
            continue
        last = run_dir / "checkpoints" / "last.ckpt"
        try:
            result = train({**config, "seed": seed}, run_dir,
                           resume="last" if resume and last.is_file() else None, name=name)
        except _lightning_errors() as err:
            raise UserError(str(err)) from err
        metrics[seed] = result.metrics
        print(f"seed {seed}: {result.spotter_path}")
    summary = seed_summary(metrics)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{'metric':10s} " + " ".join(f"{'seed ' + str(s):>9s}" for s in seeds)
          + f" {'mean':>9s} {'sd':>9s}")
    for key, stats in summary["metrics"].items():
        print(f"{key:10s} " + " ".join(f"{v:9.4f}" for v in stats["values"])
              + f" {stats['mean']:9.4f} {stats['sd']:9.4f}")
    print(f"wrote {out / 'seeds.json'}")
    return 0


def run_pipeline_command(args: argparse.Namespace) -> int:
    from kws.training.pipeline import print_table, run_pipeline

    out = args.out or Path("runs") / time.strftime("pipeline-%Y%m%d-%H%M%S")
    try:
        summary = run_pipeline(args.data, out, args.minutes)
    except _lightning_errors() as err:
        raise UserError(str(err)) from err
    print_table(summary)
    return 0
