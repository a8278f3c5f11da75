"""Demucs packages and bags, saved the way demucs saves them, through the family, the job runner and a
real worker, against demucs' own loading (`demucs.pretrained.get_model`) and `apply_model`."""
import json
import os
import random
import shutil
import subprocess
import sys
from fractions import Fraction
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from dsu import families
from dsu.engine import TensorSignal
from dsu.errors import DSUError
from dsu.families import demucs as family
from dsu.jobs.separate import separate_file

demucs_apply = pytest.importorskip("demucs.apply")
from demucs.demucs import Demucs  # noqa: E402
from demucs.hdemucs import HDemucs  # noqa: E402
from demucs.htdemucs import HTDemucs  # noqa: E402
from demucs.pretrained import get_model  # noqa: E402
from demucs.states import get_state, save_with_checksum  # noqa: E402
from helpers import snr

SR = 8000
SOURCES = ["drums", "bass", "other", "vocals"]
CPU = torch.device("cpu")

torch.set_num_threads(1)


def package(model, half: bool) -> dict:
    """What demucs' `serialize_model` writes (training_args are plain data after OmegaConf)."""
    args, kwargs = model._init_args_kwargs
    return {"klass": model.__class__, "args": args, "kwargs": kwargs, "state": get_state(model, None, half),
            "training_args": {"optim": {"lr": 3e-4}, "dset": {"sources": SOURCES}}, "metrics": {"best": 0.1}}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A demucs repo folder: a float16 HTDemucs (Fraction segment) and a float16 Demucs with sha8
    suffixes, a float32 HDemucs without, a diffq-quantized Demucs and a weighted bag."""
    root = tmp_path_factory.mktemp("demucs_repo")
    torch.manual_seed(0)
    ht = HTDemucs(sources=SOURCES, samplerate=SR, segment=Fraction(3, 2), channels=8, depth=2, t_layers=1,
                  t_heads=2, bottom_channels=0, nfft=512)
    save_with_checksum(package(ht, half=True), root / "ht01.th")
    hd = HDemucs(sources=SOURCES, samplerate=SR, segment=2, channels=4, depth=3, nfft=256)
    torch.save(package(hd, half=False), root / "hd01.th")
    dm = Demucs(sources=SOURCES, samplerate=SR, segment=2, channels=8, depth=2, lstm_layers=1)
    save_with_checksum(package(dm, half=True), root / "dm01.th")
    from diffq import DiffQuantizer
    quantizer = DiffQuantizer(dm, min_size=0.0001, group_size=8)
    save_with_checksum({**package(dm, half=False), "state": {**quantizer.get_quantized_state(), "__quantized": True}},
                       root / "dq01.th")
    quantizer.detach()
    (root / "tinybag.yaml").write_text(yaml.safe_dump({
        "models": ["ht01", "hd01"], "segment": 1.0,
        "weights": [[1.0, 0.5, 1.0, 0.25], [0.5, 1.0, 1.0, 1.0]]}))
    return root


@pytest.fixture(scope="module")
def mix_file(tmp_path_factory) -> Path:
    t = np.arange(int(4.3 * SR)) / SR
    rng = np.random.default_rng(1)
    left = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 330 * t + 1) + 0.1 * rng.standard_normal(t.size)
    path = tmp_path_factory.mktemp("mix") / "song.wav"
    sf.write(path, np.stack([left, right], 1).astype(np.float32), SR, subtype="FLOAT")
    return path


def demucs_cli(model, wav: torch.Tensor, seed: int, **options) -> torch.Tensor:
    """What `demucs` (api.Separator.separate_tensor) computes: normalise by the mono mix, apply_model,
    de-normalise."""
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    random.seed(seed)
    out = demucs_apply.apply_model(model, ((wav - mean) / std)[None], **options)[0]
    return out * std + mean


def read_stems(result) -> dict[str, np.ndarray]:
    return {s: sf.read(p, dtype="float32", always_2d=True)[0].T for s, p in zip(result.stems, result.paths)}


def separate(request: dict, mix_file: Path, out: Path, seed: int, **kw):
    model = families.load(families.resolve(request, None), CPU)
    random.seed(seed)
    return model, separate_file(model, mix_file, out, bit_depth=32, **kw)


@pytest.mark.parametrize("sig,options", [
    pytest.param("ht01", {"shifts": 2}, marks=pytest.mark.slow),  # shifts: the hd01 case has them too
    ("ht01", {"shifts": 0, "segment": 1, "overlap": 0.5, "batch_size": 2}),
    ("hd01", {"shifts": 2, "batch_size": 4}),
    ("dm01", {"shifts": 1, "overlap": 0.1}),
])
def test_packages_match_demucs(repo, mix_file, tmp_path, sig, options):
    model, result = separate({"model": sig, "repo": str(repo)}, mix_file, tmp_path, seed=5, options=options)
    assert model.name == sig and result.stems == SOURCES
    assert Path(result.paths[0]).parent == tmp_path / sig / "song"
    wav = torch.from_numpy(sf.read(mix_file, dtype="float32")[0].T.copy())
    reference = demucs_cli(get_model(sig, repo=repo), wav, seed=5,
                           **{k: v for k, v in options.items() if k != "batch_size"})
    got = read_stems(result)
    for k, stem in enumerate(SOURCES):
        assert snr(reference[k], got[stem]) > 100, stem


@pytest.mark.slow  # a bag of models at several segments: test_packages_match_demucs proves the exactness
def test_weighted_bag_with_segment_and_two_stems(repo, mix_file, tmp_path):
    request = {"model_path": str(repo / "tinybag.yaml")}
    model, result = separate(request, mix_file, tmp_path, seed=11, two_stems="vocals",
                             options={"shifts": 2, "batch_size": 3})
    assert model.name == "tinybag" and result.stems == ["vocals", "no_vocals"]
    wav = torch.from_numpy(sf.read(mix_file, dtype="float32")[0].T.copy())
    bag = get_model("tinybag", repo=repo)
    reference = demucs_cli(bag, wav, seed=11, shifts=2)
    got = read_stems(result)
    assert snr(reference[3], got["vocals"]) > 100
    assert snr(reference[:3].sum(0), got["no_vocals"]) > 100
    # the bag's segment reached the models as BagOfModels sets it
    assert [float(m.segment) for m in model.bag] == [float(m.segment) for m in bag.models] == [1.0, 1.0]


def test_quantized_package_loads_as_demucs_loads_it(repo):
    ours = family.load_model(next(repo.glob("dq01-*.th")))
    theirs = get_model("dq01", repo=repo)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_malicious_package_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    bad = tmp_path / "evil.th"
    torch.save({"klass": Payload(), "args": (), "kwargs": {}, "state": {}}, bad)
    for request in ({"model_path": str(bad)}, {"model": "evil", "repo": str(tmp_path)}):
        with pytest.raises(DSUError) as e:
            families.load(families.resolve(request, None), CPU)
        assert e.value.code == "bad_value" and "posix.system" in e.value.message
    assert not marker.exists()
    assert [m for m in families.list_models(tmp_path) if m["name"] == "evil"][0]["error"]
    assert not marker.exists()


def test_wrong_checksum_is_refused(repo, tmp_path):
    shutil.copy(repo / "hd01.th", tmp_path / "hd01-deadbeef.th")
    ref = families.resolve({"model": "hd01", "repo": str(tmp_path)}, None)
    with pytest.raises(DSUError) as e:
        families.load(ref, CPU)
    assert e.value.code == "bad_value" and "sha256" in e.value.message and "deadbeef" in e.value.message


def test_weights_that_do_not_fit_are_a_config_mismatch(tmp_path):
    model = HDemucs(sources=SOURCES, samplerate=SR, channels=4, depth=3, nfft=256)
    pkg = package(model, half=True)
    dropped = sorted(pkg["state"])[0]
    del pkg["state"][dropped]
    torch.save(pkg, tmp_path / "broken.th")
    with pytest.raises(DSUError) as e:
        family.load_model(tmp_path / "broken.th")
    assert e.value.code == "config_mismatch" and dropped in e.value.message


def test_names_resolve_like_demucs_repos(repo, tmp_path):
    assert families.resolve({"model": "ht01"}, repo).files == (str(next(repo.glob("ht01-*.th")).resolve()),)
    bag = families.resolve({"model": "tinybag", "repo": str(repo)}, None)
    assert [Path(f).name.split("-")[0].split(".")[0] for f in bag.files] == ["tinybag", "ht01", "hd01"]
    with pytest.raises(DSUError) as e:
        families.resolve({"model": "nope", "repo": str(repo)}, None)
    assert e.value.code == "model_not_found"
    (tmp_path / "broken_bag.yaml").write_text(yaml.safe_dump({"models": ["ht01", "missing9"]}))
    with pytest.raises(DSUError) as e:
        families.resolve({"model_path": str(tmp_path / "broken_bag.yaml"), "repo": str(repo)}, None)
    assert e.value.code == "model_not_found" and "missing9" in e.value.message
    listed = {m["name"]: m for m in families.list_models(repo) if m["family"] == "demucs"}
    assert set(listed) == {"ht01", "hd01", "dm01", "dq01", "tinybag"}
    assert listed["tinybag"]["type"] == "bag" and listed["ht01"]["type"] == "htdemucs"
    assert all(m["stems"] == SOURCES for m in listed.values())


def test_options_are_checked(repo):
    model = families.load(families.resolve({"model": "ht01", "repo": str(repo)}, None), CPU)
    mix = TensorSignal(torch.randn(2, SR))
    for bad in ({"segment": 2}, {"segment": 0}, {"shifts": -1}, {"overlap": 1}, {"batch_size": 0},
                {"shifts": 1.5}):
        with pytest.raises(DSUError) as e:
            model.passes(mix, **bad)
        assert e.value.code == "bad_value", bad


def test_progress_per_segment_and_cancel(repo, mix_file, tmp_path):
    model = families.load(families.resolve({"model": "hd01", "repo": str(repo)}, None), CPU)
    progress = []
    separate_file(model, mix_file, tmp_path / "done", options={"shifts": 2}, progress=progress.append)
    assert len(progress) >= 6 and progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    calls = []
    with pytest.raises(DSUError) as e:
        separate_file(model, mix_file, tmp_path / "cancelled", cancelled=lambda: len(calls) >= 2,
                      progress=calls.append)
    assert e.value.code == "cancelled" and not any((tmp_path / "cancelled").rglob("*.wav"))


@pytest.mark.slow  # test_packages_match_demucs proves the output, test_layouts demucs through every worker
@pytest.mark.skipif(find_spec("dsu.worker") is None, reason="dsu.worker is not built yet")
def test_through_a_worker_process(repo, mix_file, tmp_path):
    request = {"cmd": "separate", "id": 1, "model": "ht01", "repo": str(repo), "input": str(mix_file),
               "output_dir": str(tmp_path), "shifts": 0, "bit_depth": 32}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "dsu.worker", "--device", "cpu", "--threads", "1"],
                          input=json.dumps(request) + "\n", capture_output=True, text=True, timeout=120, env=env)
    replies = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    final = [r for r in replies if r.get("id") == 1 and r.get("status") in ("done", "error")]
    assert final and final[-1]["status"] == "done", done.stdout + done.stderr
    assert any(r.get("status") == "progress" and r.get("id") == 1 for r in replies)
    wav = torch.from_numpy(sf.read(mix_file, dtype="float32")[0].T.copy())
    reference = demucs_cli(get_model("ht01", repo=repo), wav, seed=0, shifts=0)
    for k, stem in enumerate(SOURCES):
        got = sf.read(tmp_path / "ht01" / "song" / f"{stem}.wav", dtype="float32")[0].T
        assert snr(reference[k], got) > 100, stem
