"""Write the result notebooks from the cells below, with no outputs.

The cells live here, as plain text, so that a change to a notebook is a readable
diff of this file, and the committed ``.ipynb`` files never carry outputs, images
or execution counts. Edit a cell here, then run

    .venv/bin/python notebooks/build.py          # rewrite notebooks/*.ipynb
    .venv/bin/python notebooks/build.py --check  # exit 1 if they are out of date

``tests/test_notebooks_clean.py`` fails when the committed notebooks differ from
what this script writes (for example after saving an executed notebook from Jupyter).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

#: where each notebook looks for models and data; the same first cell in all three
SETUP = '''\
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import kws
from kws.data import find_data_root

REPO = Path(kws.__file__).resolve().parents[1]
MODELS = Path(os.environ.get("KWS_MODELS_DIR", REPO / "models"))
EXPORT = Path(os.environ.get("KWS_EXPORT_DIR", REPO / "export"))
plt.rcParams.update({"figure.dpi": 90, "grid.alpha": 0.3})
try:
    DATA = find_data_root(task="sc12")
    print(f"data: {DATA}")
except FileNotFoundError as err:
    DATA = None
    print(f"No Speech Commands data, so the cells that need it are skipped.\\n{err}")
print(f"models: {MODELS}\\nexports: {EXPORT}")'''


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(text.strip("\n"))


DATA_NOTEBOOK = [
    md("""
# 1. The data: Speech Commands as the models see it

What the spotters are trained and tested on: the classes, how many clips each
split holds, how many speakers, what a clip looks like as a waveform, as a
log-mel spectrogram and as the MFCC the MFCC models read, and what training
augmentation does to a clip. Everything comes from `kws.data` and
`kws.features`; `kws data stats` prints the same counts on the command line.

The data folder is found as `kws` finds it (`$KWS_DATA_DIR`, `data/`,
`../shared/data`); without one the data cells say so and do nothing.
"""),
    code(SETUP),
    md("""
## Classes, splits and speakers

The 12-class task (SC12): ten keywords, `_unknown_` (other words) and
`_silence_` (background noise). Splits are by speaker, with the data set's own
hashing rule, so no speaker is in two splits.
"""),
    code("""
import torch

from kws.data import SPLITS, SpeechCommands, dataset_stats

if DATA is None:
    print("skipped: no data folder")
else:
    data = SpeechCommands(DATA, "sc12")
    stats = dataset_stats(data, read_samples=False)
    print(data.describe())
    print(f"{stats['clips']} clips in {stats['classes']} classes from "
          f"{stats['speakers_total']} speakers; sample rates {stats['sample_rates']}; "
          f"speakers disjoint across splits: {stats['speakers_disjoint']}\\n")
    print(f"{'split':<6} {'clips':>6} {'speakers':>9}")
    for split in SPLITS:
        print(f"{split:<6} {stats['split_clips'][split]:>6} {stats['speakers'][split]:>9}")
    print("\\nclip lengths (s):", stats["length_histogram"])
"""),
    code("""
if DATA is not None:
    fig, ax = plt.subplots(figsize=(10, 3.5))
    bottom = np.zeros(len(data.labels))
    for split in SPLITS:
        counts = np.array([stats["counts"][split][label] for label in data.labels])
        ax.bar(data.labels, counts, bottom=bottom, label=f"{split} ({counts.sum()})")
        bottom += counts
    ax.set_ylabel("clips")
    ax.grid(axis="y")
    ax.set_title(f"Clips per class and split: {DATA.name}")
    ax.legend()
    ax.tick_params(axis="x", rotation=30)
    plt.show()
"""),
    md("""
## A few clips: waveform, log-mel spectrogram, MFCC

The raw-audio models read the waveform itself, 16,000 steps per second. The
MFCC models read 20 coefficients of 40 log-mel bands (20 Hz to 4 kHz, 25 ms
windows every 10 ms: 98 frames per clip), computed by the same frontend that
runs in the exported ONNX models.
"""),
    code("""
from IPython.display import Audio, display

from kws.data import ClipDataset
from kws.features import FeatureConfig, build_frontend

SHOW = ["yes", "stop", "_unknown_", "_silence_"]
mfcc = build_frontend(FeatureConfig("mfcc"))

