"""The backends under UVR VR, MDX-Net and Apollo: tiny random-weight models run on torch float32 (the
eager path, unchanged), on OpenVINO float32 (converted, >= 100 dB from torch) and bfloat16 (finite),
and Apollo's restore job saying in `done` what ran it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import RawWorker, snr, write_song
from test_mdx import SETTINGS as MDX_SETTINGS
from test_mdx import tiny_onnx

from dsu import backends, engine, families
from dsu.engine import TensorSignal
from dsu.families.apollo import ApolloModel
from dsu.jobs.restore import restore_file
from dsu.models.apollo import Apollo
from dsu.models.vr_cascade import CascadedASPPNet
from dsu.models.vr_cascade_v51 import CascadedNetV51

pytest.importorskip("openvino")

CPU = torch.device("cpu")
APOLLO = {"sr": 16000, "win": 20, "feature_dim": 16, "layer": 1}


def runtime(backend: str, precision: str = "float32", family: str = "vr") -> backends.Runtime:
    return backends.choose(backend, precision, device=CPU, family=family)


def run_model(model, audio: torch.Tensor, rt: backends.Runtime, **options) -> torch.Tensor:
    blocks: list[torch.Tensor] = []
    engine.run(model.passes(TensorSignal(audio), runtime=rt, **options), audio.shape[-1], blocks.append)
    return torch.cat(blocks, -1)


def music(seconds: float, rate: int = 44100, seed: int = 0) -> torch.Tensor:
    """Tones and a little noise, stereo: a spectrum that is not flat, so masks vary."""
    t = torch.arange(int(seconds * rate)) / rate
    g = torch.Generator().manual_seed(seed)
    tones = sum(0.2 * torch.sin(2 * torch.pi * f * t) for f in (110, 440, 1250, 5000))
    return torch.stack([tones, 0.7 * tones]) + 0.02 * torch.randn(2, t.numel(), generator=g)


# ---- UVR VR --------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["v50", "v51"])
def vr_model(request, tmp_path_factory):
    torch.manual_seed(5)
    net = CascadedASPPNet(672, 2, 0, 4) if request.param == "v50" else CascadedNetV51(672, 4, 8)
    path = tmp_path_factory.mktemp("vr") / f"tiny_{request.param}.pth"
    torch.save(net.state_dict(), path)
    return families.load(families.resolve({"model_path": str(path), "vr_model_param": "4band_v2",
                                           "primary_stem": "Instrumental"}, None), CPU)


VR_OPTIONS = {"window_size": 320, "batch_size": 2}


def test_vr_torch_float32_is_the_module_itself(vr_model):
    audio = music(1.5)
    exact = run_model(vr_model, audio, backends.EXACT, **VR_OPTIONS)
    with torch.inference_mode():  # the pipeline called with the network's own predict_mask
        direct = vr_model.separate(audio, **{**_vr_settings(), **VR_OPTIONS})
    assert torch.equal(exact, direct)


def _vr_settings() -> dict:
    from dsu.families import vr
    out = vr.settings({})
    out.pop("normalization_threshold")
    return out


@pytest.mark.slow  # converting a CascadedNet takes about 40 s on 2 cores
def test_vr_on_openvino(vr_model):
    audio = music(1.5)
    exact = run_model(vr_model, audio, backends.EXACT, **VR_OPTIONS)
    rt = runtime("openvino")
    converted = run_model(vr_model, audio, rt, **VR_OPTIONS)
    assert rt.fields() == {"backend": "openvino", "precision": "float32"}, rt.warnings
    assert snr(exact.numpy(), converted.numpy()) >= 100
    print(f"VR {type(vr_model.net).__name__}: openvino f32 {snr(exact.numpy(), converted.numpy()):.1f} dB")


@pytest.mark.slow  # bfloat16 is emulated on CPUs without it (AVX2): a minute per network
def test_vr_on_openvino_bfloat16(vr_model):
    audio = music(1.0)
    exact = run_model(vr_model, audio, backends.EXACT, **VR_OPTIONS)
    rt16 = runtime("openvino", "bfloat16")
    low = run_model(vr_model, audio, rt16, **VR_OPTIONS)
    assert rt16.fields()["backend"] == "openvino" and torch.isfinite(low).all()
    print(f"VR {type(vr_model.net).__name__}: openvino bf16 {snr(exact.numpy(), low.numpy()):.1f} dB")


def test_vr_torch_bfloat16_runs(vr_model):
    low = run_model(vr_model, music(1.0), runtime("torch", "bfloat16"), **VR_OPTIONS)
    assert torch.isfinite(low).all()


# ---- MDX-Net -------------------------------------------------------------------------------------

def _mdx(path: Path, **request):
    return families.load(families.resolve({"model_path": str(path), **MDX_SETTINGS, **request}, None), CPU)


@pytest.mark.parametrize("shape,request_", [({"dim_t": 8}, {}), ({"dim_t": "frames"}, {"mdx_dim_t_set": 3}),
                                             ({"dim_t": 8, "batch": 1}, {})],
                         ids=["fixed-frames", "free-frames", "batch-1"])
def test_mdx_on_openvino(tmp_path, shape, request_):
    """OpenVINO reads the ONNX file itself; a file that fixes the frames is reshaped for another
    segment_size as onnxruntime's copy is loosened."""
    model = _mdx(tiny_onnx(tmp_path / "UVR_Tiny.onnx", **shape), **request_)
    audio = music(2.0)
    for options in ({"segment_size": 8, "batch_size": 3}, {"segment_size": 16, "enable_denoise": True}):
        exact = run_model(model, audio, backends.EXACT, **options)
        rt = runtime("openvino", family="mdx")
        converted = run_model(model, audio, rt, **options)
        assert rt.fields()["backend"] == "openvino" and snr(exact.numpy(), converted.numpy()) >= 100, options
        low = run_model(model, audio, runtime("openvino", "bfloat16", family="mdx"), **options)
        assert torch.isfinite(low).all() and snr(exact.numpy(), low.numpy()) > 20


