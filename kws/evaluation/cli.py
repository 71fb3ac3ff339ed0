"""``kws eval`` (accuracy at resampled rates -> JSON + plots) and ``kws results`` (the table)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kws.evaluation.options import DEFAULT_RATES, RESAMPLERS, SPLIT_CHOICES, parse_rates


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def add_commands(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="score checkpoints zero-shot at resampled sample rates (JSON + plots)",
        description=(
            "Score checkpoints on Speech Commands audio resampled from 16 kHz to each rate, "
            "zero-shot: raw-audio S4 rescales dt, MFCC keeps its ms windows and Hz bands, "
            "TCN and LSTM run as they are."
        ),
    )
    ev.add_argument("checkpoints", nargs="+", metavar="CKPT", help="models/NAME.pt or a .ckpt")
    ev.add_argument("--data", required=True, metavar="DIR",
                    help="Speech Commands folder (full-archive or test-set layout)")
    ev.add_argument("--split", default="test", choices=SPLIT_CHOICES,
                    help="the checkpoint's own split, rebuilt and checked against its manifest "
                    "(default test); 'all' scores every clip of the folder")
    ev.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)),
                    help="comma-separated sample rates in Hz (default %(default)s)")
    ev.add_argument("--resampler", default="soxr", choices=RESAMPLERS,
                    help="soxr and sinc are band-limited; decimate keeps every k-th sample "
                    "(integer ratios below 16 kHz only; other rates are skipped)")
    ev.add_argument("--json", type=Path, metavar="OUT",
                    help="write the report here, and the plots next to it")
    ev.add_argument("--batch-size", type=_positive, default=64,
                    help="clips per batch at 16 kHz; fewer at higher rates (default 64)")
    ev.add_argument("--limit", type=_positive,
                    help="score at most N clips, spread over the classes")
    ev.add_argument("--threads", type=_positive, help="torch CPU threads")
    ev.add_argument("--reference", action="store_true",
                    help="also score each model at its trained rate on the same audio brought "
                    "back there: what the rate's band allows, apart from the zero-shot step")
    ev.add_argument("--no-plots", action="store_true", help="write the JSON only")
    ev.add_argument("--cards", action="store_true",
                    help="also write NAME.md and NAME.eval.json model cards beside each checkpoint")
    ev.set_defaults(handler=run_eval)

    res = sub.add_parser(
        "results",
        help="the results table (markdown) from model cards and eval reports",
        description="One row per model: accuracy at 16 and 8 kHz, their ratio, the worst rate "
        "of the sweep and the command that reproduces it.",
    )
    res.add_argument("--models", type=Path, default=Path("models"), metavar="DIR",
                     help="NAME.pt checkpoints and NAME.eval.json cards (default models/)")
    res.add_argument("--eval", type=Path, action="append", default=[], metavar="JSON",
                     help="a kws eval report; its entries override the cards (repeatable)")
    res.add_argument("--format", choices=("markdown", "json"), default="markdown")
    res.add_argument("--cards", action="store_true",
                     help="also write NAME.md (and NAME.eval.json) for every evaluated model")
    res.set_defaults(handler=run_results)


def run_eval(args: argparse.Namespace) -> int:
    from kws.cli import UserError

    for ckpt in args.checkpoints:
        if not Path(ckpt).is_file():
            raise UserError(f"{ckpt}: no such checkpoint file")
    if not Path(args.data).is_dir():
        raise UserError(f"--data {args.data}: no such folder")
    rates = parse_rates(args.rates)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from kws.evaluation.evaluate import evaluate_checkpoints
    from kws.evaluation.report import ModelRecord, checkpoint_meta, sweep_table, write_card

    report = evaluate_checkpoints(
        args.checkpoints, args.data, args.split, rates, args.resampler, args.batch_size,
        args.limit, args.json, log=_log, reference=args.reference,
    )
    print(sweep_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        _log(f"wrote {args.json}")
        if not args.no_plots:
            from kws.evaluation.plots import write_plots

            for path in write_plots(report, args.json):
                _log(f"wrote {path}")
    if args.cards:
        for entry in report["checkpoints"]:
            ckpt = Path(entry["checkpoint"])
            record = ModelRecord(ckpt.stem, checkpoint_meta(ckpt), entry, ckpt)
            for path in write_card(record):
                _log(f"wrote {path}")
    return 0


def run_results(args: argparse.Namespace) -> int:
    from kws.cli import UserError
    from kws.evaluation.report import collect, markdown_table, table_row, write_card

    models = args.models if args.models.is_dir() or not args.eval else None
    if models is not None and not models.is_dir():
        raise UserError(f"--models {models}: no such folder (pass --eval REPORT.json instead)")
    records = collect(models, args.eval)
    if not records:
        raise UserError(f"no checkpoints in {models} and no --eval report")
    rows = [table_row(r) for r in records]
    if args.format == "json":
        print(json.dumps(rows, indent=1))
    else:
        print(markdown_table(rows))
    if args.cards:
        for record in records:
            if record.entry is None:
                continue
            for path in write_card(record, None if record.checkpoint else models):
                _log(f"wrote {path}")
    return 0
