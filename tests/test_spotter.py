"""KeywordSpotter: waveform in, logits out, with the right rate_factor at every sample rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tone

from kws.features import FeatureConfig
from kws.models.base import KWSModel
from kws.spotter import KeywordSpotter

LABELS = ["yes", "no", "_unknown_"]


class MeanLinear(KWSModel):
    """The smallest KWSModel: identity features, mean over time, linear head."""

    family = "mean-linear"

    def __init__(self, in_channels: int, n_classes: int):
        super().__init__(in_channels, n_classes, d_model=in_channels)
        self.rate_factors: list[float] = []

    def features(self, x: torch.Tensor, rate_factor: float = 1.0) -> torch.Tensor:
        self.rate_factors.append(rate_factor)
        return x


def chord(rate: int) -> torch.Tensor:
    """The same band-limited sound (tones below 3.5 kHz) sampled at ``rate``: (1, rate)."""
    freqs = (220.0, 570.0, 1330.0, 2450.0, 3390.0)
    wave = np.sum([tone(f, rate=rate, amp=0.1) for f in freqs], axis=0)
    return torch.from_numpy(wave)[None]


def spotter(kind: str) -> KeywordSpotter:
    torch.manual_seed(0)
    cfg = FeatureConfig(kind)
    return KeywordSpotter(cfg, MeanLinear(cfg.channels, len(LABELS)), LABELS)


@pytest.mark.parametrize("kind", ["raw", "mfcc"])
def test_logits_are_model_of_frontend(kind):
    kws = spotter(kind)
    wave = 0.1 * torch.randn(4, 16000)
    logits = kws(wave)
    assert logits.shape == (4, 3)
    torch.testing.assert_close(logits, kws.model.head(kws.frontend(wave).mean(1)))
    assert kws.model.rate_factors == [1.0]


def test_rate_factor_and_clip_samples():
    raw, mfcc = spotter("raw"), spotter("mfcc")
    assert raw.rate_factor(8000) == 2.0 and raw.rate_factor(48000) == pytest.approx(1 / 3)
    assert raw.rate_factor() == mfcc.rate_factor() == 1.0
    assert mfcc.rate_factor(8000) == mfcc.rate_factor(44100) == 1.0
    assert (raw.clip_samples(), raw.clip_samples(8000), raw.clip_samples(22050)) == (
        16000, 8000, 22050,
    )
    with pytest.raises(ValueError, match="Nyquist"):
        mfcc.rate_factor(6000)


def test_raw_model_sees_stretched_dt_at_8k():
    kws = spotter("raw")
    wave = 0.1 * torch.randn(2, 8000)
    logits = kws(wave, sample_rate=8000)
    assert kws.model.rate_factors == [2.0]
    torch.testing.assert_close(logits, kws.model.head(kws.frontend(wave).mean(1)))


def test_mfcc_spotter_gives_same_logits_at_8k_and_16k():
    kws = spotter("mfcc")
    at16 = kws(chord(16000))
    at8 = kws(chord(8000), sample_rate=8000)
    assert kws.model.rate_factors == [1.0, 1.0]
    torch.testing.assert_close(at8, at16, atol=2e-3, rtol=0)
    assert (at16[0, 0] - at16[0, 1]).abs() > 0.01  # classes differ: agreement means something


def test_predict_names_labels():
    kws = spotter("mfcc")
    with torch.no_grad():
        kws.model.head.weight.zero_()
        kws.model.head.bias.copy_(torch.tensor([0.0, 2.0, 0.0]))
    (label, prob), = kws.predict(0.1 * torch.randn(1, 16000))
    assert label == "no"
    assert prob == pytest.approx(torch.tensor([0.0, 2.0, 0.0]).softmax(0)[1].item())


def test_state_dict_holds_only_model_weights():
    kws = spotter("mfcc")
    assert set(kws.state_dict()) == {"model.head.weight", "model.head.bias"}


def test_mismatches_are_clear_errors():
    cfg = FeatureConfig("mfcc")
    with pytest.raises(ValueError, match="model takes 1 input channels but mfcc features have 20"):
        KeywordSpotter(cfg, MeanLinear(1, 3), LABELS)
    with pytest.raises(ValueError, match="model has 2 outputs but 3 labels"):
        KeywordSpotter(cfg, MeanLinear(20, 2), LABELS)
    with pytest.raises(ValueError, match="labels must be unique"):
        KeywordSpotter(cfg, MeanLinear(20, 3), ["yes", "yes", "no"])
    kws = KeywordSpotter(cfg, MeanLinear(20, 3), LABELS)
    with pytest.raises(ValueError, match=r"wave must be a float tensor of shape \(B, T\)"):
        kws(torch.zeros(16000))
