"""Check an exported ONNX file against the torch module it came from, in onnxruntime.

Every number is a relative error ``max |onnx - torch| / max |torch|`` over a whole
output (logits, or a state): relative to the output's scale, so near-zero
entries do not blow it up. The checks, for a clip export:

* ``random``: random audio, batch 3 (the export traced batch 2, so a batch size
  baked into the graph fails here);
* ``audio``: a real clip (or a synthetic one when no data is found);

and for a streaming export:

* ``random``: one step from random audio and random states, every output;
* ``stream``: the clip streamed chunk by chunk from the initial states, every
  chunk's logits, onnx against torch;
* ``stream_vs_clip_torch`` / ``stream_vs_clip_onnx``: the logits after that
  stream against the clip model's logits on the same clip, in torch and in
  onnxruntime. This is the promise of the sliding window: streaming a clip
  from rest gives the clip model's answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kws.streaming.step_model import StreamingSpotter

#: the default bound on every relative error, stated in each sidecar
TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """An export whose onnxruntime outputs differ from torch past the tolerance."""


def rel_err(got: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor) -> float:
    """max |got - want| / max |want| (with a floor, so an all-zero output compares absolutely)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise ParityError(f"shape {got.shape} != expected {want.shape}")
    if want.size == 0:
        return 0.0
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))


def session(path: str | Path) -> Any:
    """A single-threaded CPU onnxruntime session (the deployment setting)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def synthetic_clip(samples: int, sample_rate: int) -> np.ndarray:
    """A deterministic speech-like stand-in: a gliding two-tone burst in faint noise."""
    t = np.arange(samples) / sample_rate
    envelope = np.exp(-0.5 * ((t - 0.5) / 0.15) ** 2)
    pitch = 2 * np.pi * (150 * t + 100 * t**2)
    voiced = np.sin(pitch) + 0.5 * np.sin(3 * pitch)
    noise = np.random.default_rng(0).normal(0, 0.01, samples)
    return (0.3 * envelope * voiced + noise).astype(np.float32)


def find_real_clip(sample_rate: int, samples: int) -> tuple[np.ndarray, str] | None:
    """(a keyword clip at ``sample_rate``, padded/cut to ``samples``; its path), or None."""
    from kws.data.audio import load_audio
    from kws.data.speech_commands import find_data_root

    try:
        root = find_data_root()
    except FileNotFoundError:
        return None
    for word in ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"):
        files = sorted((root / word).glob("*.wav"))
        if files:
            return load_audio(files[0], sample_rate, length=samples), str(files[0])
    return None


def check_clip(module: nn.Module, onnx_path: Path, audio: np.ndarray) -> dict[str, float]:
    """Relative errors of a clip export: random audio (batch 3) and ``audio`` (T,)."""
    sess = session(onnx_path)
    rng = np.random.default_rng(1)
    random = rng.uniform(-0.5, 0.5, (3, audio.shape[0])).astype(np.float32)
    errs = {}
    for name, batch in (("random", random), ("audio", audio[None])):
        with torch.no_grad():
            want = module(torch.from_numpy(batch)).numpy()
        errs[name] = rel_err(sess.run(["logits"], {"audio": batch})[0], want)
    return errs


def check_streaming(
    module: StreamingSpotter, clip_module: nn.Module, onnx_path: Path, audio: np.ndarray
) -> dict[str, float]:
    """Relative errors of a streaming export (see the module docstring for each check)."""
    sess = session(onnx_path)
    names = [f"state_{n}" for n in module.state_names]
    outputs = ["logits", *[f"next_state_{n}" for n in module.state_names]]
    rng = np.random.default_rng(1)
    batch = 3
    chunk = rng.uniform(-0.5, 0.5, (batch, module.chunk_samples)).astype(np.float32)
    states = [
        rng.normal(0, 0.5, s.shape).astype(np.float32) for s in module.initial_states(batch)
    ]
    with torch.no_grad():
        want = module(torch.from_numpy(chunk), *map(torch.from_numpy, states))
    got = sess.run(outputs, {"audio": chunk, **dict(zip(names, states, strict=True))})
    errs = {"random": max(rel_err(g, w) for g, w in zip(got, want, strict=True))}

    # The clip, streamed from rest, in both runtimes; then against the clip model.
    clip = torch.from_numpy(audio[None])
    padded = nn.functional.pad(clip, (0, module.clip_chunks * module.chunk_samples - clip.shape[1]))
    with torch.no_grad():
        torch_logits = module.run(padded)[0][0].numpy()
        clip_logits = clip_module(clip)[0].numpy()
    feed_states = [s.numpy() for s in module.initial_states(1)]
    onnx_logits = []
    for start in range(0, padded.shape[1], module.chunk_samples):
        feed = {"audio": padded[:, start : start + module.chunk_samples].numpy()}
        feed.update(zip(names, feed_states, strict=True))
        logits, *feed_states = sess.run(outputs, feed)
        onnx_logits.append(logits[0])
    errs["stream"] = rel_err(np.stack(onnx_logits), torch_logits)
    errs["stream_vs_clip_torch"] = rel_err(torch_logits[-1], clip_logits)
    errs["stream_vs_clip_onnx"] = rel_err(onnx_logits[-1], clip_logits)
    return errs


def judge(errs: dict[str, float], tolerance: float, what: str) -> dict[str, Any]:
    """The sidecar's parity entry; ParityError naming the worst check past ``tolerance``."""
    worst = max(errs, key=errs.__getitem__)
    if not errs[worst] <= tolerance:  # also catches NaN
        raise ParityError(
            f"{what}: onnxruntime and torch disagree: {worst} relative error "
            f"{errs[worst]:.3g} > tolerance {tolerance:g} (all checks: "
            + ", ".join(f"{k}={v:.3g}" for k, v in errs.items())
            + ")"
        )
    return {
        "max_rel_err": errs[worst],
        "tolerance": tolerance,
        "metric": "max |onnx - torch| / max |torch| per output",
        "checks": errs,
    }
