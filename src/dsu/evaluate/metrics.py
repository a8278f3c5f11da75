"""The metrics the community ranks separators with, as MSST's `utils/metrics.py` and demucs'
`evaluate.py` define them, scored over a track fed block by block.

sdr, si_sdr, l1_freq, bleedless and fullness are streamed: sums for the first two, and STFT frames
computed as soon as their span has arrived (with torch.stft's centre padding at both ends) for the
others, so memory stays flat in the track's length; bleedless/fullness clamp at 80 dB under the whole
track's peak, so their per-frame mel dB values wait in a temporary file on disk until `result`.
aura_stft, aura_mrstft (auraloss) and bss_sdr (museval's BSSEval v4) need the whole track at once:
they hold every stem's reference and estimate in memory, and only when asked for."""
from __future__ import annotations

import importlib.util
import tempfile
import warnings
from collections.abc import Sequence
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import DSUError

METRICS: tuple[str, ...] = ("sdr", "si_sdr", "l1_freq", "bleedless", "fullness", "aura_stft", "aura_mrstft",
                            "bss_sdr")
# the streamed ones (flat memory); bss_sdr takes museval's whole-track time and memory (GBs), so on request
DEFAULT: tuple[str, ...] = ("sdr", "si_sdr", "l1_freq", "bleedless", "fullness")

_EPS = 1e-8            # MSST's sdr and si_sdr
_AMIN = 1e-10          # torchaudio AmplitudeToDB's floor
_TOP_DB = 80.0
# MSST's bleed_full and AuraMRSTFT_metric use 44.1 kHz whatever the track's rate; so do we, to match
_MSST_RATE = 44100
_WHOLE = ("aura_stft", "aura_mrstft", "bss_sdr")
_CHUNK = 128           # STFT frames transformed at once, so a long block costs no more memory than a short one


def check_metrics(names: Sequence[str]) -> tuple[str, ...]:
    """The metric names, checked and without repeats, in the order given."""
    out: list[str] = []
    for name in names:
        if name == "log_wmse":
            raise DSUError("bad_value", "metric log_wmse is not available: torch-log-wmse needs torchaudio, "
                                        "which cannot be installed beside DSU's torch; choose from "
                                        + ", ".join(METRICS))
        if name not in METRICS:
            raise DSUError("bad_value", f"unknown metric {name!r}; choose from " + ", ".join(METRICS))
        if name not in out:
            out.append(name)
    if not out:
        raise DSUError("bad_value", "no metric given; choose from " + ", ".join(METRICS))
    return tuple(out)


