"""`denoise`: envelope-matched spectral subtraction against a noise recording, in every worker, as
`dsu denoise` and as the previous DSU's `dsu-denoise` (worker and command line). Real files, real
worker processes; the noise reduction itself is measured (SNR against the clean signal)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dsu import cli
from helpers import RawWorker
from helpers import snr

SR = 22050
DENOISE_WORKER = [sys.executable, "-c", "from dsu.cli import denoise_worker; raise SystemExit(denoise_worker())"]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("denoise")


@pytest.fixture(scope="module")
def audio(tmp) -> dict:
    """A pulsing two-tone stereo clip with hiss that pumps with it, and a recording of the hiss alone."""
    rng = np.random.default_rng(3)
    t = np.arange(3 * SR) / SR
    envelope = 0.3 + 0.7 * np.abs(np.sin(2 * np.pi * 1.5 * t))
    clean = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.25 * np.sin(2 * np.pi * 330 * t + 1)], 1) * envelope[:, None]
    hiss = 0.04 * rng.standard_normal(clean.shape) * envelope[:, None]
    sf.write(tmp / "noisy.wav", (clean + hiss).astype(np.float32), SR, subtype="FLOAT")
    sf.write(tmp / "hiss.flac", (0.04 * rng.standard_normal((SR, 2))).astype(np.float32), SR)
    return {"clean": clean, "noisy": tmp / "noisy.wav", "noise": tmp / "hiss.flac",
            "before": snr(clean, clean + hiss)}


@pytest.fixture(scope="module")
def denoise_worker(tmp):
    """One `dsu-denoise` worker for the tests of it that need nothing fresh (no cancel, no counts)."""
    with RawWorker(tmp, argv=DENOISE_WORKER) as w:
        assert w.read() == {"status": "loading"}
        w.ready = w.read()
        yield w


def check_denoised(path: Path, audio: dict, gain_db: float = 3.0) -> float:
    out, rate = sf.read(path, always_2d=True)
    assert rate == SR and out.shape == audio["clean"].shape
    after = snr(audio["clean"], out)
    assert after > audio["before"] + gain_db, (audio["before"], after)
    return after


def test_the_dsu_denoise_worker_writes_beside_the_input_as_before(tmp, audio, denoise_worker):
    w = denoise_worker
    assert w.ready["worker"] == "dsu-denoise"
    w.send(cmd="denoise", id="d", input=str(audio["noisy"]), noise_profile=str(audio["noise"]))
    messages = w.until("done", "d")
    assert messages[0] == {"status": "denoising", "id": "d", "input": str(audio["noisy"])}
    progress = [m["progress"] for m in messages if m["status"] == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    done = messages[-1]
    assert done["files"] == ["noisy_denoised.wav"] and done["output_dir"] == str(tmp)
    assert done["paths"] == [str(tmp / "noisy_denoised.wav")] and done["elapsed"] > 0
    check_denoised(tmp / "noisy_denoised.wav", audio)


def test_dsu_denoise_answers_what_integrations_of_the_previous_one_send(tmp, audio, denoise_worker):
    """The previous dsu-denoise answered `load_model` without a model (it has none) and took `mode`
    and `type` in any case: integrations send them so."""
    w = denoise_worker
    loaded = w.ask(cmd="load_model", id="l")
    assert loaded == {"status": "model_loaded", "id": "l", "model": "envelope_matched", "family": "denoise",
                      "stems": ["denoised"], "cached": True}
    assert w.ask(cmd="load_model", id="dsp", model="dsp")["family"] == "dsp"  # a named model still loads
    assert w.ask(cmd="set_storage_type", id="s", type="HDD")["type"] == "hdd"
    done = w.ask(cmd="denoise", id="d", input=str(audio["noisy"]), noise_profile=str(audio["noise"]),
                 output=str(tmp / "upper.wav"), mode="Drums")
    assert done["paths"] == [str(tmp / "upper.wav")]
    with RawWorker(tmp, "--name", "dsu-bsroformer") as w:  # a worker that needs a model still says so
        w.read(), w.read()
        assert w.error(cmd="load_model", id="m")["code"] == "missing_field"


def test_every_worker_denoises_with_the_previous_fields_and_checks_them(tmp, audio):
    with RawWorker(tmp, "--name", "dsu-demucs") as w:
        assert w.read()["status"] == "loading" and w.read()["status"] == "ready"
        done = w.ask(cmd="denoise", id=1, input=str(audio["noisy"]), noise_path=str(audio["noise"]),
                     output=str(tmp / "drums" / "out.flac"), mode="drums", subtraction_factor=1.0, bit_depth=24)
        assert done["paths"] == [str(tmp / "drums" / "out.flac")]
        assert sf.info(done["paths"][0]).subtype == "PCM_24"
        check_denoised(tmp / "drums" / "out.flac", audio)
        for fields, code, words in [
            ({"noise_profile": None}, "missing_field", "noise_profile"),  # null is absence
            ({"input": None}, "missing_field", "input"),
            ({"subtraction_factor": 5}, "bad_value", "subtraction_factor"),
            ({"release_time": -1}, "bad_value", "release_time"),
            ({"attack_time": "fast"}, "bad_value", "attack_time"),
            ({"mode": "loud"}, "bad_value", "mode"),
            ({"noise_profile": str(tmp / "none.wav")}, "input_not_found", "`noise_profile`"),
            ({"output": str(audio["noisy"])}, "bad_value", "is the `input`"),
            ({"output": str(tmp)}, "output_not_writable", "folder"),
            ({"output": str(tmp / "x.ogg")}, "bad_value", "ogg"),
        ]:
            request = {"input": str(audio["noisy"]), "noise_profile": str(audio["noise"]), **fields}
            error = w.error(cmd="denoise", id="bad", **request)
            assert error["code"] == code and words in error["message"], (fields, error)
        assert not list(tmp.glob("**/.*partial*"))


def test_a_cancelled_denoise_leaves_nothing(tmp, audio):
    rng = np.random.default_rng(0)
    long = tmp / "long.wav"
    sf.write(long, (0.1 * rng.standard_normal((240 * SR, 2))).astype(np.float32), SR)
    with RawWorker(tmp) as w:
        w.read(), w.read()
        w.send(cmd="denoise", id="long", input=str(long), noise_profile=str(audio["noise"]))
        w.until("progress", "long")
        w.send(cmd="cancel", id="long")
        error = w.until("error", "long")[-1]
        assert error["code"] == "cancelled" and error["input"] == str(long), error
    assert not (tmp / "long_denoised.wav").exists() and not list(tmp.glob(".long_denoised*"))


def test_dsu_denoise_command_line(tmp, audio, capsys):
    out = tmp / "cli"
    assert cli.main(["denoise", str(audio["noisy"]), "-n", str(audio["noise"]), "-o", f"{out}/", "-q"]) == 0
    check_denoised(out / "noisy_denoised.wav", audio)
    assert cli.main(["denoise", str(tmp / "nope.wav"), "-n", str(tmp / "none.wav"), "-o", str(out / "a.ogg")]) == 2
    err = capsys.readouterr().err
    assert "nope.wav: no such file" in err and "none.wav: no such file" in err and "-o" in err
    with pytest.raises(SystemExit) as exit:
        cli.main(["denoise", str(audio["noisy"]), "-n", str(audio["noise"]), "--subtraction-factor", "nan"])
    assert exit.value.code == 2 and "--subtraction-factor" in capsys.readouterr().err
    assert cli.main(["denoise", str(audio["noisy"]), "-n", str(audio["noise"]), "-o", str(audio["noise"]),
                     "--mode", "SLOW"]) == 1
    err = capsys.readouterr().err  # the job's words for its fields, in this command line's flags
    assert "is the -n/--noise-profile" in err and "`noise_profile`" not in err, err


def test_dsu_denoise_keeps_the_previous_command_line(tmp, audio, capsys):
    out = tmp / "slow.wav"
    assert cli.denoise_worker([str(audio["noisy"]), str(audio["noise"]), str(out), "--slow", "-q"]) == 0
    check_denoised(out, audio)
    assert cli.denoise_worker([str(audio["noisy"])]) == 1  # too few arguments: its help, exit 1, as before
    assert "NOISE_PROFILE" in capsys.readouterr().err
    assert cli.denoise_worker([str(audio["noisy"]), str(audio["noise"]), str(audio["noisy"])]) == 1
    err = capsys.readouterr().err
    assert "is the AUDIO" in err and "`input`" not in err, err


def test_the_up_front_output_checks_speak_each_command_lines_words(tmp, audio, capsys):
    """An output that cannot be written is refused before anything runs, naming the output as the
    command line asked for it: `-o/--output` for `dsu denoise`, OUTPUT for `dsu-denoise` (no `-o`)."""
    blocker = tmp / "a-file"
    blocker.write_text("not a folder")
    for output in (str(blocker / "x.wav"), str(tmp / "x.ogg")):
        assert cli.main(["denoise", str(audio["noisy"]), "-n", str(audio["noise"]), "-o", output]) == 2
        err = capsys.readouterr().err
        assert "-o/--output" in err and "`output`" not in err, err
        assert cli.denoise_worker([str(audio["noisy"]), str(audio["noise"]), output]) == 2
        err = capsys.readouterr().err
        assert f"OUTPUT {output}" in err or f"OUTPUT {blocker}" in err, err
        assert "-o" not in err.replace(str(tmp), ""), err
    assert not (tmp / "x.ogg").exists()
