"""Step backends: one model step on one chunk of audio, for R independent state copies.

The streaming engine never touches a model directly; it talks to a backend with
this small surface, so the ONNX runtime (what we ship) and PyTorch eager (what we
trained, for comparison and for ``kws stream CKPT.pt``) are interchangeable:

* ``sample_rate``, ``chunk_samples``, ``labels``, ``window_s`` (the audio the logits
  summarise: what a fresh state must hear before they mean "the last clip");
* ``set_copies(R)``: hold R state copies (the engine's staggered resets need R > 1);
* ``reset(copy=None)``: put one copy, or all, back to the initial state;
* ``step(chunk)``: feed the same (chunk_samples,) float32 chunk to every copy and
  return their logits, shape (R, n_classes);
* ``step_trusted(chunk)``: the same without the input checks, for a caller that has
  checked the audio already (the engine checks each ``feed`` once, not each chunk).

Copies run as one batch when the model's batch axis is dynamic, else one call each.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np

#: the clip length the models are trained on; the context a fresh state needs
CLIP_SECONDS = 1.0
#: the labels that name "no keyword"; the engine never fires on them
NON_KEYWORDS = ("_unknown_", "_silence_")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Posteriors from logits over the last axis, safe for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class StepBackend:
    """What every backend shares: metadata, input validation and copy bookkeeping."""

    sample_rate: int
    chunk_samples: int
    labels: list[str]
    #: seconds a fresh state must hear before its window holds only real audio: one
    #: clip (1 s), rounded up to whole chunks; MFCC's skipped lead frames are inside it
    window_s: float
    copies: int = 1

    @property
    def chunk_s(self) -> float:
        return self.chunk_samples / self.sample_rate

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def set_copies(self, copies: int) -> None:
        """Hold ``copies`` independent states, all at the initial state."""
        if not isinstance(copies, int) or copies < 1:
            raise ValueError(f"copies must be a positive integer, got {copies!r}")
        self.copies = copies
        self.reset()

    def reset(self, copy: int | None = None) -> None:
        raise NotImplementedError

    def step(self, chunk: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step_trusted(self, chunk: np.ndarray) -> np.ndarray:
        """``step`` for a chunk the caller has checked already: (chunk_samples,) finite
        float32. The engine checks each ``feed`` once instead of 100 chunks a second."""
        return self.step(chunk)

    def check_chunk(self, chunk: Any) -> np.ndarray:
        """The chunk as given, or a clear error: it must be (chunk_samples,) finite float32."""
        if not isinstance(chunk, np.ndarray):
            raise TypeError(f"chunk must be a numpy array, got {type(chunk).__name__}")
        if chunk.dtype != np.float32:
            raise TypeError(
                f"chunk must be float32 audio in [-1, 1], got dtype {chunk.dtype} "
                "(StreamingDetector converts int16 and float64 for you)"
            )
        if chunk.shape != (self.chunk_samples,):
            raise ValueError(
                f"chunk must have shape ({self.chunk_samples},) = {self.chunk_s * 1000:g} ms at "
                f"{self.sample_rate} Hz, got {chunk.shape} (StreamingDetector buffers any size)"
            )
        if not np.isfinite(chunk).all():
            raise ValueError(f"chunk holds {int(np.sum(~np.isfinite(chunk)))} NaN or Inf samples")
        return chunk

    def _check_copy(self, copy: int | None) -> None:
        if copy is not None and not 0 <= copy < self.copies:
            raise IndexError(f"copy {copy} out of range for {self.copies} state copies")

    def describe(self) -> str:
        return (
            f"{type(self).__name__}: {len(self.labels)} labels, {self.sample_rate} Hz, "
            f"chunk {self.chunk_samples} samples ({self.chunk_s * 1000:g} ms), "
            f"window {self.window_s:g} s"
        )


def export_folders() -> list[Path]:
    """Where shipped exports are looked for by name: ./export, then the export/ folder of
    the checkout kws runs from (the same folder when kws runs from its checkout)."""
    here = Path(__file__).resolve().parents[2] / "export"
    return list(dict.fromkeys([Path("export").resolve(), here]))


def sidecar_path(onnx_path: str | Path) -> Path:
    """``NAME.json`` beside ``NAME.onnx``: where ``kws export`` writes the model's description."""
    return Path(onnx_path).with_suffix(".json")