class _Frames:
    """torch.stft's centred frames (reflect or zero padding) of K signals arriving block by block."""

    def __init__(self, n_fft: int, hop: int, length: int, reflect: bool):
        self.n_fft, self.hop, self.length, self.reflect = n_fft, hop, length, reflect
        self.half = n_fft // 2
        self.frames = 1 + length // hop
        self.next = 0
        self.buf: np.ndarray | None = None        # raw samples from `start` on, [K, n] float64
        self.start = 0
        self.received = 0

    def push(self, block: np.ndarray) -> np.ndarray:
        """The next samples [K, n]; the frames [K, T, n_fft] now complete (T may be 0)."""
        block = np.asarray(block, dtype=np.float64)
        self.buf = block if self.buf is None else np.concatenate([self.buf, block], -1)
        self.received += block.shape[-1]
        if self.received >= self.length:
            stop = self.frames
        else:
            # a frame needs its whole span, and sample `half` for the reflection at the start
            stop = min(self.frames, max(0, (self.received - self.half - 1) // self.hop + 1))
        k = self.buf.shape[0]
        if stop <= self.next:
            return np.zeros((k, 0, self.n_fft))
        lo, hi = self.next * self.hop - self.half, (stop - 1) * self.hop + self.half
        j = np.arange(lo, hi)
        if self.reflect:
            j = np.where(j < 0, -j, j)
            j = np.where(j >= self.length, 2 * (self.length - 1) - j, j)
            segment = self.buf[:, j - self.start]
        else:
            inside = (j >= 0) & (j < self.length)
            segment = np.zeros((k, hi - lo))
            segment[:, inside] = self.buf[:, j[inside] - self.start]
        frames = np.lib.stride_tricks.sliding_window_view(segment, self.n_fft, axis=-1)[:, ::self.hop]
        self.next = stop
        # the reflection of the last frame starting at sample `length` reaches one sample further back
        drop = self.next * self.hop - self.half - 1 - self.start
        if drop > 0:
            self.buf = self.buf[:, drop:]
            self.start += drop
        return frames


class _Sums:
    """sdr and si_sdr from running sums (float64) of one stem."""

    def __init__(self) -> None:
        self.rr = self.ee = self.re = self.dd = 0.0
        self.n = 0

    def push(self, r: np.ndarray, e: np.ndarray) -> None:
        r64, e64 = r.astype(np.float64), e.astype(np.float64)
        self.rr += float(np.sum(r64 * r64))
        self.ee += float(np.sum(e64 * e64))
        self.re += float(np.sum(r64 * e64))
        self.dd += float(np.sum(np.square(r64 - e64)))
        self.n += r.size

    def sdr(self) -> float:
        return float(10 * np.log10((self.rr + _EPS) / (self.dd + _EPS)))

    def si_sdr(self) -> float:
        # MSST adds eps to every product before summing, so it counts once per sample
        scale = (self.re + _EPS * self.n) / (self.rr + _EPS * self.n)
        num = scale * scale * self.rr
        den = max(scale * scale * self.rr - 2 * scale * self.re + self.ee, 0.0)
        return float(10 * np.log10(num / (den + _EPS) + _EPS))


class _L1Freq:
    """MSST's L1Freq_metric: torch.stft 2048/1024, its defaults (rectangular window, reflect centre)."""

    def __init__(self, length: int):
        if length <= 1024:
            # torch.stft's reflect padding needs more samples than half a frame, as in MSST
            raise DSUError("bad_value", f"metric l1_freq needs a track of more than 1024 samples, not {length}")
        self.frames = _Frames(2048, 1024, length, reflect=True)
        self.total = 0.0
        self.count = 0

    def push(self, r: np.ndarray, e: np.ndarray) -> None:
        f = self.frames.push(np.concatenate([r, e]))
        c = r.shape[0]
        for a in range(0, f.shape[1], _CHUNK):
            mag = np.abs(np.fft.rfft(f[:, a:a + _CHUNK], axis=-1))
            self.total += float(np.sum(np.abs(mag[c:] - mag[:c])))
            self.count += mag[c:].size

    def result(self) -> float:
        return 100 / (1 + 10 * self.total / self.count)


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    import librosa
    return librosa.filters.mel(sr=_MSST_RATE, n_fft=4096, n_mels=512).astype(np.float64)


class _BleedFull:
    """MSST's bleed_full: Hann 4096/1024 zero-padded, 512 mel bands, AmplitudeToDB(top_db=80).

    torchaudio clamps at top_db under the max of the whole [channels, mels, frames] tensor, so the
    unclamped dB values of every frame go to a temporary file and are compared in `result`. The file
    is written and read in chunks rather than mapped: mapped pages would count in the process' memory."""

    def __init__(self, channels: int, length: int):
        self.frames = _Frames(4096, 1024, length, reflect=False)
        self.window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(4096) / 4096)    # periodic, as torch's
        self.channels = channels
        self.file = tempfile.TemporaryFile(prefix="dsu-eval-")      # [frames, 2, channels, mels] float32
        self.written = 0
        self.peak = [-np.inf, -np.inf]                                  # reference, estimate

    def push(self, r: np.ndarray, e: np.ndarray) -> None:
        f = self.frames.push(np.concatenate([r, e]))                    # [2C, T, n_fft]
        for a in range(0, f.shape[1], _CHUNK):
            mag = np.abs(np.fft.rfft(f[:, a:a + _CHUNK] * self.window, axis=-1))     # [2C, t, bins]
            mel = (mag @ _mel_basis().T).transpose(1, 0, 2)                           # [t, 2C, mels]
            t = mel.shape[0]
            db = (20 * np.log10(np.maximum(mel, _AMIN))).reshape(t, 2, self.channels, 512)
            for i in range(2):
                self.peak[i] = max(self.peak[i], float(db[:, i].max()))
            self.file.write(db.astype(np.float32).tobytes())
            self.written += t

    def result(self) -> tuple[float, float]:
        pos_sum = neg_sum = 0.0
        pos_n = neg_n = 0
        self.file.seek(0)
        per_frame = 2 * self.channels * 512
        for a in range(0, self.written, _CHUNK):
            t = min(_CHUNK, self.written - a)
            raw = self.file.read(t * per_frame * 4)
            chunk = np.frombuffer(raw, np.float32).astype(np.float64).reshape(t, 2, self.channels, 512)
            ref = np.maximum(chunk[:, 0], self.peak[0] - _TOP_DB)
            est = np.maximum(chunk[:, 1], self.peak[1] - _TOP_DB)
            diff = est - ref
            pos, neg = diff[diff > 0], diff[diff < 0]
            pos_sum += float(pos.sum())
            neg_sum += float(neg.sum())
            pos_n += pos.size
            neg_n += neg.size
        self.close()
        avg_pos = pos_sum / pos_n if pos_n else 0.0
        avg_neg = neg_sum / neg_n if neg_n else 0.0
        return 100 / (avg_pos + 1), 100 / (-avg_neg + 1)

    def close(self) -> None:
        self.file.close()


@lru_cache(maxsize=1)
def _museval_metrics() -> ModuleType:
    # `import museval` imports musdb and stempeg, which need an ffmpeg binary at import time; the
    # metrics module itself needs only numpy and scipy, so it is loaded alone from its file
    spec = importlib.util.find_spec("museval")
    if spec is None or not spec.submodule_search_locations:
        raise DSUError("bad_value", "metric bss_sdr needs museval: pip install museval")
    path = list(spec.submodule_search_locations)[0] + "/metrics.py"
    mspec = importlib.util.spec_from_file_location("_dsu_museval_metrics", path)
    assert mspec is not None and mspec.loader is not None
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module


def _aura(name: str, ref: np.ndarray, est: np.ndarray) -> float:
    """MSST's AuraSTFT_metric / AuraMRSTFT_metric on one stem [channels, samples]."""
    import torch
    from auraloss.freq import MultiResolutionSTFTLoss, STFTLoss  # type: ignore[import-untyped]
    loss: Any
    if name == "aura_stft":
        loss = STFTLoss(w_log_mag=1.0, w_lin_mag=0.0, w_sc=1.0, device="cpu")
    else:
        loss = MultiResolutionSTFTLoss(fft_sizes=[1024, 2048, 4096], hop_sizes=[256, 512, 1024],
                                       win_lengths=[1024, 2048, 4096], scale="mel", n_bins=128,
                                       sample_rate=_MSST_RATE, perceptual_weighting=True, device="cpu")
    with torch.no_grad():
        value = loss(torch.from_numpy(ref).unsqueeze(0).float(), torch.from_numpy(est).unsqueeze(0).float())
    return float(100 / (1 + 10 * float(value)))


class TrackScore:
    """Every stem's metrics over one track, fed block by block (consecutive blocks, any sizes).

    Streamed metrics hold a few STFT frames per stem; aura_* and bss_sdr, when asked for, hold every
    stem's whole reference and estimate (float32, 2 x stems x channels x length)."""

    def __init__(self, stems: Sequence[str], metrics: Sequence[str], samplerate: int, channels: int, length: int):
        self.stems, self.metrics = tuple(stems), check_metrics(metrics)
        self.samplerate, self.channels, self.length = samplerate, channels, length
        self.pushed = 0
        want = set(self.metrics)
        self._sums = {s: _Sums() for s in self.stems} if want & {"sdr", "si_sdr"} else {}
        self._l1 = {s: _L1Freq(length) for s in self.stems} if "l1_freq" in want else {}
        self._bf = {s: _BleedFull(channels, length) for s in self.stems} if want & {"bleedless", "fullness"} else {}
        self._whole: dict[str, np.ndarray] = {}
        if want & set(_WHOLE):
            # [reference/estimate, channels, length] per stem
            self._whole = {s: np.zeros((2, channels, length), np.float32) for s in self.stems}

    def push(self, references: dict[str, np.ndarray], estimates: dict[str, np.ndarray], mixture: np.ndarray) -> None:
        """The next block of every stem's reference and estimate, and of the mixture: [channels, n]
        (no metric here reads the mixture: MSST passes it to log_wmse only)."""
        n = mixture.shape[-1]
        if self.pushed + n > self.length:
            raise ValueError(f"pushed {self.pushed + n} samples into a track of {self.length}")
        for s in self.stems:
            r = np.asarray(references[s], np.float32)
            e = np.asarray(estimates[s], np.float32)
            assert r.shape == e.shape == (self.channels, n), (s, r.shape, e.shape)
            if s in self._sums:
                self._sums[s].push(r, e)
            if s in self._l1:
                self._l1[s].push(r, e)
            if s in self._bf:
                self._bf[s].push(r, e)
            if s in self._whole:
                self._whole[s][0, :, self.pushed:self.pushed + n] = r
                self._whole[s][1, :, self.pushed:self.pushed + n] = e
        self.pushed += n

    def result(self) -> dict[str, dict[str, float]]:
        """stem -> metric -> value, once all `length` samples were pushed (once: it frees the files)."""
        if self.pushed != self.length:
            raise ValueError(f"result after {self.pushed} of {self.length} samples")
        out: dict[str, dict[str, float]] = {s: {} for s in self.stems}
        bss = self._bss() if "bss_sdr" in self.metrics else {}
        for s in self.stems:
            bf = self._bf[s].result() if s in self._bf else None
            for m in self.metrics:
                if m == "sdr":
                    out[s][m] = self._sums[s].sdr()
                elif m == "si_sdr":
                    out[s][m] = self._sums[s].si_sdr()
                elif m == "l1_freq":
                    out[s][m] = self._l1[s].result()
                elif m in ("bleedless", "fullness"):
                    assert bf is not None
                    out[s][m] = bf[0] if m == "bleedless" else bf[1]
                elif m in ("aura_stft", "aura_mrstft"):
                    out[s][m] = _aura(m, self._whole[s][0], self._whole[s][1])
                else:
                    out[s][m] = bss[s]
        return out

    def _bss(self) -> dict[str, float]:
        """demucs' evaluate.py: BSSEval v4 over all stems jointly, 1 s windows, median over frames."""
        refs = np.stack([self._whole[s][0].T for s in self.stems]).astype(np.float64)   # [S, N, C]
        ests = np.stack([self._whole[s][1].T for s in self.stems]).astype(np.float64)
        win = int(self.samplerate)
        sdr = _museval_metrics().bss_eval(refs, ests, compute_permutation=False, window=win, hop=win,
                                          framewise_filters=False, bsseval_sources_version=False)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)         # a stem silent in every frame: nan
            return {s: float(np.nanmedian(sdr[i])) for i, s in enumerate(self.stems)}
