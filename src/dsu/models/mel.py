"""Slaney-style mel filterbank, equal (bit for bit, float32) to `librosa.filters.mel(sr=, n_fft=,
n_mels=)` with its defaults (fmin 0, fmax sr/2, Slaney mel scale, Slaney area normalisation).

Mel-Band-RoFormer derives its band layout from which entries of this matrix are positive, so the
arithmetic follows the same float64 steps in the same order (a value that rounds to 0 instead of
1e-18 moves a bin out of a band).
"""
from __future__ import annotations

import numpy as np

# Slaney's Auditory Toolbox scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
_HZ_PER_MEL = 200.0 / 3
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _HZ_PER_MEL
    high = hz >= _LOG_START_HZ
    mel[high] = _LOG_START_MEL + np.log(hz[high] / _LOG_START_HZ) / _LOG_STEP
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = _HZ_PER_MEL * mel
    high = mel >= _LOG_START_MEL
    hz[high] = _LOG_START_HZ * np.exp(_LOG_STEP * (mel[high] - _LOG_START_MEL))
    return hz


def mel_filterbank(sr: float, n_fft: int, n_mels: int) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] float32 triangular filters, each of unit area in mel-spaced Hz."""
    bin_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    edges_mel = hz_to_mel(np.array([0.0, float(sr) / 2]))
    edges_hz = mel_to_hz(np.linspace(edges_mel[0], edges_mel[1], n_mels + 2))
    widths = np.diff(edges_hz)
    offsets = np.subtract.outer(edges_hz, bin_hz)  # [edge, bin]: edge frequency minus bin frequency

    weights = np.zeros((n_mels, len(bin_hz)), dtype=np.float32)
    for i in range(n_mels):
        rising = -offsets[i] / widths[i]
        falling = offsets[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:n_mels + 2] - edges_hz[:n_mels]))[:, None]
    return weights
