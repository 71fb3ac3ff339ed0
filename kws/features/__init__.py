"""Features: waveform (B, T) -> model input (B, L, C), for whole clips and for streams.

Two kinds, both free of per-clip statistics so that a clip and the same audio
fed chunk by chunk give the same features:

* ``raw``: one time step per sample, C = 1, scaled by a fixed constant
  (:mod:`kws.features.raw`). S4 changes its step dt to run at another rate.
* ``mfcc``: 20 cepstral coefficients from 40 log-mel bands (:mod:`kws.features.mfcc`).

The MFCC settings and why:

* 25 ms windows every 10 ms are the standard keyword-spotting framing (100
  frames per second, 98 frames per one-second clip).
* Window and hop are fixed in milliseconds and the mel bands in Hz, so audio at
  another sample rate gives the same frame rate and the same bands; the
  MFCC models need no change at all to run at 8 kHz.
* 40 mel bands from 20 Hz to 4 kHz. The S4 repository uses 20 coefficients from
  64 log-mels over the full band; we stop at 4 kHz, the Nyquist frequency of 8 kHz
  audio, so every band exists (and is identical) at 8 kHz, and use 40 bands so
  that the narrowest band still covers several FFT bins at 8 kHz (bins are 31.25
  Hz apart at both 16 and 8 kHz). MFCC features therefore work down to 8 kHz;
  ``at_rate`` refuses lower rates.
* The window length rounds to whole samples; n_fft is the next power of two.
* Band energies are power densities (per Hz, see :mod:`kws.features.mfcc`), so
  speech bands sit near -100 dB. ``log_floor`` is 1e-13 (-130 dB): a floor of
  1e-10 clipped 48% of the log-mel values of Speech Commands speech, 1e-13
  clips 6% (mostly digitally silent frames) and stays above the 16-bit
  quantisation noise of the clips (about -143 dB in these units).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

KINDS = ("raw", "mfcc")
_INT_FIELDS = ("sample_rate", "n_mfcc", "n_mels")


@dataclass(frozen=True)
class FeatureConfig:
    """What the frontend computes; saved in checkpoints and export sidecars as a dict."""

    kind: str
    sample_rate: int = 16000
    n_mfcc: int = 20
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    f_min: float = 20.0
    f_max: float = 4000.0
    log_floor: float = 1e-13

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"FeatureConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.sample_rate <= 0:
            raise ValueError(f"FeatureConfig.sample_rate must be positive, got {self.sample_rate}")
        if not 1 <= self.n_mfcc <= self.n_mels:
            raise ValueError(
                f"FeatureConfig needs 1 <= n_mfcc <= n_mels, got n_mfcc={self.n_mfcc}, "
                f"n_mels={self.n_mels}"
            )
        if not 0 < self.hop_ms <= self.win_ms:
            raise ValueError(
                f"FeatureConfig needs 0 < hop_ms <= win_ms, got hop_ms={self.hop_ms}, "
                f"win_ms={self.win_ms}"
            )
        if not 0 <= self.f_min < self.f_max:
            raise ValueError(
                f"FeatureConfig needs 0 <= f_min < f_max, got f_min={self.f_min}, "
                f"f_max={self.f_max}"
            )
        if not self.log_floor > 0:
            raise ValueError(f"FeatureConfig.log_floor must be positive, got {self.log_floor}")
        if self.kind == "mfcc":
            nyquist = self.sample_rate / 2
            if self.f_max > nyquist:
                raise ValueError(
                    f"MFCC f_max={self.f_max:g} Hz is above the Nyquist frequency {nyquist:g} Hz "
                    f"of {self.sample_rate} Hz audio; with f_max={self.f_max:g} the MFCC "
                    f"frontend needs sample_rate >= {2 * self.f_max:g}"
                )
            if round(self.sample_rate * self.hop_ms / 1000) < 1:
                raise ValueError(
                    f"hop_ms={self.hop_ms} is less than one sample at {self.sample_rate} Hz"
                )

    # -- derived sizes ---------------------------------------------------------------------

    @property
    def channels(self) -> int:
        """C, the feature channels a model sees."""
        return 1 if self.kind == "raw" else self.n_mfcc

    @property
    def frame_rate(self) -> float:
        """Model time steps per second (nominal for MFCC: 1000 / hop_ms)."""
        return float(self.sample_rate) if self.kind == "raw" else 1000.0 / self.hop_ms

    @property
    def win_length(self) -> int:
        """Samples one time step sees: 1 for raw, the analysis window for MFCC."""
        return 1 if self.kind == "raw" else round(self.sample_rate * self.win_ms / 1000)

    @property
    def hop_length(self) -> int:
        """Samples between consecutive time steps: 1 for raw."""
        return 1 if self.kind == "raw" else round(self.sample_rate * self.hop_ms / 1000)

    @property
    def n_fft(self) -> int:
        """FFT size: the next power of two >= win_length (the window is zero-padded)."""
        return 1 << (self.win_length - 1).bit_length()

    def at_rate(self, sample_rate: int) -> FeatureConfig:
        """The same features for audio at ``sample_rate``: same ms and Hz, new sample counts.

        Raises ValueError when f_max is above the new Nyquist frequency (MFCC below 8 kHz).
        """
        if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate:
            raise ValueError(f"sample_rate must be a whole number of Hz, got {sample_rate!r}")
        return dataclasses.replace(self, sample_rate=int(sample_rate))

    def num_frames(self, num_samples: int) -> int:
        """Time steps from ``num_samples`` samples (0 when shorter than one window)."""
        if num_samples < self.win_length:
            return 0
        return (num_samples - self.win_length) // self.hop_length + 1

    # -- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureConfig:
        """Inverse of ``to_dict``; unknown keys are an error (a typo must not be ignored)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"feature config must be a mapping, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown feature config key(s) {unknown}; known keys are {sorted(fields)}"
            )
        if "kind" not in data:
            raise ValueError(f"feature config needs 'kind' (one of {KINDS})")
        values: dict[str, Any] = {}
        for name, value in data.items():
            kind = str if name == "kind" else int if name in _INT_FIELDS else float
            ok = isinstance(value, str) if kind is str else (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and (kind is float or float(value).is_integer())
            )
            if not ok:
                raise ValueError(
                    f"feature config {name!r} must be a {kind.__name__}, got {value!r}"
                )
            values[name] = kind(value)
        return cls(**values)


