"""The files we ship still mean what their cards and sidecars say.

Every ONNX export in ``export/`` is checked against the checkpoint it came from
(onnxruntime vs torch, streaming vs clip, 1e-4 relative; clip exports, the
verifiers, against the clip model) and for a size that
follows the parameter count; every checkpoint in ``models/`` must reproduce the
16 kHz test accuracy written in its card.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kws.demo import DEFAULT_MODEL_FILE, default_model
from kws.export.sidecar import ExportSpec
from kws.export.verify import (
    check_clip,
    check_streaming,
    find_real_clip,
    judge,
    synthetic_clip,
)

REPO = Path(__file__).resolve().parents[1]
EXPORTS = sorted((REPO / "export").glob("*.json"))
CARDS = sorted((REPO / "models").glob("*.eval.json"))
TOLERANCE = 1e-4


def test_something_is_shipped():
    assert EXPORTS, "no ONNX export in export/"
    assert CARDS, "no evaluated checkpoint in models/"
    # the demos' default (kws listen / serve) is shipped, with a sidecar that says it streams
    assert default_model([REPO / "export"]).name == DEFAULT_MODEL_FILE
    sidecar = json.loads((REPO / "export" / DEFAULT_MODEL_FILE).with_suffix(".json").read_text())
    assert sidecar["kind"] == "streaming" and sidecar["sample_rate"] == 16000


@pytest.mark.parametrize("sidecar", EXPORTS, ids=lambda p: p.stem)
def test_export_matches_its_checkpoint(sidecar: Path):
    from kws.export.onnx_export import ClipSpotter
    from kws.streaming.step_model import StreamingSpotter
    from kws.training.checkpoint import load_spotter

    spec = ExportSpec.load(sidecar)
    onnx_path = sidecar.with_suffix(".onnx")
    spotter, _ = load_spotter(REPO / spec.source_checkpoint)
    spotter.eval()
    clip = ClipSpotter(spotter, spec.sample_rate).eval()
    real = find_real_clip(spec.sample_rate, clip.clip_samples)
    audio = real[0] if real else synthetic_clip(clip.clip_samples, spec.sample_rate)
    if spec.kind == "clip":  # a verifier (kws.streaming.verifier): one second in, logits out
        assert spec.clip_samples == clip.clip_samples
        errors = check_clip(clip, onnx_path, audio)
    else:
        assert spec.kind == "streaming"
        stream = StreamingSpotter(spotter, 1000 * spec.chunk_samples / spec.sample_rate,
                                  spec.sample_rate).eval()
        errors = check_streaming(stream, clip, onnx_path, audio)
    parity = judge(errors, TOLERANCE, sidecar.name)
    assert parity["max_rel_err"] <= TOLERANCE

    # Size: the parameters (a few copies at most, for folded forms) plus the feature
    # tables, which do not grow with the chunk; never a K x K table per channel.
    tables = sum(b.numel() * 4 for b in spotter.frontend.buffers())
    if spec.feature_config["kind"] == "mfcc" and spec.sample_rate != spotter.sample_rate:
        tables = _mfcc_table_bytes(spec)
    size = onnx_path.stat().st_size
    assert size <= 3 * 4 * spec.n_parameters + tables + 200_000, (size, spec.n_parameters)


def _mfcc_table_bytes(spec: ExportSpec) -> int:
    from kws.features import FeatureConfig
    from kws.features.mfcc import mfcc_tables

    cfg = FeatureConfig.from_dict(spec.feature_config).at_rate(spec.sample_rate)
    return sum(t.numel() * 4 for t in mfcc_tables(cfg))


def split_clips(dev_root: Path, split: dict) -> tuple[np.ndarray, np.ndarray]:
    """(clips, 16000) float32 audio and the label indices of a checkpoint's test split."""
    from kws.data import SpeechCommands, load_audio

    clips = SpeechCommands.from_manifest(dev_root, split).clips("test")
    audio = np.stack([load_audio(c.path, 16000, 16000) for c in clips]).astype(np.float32)
    return audio, np.array([c.label_index for c in clips])


@pytest.mark.parametrize("card", CARDS, ids=lambda p: p.name.split(".")[0])
def test_checkpoint_reproduces_its_card(card: Path, dev_root: Path):
    from kws.training.checkpoint import load_spotter

    entry = json.loads(card.read_text())["metrics"]["eval"]
    results = {int(r["sample_rate"]): r for r in entry["results"] if r.get("accuracy") is not None}
    want = results[16000]["accuracy"]
    spotter, meta = load_spotter(card.with_name(card.name.replace(".eval.json", ".pt")))
    spotter.eval()
    audio, labels = split_clips(dev_root, meta["split"])
    wave = torch.from_numpy(audio)
    with torch.inference_mode():
        logits = torch.cat([spotter(w) for w in wave.split(64)])
    accuracy = float((logits.argmax(1).numpy() == labels).mean())
    assert accuracy == pytest.approx(want, abs=1.5 / len(labels))


def test_four_verifiers_average_posteriors_and_beat_each_member_on_test_clips(dev_root: Path):
    from kws.streaming.verifier import VALIDATED_VERIFIERS, open_clip_scorer
    from kws.training.checkpoint import load_spotter

    paths = [REPO / "export" / name for name in VALIDATED_VERIFIERS]
    _, meta = load_spotter(REPO / "models" / "s4_mfcc_wide.pt")
    wave, labels = split_clips(dev_root, meta["split"])
    members = [open_clip_scorer(path, 16000).posteriors(wave) for path in paths]
    together = open_clip_scorer(",".join(map(str, paths)), 16000).posteriors(wave)
    np.testing.assert_allclose(together, np.mean(members, axis=0), atol=1e-12)
    accuracy = [float((p.argmax(1) == labels).mean()) for p in members]
    ensemble = float((together.argmax(1) == labels).mean())
    # measured: members 89.5-90.9%, the four 94.1% on the 287 clips of the 13 test speakers
    assert min(accuracy) > 0.88 and ensemble > max(accuracy) + 0.02, (accuracy, ensemble)
