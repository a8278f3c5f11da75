"""dsu.evaluate.metrics streamed block by block equals each metric computed on the whole arrays the
way MSST's utils/metrics.py, auraloss and museval compute it; the oracles match the corpus' measure.py."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import shared_corpus

from dsu.errors import DSUError
from dsu.evaluate.metrics import DEFAULT, METRICS, TrackScore, check_metrics
from dsu.evaluate.oracles import ORACLES, Oracle

SR = 44100
STEMS = ("drums", "bass", "vocals")


def _signals(seconds: float = 3.0, channels: int = 2):
    """Coloured noise stems (one silent for its second second), estimates with their own errors, the mixture."""
    rng = np.random.default_rng(20)
    n = int(seconds * SR)
    refs, ests = {}, {}
    for i, s in enumerate(STEMS):
        x = np.cumsum(rng.standard_normal((channels, n)), -1) * 0.01 * (i + 1)
        x -= x.mean(-1, keepdims=True)
        x += 0.05 * rng.standard_normal((channels, n))
        if i == 2:
            x[:, SR:2 * SR] = 0.0     # exactly the second of BSSEval's 1 s frames
        refs[s] = x.astype(np.float32)
        ests[s] = (0.9 * x + 0.03 * (i + 1) * rng.standard_normal((channels, n))).astype(np.float32)
    mix = sum(refs.values()).astype(np.float32)
    return refs, ests, mix


def _blocks(n: int, seed: int = 1):
    """Uneven consecutive [a, b) covering n, with a few one-sample blocks at the start."""
    rng = np.random.default_rng(seed)
    a, out = 0, []
    for size in (1, 1, 3):
        out.append((a, a + size))
        a += size
    while a < n:
        b = min(n, a + int(rng.integers(1, 20000)))
        out.append((a, b))
        a = b
    return out


def _streamed(metrics, refs, ests, mix):
    score = TrackScore(STEMS, metrics, SR, mix.shape[0], mix.shape[1])
    for a, b in _blocks(mix.shape[1]):
        score.push({s: v[:, a:b] for s, v in refs.items()}, {s: v[:, a:b] for s, v in ests.items()}, mix[:, a:b])
    return score.result()


# ---- the whole-array definitions, as MSST writes them ----------------------------------------------------

def _msst_sdr(r, e):
    num = np.sum(np.square(r)) + 1e-8
    den = np.sum(np.square(r - e)) + 1e-8
    return float(10 * np.log10(num / den))


def _msst_si_sdr(r, e):
    eps = 1e-8
    scale = np.sum(e * r + eps) / np.sum(r ** 2 + eps)
    r = r * scale
    return float(10 * np.log10(np.sum(r ** 2) / (np.sum((r - e) ** 2) + eps) + eps))


def _msst_l1_freq(r, e):
    rs = torch.stft(torch.from_numpy(r), 2048, 1024, return_complex=True)
    es = torch.stft(torch.from_numpy(e), 2048, 1024, return_complex=True)
    loss = 10 * torch.nn.functional.l1_loss(es.abs(), rs.abs())
    return 100 / (1.0 + float(loss))


def _amplitude_to_db(x):
    """torchaudio AmplitudeToDB(stype="magnitude", top_db=80) on [channels, mels, frames]."""
    db = 20 * torch.log10(torch.clamp(x, min=1e-10))
    return torch.maximum(db, db.amax() - 80)


def _msst_bleed_full(r, e):
    window = torch.hann_window(4096, dtype=torch.float64)
    mel = torch.from_numpy(librosa.filters.mel(sr=44100, n_fft=4096, n_mels=512).astype(np.float64))
    dbs = []
    for x in (r, e):
        d = torch.stft(torch.from_numpy(x), n_fft=4096, hop_length=1024, window=window, return_complex=True,
                       pad_mode="constant").abs()
        dbs.append(_amplitude_to_db(mel @ d))
    diff = dbs[1] - dbs[0]
    pos, neg = diff[diff > 0], diff[diff < 0]
    avg_pos = float(pos.mean()) if pos.numel() else 0.0
    avg_neg = float(neg.mean()) if neg.numel() else 0.0
    return 100 / (avg_pos + 1), 100 / (-avg_neg + 1)


def _museval_metrics():
    # museval's package __init__ needs ffmpeg (musdb, stempeg): its metrics module is loaded alone
    spec = importlib.util.find_spec("museval")
    assert spec is not None and spec.submodule_search_locations
    path = Path(list(spec.submodule_search_locations)[0]) / "metrics.py"
    mspec = importlib.util.spec_from_file_location("_test_museval_metrics", path)
    assert mspec is not None and mspec.loader is not None
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module


def _close(got, want, rel=1e-4):
    assert got == pytest.approx(want, rel=rel, abs=1e-9), (got, want)


# ---- tests ---------------------------------------------------------------------------------------------

def test_check_metrics():
    assert check_metrics(["sdr", "bss_sdr", "sdr"]) == ("sdr", "bss_sdr")
    assert set(DEFAULT) <= set(METRICS)
    with pytest.raises(DSUError) as err:
        check_metrics(["sdr", "nope"])
    assert err.value.code == "bad_value" and "nope" in err.value.message and "aura_mrstft" in err.value.message
    with pytest.raises(DSUError) as err:
        check_metrics(["log_wmse"])
    assert err.value.code == "bad_value" and "torchaudio" in err.value.message
    with pytest.raises(DSUError):
        check_metrics([])
    with pytest.raises(DSUError) as err:
        TrackScore(STEMS, ["l1_freq"], SR, 2, 1000)     # torch.stft cannot reflect-pad it either
    assert "l1_freq" in err.value.message


def test_streamed_metrics_equal_msst_definitions():
    refs, ests, mix = _signals()
    _check_streamed(("sdr", "si_sdr", "l1_freq", "bleedless", "fullness"), refs, ests, mix)


def _check_streamed(metrics, refs, ests, mix) -> None:
    """The streamed scores of `metrics` equal MSST's whole-array definitions on every stem."""
    got = _streamed(metrics, refs, ests, mix)
    whole = {"sdr": _msst_sdr, "si_sdr": _msst_si_sdr, "l1_freq": _msst_l1_freq,
             "bleedless": lambda r, e: _msst_bleed_full(r, e)[0], "fullness": lambda r, e: _msst_bleed_full(r, e)[1]}
    for s in STEMS:
        r, e = refs[s].astype(np.float64), ests[s].astype(np.float64)
        for m in metrics:
            _close(got[s][m], whole[m](r, e))


