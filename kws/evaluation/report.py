"""Tables and model cards from evaluation results.

A checkpoint's evaluation is one entry of a ``kws eval`` report (see evaluate.py):
its name, model, pipeline, params, split, resampler, the command that made it and
one result per rate. That entry is read from, in rising priority:

1. ``meta["metrics"]["eval"]`` inside ``models/NAME.pt``;
2. ``models/NAME.eval.json``, a card with the same ``{"metrics": {"eval": entry}}``
   shape (``kws eval --cards`` writes it, so shipped weights need not be rewritten;
   not ``NAME.json``, which is the ONNX export's sidecar);
3. a report JSON passed with ``--eval``, matched to ``NAME.pt`` by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kws.evaluation.evaluate import CI_METHOD, SOURCE_RATE, result_at

CARD_SUFFIX = ".eval.json"
TABLE_COLUMNS = (
    "model", "pipeline", "params", "acc 16 kHz", "16 kHz 95% interval", "acc 8 kHz", "8k/16k",
    "8k reference", "min over sweep", "command",
)


@dataclass
class ModelRecord:
    """What is known about one model: its checkpoint meta and its evaluation entry."""

    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    entry: dict[str, Any] | None = None
    checkpoint: Path | None = None


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metadata (everything but the weights), without building the model."""
    from kws.training.checkpoint import read_checkpoint

    data = read_checkpoint(path)
    data = data.get("kws", data) if "pytorch-lightning_version" in data else data
    return {k: v for k, v in data.items() if k != "state_dict"}


def entry_from(value: Any, name: str) -> dict[str, Any] | None:
    """An eval entry from a stored value: an entry itself, or a whole report holding it."""
    if not isinstance(value, dict):
        return None
    if "checkpoints" in value:
        matches = [e for e in value["checkpoints"] if entry_name(e) == name]
        if not matches and len(value["checkpoints"]) == 1:
            matches = value["checkpoints"]
        return matches[0] if matches else None
    return value if "results" in value else None


def entry_name(entry: dict[str, Any]) -> str:
    """The checkpoint file's stem, which names the model (``name`` may carry a _2 suffix)."""
    return Path(entry["checkpoint"]).stem if entry.get("checkpoint") else entry["name"]


def card_path(folder: Path, name: str) -> Path:
    """Where a model's eval card lives: beside its checkpoint, clear of the export sidecar."""
    return folder / f"{name}{CARD_SUFFIX}"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a JSON {type(data).__name__}, not an object")
    return data


def collect(models_dir: str | Path | None, reports: Sequence[str | Path] = ()) -> list[ModelRecord]:
    """Every ``NAME.pt`` in ``models_dir`` with its best-known eval entry, plus report entries."""
    records: dict[str, ModelRecord] = {}
    if models_dir is not None:
        folder = Path(models_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"--models {folder}: no such folder")
        for pt in sorted(folder.glob("*.pt")):
            meta = checkpoint_meta(pt)
            record = ModelRecord(pt.stem, meta, None, pt)
            record.entry = entry_from((meta.get("metrics") or {}).get("eval"), pt.stem)
            card = card_path(pt.parent, pt.stem)
            if card.is_file():
                stored = (read_json(card).get("metrics") or {}).get("eval")
                record.entry = entry_from(stored, pt.stem) or record.entry
            records[pt.stem] = record
    for report_path in reports:
        report_path = Path(report_path)
        if not report_path.is_file():
            raise FileNotFoundError(f"--eval {report_path}: no such file")
        report = read_json(report_path)
        if "checkpoints" not in report:
            raise ValueError(f"{report_path}: not a kws eval report (no 'checkpoints')")
        for entry in report["checkpoints"]:
            name = entry_name(entry)
            if name not in records:
                ckpt = Path(entry.get("checkpoint", ""))
                meta = checkpoint_meta(ckpt) if ckpt.is_file() else {}
                records[name] = ModelRecord(name, meta, None, ckpt if ckpt.is_file() else None)
            records[name].entry = entry
    return list(records.values())


# -- the results table -----------------------------------------------------------------------


#: the checkout these cards live in; paths beside it are written relative to it
REPO = Path(__file__).resolve().parents[2]


def portable(text: str | None, repo: Path = REPO) -> str | None:
    """``text`` with absolute paths in or beside the checkout made relative to it.

    Cards are read from any clone: ``/home/me/kws/runs/x`` becomes ``runs/x`` and the
    data set beside the checkout, ``/home/me/shared/data``, becomes ``../shared/data``.
    """
    if text is None:
        return None
    return text.replace(f"{repo}/", "").replace(f"{repo.parent}/", "../")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def accuracy(entry: dict[str, Any] | None, rate: int) -> float | None:
    result = result_at(entry, rate) if entry else None
    return None if result is None else result["accuracy"]


