"""One prepared run for a lent GPU: measure, then train the raw-audio models side by side.

Why a script: a lent GPU comes for minutes (15 of device time, start-up included),
so everything that needs it happens in one call that cannot overrun:

1. ``benchmarks/train_throughput.py`` on the GPU (every family and pipeline), which
   is also the GPU row of the training-throughput table;
2. from those rates, how many epochs of each job fit ``--minutes`` when the jobs
   share the GPU; each job is then a plain ``kws train`` with that ``max_epochs``
   (so its cosine schedule finishes) and ``max_minutes`` as a backstop;
3. the runs (trained in ``--work``: configs, metrics, shipped ``.pt``,
   ``last.ckpt`` to resume) packed into one archive, with the logs and a JSON
   summary, in ``--out`` (a device returns at most 8 files from ``$OUT``).

Every result is written as soon as it exists, so a run stopped early still
returns what it had. With the defaults the whole run takes about 9 minutes
(throughput about 1, training 6, then at most 1.5 for the jobs' test passes),
inside one 10-minute device call. Evaluate the returned ``.pt`` files on the original WAV test
clips afterwards (``kws eval``); the data carried here may be a lossy copy
(``kws data convert --format opus``). See README, "Training on a borrowed GPU".

    python scripts/gpu_train.py --data .gpu_data/speech_commands_test_set_v0.02_dev \
        --out "$OUT" --minutes 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: job name -> (config, overrides): the raw-audio models the CPU cannot train
JOBS: dict[str, tuple[str, list[str]]] = {
    # the shipped raw recipe (band-limited kernels, low-rate augmentation) at full rate
    "s4_raw_band": ("s4_raw", ["model.bandlimit=1.0", "data.augment.low_rate_prob=0.5"]),
    "tcn_raw": ("tcn_raw", []),
    "lstm_raw": ("lstm_raw", []),
    "s4_raw_pool_band": ("s4_raw_pool", ["model.bandlimit=1.0", "data.augment.low_rate_prob=0.5"]),
}
DEFAULT_JOBS = "s4_raw_band,tcn_raw,lstm_raw"
#: a validation sample costs about this fraction of a training sample (no backward)
VAL_COST = 0.35
#: share of the budget planned for epochs; the rest is start-up, loaders and validation
PLANNED_SHARE = 0.8


def plan_epochs(
    samples_per_second: float, n_train: int, n_val: int, minutes: float, sharing: int,
    max_epochs: int,
) -> int:
    """Whole epochs that fit ``minutes`` when ``sharing`` jobs split the device evenly."""
    epoch_seconds = (n_train + VAL_COST * n_val) / samples_per_second * sharing
    fits = int(PLANNED_SHARE * 60 * minutes / epoch_seconds)
    return max(1, min(max_epochs, fits))


def run_throughput(device: str, out: Path, steps: int, extra: list[str]) -> list[dict[str, Any]]:
    """Rows of benchmarks/train_throughput.py on ``device`` (also kept as out/…json)."""
    path = out / "gpu_throughput.json" if device.startswith("cuda") else out / "throughput.json"
    command = [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"),
               "--device", device, "--steps", str(steps), "--json", str(path), *extra]
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads(path.read_text())["results"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data folder to train on")
    parser.add_argument("--out", type=Path, required=True, help="where results go ($OUT)")
    parser.add_argument("--minutes", type=float, default=6.0,
                        help="wall-clock budget for the training jobs together")
    parser.add_argument("--jobs", default=DEFAULT_JOBS, help=f"of {', '.join(JOBS)}")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to try the script here")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per throughput row")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kws_gpu_runs"),
                        help="where the runs train; only their archive goes to --out")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every job, e.g. to shrink the models for a trial "
                             "on the CPU")
    parser.add_argument("--grace-minutes", type=float, default=1.5,
                        help="after --minutes, how long jobs may take to finish (their test "
                             "pass) before they are killed and the archive is written")
    parser.add_argument("--fallback-epochs", type=int, default=10,
                        help="epochs per job if the throughput step fails")
    parser.add_argument("--quick-throughput", action="store_true",
                        help="tiny shapes in the throughput step (a trial run)")
    args = parser.parse_args(argv)
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    unknown = sorted(set(jobs) - set(JOBS))
    if unknown:
        parser.error(f"--jobs: unknown {', '.join(unknown)}; choose from {', '.join(JOBS)}")
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: no such folder (make it with kws data convert)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.work.exists() and any(args.work.iterdir()):
        parser.error(f"--work {args.work} holds earlier runs; remove it or choose another")
    summary: dict[str, Any] = {"data": str(args.data), "minutes": args.minutes, "jobs": {}}

    def save() -> None:
        (args.out / "gpu_summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    sys.path.insert(0, str(REPO))
    import torch

    from kws.data.speech_commands import SpeechCommands
    from kws.training.config import load_config

    summary["torch"] = torch.__version__
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA GPU is visible to torch")
        summary["gpu"] = torch.cuda.get_device_name()
    started = time.monotonic()
    try:
        rows = run_throughput(args.device, args.out, args.steps,
                              ["--quick"] if args.quick_throughput else [])
        rate = {(r["family"], r["pipeline"]): r["samples_per_second"] for r in rows}
    except subprocess.CalledProcessError as err:  # still train: the device time is spent
        summary["throughput_error"] = str(err)
        rate = {}
    summary["throughput_seconds"] = round(time.monotonic() - started, 1)
    save()

    workers = max(1, ((os.cpu_count() or 2) - 1) // len(jobs))
    processes: dict[str, subprocess.Popen] = {}
    for job in jobs:
        name, sets = JOBS[job]
        sets = [*sets, *args.set]
        config = load_config(name, [f"data.root={args.data}", *sets])
        data = SpeechCommands(args.data, config["data"]["task"])
        n_train, n_val = len(data.clips("train")), len(data.clips("val"))
        family, pipeline = config["model"]["name"], config["features"]["kind"]
        if (family, pipeline) in rate:
            epochs = plan_epochs(rate[(family, pipeline)], n_train, n_val, args.minutes,
                                 len(jobs), config["trainer"]["max_epochs"])
        else:  # no measured rate: the time limit alone ends the run
            epochs = min(args.fallback_epochs, config["trainer"]["max_epochs"])
        run_dir = args.work / job
        command = [
            sys.executable, "-m", "kws", "train", "--config", name, "--out", str(run_dir),
            "--name", job, "--set", f"data.root={args.data}",
            *[x for s in sets for x in ("--set", s)],
            "--set", f"trainer.max_epochs={epochs}",
            "--set", f"trainer.max_minutes={args.minutes + 0.5}",
            "--set", f"trainer.accelerator={'gpu' if args.device.startswith('cuda') else 'cpu'}",
            "--set", f"data.num_workers={workers}", "--set", "trainer.progress_bar=false",
        ]
        summary["jobs"][job] = {"config": name, "sets": sets, "epochs_planned": epochs,
                                "samples_per_second": rate.get((family, pipeline)),
                                "train_clips": n_train, "val_clips": n_val,
                                "command": " ".join(command)}
        with (args.out / f"{job}.log").open("w") as log:  # the child keeps its own copy
            processes[job] = subprocess.Popen(command, cwd=REPO, stdout=log,
                                              stderr=subprocess.STDOUT)
    save()
    # The jobs' own time limit covers fit(); this one also covers the test after it, so
    # the archive is always written before the device call's limit.
    deadline = time.monotonic() + 60 * (args.minutes + args.grace_minutes)
    for job, process in processes.items():
        try:
            summary["jobs"][job]["exit_code"] = process.wait(
                timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            summary["jobs"][job]["exit_code"] = process.wait()
            summary["jobs"][job]["killed_at_deadline"] = True
        summary["jobs"][job]["finished_after_s"] = round(time.monotonic() - started, 1)
        save()

    from kws.training.checkpoint import read_checkpoint

    with tarfile.open(args.out / "gpu_runs.tar.gz", "w:gz") as archive:
        for job in jobs:
            run_dir = args.work / job
            shipped = run_dir / "checkpoints" / f"{job}.pt"
            if shipped.is_file():
                meta = read_checkpoint(shipped)
                summary["jobs"][job]["metrics"] = meta.get("metrics")
                summary["jobs"][job]["epochs"] = meta.get("train", {}).get("epochs")
            for path in sorted(run_dir.rglob("*")):
                if path.is_file() and not path.name.startswith("best-"):
                    archive.add(path, arcname=str(path.relative_to(args.work.parent)))
            archive.add(args.out / f"{job}.log", arcname=f"{args.work.name}/{job}.log")
    save()
    failed = [job for job in jobs if summary["jobs"][job]["exit_code"] != 0]
    print(json.dumps(summary, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
