"""Fixtures many test files share (plain helpers are in helpers.py). While working, run the fast tier:
`pytest -m "not slow"`; CI runs everything."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import RawWorker, write_song


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