def format_interval(interval: list[float] | None) -> str:
    """An ``accuracy_ci95`` pair as "85.3–94.6%" ("–" when there is none)."""
    return "–" if not interval else f"{100 * interval[0]:.1f}–{100 * interval[1]:.1f}%"


def table_row(record: ModelRecord) -> dict[str, Any]:
    """One row of the results table, as values (accuracies are fractions, None if unknown)."""
    entry, meta = record.entry or {}, record.meta
    acc16, acc8 = accuracy(entry, SOURCE_RATE), accuracy(entry, 8000)
    swept = [(r["accuracy"], r["sample_rate"]) for r in entry.get("results", [])
             if r["accuracy"] is not None]
    worst = min(swept) if swept else None
    return {
        "model": record.name,
        "family": entry.get("model") or (meta.get("model_config") or {}).get("family"),
        "pipeline": entry.get("pipeline") or (meta.get("feature_config") or {}).get("kind"),
        "params": entry.get("params"),
        "acc_16k": acc16,
        "ci_16k": (result_at(entry, SOURCE_RATE) or {}).get("accuracy_ci95") if entry else None,
        "acc_8k": acc8,
        "ratio_8k_16k": acc8 / acc16 if acc8 is not None and acc16 else None,
        # the model at its trained rate on the 8 kHz audio brought back (kws eval --reference)
        "ref_8k": (result_at(entry, 8000) or {}).get("reference_accuracy") if entry else None,
        "min_acc": worst[0] if worst else None,
        "min_rate": worst[1] if worst else None,
        "resampler": entry.get("resampler"),
        "command": portable(entry.get("command")),
    }


def markdown_table(rows: Iterable[dict[str, Any]]) -> str:
    """The results table in GitHub markdown."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        cells = [
            f"{row['model']} ({row['family']})" if row["family"] else row["model"],
            row["pipeline"] or "–",
            "–" if row["params"] is None else f"{row['params']:,}",
            _pct(row["acc_16k"]),
            format_interval(row["ci_16k"]),
            _pct(row["acc_8k"]),
            "–" if row["ratio_8k_16k"] is None else f"{row['ratio_8k_16k']:.3f}",
            _pct(row["ref_8k"]),
            "–" if row["min_acc"] is None else
            f"{_pct(row['min_acc'])} @ {row['min_rate'] / 1000:g}k",
            f"`{row['command']}`" if row["command"] else "not evaluated",
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def sweep_table(report: dict[str, Any]) -> str:
    """A report at a glance: one row per checkpoint, one column per rate (markdown)."""
    rates = report["rates"]
    lines = ["| checkpoint | " + " | ".join(f"{r / 1000:g}k" for r in rates) + " |",
             "|---|" + "---:|" * len(rates)]
    for entry in report["checkpoints"]:
        cells = [_pct(accuracy(entry, r)) for r in rates]
        lines.append(f"| {entry['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- model cards -----------------------------------------------------------------------------


def _seconds(value: float) -> str:
    value = float(value)
    if value >= 3600:
        return f"{value / 3600:.2f} h"
    return f"{value / 60:.1f} min" if value >= 60 else f"{value:.1f} s"


def _facts(values: dict[str, Any]) -> list[str]:
    """Bullets for the plain items of a dict (a dict of plain values becomes one line);
    times in seconds made readable; deeper structures (the training config) are left out."""
    bullets = []
    for key, value in values.items():
        if isinstance(value, dict) and not any(isinstance(v, (dict, list)) for v in value.values()):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        if isinstance(value, (dict, list)) or value is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "second" in key:
            value = _seconds(value) if value < 60 else f"{_seconds(value)} ({value:g} s)"
        elif isinstance(value, float):
            value = f"{value:.4g}"
        bullets.append(f"- {key}: `{portable(value)}`" if key == "command" else f"- {key}: {value}")
    return bullets


def with_schedule(train: dict[str, Any]) -> dict[str, Any]:
    """``train`` with its ``epochs`` set against the configured schedule where they differ:
    a checkpoint records the epochs done when it was saved, and the best one is often
    saved before the schedule ends, which a bare number would hide. A fine-tuned run
    (``init_from``) also says what it started from, since its epochs and time are only
    the fine-tuning's."""
    epochs = train.get("epochs")
    config = train.get("config") or {}
    scheduled = (config.get("trainer") or {}).get("max_epochs")
    if (isinstance(epochs, (int, float)) and isinstance(scheduled, int) and scheduled > 0
            and epochs < scheduled):
        train = {**train, "epochs": f"{epochs:g} when this checkpoint was saved, of a "
                                    f"{scheduled}-epoch schedule"}
    if config.get("init_from"):
        train = {"started from": f"`{portable(config['init_from'])}` (init_from; epochs and "
                 "time below are the fine-tuning's)", **train}
    return train


