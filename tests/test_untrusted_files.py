"""Files DSU reads but did not write (catalogs, models.json, UVR model data, YAML configs and bags,
checkpoints) that would wedge a worker: FIFOs, /dev/zero, deep JSON, huge documents, YAML alias
bombs, configs of models too big to build. Real worker processes; every hang is bounded by a timeout
so that it fails instead of hanging."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from helpers import ENV, FIXTURES, RawWorker, write_song

QUICK = 10.0  # seconds: a quick command waits for nothing slow, so this is far more than it needs
GiB = 1 << 30


INTERIM = {"loading_model", "separating", "progress", "cache_evicted"}


def answer(worker: RawWorker, id, timeout: float = QUICK) -> dict:
    """The final message (answer or error) of request `id` (ids are unique in these tests), already
    read or read within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        for message in worker.log:
            if message.get("id") == id and message["status"] not in INTERIM:
                return message
        worker.read(timeout=max(0.05, deadline - time.monotonic()))


def started(tmp: Path, *args: str, **env: str) -> RawWorker:
    worker = RawWorker(tmp, *args, env={**ENV, **env})
    assert worker.read()["status"] == "loading" and worker.read()["status"] == "ready"
    return worker


def assert_pings(worker: RawWorker) -> None:
    id = f"ping-{time.monotonic_ns()}"
    worker.send(cmd="ping", id=id)
    assert answer(worker, id)["status"] == "pong"


def bomb(levels: int = 9, width: int = 10) -> str:
    """YAML anchors each holding `width` aliases of the previous: `*l<levels>` expands to width**levels
    values, though the text is a few hundred bytes."""
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def msst_config(**values) -> str:
    """The BS-RoFormer fixture's config (its `!!python/tuple` kept) with the first key of each name
    among its sections' keys set to the value given."""
    text = (FIXTURES / "bs_roformer" / "config.yaml").read_text()
    for key, value in values.items():
        text, n = re.subn(rf"^  {key}: .*$", f"  {key}: {value}", text, count=1, flags=re.M)
        assert n == 1, key
    return text


# ---- FIFOs and devices -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", pytest.param("/dev/zero", marks=pytest.mark.slow)])
def test_a_special_file_as_the_catalog_wedges_neither_the_reader_nor_a_job(tmp_path, kind):
    fifo = tmp_path / "catalog.json"
    os.mkfifo(fifo) if kind == "fifo" else fifo.symlink_to(kind)
    song = write_song(tmp_path / "song.wav", 0.5)
    with started(tmp_path, DSU_CATALOG=str(fifo)) as w:
        w.send(cmd="list_models", id="list")
        w.send(cmd="separate", id="sep", input=str(song), output_dir=str(tmp_path / "out"), model="no_such_model")
        assert_pings(w)
        assert answer(w, "list")["status"] == "models"
        error = answer(w, "sep")
        assert error["code"] == "bad_value" and "catalog" in error["message"], error
        assert "special file" in error["message"] and str(fifo) in error["message"], error


