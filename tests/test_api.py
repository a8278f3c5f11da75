"""The Python library (`dsu.Separator`, `dsu.Restorer`, `dsu.Ensemble`): arrays and files in, stems out,
in process, the same samples the command line writes, errors with the protocol's codes."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import ENV
from tiny_models import tiny_apollo, tiny_htdemucs

import dsu
from dsu import api


def _noise(seconds: float = 2.0, rate: int = 44100, channels: int = 2, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((channels, int(seconds * rate))) * 0.1).astype(np.float32)


def _pcm16(path: Path, audio: np.ndarray, rate: int = 44100) -> np.ndarray:
    """`audio` written as 16-bit PCM, and what reading it back as float32 gives (what the file holds)."""
    sf.write(path, audio.T, rate, subtype="PCM_16")
    return sf.read(path, dtype="float32", always_2d=True)[0].T


def _read(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float32", always_2d=True)[0].T


@pytest.fixture(scope="module")
def htdemucs(tmp_path_factory) -> Path:
    return tiny_htdemucs(tmp_path_factory.mktemp("models") / "tiny.th")


@pytest.mark.parametrize("which", ["dsp", "htdemucs"])
def test_arrays_give_the_samples_dsu_separate_writes(which, htdemucs, tmp_path):
    # demucs draws its shifts at random (as demucs does): none, so that two runs can be compared
    naming = {"model": "dsp"} if which == "dsp" else {"model_path": htdemucs, "shifts": 0}
    # one thread on both sides: a convolution's sums are ordered by its threads, so bit-identity holds
    # between equal thread counts (torch's threads are the process', set back afterwards)
    threads = torch.get_num_threads()
    separator = dsu.Separator(**naming, device="cpu", threads=1)
    audio = _pcm16(tmp_path / "song.wav", _noise(1.3))
    stems = separator.separate(audio, 44100)
    assert list(stems) == separator.stems
    assert all(v.dtype == np.float32 and v.shape == audio.shape for v in stems.values())
    flags = ["-m", "dsp"] if which == "dsp" else ["--model-path", str(htdemucs), "-O", "shifts=0"]
    cli = subprocess.run([sys.executable, "-m", "dsu", "separate", str(tmp_path / "song.wav"), "-o",
                          str(tmp_path / "cli"), "--bit-depth", "32", "--threads", "1", "-q", *flags], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    written = {p.stem: p for p in (tmp_path / "cli").rglob("*.wav")}
    assert sorted(written) == sorted(stems)
    for stem, path in written.items():  # float32 files hold the blocks exactly
        assert np.array_equal(_read(path), stems[stem]), stem
    files = separator.separate_file(tmp_path / "song.wav", tmp_path / "api", bit_depth=32)
    torch.set_num_threads(threads)
    assert sorted(p.relative_to(tmp_path / "api") for p in files) == \
        sorted(p.relative_to(tmp_path / "cli") for p in written.values())


def test_the_model_loads_once_and_instances_share_it():
    stages: list[str] = []
    first = dsu.Separator("dsp", device="cpu", progress=lambda f, stage: stages.append(stage))
    second = dsu.Separator("dsp", device="cpu")
    assert first.model is second.model
    loads = stages.count("loading")
    audio = _noise(0.5)
    one, two = first.separate(audio, 44100), first.separate(audio, 44100)
    assert stages.count("loading") == loads and "separating" in stages
    assert all(np.array_equal(one[k], two[k]) for k in one)


def test_tensors_mono_and_rates(tmp_path):
    separator = dsu.Separator("dsp", device="cpu")
    audio = _noise(1.0, 22050, channels=1)
    from_numpy = separator.separate(audio[0], 22050)
    from_torch = separator.separate(torch.from_numpy(audio), 22050)
    assert all(np.array_equal(from_numpy[k], from_torch[k]) for k in from_numpy)
    assert from_numpy["vocals"].shape == (2, 44100)  # the model's rate and channels
    back = separator.separate(audio, 22050, output_sample_rate="input", stems="vocals")
    assert list(back) == ["vocals"] and back["vocals"].shape == (2, 22050)
    two = separator.separate(audio, 22050, two_stems="vocals")
    assert sorted(two) == ["no_vocals", "vocals"]
    mix = separator.separate(audio, 22050, stems=["drums", "bass", "other"])
    assert np.allclose(two["no_vocals"], sum(mix.values()), atol=1e-6)


@pytest.mark.parametrize("audio, code, words", [
    (np.zeros((44100, 2), np.float32), "bad_value", "looks like [samples, channels]"),
    (np.zeros((2, 100), np.int16), "bad_value", "scale integer PCM"),
    (np.zeros((2, 2, 100), np.float32), "bad_value", "[channels, samples]"),
    (np.zeros((2, 0), np.float32), "bad_value", "no samples"),
    ([0.0, 0.1], "bad_value", "numpy array or a torch tensor"),
    (np.array([[0.0, np.nan, 0.1] * 100]), "unsupported_audio", "NaN or infinite"),
])
def test_bad_arrays_are_named(audio, code, words):
    separator = dsu.Separator("dsp", device="cpu")
    with pytest.raises(dsu.DSUError) as e:
        separator.separate(audio, 44100)
    assert e.value.code == code and words in e.value.message


def test_bad_arguments_speak_the_library():
    cases = [({"model": "dsp", "shifts": 2}, "bad_value", "shifts: not an option of dsp"),
             ({"model": "dsp", "batch_size": 0}, "bad_value", "of Separator must be at least 1"),
             ({"model": "dsp", "backend": "tensorrt"}, "bad_value", "backend"),
             ({}, "missing_field", "give `model`"),
             ({"model": "no-such-model"}, "model_not_found", "no-such-model")]
    for kwargs, code, words in cases:
        with pytest.raises(dsu.DSUError) as e:
            dsu.Separator(device="cpu", **kwargs)
        assert e.value.code == code and words in e.value.message, (kwargs, e.value.message)
    separator = dsu.Separator("dsp", device="cpu")
    for kwargs, words in [({"sample_rate": 10}, "sample_rate"), ({"stems": ["guitar"]}, "guitar"),
                          ({"output_sample_rate": "fast"}, "output_sample_rate")]:
        with pytest.raises(dsu.DSUError) as e:
            separator.separate(_noise(0.2), **kwargs)
        assert words in e.value.message


def test_progress_and_cancel_from_another_thread():
    separator = dsu.Separator("dsp", device="cpu", segment=0.5)
    seen: list[float] = []
    separator.separate(_noise(3.0), 44100, progress=lambda f, stage: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and len(seen) > 2
    started = threading.Event()

    def slow(fraction: float, stage: str) -> None:
        started.set()
        threading.Event().wait(0.05)
    canceller = threading.Thread(target=lambda: started.wait(30) and separator.cancel())
    canceller.start()
    with pytest.raises(dsu.DSUError) as e:
        separator.separate(_noise(20.0), 44100, progress=slow)
    canceller.join()
    assert e.value.code == "cancelled"
    event = threading.Event()
    event.set()
    with pytest.raises(dsu.DSUError) as e:
        separator.separate(_noise(1.0), 44100, cancel=event)
    assert e.value.code == "cancelled"
    assert separator.separate(_noise(0.3), 44100)["vocals"].shape == (2, 13230)  # usable afterwards


def test_restorer_arrays_and_files(tmp_path):
    checkpoint, config = tiny_apollo(tmp_path)
    restorer = dsu.Restorer(model_path=checkpoint, config_path=config, device="cpu")
    audio = _pcm16(tmp_path / "in.wav", _noise(1.5))
    out = restorer.restore(audio, 44100, chunk_seconds=1.0, overlap_seconds=0.25)
    assert out.shape == audio.shape and out.dtype == np.float32
    written = restorer.restore_file(tmp_path / "in.wav", tmp_path / "out.wav", chunk_seconds=1.0,
                                    overlap_seconds=0.25, bit_depth=32)
    assert np.array_equal(_read(written), out)
    with pytest.raises(dsu.DSUError) as e:
        restorer.restore(audio, 44100, chunk_seconds=-1)
    assert e.value.code == "bad_value" and "chunk_seconds" in e.value.message


def test_ensemble_of_arrays_and_files(tmp_path):
    ensemble = dsu.Ensemble([{"model": "dsp"}, {"model": "dsp", "segment": 0.5}], algorithm="avg_wave",
                            device="cpu")
    audio = _pcm16(tmp_path / "song.wav", _noise(1.2))
    blended = ensemble.separate(audio, 44100)
    alone = dsu.Separator("dsp", device="cpu").separate(audio, 44100)
    assert sorted(blended) == sorted(alone)
    assert all(np.abs(blended[k] - alone[k]).max() < 0.05 for k in alone)
    files = ensemble.separate_file(tmp_path / "song.wav", tmp_path / "out")
    assert {p.stem.lower() for p in files} >= {s.lower() for s in alone}
    with pytest.raises(dsu.DSUError) as e:
        dsu.Ensemble([{"model": "dsp"}], algorithm="loudest", device="cpu")
    assert e.value.code == "bad_value" and "algorithm" in e.value.message


def test_python_m_dsu_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "dsu", "--version"], env=ENV, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and dsu.__version__ in out.stdout


def test_import_dsu_stays_light():
    code = "import sys, dsu; print('torch' in sys.modules); dsu.Separator; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stderr
    assert api.__all__ == ["DSUError", "Ensemble", "Restorer", "Separator"]
