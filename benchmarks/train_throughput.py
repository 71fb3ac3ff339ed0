"""Training throughput: samples per second of forward + backward + AdamW step, per model.

Every family (s4, s4d, tcn, lstm) on every pipeline (raw, mfcc), side by side, with
the models of the shipped configs (kws/configs/FAMILY_PIPELINE.yaml), on one-second
clips of random audio at 16 kHz and the config's batch size. A step is what
``kws train`` does per batch: frontend, model, cross-entropy, backward, gradient
clipping and AdamW. ``--device cpu,cuda`` measures both; on a GPU the step runs
under bf16 autocast, as training does there.

    python benchmarks/train_throughput.py                 # CPU, full-size models
    python benchmarks/train_throughput.py --device cuda   # GPU
    python benchmarks/train_throughput.py --quick         # tiny shapes, seconds

``--config`` times given configs instead, each with the ``--set`` overrides that follow
it (as ``kws train`` reads them), so variants are measured side by side in one run:

    python benchmarks/train_throughput.py --batch-size 64 \
        --config s4d_raw --set model.d_model=48 --set model.n_layers=4 \
        --config s4_raw_pool --config s4_raw_pool --set model.d_model=64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from kws.data.speech_commands import TASKS
from kws.training.config import load_config
from kws.training.module import build_spotter

FAMILIES = ("s4", "s4d", "tcn", "lstm")
PIPELINES = ("raw", "mfcc")
#: --quick: small models on 0.1 s clips, enough to see that every row runs
QUICK = {"clip_seconds": 0.1, "batch_size": 2, "model": {"d_model": 16, "n_layers": 1}}


def quick_model(family: str) -> dict[str, Any]:
    """Small overrides each family accepts (TCN has blocks sized to its clip, not layers)."""
    model = dict(QUICK["model"])
    if family == "tcn":
        model.pop("n_layers")
        model["cover_seconds"] = QUICK["clip_seconds"]
    if family in ("s4", "s4d"):
        model["d_state"] = 8
    return model


def spotter_for(config: dict[str, Any], quick: bool):
    """(spotter, config) as ``config`` trains it (or tiny)."""
    if quick:
        config["model"].update(quick_model(config["model"]["name"]))
        if config["model"].get("pool"):  # one factor per layer, and quick has one layer
            config["model"]["pool"] = [2]
        config["data"]["clip_seconds"] = QUICK["clip_seconds"]
        config["data"]["batch_size"] = QUICK["batch_size"]
    spotter = build_spotter(config, list(TASKS[config["data"]["task"]]))
    return spotter, config


class ConfigAction(argparse.Action):
    """--config NAME starts a new row; each --set after it goes to that row."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        rows = getattr(namespace, "configs", None) or []
        if option_string == "--config":
            rows.append((value, []))
        elif not rows:
            parser.error("--set must follow a --config")
        else:
            rows[-1][1].append(value)
        namespace.configs = rows


