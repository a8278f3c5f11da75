"""The worker as integrations see it: real `python -m dsu.worker` processes spoken to in raw JSON lines.
Every stdout line of every worker here is parsed: one that is not a JSON object fails the test."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dsu.errors import CODES
from dsu import protocol as spec
from helpers import FIXTURES, RawWorker


# ---- start, quick commands, validation ---------------------------------------------------------------

def test_ready_message(worker):
    ready = worker.ready
    assert ready["status"] == "ready" and ready["protocol"] == spec.PROTOCOL and ready["threads"] == 1
    assert {f.name for f in spec.MESSAGES["ready"].fields} - {"device_warning"} <= set(ready)
    assert ready["device"] == "cpu" and ready["cache_enabled"] and ready["max_cached_models"] == 2
    assert ready["default_model"] == "dsp"


def test_ping_echoes_any_id(worker):
    for id in (1, "a", {"nested": [1, 2]}, 2.5):
        assert worker.ask(cmd="ping", id=id) == {"status": "pong", "id": id, "model_loaded": None}
    worker.send(cmd="ping")  # no id: no id in the answer
    assert "id" not in worker.until("pong")[-1]


def test_bad_lines_are_answered_and_the_worker_goes_on(worker):
    worker.send_line("\n   \n\t\n")  # blank lines: ignored
    worker.send_line("{not json\n")
    assert worker.read() == {"status": "error", "code": "bad_json", "message": worker.log[-1]["message"]}
    worker.send_line(b"\xff\xfe\n")
    assert worker.read()["code"] == "bad_json"
    worker.send_line("[1, 2]\n")
    assert worker.read()["code"] == "bad_json"
    assert worker.error(cmd="fly", id=2)["code"] == "unknown_command"
    assert worker.error(id=3)["code"] == "missing_field"
    assert worker.ask(cmd="ping", id=4)["status"] == "pong"


@pytest.mark.parametrize("fields, code, words", [
    ({}, "missing_field", "input"),
    ({"input": "x.wav"}, "missing_field", "output_dir"),
    ({"input": 5, "output_dir": "o"}, "bad_value", "input"),
    ({"input": "x.wav", "output_dir": "o", "format": "ogg"}, "bad_value", "format"),
    ({"input": "x.wav", "output_dir": "o", "bit_depth": 20}, "bad_value", "bit_depth"),
    ({"input": "x.wav", "output_dir": "o", "bit_depth": True}, "bad_value", "bit_depth"),
    ({"input": "x.wav", "output_dir": "o", "stems": [1]}, "bad_value", "stems"),
    ({"input": "x.wav", "output_dir": "o", "sample_rate": "fast"}, "bad_value", "sample_rate"),
    ({"input": "missing.wav", "output_dir": "o"}, "input_not_found", "missing.wav"),
])
def test_separate_field_errors(worker, fields, code, words):
    error = worker.error(cmd="separate", id="bad", **fields)
    assert error["code"] == code and words in error["message"], error


def test_every_code_is_documented():
    assert tuple(spec.ERRORS) == CODES
    for command in spec.COMMANDS.values():
        for status in command.final + command.interim:
            assert status in spec.MESSAGES, (command.name, status)


def test_list_models_and_status(worker):
    models = worker.ask(cmd="list_models", id="lm")
    assert "dsp" in models["models"] and {"name", "family", "stems"} <= set(models["details"][0])
    status = worker.ask(cmd="get_status", id="gs")
    assert status["ready"] and status["busy"] is False and status["queued"] == 0 and status["job"] is None


# ---- jobs --------------------------------------------------------------------------------------------

def test_separate_messages_and_files(worker, song, tmp):
    out = tmp / "out"
    worker.send(cmd="separate", id=7, input=str(song), output=str(out), model="dsp", format="flac",
                bit_depth=16, segment=1.0, shifts=3)
    messages = worker.until("done", 7)
    assert all(m["id"] == 7 for m in messages)
    statuses = [m["status"] for m in messages]
    assert statuses[0] == "loading_model" and statuses[1] == "separating" and statuses[-1] == "done"
    progress = [m["progress"] for m in messages if m["status"] == "progress"]
    chunks = int(np.ceil(3.0 / 0.75))  # dsp chunks: `segment` long, every 3/4 of it
    assert len(progress) >= chunks and progress == sorted(progress) and progress[-1] == 1.0
    done = messages[-1]
    assert done["files"] == [f"{s}.flac" for s in ("drums", "bass", "other", "vocals")]
    assert done["paths"] == [str(out / "song" / f) for f in done["files"]]
    assert done["output_dir"] == str(out / "song")  # the folder holding `files`
    assert done["model_from_cache"] is False and done["ignored"] == ["shifts"]
    info = sf.info(done["paths"][0])
    assert info.format == "FLAC" and info.subtype == "PCM_16" and info.frames == sf.info(song).frames
    again = worker.ask(cmd="separate", id=8, input=str(song), output_dir=str(out), model="dsp", two_stems="vocals")
    assert again["model_from_cache"] and again["files"] == ["vocals.wav", "no_vocals.wav"]
    assert sf.info(again["paths"][0]).subtype == "FLOAT"  # dsp's family default: 32-bit float
    assert worker.ask(cmd="ping", id=9)["model_loaded"] == "dsp"


def test_default_model_and_wrong_model(worker, song, tmp):
    done = worker.ask(cmd="separate", id="d", input=str(song), output_dir=str(tmp / "default"))
    assert done["model"] == "dsp"
    assert worker.error(cmd="separate", id="m", input=str(song), output_dir=str(tmp), model="nope")["code"] \
        == "model_not_found"
    assert worker.error(cmd="separate", id="p", input=str(song), output_dir=str(tmp),
                        model_path=str(tmp / "none.ckpt"))["code"] == "model_not_found"
    assert worker.error(cmd="separate", id="s", input=str(song), output_dir=str(tmp), model="dsp",
                        stems=["guitar"])["code"] == "bad_value"
    assert worker.error(cmd="separate", id="o", input=str(song), output_dir=str(tmp), model="dsp",
                        segment={"a": 1})["code"] == "bad_value"


def test_corrupt_and_unsupported_audio(worker, song, tmp):
    text = tmp / "notes.wav"
    text.write_text("this is not audio\n" * 100)
    truncated = tmp / "truncated.wav"
    truncated.write_bytes(song.read_bytes()[:30])  # cut inside the header
    for path in (text, truncated):
        error = worker.error(cmd="separate", id=path.name, input=str(path), output_dir=str(tmp / "bad"), model="dsp")
        assert error["code"] == "unsupported_audio", error
    assert not list((tmp / "bad").rglob("*.wav"))
    assert worker.ask(cmd="ping", id="alive")["status"] == "pong"


def test_cancel_running_and_queued_jobs(worker, long_song, song, tmp):
    worker.send(cmd="separate", id="long", input=str(long_song), output_dir=str(tmp / "c"), model="dsp", segment=0.5)
    worker.send(cmd="separate", id="queued", input=str(song), output_dir=str(tmp / "c"), model="dsp")
    while worker.read()["status"] != "progress":
        pass
    status = worker.ask(cmd="get_status", id="s")  # answered while the job runs
    assert status["busy"] and status["job"]["id"] == "long" and status["queued"] == 1
    assert worker.ask(cmd="ping", id="p")["status"] == "pong"
    worker.send(cmd="cancel", id="queued")
    worker.send(cmd="cancel", id="long")
    seen = worker.until("error", "long")
    assert seen[-1]["code"] == "cancelled"
    queued = [m for m in seen if m.get("id") == "queued"]
    assert [m["status"] for m in queued] == ["cancelling", "error"] and queued[-1]["code"] == "cancelled"
    assert not [p for p in (tmp / "c").rglob("*") if p.is_file()]  # no stem kept, not even a partial one
    assert worker.error(cmd="cancel", id="long")["code"] == "bad_value"  # nothing left to cancel


def test_restore_without_the_restore_module(worker, song, tmp):
    error = worker.error(cmd="restore", id="r", input=str(song), output=str(tmp / "r.wav"),
                         model_path=str(tmp / "apollo.ckpt"))
    assert error["code"] in ("internal", "model_not_found", "bad_value"), error


# ---- lifecycle: fresh workers ------------------------------------------------------------------------

def test_eof_finishes_queued_jobs_then_exits(tmp, song):
    with RawWorker(tmp) as w:
        w.send(cmd="separate", id=1, input=str(song), output_dir=str(tmp / "eof"), model="dsp")
        w.proc.stdin.close()
        w.until("done", 1)
        assert w.read() == {"status": "exiting", "reason": "eof"}
        assert w.proc.wait(timeout=30) == 0


def test_named_worker_without_cache_and_exit(tmp):
    with RawWorker(tmp, "--name", "dsu-demucs", "--device", "cuda", "--max-cached-models", "0") as w:
        ready = w.until("ready")[-1]
        assert ready["default_model"] == "htdemucs" and ready["worker"] == "dsu-demucs"
        if ready["device"] == "cpu":
            assert "cuda" in ready["device_warning"]
        assert ready["cache_enabled"] is False and ready["max_cached_models"] == 0
        for _ in range(2):  # no cache: loaded each time
            assert w.ask(cmd="load_model", id="l", model="dsp")["cached"] is False
        assert w.ask(cmd="list_cached", id="c")["count"] == 0
        assert w.error(cmd="load_model", id="h")["code"] == "model_not_found"  # its default, htdemucs, is absent
        w.send(cmd="exit", id="bye")
        assert w.read() == {"status": "exiting", "id": "bye", "reason": "exit"}
        assert w.proc.wait(timeout=30) == 0


def test_sigterm_aborts_the_job(tmp, long_song):
    out = tmp / "term"
    with RawWorker(tmp) as w:
        w.until("ready")
        w.send(cmd="separate", id="j", input=str(long_song), output_dir=str(out), model="dsp", segment=0.5)
        w.send(cmd="separate", id="k", input=str(long_song), output_dir=str(out), model="dsp")
        while w.read()["status"] != "progress":
            pass
        w.proc.send_signal(signal.SIGTERM)
        rest = []
        while not rest or rest[-1]["status"] != "exiting":
            rest.append(w.read())
        errors = {m["id"]: m["code"] for m in rest if m["status"] == "error"}
        assert errors == {"j": "cancelled", "k": "cancelled"} and rest[-1]["reason"] == "signal"
        assert w.proc.wait(timeout=30) == 0
        assert not [p for p in out.rglob("*") if p.is_file()]


def test_sigkill_leaves_no_finished_looking_file(tmp, long_song):
    out = tmp / "killed"
    with RawWorker(tmp) as w:
        w.until("ready")
        w.send(cmd="separate", id="j", input=str(long_song), output_dir=str(out), model="dsp", segment=2.0)
        progress = 0
        while progress < 2:  # blocks already written to the partial files
            progress += w.read()["status"] == "progress"
        w.proc.kill()
        w.proc.wait()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and all(p.name.startswith(".") and p.name.endswith(".partial") for p in files), files


NOISY = """
import os
from dsu.families import dsp
plain = dsp.DSPModel.separate_chunk
def chatty(self, x):
    print("a library printing to stdout")
    os.write(1, b"a C library writing to fd 1\\n")
    return plain(self, x)