def _rows(state: Any, axis: int) -> Any:
    """A view of ``state`` with its batch axis first, so ``_rows(s, a)[i]`` is copy i."""
    return state.movedim(axis, 0) if hasattr(state, "movedim") else np.moveaxis(state, axis, 0)


#: numpy dtypes of the ONNX tensor types a logits output may have
ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
               "tensor(float16)": np.float16}


class BoundCall:
    """One onnxruntime call over ``rows`` state rows, bound once to preallocated buffers.

    The states live in two buffer sets: call p reads set p and writes set 1 - p, so a
    step allocates nothing, copies no state and converts no array. ``session.run``
    does all three for every input and output: on the 10-ms MFCC exports about
    0.05 ms a step, a quarter of what the model itself costs. The audio and logits
    buffers belong to the caller: ``logits`` is this call's rows of them.
    """

    def __init__(
        self, session: Any, spec: Any, rows: int, audio: np.ndarray, logits: np.ndarray
    ):
        from onnxruntime import OrtValue

        self.session = session
        self.buffers = [[s.zeros(rows) for s in spec.states] for _ in range(2)]
        self.values = [[OrtValue.ortvalue_from_numpy(b) for b in set_] for set_ in self.buffers]
        audio_value, logits_value = (OrtValue.ortvalue_from_numpy(a) for a in (audio, logits))
        self.bindings = []
        for reads in (0, 1):
            binding = session.io_binding()
            binding.bind_ortvalue_input(spec.audio_input, audio_value)
            binding.bind_ortvalue_output(spec.logits_output, logits_value)
            for state, value_in, value_out in zip(
                spec.states, self.values[reads], self.values[1 - reads], strict=True
            ):
                binding.bind_ortvalue_input(state.name, value_in)
                binding.bind_ortvalue_output(state.output, value_out)
            self.bindings.append(binding)
        self.reads = 0

    @property
    def states(self) -> list[np.ndarray]:
        """The buffers the next call reads: the current states, one array per state."""
        return self.buffers[self.reads]

    def run(self) -> None:
        self.session.run_with_iobinding(self.bindings[self.reads])
        self.reads ^= 1


class OnnxStepBackend(StepBackend):
    """An exported streaming step model run by onnxruntime.

    The sidecar (``kws.export.sidecar.ExportSpec``) names the audio input, the
    logits output and each state with its next-value output and its shape, where
    ``null`` marks the batch axis. Every state starts at zeros, as in training.
    States stay in preallocated buffers bound to the session (``BoundCall``);
    ``states`` returns a copy of them.
    """

    def __init__(self, onnx_path: str | Path, threads: int = 1, copies: int = 1):
        import onnxruntime as ort

        from kws.export.sidecar import ExportSpec

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        if not sidecar_path(self.path).is_file():
            raise FileNotFoundError(
                f"{sidecar_path(self.path)}: no sidecar beside {self.path.name}; `kws export` "
                "writes NAME.onnx and NAME.json together, keep them side by side"
            )
        self.spec = spec = ExportSpec.load(sidecar_path(self.path))
        if spec.kind != "streaming":
            raise ValueError(
                f"{self.path}: a {spec.kind!r} export, not a streaming step model; export one "
                "with `kws export --streaming`"
            )
        self.sample_rate = spec.sample_rate
        self.chunk_samples = spec.samples_per_call
        self.labels = list(spec.labels)
        # MFCC framing skips a few lead chunks, so a fresh state needs one whole clip
        # (not only window_chunks) before its window holds nothing but real audio.
        clip_chunks = math.ceil(CLIP_SECONDS * self.sample_rate / self.chunk_samples - 1e-9)
        self.window_s = max(spec.window_chunks or 0, clip_chunks) * self.chunk_s
        self.threads = threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: onnxruntime cannot load it ({err})") from err
        inputs = {i.name: i for i in self.session.get_inputs()}
        expected = [spec.audio_input] + [s.name for s in spec.states]
        if set(inputs) != set(expected):
            raise ValueError(
                f"{self.path}: model inputs {sorted(inputs)} do not match the sidecar's "
                f"{sorted(expected)}"
            )
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.output_names = [spec.logits_output] + [s.output for s in spec.states]
        if not set(self.output_names) <= set(outputs):
            raise ValueError(
                f"{self.path}: model outputs {sorted(outputs)} lack the sidecar's "
                f"{sorted(set(self.output_names) - set(outputs))}"
            )
        logits_type = outputs[spec.logits_output].type
        if logits_type not in ONNX_DTYPES:
            raise ValueError(f"{self.path}: logits of type {logits_type}, expected one of "
                             f"{sorted(ONNX_DTYPES)}")
        self.logits_dtype = ONNX_DTYPES[logits_type]
        #: all copies go through one call when every batch axis is dynamic
        self.batched = not isinstance(inputs[spec.audio_input].shape[0], int) and all(
            s.batch_axis is not None for s in spec.states
        )
        self.axes = [s.batch_axis if s.batch_axis is not None else 0 for s in spec.states]
        self.state_names = [s.name for s in spec.states]
        self.set_copies(copies)

    def reset(self, copy: int | None = None) -> None:
        self._check_copy(copy)
        if copy is None:
            # new buffers and bindings, never shared with a shallow copy of this backend
            rows = self.copies if self.batched else 1
            self._audio = np.zeros((rows, self.chunk_samples), np.float32)
            self._logits = np.zeros((self.copies, self.n_classes), self.logits_dtype)
            if self.batched:
                self._calls = [BoundCall(self.session, self.spec, rows, self._audio, self._logits)]
            else:  # one call per copy, each writing its row of the logits
                self._calls = [
                    BoundCall(self.session, self.spec, 1, self._audio, self._logits[i : i + 1])
                    for i in range(self.copies)
                ]
            return
        if self.batched:
            for state, axis in zip(self._calls[0].states, self.axes, strict=True):
                _rows(state, axis)[copy] = 0
        else:
            for state in self._calls[copy].states:
                state[...] = 0

    @property
    def states(self) -> list[np.ndarray]:
        """A copy of each state, every copy's rows along its batch axis."""
        if self.batched:
            return [state.copy() for state in self._calls[0].states]
        per_state = zip(*(call.states for call in self._calls), strict=True)
        return [np.concatenate(rows, axis=axis)
                for rows, axis in zip(per_state, self.axes, strict=True)]

    def step(self, chunk: np.ndarray) -> np.ndarray:
        return self.step_trusted(self.check_chunk(chunk))

    def step_trusted(self, chunk: np.ndarray) -> np.ndarray:
        np.copyto(self._audio, chunk)  # one row per copy (batched) or one shared row
        for call in self._calls:
            call.run()
        return self._logits.copy()


