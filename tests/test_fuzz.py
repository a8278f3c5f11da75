"""Fuzzing a real worker: seeded adversarial lines for every command of the protocol table (read from
the table, so commands added later are covered), invalid JSON and raw bytes, each followed by a ping.
The worker must stay up, write only JSON objects, answer each request exactly once and never with
`internal`. A longer run: benchmarks/fuzz.py."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from fuzzing import FUZZED_COMMANDS, FuzzWorker, Setting, raw_lines, requests, write_song

pytestmark = pytest.mark.slow  # the fast tier (`-m "not slow"`) leaves this file out

EXAMPLES_PER_COMMAND = 30
FUZZ = settings(max_examples=EXAMPLES_PER_COMMAND, derandomize=True, deadline=None, database=None,
                phases=[Phase.explicit, Phase.generate],  # the first failure as it happened: no shrinking
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    setting = Setting(song=write_song(tmp / "song.wav"), out=tmp / "out")
    worker = FuzzWorker(tmp)
    worker.start()
    yield worker, setting
    worker.kill()


@pytest.mark.parametrize("name", FUZZED_COMMANDS)
def test_every_command_survives_fuzzed_fields(fuzzed, name):
    worker, setting = fuzzed

    @FUZZ
    @given(st.data())
    def check(data):
        worker.run(data.draw(requests(name, setting)))
    check()


def test_raw_lines(fuzzed):
    worker, _ = fuzzed

    @settings(FUZZ, max_examples=150)
    @given(raw_lines())
    def check(case):
        worker.run(case)
    check()


def test_exit_ends_the_fuzzed_worker(fuzzed):
    worker, _ = fuzzed
    assert worker.tally.internal == [] and worker.tally.crashes == 0
    assert worker.tally.requests > len(FUZZED_COMMANDS) * EXAMPLES_PER_COMMAND
    assert worker.close() == 0