if DATA is not None:
    chosen, waves = [], []
    for label in SHOW:
        # of the first ten test clips, the one with the most energy in its middle 0.6 s,
        # so that the word is not cut off at an edge
        clips = [c for c in data.clips("test") if c.label == label][:10]
        audio = torch.stack([w for w, _ in ClipDataset(clips)])
        best = int(audio[:, 3200:12800].square().mean(1).argmax())
        chosen.append(clips[best])
        waves.append(audio[best])
    waves = torch.stack(waves)
    with torch.no_grad():
        log_mel, coeffs = mfcc.log_mel(waves), mfcc(waves)
    seconds = np.arange(waves.shape[1]) / 16000
    # frame j covers [10 j, 10 j + 25) ms: cell edges halfway between frame centres
    edges = 0.0075 + 0.01 * np.arange(log_mel.shape[1] + 1)
    fig, axes = plt.subplots(3, len(chosen), figsize=(13, 7), sharex="col")
    for col, clip in enumerate(chosen):
        axes[0, col].plot(seconds, waves[col], linewidth=0.5)
        axes[0, col].set_title(f"{clip.label}: {clip.path.name}", fontsize=8)
        axes[1, col].pcolormesh(edges, np.arange(41), log_mel[col].T, cmap="magma",
                                vmin=-130, vmax=-40)
        axes[2, col].pcolormesh(edges, np.arange(21), coeffs[col].T, cmap="coolwarm",
                                vmin=-3, vmax=3)
        axes[2, col].set_xlabel("time (s)")
    axes[0, 0].set_ylabel("waveform")
    axes[1, 0].set_ylabel("log-mel band")
    axes[2, 0].set_ylabel("MFCC")
    fig.tight_layout()
    plt.show()
    for clip, wave in zip(chosen, waves, strict=True):
        print(clip.label)
        display(Audio(wave.numpy(), rate=16000))
"""),
    md("""
## What augmentation does to a clip

Training draws, per example and epoch, a speed change (resample and crop back
to one second), a time shift of up to 100 ms, and background noise at a random
SNR. Here each step is applied alone with a fixed setting, then all of them as
the augmenter draws them. The noise comes from the training split only.
"""),
    code("""
from kws.data import AugmentDraw, Augmenter

if DATA is not None:
    noise = data.load_noise("train")
    augmenter = Augmenter(noise, seed=0, speed=(0.85, 1.15), noise_prob=1.0, snr_db=(0, 20))
    clip = waves[0].numpy()
    drawn = augmenter.draw(index=3, length=clip.size)
    versions = {
        "original": clip,
        "speed x1.15": augmenter.apply(clip, AugmentDraw(1.15, 0, None, 0, 0.0)),
        "shift +100 ms": augmenter.apply(clip, AugmentDraw(None, 1600, None, 0, 0.0)),
        "noise at 5 dB SNR": augmenter.apply(clip, AugmentDraw(None, 0, 0, 0, 5.0)),
        "as drawn": augmenter.apply(clip, drawn),
    }
    print(f"{len(noise)} noise recordings for training; the draw for example 3: {drawn}")
    fig, axes = plt.subplots(2, len(versions), figsize=(15, 4.5), sharex=True)
    for col, (name, audio) in enumerate(versions.items()):
        axes[0, col].plot(seconds, audio, linewidth=0.5)
        axes[0, col].set_ylim(-1, 1)
        axes[0, col].set_title(name, fontsize=9)
        with torch.no_grad():
            bands = mfcc.log_mel(torch.from_numpy(audio)[None])[0]
        axes[1, col].pcolormesh(edges, np.arange(41), bands.T, cmap="magma",
                                vmin=-130, vmax=-40)
        axes[1, col].set_xlabel("time (s)")
    axes[0, 0].set_ylabel("waveform")
    axes[1, 0].set_ylabel("log-mel band")
    fig.tight_layout()
    plt.show()
    for name, audio in versions.items():
        print(name)
        display(Audio(audio, rate=16000, normalize=False))
"""),
]


RATES_NOTEBOOK = [
    md("""
# 2. Zero-shot sample rates: the S4 story

Every model here was trained on 16 kHz audio and is tested, without any
retraining, on the same clips resampled to other rates. On raw audio a time
step is one sample, so S4 and S4D multiply their step size dt by
trained_rate / input_rate and see the same continuous-time signal; the TCN and
the LSTM have no notion of time between samples and see a stretched or squeezed
signal. MFCC pipelines keep their 25 ms / 10 ms framing and their bands in Hz,
so at any rate from 8 kHz up their input barely changes.

Accuracies come from `kws eval` results shipped with the checkpoints in
`models/` (`NAME.json` cards, or eval reports). A shipped checkpoint without one
is evaluated here on a few test clips if it is cheap (MFCC); raw-audio models
take minutes per rate on a CPU, so for them the notebook prints the command.
"""),
    code(SETUP),
    md("""
