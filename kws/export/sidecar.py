"""The JSON sidecar beside every exported ONNX file: how to drive it, and where it came from.

A runtime that knows nothing about torch or kws can run an export with the
sidecar alone: the sample rate and the samples per call, the input and output
names, every recurrent state with its shape, the labels, and the numbers that
say how far the ONNX file was checked against torch. ``states`` lists each
state input with the output that carries its next value; a ``null`` in a shape
is the batch axis. Every state starts at zeros (``ExportSpec.initial_states``).

Schema, ``format_version`` 1::

    {"format_version": 1, "kws_version": "0.1.0", "kind": "clip" | "streaming",
     "sample_rate": 16000, "clip_samples": 16000 (clip) | "chunk_samples": 160 (streaming),
     "labels": [...], "audio_input": "audio", "logits_output": "logits",
     "states": [{"name": "state_x", "output": "next_state_x", "shape": [null, 4],
                 "dtype": "float32"}],
     "window_chunks": 100, "feature_config": {...}, "model_config": {...},
     "rate_factor": 1.0, "trained_rate": 16000, "source_checkpoint": "models/x.pt",
     "parity": {"max_rel_err": 3e-7, "tolerance": 1e-4, ...},
     "onnx_file": "NAME.onnx", "n_parameters": 12345, "file_bytes": 67890}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import kws

KINDS = ("clip", "streaming")
DTYPES = {"float32": np.float32}


class SidecarError(ValueError):
    """A sidecar this kws cannot use; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state: ONNX input ``name``, its next value in output ``output``."""

    name: str
    output: str
    shape: list[int | None]  # None marks the batch axis
    dtype: str = "float32"

    @property
    def batch_axis(self) -> int | None:
        return self.shape.index(None) if None in self.shape else None

    def zeros(self, batch: int) -> np.ndarray:
        """The initial value for ``batch`` streams."""
        shape = [batch if size is None else size for size in self.shape]
        return np.zeros(shape, dtype=DTYPES[self.dtype])


@dataclass(frozen=True)
class ExportSpec:
    """The sidecar as a typed object; ``load`` checks every field it reads."""

    kind: str
    sample_rate: int
    labels: list[str]
    feature_config: dict[str, Any]
    model_config: dict[str, Any]
    rate_factor: float
    trained_rate: int
    onnx_file: str
    chunk_samples: int | None = None
    clip_samples: int | None = None
    audio_input: str = "audio"
    logits_output: str = "logits"
    states: list[StateSpec] = field(default_factory=list)
    window_chunks: int | None = None
    source_checkpoint: str | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    n_parameters: int = 0
    file_bytes: int = 0
    format_version: int = kws.FORMAT_VERSION
    kws_version: str = kws.__version__
    #: the sidecar's own path once saved or loaded; onnx_file is relative to its folder
    path: Path | None = field(default=None, compare=False)

    # -- derived -------------------------------------------------------------------------------

    @property
    def samples_per_call(self) -> int:
        """Samples the ``audio`` input takes per run: a chunk, or a whole clip."""
        value = self.chunk_samples if self.kind == "streaming" else self.clip_samples
        assert value is not None
        return value

    @property
    def onnx_path(self) -> Path:
        """The ONNX file, next to the sidecar."""
        base = self.path.parent if self.path is not None else Path(".")
        return base / self.onnx_file

    def initial_states(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Input name -> zeros of the right shape: the feed before the first chunk."""
        return {s.name: s.zeros(batch) for s in self.states}

    # -- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        data["states"] = [dataclasses.asdict(s) for s in self.states]
        # One of the two sample counts, as the schema says, not a null for the other.
        data.pop("clip_samples" if self.kind == "streaming" else "chunk_samples")
        if self.kind == "clip":
            data.pop("window_chunks")
        first = ["format_version", "kws_version", "kind", "sample_rate"]
        return {**{k: data.pop(k) for k in first}, **data}

    def save(self, path: str | Path) -> ExportSpec:
        """Write the sidecar as indented JSON; returns the spec with ``path`` set."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return dataclasses.replace(self, path=path)

    @classmethod
    def load(cls, path: str | Path) -> ExportSpec:
        """Read and check a sidecar; any problem raises SidecarError naming the file and key."""
        path = Path(path)
        if not path.is_file():
            raise SidecarError(path, "no such sidecar file")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SidecarError(path, f"not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise SidecarError(path, f"holds a JSON {type(data).__name__}, not an object")
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | Path | None = None) -> ExportSpec:
        """The spec of a parsed sidecar; ``path`` (where it was read) names it in errors."""
        where = path if path is not None else "<sidecar>"

        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            if key not in data:
                raise SidecarError(where, f"missing key {key!r}")
            value = data[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise SidecarError(where, f"{key!r} has the wrong type: {value!r}")
            return value

        version = data.get("format_version")
        if version != kws.FORMAT_VERSION:
            raise SidecarError(
                path,
                f"format_version {version!r}; this kws {kws.__version__} reads format_version "
                f"{kws.FORMAT_VERSION} only (re-export with this kws)",
            )
        kind = need("kind", str)
        if kind not in KINDS:
            raise SidecarError(where, f"'kind' must be one of {KINDS}, got {kind!r}")
        count_key = "chunk_samples" if kind == "streaming" else "clip_samples"
        samples = need(count_key, int)
        if samples <= 0:
            raise SidecarError(where, f"{count_key!r} must be positive, got {samples}")
        states = []
        for i, s in enumerate(need("states", list)):
            if not isinstance(s, dict) or not {"name", "output", "shape"} <= set(s):
                raise SidecarError(where, f"states[{i}] needs 'name', 'output' and 'shape'")
            shape = s["shape"]
            if not isinstance(shape, list) or not all(
                d is None or (isinstance(d, int) and d >= 0) for d in shape
            ):
                raise SidecarError(where, f"states[{i}].shape must list sizes or null: {shape!r}")
            dtype = s.get("dtype", "float32")
            if dtype not in DTYPES:
                raise SidecarError(where, f"states[{i}].dtype {dtype!r} is not in {list(DTYPES)}")
            states.append(StateSpec(str(s["name"]), str(s["output"]), list(shape), dtype))
        if kind == "clip" and states:
            raise SidecarError(where, "a clip export has no states")
        window = data.get("window_chunks")
        if kind == "streaming" and not (isinstance(window, int) and window > 0):
            raise SidecarError(where, f"'window_chunks' must be a positive int, got {window!r}")
        return cls(
            kind=kind,
            sample_rate=need("sample_rate", int),
            labels=[str(x) for x in need("labels", list)],
            feature_config=dict(need("feature_config", dict)),
            model_config=dict(need("model_config", dict)),
            rate_factor=float(need("rate_factor", (int, float))),
            trained_rate=need("trained_rate", int),
            onnx_file=need("onnx_file", str),
            chunk_samples=samples if kind == "streaming" else None,
            clip_samples=samples if kind == "clip" else None,
            audio_input=need("audio_input", str),
            logits_output=need("logits_output", str),
            states=states,
            window_chunks=window if kind == "streaming" else None,
            source_checkpoint=data.get("source_checkpoint"),
            parity=dict(data.get("parity") or {}),
            n_parameters=int(data.get("n_parameters", 0)),
            file_bytes=int(data.get("file_bytes", 0)),
            format_version=version,
            kws_version=str(data.get("kws_version", "")),
            path=Path(path) if path is not None else None,
        )
