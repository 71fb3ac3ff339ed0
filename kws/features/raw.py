"""Raw audio as features: one time step per sample, one channel, a fixed gain.

The gain is a constant, not a per-clip normalisation: a per-clip RMS or peak
would need the whole clip before the first step, so a stream could not
reproduce clip features, and it would hide the loudness a detector should see.
"""

from __future__ import annotations

from torch import Tensor

from kws.features import FeatureConfig, Frontend

#: fixed gain on the waveform: about 1 / (typical RMS of Speech Commands clips)
RAW_GAIN = 10.0


class RawFrontend(Frontend):
    """(B, T) -> (B, T, 1) scaled samples; the time step is the sample at any rate."""

    def __init__(self, config: FeatureConfig):
        if config.kind != "raw":
            raise ValueError(f"RawFrontend needs kind='raw', got {config.kind!r}")
        super().__init__(config)

    def compute(self, wave: Tensor, cfg: FeatureConfig) -> Tensor:
        return (wave * RAW_GAIN).unsqueeze(-1)
