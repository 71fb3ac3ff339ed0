"""KeywordSpotter: the one object the later stages need, waveform in, logits out, at any rate.

It ties a frontend to a model and to the labels that name the model's outputs,
and knows how a sample rate other than the trained one reaches the model:
MFCC frames are 10 ms at every rate, so the model sees nothing new
(rate_factor 1); on raw audio a time step is one sample, so a continuous-time
model (S4) must stretch its step dt by trained_rate / input_rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kws.features import FeatureConfig, build_frontend
from kws.models.base import KWSModel


class KeywordSpotter(nn.Module):
    """Frontend + model + labels. ``forward(wave (B, T), sample_rate)`` -> (B, n_classes) logits."""

    def __init__(
        self,
        feature_config: FeatureConfig,
        model: KWSModel,
        labels: Sequence[str],
        clip_seconds: float = 1.0,
    ):
        super().__init__()
        if model.in_channels != feature_config.channels:
            raise ValueError(
                f"model takes {model.in_channels} input channels but {feature_config.kind} "
                f"features have {feature_config.channels}"
            )
        labels = list(labels)
        if len(labels) != model.n_classes:
            raise ValueError(f"model has {model.n_classes} outputs but {len(labels)} labels given")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique, got {labels}")
        if not clip_seconds > 0:
            raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
        self.feature_config = feature_config
        self.frontend = build_frontend(feature_config)
        self.model = model
        self.labels = labels
        self.clip_seconds = float(clip_seconds)

    @property
    def sample_rate(self) -> int:
        """The rate the model was trained at."""
        return self.feature_config.sample_rate

    def rate_factor(self, sample_rate: int | None = None) -> float:
        """trained_rate / input_rate for raw audio, 1.0 for MFCC (its frame rate never changes).

        Raises ValueError for a rate the features cannot serve (MFCC below 2 * f_max).
        """
        if sample_rate is None:
            return 1.0
        cfg = self.feature_config.at_rate(sample_rate)
        return self.sample_rate / cfg.sample_rate if cfg.kind == "raw" else 1.0

    def clip_samples(self, sample_rate: int | None = None) -> int:
        """Samples in one clip (``clip_seconds``) at ``sample_rate`` (None: the trained rate)."""
        rate = self.sample_rate if sample_rate is None else sample_rate
        return round(self.clip_seconds * rate)

    def forward(self, wave: Tensor, sample_rate: int | None = None) -> Tensor:
        """(B, T) waveform at ``sample_rate`` (None: the trained rate) -> (B, n_classes) logits."""
        features = self.frontend(wave, sample_rate)
        return self.model(features, self.rate_factor(sample_rate))

    @torch.no_grad()
    def predict(self, wave: Tensor, sample_rate: int | None = None) -> list[tuple[str, float]]:
        """The most likely label and its softmax probability, one pair per clip."""
        probs = self.forward(wave, sample_rate).softmax(dim=-1)
        best = probs.max(dim=-1)
        return [
            (self.labels[i], float(p))
            for i, p in zip(best.indices.tolist(), best.values.tolist(), strict=True)
        ]
