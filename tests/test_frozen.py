"""The frozen folder (freeze/build.py): built into a temp dir, each executable started from an
unrelated cwd with no Python in its environment, driven through the protocol, and fed the command
lines a library would use to start `sys.executable` as Python.

Building takes ~30 s and ~800 MB of temp disk; DSU_SKIP_FROZEN=1 skips the tests that need it."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import soundfile as sf

import dsu
from dsu.runtime import interpreter_argv

pytestmark = pytest.mark.slow  # the fast tier (`-m "not slow"`) leaves this file out

ROOT = Path(__file__).resolve().parent.parent
WORKERS = {"dsu": ["worker"], "dsu-demucs": [], "dsu-bsroformer": [], "dsu-audio-separator": [],
           "dsu-denoise": []}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Iterator[Path]:
    if os.environ.get("DSU_SKIP_FROZEN") == "1":
        pytest.skip("DSU_SKIP_FROZEN=1")
    if importlib.util.find_spec("cx_Freeze") is None:
        pytest.fail("cx_Freeze is not installed: pip install -e '.[test]' (or skip with DSU_SKIP_FROZEN=1)")
    target = tmp_path_factory.mktemp("frozen") / "dsu"
    subprocess.run([sys.executable, str(ROOT / "freeze" / "build.py"), "--dist", str(target)],
                   check=True, timeout=600, cwd=tmp_path_factory.getbasetemp())
    yield target
    shutil.rmtree(target)  # ~800 MB: not left for pytest's kept temp dirs


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    """A cwd with nothing of DSU in it."""
    return tmp_path_factory.mktemp("cwd")


def bare_env(home: Path) -> dict[str, str]:
    """No venv, no PYTHONPATH/PYTHONHOME: only the folder itself can provide Python."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}


class FrozenWorker:
    """A worker process spoken to in raw JSON lines, every stdout line checked to be JSON."""

    def __init__(self, argv: list[str], cwd: Path):
        self.stderr = open(cwd / f"{Path(argv[0]).name}.stderr", "w+")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=bare_env(cwd), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.stderr.seek(0)
            raise AssertionError(f"worker ended (rc {self.proc.poll()}); stderr:\n{self.stderr.read()[-3000:]}")
        return json.loads(line)

    def send(self, **message):
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def until(self, status: str) -> list[dict]:
        messages = [self.read()]
        while messages[-1]["status"] not in (status, "error"):
            messages.append(self.read())
        assert messages[-1]["status"] == status, messages[-1]
        return messages

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stderr.close()


def test_layout(dist):
    names = {p.name for p in dist.iterdir()}
    assert set(WORKERS) | {"lib", "configs", "VERSION.txt"} <= names
    assert [p for p in dist.rglob("lib") if p.is_dir() and (p / "dsu").is_dir()] == [dist / "lib"]
    for name in WORKERS:
        assert os.access(dist / name, os.X_OK)
    assert f"dsu {dsu.__version__}\n" in (dist / "VERSION.txt").read_text()


@pytest.mark.parametrize("name", list(WORKERS))
def test_worker_protocol(dist, elsewhere, name):
    song = elsewhere / "song.wav"
    if not song.exists():
        t = np.arange(2 * 44100) / 44100
        mix = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3
        sf.write(song, mix.astype(np.float32), 44100)
    # `dsu` runs through a symlink in another folder, as an installer's link on the PATH would
    exe = dist / name
    if name == "dsu":
        (elsewhere / "bin").mkdir(exist_ok=True)
        exe = elsewhere / "bin" / name
        exe.symlink_to(dist / name)
    worker = FrozenWorker([str(exe), *WORKERS[name], "--threads", "1"], elsewhere)
    try:
        assert worker.until("ready")[-1]["protocol"] == 1
        # every shared object it loaded (libpython, torch, numpy, libsndfile ...) comes from the folder
        mapped = {line.split()[-1] for line in Path(f"/proc/{worker.proc.pid}/maps").read_text().splitlines()
                  if line.split()[-1].startswith("/")}
        assert [m for m in mapped if m.startswith((sys.prefix, sys.base_prefix, str(ROOT / "src")))] == []
        assert any(m.startswith(str(dist / "lib" / "torch")) for m in mapped)
        worker.send(cmd="ping", id="p")
        assert worker.until("pong")[-1]["id"] == "p"
        out = elsewhere / f"out-{name}"
        # `dsu` separates with its default model, dsp; the others are told to use it
        model = {} if name == "dsu" else {"model": "dsp"}
        worker.send(cmd="separate", id=7, input="song.wav", output_dir=str(out), **model)
        messages = worker.until("done")
        assert any(m["status"] == "progress" for m in messages)
        done = messages[-1]
        assert done["id"] == 7 and len(done["paths"]) == 4
        for path in done["paths"]:
            assert Path(path).is_file() and Path(path).is_relative_to(out)
        worker.send(cmd="exit")
        worker.until("exiting")
        assert worker.proc.wait(timeout=30) == 0
    finally:
        worker.close()