REFERENCE_NOTE = (
    "Reference: the same audio, resampled back to {rate} Hz and scored there with nothing "
    "rescaled (`kws eval --reference`): what the model gets from the band each rate carries. "
    "Zero-shot / reference is what the zero-shot step itself keeps."
)


def rate_table(entry: dict[str, Any]) -> list[str]:
    """The card's accuracy-per-rate table; with reference and zero-shot/reference columns
    where the evaluation measured them."""
    with_reference = any(r.get("reference_accuracy") is not None for r in entry["results"])
    head = "| sample rate | accuracy | 95% interval (speakers) |"
    if with_reference:
        head += " reference | 95% interval | zero-shot / reference |"
    head += " clips | rate factor |"
    lines = [head, "|" + "---:|" * (head.count("|") - 1)]
    for result in entry["results"]:
        cells = [str(result["sample_rate"]), _pct(result["accuracy"]),
                 format_interval(result.get("accuracy_ci95"))]
        if with_reference:
            ref = result.get("reference_accuracy")
            kept = result["accuracy"] / ref if ref and result["accuracy"] is not None else None
            cells += [_pct(ref), format_interval(result.get("reference_accuracy_ci95")),
                      "–" if kept is None else f"{kept:.3f}"]
        cells += [str(result["n_clips"]), f"{result['rate_factor']:.4g}"]
        lines.append("| " + " | ".join(cells) + " |")
    for skip in entry.get("skipped", []):
        blanks = " |" * (head.count("|") - 3)
        lines.append(f"| {skip['sample_rate']} | skipped: {skip['reason']} |{blanks}")
    return lines


def model_card(record: ModelRecord) -> str:
    """The markdown card of one model: data, split, size, training, accuracy per rate, commands."""
    meta, entry = record.meta, record.entry or {}
    manifest = meta.get("split") or {}
    labels = meta.get("labels") or entry.get("labels") or []
    row = table_row(record)
    out = [f"# {record.name}", ""]
    params = "?" if row["params"] is None else f"{row['params']:,}"
    task = meta.get("task") or entry.get("task")
    rate = entry.get("trained_rate") or (meta.get("feature_config") or {}).get("sample_rate")
    out.append(
        f"{row['family']} on {row['pipeline']} features, task {task} ({len(labels)} classes: "
        f"{', '.join(labels)}), {params} parameters, trained at {rate} Hz."
    )
    out += ["", "## Data and split", ""]
    if manifest:
        out.append(
            f"- trained on: Speech Commands {manifest.get('version')} "
            f"({manifest.get('layout')} layout), split by {manifest.get('rule')} "
            f"(val {manifest.get('val_percent')}%, test {manifest.get('test_percent')}%, "
            f"seed {manifest.get('seed')})"
        )
        for split, counts in (manifest.get("counts") or {}).items():
            n_speakers = len((manifest.get("speakers") or {}).get(split, []))
            out.append(f"- {split}: {sum(counts.values())} clips, {n_speakers} speakers")
        for extra in manifest.get("extra_train") or []:
            out.append(
                f"- train also: {sum(extra['counts'].values())} word clips "
                f"({extra['counts'].get('_unknown_', 0)} of them `_unknown_`), "
                f"{len(extra['speakers'])} speakers, from `{portable(extra['root'])}` "
                f"({extra['layout']} layout {extra['version']}; clips of held-out speakers "
                f"dropped: {extra['dropped']['clips']})"
            )
    split = entry.get("split") or {}
    if split:
        out.append(
            f"- evaluated on: the {split.get('name')} split of `{portable(split.get('data'))}`, "
            f"{split.get('n_clips')} clips, {split.get('n_speakers')} speakers "
            f"({split.get('rule')})"
        )
    train = meta.get("train") or {}
    if train:
        out += ["", "## Training", "", *_facts(with_schedule(train))]
    metrics = {k: v for k, v in (meta.get("metrics") or {}).items() if k != "eval"}
    if _facts(metrics):
        out += ["", "## Metrics at training time", "", *_facts(metrics)]
    if entry.get("results"):
        out += [
            "", f"## Accuracy at every rate (zero-shot, resampler {entry.get('resampler')})", "",
            f"{entry.get('rate_policy', '')}", "",
            *rate_table(entry),
        ]
        if any(result.get("accuracy_ci95") for result in entry["results"]):
            out += ["", f"Interval: {CI_METHOD}."]
        if any(result.get("reference_accuracy") is not None for result in entry["results"]):
            out += ["", REFERENCE_NOTE.format(rate=entry.get("trained_rate"))]
    out += streaming_section(streaming_facts(record.checkpoint))
    out += clip_section(record.checkpoint)
    commands = [("train", train.get("command")), ("evaluate", entry.get("command"))]
    if any(cmd for _, cmd in commands):
        out += ["", "## Commands", ""]
        out += [f"- {what}: `{portable(cmd)}`" for what, cmd in commands if cmd]
    return "\n".join(out) + "\n"


