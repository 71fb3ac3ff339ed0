"""MFCC in plain tensor ops (unfold, matmul, log), so that it exports to ONNX and streams.

Per frame, at sample rate sr with window length win and FFT size n_fft:

1. frame i is samples [i * hop, i * hop + win) (``center=False``);
2. periodic Hann window and a zero-padded real DFT, as one matmul with a
   windowed cos/sin table of shape (win, 2 * (n_fft // 2 + 1));
3. power |X_k|^2 scaled to energy per band: dividing by sr * sum(w^2) gives a
   power spectral density (power per Hz), and multiplying by the bin width
   sr / n_fft turns the sum over the bins under a mel filter into an integral
   over Hz; the product is 1 / (n_fft * sum(w^2)). The density alone makes 16
   and 8 kHz agree (n_fft / sr is the same for both); the bin width makes every
   rate agree, e.g. 44.1 and 48 kHz, where n_fft / sr differs. With slaney
   (unit-area) filters a band's energy is then the mean two-sided density
   over the band: white noise of variance s^2 at rate r gives s^2 / r;
4. 40 mel filters, slaney scale and slaney (area) norm, as librosa's defaults;
5. 10 * log10(max(energy, log_floor));
6. DCT-II with ortho norm, keeping n_mfcc coefficients;
7. a fixed affine map, ``(log_mel - REF_DB) / SCALE_DB`` before the DCT (the
   DCT is linear, so this only moves c0 and scales all), chosen once from the
   Speech Commands test clips so that speech features are O(1): no per-clip
   statistics, so a clip and a stream agree.

Before step 7 (``mfcc_db``) this equals librosa's MFCC on the same audio when
librosa gets ``y * sqrt(1 / (n_fft * sum(w^2)))``, ``center=False`` and the
signal zero-padded by (n_fft - win) // 2 on the left (librosa centres a short
window inside its n_fft frame); see tests/test_features.py.
"""

from __future__ import annotations

import math

import torch
import torchaudio.functional as AF
from torch import Tensor

from kws.features import FeatureConfig, Frontend

# Measured on 600 Speech Commands test clips (the 12-class dev folders): speech
# log-mel bands average -96 dB (spread 22 dB). With these constants c0 has mean
# 1.1 and spread 6, c1 mean 2.1 and spread 1.6, c2..c19 spreads 1.1 down to 0.23.
#: log-mel level (dB) subtracted before the DCT: about the mean band level of speech
REF_DB = -100.0
#: dB per unit after normalisation: about the spread of speech log-mel levels
SCALE_DB = 20.0


def mfcc_tables(cfg: FeatureConfig) -> tuple[Tensor, Tensor, Tensor]:
    """(dft (win, 2F), mel (F, n_mels), dct (n_mels, n_mfcc)) float32 tables for ``cfg``'s rate.

    F = n_fft // 2 + 1 bins. The window is folded into the DFT table and the
    power scaling into the mel table, so a frame costs two matmuls.
    """
    win, n_fft = cfg.win_length, cfg.n_fft
    n_bins = n_fft // 2 + 1
    t = torch.arange(win, dtype=torch.float64)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * t / win)  # periodic Hann
    # (t * k) mod n_fft keeps the angles small, so float64 cos/sin stay exact.
    phase = (t[:, None] * torch.arange(n_bins, dtype=torch.float64)) % n_fft
    angle = 2 * math.pi * phase / n_fft
    dft = torch.cat([window[:, None] * torch.cos(angle), window[:, None] * torch.sin(angle)], 1)
    mel = AF.melscale_fbanks(
        n_bins, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate,
        norm="slaney", mel_scale="slaney",
    ).double()
    empty = (mel.sum(0) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"mel bands {empty} hold no FFT bin at {cfg.sample_rate} Hz (n_fft={n_fft}); "
            f"use fewer n_mels or a longer window"
        )
    band_energy = 1.0 / (n_fft * float((window**2).sum()))
    dct = AF.create_dct(cfg.n_mfcc, cfg.n_mels, "ortho")
    return dft.float(), (mel * band_energy).float(), dct.float()


class MFCCFrontend(Frontend):
    """(B, T) -> (B, L, n_mfcc) normalised MFCC; any sample rate whose Nyquist is >= f_max."""

    def __init__(self, config: FeatureConfig):
        if config.kind != "mfcc":
            raise ValueError(f"MFCCFrontend needs kind='mfcc', got {config.kind!r}")
        super().__init__(config)
        dft, mel, dct = mfcc_tables(config)
        # Derived from the config, so not saved in state_dicts; ONNX export folds them in.
        self.register_buffer("dft", dft, persistent=False)
        self.register_buffer("mel", mel, persistent=False)
        self.register_buffer("dct", dct, persistent=False)
        self._rate_tables: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}

    def tables(self, cfg: FeatureConfig, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The tables at ``cfg.sample_rate``, on ``like``'s device and dtype (cached per rate)."""
        if cfg.sample_rate == self.config.sample_rate:
            return self.dft.to(like.dtype), self.mel.to(like.dtype), self.dct.to(like.dtype)
        key = (cfg.sample_rate, like.device, like.dtype)
        if key not in self._rate_tables:
            self._rate_tables[key] = tuple(t.to(like) for t in mfcc_tables(cfg))
        return self._rate_tables[key]

    def _log_mel(self, wave: Tensor, cfg: FeatureConfig) -> tuple[Tensor, Tensor]:
        dft, mel, dct = self.tables(cfg, wave)
        frames = wave.unfold(1, cfg.win_length, cfg.hop_length)  # (B, L, win)
        n_bins = dft.shape[1] // 2
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # ONNX path: the DFT as a matmul with the table (window folded in).
            spectrum = frames @ dft
            power = spectrum[..., :n_bins] ** 2 + spectrum[..., n_bins:] ** 2
        else:
            # Eager path: the same numbers through an FFT, O(n log n) instead of O(n^2),
            # which matters at 44.1-48 kHz (n_fft 2048) during rate sweeps.
            window = torch.hann_window(cfg.win_length, periodic=True, dtype=wave.dtype,
                                       device=wave.device)
            power = torch.fft.rfft(frames * window, n=cfg.n_fft).abs().square()
        energy = power @ mel
        return 10.0 * torch.log10(torch.clamp(energy, min=cfg.log_floor)), dct

    def compute(self, wave: Tensor, cfg: FeatureConfig) -> Tensor:
        log_mel, dct = self._log_mel(wave, cfg)
        return ((log_mel - REF_DB) / SCALE_DB) @ dct

    def cepstra(self, log_mel: Tensor) -> Tensor:
        """(B, L, n_mels) log-mel at the trained rate -> the normalised MFCC ``forward`` gives.

        Lets training edit the log-mel bands (SpecAugment) before the DCT.
        """
        return ((log_mel - REF_DB) / SCALE_DB) @ self.dct.to(log_mel.dtype)

    def log_mel(self, wave: Tensor, sample_rate: int | None = None) -> Tensor:
        """(B, T) -> (B, L, n_mels) log band energies in dB, before normalisation."""
        return self._log_mel(wave, self.checked_config(wave, sample_rate))[0]

    def mfcc_db(self, wave: Tensor, sample_rate: int | None = None) -> Tensor:
        """(B, T) -> (B, L, n_mfcc) MFCC in dB before the affine map (what librosa computes)."""
        log_mel, dct = self._log_mel(wave, self.checked_config(wave, sample_rate))
        return log_mel @ dct
