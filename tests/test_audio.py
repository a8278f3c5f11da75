"""Audio I/O: streaming decode, resampling, channel conversion, atomic stem writing."""
import os

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from dsu.audio import FileSignal, StemWriter, read_audio, write_audio
from dsu.errors import DSUError


@pytest.fixture
def tone(tmp_path):
    sr = 32000
    t = np.arange(int(sr * 5.3)) / sr
    x = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)], 1).astype(np.float32)
    path = tmp_path / "tone.flac"
    sf.write(path, x, sr, subtype="PCM_24")
    return path, x, sr


def test_streamed_resampling_equals_one_shot(tone):
    path, x, sr = tone
    sig = FileSignal(path, 44100, 2)
    whole = soxr.resample(sf.read(path, dtype="float32")[0], sr, 44100, quality="HQ")
    assert sig.length == len(whole)
    got = torch.cat([sig.read(s, min(s + 30000, sig.length)) for s in range(0, sig.length, 30000)], -1)
    np.testing.assert_allclose(got.numpy().T, whole, atol=1e-5)


def test_forgotten_samples_are_dropped_and_zeros_outside(tone):
    path, _, _ = tone
    sig = FileSignal(path)
    assert sig.read(-10, 0).abs().sum() == 0
    sig.read(0, 100_000)
    sig.forget(90_000)
    assert sig._buf.shape[0] <= sig._produced - 90_000
    with pytest.raises(RuntimeError):
        sig.read(10, 20)
    assert sig.read(sig.length, sig.length + 5).abs().sum() == 0


def test_channel_conversion(tmp_path):
    mono = tmp_path / "mono.wav"
    sf.write(mono, np.linspace(-0.5, 0.5, 1000, dtype=np.float32), 44100, subtype="FLOAT")
    audio, _ = read_audio(mono, channels=2)
    assert audio.shape == (2, 1000) and torch.equal(audio[0], audio[1])
    stereo = tmp_path / "st.wav"
    sf.write(stereo, np.stack([np.ones(100), -np.ones(100) * 0.5], 1).astype(np.float32), 44100, subtype="FLOAT")
    down, _ = read_audio(stereo, channels=1)
    torch.testing.assert_close(down, torch.full((1, 100), 0.25))


def test_missing_and_corrupt_inputs(tmp_path):
    with pytest.raises(DSUError) as e:
        FileSignal(tmp_path / "nope.wav")
    assert e.value.code == "input_not_found"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk" * 10)
    with pytest.raises(DSUError) as e:
        FileSignal(bad).read(0, 10)
    assert e.value.code == "unsupported_audio"


@pytest.mark.parametrize("fmt,depth,subtype", [("wav", 16, "PCM_16"), ("wav", 24, "PCM_24"), ("wav", 32, "FLOAT"),
                                               ("flac", 24, "PCM_24"), ("mp3", 16, "MPEG_LAYER_III")])
def test_formats(tmp_path, fmt, depth, subtype):
    x = torch.sin(torch.linspace(0, 300, 44100)).repeat(2, 1) * 0.5
    path = write_audio(tmp_path / f"out.{fmt}", x, 44100, bit_depth=depth)
    info = sf.info(path)
    assert info.subtype == subtype and info.channels == 2
    if fmt != "mp3":
        back, _ = read_audio(path)
        torch.testing.assert_close(back, x, atol=1e-4 if depth == 16 else 1e-6, rtol=0)


def test_writer_exposes_only_complete_files(tmp_path):
    paths = {"a": tmp_path / "x" / "a.wav", "b": tmp_path / "x" / "b.wav"}
    w = StemWriter(paths, 44100, 2, "wav", 16, out_samplerate=48000)
    w.write({"a": torch.zeros(2, 1000), "b": torch.full((2, 1000), 2.0)})
    assert not paths["a"].exists() and w.partials["a"].exists()
    assert w.partials["a"].name.startswith(f".a.wav.{os.getpid()}@") and w.partials["a"].name.endswith(".partial")
    w.commit()
    assert all(p.exists() for p in paths.values()) and not w.partials["a"].exists()
    b, sr = read_audio(paths["b"])
    assert sr == 48000 and abs(b.shape[-1] - 1088) <= 1 and b.max() <= 1.0  # resampled, clipped for PCM
    w2 = StemWriter({"c": tmp_path / "c.wav"}, 44100, 2)
    w2.write({"c": torch.zeros(2, 10)})
    w2.abort()
    assert list(tmp_path.glob("*c.wav*")) == []


def test_writer_with_a_peak_limit_scales_loud_stems_as_a_whole(tmp_path):
    loud = torch.linspace(-2, 2, 3000).repeat(2, 1)
    quiet = loud * 0.2
    paths = {"loud": tmp_path / "loud.wav", "quiet": tmp_path / "quiet.flac"}
    w = StemWriter(paths, 44100, 2, "wav", 16, peak_limit=0.9)
    for start in range(0, 3000, 1000):  # the loudest samples come last: the gain is known only at the end
        w.write({"loud": loud[:, start:start + 1000], "quiet": quiet[:, start:start + 1000]})
    assert not paths["loud"].exists()
    w.commit()
    got, _ = sf.read(paths["loud"], dtype="float32")
    np.testing.assert_allclose(got.T, (loud * 0.45).numpy(), atol=1 / 32767)
    assert sf.info(paths["loud"]).subtype == "PCM_16"
    got, _ = sf.read(paths["quiet"], dtype="float32")
    np.testing.assert_allclose(got.T, quiet.numpy(), atol=1 / 32767)  # below the limit: untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loud.wav", "quiet.flac"]


def test_aborted_peak_limited_writer_leaves_nothing(tmp_path):
    w = StemWriter({"a": tmp_path / "a.wav"}, 44100, 1, "wav", 16, peak_limit=0.9)
    w.write({"a": torch.ones(1, 100)})
    w.abort()
    assert list(tmp_path.iterdir()) == []