def _json_files(folder: Path, pattern: str) -> list[tuple[Path, dict[str, Any]]]:
    """(path, object) for the readable JSON objects in ``folder`` matching ``pattern``."""
    found = []
    for path in sorted(folder.glob(pattern)) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # a card must not fail on an unrelated broken file
        if isinstance(data, dict):
            found.append((path, data))
    return found


def names_export(path: Any, onnx: Path) -> bool:
    """Whether a benchmark's model ``path`` is the export ``onnx`` (``export/NAME.onnx``)."""
    named = Path(str(path or ""))
    return named.name == onnx.name and named.parent.name == "export"


def model_exports(checkpoint: Path, kind: str) -> list[tuple[Path, dict[str, Any]]]:
    """(ONNX path, sidecar) of the ``kind`` exports in ``export/`` beside the checkpoint's
    folder whose ``source_checkpoint`` is this file."""
    root = Path(checkpoint).resolve().parent.parent
    return [(sidecar_path.with_suffix(".onnx"), sidecar)
            for sidecar_path, sidecar in _json_files(root / "export", "*.json")
            if sidecar.get("kind") == kind
            and Path(str(sidecar.get("source_checkpoint") or "")).name == Path(checkpoint).name]


def streaming_facts(checkpoint: Path | None) -> list[dict[str, Any]]:
    """The streaming exports made from ``checkpoint`` and what was measured on them.

    Looks where this repository keeps them, beside the checkpoint's folder:
    ``export/*.json`` sidecars whose ``source_checkpoint`` is this file, speed rows of
    ``results/bench_stream*.json`` (``benchmarks/bench_stream.py``, one thread) and
    detection reports there (``kws bench stream --json``) that name the export, alone
    or as a member of an ensemble (a comma list). A report names it by a path whose
    folder is ``export`` (relative, or absolute in another checkout): a same-named file
    elsewhere, a study's candidate in ``runs/`` say, is another model.
    """
    if checkpoint is None:
        return []
    root = Path(checkpoint).resolve().parent.parent
    results = _json_files(root / "results", "bench_stream*.json")
    facts = []
    for onnx, sidecar in model_exports(checkpoint, "streaming"):
        rate, chunk = sidecar.get("sample_rate"), sidecar.get("chunk_samples")
        fact: dict[str, Any] = {
            "export": f"export/{onnx.name}", "sample_rate": rate,
            "chunk_ms": 1000 * chunk / rate if rate and chunk else None,
            "bytes": onnx.stat().st_size if onnx.is_file() else None, "speed": [],
            "detection": [],
        }
        for path, report in results:
            for row in report.get("rows") or []:
                if names_export(row.get("path"), onnx) and row.get("threads") == 1:
                    fact["speed"].append({"source": f"results/{path.name}",
                                          "step_rtf": row.get("step1_rtf"),
                                          "detector_rtf": row.get("detector_rtf"),
                                          "load_1min": row.get("load_1min")})
            members = [m.strip() for m in str(report.get("model") or "").split(",")]
            if any(names_export(m, onnx) for m in members) and report.get("results"):
                fact["detection"].append({"source": f"results/{path.name}",
                                          "with": [Path(m).name for m in members
                                                   if not names_export(m, onnx)],
                                          "split": report.get("split"),
                                          "negatives": report.get("negatives") or [],
                                          "minutes": (report.get("stream") or {}).get(
                                              "duration_s", 0) / 60,
                                          "results": report["results"],
                                          "curve": report.get("best_within") or [],
                                          "verifier": report.get("verifier")})
        facts.append(fact)
    return facts


