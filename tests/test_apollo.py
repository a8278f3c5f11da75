"""Apollo restoration: the model against JusperLee/Apollo's, checkpoints in their native layouts
(Lightning `.ckpt` with its discriminator, the official `.bin`, a bare state dict), the chunked
restoration against Apollo's `inference.run_model`, and the worker's `apollo`/`restore` commands."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from torch.torch_version import TorchVersion

from dsu import families
from dsu.errors import DSUError
from dsu.families.apollo import restore_chunks
from dsu.models.apollo import Apollo
from dsu.jobs.restore import restore_file
from helpers import snr
from model_checks import layout
from helpers import RawWorker

FIXTURES = Path(__file__).parent / "fixtures" / "apollo"
SMALL = {"sr": 16000, "win": 20, "feature_dim": 16, "layer": 2}  # what the fixtures were made with
CHUNK, OVERLAP = 0.25, 0.05


def recipe_weights(model: Apollo) -> dict[str, torch.Tensor]:
    """The fixtures' weights, rebuilt from keys and shapes alone (see fixtures/apollo/README.md)."""
    g = torch.Generator().manual_seed(1234)
    state = model.state_dict()
    for key in sorted(state):
        if key.endswith(("cos_freq", "sin_freq")):
            continue
        w = torch.randn(state[key].shape, generator=g)
        if w.dim() == 1:
            w = 1 + 0.1 * w if key.endswith(".weight") else 0.1 * w
        else:
            w = w / math.sqrt(w[0].numel())
        state[key] = w
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The fixtures' model saved the ways users have Apollo models on disk."""
    tmp = tmp_path_factory.mktemp("apollo")
    state = recipe_weights(Apollo(**SMALL))
    discriminator = {f"discriminator.discriminators.{i}.convs.0.weight": torch.randn(4, 2, 3) for i in range(2)}
    torch.save({"epoch": 12, "global_step": 3400, "pytorch-lightning_version": "2.1.0",
                "state_dict": {**{f"audio_model.{k}": v for k, v in state.items()}, **discriminator,
                               "loss_func.eps": torch.tensor(1e-8)},
                "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [],
                "hparams_name": "kwargs", "hyper_parameters": {}}, tmp / "restorer.ckpt")
    (tmp / "apollo.yaml").write_text(yaml.safe_dump({
        "exp": {"name": "Apollo"}, "model": {"_target_": "look2hear.models.apollo.Apollo", **SMALL},
        "discriminator": {"nch": 2}}))
    torch.save({"model_name": "Apollo", "state_dict": state, "model_args": {"n_sample_rate": 2},
                # look2hear's serialize(): torch.__version__ is a TorchVersion, not a plain str
                "infos": {"software_versions": {"torch_version": TorchVersion("2.4.0"),
                                                "pytorch_lightning_version": "2.1.0"}}},
               tmp / "pytorch_model.bin")
    torch.save(state, tmp / "my_apollo_model.pth")
    (tmp / "config_msst_apollo.yaml").write_text(yaml.safe_dump({
        "audio": {"chunk_size": 132300, "num_channels": 2, "sample_rate": SMALL["sr"]}, "model": SMALL,
        "training": {"instruments": ["restored", "addition"], "target_instrument": "restored"}}))
    (tmp / "wrong_dim.yaml").write_text(yaml.safe_dump({"model": {**SMALL, "feature_dim": 32}}))
    return {"ckpt": tmp / "restorer.ckpt", "yaml": tmp / "apollo.yaml", "bin": tmp / "pytorch_model.bin",
            "pth": tmp / "my_apollo_model.pth", "msst_yaml": tmp / "config_msst_apollo.yaml",
            "wrong_dim": tmp / "wrong_dim.yaml", "tmp": tmp}


def load(**request):
    ref = families.resolve(request, None)
    assert ref.family == "apollo"
    return families.load(ref, torch.device("cpu"))


def read(path: Path) -> np.ndarray:
    audio, _ = sf.read(path, dtype="float32", always_2d=True)
    return audio.T


# ---- the model ---------------------------------------------------------------------------------------

def test_real_size_layout_equals_the_reference():
    assert layout(Apollo(44100, 20, 256, 6)) == json.loads((FIXTURES / "keys_44100_20_256_6.json").read_text())


def test_forward_matches_the_reference():
    model = Apollo(**SMALL)
    model.load_state_dict(recipe_weights(model), strict=True)
    mix = torch.from_numpy(read(FIXTURES / "input.wav")[:, :3200])
    with torch.inference_mode():
        out = model.eval()(mix[None])[0].numpy()
    expected = np.load(FIXTURES / "forward.npy")
    assert out.shape == expected.shape and np.abs(out).max() > 0.01
    assert np.allclose(out, expected, rtol=1e-5, atol=1e-6), snr(expected, out)