dsp.DSPModel.separate_chunk = chatty
from dsu.worker import main
main()
"""


def test_third_party_output_stays_off_the_protocol(tmp, song):
    with RawWorker(tmp, argv=[sys.executable, "-c", NOISY]) as w:
        w.send(cmd="separate", id=1, input=str(song), output_dir=str(tmp / "noisy"), model="dsp")
        w.until("done", 1)  # RawWorker.read parses every stdout line
        w.proc.stdin.close()
        w.until("exiting")
        assert w.proc.wait(timeout=30) == 0
    text = Path(w.stderr.name).read_text()
    assert "a library printing to stdout" in text and "a C library writing to fd 1" in text


@pytest.mark.skipif(not (FIXTURES / "mel_band_roformer").is_dir(), reason="MSST fixtures absent")
def test_cache_bounds_and_eviction(tmp):
    models = {}
    for name, kind in (("alpha", "bs_roformer"), ("beta", "mel_band_roformer")):
        shutil.copy(FIXTURES / kind / "model.ckpt", tmp / f"{name}.ckpt")
        models[name] = {"model_path": str(tmp / f"{name}.ckpt"), "config_path": str(FIXTURES / kind / "config.yaml")}
    with RawWorker(tmp, "--max-cached-models", "2") as w:
        w.until("ready")
        assert w.ask(cmd="load_model", id=1, **models["alpha"])["cached"] is False
        assert w.ask(cmd="preload_model", id=2, **models["beta"])["cached"] is False
        assert w.ask(cmd="load_model", id=3, **models["alpha"])["cached"] is True  # alpha now most recent
        cached = w.ask(cmd="list_cached", id=4)
        assert [m["model"] for m in cached["models"]] == ["beta", "alpha"] and cached["count"] == 2
        assert all(m["bytes"] > 0 for m in cached["models"])
        w.send(cmd="set_cache_size", id=5, n=1)
        seen = w.until("cache_size_updated", 5)
        assert [m for m in seen if m["status"] == "cache_evicted"] == [{"status": "cache_evicted", "id": 5, "model": "beta"}]
        assert seen[-1]["max_cached_models"] == 1 and seen[-1]["cache_enabled"]
        # the memory bound: two models over it, the older goes
        w.ask(cmd="set_cache_size", id=6, n=2, max_memory_mb=cached["models"][1]["bytes"] / 2 ** 20 * 1.5)
        w.send(cmd="load_model", id=7, **models["beta"])
        seen = w.until("model_loaded", 7)
        assert [m["model"] for m in seen if m["status"] == "cache_evicted"] == ["alpha"]
        assert w.ask(cmd="clear_cache", id=8)["models_cleared"] == 1
        assert w.ask(cmd="list_cached", id=9)["count"] == 0
        assert w.error(cmd="set_cache_size", id=10, n=-1)["code"] == "bad_value"
        mismatch = w.error(cmd="load_model", id=11, model_path=models["alpha"]["model_path"],
                           config_path=models["beta"]["config_path"])
        assert mismatch["code"] == "config_mismatch"


# ---- lines no worker may die of (issue 15) ------------------------------------------------------------

def _answer_to(worker: RawWorker, line: bytes) -> dict:
    """The one answer to `line`: the error or final message before the pong of a marker ping."""
    worker.send_line(line + b"\n")
    worker.send(cmd="ping", id="marker")
    answers = []
    while (m := worker.read()).get("id") != "marker":
        answers.append(m)
    assert len(answers) == 1, answers
    return answers[0]


@pytest.mark.parametrize("line, code, field", [
    (b'{"cmd":"separate","input":"\\ud800","output_dir":"o","id":1}', "bad_value", "`input`"),
    (b'{"cmd":"separate","input":"x.wav","output_dir":"o","config_path":"a\\udfffb","id":1}', "bad_value",
     "`config_path`"),
    (b'{"cmd":"ping","\\udc00":1,"id":1}', "bad_value", "`\\udc00`"),
    (b'{"cmd":"ping","x":{"\\ud800":1},"id":1}', "bad_value", "`x`"),
    (b'{"cmd":"ping","x":' + b'{"a":' * 100 + b"1" + b"}" * 100 + b',"id":1}', "bad_value", "`x` nests deeper"),
    (b'{"cmd":"ping","x":' + b'[' * 100000 + b"]" * 100000 + b',"id":1}', "bad_json", "nests too deep"),
    (b'{"cmd":"ping","x":' + b"9" * 4301 + b',"id":1}', "bad_json", "digits"),
    (b'{"cmd":"ping","x":NaN,"id":1}', "bad_value", "`x` holds NaN"),
    (b'{"cmd":"ping","x":1e400,"id":1}', "bad_value", "`x`"),
    (b'{"cmd":"separate","input":"x.wav","output_dir":"o\\u0000","id":1}', "bad_value", "NUL"),
    (b'{"cmd":"separate","input":"x.wav","output_dir":"o","model":"dsp","segment":[1],"id":1}', "bad_value", "segment"),
    (b'\xed\xa0\x80', "bad_json", "UTF-8"),
])
def test_lines_that_cannot_be_carried_back_are_coded_errors(worker, line, code, field):
    answer = _answer_to(worker, line)
    assert answer["status"] == "error" and answer["code"] == code and field in answer["message"], answer
    assert ("id" in answer) == (code == "bad_value"), answer  # the id is echoed whenever it was read


@pytest.mark.parametrize("id_text", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b'"\\ud800"', b'["\\udc00"]'])
def test_ids_json_cannot_carry_are_refused_not_echoed_as_null(worker, id_text):
    answer = _answer_to(worker, b'{"cmd":"separate","id":' + id_text + b',"input":"x","output_dir":"o"}')
    assert answer["status"] == "error" and answer["code"] == "bad_value" and "`id`" in answer["message"]
    assert "id" not in answer


def test_an_overlong_line_is_skipped_and_a_long_one_read(worker):
    answer = _answer_to(worker, b'{"cmd":"ping","x":"' + b"x" * (40 << 20) + b'"}')
    assert answer["code"] == "bad_json" and "skipped" in answer["message"] and "id" not in answer
    big = _answer_to(worker, b'{"cmd":"ping","id":"big","x":"' + b"y" * (15 << 20) + b'"}')  # under the limit
    assert big["status"] == "pong" and big["id"] == "big"  # times: benchmarks/fuzz.py


@pytest.mark.parametrize("fields, words", [
    ({"model": "dsp", "segment": "12"}, "`segment` of separate must be a number"),
    ({"use_tta": "false"}, "`use_tta` of separate must be true or false"),
    ({"extract_instrumental": "false"}, "`extract_instrumental`"),
    ({"chunk_size": "16"}, "`chunk_size` of separate must be an integer"),
    ({"chunk_size": 2 ** 31}, "at most 4194304"),
    ({"shifts": 2 ** 31}, "`shifts` of separate must be at most 20"),
    ({"shifts": 1e308}, "at most 20"),
    ({"segment_size": 2 ** 20}, "at most 4096"),
    ({"mdx_segment_size": 2 ** 20}, "`mdx_segment_size` of separate must be at most 4096"),
    ({"vr_window_size": 2 ** 20}, "`vr_window_size`"),
    ({"mdx_dim_t_set": 2 ** 31}, "`mdx_dim_t_set` of separate must be at most 12"),
    ({"aggression": 101}, "`aggression`"),
    ({"overlap": -0.5}, "`overlap` of separate must be at least 0"),
    ({"precision": "float8"}, "`precision`"),
    ({"batch_size": True}, "`batch_size` of separate must be an integer"),
    ({"sample_rate": 2 ** 31}, "`sample_rate`"),
])
def test_family_options_are_typed_and_bounded_before_any_model_runs(worker, song, tmp, fields, words):
    error = worker.error(cmd="separate", id="opt", input=str(song), output_dir=str(tmp / "never"), **fields)
    assert error["code"] == "bad_value" and words in error["message"], error
    assert not (tmp / "never").exists()


def test_a_null_family_option_is_absent(worker, song, tmp):
    done = worker.ask(cmd="separate", id="null", input=str(song), output_dir=str(tmp / "null"), model="dsp",
                      segment=None, shifts=None)
    assert done["status"] == "done" and len(done["files"]) == 4


def test_every_family_option_is_in_the_protocol_table():
    from dsu import families  # noqa: F401 (registers every family)
    from dsu.families.base import LoadedModel

    def subclasses(cls):
        return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]
    separators = subclasses(LoadedModel)
    assert len(separators) >= 6
    for cls in separators:
        assert set(cls.options) <= set(spec.FAMILY_OPTION_NAMES), (cls.__name__, set(cls.options) - set(spec.FAMILY_OPTION_NAMES))
    for f in [*spec.FAMILY_OPTIONS, *(f for c in spec.COMMANDS.values() for f in c.fields)]:
        if f.type in ("integer", "number") and f.name != "id":
            assert f.choices or f.maximum is not None and f.minimum is not None, f.name


# Faults injected into a real worker process: what the last-resort guards are for
FAULTY = """
import sys
from dsu.jobs import models
from dsu.worker import server, main