def clip_section(checkpoint: Path | None) -> list[str]:
    """Markdown lines naming the clip exports made from ``checkpoint`` (``export/*.json``
    sidecars of kind ``clip``): one second in, logits out, what ``--verifier`` runs."""
    if checkpoint is None:
        return []
    lines = []
    for onnx, sidecar in model_exports(checkpoint, "clip"):
        size = f"{onnx.stat().st_size / 1e6:.2f} MB" if onnx.is_file() else "–"
        parity = (sidecar.get("parity") or {}).get("max_rel_err")
        checked = "" if parity is None else f", parity {parity:.1e} against PyTorch"
        lines.append(f"- `export/{onnx.name}`: {sidecar.get('sample_rate')} Hz, "
                     f"{sidecar.get('clip_samples')} samples per call, {size}{checked}")
    if not lines:
        return []
    return ["", "## Clip exports", "",
            "One clip in, logits out: what `kws stream --verifier` runs on the window after "
            "each candidate of a streaming detector.", "", *lines]


def streaming_section(facts: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of a card's streaming section (none without exports)."""
    if not facts:
        return []
    out = ["", "## Streaming exports", "",
           "Real-time factor: CPU seconds per second of audio on one thread "
           "(`benchmarks/bench_stream.py`); the detector runs two staggered state copies.", "",
           "| export | rate | chunk | size | step RTF | detector RTF | measured in |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for fact in facts:
        size = "–" if fact["bytes"] is None else f"{fact['bytes'] / 1e6:.2f} MB"
        chunk = "–" if fact["chunk_ms"] is None else f"{fact['chunk_ms']:g} ms"
        speeds = fact["speed"] or [{"step_rtf": None, "detector_rtf": None, "source": "–"}]
        for speed in speeds:
            step = "–" if speed["step_rtf"] is None else f"{speed['step_rtf']:.3f}"
            detector = "–" if speed["detector_rtf"] is None else f"{speed['detector_rtf']:.3f}"
            out.append(f"| `{fact['export']}` | {fact['sample_rate']} Hz | {chunk} | {size} "
                       f"| {step} | {detector} | {speed['source']} |")
    for fact in facts:
        for run in fact["detection"]:
            rows = []
            for r in run["results"]:
                at = f"{r['threshold']:g}" if r.get("threshold") is not None else "per-keyword"
                rows.append(f"{at}: {100 * r['hit_rate']:.1f}% hits, "
                            f"{r['false_alarms_per_hour']:.0f} FA/h")
            who = f"`{fact['export']}`"
            if run.get("with"):  # an ensemble: this export's posteriors averaged with others'
                who += (f" averaged with {len(run['with'])} other export(s) "
                        f"({', '.join(run['with'])})")
            verifier = run.get("verifier")
            if verifier:  # a cascade: the thresholds and the curve are the verifier's
                who += (f" opening candidates at {verifier['candidate_threshold']:g}, each "
                        f"verified by `{portable(verifier['model'])}` "
                        f"{verifier['delay_ms']:g} ms later (verifier thresholds)")
            more = "".join(f" and other words from `{portable(folder)}`"
                           for folder in run.get("negatives") or [])
            out += ["", f"Detection, {who} on a {run['minutes']:.0f}-min stream of "
                    f"{run['split']} speakers{more} ({run['source']}): " + "; ".join(rows) + "."]
            points = [f"{100 * p['hit_rate']:.1f}% at <= {p['fa_per_hour_at_most']:g}"
                      for p in run.get("curve", []) if p.get("hit_rate") is not None]
            if points:
                out.append("Best hit rate per false-alarm budget (FA/h; one threshold for all "
                           "keywords, swept in steps of 0.005 or finer): "
                           + ", ".join(points) + ".")
    return out


def write_card(record: ModelRecord, folder: str | Path | None = None) -> list[Path]:
    """Write ``NAME.md`` (and ``NAME.eval.json`` holding ``{"metrics": {"eval": entry}}``)."""
    if folder is None:
        if record.checkpoint is None:
            raise ValueError(f"{record.name}: no checkpoint path, so give the card's folder")
        folder = record.checkpoint.parent
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / f"{record.name}.md"]
    written[0].write_text(model_card(record))
    if record.entry is not None:
        metrics = {**(record.meta.get("metrics") or {}), "eval": record.entry}
        card = {"name": record.name, "checkpoint": str(record.checkpoint or ""), "metrics": metrics}
        written.append(card_path(folder, record.name))
        written[1].write_text(json.dumps(card, indent=1) + "\n")
    return written