def test_uvr_and_apollo_models_run_frozen(dist, elsewhere, tmp_path):
    """The families whose libraries load only with their first model (onnxruntime, libsamplerate,
    the band tables shipped as data) work in the folder too."""
    import torch
    import yaml
    from test_mdx import tiny_onnx
    from dsu.models.apollo import Apollo
    from dsu.models.vr_cascade import CascadedASPPNet
    torch.manual_seed(0)
    torch.save(CascadedASPPNet(672, 2, 0, 4).state_dict(), tmp_path / "tiny_vr.pth")
    tiny_onnx(tmp_path / "tiny_mdx.onnx", dim_f=64, dim_t=8)
    apollo = {"sr": 44100, "win": 20, "feature_dim": 16, "layer": 1}
    torch.save({"state_dict": {f"audio_model.{k}": v for k, v in Apollo(**apollo).state_dict().items()}},
               tmp_path / "apollo.ckpt")
    (tmp_path / "apollo.yaml").write_text(yaml.safe_dump({"model": apollo}))
    song = tmp_path / "song.wav"
    t = np.arange(44100) / 44100
    sf.write(song, (np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1) * 0.3).astype(np.float32), 44100)
    worker = FrozenWorker([str(dist / "dsu-audio-separator"), "--threads", "1"], elsewhere)
    try:
        worker.until("ready")
        jobs = [dict(cmd="separate", model_path=str(tmp_path / "tiny_vr.pth"), vr_model_param="4band_v2",
                     primary_stem="Vocals"),
                dict(cmd="separate", model_path=str(tmp_path / "tiny_mdx.onnx"), mdx_n_fft_scale_set=2048,
                     mdx_dim_f_set=64, mdx_dim_t_set=3, segment_size=8),
                dict(cmd="apollo", model_path=str(tmp_path / "apollo.ckpt"), config_path=str(tmp_path / "apollo.yaml"),
                     output=str(tmp_path / "restored.flac"))]
        for job in jobs:
            worker.send(input=str(song), output_dir=str(tmp_path / "out"), **job)
            done = worker.until("done")[-1]
            assert done["paths"] and all(Path(p).is_file() for p in done["paths"])
        names = sorted(p.name for p in (tmp_path / "out").iterdir())
        assert names == ["song_(Instrumental)_tiny_mdx.wav", "song_(Instrumental)_tiny_vr.wav",
                         "song_(Vocals)_tiny_mdx.wav", "song_(Vocals)_tiny_vr.wav"]
        assert sf.info(tmp_path / "restored.flac").frames == 44100
    finally:
        worker.close()


