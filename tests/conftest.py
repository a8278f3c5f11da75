"""Fixtures many test files share (plain helpers are in helpers.py). While working, run the fast tier:
`pytest -m "not slow"`; CI runs everything."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# the default models dir (and the converted networks cached under it) in a folder of this test run,
# never the user's: set before helpers copies the environment for the processes tests start
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="dsu-tests-data-")
# `backend: auto` is torch in the suite: each tiny model would be converted for OpenVINO once per test
# process (seconds each); tests/test_backend*.py ask for openvino, and for auto without this
os.environ["DSU_BACKEND"] = "torch"

import pytest  # noqa: E402
from helpers import RawWorker, write_song  # noqa: E402

# modules whose every test is slow (pytestmark): the fast tier does not even import them, as importing
# hypothesis and ray alone costs each test process seconds
SLOW_MODULES = {"test_fuzz.py", "test_batch_ray.py", "test_frozen.py"}


def pytest_configure(config: pytest.Config) -> None:
    """Under `-n N` (pytest-xdist) with a CPU per test process, each is pinned to its own CPU, and so are
    the workers it starts: N processes that each spin an OpenMP thread per core would contend for them.
    DSU's default thread count follows the affinity, as it would on a machine of one core."""
    name, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not (name and count and hasattr(os, "sched_setaffinity")):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if int(count) <= len(cpus):
        os.sched_setaffinity(0, {cpus[int(name.removeprefix("gw")) % len(cpus)]})
        import torch
        torch.set_num_threads(1)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.name in SLOW_MODULES and config.getoption("markexpr") == "not slow":
        return True
    return None


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    """A folder for the module's files and its worker's stderr."""
    return tmp_path_factory.mktemp("worker")


@pytest.fixture(scope="module")
def song(tmp) -> Path:
    return write_song(tmp / "song.wav", 3.0)


@pytest.fixture(scope="module")
def long_song(tmp) -> Path:
    return write_song(tmp / "long.wav", 60.0)


@pytest.fixture(scope="module")
def worker(tmp):
    """One worker per module (models stay cached between its tests), ready when handed over."""
    with RawWorker(tmp) as w:
        assert w.read() == {"status": "loading"}
        w.ready = w.read()
        yield w