## Which models are shipped
"""),
    code("""
import json

import torch
from IPython.display import Markdown, display

from kws.evaluation.report import collect, markdown_table, table_row
from kws.models import MODEL_FAMILIES, PIPELINES

# kws eval reports (NAME.json cards hold one entry and are read by collect itself)
reports = [p for p in sorted(MODELS.glob("*.json")) if "checkpoints" in json.loads(p.read_text())]
records = collect(MODELS, reports) if MODELS.is_dir() else []
rows = {r.name: table_row(r) for r in records}
print(f"{'model':<6} {'pipeline':<9} checkpoints")
for family in MODEL_FAMILIES:
    for pipeline in PIPELINES:
        found = [f"{r.name} ({'evaluated' if r.entry else 'no eval results shipped'})"
                 for r in records if (rows[r.name]["family"], rows[r.name]["pipeline"])
                 == (family, pipeline)]
        print(f"{family:<6} {pipeline:<9} {', '.join(found) or 'missing (not shipped yet)'}")
print(f"\\nreports read: {[p.name for p in reports] or 'none'}")
"""),
    code("""
from kws.data import SpeechCommands
from kws.evaluation import DEFAULT_RATES, evaluate_checkpoints

#: pipelines cheap enough to evaluate here, and on how many clips
LIVE_PIPELINES, LIVE_CLIPS = ("mfcc",), 48


def split_for(meta):
    \"\"\"The checkpoint's own test split when it was trained on this folder's layout; else
    every clip, as a test-set folder holds only speakers of the official test split.\"\"\"
    trained_on = (meta.get("split") or {}).get("layout")
    return "test" if trained_on == SpeechCommands(DATA, meta["task"]).layout else "all"


live = [r for r in records if r.entry is None and r.checkpoint is not None]
if live and DATA is None:
    print("skipped the live evaluation: no data folder")
for record in live if DATA is not None else []:
    row = rows[record.name]
    if row["pipeline"] not in LIVE_PIPELINES:
        print(f"{record.name}: too slow to evaluate here; for its card, run\\n"
              f"  kws eval {record.checkpoint} --data {DATA} --cards")
        continue
    split = split_for(record.meta)
    try:
        report = evaluate_checkpoints([record.checkpoint], DATA, split, DEFAULT_RATES, "soxr",
                                      limit=LIVE_CLIPS)
    except ValueError as err:  # e.g. its split manifest does not fit this folder
        print(f"{record.name}: not evaluated here: {err}")
        continue
    record.entry = report["checkpoints"][0]
    rows[record.name] = table_row(record)
    print(f"{record.name}: evaluated here on {LIVE_CLIPS} clips of the {split} split "
          f"in {report['seconds']['total']:.0f} s")
"""),
    md("""
## Accuracy against sample rate

Left: raw audio, where S4/S4D rescale dt. Right: MFCC. 16 kHz, the training
rate, is dashed; the table below gives each number with the command that made it.
"""),
    code("""
evaluated = [r for r in records if r.entry is not None]
if not evaluated:
    print("no accuracy to show: no shipped checkpoint has eval results"
          + ("" if DATA is not None else ", and without data none can be evaluated here"))