def test_catalog_download_runs_frozen(dist, elsewhere, tmp_path):
    """The shipped catalog and its configs are in the folder, and a download (httpx, the lock file, the
    family's loader check) then a separation by name go through the same code as in the venv."""
    import threading
    from test_catalog import Files, msst_entry, write_catalog
    server = Files()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**bare_env(elsewhere), "DSU_MODELS": str(tmp_path / "models")}
        listed = subprocess.run([str(dist / "dsu"), "models", "list", "--available", "--json"], cwd=elsewhere, env=env,
                                capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0 and "left out" not in listed.stderr, listed.stderr
        assert {"htdemucs", "bs_roformer_viperx_1297", "UVR-MDX-NET-Inst_HQ_3", "apollo_lew_uni"} <= \
            {row["name"] for row in json.loads(listed.stdout)}
        env["DSU_CATALOG"] = str(write_catalog(tmp_path / "catalog.json", msst_entry(server, route="drop")))
        got = subprocess.run([str(dist / "dsu"), "models", "download", "tv", "-q"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, got.stderr
        assert [r for _, r in server.requests][1].startswith("bytes=")  # resumed after the drop
        t = np.arange(44100) / 44100
        sf.write(tmp_path / "song.wav", (np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1) * 0.3).astype(np.float32), 44100)
        sep = subprocess.run([str(dist / "dsu"), "separate", str(tmp_path / "song.wav"), "-m", "tv", "-o",
                              str(tmp_path / "out"), "--threads", "1", "-q"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=300)
        assert sep.returncode == 0, sep.stderr
        assert [Path(p).name for p in sep.stdout.split()] == ["vocals.wav", "other.wav"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("argv", [["-c", "print('looped')"], ["-m", "dsu.worker"], ["-I", "-c", "pass"],
                                  ["-B", "-s", "-c", "from multiprocessing.spawn import spawn_main"],
                                  ["script.py"]])
def test_interpreter_argv_is_refused_at_once(dist, elsewhere, argv):
    for name in WORKERS:
        started = time.perf_counter()
        # stdin left open: an executable that started a worker instead would block here
        proc = subprocess.Popen([str(dist / name), *argv], cwd=elsewhere, env=bare_env(elsewhere),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            rc = proc.wait(timeout=20)
        finally:
            proc.kill()
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.stdin.close()
        assert rc == 2, err
        assert out == ""
        assert "not a Python interpreter" in err
        assert time.perf_counter() - started < 5, "refused before importing torch"


def test_own_options_pass_the_guard(dist, elsewhere):
    for argv in (["dsu-demucs", "--help"], ["dsu", "-h"]):
        done = subprocess.run([str(dist / argv[0]), *argv[1:]], cwd=elsewhere, env=bare_env(elsewhere),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "usage" in done.stdout.lower()


@pytest.mark.parametrize("argv, refused", [
    (["-c", "pass"], "-c"), (["-Bc", "pass"], "-Bc"), (["-X", "dev", "-c", "pass"], "-X"), (["-"], "-"),
    (["-s", "-m", "pip"], "-s"), (["--multiprocessing-fork", "pipe_handle=5"], "--multiprocessing-fork"),
    (["tool.py", "--x"], "tool.py"), (["--check-hash-based-pycs", "never"], "--check-hash-based-pycs"),
    ([], None), (["-h"], None), (["--threads", "2", "--models-dir", "m"], None), (["worker", "--worker"], None),
    (["separate", "a.wav", "-m", "dsp", "-o", "out", "-O", "shifts=2"], None), (["models", "list"], None),
])
def test_interpreter_argv(argv, refused):
    assert interpreter_argv(argv) == refused


def test_msst_model_runs_frozen_on_openvino(dist, elsewhere, tmp_path):
    """OpenVINO is imported only for `backend: openvino`, so the folder must carry it whole: its
    runtime, CPU plugin and PyTorch frontend convert the core inside the frozen worker, no fallback."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed in the build's venv")
    fixture = ROOT / "tests" / "fixtures" / "msst" / "bs_roformer"
    song = tmp_path / "song.wav"
    sf.write(song, np.load(fixture / "input.npy").T, 44100, subtype="FLOAT")
    worker = FrozenWorker([str(dist / "dsu-bsroformer"), "--threads", "1", "--models-dir", str(tmp_path / "models")],
                          elsewhere)
    try:
        worker.until("ready")
        worker.send(cmd="separate", id="ov", input=str(song), output_dir=str(tmp_path / "out"),
                    model_path=str(fixture / "model.ckpt"), config_path=str(fixture / "config.yaml"),
                    backend="openvino", precision="float32")
        messages = worker.until("done")
        done = messages[-1]
        assert done["backend"] == "openvino" and done["precision"] == "float32", done
        assert "warnings" not in done, done["warnings"]
        assert any(m["status"] == "preparing" and m.get("backend") == "openvino" for m in messages)
        want = np.load(fixture / "expected.npy")
        first = sf.read(done["paths"][0], dtype="float32", always_2d=True)[0].T
        from helpers import snr
        assert snr(want[0], first) > 60
        mapped = Path(f"/proc/{worker.proc.pid}/maps").read_text()
        assert str(dist / "lib" / "openvino") in mapped and sys.prefix not in mapped
    finally:
        worker.close()