def measure(family: str, pipeline: str, device: str, quick: bool, steps: int, warmup: int,
            batch_size: int | None = None, config: dict[str, Any] | None = None,
            label: str | None = None) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` untimed ones; one result row.

    ``config`` (a loaded training config) replaces the shipped FAMILY_PIPELINE one.
    """
    torch.manual_seed(0)
    config = config or load_config(f"{family}_{pipeline}")
    spotter, config = spotter_for(config, quick)
    spotter = spotter.to(device).train()
    batch = batch_size or config["data"]["batch_size"]
    rate = spotter.sample_rate
    wave = (0.1 * torch.randn(batch, spotter.clip_samples(rate))).to(device)
    target = torch.randint(0, len(spotter.labels), (batch,), device=device)
    optim = config["optim"]
    groups = spotter.model.param_groups(optim["lr"], optim["weight_decay"])
    optimizer = torch.optim.AdamW(groups, lr=optim["lr"])
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=optim["label_smoothing"])
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.startswith("cuda"))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = spotter(wave)
        loss = loss_fn(logits.float(), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(spotter.parameters(), optim["grad_clip"] or float("inf"))
        optimizer.step()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "family": family,
        "pipeline": pipeline,
        "label": label or f"{family} {pipeline}",
        "device": device,
        "params": sum(p.numel() for p in spotter.model.parameters()),
        "batch_size": batch,
        "clip_seconds": spotter.clip_seconds,
        "time_steps": int(spotter.frontend(wave[:1]).shape[1]),
        "ms_per_step": round(1000 * seconds / steps, 2),
        "samples_per_second": round(batch * steps / seconds, 2),
        # CPU time of this process: on a shared machine, wall-clock rates fall with the
        # load, this does not (with one thread it is the compute the step needs)
        "cpu_seconds_per_step": round(cpu_seconds / steps, 4),
    }


def print_table(rows: list[dict[str, Any]], devices: list[str]) -> None:
    """One line per model, one samples/s column per device."""
    by_model: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_model.setdefault(row["label"], {})[row["device"]] = row
    width = max(15, *(len(label) for label in by_model))
    head = f"{'model':<{width}} {'params':>9} {'batch':>5} {'L':>6}"
    print(head + "".join(f" {d + ' samples/s':>18}" for d in devices))
    for label, per_device in by_model.items():
        any_row = next(iter(per_device.values()))
        line = (f"{label:<{width}} {any_row['params']:>9,} {any_row['batch_size']:>5} "
                f"{any_row['time_steps']:>6}")
        for device in devices:
            row = per_device.get(device)
            line += f" {row['samples_per_second']:>18,.1f}" if row else f" {'-':>18}"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu",
                        help="comma-separated devices, e.g. cpu or cuda or cpu,cuda")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--config", action=ConfigAction, dest="configs", metavar="CONFIG",
                        help="time this training config (path or shipped name) instead; "
                             "repeatable")
    parser.add_argument("--set", action=ConfigAction, dest="configs", metavar="KEY=VALUE",
                        help="override for the --config before it, e.g. model.d_model=64")
    parser.add_argument("--quick", action="store_true", help="tiny models and clips")
    parser.add_argument("--steps", type=int, help="timed steps (default 3 on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, help="override the configs' batch sizes")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    devices = [d.strip() for d in args.device.split(",") if d.strip()]
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    pipelines = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    for name, values, known in (("--families", families, FAMILIES),
                                ("--pipelines", pipelines, PIPELINES)):
        unknown = sorted(set(values) - set(known))
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            parser.error(f"--device {device}: no CUDA GPU is available")
    if args.threads:
        torch.set_num_threads(args.threads)

    rows: list[dict[str, Any]] = []

    def done(row: dict[str, Any]) -> None:
        """Keep the row and say so at once: a CPU run of the raw models takes minutes."""
        rows.append(row)
        print(f"  {row['label']} on {row['device']}: {row['samples_per_second']} samples/s, "
              f"{row['cpu_seconds_per_step']} CPU s/step", file=sys.stderr, flush=True)

    for device in devices:
        steps = args.steps or (20 if device.startswith("cuda") else 3)
        if args.quick:
            steps = args.steps or 1
        for name, sets in args.configs or []:
            config = load_config(name, sets)
            family, pipeline = config["model"]["name"], config["features"].get("kind", "mfcc")
            label = " ".join([Path(name).stem, *sets])
            done(measure(family, pipeline, device, args.quick, steps, args.warmup,
                         args.batch_size, config, label))
        if args.configs:
            continue
        for family in families:
            for pipeline in pipelines:
                done(measure(family, pipeline, device, args.quick, steps, args.warmup,
                             args.batch_size))
    print(f"training throughput (forward + backward + AdamW), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads" + (", quick shapes" if args.quick else ""))
    print_table(rows, devices)
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "quick": args.quick, "devices": devices}
        if any(d.startswith("cuda") for d in devices):
            meta["gpu"] = torch.cuda.get_device_name()
        args.json.write_text(json.dumps({**meta, "results": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
