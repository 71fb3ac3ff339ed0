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


def run_pipeline_command(args: argparse.Namespace) -> int:
    from kws.training.pipeline import print_table, run_pipeline

    out = args.out or Path("runs") / time.strftime("pipeline-%Y%m%d-%H%M%S")
    try:
        summary = run_pipeline(args.data, out, args.minutes)
    except _lightning_errors() as err:
        raise UserError(str(err)) from err
    print_table(summary)
    return 0