def test_streamed_metrics_short_odd_length():
    """A length that is no whole number of hops, blocks shorter than a frame."""
    refs, ests, mix = _signals(seconds=0.37, channels=1)
    _check_streamed(("sdr", "l1_freq", "bleedless", "fullness"), refs, ests, mix)


def test_whole_track_metrics_equal_auraloss_and_museval():
    from auraloss.freq import MultiResolutionSTFTLoss, STFTLoss
    refs, ests, mix = _signals(seconds=3.0)
    got = _streamed(("aura_stft", "aura_mrstft", "bss_sdr"), refs, ests, mix)
    stft = STFTLoss(w_log_mag=1.0, w_lin_mag=0.0, w_sc=1.0, device="cpu")
    mrstft = MultiResolutionSTFTLoss(fft_sizes=[1024, 2048, 4096], hop_sizes=[256, 512, 1024],
                                     win_lengths=[1024, 2048, 4096], scale="mel", n_bins=128, sample_rate=44100,
                                     perceptual_weighting=True, device="cpu")
    def stack(d):  # [stems, samples, channels], as demucs passes them
        return np.stack([d[s].T for s in STEMS]).astype(np.float64)
    bss = _museval_metrics().bss_eval(stack(refs), stack(ests), compute_permutation=False, window=SR, hop=SR,
                                      framewise_filters=False, bsseval_sources_version=False)[0]
    for i, s in enumerate(STEMS):
        r, e = torch.from_numpy(refs[s]).unsqueeze(0), torch.from_numpy(ests[s]).unsqueeze(0)
        _close(got[s]["aura_stft"], float(100 / (1 + 10 * stft(r, e))))
        _close(got[s]["aura_mrstft"], float(100 / (1 + 10 * mrstft(r, e))))
        _close(got[s]["bss_sdr"], float(np.nanmedian(bss[i])))
    # the stem silent for a second has a frame without a score, which the median skips
    assert np.isnan(bss[2]).any() and np.isfinite(got["vocals"]["bss_sdr"])


def _run_oracle(name, stems, refs, mix):
    oracle = Oracle(name, stems, mix.shape[0], mix.shape[1])
    parts: dict[str, list[np.ndarray]] = {s: [] for s in stems}
    for a, b in _blocks(mix.shape[1], seed=3):
        for s, v in oracle.push(mix[:, a:b], {s: refs[s][:, a:b] for s in stems}).items():
            parts[s].append(v)
    for s, v in oracle.finish().items():
        parts[s].append(v)
    return {s: np.concatenate(parts[s], -1) for s in stems}


def test_oracles_match_measure_py_on_song_000():
    corpus = shared_corpus()
    if corpus is None:
        pytest.skip("no shared/corpus with measure.py and data/song_000 beside this checkout")
    spec = importlib.util.spec_from_file_location("_test_measure", corpus / "measure.py")
    assert spec is not None and spec.loader is not None
    measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)
    song = corpus / "data" / "song_000"
    stems = ("drums", "bass", "other", "vocals")
    refs = {s: sf.read(song / f"{s}.flac", dtype="float32", always_2d=True)[0].T for s in stems}
    mix = sf.read(song / "mixture.flac", dtype="float32", always_2d=True)[0].T
    want = measure.irm({s: refs[s].astype(np.float64) for s in stems}, mix.astype(np.float64))
    assert ORACLES == ("mixture", "irm")
    irm = _run_oracle("irm", stems, refs, mix)
    plain = _run_oracle("mixture", stems, refs, mix)
    for s in stems:
        r = refs[s].astype(np.float64)
        assert irm[s].shape == mix.shape
        assert measure.sdr(r, irm[s].astype(np.float64)) == pytest.approx(measure.sdr(r, want[s]), abs=0.01)
        assert measure.sdr(r, plain[s].astype(np.float64)) == pytest.approx(measure.sdr(r, mix.astype(np.float64)),
                                                                           abs=0.01)
    with pytest.raises(DSUError):
        Oracle("nope", stems, 2, 10)
