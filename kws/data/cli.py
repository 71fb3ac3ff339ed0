"""``kws data stats``, ``kws data download`` and ``kws data convert``.

Heavy imports (torch, through the data set code) wait until a command runs, so
``kws --help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

TASK_NAMES = ("sc10", "sc12", "sc30", "sc35")  # kws.data.speech_commands.TASKS, checked in tests


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="Speech Commands: download, inspect, convert")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(handler=lambda args: data.print_help() or 2)

    stats = sub.add_parser(
        "stats", help="counts, speakers, clip lengths and bad files of a data folder",
        description="Report what a Speech Commands folder holds for a task, and any bad files.",
    )
    stats.add_argument("--root", type=Path, help="data folder (default: found as "
                       "find_data_root does: $KWS_DATA_DIR, data/, ../shared/data)")
    stats.add_argument("--task", default="sc12", help=f"one of {', '.join(TASK_NAMES)}")
    stats.add_argument("--json", action="store_true", help="print the report as JSON")
    stats.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                       help="stop at the first bad file, or list every bad file (default raise)")
    stats.add_argument("--val-percent", type=float, default=10.0)
    stats.add_argument("--test-percent", type=float, default=10.0)
    stats.add_argument("--seed", type=int, default=0, help="seed of the sc12 balancing")
    stats.add_argument("--header-only", action="store_true",
                       help="trust file headers; faster, but NaN samples go unnoticed")
    stats.add_argument("--manifest", type=Path, help="also write the split manifest here (JSON)")
    stats.set_defaults(handler=run_stats)

    down = sub.add_parser(
        "download", help="fetch, verify and unpack an official archive",
        description="Fetch (resumably), verify (SHA-256) and unpack (atomically) Speech "
        "Commands into ROOT/<archive name>/. Offline: place the archive in ROOT and rerun.",
    )
    down.add_argument("--version", required=True, choices=("v0.01", "v0.02"))
    down.add_argument("--root", type=Path, default=Path("data"), help="default: data/")
    down.add_argument("--test-set", action="store_true",
                      help="the official 12-class test-set archive instead of the full one")
    down.add_argument("--sha256", help="expected SHA-256, overriding the built-in one")
    down.add_argument("--url", help="fetch from this address (a mirror) instead")
    down.add_argument("--timeout", type=float, default=15.0,
                      help="seconds to wait to connect or for data (default 15)")
    down.add_argument("--remove-archive", action="store_true",
                      help="delete the .tar.gz once unpacked")
    down.set_defaults(handler=run_download)

    conv = sub.add_parser(
        "convert", help="copy a data folder in another audio format (FLAC, Opus)",
        description="Copy a Speech Commands folder with every audio file in another format, "
        "same layout and names, so it splits as the original. FLAC is lossless (about 46%% "
        "of the WAV size); Opus is lossy (about 14%%), for carrying training data where space "
        "is short; report test accuracy on the original. Reruns skip files already written.",
    )
    conv.add_argument("source", type=Path, help="the data folder to copy")
    conv.add_argument("--out", type=Path, required=True, help="where the copy goes")
    conv.add_argument("--format", default="flac", choices=("flac", "opus", "wav"))
    conv.add_argument("--level", type=float, help="compression level in [0, 1] (Opus: higher "
                      "is smaller and lossier; default 0.9)")
    conv.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                      help="files converted at once (default: one per CPU)")
    conv.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                      help="stop at the first bad file, or list bad files and go on")
    conv.add_argument("--json", action="store_true", help="print the report as JSON")
    conv.set_defaults(handler=run_convert)


def run_stats(args: argparse.Namespace) -> int:
    from kws.data.speech_commands import SpeechCommands, find_data_root
    from kws.data.stats import dataset_stats

    root = find_data_root(args.root, args.task)
    data = SpeechCommands(root, args.task, args.val_percent, args.test_percent, args.seed)
    report = dataset_stats(data, on_error=args.on_error, read_samples=not args.header_only)
    if args.manifest:
        args.manifest.write_text(json.dumps(data.split_manifest(), indent=1) + "\n")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    """The stats report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    splits = list(report["counts"])
    layout = {"full": "full archive", "test_set": "test-set archive"}[report["layout"]]
    summary = Table(title="Speech Commands", show_header=False)
    summary.add_row("folder", report["root"])
    summary.add_row("layout", f"{layout} {report['version']}")
    summary.add_row("task", f"{report['task']} ({report['classes']} classes with clips)")
    summary.add_row("split rule", report["rule"])
    summary.add_row("clips", " / ".join(f"{s} {n:,}" for s, n in report["split_clips"].items())
                    + f" = {report['clips']:,}")
    summary.add_row("speakers", " / ".join(f"{s} {n:,}" for s, n in report["speakers"].items())
                    + f" = {report['speakers_total']:,}")
    overlap = report["speaker_overlap"]
    summary.add_row("speakers disjoint", "yes" if not overlap else
                    f"[red]no: {len(overlap)} in two splits ({', '.join(overlap[:5])})[/]")
    summary.add_row("sample rates", ", ".join(f"{r} Hz: {n:,}"
                                              for r, n in report["sample_rates"].items()))
    summary.add_row("noise files", ", ".join(f"{n['name']} ({n['seconds']:g} s)"
                                             for n in report["noise_files"]) or "none")
    if report["ignored_folders"]:
        summary.add_row("ignored folders", ", ".join(report["ignored_folders"]))
    summary.add_row("bad files", f"{report['skipped']}")
    console.print(summary)

    counts = Table(title="Clips per class")
    for column in ["class", *splits, "total"]:
        counts.add_column(column, justify="left" if column == "class" else "right")
    for label, total in report["class_clips"].items():
        counts.add_row(label, *(f"{report['counts'][s][label]:,}" for s in splits), f"{total:,}")
    console.print(counts)

    lengths = Table(title="Clip lengths (0.1 s bins)")
    lengths.add_column("seconds")
    lengths.add_column("clips", justify="right")
    lengths.add_column("")
    most = max(report["length_histogram"].values(), default=1)
    for start, n in report["length_histogram"].items():
        lengths.add_row(f"{start}-{float(start) + 0.1:.1f}", f"{n:,}", "#" * max(1, 40 * n // most))
    console.print(lengths)

    if report["problems"]:
        problems = Table(title=f"Bad files ({report['skipped']}), left out of the counts")
        problems.add_column("file")
        problems.add_column("problem")
        for p in report["problems"]:
            problems.add_row(p["path"], p["problem"])
        console.print(problems)


def run_download(args: argparse.Namespace) -> int:
    from kws.data.download import download

    target = download(
        args.version, args.root, test_set=args.test_set, sha256=args.sha256, url=args.url,
        timeout=args.timeout, keep_archive=not args.remove_archive, progress=_progress_printer(),
    )
    print(target)
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from kws.data.convert import convert_dataset

    report = convert_dataset(
        args.source, args.out, args.format, args.level, args.on_error, args.jobs,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    ).summary()
    if args.json:
        print(json.dumps(report, indent=1))
        return 1 if report["problems"] else 0
    quality = ("lossless" if report["lossless"] else
               f"SNR median {report['snr_db_median']} dB, worst {report['snr_db_worst']} dB"
               if report["snr_db_median"] is not None else "nothing new written")
    ratio = f"{100 * report['size_ratio']:.1f}%" if report["size_ratio"] is not None else "-"
    print(f"{report['target']}: {report['converted']:,} files written, "
          f"{report['already_there']:,} already there, {report['copied']:,} other files copied; "
          f"{report['bytes_out'] / 1e6:,.1f} MB, {ratio} of the source; {quality}")
    for problem in report["problems"]:
        print(f"  skipped {problem['path']}: {problem['problem']}", file=sys.stderr)
    return 1 if report["problems"] else 0


def _progress_printer():
    """A progress callback that writes at most once a second to stderr."""
    last = [0.0]

    def show(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < 1.0 and done != total:
            return
        last[0] = now
        of = f" of {total / 1e6:,.1f} MB ({100 * done / total:.0f}%)" if total else " MB"
        end = "\n" if done == total else ""
        print(f"\r  {done / 1e6:,.1f}{of}", end=end, file=sys.stderr, flush=True)

    return show
