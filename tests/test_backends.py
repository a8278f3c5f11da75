"""The backend layer: MSST networks on torch and OpenVINO, float32 and bfloat16; converted networks
cached on disk, reused, rebuilt when corrupt, written once by racing workers; what does not convert
runs on torch; a backend or precision the machine cannot run is a coded error."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import DSU, ENV, RawWorker, snr

from dsu import backends, engine, families
from dsu.backends import ir_cache
from dsu.engine import TensorSignal
from dsu.errors import DSUError
from dsu.families.base import LoadedModel

FIXTURES = Path(__file__).parent / "fixtures" / "msst"
TYPES = ["bs_roformer", "mel_band_roformer", "scnet", "mdx23c"]
CPU = torch.device("cpu")


def load(model_type: str) -> LoadedModel:
    d = FIXTURES / model_type
    return families.load(families.resolve({"model_path": str(d / "model.ckpt"),
                                           "config_path": str(d / "config.yaml")}, None), CPU)


def run(model, runtime) -> np.ndarray:
    mix = torch.from_numpy(np.load(FIXTURES / model.model_type / "input.npy"))
    blocks = []
    engine.run(model.passes(TensorSignal(mix), runtime=runtime), mix.shape[-1], blocks.append)
    return torch.cat(blocks, -1).numpy()


def ov(precision="float32", cache_dir=None, notify=None) -> backends.Runtime:
    return backends.choose("openvino", precision, device=CPU, family="msst", cache_dir=cache_dir, notify=notify)


@pytest.mark.parametrize("model_type", [pytest.param(t, marks=pytest.mark.slow) if t == "scnet" else t
                                        for t in TYPES])  # reason: SCNet's conversion takes 40 s here
def test_openvino_float32_matches_torch_float32(model_type, tmp_path):
    model = load(model_type)
    exact = run(model, backends.EXACT)
    runtime = ov(cache_dir=tmp_path)
    got = run(model, runtime)
    assert runtime.fields() == {"backend": "openvino", "precision": "float32"} and not runtime.warnings
    assert snr(exact, got) > 100, snr(exact, got)


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bfloat16_runs_close_to_float32_and_says_when_it_is_emulated(backend, tmp_path):
    model = load("mel_band_roformer")
    exact = run(model, backends.EXACT)
    runtime = backends.choose(backend, "bfloat16", device=CPU, family="msst", cache_dir=tmp_path)
    got = run(model, runtime)
    assert np.isfinite(got).all()
    if backends.native_bfloat16():
        assert runtime.fields()["precision"] == "bfloat16" and not runtime.warnings
        assert 15 < snr(exact, got) < 100, snr(exact, got)  # reduced precision, not the float32 path
    elif backend == "torch":  # emulated, said, and still bfloat16's rounding
        assert any("emulated" in w for w in runtime.warnings)
        assert 15 < snr(exact, got) < 100, snr(exact, got)
    else:  # OpenVINO's CPU plugin runs float32 where the CPU has no bfloat16: `done` says so
        assert runtime.fields()["precision"] == "float32"
        assert any("OpenVINO ran float32" in w for w in runtime.warnings)
        assert snr(exact, got) > 100


def test_the_default_on_a_cpu_is_the_fastest_measured_backend_in_float32(monkeypatch):
    monkeypatch.delenv("DSU_BACKEND")
    chosen = backends.choose(None, None, device=CPU, family="msst")
    assert chosen.fields() == {"backend": backends.FASTEST_ON_CPU["msst"], "precision": "float32"}
    assert backends.choose("auto", "auto", device=CPU, family="dsp").backend == "torch"
    assert backends.choose("auto", "auto", device=torch.device("cuda"), family="msst", amp=True).fields() == \
        {"backend": "torch", "precision": "float16"}  # MSST's use_amp on CUDA; nothing runs here
    monkeypatch.setenv("DSU_BACKEND", "torch")
    assert backends.choose("auto", None, device=CPU, family="msst").backend == "torch"
    assert backends.choose("openvino", None, device=CPU, family="msst").backend == "openvino"
    monkeypatch.setenv("DSU_BACKEND", "fast")
    with pytest.raises(DSUError, match=r"\$DSU_BACKEND must be one of"):
        backends.choose("auto", None, device=CPU, family="msst")


@pytest.mark.parametrize("backend, precision, device, words", [
    ("tpu", "auto", "cpu", "`backend` must be one of auto, torch, openvino"),
    ("auto", "float8", "cpu", "`precision` must be one of"),
    ("torch", "float16", "cpu", "`precision` float16 runs on CUDA and MPS"),
    ("openvino", "auto", "cuda", "`backend` openvino runs on the CPU"),
])
def test_what_the_machine_cannot_run_is_a_coded_error(backend, precision, device, words):
    with pytest.raises(DSUError) as e:
        backends.choose(backend, precision, device=torch.device(device), family="msst")
    assert e.value.code == "bad_value" and words in e.value.message


class Unconvertible(torch.nn.Module):
    """A core with an op OpenVINO's converter has no rule for."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def core(self, x):
        return x * self.scale + torch.histc(x, 4).sum() * 0


