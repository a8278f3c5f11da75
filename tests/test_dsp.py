"""The embedded `dsp` separator through the real job path (files in, files out)."""
import numpy as np
import pytest
import soundfile as sf
import torch

from dsu import protocol
from dsu.engine import TensorSignal
from dsu.errors import DSUError
from dsu.families import load, resolve
from dsu.jobs.separate import separate_file

SR = 44100


def synth(seconds=6.0, sr=SR):
    """A centred voice-band tone, a hard-left chord, a low bass note and clicks."""
    t = np.arange(int(seconds * sr)) / sr
    voice = 0.2 * np.sin(2 * np.pi * 523 * t) * (1 + 0.3 * np.sin(2 * np.pi * 5 * t))
    chord = 0.15 * sum(np.sin(2 * np.pi * f * t) for f in (1318.5, 1661.2, 1975.5))
    bass = 0.3 * np.sin(2 * np.pi * 55 * t)
    clicks = np.zeros_like(t)
    clicks[:: sr // 4] = 0.9
    left = voice + chord + bass + clicks
    right = voice + bass + clicks
    return np.stack([left, right], 1).astype(np.float32), dict(voice=voice, chord=chord, bass=bass, clicks=clicks)


def energy(x):
    return float(np.sum(np.asarray(x, dtype=np.float64) ** 2))


def test_dsp_separates_by_position_and_band_and_sums_to_the_mix(tmp_path):
    mix, parts = synth()
    src = tmp_path / "song.wav"
    sf.write(src, mix, SR, subtype="FLOAT")
    model = load(resolve({"model": "dsp"}, None), torch.device("cpu"))
    res = separate_file(model, src, tmp_path / "out", bit_depth=32)
    assert res.files == ["drums.wav", "bass.wav", "other.wav", "vocals.wav"]
    assert all(p.startswith(str(tmp_path / "out" / "song")) for p in res.paths)
    stems = {name.split(".")[0]: sf.read(p, dtype="float64")[0] for name, p in zip(res.files, res.paths)}
    total = sum(stems.values())
    np.testing.assert_allclose(total, mix, atol=2e-3)  # masks sum to one
    # the centred tone lands in vocals, the hard-left chord does not
    v, o = stems["vocals"], stems["other"]
    assert energy(v) > 0.5 * energy(parts["voice"]) * 2
    assert energy(o[:, 0]) > 3 * energy(o[:, 1])
    assert energy(stems["bass"]) > 0.5 * energy(parts["bass"]) * 2


def test_two_stems_subset_and_input_rate(tmp_path):
    mix, _ = synth(3.0, 48000)
    src = tmp_path / "in48.flac"
    sf.write(src, mix, 48000)
    model = load(resolve({"model": "dsp"}, None), torch.device("cpu"))
    res = separate_file(model, src, tmp_path, two_stems="vocals", sample_rate="input", fmt="flac", bit_depth=24)
    assert res.files == ["vocals.flac", "no_vocals.flac"] and res.samplerate == 48000
    info = sf.info(res.paths[0])
    assert info.samplerate == 48000 and abs(info.frames - len(mix)) <= 2
    res = separate_file(model, src, tmp_path / "sub", stems=["drums"])
    assert res.files == ["drums.wav"] and sf.info(res.paths[0]).samplerate == SR


def test_options_are_read_through_the_protocol_table():
    """A family reads its options from the protocol table: a direct call is refused what a worker
    refuses, in the worker's words, and an absent option is the table's default for the family."""
    model = load(resolve({"model": "dsp"}, None), torch.device("cpu"))
    signal = TensorSignal(torch.zeros(2, 30 * SR))
    for bad in (1000, "12", True):
        with pytest.raises(DSUError) as direct:
            model.passes(signal, segment=bad)
        with pytest.raises(DSUError) as request:
            protocol.validate(protocol.COMMANDS["separate"], {"input": "a.wav", "output_dir": "out", "segment": bad})
        assert (direct.value.code, direct.value.message) == (request.value.code, request.value.message), bad
    (segment,) = [f for f in protocol.options_of("dsp") if f.name not in ("backend", "precision")]
    assert model.passes(signal)[0].chunks[0].size == int(dict(segment.families)["dsp"] * SR)