def crash_in_job(fields, **_):
    if fields.get("model") == "exit-please":
        sys.exit(3)  # a library calling sys.exit inside a job
    raise KeyError("boom")
models.load_model = crash_in_job
parse = server.parse_request
def crash_in_reader(line):
    if b"reader-bug" in line:
        raise RuntimeError("reader bug")
    return parse(line)
server.parse_request = crash_in_reader
main(sys.argv[1:])
"""


def test_last_resort_guards_keep_both_threads_alive(tmp, song):
    with RawWorker(tmp, argv=[sys.executable, "-c", FAULTY]) as w:
        assert w.read()["status"] == "loading" and w.read()["status"] == "ready"
        w.send(cmd="load_model", id="a", model="x")
        w.send(cmd="load_model", id="b", model="exit-please")
        w.send_line(b'{"cmd":"ping","id":"reader-bug"}\n')
        w.send(cmd="separate", id="c", input=str(song), output_dir=str(tmp / "guards"), model="dsp")
        w.proc.stdin.close()  # end of input still ends the worker, after the queue
        answers = {}
        while (m := w.read())["status"] != "exiting":
            if m["status"] in ("error", "done"):
                answers[m.get("id")] = m
        assert answers["a"]["code"] == "internal" and "KeyError" in answers["a"]["message"]
        assert answers["b"]["code"] == "internal" and "SystemExit" in answers["b"]["message"]
        assert answers[None]["code"] == "internal" and "RuntimeError" in answers[None]["message"]
        assert answers["c"]["status"] == "done"
        assert w.proc.wait(30) == 0


def test_protocol_out_writes_one_json_line_whatever_it_is_given():
    from dsu.worker.stdio import ProtocolOut
    read_fd, write_fd = os.pipe()
    out = ProtocolOut(write_fd)
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    out.send({"status": "error", "message": "lone \ud800 surrogate", "nan": float("nan"), "inf": [float("-inf")],
              "path": Path("/x"), "deep": deep})
    out.send({"status": "pong", "id": 1})
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        lines = f.read().splitlines()
    first, second = (json.loads(line.decode("utf-8")) for line in lines)  # strict: no NaN, valid UTF-8
    assert first["message"] == "lone \ufffd surrogate" and first["nan"] is None and first["inf"] == [None]
    assert first["path"] == "/x" and second == {"status": "pong", "id": 1}