def test_chunks_are_apollos():
    chunks = restore_chunks(13300, 4000, 800)
    assert [(c.start, c.size, c.out_size) for c in chunks] == [
        (0, 4000, 4000), (3200, 4000, 4000), (6400, 4000, 4000), (9600, 4000, 3700)]
    assert chunks[0].window[0] == 1 and chunks[1].window[0] == 0 and chunks[0].window[-1] == 0
    assert chunks[3].window[-1] == 1  # it reaches the end: no fade-out, and no chunk after it
    assert [(c.size, c.out_size) for c in restore_chunks(4000, 4000, 800)] == [(4000, 4000)]  # one piece
    assert [(c.size, c.out_size) for c in restore_chunks(9000, 0, 0)] == [(9000, 9000)]


# ---- checkpoints and configs -------------------------------------------------------------------------

def test_lightning_ckpt_with_yaml_restores_like_the_reference(files, tmp_path):
    model = load(model_path=str(files["ckpt"]), config_path=str(files["yaml"]))  # claimed by its config
    assert (model.samplerate, model.stems, model.model.feature_dim) == (16000, ["restored"], 16)
    progress = []
    result = restore_file(model, FIXTURES / "input.wav", tmp_path / "out.wav", chunk_seconds=CHUNK,
                          overlap_seconds=OVERLAP, bit_depth=32, progress=progress.append)
    assert result.files == ["out.wav"] and result.paths == [str((tmp_path / "out.wav").resolve())]
    assert result.stems == ["restored"] and result.output_dir == str(tmp_path.resolve())
    assert progress[-1] == 1.0 and len(progress) == 4
    expected = np.load(FIXTURES / "chunked.npy")
    out = read(tmp_path / "out.wav")
    assert out.shape == expected.shape
    assert np.allclose(out, expected, rtol=1e-5, atol=1e-6), snr(expected, out)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no partial file left


def test_official_bin_and_bare_state_dict(files, tmp_path):
    # no config: sr/win from the request, feature_dim/layer from the weights' shapes
    official = load(model_path=str(files["bin"]), model_type="apollo", sr=16000, win=20)
    assert (official.model.feature_dim, len(official.model.net)) == (16, 2)
    bare = load(model_path=str(files["pth"]), config_path=str(files["msst_yaml"]))  # an MSST-style config
    for a, b in zip(official.model.state_dict().values(), bare.model.state_dict().values()):
        assert torch.equal(a, b)
    mono = tmp_path / "mono.flac"
    sf.write(mono, read(FIXTURES / "input.wav")[0, :2000], 16000)
    result = restore_file(official, mono, tmp_path / "mono_restored.flac")  # shorter than a chunk: one piece
    with torch.inference_mode():
        whole = official.model(torch.from_numpy(read(mono))[None])[0].numpy()
    out = read(tmp_path / "mono_restored.flac")
    assert sf.info(result.paths[0]).format == "FLAC" and out.shape == (1, 2000)
    assert np.abs(out - np.clip(whole, -1, 1)).max() < 2 / 32768  # 16-bit output


def test_mismatches_are_clear(files):
    with pytest.raises(DSUError) as e:
        load(model_path=str(files["ckpt"]), config_path=str(files["wrong_dim"]))
    assert e.value.code == "config_mismatch"
    assert "feature_dim 16" in e.value.message and "BN.0.1.weight" in e.value.message
    assert "wrong_dim.yaml says feature_dim 32" in e.value.message
    with pytest.raises(DSUError) as e:
        load(model_path=str(files["bin"]), model_type="apollo", sr=16000, win=20, layer=3)
    assert e.value.code == "config_mismatch" and "the request says layer 3" in e.value.message
    with pytest.raises(DSUError) as e:  # defaults (44100 Hz, 20 ms): wider bands than these weights
        load(model_path=str(files["bin"]), model_type="apollo")
    assert e.value.code == "config_mismatch" and "BN.0.0.weight (5,) != (11,)" in e.value.message
    with pytest.raises(DSUError) as e:
        load(model_path=str(files["ckpt"]), config_path=str(files["msst_yaml"]), feature_dim=0)
    assert e.value.code == "bad_value"
    other = files["tmp"] / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, other)
    with pytest.raises(DSUError) as e:
        load(model_path=str(other), model_type="apollo", sr=16000)
    assert e.value.code == "config_mismatch" and "missing keys: BN.0.0.weight" in e.value.message


