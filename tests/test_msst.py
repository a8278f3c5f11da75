"""MSST checkpoints (BS-RoFormer, Mel-Band-RoFormer, SCNet, MDX23C) through the family, the job runner
and a real worker, against outputs MSST's own code produced (tests/fixtures/msst/README.md)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import yaml

from dsu import engine, families
from dsu.engine import TensorSignal
from dsu.errors import DSUError
from dsu.families import msst
from dsu.jobs.separate import separate_file
from helpers import snr

FIXTURES = Path(__file__).parent / "fixtures" / "msst"
TYPES = ["bs_roformer", "mel_band_roformer", "scnet", "mdx23c"]
CPU = torch.device("cpu")

torch.set_num_threads(1)


def fixture_request(model_type: str) -> dict:
    d = FIXTURES / model_type
    return {"model_path": str(d / "model.ckpt"), "config_path": str(d / "config.yaml")}


def input_wav(tmp_path: Path, model_type: str) -> tuple[Path, np.ndarray]:
    mix = np.load(FIXTURES / model_type / "input.npy")
    path = tmp_path / f"{model_type}_mix.wav"
    sf.write(path, mix.T, 44100, subtype="FLOAT")
    return path, mix


def read_stems(result) -> dict[str, np.ndarray]:
    return {stem: sf.read(p, dtype="float32", always_2d=True)[0].T for stem, p in zip(result.stems, result.paths)}


def run_model(model, audio: torch.Tensor, **options) -> torch.Tensor:
    blocks = []
    engine.run(model.passes(TensorSignal(audio), **options), audio.shape[-1], blocks.append)
    return torch.cat(blocks, -1)


# ---- MSST's demix loop, restated plainly over a whole in-memory signal (the oracle for the plan) ----

def demix_oracle(model, mix: torch.Tensor, chunk_size: int, num_overlap: int, batch_size: int) -> torch.Tensor:
    fade, step = chunk_size // 10, chunk_size // num_overlap
    border = chunk_size - step
    padded = border > 0 and mix.shape[-1] > 2 * border
    if padded:
        mix = F.pad(mix[None], (border, border), mode="reflect")[0]
    total = mix.shape[-1]
    base = torch.ones(chunk_size)
    base[-fade:] = torch.linspace(1, 0, fade)
    base[:fade] = torch.linspace(0, 1, fade)
    acc, weight = None, torch.zeros(total)
    starts = list(range(0, total, step))
    for first in range(0, len(starts), batch_size):
        group = starts[first:first + batch_size]
        parts = []
        for s in group:
            part = mix[:, s:s + chunk_size]
            mode = "reflect" if part.shape[-1] > chunk_size // 2 else "constant"
            parts.append(F.pad(part[None], (0, chunk_size - part.shape[-1]), mode=mode)[0])
        out = model(torch.stack(parts))
        w = base.clone()
        if group[-1] == 0:
            w[:fade] = 1
        elif group[-1] + step >= total:
            w[-fade:] = 1
        if acc is None:
            acc = torch.zeros(*out.shape[1:-1], total)
        for s, o in zip(group, out):
            m = min(chunk_size, total - s)
            acc[..., s:s + m] += o[..., :m] * w[:m]
            weight[s:s + m] += w[:m]
    est = torch.nan_to_num(acc / weight)
    return est[..., border:-border] if padded else est


class PositionalToy(torch.nn.Module):
    """Nonlinear, channel-mixing and dependent on the position inside the chunk, so any misplaced
    sample, window or padding shows."""

    def forward(self, x):
        ramp = 1 + torch.arange(x.shape[-1]) / x.shape[-1]
        return torch.stack([torch.tanh(1.5 * x + 0.5 * x.flip(1)) * ramp, torch.sin(3 * x) * ramp.flip(0)], 1)


def toy_separator(chunk_size, num_overlap, batch_size, normalize=False):
    config = {"audio": {"chunk_size": chunk_size}, "model": {}, "training": {"instruments": ["a", "b"]},
              "inference": {"num_overlap": num_overlap, "batch_size": batch_size, "normalize": normalize}}
    return msst.MSSTModel("toy", "bs_roformer", config, PositionalToy(), CPU)


@pytest.mark.parametrize("length,size,overlap,batch", [
    (1000, 100, 2, 1), (1000, 100, 4, 3), (1003, 97, 3, 2), (2000, 300, 4, 5), (500, 100, 5, 7),
    (1000, 100, 1, 1), (1000, 100, 1, 3),       # no overlap: no border padding, zero-weight samples
    (150, 100, 2, 4), (205, 100, 2, 2),         # barely longer than the border
    (60, 100, 2, 1), (40, 100, 2, 2),           # shorter than a chunk: mirrored / zero-filled tail
])
def test_chunk_plan_reproduces_msst_demix_loop(length, size, overlap, batch):
    mix = torch.randn(2, length) * 0.5 + 0.1
    sep = toy_separator(size, overlap, batch)
    want = demix_oracle(PositionalToy(), mix, size, overlap, batch)
    torch.testing.assert_close(run_model(sep, mix), want, atol=1e-6, rtol=0)


def test_normalisation_and_tta_are_msst_s():
    """inference.py: normalise by the mono mix's mean/std, average plain, channel-swapped and negated
    demixes, denormalise."""
    mix = torch.randn(2, 1500) * 0.3 + 0.05
    mono = mix.mean(0)
    mean, std = mono.mean(), mono.std(unbiased=False)
    norm = (mix - mean) / std
    toy = PositionalToy()
    plain = demix_oracle(toy, norm, 200, 4, 3)
    swapped = demix_oracle(toy, norm.flip(0), 200, 4, 3).flip(1)
    negated = demix_oracle(toy, -norm, 200, 4, 3)
    want = (plain + swapped - negated) / 3 * std + mean
    got = run_model(toy_separator(200, 4, 3, normalize=True), mix, use_tta=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# ---- real architectures against MSST's own outputs -------------------------------------------------

@pytest.mark.parametrize("model_type", TYPES)
def test_separation_matches_msst(tmp_path, model_type):
    ref = families.resolve(fixture_request(model_type), None)
    assert (ref.family, ref.option("model_type")) == ("msst", model_type)  # detected from the config's keys
    model = families.load(ref, CPU)
    config = yaml.load((FIXTURES / model_type / "config.yaml").read_text(), Loader=msst.ConfigLoader)
    target = config["training"]["target_instrument"]
    assert model.stems == ([target] if target else config["training"]["instruments"])
    wav, _ = input_wav(tmp_path, model_type)
    result = separate_file(model, wav, tmp_path / "out")
    got = read_stems(result)
    want = np.load(FIXTURES / model_type / "expected.npy")
    assert sorted(Path(p).name for p in result.paths) == sorted(f"{s}.wav" for s in model.stems)
    for stem, expected in zip(model.stems, want):
        assert snr(expected, got[stem]) > 60, (stem, snr(expected, got[stem]))


def test_tta_and_instrumental_match_msst(tmp_path):
    model = families.load(families.resolve(fixture_request("bs_roformer"), None), CPU)
    wav, mix = input_wav(tmp_path, "bs_roformer")
    options = {"use_tta": True, "extract_instrumental": True}
    result = separate_file(model, wav, tmp_path / "out", options=options)
    got = read_stems(result)
    want = np.load(FIXTURES / "bs_roformer" / "expected_tta.npy")[0]
    assert result.stems == ["vocals", "instrumental"]
    assert snr(want, got["vocals"]) > 60
    assert snr(mix - want, got["instrumental"]) > 60


def test_bfloat16_autocast_on_cpu_stays_close_to_float32():
    model = families.load(families.resolve(fixture_request("mel_band_roformer"), None), CPU)
    mix = torch.from_numpy(np.load(FIXTURES / "mel_band_roformer" / "input.npy"))
    full = run_model(model, mix).numpy()
    half = run_model(model, mix, precision="bfloat16").numpy()
    assert snr(full, half) > 20
    with pytest.raises(DSUError) as e:
        model.passes(TensorSignal(mix), precision="float8")
    assert e.value.code == "bad_value"


# ---- checkpoints and configs -----------------------------------------------------------------------

@pytest.mark.parametrize("wrapper", [None, "state", "state_dict", "model_state_dict"])
def test_checkpoint_wrappers_load(tmp_path, wrapper):
    state = torch.load(FIXTURES / "mdx23c" / "model.ckpt", weights_only=True)
    saved = state if wrapper is None else {wrapper: state, "epoch": 7, "best_metric": 9.1}
    path = tmp_path / "mdx23c_vocals.ckpt"
    torch.save(saved, path)
    request = {"model_path": str(path), "config_path": str(FIXTURES / "mdx23c" / "config.yaml")}
    model = families.load(families.resolve(request, None), CPU)
    loaded = model.model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_pickled_code_in_a_checkpoint_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil_bs_roformer.ckpt"
    torch.save({"state_dict": Payload()}, path)
    request = {"model_path": str(path), "config_path": str(FIXTURES / "bs_roformer" / "config.yaml")}
    with pytest.raises(DSUError) as e:
        families.load(families.resolve(request, None), CPU)
    assert e.value.code == "bad_value" and not marker.exists()


def test_config_loader_knows_tuples_and_nothing_that_builds_objects(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("model:\n  sizes: !!python/tuple\n  - 2\n  - 3\ntraining:\n  instruments: [a]\n")
    assert msst.load_config(good)["model"]["sizes"] == (2, 3)
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"model: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n")
    with pytest.raises(DSUError) as e:
        msst.load_config(evil)
    assert e.value.code == "bad_value" and not marker.exists()


def edited_config(tmp_path, model_type, edit) -> str:
    config = yaml.load((FIXTURES / model_type / "config.yaml").read_text(), Loader=msst.ConfigLoader)
    edit(config)
    path = tmp_path / f"edited_{model_type}.yaml"
    path.write_text(yaml.dump(config))
    return str(path)


def test_checkpoint_that_does_not_fit_its_config_names_the_keys(tmp_path):
    deeper = edited_config(tmp_path, "bs_roformer", lambda c: c["model"].update(depth=2))
    request = {**fixture_request("bs_roformer"), "config_path": deeper}
    with pytest.raises(DSUError) as e:
        families.load(families.resolve(request, None), CPU)
    assert e.value.code == "config_mismatch"
    assert "missing keys" in e.value.message and "layers.1." in e.value.message

    wider = edited_config(tmp_path, "scnet", lambda c: c["model"].update(dims=[4, 8, 16, 32]))
    with pytest.raises(DSUError) as e:
        families.load(families.resolve({**fixture_request("scnet"), "config_path": wider}, None), CPU)
    assert e.value.code == "config_mismatch" and "shapes differ: encoder." in e.value.message


def test_model_type_detection():
    assert msst.type_from_names("MelBandRoformer.ckpt") == "mel_band_roformer"
    assert msst.type_from_names("x/model_bs_roformer_ep_317_sdr_12.9755.ckpt") == "bs_roformer"
    assert msst.type_from_names("vocals.ckpt", "config_musdb18_scnet_xl.yaml") == "scnet"
    assert msst.type_from_names("MDX23C-8KFFT-InstVoc_HQ.ckpt") == "mdx23c"
    assert msst.type_from_names("htdemucs.th", "apollo.yaml") is None
    for model_type in TYPES:  # the fixtures' configs do not state it: their keys tell
        assert msst.type_from_config(msst.load_config(FIXTURES / model_type / "config.yaml")) == model_type
    with pytest.raises(DSUError) as e:
        msst.FAMILY.resolver({"model_path": "SCNet-XL.ckpt"}, None)
    assert e.value.code == "missing_field" and "config_path" in e.value.message
    assert msst.FAMILY.resolver({"model_path": "htdemucs.th"}, None) is None
    assert msst.FAMILY.resolver({"model": "dsp"}, None) is None


# ---- models dir ------------------------------------------------------------------------------------

def test_models_json_names_a_model(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(FIXTURES / "mel_band_roformer", models / "kim")
    (models / "models.json").write_text(json.dumps({
        "kim_vocals": {"type": "mel_band_roformer", "config": "kim/config.yaml", "checkpoint": "kim/model.ckpt",
                       "stems": ["vocals", "other"]},
        "broken": {"type": "scnet", "config": "none.yaml", "checkpoint": "none.ckpt"},
    }))
    listed = {m["name"]: m for m in families.list_models(models) if m["family"] == "msst"}
    assert listed["kim_vocals"]["stems"] == ["vocals", "other"] and "broken" in listed
    ref = families.resolve({"model": "kim_vocals"}, models)
    assert (ref.family, ref.name, ref.option("model_type")) == ("msst", "kim_vocals", "mel_band_roformer")
    model = families.load(ref, CPU)
    wav, _ = input_wav(tmp_path, "mel_band_roformer")
    got = read_stems(separate_file(model, wav, tmp_path / "out"))
    want = np.load(FIXTURES / "mel_band_roformer" / "expected.npy")
    assert snr(want[0], got["vocals"]) > 60
    with pytest.raises(DSUError) as e:
        families.resolve({"model": "broken"}, models)
    assert e.value.code == "model_not_found" and "none.ckpt" in e.value.message


# ---- options, progress, cancel ---------------------------------------------------------------------

def test_worker_options_change_the_plan(tmp_path):
    model = families.load(families.resolve(fixture_request("bs_roformer"), None), CPU)
    mix = torch.from_numpy(np.load(FIXTURES / "bs_roformer" / "input.npy"))
    seen = []
    model_fn = model.model
    counting = lambda x: seen.append(x.shape) or model_fn(x)  # noqa: E731
    model.model = counting
    try:
        run_model(model, mix, overlap=4, batch_size=2, chunk_size=2048)
    finally:
        model.model = model_fn
    assert {s[-1] for s in seen} == {2048} and max(s[0] for s in seen) == 2
    for bad in ({"overlap": 0}, {"batch_size": "x"}, {"chunk_size": -5}, {"overlap": 2.5}):
        with pytest.raises(DSUError) as e:
            model.passes(TensorSignal(mix), **bad)
        assert e.value.code == "bad_value"


def test_progress_per_batch_and_cancel(tmp_path):
    model = families.load(families.resolve(fixture_request("bs_roformer"), None), CPU)
    wav, _ = input_wav(tmp_path, "bs_roformer")
    progress = []
    separate_file(model, wav, tmp_path / "out", options={"batch_size": 1}, progress=progress.append)
    assert len(progress) >= 5 and progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    calls = []
    with pytest.raises(DSUError) as e:
        separate_file(model, wav, tmp_path / "cancelled", cancelled=lambda: len(calls) >= 2,
                      progress=calls.append, options={"batch_size": 1})
    assert e.value.code == "cancelled" and not any((tmp_path / "cancelled").rglob("*.wav"))


# ---- through a real worker process -----------------------------------------------------------------

@pytest.mark.slow  # a worker start: the drop-in and layout tests run MSST through workers
def test_through_the_bsroformer_worker(tmp_path):
    """`dsu-bsroformer` as integrations spawn it: a models.json name, an explicit path pair with
    `extract_instrumental`, and a config that does not fit its checkpoint, all over JSON lines."""
    from dsu.client import Worker, WorkerError

    models = tmp_path / "models"
    shutil.copytree(FIXTURES / "bs_roformer", models / "bs")
    (models / "models.json").write_text(json.dumps(
        {"tiny_bs": {"type": "bs_roformer", "config": "bs/config.yaml", "checkpoint": "bs/model.ckpt"}}))
    wav, _ = input_wav(tmp_path, "bs_roformer")
    want = np.load(FIXTURES / "bs_roformer" / "expected.npy")
    stems = instruments_of("bs_roformer")
    with Worker(["--name", "dsu-bsroformer", "--models-dir", str(models), "--threads", "1"]) as worker:
        progress = []
        done = worker.separate(input=str(wav), output_dir=str(tmp_path / "out"), model="tiny_bs",
                               on_progress=progress.append)
        assert done["files"] == [f"{s}.wav" for s in stems] and progress and progress[-1] == pytest.approx(1.0)
        assert all(Path(p).parent == tmp_path / "out" / wav.stem for p in done["paths"])
        first = sf.read(done["paths"][0], dtype="float32", always_2d=True)[0].T
        assert sf.info(done["paths"][0]).subtype == "FLOAT" and snr(want[0], first) > 60

        again = worker.separate(input=str(wav), output_dir=str(tmp_path / "inst"), extract_instrumental=True,
                                **fixture_request("bs_roformer"))
        assert again["stems"][-1] == "instrumental"
        inst = sf.read(again["paths"][-1], dtype="float32", always_2d=True)[0].T
        mix = sf.read(wav, dtype="float32", always_2d=True)[0].T
        target = "vocals" if "vocals" in stems else stems[0]
        np.testing.assert_allclose(inst, mix - want[stems.index(target)], atol=1e-4)

        deeper = edited_config(tmp_path, "bs_roformer", lambda c: c["model"].update(depth=2))
        with pytest.raises(WorkerError) as e:
            worker.separate(input=str(wav), output_dir=str(tmp_path / "bad"),
                            model_path=fixture_request("bs_roformer")["model_path"], config_path=deeper)
        assert e.value.code == "config_mismatch" and "missing keys" in e.value.message
        assert worker.ping()["status"] == "pong"  # the worker stays up after the error


def instruments_of(model_type: str) -> list[str]:
    config = msst.load_config(FIXTURES / model_type / "config.yaml")
    return msst.instruments(config)