else:
    colours = dict(zip(MODEL_FAMILIES, plt.cm.tab10.colors, strict=False))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, pipeline in zip(axes, PIPELINES, strict=True):
        for record in evaluated:
            row = rows[record.name]
            if row["pipeline"] != pipeline:
                continue
            points = sorted((r["sample_rate"], 100 * r["accuracy"])
                            for r in record.entry["results"] if r["accuracy"] is not None)
            clips = record.entry["results"][0]["n_clips"]
            ax.plot(*zip(*points, strict=True), marker="o", color=colours[row["family"]],
                    label=f"{record.name} ({clips} clips)")
        ax.axvline(16000, color="0.4", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlim(7000, 55000)
        ax.set_xticks(DEFAULT_RATES, [f"{r / 1000:.0f}" for r in DEFAULT_RATES])
        ax.minorticks_off()
        ax.grid()
        ax.set_title(f"{pipeline} input")
        ax.set_xlabel("sample rate of the test audio (kHz, log scale)")
        ax.set_ylim(0, 100)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.text(0.5, 0.5, f"no {pipeline} results", ha="center", transform=ax.transAxes,
                    bbox={"facecolor": "white", "edgecolor": "none"})
    axes[0].set_ylabel("accuracy (%)")
    fig.suptitle("Zero-shot accuracy at resampled rates (trained at 16 kHz)")
    fig.tight_layout()
    plt.show()
    display(Markdown(markdown_table([rows[r.name] for r in evaluated])))
"""),
    md("""
## An S4 kernel at 16 kHz and at 8 kHz

An S4 layer is a bank of continuous-time systems; what it applies to its input
is their impulse response sampled with step dt, the convolution kernel. At
8 kHz with dt doubled (rate factor 2) the kernel has half the taps and each tap
covers twice the time, so kernel / rate_factor traces the same curve against
time in milliseconds, and the frequency responses agree over the band both
rates share. Without the rescaling (grey) the 8 kHz kernel is the 16 kHz one
played at half speed: every timescale the model learned is off by two, and its
frequency response is the 16 kHz one squeezed into half the band.

How far the match goes is a property of the discretisation: S4D's zero-order
hold is exact for any dt (an 8 kHz tap is the sum of the two 16 kHz taps it
covers), while S4's bilinear transform warps frequencies near the Nyquist
frequency, so its 8 kHz response drifts from the 16 kHz one above a kHz or two.
"""),
    code("""
from kws.models import build_model
from kws.training.checkpoint import load_spotter

raw_s4 = [r for family in ("s4", "s4d") for r in records if r.checkpoint
          and (rows[r.name]["family"], rows[r.name]["pipeline"]) == (family, "raw")]
if raw_s4:
    model = load_spotter(raw_s4[0].checkpoint)[0].model
    print(f"kernels of the shipped checkpoint {raw_s4[0].name}: {model.summary()}")
else:
    torch.manual_seed(0)
    model = build_model("s4", 1, 12, "raw")
    print("no raw-audio S4 checkpoint is shipped, so these are the kernels of a freshly built "
          f"(untrained) S4 model, with its initial dt: {model.summary()}")
layer = model.blocks[0].ssm
versions = {  # name: (sample rate, rate factor); kernels one second long
    "16 kHz": (16000, 1.0), "8 kHz, dt x 2": (8000, 2.0), "8 kHz, dt unchanged": (8000, 1.0)}
with torch.no_grad():
    dt = torch.exp(layer.log_dt)
    kernels = {name: layer.kernel(rate, rf)[0] for name, (rate, rf) in versions.items()}
# one second of kernel, so rfft bin k is k Hz
responses = {name: torch.fft.rfft(kernels[name], n=rate).abs()
             for name, (rate, _) in versions.items()}
reference = responses["16 kHz"]
print("\\nrelative error of |H(f)| against 16 kHz, median over the layer's channels:")
for top in (1000, 2000, 3500):
    ref = reference[:, :top]
    errors = {name: ((r[:, :top] - ref).norm(dim=1) / ref.norm(dim=1)).median().item()
              for name, r in responses.items() if name != "16 kHz"}
    print(f"  0-{top} Hz: " + ", ".join(f"{name} {e:.3f}" for name, e in errors.items()))

channels = dt.argsort()[[len(dt) // 10, len(dt) // 3, 2 * len(dt) // 3]].tolist()  # by dt
styles = {"16 kHz": dict(linewidth=2), "8 kHz, dt x 2": dict(linewidth=1),
          "8 kHz, dt unchanged": dict(linewidth=1, color="0.6", linestyle="--")}
fig, axes = plt.subplots(2, 3, figsize=(14, 6.5))
for col, h in enumerate(channels):
    span_ms = min(1000.0, 3 / dt[h].item() / 16)  # three times 1/dt steps at 16 kHz
    for name, (rate, rf) in versions.items():
        taps = int(span_ms * rate / 1000)
        axes[0, col].plot(np.arange(taps) * 1000 / rate, kernels[name][h, :taps] / rf,
                          label=name, **styles[name])
        axes[1, col].plot(20 * torch.log10(responses[name][h] + 1e-12), label=name,
                          **styles[name])
    axes[0, col].set_title(f"channel {h}: dt = {dt[h]:.2g}, 1/dt steps = {1 / dt[h] / 16:.2g} ms",
                           fontsize=9)
    axes[0, col].set_xlabel("time (ms)")
    axes[1, col].set_xscale("log")
    axes[1, col].set_xlim(20, 8000)
    axes[1, col].set_xlabel("frequency (Hz, log scale)")
    for ax in axes[:, col]:
        ax.grid()
axes[0, 0].set_ylabel("kernel / rate factor")
axes[1, 0].set_ylabel("|H(f)| (dB)")
axes[0, 0].legend(fontsize=8)
fig.tight_layout()
plt.show()
"""),
    md("""
## What the three resamplers do

`kws eval --resampler` offers `sinc` (polyphase FIR) and `soxr` (high quality),
which remove what lies above the new Nyquist frequency before they drop
samples, and `decimate`, which keeps every other sample with no filter, as the S4
reference code does for its 8 kHz test. A chirp sweeping 0 to 8 kHz shows the
difference: after 16k -> 8k, content above 4 kHz is gone with soxr, faint with
sinc (its shorter filter lets some through), and folds back at full strength as a
falling mirror image with decimate: aliasing.
"""),
    code("""
from scipy.signal import chirp

from kws.data.audio import resample

rate, seconds = 16000, 2.0
t = np.arange(int(rate * seconds)) / rate
sweep = (0.5 * chirp(t, f0=0, t1=seconds, f1=8000)).astype(np.float32)
METHODS = ("sinc", "soxr", "decimate")
outputs = {m: resample(sweep, rate, 8000, m) for m in METHODS}

fig, axes = plt.subplots(1, 4, figsize=(15, 3.3), sharey=True)
axes[0].specgram(sweep, NFFT=256, Fs=rate, noverlap=192, cmap="magma", vmin=-120)
axes[0].set_title("chirp at 16 kHz")
for ax, (method, out) in zip(axes[1:], outputs.items(), strict=True):
    ax.specgram(out, NFFT=128, Fs=8000, noverlap=96, cmap="magma", vmin=-120)
    ax.set_title(f"{method} to 8 kHz")
for ax in axes:
    ax.set_xlabel("time (s)")
axes[0].set_ylabel("frequency (Hz)")
fig.tight_layout()
plt.show()

# The chirp is at 4000 * t Hz: 0-3.5 kHz until 0.875 s, 4.5-7.6 kHz from 1.125 to 1.9 s
# (the last 0.1 s is left out: the chirp stops there with a broadband click).
for method, out in outputs.items():
    out = out.astype(np.float64)
    below, above = out[: int(0.875 * 8000)], out[int(1.125 * 8000) : int(1.9 * 8000)]
    leak = 10 * np.log10(np.mean(above**2) / np.mean(below**2))
    print(f"{method:>8}: output power while the input is at 4.5-7.6 kHz: {leak:7.1f} dB "
          "relative to 0-3.5 kHz")
"""),
    md("""
What an MFCC model sees of it: the log-mel bands of real test clips at 8 kHz,
against the same clips at 16 kHz (the bands are the same 40 from 20 Hz to
4 kHz at both rates). Band-limited resampling leaves them unchanged but for
the last band at the filter edge; decimation adds the folded 4-8 kHz energy to
the upper bands.
"""),
    code("""
from kws.data import ClipDataset
from kws.features import FeatureConfig, build_frontend

if DATA is None:
    print("skipped: no data folder")
else:
    clips = SpeechCommands(DATA, "sc12").clips("test")[::8]
    waves = torch.stack([w for w, _ in ClipDataset(clips)])
    frontend = build_frontend(FeatureConfig("mfcc"))
    with torch.no_grad():
        at_16k = frontend.log_mel(waves)
        shift = {m: (frontend.log_mel(torch.from_numpy(resample(waves.numpy(), 16000, 8000, m)),
                                      8000) - at_16k).abs().mean(dim=(0, 1)) for m in METHODS}
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for method, db in shift.items():
        ax.plot(db, marker=".", label=method)
    ax.set_xlabel("mel band (0: 20 Hz ... 39: 4 kHz)")
    ax.set_ylabel("mean |log-mel 8k - 16k| (dB)")
    ax.set_title(f"{len(clips)} test clips resampled 16k -> 8k")
    ax.grid()
    ax.legend()
    plt.show()
"""),
]


STREAMING_NOTEBOOK = [
    md("""
# 3. Streaming: a long stream, its posteriors and events, and what it costs

The exported streaming model (`export/NAME.onnx` with its `NAME.json` sidecar)
takes one chunk of audio (20 ms for the shipped MFCC models, 10 ms for raw
audio) and its states per call. The `StreamingDetector` behind
`kws stream` smooths its posteriors, fires an event when a keyword crosses the
threshold, and keeps its state bounded with staggered resets. Here it runs over
a long stream built by `kws.streaming.longstream` (background noise with
keywords and other words at known times, test speakers only), as
`kws bench stream` does, and onnxruntime is timed against PyTorch eager.
"""),
    code(SETUP),
    code("""
from kws.demo import default_model
from kws.export import ExportSpec

specs = {p: ExportSpec.load(p.with_suffix(".json")) for p in sorted(EXPORT.glob("*.onnx"))
         if p.with_suffix(".json").is_file()} if EXPORT.is_dir() else {}
exports = [p for p, s in specs.items() if s.kind == "streaming"]
try:
    MODEL = default_model([EXPORT])  # the demo's model: MFCC S4, streaming
except FileNotFoundError:  # else MFCC first: a raw-audio step costs more on a CPU
    MODEL = min(exports, key=lambda p: specs[p].feature_config["kind"] != "mfcc", default=None)
if MODEL is None:
    print(f"No streaming export in {EXPORT} yet, so this notebook stops here. Make one with\\n"
          "  kws export models/NAME.pt --streaming --out export/NAME_stream.onnx")
else:
    spec = specs[MODEL]
    print(f"{MODEL.name}: {spec.model_config['family']} on {spec.feature_config['kind']}, "
          f"{spec.n_parameters:,} parameters, {spec.chunk_samples} samples "
          f"({1000 * spec.chunk_samples / spec.sample_rate:g} ms) per call; "
          f"other streaming exports: {[p.name for p in exports if p != MODEL]}")
"""),
    md("""
## Posteriors over a long stream

Shaded: where a keyword clip really is (grey: another word). Lines: the
detector's smoothed posterior of each keyword; dashed: the threshold.
Triangles: the events it fired, at the time it fired them.
"""),
    code("""
from kws.streaming import OnnxStepBackend, StreamingDetector
from kws.streaming.backends import NON_KEYWORDS
from kws.streaming.longstream import build_long_stream, score_events, stream_summary

THRESHOLD = 0.8
# long enough for a handful of keywords, short enough to run in CI in seconds
STREAM_MINUTES = 0.5 if MODEL is not None and spec.feature_config["kind"] == "mfcc" else 0.2
run_stream = MODEL is not None and DATA is not None
if MODEL is not None and DATA is None:
    print("skipped the long stream: no data folder to build it from")
if run_stream:
    backend = OnnxStepBackend(MODEL, threads=1)
    keywords = [label for label in backend.labels if label not in NON_KEYWORDS]
    stream = build_long_stream(DATA, keywords, STREAM_MINUTES, seed=0,
                               sample_rate=backend.sample_rate)
    print(stream_summary(stream))
    detector = StreamingDetector(backend, threshold=THRESHOLD, record=True)
    step = detector.chunk_samples
    smoothed, events = [], []
    for start in range(0, stream.audio.size, step):
        events += detector.feed(stream.audio[start : start + step])
        smoothed.append(detector.posteriors.copy())
    events += detector.flush()
    smoothed = np.array(smoothed)
    score = score_events(events, stream.placements, stream.duration_s)
    print({k: v for k, v in score.items() if k != "hit_rate_per_keyword"})
"""),
    code("""
if run_stream:
    colours = dict(zip(keywords, plt.cm.tab10.colors, strict=False))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(15, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 2]})
    times = np.arange(stream.audio.size) / stream.sample_rate
    top.plot(times[::8], stream.audio[::8], color="0.3", linewidth=0.3)
    top.set_ylabel("audio")
    for p in stream.placements:
        for ax in (top, bottom):
            ax.axvspan(p.start_s, p.end_s, color=colours[p.word] if p.keyword else "0.85",
                       alpha=0.25 if p.keyword else 0.5, linewidth=0)
        top.text((p.start_s + p.end_s) / 2, 0.9, p.word, ha="center", fontsize=8,
                 transform=top.get_xaxis_transform(), style="normal" if p.keyword else "italic")
    chunk_times = (np.arange(len(smoothed)) + 1) * detector.chunk_s
    for word in keywords:
        bottom.plot(chunk_times, smoothed[:, backend.labels.index(word)], color=colours[word],
                    linewidth=1, label=word)
    bottom.axhline(THRESHOLD, color="k", linestyle="--", linewidth=1)
    for e in events:
        bottom.plot(e.end_s, 1.04, "v", color=colours[e.keyword], markersize=9,
                    markeredgecolor="k")
        bottom.text(e.end_s, 1.09, e.keyword, ha="center", fontsize=8)
    bottom.set_ylim(0, 1.15)
    bottom.grid(axis="y")
    bottom.set_ylabel("smoothed posterior")
    bottom.set_xlabel("time (s)")
    bottom.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    plt.show()
"""),
    md("""
## Hits against false alarms, over thresholds

The detector recorded its raw posteriors, so other thresholds cost no model
run: `decode_trace` replays the decoder on the trace, as `kws bench stream`
does. On a stream this short one false alarm is many per hour; run
`kws bench stream --minutes 10` (or more) for numbers to quote.
"""),
    code("""
from kws.streaming.engine import decode_trace

if run_stream:
    trace = detector.trace()
    sweep = []
    for threshold in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99):
        found = decode_trace(trace, detector.labels, detector.chunk_s, backend.window_s,
                             threshold=threshold)
        sweep.append((threshold, score_events(found, stream.placements, stream.duration_s)))
    print(f"{'threshold':>9} {'hit rate':>8} {'false alarms/h':>14} {'median latency':>15}")
    for threshold, s in sweep:
        latency = "-" if s["latency_median_s"] is None else f"{s['latency_median_s']:+.2f} s"
        print(f"{threshold:>9.2f} {s['hit_rate']:>8.2f} {s['false_alarms_per_hour']:>14.0f} "
              f"{latency:>15}")
    thresholds = [threshold for threshold, _ in sweep]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(thresholds, [s["hit_rate"] for _, s in sweep], marker="o", color="C0")
    ax.set_ylabel("hit rate", color="C0")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("threshold")
    ax.grid()
    alarms = ax.twinx()
    alarms.plot(thresholds, [s["false_alarms_per_hour"] for _, s in sweep], marker="s",
                color="C3")
    alarms.set_ylabel("false alarms per hour", color="C3")
    alarms.set_ylim(bottom=0)
    ax.set_title(f"{MODEL.name} on a {stream.duration_s:.0f}-s stream")
    plt.show()