class Frontend(nn.Module):
    """Waveform (B, T) -> features (B, L, C), for clips (``forward``) and streams (``step``).

    Time step i covers samples [i * hop, i * hop + win) (no centring, no padding),
    so features never depend on audio outside their window and any split of a
    signal into chunks gives the same steps.
    """

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.config = config

    def rate_config(self, sample_rate: int | None = None) -> FeatureConfig:
        """The config for audio at ``sample_rate`` (None: the configured rate)."""
        if sample_rate is None or sample_rate == self.config.sample_rate:
            return self.config
        return self.config.at_rate(sample_rate)

    def forward(self, wave: Tensor, sample_rate: int | None = None) -> Tensor:
        """(B, T) float waveform -> (B, L, C) features."""
        return self.compute(wave, self.checked_config(wave, sample_rate))

    def checked_config(self, wave: Tensor, sample_rate: int | None) -> FeatureConfig:
        """The config at ``sample_rate``, after checking that ``wave`` holds at least one step."""
        cfg = self.rate_config(sample_rate)
        check_wave(wave, "wave")
        if wave.shape[1] < cfg.win_length:
            raise ValueError(
                f"wave has {wave.shape[1]} samples; {cfg.kind} features need at least "
                f"{cfg.win_length} (one {cfg.win_ms:g} ms window at {cfg.sample_rate} Hz)"
            )
        return cfg

    def compute(self, wave: Tensor, cfg: FeatureConfig) -> Tensor:
        """Features of a checked (B, T >= win) wave; subclasses implement this."""
        raise NotImplementedError

    def initial_state(self, batch: int, sample_rate: int | None = None) -> Tensor:
        """The state before the first ``step``: (B, win - hop) zeros, silence before the stream.

        With chunks of whole hops the state keeps this shape forever (exportable),
        and every output step ends exactly at a chunk boundary: step i covers the
        stream's samples [(i + 1) * hop - win, (i + 1) * hop).
        """
        cfg = self.rate_config(sample_rate)
        return torch.zeros(batch, cfg.win_length - cfg.hop_length)

    def step(
        self, chunk: Tensor, state: Tensor, sample_rate: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """(B, k) new samples and (B, s) leftover samples -> ((B, l, C) steps completed, leftover).

        Any k works; for ONNX export use k = m * hop, which gives exactly m steps
        and a state of fixed size win - hop.
        """
        cfg = self.rate_config(sample_rate)
        check_wave(chunk, "chunk")
        buffer = torch.cat([state.to(chunk), chunk], dim=1)
        # int(): a plain number, so an ONNX trace slices with constants and keeps the
        # frame count static (the exporter needs it for unfold); chunks are fixed there.
        n = cfg.num_frames(int(buffer.shape[1]))
        if n == 0:
            return buffer.new_zeros(buffer.shape[0], 0, cfg.channels), buffer
        used = (n - 1) * cfg.hop_length + cfg.win_length
        return self.compute(buffer[:, :used], cfg), buffer[:, n * cfg.hop_length :]


def check_wave(wave: Tensor, name: str) -> None:
    """Fail early, naming the argument, on anything that is not a (B, T) float tensor."""
    if not isinstance(wave, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, T), got {type(wave).__name__}")
    if wave.ndim != 2 or not wave.is_floating_point():
        raise ValueError(
            f"{name} must be a float tensor of shape (B, T), got {wave.dtype} of shape "
            f"{tuple(wave.shape)}"
        )


class StreamingFrontend:
    """Feed audio in chunks of any size; get each time step as soon as its window is full.

    It starts with no samples buffered, so the steps it returns over a stream are
    exactly ``frontend(whole_stream)``; pass ``preroll=True`` to start from
    ``frontend.initial_state`` instead (the fixed-size state of the exported step).
    """

    def __init__(
        self,
        frontend: Frontend,
        batch: int = 1,
        sample_rate: int | None = None,
        preroll: bool = False,
    ):
        self.frontend = frontend
        self.batch = batch
        self.sample_rate = sample_rate
        self.preroll = preroll
        self.reset()

    def reset(self) -> None:
        """Forget all buffered audio: the next chunk starts a new stream."""
        if self.preroll:
            self.state = self.frontend.initial_state(self.batch, self.sample_rate)
        else:
            self.state = torch.zeros(self.batch, 0)

    @torch.no_grad()
    def push(self, chunk: Tensor) -> Tensor:
        """(B, k) or (k,) samples -> (B, l, C) newly completed steps (l may be 0)."""
        if isinstance(chunk, Tensor) and chunk.ndim == 1:
            chunk = chunk.unsqueeze(0)
        features, self.state = self.frontend.step(chunk, self.state, self.sample_rate)
        return features


def build_frontend(config: FeatureConfig) -> Frontend:
    """The frontend module for ``config.kind``."""
    if config.kind == "raw":
        from kws.features.raw import RawFrontend

        return RawFrontend(config)
    from kws.features.mfcc import MFCCFrontend

    return MFCCFrontend(config)


__all__ = ["FeatureConfig", "Frontend", "StreamingFrontend", "build_frontend", "check_wave"]