def test_fifos_and_dev_zero_in_the_models_dir_are_listed_as_errors_and_refused(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("fifo.th", "fifobag.yaml"):
        os.mkfifo(models / name)
    for name in ("zero.th", "zerobag.yaml"):
        (models / name).symlink_to("/dev/zero")
    song = write_song(tmp_path / "song.wav", 0.5)
    with started(tmp_path, "--models-dir", str(models)) as w:
        w.send(cmd="list_models", id="list")
        assert_pings(w)
        listed = {d.get("file"): d for d in answer(w, "list")["details"]}
        for name in ("fifo.th", "fifobag.yaml", "zero.th", "zerobag.yaml"):
            assert "special file" in listed[name].get("error", ""), listed.get(name)
        for model in ("fifo", "zero"):
            w.send(cmd="separate", id=model, input=str(song), output_dir=str(tmp_path / "out"), model=model)
            error = answer(w, model)
            assert error["code"] == "bad_value" and "special file" in error["message"], error
        assert_pings(w)


# ---- JSON that nests too deep or is too big -----------------------------------------------------------

def test_deeply_nested_json_documents_are_coded_errors(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "catalog.json").write_text(deep)
    uvr = tmp_path / "uvr"
    uvr.mkdir()
    (uvr / "model.pth").write_bytes(os.urandom(4096))
    (uvr / "model_data.json").write_text('{"models": ' + deep + "}")
    msst = tmp_path / "msst"
    msst.mkdir()
    (msst / "models.json").write_text(deep)
    typed = tmp_path / "typed"
    typed.mkdir()
    (typed / "models.json").write_text(json.dumps({"m": {"type": "bs_roformer", "checkpoint": "m.ckpt", "config": 5}}))
    song = write_song(tmp_path / "song.wav", 0.5)
    with started(tmp_path, "--models-dir", str(uvr), DSU_CATALOG=str(tmp_path / "catalog.json")) as w:
        w.send(cmd="list_models", id="list")
        models = answer(w, "list")
        assert models["status"] == "models", models
        (entry,) = [d for d in models["details"] if d.get("file") == "model.pth"]
        assert "model_data.json" in entry["error"] and "nests deeper" in entry["error"], entry
        for id, where in (("catalog", {}), ("models.json", {"models_dir": str(msst)})):
            w.send(cmd="separate", id=id, input=str(song), output_dir=str(tmp_path / "out"), model="nope", **where)
            error = answer(w, id)
            assert error["code"] == "bad_value" and id in error["message"] and "nests deeper" in error["message"], error
        w.send(cmd="separate", id="typed", input=str(song), output_dir=str(tmp_path / "out"), model="m",
               models_dir=str(typed))
        error = answer(w, "typed")
        assert error["code"] == "bad_value" and "`config` of 'm' must be a file path" in error["message"], error


def test_a_huge_models_json_does_not_hold_the_reader(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "c.yaml").write_text((FIXTURES / "scnet" / "config.yaml").read_text())
    entries = [{"name": f"m{i}", "type": "scnet", "config": "c.yaml"} for i in range(300_000)]
    (models / "models.json").write_text(json.dumps({"models": entries}, separators=(",", ":")))
    with started(tmp_path, "--models-dir", str(models)) as w:
        w.send(cmd="list_models", id="list")
        assert_pings(w)
        w.send(cmd="get_status", id="status")
        assert answer(w, "status")["status"] == "status"


# ---- YAML bombs and models too big to build ---------------------------------------------------------------

def test_yaml_alias_bombs_are_refused_quickly(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(FIXTURES / "bs_roformer" / "model.ckpt", models / "bombed.ckpt")
    config = msst_config(target_instrument="null").replace("training:\n", "training:\n  instruments: *l9\n", 1)
    (models / "bombed.yaml").write_text(bomb() + re.sub(r"^  instruments:\n(  - .*\n)+", "", config, flags=re.M))
    (models / "bag.yaml").write_text(bomb() + "models: *l9\n")
    song = write_song(tmp_path / "song.wav", 0.5)
    with started(tmp_path, "--models-dir", str(models)) as w:
        w.send(cmd="list_models", id="list")
        listed = {d.get("file"): d for d in answer(w, "list", 30)["details"]}
        for name in ("bombed.yaml", "bag.yaml"):
            assert "aliases" in listed[name].get("error", ""), listed.get(name)
        requests = {"bag": {"model": "bag"},
                    "bombed": {"model_path": str(models / "bombed.ckpt"), "config_path": str(models / "bombed.yaml")}}
        for id, fields in requests.items():
            w.send(cmd="separate", id=id, input=str(song), output_dir=str(tmp_path / "out"), **fields)
            error = answer(w, id, 30)
            assert error["code"] == "bad_value" and "aliases" in error["message"], error
        assert_pings(w)


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)[1]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the worker's peak memory in /proc")
@pytest.mark.slow  # a worker start per oversized config
def test_a_config_too_big_to_build_is_refused_before_anything_is_allocated(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(msst_config(dim=32768, depth=12))  # a FeedForward alone would be 17 GB; all of it ~1 TB
    song = write_song(tmp_path / "song.wav", 0.5)
    with started(tmp_path) as w:
        w.send(cmd="separate", id="big", input=str(song), output_dir=str(tmp_path / "out"),
               model_path=str(FIXTURES / "bs_roformer" / "model.ckpt"), config_path=str(big), model_type="bs_roformer")
        error = answer(w, "big", 60)
        assert error["code"] == "out_of_memory" and "big.yaml" in error["message"], error
        assert "GiB" in error["message"] and "weights" in error["message"], error
        assert peak_rss(w.proc.pid) < 4 * GiB
        deep = tmp_path / "deep.yaml"
        deep.write_text(msst_config(dim=4, depth=10_000_000))  # small layers, but ten million of them
        w.send(cmd="separate", id="deep", input=str(song), output_dir=str(tmp_path / "out"),
               model_path=str(FIXTURES / "bs_roformer" / "model.ckpt"), config_path=str(deep), model_type="bs_roformer")
        error = answer(w, "deep", 60)
        assert error["code"] == "bad_value" and "layers" in error["message"], error
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.wav"))


def test_each_architecture_s_weights_are_counted_without_building_it(tmp_path):
    """The estimate builds on the meta device: exactly the bytes of the real module, for every family."""
    from dsu import memory
    from dsu.families import msst
    from dsu.models.apollo import Apollo
    from demucs.htdemucs import HTDemucs

    def real(module: torch.nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])

    factories = {t: (lambda t=t: msst.build_model(t, msst.load_config(FIXTURES / t / "config.yaml")))
                 for t in msst.MODEL_TYPES}
    factories["apollo"] = lambda: Apollo(sr=44100, win=20, feature_dim=16, layer=1)
    factories["htdemucs"] = lambda: HTDemucs(sources=["a", "b"], channels=8, depth=2, t_layers=1, t_heads=2,
                                             bottom_channels=0, nfft=512)
    for name, factory in factories.items():
        assert memory.weight_bytes(factory, "a test model") == real(factory()) > 0, name
