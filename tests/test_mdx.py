"""UVR MDX-Net `.onnx` models through the family, the job runner and a real worker, against what
python-audio-separator's MDXSeparator produced (tests/fixtures/mdx/README.md)."""
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from onnx import TensorProto, helper, numpy_helper

from dsu import engine, families
from dsu.engine import TensorSignal
from dsu.errors import DSUError
from dsu.families import mdx, uvr
from dsu.jobs.separate import separate_file
from helpers import snr

FIXTURES = Path(__file__).parent / "fixtures" / "mdx"
CPU = torch.device("cpu")
# what UVR's model data would say for the fixture's network (it is not in the shipped table)
SETTINGS = {"mdx_n_fft_scale_set": 2048, "compensate": 1.03, "primary_stem": "Vocals"}

torch.set_num_threads(1)


def tiny_onnx(path: Path, dim_f: int = 64, dim_t: int | str = 8, batch: int | str = "batch", seed: int = 0) -> Path:
    """A random MDX-Net-shaped network: input * sigmoid(conv3x3(input)) + 0.01 on [batch, 4, dim_f, dim_t]."""
    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) / 6).astype(np.float32), "w"),
               numpy_helper.from_array((0.1 * rng.standard_normal(4)).astype(np.float32), "b"),
               numpy_helper.from_array(np.array(0.01, np.float32), "bias")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["conv"], ["mask"]),
             helper.make_node("Mul", ["input", "mask"], ["masked"]),
             helper.make_node("Add", ["masked", "bias"], ["output"])]
    shape = [batch, 4, dim_f, dim_t]
    graph = helper.make_graph(nodes, "tiny_mdx", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def fixture_input(tmp_path: Path, gain: float = 1.0, name: str = "song") -> tuple[Path, np.ndarray]:
    mix = np.load(FIXTURES / "input.npy") * np.float32(gain)
    path = tmp_path / f"{name}.wav"
    sf.write(path, mix.T, 44100, subtype="FLOAT")
    return path, mix


def load(model_path, **request) -> mdx.MDXModel:
    return families.load(families.resolve({"model_path": str(model_path), **request}, None), CPU)


def read(path) -> np.ndarray:
    return sf.read(path, dtype="float32", always_2d=True)[0].T


def run_model(model, audio: torch.Tensor, **options) -> torch.Tensor:
    blocks = []
    engine.run(model.passes(TensorSignal(audio), **options), audio.shape[-1], blocks.append)
    return torch.cat(blocks, -1)


# ---- against python-audio-separator --------------------------------------------------------------

def test_separation_matches_audio_separator(tmp_path):
    wav, _ = fixture_input(tmp_path)
    want = np.load(FIXTURES / "expected.npz")
    model = load(FIXTURES / "model.onnx", **SETTINGS)
    assert model.stems == ["Vocals", "Instrumental"]
    result = separate_file(model, wav, tmp_path / "out", bit_depth=32, options={"segment_size": 8})
    assert result.files == ["song_(Vocals)_model.wav", "song_(Instrumental)_model.wav"]
    vocals, inst = (read(p) for p in result.paths)
    assert snr(want["vocals"], vocals) > 110 and snr(want["instrumental"], inst) > 110


def test_denoise_on_a_quiet_mix_matches_audio_separator(tmp_path):
    """Under the 0.9 peak the mix is not scaled but the primary stem is still multiplied by its peak,
    as audio-separator does; denoise averages the network with its negated twin."""
    wav, _ = fixture_input(tmp_path, 0.5)
    want = np.load(FIXTURES / "expected.npz")
    model = load(FIXTURES / "model.onnx", **SETTINGS)
    result = separate_file(model, wav, tmp_path / "out", bit_depth=32,
                           options={"mdx_segment_size": 8, "mdx_overlap": 0.5, "mdx_enable_denoise": True})
    vocals, inst = (read(p) for p in result.paths)
    assert snr(want["quiet_denoise_vocals"], vocals) > 110
    assert snr(want["quiet_denoise_instrumental"], inst) > 110


# ---- the chunk plan against the reference loop restated plainly ---------------------------------

def reference_loop(fn, mix: torch.Tensor, chunk_size: int, trim: int, overlap: float) -> torch.Tensor:
    """audio-separator's demix loop over a whole in-memory mix (the oracle for the plan)."""
    length = mix.shape[-1]
    gen_size = chunk_size - 2 * trim
    pad = gen_size + trim - length % gen_size
    mixture = torch.cat([torch.zeros(2, trim), mix, torch.zeros(2, pad)], 1)
    result = torch.zeros(2, mixture.shape[-1], dtype=torch.float64)
    divider = torch.zeros(mixture.shape[-1], dtype=torch.float64)
    step = int((1 - overlap) * chunk_size)
    for start in range(0, mixture.shape[-1], step):
        end = min(start + chunk_size, mixture.shape[-1])
        part = torch.cat([mixture[:, start:end], torch.zeros(2, start + chunk_size - end)], 1)
        window = torch.from_numpy(np.hanning(end - start)) if overlap else torch.ones(end - start, dtype=torch.float64)
        result[:, start:end] += fn(part[None])[0, :, :end - start].double() * window
        divider[start:end] += window
    return (result / divider)[:, trim:trim + length].float()


@pytest.mark.parametrize("length,chunk_size,trim,overlap", [
    (26460, 7168, 1024, 0.25), (5000, 7168, 1024, 0.5), (100, 3072, 512, 0.25), (20000, 7168, 1024, 0.0),
    (20000, 4096, 1024, 0.999), (7168 * 3, 7168, 1024, 0.1)])
def test_chunk_plan_reproduces_the_reference_loop(length, chunk_size, trim, overlap):
    mix = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    ramp = torch.linspace(0.5, 2.0, chunk_size)  # position-dependent, so a misplaced chunk shows
    fn = lambda x: x * ramp  # noqa: E731
    chunks = mdx.demix_chunks(length, chunk_size, trim, overlap)
    blocks = []
    engine.run([engine.Pass(model=lambda x: fn(x)[:, None], signal=TensorSignal(mix), chunks=chunks)],
               length, blocks.append)
    got = torch.cat(blocks, -1)[0]
    torch.testing.assert_close(got, reference_loop(fn, mix, chunk_size, trim, overlap), atol=1e-5, rtol=1e-5)


def test_hann_is_numpys():
    for n in (1, 2, 3, 604, 7168):
        np.testing.assert_allclose(mdx.hann(n).numpy(), np.hanning(n).astype(np.float32), atol=1e-7)


# ---- options -------------------------------------------------------------------------------------

def test_denoise_and_compensate_effects(tmp_path):
    wav, mix = fixture_input(tmp_path)
    path = FIXTURES / "model.onnx"
    plain = load(path, **SETTINGS)
    louder = load(path, **{**SETTINGS, "compensate": 1.2})
    audio = torch.from_numpy(mix)
    base = run_model(plain, audio, segment_size=8)
    comp = run_model(louder, audio, segment_size=8)
    denoised = run_model(plain, audio, segment_size=8, enable_denoise=True)
    torch.testing.assert_close(comp[0], base[0])  # compensate leaves the primary stem alone ...
    scaled = audio * np.float32(0.9 / np.abs(mix).max())
    torch.testing.assert_close(comp[1], scaled - 1.2 * base[0], atol=1e-5, rtol=0)  # ... and scales what it takes out
    torch.testing.assert_close(base[1], scaled - 1.03 * base[0], atol=1e-5, rtol=0)
    assert snr(base[0].numpy(), denoised[0].numpy()) < 40  # a different output, of the same kind
    assert torch.corrcoef(torch.stack([base[0].flatten(), denoised[0].flatten()]))[0, 1] > 0.5


def test_option_aliases_batches_and_bad_values(tmp_path):
    model = load(FIXTURES / "model.onnx", **SETTINGS)
    audio = torch.from_numpy(np.load(FIXTURES / "input.npy"))
    plain = run_model(model, audio, segment_size=8, overlap=0.5, hop_length=512)
    aliased = run_model(model, audio, mdx_segment_size=8, mdx_overlap=0.5, mdx_hop_length=512, mdx_batch_size=3)
    torch.testing.assert_close(aliased, plain, atol=1e-6, rtol=0)
    for bad in ({"overlap": 1}, {"segment_size": 0}, {"batch_size": "x"}, {"enable_denoise": "maybe"},
                {"segment_size": 2}, {"hop_length": 2.5}):
        with pytest.raises(DSUError) as e:
            model.passes(TensorSignal(audio), **{"segment_size": 8, **bad})
        assert e.value.code == "bad_value"


def test_other_segment_sizes_and_a_fixed_batch_of_one(tmp_path):
    """A segment_size other than the frames the file fixes runs the network with its declared shape
    relaxed (audio-separator converts it to torch for that); a network fixed to batch 1 still takes
    batches, one spectrogram at a time."""
    audio = torch.from_numpy(np.load(FIXTURES / "input.npy"))
    model = load(FIXTURES / "model.onnx", **SETTINGS)
    longer = run_model(model, audio, segment_size=16)
    assert longer.shape == (2, 2, audio.shape[-1]) and torch.isfinite(longer).all()
    single = load(tiny_onnx(tmp_path / "single.onnx", batch=1), **SETTINGS)
    batched = run_model(single, audio, segment_size=8, overlap=0.9, batch_size=4)
    one_by_one = run_model(single, audio, segment_size=8, overlap=0.9, batch_size=1)
    torch.testing.assert_close(batched, one_by_one, atol=1e-6, rtol=0)


# ---- model data, names, errors ---------------------------------------------------------------------

def test_unknown_file_without_settings_says_what_to_give(tmp_path):
    fixed = tiny_onnx(tmp_path / "fixed.onnx")
    with pytest.raises(DSUError) as e:
        load(fixed)
    assert e.value.code == "bad_value" and "`mdx_n_fft_scale_set`" in e.value.message
    assert "mdx_dim_f_set" not in e.value.message  # read from the network's input
    free = tiny_onnx(tmp_path / "free.onnx", dim_f="freq", dim_t="frames")
    with pytest.raises(DSUError) as e:
        load(free)
    assert all(f"`{k}`" in e.value.message for k in ("mdx_n_fft_scale_set", "mdx_dim_f_set", "mdx_dim_t_set"))
    model = load(free, mdx_n_fft_scale_set=2048, mdx_dim_f_set=64, mdx_dim_t_set=3)
    assert (model.n_fft, model.dim_f, model.dim_t, model.compensate) == (2048, 64, 8, 1.0)
    assert model.stems == ["Vocals", "Instrumental"]  # audio-separator's default primary stem


def test_table_entry_by_md5_and_overrides(tmp_path, monkeypatch):
    path = tiny_onnx(tmp_path / "UVR-MDX-NET-Tiny.onnx", seed=4)
    entry = {"md5": uvr.model_hash(path), "primary_stem": "Instrumental", "n_fft": 2048, "dim_f": 64, "dim_t": 8,
             "compensate": 1.022}
    monkeypatch.setitem(uvr.table("mdx"), entry["md5"], entry)
    model = load(path)
    assert (model.name, model.stems, model.n_fft, model.compensate) == (
        "UVR-MDX-NET-Tiny", ["Instrumental", "Vocals"], 2048, 1.022)
    other = load(path, primary_stem="Reverb", compensate=1.0)
    assert other.stems == ["Reverb", "No Reverb"] and other.compensate == 1.0
    wav, _ = fixture_input(tmp_path)
    done = separate_file(other, wav, tmp_path / "out", options={"segment_size": 8})
    assert done.files == ["song_(Reverb)_UVR-MDX-NET-Tiny.wav", "song_(No Reverb)_UVR-MDX-NET-Tiny.wav"]
    assert sf.info(done.paths[0]).subtype == "PCM_16"


def test_settings_that_contradict_the_network(tmp_path):
    path = FIXTURES / "model.onnx"
    with pytest.raises(DSUError) as e:
        load(path, **SETTINGS, mdx_dim_f_set=32)
    assert e.value.code == "config_mismatch" and "`mdx_dim_f_set`" in e.value.message
    with pytest.raises(DSUError) as e:
        load(path, **SETTINGS, mdx_dim_t_set=4)
    assert e.value.code == "config_mismatch" and "`mdx_dim_t_set`" in e.value.message
    with pytest.raises(DSUError) as e:
        load(tiny_onnx(tmp_path / "free.onnx", dim_f="f", dim_t="t"), **{**SETTINGS, "mdx_n_fft_scale_set": 100},
             mdx_dim_f_set=64, mdx_dim_t_set=3)
    assert e.value.code == "config_mismatch" and "mdx_n_fft_scale_set" in e.value.message


def test_broken_file_is_refused_clearly(tmp_path):
    cut = (FIXTURES / "model.onnx").read_bytes()[:300]
    for name, content in (("junk.onnx", b"this is not a network"), ("cut.onnx", cut)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DSUError) as e:
            load(tmp_path / name, **SETTINGS)
        assert e.value.code == "bad_value" and name in e.value.message and "ONNX" in e.value.message


def test_resolving_names_and_listing(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(FIXTURES / "model.onnx", models / "Kim_Tiny.onnx")
    (models / "notes.txt").write_text("x")
    ref = families.resolve({"model": "Kim_Tiny", **SETTINGS}, models)
    assert ref.family == "mdx" and ref.name == "Kim_Tiny" and ref.option("mdx_n_fft_scale_set") == 2048
    assert families.resolve({"model": "Kim_Tiny.onnx"}, models).family == "mdx"
    assert families.resolve({"model_path": str(models / "Kim_Tiny.onnx")}, None).family == "mdx"
    renamed = shutil.copy(FIXTURES / "model.onnx", tmp_path / "network.bin")
    assert families.resolve({"model_path": str(renamed), "model_type": "mdx"}, None).name == "network"
    listed = [m for m in families.list_models(models) if m["family"] == "mdx"]
    assert listed == [{"name": "Kim_Tiny", "family": "mdx", "type": "mdx", "file": "Kim_Tiny.onnx", "stems": []}]
    with pytest.raises(DSUError) as e:
        families.resolve({"model": "Missing"}, models)
    assert e.value.code == "model_not_found"


# ---- through a real worker process -----------------------------------------------------------------

def test_through_the_audio_separator_worker(tmp_path):
    """`dsu-audio-separator` as integrations spawn it: a model named in the models dir with UVR's
    settings in the request, 16-bit UVR-named stems, and the clear error for an unknown file."""
    from dsu.client import Worker, WorkerError

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(FIXTURES / "model.onnx", models / "UVR_Tiny.onnx")
    wav, _ = fixture_input(tmp_path)
    want = np.load(FIXTURES / "expected.npz")
    with Worker(["--name", "dsu-audio-separator", "--models-dir", str(models), "--threads", "1"]) as worker:
        done = worker.separate(input=str(wav), output_dir=str(tmp_path / "out"), model="UVR_Tiny",
                               mdx_segment_size=8, **SETTINGS)
        assert done["files"] == ["song_(Vocals)_UVR_Tiny.wav", "song_(Instrumental)_UVR_Tiny.wav"]
        vocals, inst = (read(p) for p in done["paths"])
        assert sf.info(done["paths"][0]).subtype == "FLOAT"  # the input's bit depth, as audio-separator writes
        assert snr(want["vocals"], vocals) > 60 and snr(want["instrumental"], inst) > 60
        # the previous DSU worker's `single_stem`
        done = worker.separate(input=str(wav), output_dir=str(tmp_path / "one"), model="UVR_Tiny.onnx",
                               mdx_segment_size=8, single_stem="Instrumental", **SETTINGS)
        assert done["files"] == ["song_(Instrumental)_UVR_Tiny.wav"] and done["model_from_cache"]
        with pytest.raises(WorkerError) as e:
            worker.separate(input=str(wav), output_dir=str(tmp_path / "bad"), model="UVR_Tiny")
        assert e.value.code == "bad_value" and "mdx_n_fft_scale_set" in e.value.message
        assert worker.ping()["status"] == "pong"


def test_stems_louder_than_the_threshold_are_written_scaled_to_it(tmp_path):
    """audio-separator's write-time normalisation: a stem file peaking above 0.9 is scaled, as a
    whole, down to 0.9 (with `normalization_threshold` to choose another peak)."""
    wav, mix = fixture_input(tmp_path, 3.0)  # a mix far above full scale
    model = load(FIXTURES / "model.onnx", **SETTINGS)
    for threshold in (0.9, 0.5):  # the mix itself is scaled to the threshold before demixing
        unscaled = run_model(model, torch.from_numpy(mix), segment_size=8, normalization_threshold=threshold).numpy()
        result = separate_file(model, wav, tmp_path / f"out{threshold}", bit_depth=32,
                               options={"segment_size": 8, "normalization_threshold": threshold})
        for stem, path in zip(unscaled, result.paths):
            written = read(path)
            peak = np.abs(stem).max()
            expected = stem * np.float32(threshold / peak) if peak > threshold else stem
            assert np.abs(written).max() <= threshold + 1e-6
            assert snr(expected, written) > 110
        assert sorted(p.name for p in (tmp_path / f"out{threshold}").iterdir()) == sorted(result.files)