class TorchStepBackend(StepBackend):
    """The same step in PyTorch eager, from a checkpoint or a ``StreamingSpotter``.

    Any module with StreamingSpotter's surface works: ``forward(audio (B, K), *states)
    -> (logits, *next_states)``, ``initial_states(batch)``, ``labels``,
    ``sample_rate``, ``chunk_samples``, ``window_chunks`` and optionally
    ``clip_chunks`` and ``state_batch_axes`` (default: batch first).
    """

    def __init__(
        self,
        source: Any,
        chunk_ms: float = 10.0,
        sample_rate: int | None = None,
        threads: int | None = None,
        copies: int = 1,
    ):
        import torch

        self.torch = torch
        if threads is not None:
            if not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be a positive integer, got {threads!r}")
            torch.set_num_threads(threads)
        self.threads = threads
        if isinstance(source, (str, Path)):
            from kws.streaming.step_model import StreamingSpotter
            from kws.training.checkpoint import load_spotter

            spotter, _ = load_spotter(source)
            source = StreamingSpotter(spotter, chunk_ms=chunk_ms, sample_rate=sample_rate)
        self.module = source.eval()
        self.sample_rate = int(source.sample_rate)
        self.chunk_samples = int(source.chunk_samples)
        self.labels = [str(label) for label in source.labels]
        context = getattr(source, "clip_chunks", None) or source.window_chunks
        self.window_s = context * self.chunk_s
        n_states = len(source.initial_states(1))
        self.axes = list(getattr(source, "state_batch_axes", [0] * n_states))
        self.set_copies(copies)

    def reset(self, copy: int | None = None) -> None:
        self._check_copy(copy)
        if copy is None:
            self.states = list(self.module.initial_states(self.copies))
            return
        fresh = self.module.initial_states(1)
        with self.torch.inference_mode():  # states come out of inference mode: write them in it
            for state, init, axis in zip(self.states, fresh, self.axes, strict=True):
                _rows(state, axis)[copy] = _rows(init, axis)[0]

    def step(self, chunk: np.ndarray) -> np.ndarray:
        return self.step_trusted(self.check_chunk(chunk))

    def step_trusted(self, chunk: np.ndarray) -> np.ndarray:
        torch = self.torch
        audio = torch.from_numpy(chunk).unsqueeze(0).expand(self.copies, -1)
        with torch.inference_mode():
            logits, *self.states = self.module(audio, *self.states)
        return logits.float().numpy()


