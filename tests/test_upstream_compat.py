"""What integrations of the previous DSU still send: `set_storage_type`, the runtime policy file,
errors that name their `input`. Real worker processes spoken to in raw JSON lines."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dsu.families import packages
from helpers import ENV, RawWorker, write_song
from tiny_models import tiny_apollo


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("upstream")


def started(w: RawWorker) -> dict:
    assert w.read() == {"status": "loading"}
    return w.read()


def stderr_of(w: RawWorker) -> str:
    w.stderr.flush()
    w.stderr.seek(0)
    return w.stderr.read()


# ---- set_storage_type ----------------------------------------------------------------------------

def _mapped(path: Path) -> bool:
    """Whether this process maps `path` (a torch.load with mmap keeps its file mapped)."""
    return str(path) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
def test_weights_are_mapped_only_when_asked_and_only_where_the_format_allows(tmp):
    zipped = tmp / "zipped.pt"
    torch.save({"w": torch.ones(4096)}, zipped)
    legacy = tmp / "legacy.pt"  # torch's format before 1.6: torch.load cannot map it
    torch.save({"w": torch.ones(4096)}, legacy, _use_new_zipfile_serialization=False)
    with packages.mapped_weights(True):
        state = packages.load_weights_file(zipped, "a test file")
        assert _mapped(zipped)
        del state
        assert packages.load_weights_file(legacy, "a test file")["w"].sum() == 4096
    state = packages.load_weights_file(zipped, "a test file")
    assert not _mapped(zipped) and state["w"].sum() == 4096


def test_set_storage_type_answers_as_the_previous_workers_and_loads_follow_it(tmp, worker):
    ckpt, config = tiny_apollo(tmp)
    legacy = tmp / "apollo_legacy.ckpt"
    torch.save(torch.load(ckpt, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    w = worker  # conftest's, started as `started` checks: it ends on ssd, the default, for the tests after
    for kind, mapped in (("ssd", True), ("hdd", False), ("ssd", True)):
        answer = w.ask(cmd="set_storage_type", id=kind, type=kind)
        assert answer == {"status": "storage_configured", "id": kind, "type": kind, "mmap_enabled": mapped,
                          "mmap_supported": True}
        loaded = w.ask(cmd="load_model", id=f"load-{kind}", model_path=str(legacy), config_path=str(config),
                       model_type="apollo")
        assert loaded["family"] == "apollo"  # a legacy file loads whatever the storage
        w.ask(cmd="clear_cache", id="c")
    w.send(cmd="set_storage_type")  # no type: ssd, as before
    assert w.until("storage_configured")[-1]["mmap_enabled"] is True
    error = w.error(cmd="set_storage_type", id="bad", type="tape")
    assert error["code"] == "bad_value" and "`type`" in error["message"] and "hdd" in error["message"]


# ---- the runtime policy file ---------------------------------------------------------------------

def policy_worker(tmp: Path, policy: str | bytes | None, *args: str, path: Path | None = None) -> tuple[dict, str]:
    """(the `ready` of a worker started with this policy file content, its stderr)."""
    path = path or tmp / "runtime_policy.json"
    if policy is not None:
        path.write_bytes(policy.encode() if isinstance(policy, str) else policy)
    with RawWorker(tmp, *args, env={**ENV, "DSU_RUNTIME_POLICY_PATH": str(path)}) as w:
        ready = started(w)
        w.ask(cmd="ping", id=1)
        return ready, stderr_of(w)


@pytest.mark.slow  # five worker starts
def test_runtime_policy_sets_each_worker_names_cache(tmp):
    policy = json.dumps({"global": {"max_cached_models": 3}, "demucs": {"max_cached_models": 1},
                         "bsroformer": {"max_cached_models": 0}, "worker": {"disable_conflict_stopping": True}})
    assert policy_worker(tmp, policy)[0]["max_cached_models"] == 3
    assert policy_worker(tmp, policy, "--name", "dsu-demucs")[0]["max_cached_models"] == 1
    ready = policy_worker(tmp, policy, "--name", "dsu-bsroformer")[0]
    assert ready["max_cached_models"] == 0 and ready["cache_enabled"] is False
    audiosep = json.dumps({"audiosep": {"max_cached_models": 4, "mmap": True}})
    assert policy_worker(tmp, audiosep, "--name", "dsu-audio-separator")[0]["max_cached_models"] == 4
    # the command line wins over the file
    assert policy_worker(tmp, policy, "--name", "dsu-demucs", "--max-cached-models", "2")[0]["max_cached_models"] == 2


SLOW = pytest.mark.slow  # a worker start each: the fast tier keeps a wrong type, bad JSON and a huge file


@pytest.mark.parametrize("content, words", [
    ('{"global": {"max_cached_models": "many"}}', "global.max_cached_models"),
    pytest.param('{"demucs": {"max_cached_models": true}}', "demucs.max_cached_models", marks=SLOW),
    pytest.param('{"global": {"max_cached_models": 5000}}', "at most", marks=SLOW),
    pytest.param('{"global": {"max_cached_models": -1}}', "at least", marks=SLOW),
    pytest.param('{"global": [1]}', "`global`", marks=SLOW),
    pytest.param("[1, 2]", "object", marks=SLOW),
    ("{not json", "JSON"),
    ("[" * 100_000 + "]" * 100_000, "more than any such file"),
    pytest.param('{"a": ' * 5000 + "1" + "}" * 5000, "nests deeper", marks=SLOW),
    pytest.param(b"\xff\xfe{}", "UTF-8", marks=SLOW),
])
def test_a_bad_policy_file_is_a_warning_and_the_defaults_hold(tmp, content, words):
    ready, stderr = policy_worker(tmp, content, "--name", "dsu-demucs")
    assert ready["max_cached_models"] == 2
    assert "runtime_policy.json" in stderr and words in stderr and "Traceback" not in stderr, stderr


@pytest.mark.slow  # two worker starts, one behind a FIFO
def test_a_policy_path_that_is_no_file_is_a_warning(tmp):
    fifo = tmp / "policy.fifo"
    os.mkfifo(fifo)  # opened, it would block the worker's start for ever
    ready, stderr = policy_worker(tmp, None, path=fifo)
    assert ready["max_cached_models"] == 2 and "special file" in stderr, stderr
    ready, stderr = policy_worker(tmp, None, path=tmp / "missing.json")
    assert ready["max_cached_models"] == 2 and "policy" not in stderr  # no file: nothing to say


# ---- errors name their input ---------------------------------------------------------------------

def test_every_error_of_a_job_echoes_its_input(tmp, worker):
    song = write_song(tmp / "song.wav", 1.0)
    w = worker
    w.send(cmd="separate", input="nowhere.wav", output_dir=str(tmp / "o"), model="dsp")  # no id
    error = w.until("error")[-1]
    assert error["code"] == "input_not_found" and error["input"] == "nowhere.wav" and "id" not in error
    w.send(cmd="separate", input=str(song), output_dir=str(tmp / "o"), model="dsp", format="ogg")
    error = w.until("error")[-1]
    assert error["code"] == "bad_value" and error["input"] == str(song)
    w.send(cmd="apollo", input="lost.mp3", output=str(tmp / "r.wav"), model_path=str(tmp / "x.ckpt"))
    assert w.until("error")[-1]["input"] == "lost.mp3"
    w.send(cmd="separate", input=5, output_dir="o")  # an input that is not a string is not echoed
    error = w.until("error")[-1]
    assert error["code"] == "bad_value" and "input" not in error
    w.send(cmd="ping")
    assert "input" not in w.until("pong")[-1]


def test_the_protocol_table_names_input_on_errors():
    from dsu import protocol as spec
    assert "input" in {f.name for f in spec.MESSAGES["error"].fields}
    assert "set_storage_type" in spec.COMMANDS and "storage_configured" in spec.MESSAGES