def test_other_families_keep_their_files(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({}, ckpt)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": {"dim": 8, "depth": 1, "freqs_per_bands": [2]},
                                      "training": {"instruments": ["vocals"]}}))
    assert families.FAMILIES["apollo"].resolver({"model_path": str(ckpt), "config_path": str(config)}, None) is None
    assert families.FAMILIES["apollo"].resolver({"model_path": str(ckpt)}, None) is None


def test_bad_chunking_and_cancel(files, tmp_path):
    model = load(model_path=str(files["ckpt"]), config_path=str(files["yaml"]))
    with pytest.raises(DSUError) as e:
        restore_file(model, FIXTURES / "input.wav", tmp_path / "a.wav", chunk_seconds=0.1, overlap_seconds=0.2)
    assert e.value.code == "bad_value"
    with pytest.raises(DSUError) as e:
        restore_file(model, FIXTURES / "input.wav", tmp_path / "a.ogg")
    assert e.value.code == "bad_value"
    with pytest.raises(DSUError) as e:
        restore_file(model, FIXTURES / "input.wav", tmp_path / "a.wav", cancelled=lambda: True)
    assert e.value.code == "cancelled"
    assert not list(tmp_path.iterdir())


# ---- the worker --------------------------------------------------------------------------------------

@pytest.mark.slow  # a worker start; the CLI's restore runs Apollo through the same job in process
def test_worker_apollo_and_restore(files, tmp_path):
    expected = np.load(FIXTURES / "chunked.npy")
    with RawWorker(tmp_path) as w:
        assert w.read()["status"] == "loading" and w.read()["status"] == "ready"
        for i, cmd in enumerate(("apollo", "restore")):
            out = tmp_path / f"{cmd}.wav"
            done = w.ask(id=i, cmd=cmd, input=str(FIXTURES / "input.wav"), output=str(out),
                         model_path=str(files["ckpt"]), config_path=str(files["yaml"]),
                         chunk_seconds=CHUNK, **{"overlap_seconds" if i == 0 else "chunk_overlap": OVERLAP})
            assert done["files"] == [out.name] and done["paths"] == [str(out.resolve())]
            assert Path(done["output_dir"]) / done["files"][0] == out.resolve()  # the folder holding `files`
            assert done["stems"] == ["restored"] and done["model_from_cache"] == (i == 1)
            assert np.abs(read(out) - np.clip(expected, -1, 1)).max() < 2 / 32768  # 16-bit by default
        statuses = [m["status"] for m in w.log]
        assert "restoring" in statuses and "progress" in statuses


@pytest.mark.slow  # a worker per name: test_worker_apollo_and_restore runs Apollo through one
def test_worker_restore_by_model_name(files, tmp_path):
    """`restore` takes `model` as `separate` does: looked up in `models_dir` (or the worker's models
    dir); a catalog name that is not installed gets the download hint; a non-Apollo name is not found."""
    import shutil
    expected = np.clip(np.load(FIXTURES / "chunked.npy"), -1, 1)
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(files["ckpt"], models / "restorer.ckpt")
    shutil.copy(files["yaml"], models / "restorer.yaml")
    job = {"input": str(FIXTURES / "input.wav"), "chunk_seconds": CHUNK, "overlap_seconds": OVERLAP}
    with RawWorker(tmp_path, "--models-dir", str(models)) as w:
        assert w.read()["status"] == "loading" and w.read()["status"] == "ready"
        for i, where in enumerate(({"models_dir": str(models)}, {})):  # the request's folder, the worker's
            out = tmp_path / f"named{i}.wav"
            done = w.ask(id=i, cmd="restore", model="restorer", output=str(out), **where, **job)
            assert done["stems"] == ["restored"] and done["paths"] == [str(out.resolve())]
            assert np.abs(read(out) - expected).max() < 2 / 32768
        missing = w.error(id="m", cmd="restore", model="apollo_lew_uni", output=str(tmp_path / "m.wav"), **job)
        assert missing["code"] == "model_not_found", missing
        assert f"dsu models download apollo_lew_uni --models-dir {models}" in missing["message"], missing
        other = w.error(id="d", cmd="restore", model="dsp", output=str(tmp_path / "d.wav"), **job)
        assert other["code"] == "model_not_found" and "no apollo model 'dsp'" in other["message"], other
        neither = w.error(id="n", cmd="apollo", output=str(tmp_path / "n.wav"), **job)
        assert neither["code"] == "missing_field" and "`model`" in neither["message"], neither
        assert not list(tmp_path.glob("[mdn].wav"))