"""),
    md("""
## A second look: a clip model verifies each candidate

`--verifier` (`kws.streaming.verifier`) turns the detector into the first of
two stages: it opens candidates at a low threshold, and a clip model scores the
second of audio that ends 400 ms after each; the event fires if the verifier
agrees. Several clip models can verify together, their posteriors averaged;
the four that RESULTS.md ("Four verifiers averaged") picked on validation
speakers, when they are in `export/`, else the first clip export. Here: every
candidate of the trace above at 0.5, what was playing, and the verifier's
posterior for the candidate's keyword (`verify_offline`, which `kws bench
stream --verifier` uses, fires exactly what the live detector would).
"""),
    code("""
from kws.streaming.verifier import (
    DEFAULT_CANDIDATE_THRESHOLD,
    DEFAULT_VERIFY_THRESHOLD,
    VALIDATED_VERIFIERS,
    Verifier,
    open_clip_scorer,
    verify_offline,
)

clip_exports = [p for p, s in specs.items() if s.kind == "clip"
                and run_stream and s.sample_rate == backend.sample_rate
                and set(keywords) <= set(s.labels)]
if run_stream and not clip_exports:
    print("skipped: no clip export in", EXPORT, "to verify with (kws export CKPT --out X.onnx)")
FOUR = [EXPORT / name for name in VALIDATED_VERIFIERS]
if run_stream and clip_exports:
    chosen = FOUR if all(p in clip_exports for p in FOUR) else clip_exports[:1]
    verifier = Verifier(open_clip_scorer(",".join(map(str, chosen)), backend.sample_rate))
    candidates = decode_trace(trace, detector.labels, detector.chunk_s, backend.window_s,
                              threshold=DEFAULT_CANDIDATE_THRESHOLD)
    checked = verify_offline(candidates, stream.audio, detector.chunk_s,
                             detector.chunk_samples, verifier)
    print(f"verifier {' + '.join(p.name for p in chosen)}: {len(checked)} candidates at "
          f"{DEFAULT_CANDIDATE_THRESHOLD:g}, kept at {DEFAULT_VERIFY_THRESHOLD:g}")
    print(f"{'fired at':>8} {'keyword':>8} {'playing':>8} {'detector':>8} {'verifier':>8}  kept")
    for event in checked:
        playing = [p.word for p in stream.placements
                   if p.start_s <= event.end_s and p.end_s >= event.start_s]
        print(f"{event.end_s:>8.2f} {event.keyword:>8} {'/'.join(playing) or '-':>8} "
              f"{event.candidate_score:>8.3f} {event.score:>8.3f}  "
              f"{'yes' if event.score >= DEFAULT_VERIFY_THRESHOLD else 'no'}")
    kept = [e for e in checked if e.score >= DEFAULT_VERIFY_THRESHOLD]
    for name, found in (("detector alone at 0.5", candidates), ("with the verifier", kept)):
        s = score_events(found, stream.placements, stream.duration_s)
        print(f"{name}: {s['hits']} of {s['keywords']} keywords, {s['false_alarms']} false alarms")
"""),
    md("""
## Latency and real-time factor: onnxruntime against PyTorch

The same detector (two state copies, one thread) on the same audio, once with
the ONNX file and once with the checkpoint it was exported from in PyTorch
eager. Compute per chunk must stay well under the chunk's duration to keep up with a
microphone; the real-time factor is compute time over audio time. The posteriors
of the two backends must agree.
"""),
    code("""
import time

from kws.streaming import TorchStepBackend

BENCH_SECONDS = 3.0


def timed_run(backend, audio):
    \"\"\"Milliseconds per chunk, and the posterior trace, of a fresh detector on ``audio``.\"\"\"
    detector = StreamingDetector(backend, record=True)
    step, times = detector.chunk_samples, []
    for start in range(0, audio.size - step + 1, step):
        started = time.perf_counter()
        detector.feed(audio[start : start + step])
        times.append(1000 * (time.perf_counter() - started))
    return np.array(times), detector.trace()


if MODEL is not None:
    # the checkpoint it was exported from, as the sidecar names it, from here or the repo
    named = Path(spec.source_checkpoint or "-")
    source = next((p for p in (named, REPO / named, MODELS / named.name) if p.is_file()), None)
    samples = int(BENCH_SECONDS * spec.sample_rate)
    audio = (stream.audio[:samples] if run_stream else
             (0.05 * np.random.default_rng(0).standard_normal(samples)).astype(np.float32))
    backends = {"onnxruntime": OnnxStepBackend(MODEL, threads=1)}
    if source:
        backends["pytorch"] = TorchStepBackend(source, chunk_ms=1000 * spec.chunk_samples
                                               / spec.sample_rate, threads=1)
    else:
        print(f"PyTorch skipped: the checkpoint {spec.source_checkpoint!r} is not here")
    results = {name: timed_run(b, audio) for name, b in backends.items()}
    chunk_ms = 1000 * spec.chunk_samples / spec.sample_rate
    print(f"{'backend':<12} {'median ms/chunk':>15} {'p95':>7} {'real-time factor':>17}")
    for name, (ms, _) in results.items():
        print(f"{name:<12} {np.median(ms):>15.2f} {np.percentile(ms, 95):>7.2f} "
              f"{ms.sum() / (len(ms) * chunk_ms):>17.3f}")
    if len(results) == 2:
        gap = np.abs(results["onnxruntime"][1] - results["pytorch"][1]).max()
        print(f"largest posterior difference between the backends: {gap:.2e}")
    if run_stream and score["latency_median_s"] is not None:
        print(f"detection latency at threshold {THRESHOLD}: median "
              f"{score['latency_median_s']:+.2f} s, 90th percentile "
              f"{score['latency_p90_s']:+.2f} s after the end of the keyword clip "
              "(the clip includes silence after the word)")
    low = min(ms.min() for ms, _ in results.values()) / 1.2
    high = max(chunk_ms, *(ms.max() for ms, _ in results.values())) * 1.2
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, (ms, _) in results.items():
        ax.hist(ms, bins=np.geomspace(low, high, 60), alpha=0.6, label=name)
    ax.axvline(chunk_ms, color="k", linestyle="--", label=f"{chunk_ms:g} ms of audio")
    ax.set_xscale("log")
    ax.grid()
    ax.set_xlabel("compute per chunk (ms, log scale)")
    ax.set_ylabel("chunks")
    ax.legend(fontsize=8)
    plt.show()
"""),
]

NOTEBOOKS = {
    "01_data.ipynb": DATA_NOTEBOOK,
    "02_zero_shot_rates.ipynb": RATES_NOTEBOOK,
    "03_streaming.ipynb": STREAMING_NOTEBOOK,
}


def render(name: str, cells: list[nbformat.NotebookNode]) -> str:
    """The notebook file's text: no outputs, stable cell ids, so rebuilding changes nothing."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    stem = name.removesuffix(".ipynb")
    nb.cells = []
    for i, cell in enumerate(cells):
        cell = nbformat.from_dict(dict(cell))
        cell.id = f"{stem}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def build(folder: Path = HERE) -> list[Path]:
    """Write every notebook into ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cells in NOTEBOOKS.items():
        path = folder / name
        path.write_text(render(name, cells))
        written.append(path)
    return written


def stale(folder: Path = HERE) -> list[str]:
    """The notebooks in ``folder`` that differ from what ``build`` would write."""
    return [
        name for name, cells in NOTEBOOKS.items()
        if not (folder / name).is_file() or (folder / name).read_text() != render(name, cells)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a notebook is out of date")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for name in out_of_date:
            print(f"notebooks/{name} differs from notebooks/build.py; run "
                  "`python notebooks/build.py`", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in build():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