def test_mdx_torch_is_onnxruntime_unchanged(tmp_path):
    """`backend: torch` is onnxruntime as before: the same numbers as the session called directly."""
    model = _mdx(tiny_onnx(tmp_path / "UVR_Tiny.onnx"))
    spec = torch.randn(3, 4, 64, 8)
    direct = model.session.run(None, {model.input_name: spec.numpy()})[0]
    assert np.array_equal(model.network(8)(spec).numpy(), direct)
    audio = music(1.0)
    assert torch.equal(run_model(model, audio, backends.EXACT, segment_size=8),
                       run_model(model, audio, runtime("torch", family="mdx"), segment_size=8))


# ---- Apollo --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def apollo_files(tmp_path_factory) -> tuple[Path, Path]:
    import yaml
    folder = tmp_path_factory.mktemp("apollo")
    torch.manual_seed(3)
    torch.save(Apollo(**APOLLO).state_dict(), folder / "apollo.bin")
    (folder / "apollo.yaml").write_text(yaml.safe_dump({"model": APOLLO}))
    return folder / "apollo.bin", folder / "apollo.yaml"


def _apollo(files) -> ApolloModel:
    return families.load(families.resolve({"model_path": str(files[0]), "config_path": str(files[1]),
                                           "model_type": "apollo"}, None), CPU)


def test_apollo_core_is_real_and_the_forward_unchanged():
    torch.manual_seed(0)
    net = Apollo(**APOLLO).eval()
    audio = torch.randn(2, 2, 8000)
    spec = torch.stft(audio.reshape(4, -1), n_fft=net.win_samples, hop_length=net.hop,
                      window=torch.hann_window(net.win_samples), return_complex=True)
    with torch.inference_mode():
        out = net.core(torch.view_as_real(spec))
        assert out.dtype == torch.float32 and out.shape == torch.view_as_real(spec).shape
        # the complex formulation the core replaces: complex bands, abs, torch.complex per band
        energy = [(band.abs().pow(2).sum(1) + net.eps).sqrt()[:, None] for band in spec.split(net.widths, 1)]
        first = net.BN[0](torch.cat([spec[:, :net.widths[0]].real / energy[0],
                                     spec[:, :net.widths[0]].imag / energy[0], torch.log(energy[0])], 1))
        assert torch.allclose(net.embed_bands(torch.view_as_real(spec))[:, 0], first, atol=1e-6)
        assert torch.equal(net(audio), net(audio, core=net.core))


@pytest.mark.slow  # two conversions (float32, bfloat16) of 80 bands' projections: about a minute
def test_apollo_on_openvino(apollo_files):
    model = _apollo(apollo_files)
    audio = music(1.2, 16000)
    options = {"chunk_seconds": 0.5, "overlap_seconds": 0.1}
    exact = run_model(model, audio, backends.EXACT, **options)
    rt = runtime("openvino", family="apollo")
    converted = run_model(model, audio, rt, **options)
    assert rt.fields()["backend"] == "openvino", rt.warnings
    assert snr(exact.numpy(), converted.numpy()) >= 100
    low = run_model(model, audio, runtime("openvino", "bfloat16", family="apollo"), **options)
    assert torch.isfinite(low).all()
    low_torch = run_model(model, audio, runtime("torch", "bfloat16", family="apollo"), **options)
    assert torch.isfinite(low_torch).all()
    print(f"Apollo: openvino f32 {snr(exact.numpy(), converted.numpy()):.1f} dB, bf16 "
          f"{snr(exact.numpy(), low.numpy()):.1f} dB, torch bf16 {snr(exact.numpy(), low_torch.numpy()):.1f} dB")


def test_restore_file_reports_its_backend(apollo_files, tmp_path):
    model = _apollo(apollo_files)
    song = write_song(tmp_path / "in.wav", 1.0, sr=16000)
    exact = restore_file(model, song, tmp_path / "torch.wav", backend="torch", precision="float32", bit_depth=32)
    assert (exact.extra["backend"], exact.extra["precision"]) == ("torch", "float32")
    ov = restore_file(model, song, tmp_path / "ov.wav", backend="openvino", bit_depth=32)
    assert (ov.extra["backend"], ov.extra["precision"]) == ("openvino", "float32"), ov.extra
    a, b = (sf.read(tmp_path / f"{n}.wav", dtype="float32")[0] for n in ("torch", "ov"))
    assert snr(a, b) >= 100


@pytest.mark.slow  # a worker start and a conversion
def test_worker_restore_on_openvino(apollo_files, tmp_path):
    song = write_song(tmp_path / "in.wav", 0.5, sr=16000)
    model = {"model_path": str(apollo_files[0]), "config_path": str(apollo_files[1])}
    with RawWorker(tmp_path) as w:
        done = w.ask(id=1, cmd="apollo", input=str(song), output=str(tmp_path / "out.wav"), backend="openvino",
                     precision="float32", **model)
        assert (done["backend"], done["precision"]) == ("openvino", "float32"), done
        error = w.error(id=2, cmd="apollo", input=str(song), output=str(tmp_path / "bad.wav"), precision="float16",
                        **model)
        assert error["code"] == "bad_value" and "precision" in error["message"]
