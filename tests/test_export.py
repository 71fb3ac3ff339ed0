"""kws export: ONNX clip and streaming models that onnxruntime runs as torch does, and sidecars.

Every test drives the ONNX file the way a runtime without torch would: from the
sidecar alone (names, shapes, zero initial states).
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import tone
from test_step_model import LABELS, make_spotter, speechy

from kws.cli import main
from kws.data.audio import save_audio
from kws.export import ExportSpec, SidecarError
from kws.export.onnx_export import export_spotter
from kws.export.verify import ParityError
from kws.streaming.step_model import StreamingSpotter

#: onnx vs torch and stream vs clip, relative to the logits' scale
TOL = 1e-4
FAMILIES = ["tcn", "lstm", "s4", "s4d"]
SCHEMA_KEYS = {
    "format_version", "kws_version", "kind", "sample_rate", "labels", "audio_input",
    "logits_output", "states", "feature_config", "model_config", "rate_factor", "trained_rate",
    "source_checkpoint", "parity", "onnx_file", "n_parameters", "file_bytes",
}


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def onnx_stream(spec: ExportSpec, wave: np.ndarray) -> np.ndarray:
    """Run a streaming export over (B, T) audio, as a runtime would: (B, chunks, classes)."""
    sess = ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"])
    states = spec.initial_states(wave.shape[0])
    outputs = [spec.logits_output, *[s.output for s in spec.states]]
    chunk = spec.chunk_samples
    wave = np.pad(wave, [(0, 0), (0, -wave.shape[1] % chunk)])
    logits = []
    for start in range(0, wave.shape[1], chunk):
        feed = {spec.audio_input: wave[:, start : start + chunk], **states}
        first, *nexts = sess.run(outputs, feed)
        states = {s.name: v for s, v in zip(spec.states, nexts, strict=True)}
        logits.append(first)
    return np.stack(logits, axis=1)


def padded_clip(spec: ExportSpec, clip: np.ndarray) -> np.ndarray:
    """The clip with zeros up to the chunks that streamed it from rest in the parity check."""
    total = spec.parity["clip_chunks"] * spec.chunk_samples
    return np.pad(clip, [(0, 0), (0, total - clip.shape[1])])


@pytest.mark.parametrize("kind", ["raw", "mfcc"])
@pytest.mark.parametrize("family", FAMILIES)
def test_clip_and_streaming_exports_match_torch(tmp_path, family, kind):
    spotter = make_spotter(family, kind, **({"n_layers": 1} if family.startswith("s4") else {}))
    wave = speechy(3, 16000).numpy()
    with torch.no_grad():
        want = spotter(torch.from_numpy(wave)).numpy()

    clip = export_spotter(spotter, tmp_path / "clip.onnx")
    assert clip.kind == "clip" and clip.clip_samples == 16000 and clip.states == []
    assert clip.parity["max_rel_err"] <= clip.parity["tolerance"] == TOL
    sess = ort.InferenceSession(str(clip.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["audio"]
    assert sess.get_inputs()[0].shape[1] == 16000 and isinstance(sess.get_inputs()[0].shape[0], str)
    assert rel_err(sess.run(["logits"], {"audio": wave})[0], want) < TOL  # batch 3, traced at 2

    stream = export_spotter(spotter, tmp_path / "stream.onnx", streaming=True, chunk_ms=10)
    assert stream.kind == "streaming" and stream.chunk_samples == 160
    assert stream.parity["max_rel_err"] <= TOL
    sess = ort.InferenceSession(str(stream.onnx_path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in sess.get_inputs()}
    assert set(inputs) == {"audio", *[s.name for s in stream.states]}
    for s in stream.states:
        assert s.name.startswith("state_") and s.output == "next_" + s.name
        assert isinstance(inputs[s.name][0], str) and inputs[s.name][1:] == s.shape[1:]
    # a clip streamed from zero states gives the clip model's logits, in onnxruntime
    streamed = onnx_stream(stream, padded_clip(stream, wave))
    assert rel_err(streamed[:, -1], want) < TOL


def test_sidecar_says_how_to_drive_a_streaming_mfcc_export(tmp_path):
    spotter = make_spotter("lstm", "mfcc")
    spec = export_spotter(
        spotter, tmp_path / "x.onnx", streaming=True, chunk_ms=20, source_checkpoint="models/x.pt"
    )
    data = json.loads((tmp_path / "x.json").read_text())
    assert set(data) == SCHEMA_KEYS | {"chunk_samples", "window_chunks"}
    assert data["format_version"] == 1 and data["kind"] == "streaming"
    assert (data["sample_rate"], data["chunk_samples"], data["window_chunks"]) == (16000, 320, 49)
    assert data["labels"] == LABELS and data["onnx_file"] == "x.onnx"
    assert data["audio_input"] == "audio" and data["logits_output"] == "logits"
    assert [s["name"] for s in data["states"]] == [
        "state_frontend", "state_warmup", "state_model_0", "state_model_1", "state_window"
    ]
    assert data["states"][0] == {
        "name": "state_frontend", "output": "next_state_frontend", "shape": [None, 320],
        "dtype": "float32",
    }
    assert data["feature_config"]["kind"] == "mfcc" and data["model_config"]["family"] == "lstm"
    assert (data["rate_factor"], data["trained_rate"]) == (1.0, 16000)
    assert data["source_checkpoint"] == "models/x.pt"
    assert data["n_parameters"] == spotter.model.n_parameters
    assert data["file_bytes"] == (tmp_path / "x.onnx").stat().st_size
    assert data["parity"]["tolerance"] == TOL and data["parity"]["clip_chunks"] == 50
    assert ExportSpec.load(tmp_path / "x.json") == spec  # round trip


def test_broken_sidecars_are_named(tmp_path):
    spotter = make_spotter("lstm", "raw")
    spec = export_spotter(spotter, tmp_path / "x.onnx")
    assert ExportSpec.load(tmp_path / "x.json") == spec
    data = spec.to_dict()
    assert set(data) == SCHEMA_KEYS | {"clip_samples"}
    bad = tmp_path / "bad.json"
    for change, message in [
        ({"format_version": 2}, "format_version 2; this kws .* reads format_version 1"),
        ({"kind": "batch"}, "'kind' must be one of"),
        ({"clip_samples": "16000"}, "'clip_samples' has the wrong type"),
        ({"labels": None}, "'labels' has the wrong type"),
    ]:
        bad.write_text(json.dumps({**data, **change}))
        with pytest.raises(SidecarError, match=f"bad.json: {message}"):
            ExportSpec.load(bad)
    bad.write_text(json.dumps({k: v for k, v in data.items() if k != "sample_rate"}))
    with pytest.raises(SidecarError, match="missing key 'sample_rate'"):
        ExportSpec.load(bad)
    bad.write_text("{not json")
    with pytest.raises(SidecarError, match="not valid JSON"):
        ExportSpec.load(bad)


def test_raw_s4_exported_at_8khz_runs_with_rate_factor_two(tmp_path):
    spotter = make_spotter("s4", "raw", n_layers=1)
    spec = export_spotter(spotter, tmp_path / "s4_8k.onnx", streaming=True, sample_rate=8000)
    assert (spec.sample_rate, spec.chunk_samples, spec.rate_factor) == (8000, 80, 2.0)
    assert spec.trained_rate == 16000 and spec.window_chunks == 100
    wave = speechy(2, 8000)
    with torch.no_grad():
        want = spotter.model(spotter.frontend(wave), rate_factor=2.0).numpy()
        at_16k_dt = spotter.model(spotter.frontend(wave), rate_factor=1.0).numpy()
    got = onnx_stream(spec, wave.numpy())[:, -1]
    assert rel_err(got, want) < TOL
    assert rel_err(got, at_16k_dt) > 10 * TOL  # the baked dt is what makes it an 8 kHz model

    clip = export_spotter(spotter, tmp_path / "s4_8k_clip.onnx", sample_rate=8000)
    sess = ort.InferenceSession(str(clip.onnx_path), providers=["CPUExecutionProvider"])
    assert rel_err(sess.run(["logits"], {"audio": wave.numpy()})[0], want) < TOL


@pytest.mark.parametrize("family", ["s4", "s4d"])
def test_band_limited_s4_exports_cut_the_modes_of_the_rate_they_serve(tmp_path, family):
    """The band limit is judged with the baked dt: the 8 kHz export cuts more modes than the
    16 kHz one, and each matches torch at its own rate, streaming and clip alike."""
    spotter = make_spotter(family, "raw", n_layers=1, d_state=16, dt_min=0.1, dt_max=1.0,
                           bandlimit=1.0)
    layer = spotter.model.blocks[0].ssm
    turns = layer.A_imag.abs() * torch.exp(layer.log_dt).unsqueeze(-1) / (2 * math.pi)
    assert (turns >= 0.5).sum() < (2 * turns >= 0.5).sum() < turns.numel()
    for rate in (16000, 8000):
        factor = 16000 / rate
        spec = export_spotter(spotter, tmp_path / f"band_{rate}.onnx", streaming=True,
                              sample_rate=rate)
        wave = speechy(2, rate)
        with torch.no_grad():
            want = spotter.model(spotter.frontend(wave), rate_factor=factor).numpy()
        assert rel_err(onnx_stream(spec, wave.numpy())[:, -1], want) < TOL
        clip = export_spotter(spotter, tmp_path / f"band_{rate}_clip.onnx", sample_rate=rate)
        sess = ort.InferenceSession(str(clip.onnx_path), providers=["CPUExecutionProvider"])
        assert rel_err(sess.run(["logits"], {"audio": wave.numpy()})[0], want) < TOL


@pytest.mark.parametrize("family", ["s4", "s4d"])
def test_file_size_follows_parameters_not_chunk_length(tmp_path, family):
    """K = 160 vs 640 samples: a stored K x K matrix per channel would grow 16x, K-long ones 4x.

    The graph builds the chunk constants from the parameters, so the file holds the
    parameters (4 bytes each) and the graph: 1.42x the parameters' bytes here (a
    6-layer H=128 model: 1.29x), and K = 640 adds 15 pieces of a few nodes (+2%).
    """
    spotter = make_spotter(family, "raw", d_model=128, d_state=16, n_layers=1)
    small = export_spotter(spotter, tmp_path / "k160.onnx", streaming=True, chunk_ms=10)
    large = export_spotter(spotter, tmp_path / "k640.onnx", streaming=True, chunk_ms=40)
    assert (small.chunk_samples, large.chunk_samples) == (160, 640)
    assert large.file_bytes < 1.05 * small.file_bytes
    assert large.file_bytes < 1.6 * 4 * large.n_parameters


def test_bidirectional_s4_refuses_export_with_reasons(tmp_path):
    spotter = make_spotter("s4d", "raw", bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional.*no streaming step"):
        export_spotter(spotter, tmp_path / "bi.onnx", streaming=True)
    with pytest.raises(ValueError, match="bidirectional S4 model does not export.*complex FFT"):
        export_spotter(spotter, tmp_path / "bi.onnx")
    assert not list(tmp_path.iterdir())


def test_failed_parity_check_leaves_nothing(tmp_path):
    spotter = make_spotter("lstm", "raw")
    with pytest.raises(ParityError, match="onnxruntime and torch disagree.*tolerance 1e-12"):
        export_spotter(spotter, tmp_path / "x.onnx", tolerance=1e-12)
    assert not list(tmp_path.iterdir())


def test_bad_arguments_are_refused(tmp_path):
    spotter = make_spotter("lstm", "raw")
    with pytest.raises(ValueError, match="must name a .onnx file"):
        export_spotter(spotter, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="opset must be at least 17"):
        export_spotter(spotter, tmp_path / "x.onnx", opset=13)


@pytest.fixture
def checkpoint(tmp_path):
    from kws.training.checkpoint import save_spotter

    spotter = make_spotter("tcn", "mfcc")
    meta = {"task": "sc12", "split": {}, "train": {}, "metrics": {}}
    return save_spotter(tmp_path / "tcn.pt", spotter, meta), spotter


def test_cli_exports_a_checkpoint(tmp_path, checkpoint, capsys):
    path, spotter = checkpoint
    out = tmp_path / "export" / "tcn_stream.onnx"
    clip = tmp_path / "tone.wav"
    save_audio(clip, tone(440.0, seconds=0.7), 16000)  # short: padded to 1 s
    code = main(["export", str(path), "--out", str(out), "--streaming", "--chunk-ms", "20",
                 "--check-audio", str(clip)])
    assert code == 0, capsys.readouterr().err
    spec = ExportSpec.load(out.with_suffix(".json"))
    assert spec.source_checkpoint == str(path) and spec.chunk_samples == 320
    assert spec.parity["audio"] == str(clip)
    assert "parity: max relative error" in capsys.readouterr().out
    wave = speechy(1, 16000)
    with torch.no_grad():
        want = StreamingSpotter(spotter, chunk_ms=20).stream_clip(wave).numpy()
    assert rel_err(onnx_stream(spec, padded_clip(spec, wave.numpy()))[:, -1], want) < TOL


def test_cli_names_a_bad_checkpoint(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert main(["export", str(missing), "--out", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert "kws export: error:" in err and "nope.pt" in err and "no such" in err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["export", str(garbage), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "garbage.pt: not a torch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_refuses_mfcc_chunks_that_do_not_split_the_clip(tmp_path, checkpoint, capsys):
    path, _ = checkpoint
    code = main(["export", str(path), "--out", str(tmp_path / "x.onnx"), "--streaming",
                 "--chunk-ms", "40"])
    assert code == 1 and "chunk_ms=40" in capsys.readouterr().err


def test_parity_check_uses_a_real_clip_when_the_data_is_there(tmp_path, dev_root):
    spec = export_spotter(make_spotter("lstm", "mfcc"), tmp_path / "x.onnx", streaming=True)
    assert spec.parity["audio"].endswith(".wav") and "/yes/" in spec.parity["audio"]
    assert spec.parity["checks"]["stream_vs_clip_onnx"] < TOL


def test_parity_check_falls_back_to_a_synthetic_clip(tmp_path, monkeypatch):
    monkeypatch.setenv("KWS_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr("kws.export.verify.find_real_clip", lambda rate, samples: None)
    spec = export_spotter(make_spotter("lstm", "raw"), tmp_path / "x.onnx")
    assert spec.parity["audio"].startswith("synthetic clip")
