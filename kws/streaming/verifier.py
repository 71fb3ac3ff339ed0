"""Two-stage detection: a clip model checks each candidate the streaming detector fires.

The streaming detector fires on its running posteriors, and it fires early (a
median 0.2-0.4 s before the keyword ends on the long-stream benchmark), on a
window that holds only part of the word. A second, different model that waits a
little and looks at the whole word rejects many of its false alarms, at a cost
paid per candidate rather than per chunk: the cascade of a deployed wake-word
engine. (Waiting alone, with the same model, does not help: ``hold_ms``.)

``Verifier`` holds a clip scorer (an exported clip ``.onnx``, which is what we ship,
or a ``.pt`` checkpoint run by PyTorch; several comma-separated average their
posteriors) and two settings:

* ``delay_ms``: how long after the candidate the verifier's window ends. The
  window is the clip length (1 s) ending ``delay_ms`` after the candidate's time,
  rounded up to whole model chunks, so the word the detector caught early is
  inside it whole. The verified event fires then: the delay is added latency.
* ``threshold``: the verifier's posterior for the candidate's keyword must reach
  it, else the candidate is dropped.

A dropped candidate has still started the detector's refractory period, so the
cascade fires exactly the verified subset of the events the detector alone fires
at its threshold, each ``delay_ms`` later (``verify_offline`` computes the same on a
recorded stream, which is how ``kws bench stream --verifier`` sweeps the verifier's
threshold from one run). Events keep the detector's posterior as ``candidate_score``
and report the verifier's as ``score``; ``start_s``/``end_s`` are the verifier's window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from kws.streaming.backends import (
    NON_KEYWORDS,
    export_folders,
    sidecar_path,
    softmax,
    split_models,
)
from kws.streaming.engine import Event
from kws.streaming.longstream import Placement, score_events

# Picked on a stream of the validation speakers (RESULTS.md, "A second look"), not the test's:
#: the window then holds the whole word the detector caught early (0 ms: a fraction of it)
DEFAULT_VERIFY_DELAY_MS = 400.0
#: near the confident posterior of a model trained with label smoothing 0.1 (0.908)
DEFAULT_VERIFY_THRESHOLD = 0.9
#: the detector's threshold when a verifier decides: low, so that few keywords are missed
DEFAULT_CANDIDATE_THRESHOLD = 0.5
#: the clip exports (in export/) that verify the demos' detector best, averaged, picked on the
#: validation stream (RESULTS.md, "Four verifiers averaged"); none is the detector (seed 3)
VALIDATED_VERIFIERS = ("s4_mfcc_wide_clip.onnx", "s4_mfcc_ctx_s0_clip.onnx",
                       "s4_mfcc_ctx_s1_clip.onnx", "s4_mfcc_ctx_s2_clip.onnx")
#: what ``--verifier`` takes for those four, found like the demos' default model
VALIDATED = "validated"


def validated_verifiers(folders: Sequence[Path] | None = None) -> str:
    """``VALIDATED_VERIFIERS`` as one comma-separated model list, from the first folder that
    holds all four (default: ``export_folders()``).
    """
    if folders is None:
        folders = export_folders()
    for folder in folders:
        paths = [Path(folder) / name for name in VALIDATED_VERIFIERS]
        if all(path.is_file() for path in paths):
            return ",".join(str(path) for path in paths)
    looked = ", ".join(str(folder) for folder in folders)
    raise FileNotFoundError(f"--verifier {VALIDATED}: {', '.join(VALIDATED_VERIFIERS)} are not "
                            f"all in {looked}; export them with `kws export models/NAME.pt --out "
                            "export/NAME_clip.onnx` or name the verifiers")


def clip_window(audio: np.ndarray, end: int, size: int) -> np.ndarray:
    """``size`` samples of ``audio`` ending at sample ``end``, zero-padded past either end."""
    out = np.zeros(size, np.float32)
    start = end - size
    piece = audio[max(start, 0) : min(end, audio.size)]
    offset = max(0, -start)
    out[offset : offset + piece.size] = piece
    return out


class ClipScorer:
    """Posteriors of whole clips: ``posteriors(windows (B, clip_samples)) -> (B, n_classes)``."""

    name: str
    sample_rate: int
    clip_samples: int
    labels: list[str]

    def posteriors(self, windows: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxClipScorer(ClipScorer):
    """A clip model exported by ``kws export`` (without ``--streaming``), run by onnxruntime."""

    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        from kws.export.sidecar import ExportSpec

        self.name = str(path)
        path = Path(path)
        if not sidecar_path(path).is_file():
            raise FileNotFoundError(f"{sidecar_path(path)}: no sidecar beside {path.name}; "
                                    "`kws export` writes NAME.onnx and NAME.json together")
        spec = ExportSpec.load(sidecar_path(path))
        if spec.kind != "clip":
            raise ValueError(f"{path}: a {spec.kind!r} export; a verifier is a clip model "
                             "(`kws export CKPT --out NAME.onnx`, without --streaming)")
        self.sample_rate, self.labels = spec.sample_rate, list(spec.labels)
        self.clip_samples = spec.samples_per_call
        self.audio_input, self.logits_output = spec.audio_input, spec.logits_output
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: onnxruntime cannot load it ({err})") from err

    def posteriors(self, windows: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run([self.logits_output],
                                     {self.audio_input: windows.astype(np.float32)})
        return softmax(logits.astype(np.float64))


class TorchClipScorer(ClipScorer):
    """A checkpoint's clip model in PyTorch, fed at ``sample_rate`` (zero-shot if not its own)."""

    def __init__(self, path: str | Path, sample_rate: int | None = None):
        import torch

        from kws.training.checkpoint import load_spotter

        self.torch, self.name = torch, str(path)
        self.spotter, _ = load_spotter(path)
        self.sample_rate = int(sample_rate or self.spotter.sample_rate)
        self.spotter.rate_factor(self.sample_rate)  # a rate the features cannot serve fails now
        self.labels = list(self.spotter.labels)
        self.clip_samples = self.spotter.clip_samples(self.sample_rate)

    def posteriors(self, windows: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            logits = self.spotter(self.torch.from_numpy(windows.astype(np.float32)),
                                  self.sample_rate)
        return softmax(logits.double().numpy())


class EnsembleClipScorer(ClipScorer):
    """Several clip models on the same windows, their posteriors averaged."""

    def __init__(self, members: Sequence[ClipScorer]):
        first = members[0]
        for other in members[1:]:
            if (other.labels, other.sample_rate, other.clip_samples) != (
                    first.labels, first.sample_rate, first.clip_samples):
                raise ValueError(f"{other.name}: labels, rate or clip length differ from "
                                 f"{first.name}'s; an ensemble's verifiers must agree")
        self.members = list(members)
        self.name = ",".join(m.name for m in members)
        self.sample_rate, self.clip_samples = first.sample_rate, first.clip_samples
        self.labels = list(first.labels)

    def posteriors(self, windows: np.ndarray) -> np.ndarray:
        return np.mean([m.posteriors(windows) for m in self.members], axis=0)


def open_clip_scorer(model: str | Path, sample_rate: int, threads: int = 1) -> ClipScorer:
    """A clip ``.onnx`` or a ``.pt``/``.ckpt`` checkpoint (comma-separated: averaged) that
    scores windows of a stream at ``sample_rate``."""
    paths = split_models(model)
    if len(paths) > 1:
        return EnsembleClipScorer([open_clip_scorer(p, sample_rate, threads) for p in paths])
    path = paths[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such verifier model file")
    if path.suffix == ".onnx":
        scorer: ClipScorer = OnnxClipScorer(path, threads)
        if scorer.sample_rate != sample_rate:
            raise ValueError(f"{path}: a clip model for {scorer.sample_rate} Hz, but the stream "
                             f"runs at {sample_rate} Hz; export it with --rate {sample_rate}")
        return scorer
    if path.suffix in (".pt", ".ckpt"):
        import torch

        torch.set_num_threads(threads)
        return TorchClipScorer(path, sample_rate)
    raise ValueError(f"{path}: a verifier is an exported clip .onnx or a .pt/.ckpt checkpoint")


class Verifier:
    """A clip scorer, the delay after a candidate at which it looks, and its threshold."""

    def __init__(
        self,
        scorer: ClipScorer,
        threshold: float = DEFAULT_VERIFY_THRESHOLD,
        delay_ms: float = DEFAULT_VERIFY_DELAY_MS,
    ):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"the verifier's threshold must be in (0, 1], got {threshold}")
        if not delay_ms >= 0:
            raise ValueError(f"the verifier's delay must be >= 0 ms, got {delay_ms}")
        self.scorer, self.threshold, self.delay_ms = scorer, float(threshold), float(delay_ms)

    def check_stream(self, labels: Sequence[str], sample_rate: int) -> None:
        """Fail at start, naming both, when the scorer cannot judge this detector's events."""
        if self.scorer.sample_rate != sample_rate:
            raise ValueError(f"verifier {self.scorer.name} scores {self.scorer.sample_rate} Hz "
                             f"audio, the detector runs at {sample_rate} Hz")
        keywords = [label for label in labels if label not in NON_KEYWORDS]
        missing = [k for k in keywords if k not in self.scorer.labels]
        if missing:
            raise ValueError(f"verifier {self.scorer.name} has no output for the detector's "
                             f"keyword(s) {missing}; its labels are {self.scorer.labels}")

    def delay_chunks(self, chunk_s: float) -> int:
        """The delay in whole model chunks, rounded up."""
        return math.ceil(self.delay_ms / 1000 / chunk_s - 1e-9)

    def window(self, audio: np.ndarray, end: int) -> np.ndarray:
        """The scorer's clip of ``audio`` ending at sample ``end`` (``clip_window``)."""
        return clip_window(audio, end, self.scorer.clip_samples)

    def posteriors(self, windows: np.ndarray, batch: int = 64) -> np.ndarray:
        """(B, n_classes) verifier posteriors of (B, clip_samples) windows, in batches."""
        if not len(windows):
            return np.zeros((0, len(self.scorer.labels)))
        return np.concatenate([self.scorer.posteriors(windows[i : i + batch])
                               for i in range(0, len(windows), batch)])

    def keyword_score(self, posteriors: np.ndarray, keyword: str) -> float:
        return float(posteriors[self.scorer.labels.index(keyword)])

    def verified(self, candidate: Event, score: float, end_chunk: int, chunk_s: float) -> Event:
        """The event the cascade fires for ``candidate`` whose window ends at ``end_chunk``."""
        end_s = end_chunk * chunk_s
        clip_s = self.scorer.clip_samples / self.scorer.sample_rate
        return replace(candidate, start_s=max(0.0, end_s - clip_s), end_s=end_s, score=score,
                       candidate_score=candidate.score)


def verify_offline(
    candidates: Sequence[Event], audio: np.ndarray, chunk_s: float, chunk_samples: int,
    verifier: Verifier, cache: dict[int, np.ndarray] | None = None, batch: int = 64,
) -> list[Event]:
    """Every candidate of a recorded stream as the cascade would fire it, with the verifier's
    score, threshold not applied (filter on ``score``). Windows past the audio's end are
    zero-padded, as the detector's ``flush`` pads them. ``cache`` (window end sample ->
    posteriors) lets a threshold sweep score each distinct window once; ``batch`` 1 costs
    what the live detector pays per candidate."""
    cache = {} if cache is None else cache
    delay = verifier.delay_chunks(chunk_s)
    ends = [(round(c.end_s / chunk_s) + delay) for c in candidates]
    todo = sorted({end * chunk_samples for end in ends} - set(cache))
    if todo:
        scored = verifier.posteriors(np.stack([verifier.window(audio, end) for end in todo]),
                                     batch)
        cache.update(zip(todo, scored, strict=True))
    return [verifier.verified(c, verifier.keyword_score(cache[end * chunk_samples], c.keyword),
                              end, chunk_s) for c, end in zip(candidates, ends, strict=True)]


def verified_results(
    verified: Sequence[Event], placements: Sequence[Placement], duration_s: float,
    thresholds: Sequence[float], tolerance_s: float = 0.25,
) -> list[dict[str, Any]]:
    """``score_events`` of the cascade at each verifier threshold: the candidates of
    ``verify_offline`` whose verifier score reaches it."""
    return [{"threshold": float(t),
             **score_events([e for e in verified if e.score >= t], placements, duration_s,
                            tolerance_s)}
            for t in thresholds]