class EnsembleBackend(StepBackend):
    """Several step models on the same audio, their posteriors averaged.

    Models trained with different seeds make different mistakes on words they
    were not trained to spot, so the average of their posteriors crosses a
    threshold on fewer of them (``kws bench stream`` measures it). Each member
    keeps its own states; all must agree on rate, chunk, labels and window. The
    engine applies softmax to what ``step`` returns, so it returns the log of the
    mean posterior: softmax of that is the mean itself.
    """

    def __init__(self, members: list[StepBackend]):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two models, got {len(members)}")
        first = members[0]
        for other in members[1:]:
            for name in ("sample_rate", "chunk_samples", "labels", "window_s"):
                if getattr(other, name) != getattr(first, name):
                    raise ValueError(
                        f"ensemble members disagree on {name}: {describe_member(first)} has "
                        f"{getattr(first, name)!r}, {describe_member(other)} "
                        f"{getattr(other, name)!r}; export them alike (same --chunk-ms, "
                        f"--rate and task)"
                    )
        self.members = members
        self.sample_rate, self.chunk_samples = first.sample_rate, first.chunk_samples
        self.labels, self.window_s = list(first.labels), first.window_s
        self.set_copies(first.copies)

    def __copy__(self) -> EnsembleBackend:
        """A copy whose members are copies too: the demo server gives each listener a
        shallow copy of the backend, and each copy must own its members' states."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.members = [copy.copy(member) for member in self.members]
        return new

    def set_copies(self, copies: int) -> None:
        for member in self.members:
            member.set_copies(copies)
        self.copies = copies

    def reset(self, copy: int | None = None) -> None:
        for member in self.members:
            member.reset(copy)

    def step(self, chunk: np.ndarray) -> np.ndarray:
        return self.step_trusted(self.check_chunk(chunk))

    def step_trusted(self, chunk: np.ndarray) -> np.ndarray:
        mean = sum(softmax(member.step_trusted(chunk).astype(np.float64))
                   for member in self.members) / len(self.members)
        return np.log(np.maximum(mean, 1e-300))

    def describe(self) -> str:
        names = ", ".join(describe_member(m) for m in self.members)
        return f"EnsembleBackend of {len(self.members)} ({names}): " + super().describe()


def describe_member(backend: StepBackend) -> str:
    path = getattr(backend, "path", None)
    return str(path) if path is not None else type(backend).__name__


def split_models(model: str | Path) -> list[Path]:
    """``a.onnx,b.onnx``: the models of an ensemble, in order (one path: a list of one)."""
    parts = [part.strip() for part in str(model).split(",")]
    if any(not part for part in parts):
        raise ValueError(f"{model}: an empty name in the comma-separated list of models")
    return [Path(part) for part in parts]


def open_backend(
    model: str | Path, threads: int = 1, chunk_ms: float | None = None, copies: int = 1
) -> StepBackend:
    """An ONNX model (``.onnx``) or a PyTorch checkpoint (``.pt``/``.ckpt``) as a backend.

    ``chunk_ms`` picks the step of a checkpoint; an ONNX model's step is fixed at
    export, so a different ``chunk_ms`` is an error rather than a silent change.
    Several models separated by commas (``a.onnx,b.onnx``) run as one
    ``EnsembleBackend`` that averages their posteriors.
    """
    paths = split_models(model)
    if len(paths) > 1:
        return EnsembleBackend([open_backend(p, threads, chunk_ms, copies) for p in paths])
    path = paths[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.suffix == ".onnx":
        backend: StepBackend = OnnxStepBackend(path, threads=threads, copies=copies)
        exported_ms = backend.chunk_s * 1000
        if chunk_ms is not None and not math.isclose(chunk_ms, exported_ms, abs_tol=1e-6):
            raise ValueError(
                f"{path}: exported with {exported_ms:g} ms chunks, not {chunk_ms:g} ms; "
                "re-export with --chunk-ms, or leave --chunk-ms out"
            )
        return backend
    if path.suffix in (".pt", ".ckpt"):
        return TorchStepBackend(path, chunk_ms=10.0 if chunk_ms is None else chunk_ms,
                                threads=threads, copies=copies)
    raise ValueError(f"{path}: expected an exported .onnx model or a .pt/.ckpt checkpoint")