def test_a_core_that_does_not_convert_runs_on_torch_with_the_reason_in_the_warnings(tmp_path):
    model = load("bs_roformer")
    net = Unconvertible()
    runtime = ov(cache_dir=tmp_path)
    x = torch.randn(2, 3, 5)
    got = model.core(net, runtime, name="toy")(x)
    assert torch.equal(got, net.core(x))
    assert runtime.fields()["backend"] == "torch"
    assert any("OpenVINO could not convert toy" in w and "aten::histc" in w for w in runtime.warnings)
    again = ov(cache_dir=tmp_path)  # the next job does not try again, and is told
    assert torch.equal(model.core(net, again, name="toy")(x), got) and again.warnings


def _separate(tmp_path: Path, models_dir: Path, out: str, *extra: str) -> subprocess.Popen:
    d = FIXTURES / "bs_roformer"
    song = tmp_path / "song.wav"
    if not song.exists():
        sf.write(song, np.random.default_rng(0).standard_normal((44100, 2)).astype(np.float32) * 0.1, 44100)
    return subprocess.Popen([*DSU, "separate", str(song), "--model-path", str(d / "model.ckpt"), "--config-path",
                             str(d / "config.yaml"), "--backend", "openvino", "--models-dir", str(models_dir),
                             "--json", "--threads", "1", "-o", str(tmp_path / out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)


def _messages(proc: subprocess.Popen) -> list[dict]:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _stages(messages) -> list[str]:
    return [m["stage"] for m in messages if m["status"] == "preparing"]


def _vocals(tmp_path: Path, out: str) -> np.ndarray:
    return sf.read(tmp_path / out / "song" / "vocals.wav", dtype="float32")[0]


@pytest.mark.slow  # reason: four CLI runs, two of them converting (40 s)
def test_a_converted_network_is_cached_reused_and_rebuilt_when_corrupt(tmp_path):
    models_dir = tmp_path / "models"
    first = _messages(_separate(tmp_path, models_dir, "a"))
    assert _stages(first) == ["converting", "ready"]
    assert {"backend": "openvino", "precision": "float32"}.items() <= first[-1].items()
    [entry] = list(ir_cache.folder(models_dir).iterdir())
    assert sorted(p.name for p in entry.iterdir()) == ["entry.json", "model.bin", "model.xml"]

    second = _messages(_separate(tmp_path, models_dir, "b"))
    assert _stages(second) == ["loading", "ready"]  # no conversion: the cached entry
    assert snr(_vocals(tmp_path, "a"), _vocals(tmp_path, "b")) > 100

    with open(entry / "model.bin", "r+b") as f:  # one flipped byte in the weights
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    third = _messages(_separate(tmp_path, models_dir, "c"))
    assert _stages(third) == ["converting", "ready"]
    assert any("did not check out" in w and "model.bin does not match" in w for w in third[-1]["warnings"])
    assert snr(_vocals(tmp_path, "a"), _vocals(tmp_path, "c")) > 100
    assert _stages(_messages(_separate(tmp_path, models_dir, "d"))) == ["loading", "ready"]  # rebuilt whole


@pytest.mark.slow  # reason: two converting processes racing (50 s)
def test_two_workers_converting_at_once_leave_one_good_entry(tmp_path):
    models_dir = tmp_path / "models"
    racing = [_separate(tmp_path, models_dir, out) for out in ("x", "y")]
    answers = [_messages(p) for p in racing]
    assert all(_stages(a)[-1] == "ready" and a[-1]["backend"] == "openvino" for a in answers)
    entries = list(ir_cache.folder(models_dir).iterdir())
    assert len(entries) == 1 and not entries[0].name.endswith(".partial")
    assert ir_cache.lookup(ir_cache.folder(models_dir), entries[0].name) is not None


@pytest.mark.slow  # reason: a conversion, then a worker start (35 s)
def test_models_prepare_converts_ahead_and_the_first_job_then_loads(tmp_path):
    d = FIXTURES / "mdx23c"
    models_dir = tmp_path / "models"
    done = subprocess.run([*DSU, "models", "prepare", str(d / "model.ckpt"), "--config-path", str(d / "config.yaml"),
                           "--models-dir", str(models_dir), "--threads", "1"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "openvino float32 ready" in done.stdout and "converting" in done.stderr
    sf.write(tmp_path / "song.wav", np.zeros((30000, 2), np.float32), 44100)
    default = {k: v for k, v in ENV.items() if k != "DSU_BACKEND"}  # the product's auto
    with RawWorker(tmp_path, "--models-dir", str(models_dir), env=default) as w:
        w.send(cmd="separate", input=str(tmp_path / "song.wav"), output_dir=str(tmp_path / "out"),
               model_path=str(d / "model.ckpt"), config_path=str(d / "config.yaml"))
        seen = w.until("done")
    assert [m["stage"] for m in seen if m["status"] == "preparing"] == ["loading", "ready"]
    assert seen[-1]["backend"] == "openvino"


def test_the_worker_and_the_cli_refuse_what_this_machine_cannot_run(tmp_path):
    sf.write(tmp_path / "song.wav", np.zeros((4410, 2), np.float32), 44100)
    with RawWorker(tmp_path) as w:
        e = w.error(cmd="separate", input=str(tmp_path / "song.wav"), output_dir=str(tmp_path / "o"),
                    model="dsp", precision="float16")
    assert e["code"] == "bad_value" and "`precision` float16" in e["message"]
    cli = subprocess.run([*DSU, "separate", str(tmp_path / "song.wav"), "-m", "dsp", "--precision", "float16",
                          "-o", str(tmp_path / "o")], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert cli.returncode != 0 and "--precision float16" in cli.stderr, cli.stderr


def test_dsu_clean_removes_a_half_written_entry_of_a_dead_process(tmp_path):
    root = ir_cache.folder(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tag = ir_cache.tempfiles.owner_tag().replace(f"{__import__('os').getpid()}@", f"{dead.stdout.strip()}@", 1)
    half = root / f".abc.{tag}-00ff.partial"
    half.mkdir(parents=True)
    (half / "model.xml").write_text("<half")
    live = root / f".def.{ir_cache.tempfiles.owner_tag()}-00ff.partial"
    live.mkdir()
    out = subprocess.run([*DSU, "clean", str(tmp_path)], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stderr
    assert not half.exists() and live.exists()


class BakesItsLength(torch.nn.Module):
    """A core that says it works at any frame count but turns the count into a constant when traced."""
    core_time_axes = (1,)

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def core(self, x):
        return x * self.scale + float(int(x.shape[1]))


class AnyLength(BakesItsLength):
    def core(self, x):
        return torch.tanh(x * self.scale).cumsum(1)


@pytest.mark.parametrize("net", [BakesItsLength(), AnyLength()], ids=["bakes its length", "any length"])
def test_a_core_traced_on_a_few_frames_is_checked_and_traced_whole_when_it_differs(net, tmp_path):
    """A core declaring `core_time_axes` is traced on a few frames (fast at published sizes); one that
    fixes a frame count in the trace fails the check at another length and is traced at full size."""
    x = torch.randn(2, 100, 6)
    got = load("bs_roformer").core(net, ov(cache_dir=tmp_path), name="toy")(x)
    with torch.no_grad():
        want = net.core(x)
    assert snr(want.numpy(), got.numpy()) > 100
